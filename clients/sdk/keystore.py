"""The device's local key store: one sealed file per profile.

Why: a device's keys (device signing and DH keys, prekey secrets, and on the first device the
user's identity key) must never touch the disk in the clear. The store is a directory per
profile, ``$LIGHTBOX_HOME/<profile>`` (default ``~/.lightbox/<profile>``), mode 0700, holding
``keystore.lbx`` (mode 0600, replaced atomically)::

    header = "LBKS" || 0x02 || u16be(n) || wrapped[n]
    file   = header || protocol.local.seal_local(data_key, MessagePack(DeviceState),
                                                 label = header)
    wrapped = protocol.keys.seal_with_passphrase(data_key, password)   # Argon2id + secretbox

Version 1 files (written before version 2) differ only in the label, which was the header and
the record's nonce: they still open, and the next save writes version 2.

The random 32-byte data key is sealed under the user's password with
:func:`protocol.keys.seal_with_passphrase` (PROTOCOL §4.7; DEFAULT profile); the state itself
is encrypted under the data key because it outgrows the 4 KiB that passphrase sealing takes
(a hundred prekey secrets) and so that saving a refreshed token does not re-run Argon2id.
A wrong password raises :class:`KeyStoreError`. The later encrypted vault implements the same
:class:`DeviceStore` interface.

Which profile a program uses when none is named is :func:`default_profile`, the one rule for
``lightbox`` and ``lightbox-gateway``: ``$LIGHTBOX_PROFILE``, else ``gateway`` for a record
gateway's device (so ``lightbox enroll --kind gateway`` puts it where ``lightbox-gateway``
looks), else ``default``.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Final, Protocol

import msgspec

from clients.sdk.errors import KeyStoreError
from clients.sdk.kdf import passphrase_profile
from protocol.api import TokenPair
from protocol.errors import ProtocolError
from protocol.keys import (
    DEFAULT_PROFILE,
    DeviceKeys,
    Ed25519KeyPair,
    IdentityKey,
    MemoryPrekeyStore,
    PassphraseProfile,
    Prekey,
    X25519KeyPair,
    open_with_passphrase,
    seal_with_passphrase,
)
from protocol.local import LOCAL_NONCE_BYTES, new_local_key, open_local, seal_local

__all__ = [
    "DEFAULT_DEVICE_PROFILE",
    "GATEWAY_DEVICE_PROFILE",
    "KEYSTORE_FILE",
    "PROFILE_ENV",
    "STATE_LOCK_FILE",
    "DeviceState",
    "DeviceStore",
    "KeyStore",
    "OpenKeyStore",
    "PrekeySecret",
    "default_profile",
    "lightbox_home",
    "state_lock",
    "write_private_file",
]

KEYSTORE_FILE = "keystore.lbx"
STATE_LOCK_FILE: Final = "state.lock"
PROFILE_ENV: Final = "LIGHTBOX_PROFILE"
DEFAULT_DEVICE_PROFILE: Final = "default"
GATEWAY_DEVICE_PROFILE: Final = "gateway"
_MAGIC = b"LBKS"
_VERSION = 2
_NONCE_IN_LABEL = 1  # version 1: the label was the header and the record's nonce
_HEAD = struct.Struct(">4sBH")
_MAX_FILE = 16 * 1024 * 1024


class PrekeySecret(msgspec.Struct, frozen=True, kw_only=True):
    prekey_id: int
    secret: bytes
    created_at: int = 0

    def __repr__(self) -> str:
        return f"PrekeySecret(prekey_id={self.prekey_id})"

    def prekey(self) -> Prekey:
        return Prekey(prekey_id=self.prekey_id, keypair=X25519KeyPair.from_secret(self.secret))


class DeviceState(msgspec.Struct, frozen=True, kw_only=True):
    """Everything a device keeps. Secrets are raw bytes here and nowhere else on disk.

    ``identity_seed`` is set only on the device that enrolled with the code: linked devices get
    their own device keys and a certificate signed by the identity key, never the key itself.
    """

    server_url: str
    login: str
    user_id: str
    org_id: str
    org_public_key: bytes
    identity_seed: bytes | None
    device_id: str
    device_kind: str
    device_seed: bytes
    dh_secret: bytes
    user_certificate: str
    device_certificate: str
    signed_prekeys: list[PrekeySecret] = []
    one_time_prekeys: list[PrekeySecret] = []
    next_prekey_id: int = 1
    session: TokenPair | None = None
    revocation_lists: list[str] = []
    # Signs in at the organisation's identity provider (``lightbox enroll --sso``, ``login
    # --sso``): the relay holds no password of the user's, so only the user can sign in again.
    sso: bool = False

    def __repr__(self) -> str:
        return f"DeviceState(login={self.login!r}, device_id={self.device_id!r})"

    def device_keys(self) -> DeviceKeys:
        return DeviceKeys(device_id=self.device_id,
                          signing=Ed25519KeyPair.from_seed(self.device_seed),
                          dh=X25519KeyPair.from_secret(self.dh_secret))

    def identity_key(self) -> IdentityKey | None:
        return None if self.identity_seed is None else IdentityKey.from_seed(self.identity_seed)

    def trusted_orgs(self) -> dict[str, bytes]:
        return {self.org_id: self.org_public_key}

    def prekey_store(self) -> MemoryPrekeyStore:
        return MemoryPrekeyStore(signed=[p.prekey() for p in self.signed_prekeys],
                                 one_time=[p.prekey() for p in self.one_time_prekeys])


class DeviceStore(Protocol):
    """What the identity flows need from a store of device state (opened).

    ``save`` writes a whole state; ``update`` changes the state as the profile holds it now,
    which is what every change of a running program uses (:func:`state_lock`)."""

    @property
    def state(self) -> DeviceState: ...

    def save(self, state: DeviceState) -> None: ...

    def update(self, change: Callable[[DeviceState], DeviceState]) -> DeviceState: ...


@contextlib.contextmanager
def state_lock(directory: Path) -> Iterator[None]:
    """Hold the profile's state lock (:data:`STATE_LOCK_FILE`, an ``fcntl.flock`` lock) for one
    read-modify-write of its device state.

    Several programs run on one profile at once (``lightbox watch`` beside ``send`` or ``link
    --approve``, the desktop), and each keeps the device state in memory. A program that saved
    its own copy with one field changed (a one-time prekey used up, a signed prekey rotated)
    would write back every other field as it last read it: a refresh token another program
    rotated since would be put back, and presented again it is reuse, which ends the session
    of every program of the profile (RFC 9700 §4.14.2); a prekey secret another program made
    since would be lost, and a message sealed to it could never be opened. So each change is
    applied to the state as the file holds it now, under this lock, and saved before the lock
    is let go (``update``; docs/SECURITY.md "Refresh races"). The lock is held for milliseconds,
    never across a request to the relay, so waiting for it blocks; it is always taken after
    the session lock (clients/sdk/sharedtokens.py), never before it. A folder that is gone
    (wiped) has nobody to share it with: no lock."""
    try:
        fd = os.open(directory / STATE_LOCK_FILE,
                     os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o600)
    except FileNotFoundError:
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # lets the lock go


def lightbox_home() -> Path:
    """``$LIGHTBOX_HOME``, or ``~/.lightbox``."""
    env = os.environ.get("LIGHTBOX_HOME")
    return Path(env) if env else Path.home() / ".lightbox"


def default_profile(kind: str | None = None) -> str:
    """The profile to use when none is named: ``$LIGHTBOX_PROFILE``, else ``gateway`` for a
    device of kind ``gateway``, else ``default``."""
    named = os.environ.get(PROFILE_ENV, "")
    if named:
        return named
    return GATEWAY_DEVICE_PROFILE if kind == "gateway" else DEFAULT_DEVICE_PROFILE


def write_private_file(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` with mode 0600, atomically (temporary file, fsync, rename)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0), 0o600)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class KeyStore:
    """The (locked) key store of one profile."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.path = directory / KEYSTORE_FILE

    @classmethod
    def for_profile(cls, profile: str = "default", home: Path | None = None) -> KeyStore:
        if not profile or "/" in profile or profile.startswith("."):
            raise KeyStoreError(f"invalid profile name {profile!r}")
        return cls((home or lightbox_home()) / profile)

    def exists(self) -> bool:
        return self.path.exists()

    def _prepare_directory(self) -> None:
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.directory, 0o700)

    def create(
        self, state: DeviceState, password: str, *, profile: PassphraseProfile | None = None
    ) -> OpenKeyStore:
        """Seal ``state`` under ``password`` in a new store; refuses to overwrite one."""
        if self.exists():
            raise KeyStoreError(f"a key store already exists in {self.directory}")
        self.check_writable()
        kdf = profile or passphrase_profile(DEFAULT_PROFILE)
        data_key = new_local_key().reveal()
        wrapped = seal_with_passphrase(data_key, password, opslimit=kdf.opslimit,
                                       memlimit=kdf.memlimit)
        store = OpenKeyStore(self, wrapped, data_key, state)
        store.save(state)
        return store

    def check_writable(self) -> None:
        """Create the profile directory (0700) and fail early if it cannot hold a store."""
        try:
            self._prepare_directory()
        except OSError as exc:
            raise KeyStoreError(f"cannot create {self.directory}: {exc.strerror}") from exc
        if not os.access(self.directory, os.W_OK):
            raise KeyStoreError(f"{self.directory} is not writable")

    def _read(self) -> tuple[bytes, bytes, bytes]:
        """The file's wrapped data key, sealed state and the state's label."""
        try:
            blob = self.path.read_bytes()
        except FileNotFoundError as exc:
            raise KeyStoreError(
                f"no key store in {self.directory}: enrol or link this device first"
            ) from exc
        if len(blob) > _MAX_FILE or len(blob) < _HEAD.size:
            raise KeyStoreError("the key store file is corrupt")
        magic, version, n = _HEAD.unpack_from(blob)
        if magic != _MAGIC or version not in (_NONCE_IN_LABEL, _VERSION):
            raise KeyStoreError("not a Lightbox key store (or a newer version)")
        start = _HEAD.size
        sealed_at = start + n
        label = blob[:sealed_at + (LOCAL_NONCE_BYTES if version == _NONCE_IN_LABEL else 0)]
        return blob[start:sealed_at], blob[sealed_at:], label

    @staticmethod
    def _unseal(data_key: bytes, sealed: bytes, label: bytes) -> DeviceState:
        try:
            plain = open_local(data_key, sealed, label=label)
            return msgspec.msgpack.decode(plain, type=DeviceState)
        except (ProtocolError, msgspec.DecodeError) as exc:
            raise KeyStoreError("the key store file is corrupt") from exc

    def open(self, password: str) -> OpenKeyStore:
        """Unseal the store; KeyStoreError if missing, corrupt or the password is wrong."""
        wrapped, sealed, label = self._read()
        try:
            data_key = open_with_passphrase(wrapped, password)
        except ProtocolError as exc:
            raise KeyStoreError("wrong password (passwords are case-sensitive; if you are sure "
                                "of it, this device's key store may be damaged: ask IT to "
                                "enrol it again)") from exc
        return OpenKeyStore(self, wrapped, data_key, self._unseal(data_key, sealed, label))


