"""The device's vault: keys, messages and images in one encrypted SQLite file.

Why (docs/ARCHITECTURE.md §1 step 4, §6; issue 8 item 2): a phone or desktop that holds consult
images must keep them unreadable without the user's passphrase, lock itself when left alone, and be
able to destroy one image for good when the record has it (crypto-shredding).

Layout: ``<directory>/vault.db`` (SQLite from the standard library), directory 0700, file 0600::

    meta        format, vault_id (16 random bytes), sealed master key
    secrets     name -> AEAD(state_key, DeviceState)             (the DeviceStore of the SDK)
    messages    message_id, thread_tag, AEAD(messages_key, VaultMessage)
    images      attachment_id, AEAD(image_keys_key, per-image key),
                AEAD(per-image key, info), AEAD(per-image key, image bytes)
    tombstones  attachment_id, shredded_at, AEAD(tombstones_key, record reference)
    dedupe      HMAC(dedupe_key, sender device, message id)
    notes       HMAC(notes_key, kind, key), kind, AEAD(notes_key, (key, value))
                what the device learnt besides messages and must still know after a
                restart: receipts, acknowledgements, escalation steps, filing notices, and
                the display names of verified certificates (the SDK client's, by kind)
    outbox      message_id, created_at, AEAD(outbox_key, OutboxRecord)

Keys: a random 32-byte master key is sealed under the passphrase with
:func:`protocol.keys.seal_with_passphrase` (Argon2id, RFC 9106; the cost is stored in the seal,
default SENSITIVE_PROFILE because the passphrase is human-chosen). Each table has its own subkey,
``HKDF-SHA256(master, salt=vault_id, info="lightbox/vault/v1/<table>")`` (RFC 5869). Every row is
XChaCha20-Poly1305 with a fresh random nonce and the table and row id as associated data, so a
row cannot be swapped for another. Thread ids and dedupe entries are stored as HMACs: the file
shows how many messages there are, not who talks to whom.

Each image has its own random key. :meth:`Vault.shred` deletes that key and the ciphertext in
one transaction with ``PRAGMA secure_delete`` (freed pages are zeroed) and leaves a tombstone;
afterwards the passphrase opens everything else but not that image. :meth:`Vault.expire` (an
expiry order) does the same and leaves the tombstone even for an image not fetched yet, so it
is never stored later. Limits of software: a
flash controller or a filesystem snapshot may keep old blocks, so devices must also use
full-disk encryption (docs/SECURITY.md "On the device").

The outbox holds each send from the moment before anything of it leaves the device until the
relay answers ``accepted`` or refuses it for good (docs/PROTOCOL.md §3.5 "Outbox"): the sealed
message as it goes on the wire (so a resend is byte-identical and the relay answers it as a
duplicate), the body it was sealed from, and, for an image whose upload has not finished, the
encrypted image and its upload id. The table is created on unlock too, for vaults made before
it existed.

Nothing decrypted is written anywhere: images come back as ``bytes`` in memory, SQLite keeps its
temporary data in memory (``temp_store=MEMORY``), and the rollback journal only ever holds
ciphertext.

Locking: after ``idle_timeout`` seconds without a call (injectable ``clock``) the next call
locks the vault and raises :class:`VaultLocked`; :meth:`Vault.lock_if_idle` lets an application
timer lock it on time. Locking drops every key reference (Python cannot promise to zero memory).

Exceptions::

    VaultError
    ├── VaultLocked             locked (by the user, or after inactivity): unlock first
    ├── VaultPassphraseError    wrong passphrase
    ├── VaultNotFound           no vault in that folder
    ├── VaultExists             create() over an existing vault
    ├── VaultCorrupt            the file is not a vault, or fails authentication
    ├── VaultUnavailable        the file is busy, read-only, or the disk is full
    └── ItemNotFound            no such message or image
        └── ImageShredded       the image was shredded (``tombstone`` says when, and where
                                the record keeps it)
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Final, Self, TypeVar

import msgspec

from clients.sdk.kdf import passphrase_profile
from clients.sdk.keystore import DeviceState
from protocol import _sodium
from protocol.errors import DecodeError, ProtocolError, VerificationError
from protocol.keys import (
    SENSITIVE_PROFILE,
    PassphraseProfile,
    SecretBytes,
    open_with_passphrase,
    seal_with_passphrase,
)

__all__ = [
    "DEFAULT_IDLE_TIMEOUT",
    "IDLE_TIMEOUT_ENV",
    "MAX_IMAGE_BYTES",
    "OUTBOX_STAGES",
    "VAULT_FILE",
    "ImageInfo",
    "ImageShredded",
    "ItemNotFound",
    "OutboxImage",
    "OutboxRecord",
    "StoredImage",
    "Tombstone",
    "Vault",
    "VaultCorrupt",
    "VaultDedupe",
    "VaultError",
    "VaultExists",
    "VaultLocked",
    "VaultMessage",
    "VaultNotFound",
    "VaultPassphraseError",
    "VaultUnavailable",
]

VAULT_FILE: Final = "vault.db"
IDLE_TIMEOUT_ENV: Final = "LIGHTBOX_VAULT_IDLE_TIMEOUT"
DEFAULT_IDLE_TIMEOUT: Final = 300.0  # seconds; five minutes, as for a phone's screen lock
MAX_IDLE_TIMEOUT: Final = 24 * 3600.0
MAX_IMAGE_BYTES: Final = 64 * 1024 * 1024  # protocol.attachments.MAX_ATTACHMENT_SIZE
_MAX_ID: Final = 200
_FORMAT: Final = b"lightbox-vault/1"

# --- errors ------------------------------------------------------------------------------------


class VaultError(Exception):
    """Base of every vault error; the message is written for the user."""


class VaultLocked(VaultError):
    """The vault is locked: unlock it with the passphrase."""


class VaultPassphraseError(VaultError):
    """The passphrase does not open this vault."""


class VaultNotFound(VaultError):
    """There is no vault in that folder."""


class VaultExists(VaultError):
    """A vault already exists in that folder."""


class VaultCorrupt(VaultError):
    """The vault file is damaged, truncated, tampered with, or not a vault."""


class VaultUnavailable(VaultError):
    """The vault file is busy (another process), read-only, or the disk is full."""


class ItemNotFound(VaultError, KeyError):
    """No message or image with that id."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class ImageShredded(ItemNotFound):
    """The image was shredded; only its tombstone remains."""

    def __init__(self, tombstone: Tombstone) -> None:
        where = f" (in the record: {tombstone.record_reference})" if tombstone.record_reference \
            else ""
        super().__init__(f"image {tombstone.attachment_id} was deleted from this device{where}")
        self.tombstone = tombstone