class OpenKeyStore:
    """An unsealed store: the state in memory, and the data key to save changes with."""

    def __init__(self, store: KeyStore, wrapped: bytes, data_key: bytes, state: DeviceState):
        self._store = store
        self._wrapped = wrapped
        self._data_key = data_key
        self._state = state

    def __repr__(self) -> str:
        return f"OpenKeyStore({self._store.directory})"

    @property
    def state(self) -> DeviceState:
        return self._state

    @property
    def directory(self) -> Path:
        return self._store.directory

    def reload(self) -> DeviceState:
        """The state as the file holds it now, saved by this program or another one of the
        profile (clients/sdk/sharedtokens.py), with the data key already open (no Argon2id
        run). A file sealed under another password since (``lightbox passwd`` elsewhere)
        cannot be read so: the state in memory is kept."""
        wrapped, sealed, label = self._store._read()
        if wrapped == self._wrapped:
            self._state = self._store._unseal(self._data_key, sealed, label)
        return self._state

    def save(self, state: DeviceState) -> None:
        """Encrypt ``state`` and atomically replace the file (no Argon2id run). A running
        program changes the state with :meth:`update` instead."""
        head = _HEAD.pack(_MAGIC, _VERSION, len(self._wrapped)) + self._wrapped
        body = seal_local(self._data_key, msgspec.msgpack.encode(state), label=head)
        self._store._prepare_directory()
        write_private_file(self._store.path, head + body)
        self._state = state

    def update(self, change: Callable[[DeviceState], DeviceState]) -> DeviceState:
        """``change`` applied to the state as the file holds it now, saved under the profile's
        state lock (:func:`state_lock`): what another program of the profile saved meanwhile
        is kept."""
        with state_lock(self.directory):
            state = change(self.reload())
            self.save(state)
            return state

    def change_password(
        self, new_password: str, *, profile: PassphraseProfile | None = None
    ) -> None:
        kdf = profile or passphrase_profile(DEFAULT_PROFILE)
        wrapped = seal_with_passphrase(self._data_key, new_password,
                                       opslimit=kdf.opslimit, memlimit=kdf.memlimit)
        with state_lock(self.directory):  # the newest state, sealed under the new password
            self.reload()
            self._wrapped = wrapped
            self.save(self._state)