# --- records -----------------------------------------------------------------------------------


class VaultMessage(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A decrypted message as the device keeps it."""

    message_id: str
    thread_id: str
    sender_user_id: str
    sender_device_id: str
    sent_at: float  # seconds since the epoch
    body: str
    attachment_ids: tuple[str, ...] = ()
    priority: str = "normal"
    purpose: str | None = None
    read: bool = False
    # Added by the SDK client (clients/sdk/client.py): the whole sealed body as received
    # (protocol.body MessagePack: kind, attachment descriptors, consent, record data), whether
    # this device sent it, and the relay's sequence number in the thread.
    content: bytes = b""
    outgoing: bool = False
    thread_seq: int = 0

    def __repr__(self) -> str:  # never print the body
        return (f"VaultMessage(message_id={self.message_id!r}, thread_id={self.thread_id!r}, "
                f"read={self.read})")


class ImageInfo(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What the vault knows about a stored image (encrypted under the image's own key, so it
    goes when the image is shredded)."""

    attachment_id: str
    media_type: str
    size: int
    sha256: bytes
    stored_at: float
    width: int | None = None
    height: int | None = None
    thread_id: str | None = None
    message_id: str | None = None
    record_reference: str | None = None


OUTBOX_STAGES: Final = ("upload", "seal", "send")


class OutboxImage(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The image of a pending send: the sanitised bytes (kept in the vault once sent), the
    ciphertext being uploaded and what the sealed descriptor will say. ``attachment_id`` is
    the relay's upload id once the upload was created (a resend resumes it)."""

    data: bytes
    media_type: str
    width: int | None = None
    height: int | None = None
    key: bytes
    sha256: bytes
    size: int
    ciphertext: bytes
    attachment_id: str | None = None
    uploaded: bool = False
    burned_in: list[str] = []  # kinds of identifier OCR found in the pixels (protocol.body)

    def __repr__(self) -> str:  # never print the key or the image
        return f"OutboxImage(attachment_id={self.attachment_id!r}, size={self.size})"


class OutboxRecord(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A send not yet stored by the relay (clients/sdk/client.py writes it before anything
    goes on the wire and removes it on ``accepted`` or on a final refusal).

    ``body``: the protocol.body MessagePack as the user wrote it (without the image's
    descriptor while the upload is pending); ``sealed``: the protocol.envelope encoding of the
    sealed message last put on the wire (empty before sealing) and ``content`` the exact body
    sealed in it; ``stage``: one of OUTBOX_STAGES."""

    message_id: str
    thread_id: str
    created_at: float
    purpose: str
    priority: str
    body: bytes
    consent_id: str | None = None
    necessity: str | None = None
    attachment_ids: tuple[str, ...] = ()
    image: OutboxImage | None = None
    stage: str = "seal"
    sealed: bytes = b""
    content: bytes = b""
    attempts: int = 0

    def __repr__(self) -> str:  # never print the body
        return f"OutboxRecord(message_id={self.message_id!r}, stage={self.stage!r})"


@dataclass(frozen=True, slots=True)
class StoredImage:
    """A decrypted image: in memory only."""

    info: ImageInfo
    data: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class Tombstone:
    """What remains of a shredded image: its id, where the record keeps it, and when."""

    attachment_id: str
    record_reference: str | None
    shredded_at: float


# --- keys --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Keys:
    state: SecretBytes
    messages: SecretBytes
    threads: SecretBytes
    image_keys: SecretBytes
    tombstones: SecretBytes
    dedupe: SecretBytes
    notes: SecretBytes
    outbox: SecretBytes

    @classmethod
    def derive(cls, master: bytes, vault_id: bytes) -> _Keys:
        def sub(label: str) -> SecretBytes:
            info = b"lightbox/vault/v1/" + label.encode()
            return SecretBytes(_sodium.hkdf_sha256(master, salt=vault_id, info=info))

        return cls(state=sub("state"), messages=sub("messages"), threads=sub("threads"),
                   image_keys=sub("image-keys"), tombstones=sub("tombstones"),
                   dedupe=sub("dedupe"), notes=sub("notes"), outbox=sub("outbox"))


def _ad(table: str, row_id: str) -> bytes:
    return _FORMAT + b"\x00" + table.encode() + b"\x00" + row_id.encode()


def _seal(key: SecretBytes, ad: bytes, plaintext: bytes) -> bytes:
    nonce = _sodium.random_bytes(_sodium.AEAD_NONCE_BYTES)
    return nonce + _sodium.aead_encrypt(key.reveal(), nonce, plaintext, ad)


def _open(key: SecretBytes, ad: bytes, blob: object) -> bytes:
    if not isinstance(blob, bytes) or len(blob) < _sodium.AEAD_NONCE_BYTES:
        raise VaultCorrupt("a vault record is damaged")
    nonce = blob[: _sodium.AEAD_NONCE_BYTES]
    try:
        return _sodium.aead_decrypt(key.reveal(), nonce, blob[_sodium.AEAD_NONCE_BYTES :], ad)
    except VerificationError as exc:
        raise VaultCorrupt("a vault record is damaged or was tampered with") from exc


_Row = TypeVar("_Row", "VaultMessage", "OutboxRecord")


def _decode_row(key: SecretBytes, table: str, message_id: str, sealed: object,
                cls: type[_Row], what: str) -> _Row:
    """Open and decode a row keyed by message id (a message, a pending send)."""
    plain = _open(key, _ad(table, message_id), sealed)
    try:
        row = msgspec.msgpack.decode(plain, type=cls)
    except msgspec.DecodeError as exc:
        raise VaultCorrupt(f"{what} is unreadable") from exc
    if row.message_id != message_id:
        raise VaultCorrupt(f"{what} is damaged")
    return row


def _tag(key: SecretBytes, *parts: str) -> bytes:
    encoded = b"".join(len(p.encode()).to_bytes(4, "big") + p.encode() for p in parts)
    return _sodium.hmac_sha256(key.reveal(), encoded)


def _check_id(value: str, what: str) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= _MAX_ID:
        raise ValueError(f"{what} must be a non-empty string of at most {_MAX_ID} characters")
    return value


def _idle_timeout_from_env() -> float:
    raw = os.environ.get(IDLE_TIMEOUT_ENV)
    if raw is None:
        return DEFAULT_IDLE_TIMEOUT
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 < value <= MAX_IDLE_TIMEOUT:
        raise VaultError(
            f"{IDLE_TIMEOUT_ENV} must be a number of seconds between 1 and {MAX_IDLE_TIMEOUT:.0f}"
        )
    return value


_SCHEMA: Final = """
CREATE TABLE meta (name TEXT PRIMARY KEY, value BLOB NOT NULL) STRICT;
CREATE TABLE secrets (name TEXT PRIMARY KEY, sealed BLOB NOT NULL) STRICT;
CREATE TABLE messages (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    message_id TEXT NOT NULL UNIQUE,
    thread_tag BLOB NOT NULL,
    sealed BLOB NOT NULL
) STRICT;
CREATE INDEX messages_by_thread ON messages (thread_tag, seq);
CREATE TABLE images (
    attachment_id TEXT PRIMARY KEY,
    wrapped_key BLOB NOT NULL,
    sealed_info BLOB NOT NULL,
    sealed_data BLOB NOT NULL
) STRICT;
CREATE TABLE tombstones (
    attachment_id TEXT PRIMARY KEY,
    shredded_at REAL NOT NULL,
    sealed_reference BLOB
) STRICT;
CREATE TABLE dedupe (tag BLOB PRIMARY KEY) STRICT, WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS outbox (
    message_id TEXT PRIMARY KEY,
    created_at REAL NOT NULL,
    sealed BLOB NOT NULL
) STRICT;
CREATE TABLE IF NOT EXISTS notes (
    tag BLOB PRIMARY KEY,
    kind TEXT NOT NULL,
    sealed BLOB NOT NULL
) STRICT;
"""
# Tables added after the first vaults were made (IF NOT EXISTS): created on unlock when missing.
_ADDED_TABLES: Final = tuple(s for s in _SCHEMA.split(";") if "IF NOT EXISTS" in s)


# --- the vault ---------------------------------------------------------------------------------


class Vault:
    """One device's vault, locked until :meth:`create` or :meth:`unlock`.

    ``kdf`` is the Argon2id cost for sealing the master key (``CHEAP_PROFILE`` in tests);
    ``idle_timeout`` is in seconds (default from ``LIGHTBOX_VAULT_IDLE_TIMEOUT``, else 300);
    ``clock`` measures inactivity (monotonic); ``now`` stamps records (wall clock).
    Safe to share between threads (one lock serialises calls).
    """

    def __init__(
        self,
        directory: Path,
        *,
        kdf: PassphraseProfile | None = None,
        idle_timeout: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], float] = time.time,
    ) -> None:
        self.directory = Path(directory)
        self.path = self.directory / VAULT_FILE
        self._kdf = kdf
        self.idle_timeout = _idle_timeout_from_env() if idle_timeout is None else idle_timeout
        if not 0 < self.idle_timeout <= MAX_IDLE_TIMEOUT:
            raise ValueError("idle_timeout must be in (0, 86400] seconds")
        self._clock, self._now = clock, now
        self._mutex = threading.RLock()
        self._db: sqlite3.Connection | None = None
        self._keys: _Keys | None = None
        self._master: SecretBytes | None = None
        self._state: DeviceState | None = None
        self._last_used = 0.0
        self.dedupe = VaultDedupe(self)

    def __repr__(self) -> str:
        return f"Vault({str(self.directory)!r}, {'unlocked' if self._keys else 'locked'})"

    # -- lifecycle ---------------------------------------------------------------------------

    def exists(self) -> bool:
        return self.path.exists()

    @property
    def is_unlocked(self) -> bool:
        """True if unlocked and not idle for too long (does not count as activity)."""
        with self._mutex:
            self.lock_if_idle()
            return self._keys is not None

    def create(self, passphrase: str) -> None:
        """Create an empty vault sealed under ``passphrase`` and leave it unlocked."""
        with self._mutex:
            if self.exists():
                raise VaultExists(f"a vault already exists in {self.directory}")
            self._prepare_directory()
            profile = self._kdf or passphrase_profile(SENSITIVE_PROFILE)
            master = _sodium.random_bytes(32)
            vault_id = _sodium.random_bytes(16)
            sealed = seal_with_passphrase(master, passphrase, opslimit=profile.opslimit,
                                          memlimit=profile.memlimit)
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL
                             | getattr(os, "O_NOFOLLOW", 0), 0o600)
            except FileExistsError as exc:
                raise VaultExists(f"a vault already exists in {self.directory}") from exc
            except OSError as exc:
                raise VaultUnavailable(f"cannot create the vault: {exc.strerror}") from exc
            os.close(fd)
            try:
                db = self._connect()
                with self._sql(db) as conn:
                    # One statement at a time: executescript() would commit our transaction.
                    for statement in filter(str.strip, _SCHEMA.split(";")):
                        conn.execute(statement)
                    conn.executemany("INSERT INTO meta VALUES (?, ?)", [
                        ("format", _FORMAT), ("vault_id", vault_id), ("sealed_master", sealed)])
            except BaseException:
                with contextlib.suppress(OSError):
                    self.path.unlink()
                raise
            self._set_unlocked(db, master, vault_id)

    def unlock(self, passphrase: str) -> None:
        """Open the vault with ``passphrase``; VaultPassphraseError if it is wrong (the vault
        is locked first, so a failed attempt never leaves it open)."""
        with self._mutex:
            self.lock()
            if not self.path.is_file():
                raise VaultNotFound(f"no vault in {self.directory}")
            with contextlib.suppress(OSError):  # keep it private even if someone loosened it
                os.chmod(self.directory, 0o700)
                os.chmod(self.path, 0o600)
            db = self._connect()
            try:
                meta = self._read_meta(db)
                try:
                    master = open_with_passphrase(meta["sealed_master"], passphrase)
                except VerificationError as exc:
                    raise VaultPassphraseError(
                        "wrong passphrase (or the vault's key record is damaged)") from exc
                except ProtocolError as exc:
                    raise VaultCorrupt("the vault's key record is damaged") from exc
                if len(master) != 32:
                    raise VaultCorrupt("the vault's key record is damaged")
                with self._sql(db) as conn:
                    for statement in _ADDED_TABLES:
                        conn.execute(statement)
            except BaseException:
                db.close()
                raise
            self._set_unlocked(db, master, meta["vault_id"])

    def change_passphrase(self, current: str, new: str) -> None:
        """Re-seal the master key under ``new`` (data is not re-encrypted)."""
        with self._mutex:
            db = self._use()
            sealed = self._read_meta(db)["sealed_master"]
            try:
                open_with_passphrase(sealed, current)
            except VerificationError as exc:
                raise VaultPassphraseError("the current passphrase is wrong") from exc
            except DecodeError as exc:
                raise VaultCorrupt("the vault's key record is damaged") from exc
            assert self._master is not None
            profile = self._kdf or passphrase_profile(SENSITIVE_PROFILE)
            resealed = seal_with_passphrase(self._master.reveal(), new,
                                            opslimit=profile.opslimit, memlimit=profile.memlimit)
            with self._sql(db) as conn:
                conn.execute("UPDATE meta SET value = ? WHERE name = 'sealed_master'", (resealed,))

    def lock(self) -> None:
        """Forget every key and close the file; every call then raises VaultLocked."""
        with self._mutex:
            self._keys = self._master = self._state = None
            if self._db is not None:
                db, self._db = self._db, None
                with contextlib.suppress(sqlite3.Error):
                    db.close()

    close = lock

    def lock_if_idle(self) -> bool:
        """Lock if the idle timeout has passed (call it from a timer); True if now locked."""
        with self._mutex:
            if self._keys is not None and self._clock() - self._last_used >= self.idle_timeout:
                self.lock()
            return self._keys is None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.lock()

    # -- DeviceStore (clients.sdk.keystore) -----------------------------------------------------

    def has_state(self) -> bool:
        with self._mutex:
            db = self._use()
            with self._sql(db) as conn:
                row = conn.execute("SELECT 1 FROM secrets WHERE name = 'device_state'").fetchone()
            return row is not None

    @property
    def state(self) -> DeviceState:
        """The device's keys and identity (VaultError if this device has none yet)."""
        with self._mutex:
            db = self._use()
            if self._state is None:
                with self._sql(db) as conn:
                    row = conn.execute(
                        "SELECT sealed FROM secrets WHERE name = 'device_state'").fetchone()
                if row is None:
                    raise VaultError("this vault holds no device keys yet: enrol or link first")
                plain = _open(self._k().state, _ad("secrets", "device_state"), row[0])
                try:
                    self._state = msgspec.msgpack.decode(plain, type=DeviceState)
                except msgspec.DecodeError as exc:
                    raise VaultCorrupt("the device keys in the vault are unreadable") from exc
            return self._state

    def save(self, state: DeviceState) -> None:
        with self._mutex:
            db = self._use()
            sealed = _seal(self._k().state, _ad("secrets", "device_state"),
                           msgspec.msgpack.encode(state))
            with self._sql(db) as conn:
                conn.execute("INSERT INTO secrets VALUES ('device_state', ?) ON CONFLICT (name) "
                             "DO UPDATE SET sealed = excluded.sealed", (sealed,))
            self._state = state

    # -- messages -------------------------------------------------------------------------------

    def put_message(self, message: VaultMessage) -> bool:
        """Store a decrypted message; False if one with that id is already stored (kept)."""
        _check_id(message.message_id, "message_id")
        _check_id(message.thread_id, "thread_id")
        with self._mutex:
            db = self._use()
            keys = self._k()
            sealed = _seal(keys.messages, _ad("messages", message.message_id),
                           msgspec.msgpack.encode(message))
            with self._sql(db) as conn:
                cursor = conn.execute(
                    "INSERT INTO messages (message_id, thread_tag, sealed) VALUES (?, ?, ?) "
                    "ON CONFLICT (message_id) DO NOTHING",
                    (message.message_id, _tag(keys.threads, message.thread_id), sealed))
            return cursor.rowcount == 1

    def message(self, message_id: str) -> VaultMessage:
        with self._mutex:
            db = self._use()
            with self._sql(db) as conn:
                row = conn.execute("SELECT sealed FROM messages WHERE message_id = ?",
                                   (message_id,)).fetchone()
            if row is None:
                raise ItemNotFound(f"no message {message_id} in this vault")
            return self._decode_message(message_id, row[0])

    def messages(self, thread_id: str, *, unread_only: bool = False) -> list[VaultMessage]:
        """The messages of one thread, oldest first (by sent time, then arrival)."""
        with self._mutex:
            db = self._use()
            with self._sql(db) as conn:
                rows = conn.execute(
                    "SELECT message_id, sealed FROM messages WHERE thread_tag = ? ORDER BY seq",
                    (_tag(self._k().threads, thread_id),)).fetchall()
            found = [self._decode_message(mid, sealed) for mid, sealed in rows]
        # thread_tag is not authenticated: the decrypted thread id is what decides.
        found = [m for m in found if m.thread_id == thread_id and not (unread_only and m.read)]
        return sorted(found, key=lambda m: m.sent_at)  # stable: arrival order breaks ties

    def mark_read(self, message_id: str) -> None:
        with self._mutex:
            message = self.message(message_id)
            if message.read:
                return
            updated = msgspec.structs.replace(message, read=True)
            sealed = _seal(self._k().messages, _ad("messages", message_id),
                           msgspec.msgpack.encode(updated))
            with self._sql(self._use()) as conn:
                conn.execute("UPDATE messages SET sealed = ? WHERE message_id = ?",
                             (sealed, message_id))

    def update_message(self, message: VaultMessage) -> None:
        """Replace a stored message (the SDK drops an attachment's key from the stored body
        once the image is shredded, so the key cannot outlive the image)."""
        with self._mutex:
            db = self._use()
            keys = self._k()
            sealed = _seal(keys.messages, _ad("messages", message.message_id),
                           msgspec.msgpack.encode(message))
            with self._sql(db) as conn:
                cursor = conn.execute("UPDATE messages SET sealed = ? WHERE message_id = ?",
                                      (sealed, message.message_id))
            if cursor.rowcount != 1:
                raise ItemNotFound(f"no message {message.message_id} in this vault")

    def _decode_message(self, message_id: str, sealed: object) -> VaultMessage:
        return _decode_row(self._k().messages, "messages", message_id, sealed, VaultMessage,
                           "a stored message")

    # -- de-duplication (clients.sdk.connection.DedupeStore) -------------------------------------

    def _dedupe_seen(self, sender_device_id: str, message_id: str) -> bool:
        with self._mutex:
            db = self._use()
            tag = _tag(self._k().dedupe, sender_device_id, message_id)
            with self._sql(db) as conn:
                return conn.execute("SELECT 1 FROM dedupe WHERE tag = ?", (tag,)).fetchone() \
                    is not None

    def _dedupe_add(self, sender_device_id: str, message_id: str) -> None:
        with self._mutex:
            db = self._use()
            tag = _tag(self._k().dedupe, sender_device_id, message_id)
            with self._sql(db) as conn:
                conn.execute("INSERT INTO dedupe VALUES (?) ON CONFLICT DO NOTHING", (tag,))

    # -- notes: what the client must remember across restarts -----------------------------------

    def put_note(self, kind: str, key: str, value: bytes) -> None:
        """Keep ``value`` under (``kind``, ``key``), replacing what was there. The file shows
        the kind and how many notes there are, not the key (an HMAC) nor the value."""
        _check_id(kind, "kind")
        _check_id(key, "key")
        with self._mutex:
            db = self._use()
            keys = self._k()
            tag = _tag(keys.notes, kind, key)
            sealed = _seal(keys.notes, _ad("notes", kind + "\x00" + tag.hex()),
                           msgspec.msgpack.encode((key, value)))
            with self._sql(db) as conn:
                conn.execute("INSERT INTO notes VALUES (?, ?, ?) ON CONFLICT (tag) "
                             "DO UPDATE SET sealed = excluded.sealed", (tag, kind, sealed))

    def notes(self, kind: str) -> dict[str, bytes]:
        """Every note of ``kind``, by key."""
        with self._mutex:
            db = self._use()
            keys = self._k()
            with self._sql(db) as conn:
                rows = conn.execute("SELECT tag, sealed FROM notes WHERE kind = ?",
                                    (kind,)).fetchall()
            found: dict[str, bytes] = {}
            for tag, sealed in rows:
                plain = _open(keys.notes, _ad("notes", kind + "\x00" + bytes(tag).hex()),
                              sealed)
                try:
                    key, value = msgspec.msgpack.decode(plain, type=tuple[str, bytes])
                except msgspec.DecodeError as exc:
                    raise VaultCorrupt("a stored note is unreadable") from exc
                if _tag(keys.notes, kind, key) != tag:
                    raise VaultCorrupt("a stored note is damaged")
                found[key] = value
            return found

    # -- outbox: sends not yet stored by the relay ----------------------------------------------

    def put_outbox(self, record: OutboxRecord) -> None:
        """Write (or replace) a pending send; durable when this returns (synchronous=FULL)."""
        _check_id(record.message_id, "message_id")
        if record.stage not in OUTBOX_STAGES:
            raise ValueError(f"outbox stage must be one of {OUTBOX_STAGES}")
        with self._mutex:
            db = self._use()
            sealed = _seal(self._k().outbox, _ad("outbox", record.message_id),
                           msgspec.msgpack.encode(record))
            with self._sql(db) as conn:
                conn.execute("INSERT INTO outbox VALUES (?, ?, ?) ON CONFLICT (message_id) "
                             "DO UPDATE SET sealed = excluded.sealed",
                             (record.message_id, record.created_at, sealed))

    def outbox(self) -> list[OutboxRecord]:
        """Every pending send, oldest first."""
        with self._mutex:
            db = self._use()
            with self._sql(db) as conn:
                rows = conn.execute("SELECT message_id, sealed FROM outbox "
                                    "ORDER BY created_at, message_id").fetchall()
            return [self._decode_outbox(mid, sealed) for mid, sealed in rows]

    def drop_outbox(self, message_id: str) -> bool:
        """Forget a pending send (stored by the relay, or refused for good); False if absent."""
        with self._mutex:
            db = self._use()
            with self._sql(db) as conn:
                return conn.execute("DELETE FROM outbox WHERE message_id = ?",
                                    (message_id,)).rowcount == 1

    def _decode_outbox(self, message_id: str, sealed: object) -> OutboxRecord:
        return _decode_row(self._k().outbox, "outbox", message_id, sealed, OutboxRecord,
                           "a pending send in the vault")

    # -- images ---------------------------------------------------------------------------------

    def put_image(
        self,
        attachment_id: str,
        data: bytes,
        *,
        media_type: str,
        width: int | None = None,
        height: int | None = None,
        thread_id: str | None = None,
        message_id: str | None = None,
        record_reference: str | None = None,
    ) -> ImageInfo:
        """Encrypt ``data`` under a fresh key of its own and store it. Storing an id again
        replaces it; an id that was shredded is refused (ImageShredded)."""
        _check_id(attachment_id, "attachment_id")
        if not isinstance(data, bytes):
            raise TypeError("image data must be bytes")
        if len(data) > MAX_IMAGE_BYTES:
            raise ValueError(f"image over the {MAX_IMAGE_BYTES} byte limit")
        with self._mutex:
            db = self._use()
            keys = self._k()
            tombstone = self._tombstone(db, attachment_id)
            if tombstone is not None:
                raise ImageShredded(tombstone)
            image_key = SecretBytes(_sodium.random_bytes(_sodium.AEAD_KEY_BYTES))
            info = ImageInfo(attachment_id=attachment_id, media_type=media_type,
                             size=len(data), sha256=_sodium.sha256(data), stored_at=self._now(),
                             width=width, height=height, thread_id=thread_id,
                             message_id=message_id, record_reference=record_reference)
            row = (
                attachment_id,
                _seal(keys.image_keys, _ad("image-key", attachment_id), image_key.reveal()),
                _seal(image_key, _ad("image-info", attachment_id), msgspec.msgpack.encode(info)),
                _seal(image_key, _ad("image-data", attachment_id), data),
            )
            with self._sql(db) as conn:
                conn.execute("INSERT OR REPLACE INTO images VALUES (?, ?, ?, ?)", row)
            return info

    def image_info(self, attachment_id: str) -> ImageInfo:
        with self._mutex:
            db = self._use()
            image_key, sealed_info = self._image_row(db, attachment_id, "sealed_info")
            return self._decode_info(image_key, attachment_id, sealed_info)

    def get_image(self, attachment_id: str) -> StoredImage:
        """The decrypted image, in memory. ImageShredded after :meth:`shred`."""
        with self._mutex:
            db = self._use()
            image_key, sealed_info = self._image_row(db, attachment_id, "sealed_info")
            info = self._decode_info(image_key, attachment_id, sealed_info)
            _, sealed_data = self._image_row(db, attachment_id, "sealed_data")
            data = _open(image_key, _ad("image-data", attachment_id), sealed_data)
            if len(data) != info.size or _sodium.sha256(data) != info.sha256:
                raise VaultCorrupt(f"image {attachment_id} is damaged")
            return StoredImage(info=info, data=data)

    def images(self) -> list[ImageInfo]:
        """Every image still held (not shredded), oldest first."""
        with self._mutex:
            db = self._use()
            with self._sql(db) as conn:
                rows = conn.execute(
                    "SELECT attachment_id, wrapped_key, sealed_info FROM images").fetchall()
            found = [self._decode_info(self._unwrap(aid, wrapped), aid, sealed)
                     for aid, wrapped, sealed in rows]
        return sorted(found, key=lambda i: i.stored_at)

    def set_record_reference(self, attachment_id: str, record_reference: str) -> None:
        """Remember where the record keeps this image (from the filing receipt); the
        tombstone keeps it after shredding. A tombstone without one (its expiry order came
        before the receipt, or before the image was ever fetched) takes it; one that has a
        reference keeps it."""
        with self._mutex:
            db = self._use()
            try:
                image_key, sealed_info = self._image_row(db, attachment_id, "sealed_info")
            except ImageShredded as exc:
                if exc.tombstone.record_reference is not None:
                    return
                sealed_reference = _seal(self._k().tombstones, _ad("tombstones", attachment_id),
                                         record_reference.encode())
                with self._sql(db) as conn:
                    conn.execute("UPDATE tombstones SET sealed_reference = ? "
                                 "WHERE attachment_id = ?", (sealed_reference, attachment_id))
                return
            info = msgspec.structs.replace(
                self._decode_info(image_key, attachment_id, sealed_info),
                record_reference=record_reference)
            sealed = _seal(image_key, _ad("image-info", attachment_id),
                           msgspec.msgpack.encode(info))
            with self._sql(db) as conn:
                conn.execute("UPDATE images SET sealed_info = ? WHERE attachment_id = ?",
                             (sealed, attachment_id))

    def shred(self, attachment_id: str, *, record_reference: str | None = None) -> Tombstone:
        """Delete the image's key and ciphertext for good and leave a tombstone.

        Idempotent: shredding again returns the existing tombstone (expiry orders can arrive
        twice). ItemNotFound if the vault never held the image.
        """
        with self._mutex:
            db = self._use()
            keys = self._k()
            existing = self._tombstone(db, attachment_id)
            if existing is not None:
                return existing
            if record_reference is None:
                record_reference = self.image_info(attachment_id).record_reference
            shredded_at = self._now()
            sealed_reference = None if record_reference is None else _seal(
                keys.tombstones, _ad("tombstones", attachment_id), record_reference.encode())
            with self._sql(db) as conn:
                deleted = conn.execute("DELETE FROM images WHERE attachment_id = ?",
                                       (attachment_id,)).rowcount
                if deleted != 1:
                    raise ItemNotFound(f"no image {attachment_id} in this vault")
                conn.execute("INSERT INTO tombstones VALUES (?, ?, ?)",
                             (attachment_id, shredded_at, sealed_reference))
            return Tombstone(attachment_id, record_reference, shredded_at)

    def expire(self, attachment_id: str, *, record_reference: str | None = None) -> Tombstone:
        """Apply an expiry order (docs/PROTOCOL.md §15): shred the image if it is held, and
        leave a tombstone even if it never was, so that a delivery or download arriving after
        the order is refused by :meth:`put_image` (ImageShredded). Idempotent."""
        _check_id(attachment_id, "attachment_id")
        with self._mutex:
            db = self._use()
            existing = self._tombstone(db, attachment_id)
            if existing is not None:
                return existing
            with contextlib.suppress(ItemNotFound):
                return self.shred(attachment_id, record_reference=record_reference)
            shredded_at = self._now()
            sealed_reference = None if record_reference is None else _seal(
                self._k().tombstones, _ad("tombstones", attachment_id),
                record_reference.encode())
            with self._sql(db) as conn:
                conn.execute("INSERT INTO tombstones VALUES (?, ?, ?)",
                             (attachment_id, shredded_at, sealed_reference))
            return Tombstone(attachment_id, record_reference, shredded_at)

    def tombstone(self, attachment_id: str) -> Tombstone | None:
        with self._mutex:
            return self._tombstone(self._use(), attachment_id)

    def tombstones(self) -> list[Tombstone]:
        with self._mutex:
            db = self._use()
            with self._sql(db) as conn:
                ids = [r[0] for r in conn.execute(
                    "SELECT attachment_id FROM tombstones ORDER BY shredded_at").fetchall()]
            return [t for t in (self._tombstone(db, i) for i in ids) if t is not None]

    # -- consent withdrawals -----------------------------------------------------------------

    def note_consent_withdrawn(self, consent_id: str, at: int) -> None:
        """Remember that a consent was withdrawn (the relay's time), so every view shows it,
        after a restart too. The first time noted is kept."""
        name = "consent_withdrawn:" + _check_id(consent_id, "consent id")
        with self._mutex:
            db = self._use()
            sealed = _seal(self._k().state, _ad("secrets", name), str(int(at)).encode())
            with self._sql(db) as conn:
                conn.execute("INSERT INTO secrets VALUES (?, ?) ON CONFLICT (name) DO NOTHING",
                             (name, sealed))

    def consent_withdrawals(self) -> dict[str, int]:
        """Consent id -> when it was withdrawn (seconds since the epoch), as noted."""
        with self._mutex:
            db = self._use()
            with self._sql(db) as conn:
                rows = conn.execute("SELECT name, sealed FROM secrets "
                                    "WHERE name LIKE 'consent\\_withdrawn:%' ESCAPE '\\'"
                                    ).fetchall()
            return {name.split(":", 1)[1]: int(_open(self._k().state, _ad("secrets", name),
                                                     sealed).decode()) for name, sealed in rows}

    def _tombstone(self, db: sqlite3.Connection, attachment_id: str) -> Tombstone | None:
        with self._sql(db) as conn:
            row = conn.execute("SELECT shredded_at, sealed_reference FROM tombstones "
                               "WHERE attachment_id = ?", (attachment_id,)).fetchone()
        if row is None:
            return None
        reference = None if row[1] is None else _open(
            self._k().tombstones, _ad("tombstones", attachment_id), row[1]).decode()
        return Tombstone(attachment_id, reference, float(row[0]))

    def _image_row(self, db: sqlite3.Connection, attachment_id: str,
                   column: str) -> tuple[SecretBytes, object]:
        assert column in ("sealed_info", "sealed_data")
        with self._sql(db) as conn:
            row = conn.execute(f"SELECT wrapped_key, {column} FROM images "
                               "WHERE attachment_id = ?", (attachment_id,)).fetchone()
        if row is None:
            tombstone = self._tombstone(db, attachment_id)
            if tombstone is not None:
                raise ImageShredded(tombstone)
            raise ItemNotFound(f"no image {attachment_id} in this vault")
        return self._unwrap(attachment_id, row[0]), row[1]

    def _unwrap(self, attachment_id: str, wrapped: object) -> SecretBytes:
        key = _open(self._k().image_keys, _ad("image-key", attachment_id), wrapped)
        if len(key) != _sodium.AEAD_KEY_BYTES:
            raise VaultCorrupt(f"the key of image {attachment_id} is damaged")
        return SecretBytes(key)

    def _decode_info(self, image_key: SecretBytes, attachment_id: str,
                     sealed: object) -> ImageInfo:
        plain = _open(image_key, _ad("image-info", attachment_id), sealed)
        try:
            info = msgspec.msgpack.decode(plain, type=ImageInfo)
        except msgspec.DecodeError as exc:
            raise VaultCorrupt(f"the record of image {attachment_id} is unreadable") from exc
        if info.attachment_id != attachment_id:
            raise VaultCorrupt(f"the record of image {attachment_id} is damaged")
        return info

    # -- plumbing -------------------------------------------------------------------------------

    def _prepare_directory(self) -> None:
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(self.directory, 0o700)
        except OSError as exc:
            raise VaultUnavailable(f"cannot create {self.directory}: {exc.strerror}") from exc

    def _connect(self) -> sqlite3.Connection:
        try:
            # Autocommit mode: every change goes through _sql's explicit transaction.
            db = sqlite3.connect(self.path, timeout=5.0, isolation_level=None,
                                 check_same_thread=False)
        except sqlite3.Error as exc:
            raise _map_sqlite_error(exc) from exc
        try:
            with _mapped():
                # secure_delete: freed pages are zeroed (shredding); temp_store: SQLite's
                # temporary tables and sorts never touch a temp folder; DELETE journal: no
                # -wal file keeping old pages around after a checkpoint.
                for pragma in ("secure_delete = ON", "temp_store = MEMORY",
                               "journal_mode = DELETE", "synchronous = FULL",
                               "foreign_keys = ON", "trusted_schema = OFF"):
                    db.execute(f"PRAGMA {pragma}")
        except BaseException:
            db.close()
            raise
        return db

    @contextlib.contextmanager
    def _sql(self, db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
        """One transaction; every SQLite failure becomes a VaultError."""
        with _mapped():
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    def _read_meta(self, db: sqlite3.Connection) -> dict[str, bytes]:
        with self._sql(db) as conn:
            rows = conn.execute("SELECT name, value FROM meta").fetchall()
        meta = {name: value for name, value in rows if isinstance(value, bytes)}
        if meta.get("format") != _FORMAT:
            raise VaultCorrupt("not a Lightbox vault (or a newer version)")
        if len(meta.get("vault_id", b"")) != 16 or "sealed_master" not in meta:
            raise VaultCorrupt("the vault's key record is missing")
        return meta

    def _set_unlocked(self, db: sqlite3.Connection, master: bytes, vault_id: bytes) -> None:
        self._db = db
        self._master = SecretBytes(master)
        self._keys = _Keys.derive(master, vault_id)
        self._last_used = self._clock()

    def _use(self) -> sqlite3.Connection:
        """The open connection, after checking the lock; counts as activity."""
        if self._keys is None or self._db is None:
            raise VaultLocked("the vault is locked: unlock it with your passphrase")
        if self.lock_if_idle():
            raise VaultLocked(
                f"the vault locked itself after {self.idle_timeout:.0f} s without use: "
                "unlock it with your passphrase")
        self._last_used = self._clock()
        return self._db

    def _k(self) -> _Keys:
        if self._keys is None:
            raise VaultLocked("the vault is locked: unlock it with your passphrase")
        return self._keys


class VaultDedupe:
    """The vault's persisted set of (sender device, message id) seen: a
    :class:`clients.sdk.connection.DedupeStore`. Raises VaultLocked while the vault is locked."""

    def __init__(self, vault: Vault) -> None:
        self._vault = vault

    def seen(self, sender_device_id: str, message_id: str) -> bool:
        return self._vault._dedupe_seen(sender_device_id, message_id)

    def add(self, sender_device_id: str, message_id: str) -> None:
        self._vault._dedupe_add(sender_device_id, message_id)


_UNAVAILABLE: Final = frozenset({
    "SQLITE_BUSY", "SQLITE_LOCKED", "SQLITE_FULL", "SQLITE_READONLY", "SQLITE_CANTOPEN",
    "SQLITE_PERM", "SQLITE_IOERR", "SQLITE_NOMEM", "SQLITE_INTERRUPT",
})


def _map_sqlite_error(exc: sqlite3.Error) -> VaultError:
    # Extended names such as SQLITE_IOERR_SHORT_READ map by their primary code.
    primary = "_".join((getattr(exc, "sqlite_errorname", "") or "").split("_")[:2])
    if primary in _UNAVAILABLE:
        return VaultUnavailable(f"the vault cannot be used right now ({exc})")
    return VaultCorrupt(f"the vault file is damaged or is not a vault ({exc})")


@contextlib.contextmanager
def _mapped() -> Iterator[None]:
    try:
        yield
    except sqlite3.Error as exc:
        raise _map_sqlite_error(exc) from exc
