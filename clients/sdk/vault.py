"""The device's vault: keys, messages and images in one encrypted SQLite file.

Why (docs/ARCHITECTURE.md §1 step 4, §6; ARCHITECTURE.md §3): a phone or desktop that holds consult
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
from pathlib import Path
from types import TracebackType
from typing import Final, Self

import msgspec

from clients.sdk.environ import number_setting
from clients.sdk.kdf import passphrase_profile
from clients.sdk.keystore import DeviceState, state_lock
from clients.sdk.vaultimages import VaultImages
from clients.sdk.vaultnotes import SenderSeenSet, VaultDedupe, VaultNotes
from clients.sdk.vaultrows import (
    MAX_IMAGE_BYTES,
    OUTBOX_STAGES,
    VAULT_FORMAT,
    ImageInfo,
    ImageShredded,
    ItemNotFound,
    OutboxImage,
    OutboxRecord,
    StoredImage,
    Tombstone,
    VaultCorrupt,
    VaultError,
    VaultExists,
    VaultKeys,
    VaultLocked,
    VaultMessage,
    VaultNotFound,
    VaultPassphraseError,
    VaultUnavailable,
    check_id,
    decode_row,
    map_sqlite_error,
    mapped,
    open_row,
    row_label,
    row_tag,
    seal_row,
)
from protocol.errors import DecodeError, ProtocolError, VerificationError
from protocol.keys import (
    SENSITIVE_PROFILE,
    PassphraseProfile,
    SecretBytes,
    open_with_passphrase,
    random_bytes,
    seal_with_passphrase,
)
from protocol.local import (
    new_local_key,
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
    "SenderSeenSet",
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

# --- errors ------------------------------------------------------------------------------------


# --- records -----------------------------------------------------------------------------------


# --- keys --------------------------------------------------------------------------------------


def _idle_timeout_from_env() -> float:
    value = number_setting(IDLE_TIMEOUT_ENV, DEFAULT_IDLE_TIMEOUT, float,
                           lambda v: 0 < v <= MAX_IDLE_TIMEOUT)
    if value is None:
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
        self._keys: VaultKeys | None = None
        self._master: SecretBytes | None = None
        self._state: DeviceState | None = None
        self._last_used = 0.0
        # Notes, the outbox, consent withdrawals and the record of deliveries seen
        # (clients/sdk/vaultnotes.py), as the vault's own methods.
        self._notes = VaultNotes(self)
        self.dedupe = VaultDedupe(self._notes)
        self.put_note = self._notes.put_note
        self.notes = self._notes.notes
        self.drop_note = self._notes.drop_note
        self.put_outbox = self._notes.put_outbox
        self.outbox = self._notes.outbox
        self.drop_outbox = self._notes.drop_outbox
        self.note_consent_withdrawn = self._notes.note_consent_withdrawn
        self.consent_withdrawals = self._notes.consent_withdrawals
        # Images and tombstones (clients/sdk/vaultimages.py), as the vault's own methods.
        self._images = VaultImages(self)
        self.put_image = self._images.put_image
        self.image_info = self._images.image_info
        self.get_image = self._images.get_image
        self.images = self._images.images
        self.set_record_reference = self._images.set_record_reference
        self.shred = self._images.shred
        self.expire = self._images.expire
        self.tombstone = self._images.tombstone
        self.tombstones = self._images.tombstones

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
            master = new_local_key().reveal()
            vault_id = random_bytes(16)
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
                        ("format", VAULT_FORMAT), ("vault_id", vault_id),
                        ("sealed_master", sealed)])
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
                    # A damaged key record fails the same check (its MAC): far rarer than a
                    # mistyped password, so said second, with what to do.
                    raise VaultPassphraseError(
                        "wrong password (passwords are case-sensitive; if you are sure of it, "
                        "this device's vault may be damaged: ask IT to enrol it again)") from exc
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
                plain = open_row(self._k().state, row_label("secrets", "device_state"), row[0])
                try:
                    self._state = msgspec.msgpack.decode(plain, type=DeviceState)
                except msgspec.DecodeError as exc:
                    raise VaultCorrupt("the device keys in the vault are unreadable") from exc
            return self._state

    def reload(self) -> DeviceState:
        """The device state as saved now, by this program or another one of the profile
        (clients/sdk/sharedtokens.py)."""
        with self._mutex:
            self._use()
            self._state = None
            return self.state

    def save(self, state: DeviceState) -> None:
        with self._mutex:
            db = self._use()
            sealed = seal_row(self._k().state, row_label("secrets", "device_state"),
                           msgspec.msgpack.encode(state))
            with self._sql(db) as conn:
                conn.execute("INSERT INTO secrets VALUES ('device_state', ?) ON CONFLICT (name) "
                             "DO UPDATE SET sealed = excluded.sealed", (sealed,))
            self._state = state

    def update(self, change: Callable[[DeviceState], DeviceState]) -> DeviceState:
        """``change`` applied to the device state as the vault holds it now, saved under the
        profile's state lock (clients/sdk/keystore.py ``state_lock``): what another program of
        the profile saved meanwhile is kept."""
        with self._mutex, state_lock(self.directory):
            state = change(self.reload())
            self.save(state)
            return state

    # -- messages -------------------------------------------------------------------------------

    def put_message(self, message: VaultMessage) -> bool:
        """Store a decrypted message; False if one with that id is already stored (kept).

        The message is recorded as seen from its sender device in the same transaction
        (:class:`VaultDedupe`): a delivery that comes again, after a crash before it was
        acknowledged or as a replay, is recognised whatever the moment of the crash."""
        check_id(message.message_id, "message_id")
        check_id(message.thread_id, "thread_id")
        with self._mutex:
            db = self._use()
            keys = self._k()
            sealed = self._seal_message(message)
            with self._sql(db) as conn:
                cursor = conn.execute(
                    "INSERT INTO messages (message_id, thread_tag, sealed) VALUES (?, ?, ?) "
                    "ON CONFLICT (message_id) DO NOTHING",
                    (message.message_id, row_tag(keys.threads, message.thread_id), sealed))
                conn.execute("INSERT INTO dedupe VALUES (?) ON CONFLICT DO NOTHING",
                             (row_tag(keys.dedupe, message.sender_device_id, message.message_id),))
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
                    (row_tag(self._k().threads, thread_id),)).fetchall()
            found = [self._decode_message(mid, sealed) for mid, sealed in rows]
        # thread_tag is not authenticated: the decrypted thread id is what decides.
        found = [m for m in found if m.thread_id == thread_id and not (unread_only and m.read)]
        return sorted(found, key=lambda m: m.sent_at)  # stable: arrival order breaks ties

    def last_message_seq(self) -> int:
        """The arrival number of the newest stored message (0 for none): a mark for
        :meth:`message_ids_after`."""
        with self._mutex:
            db = self._use()
            with self._sql(db) as conn:
                row = conn.execute("SELECT max(seq) FROM messages").fetchone()
            return int(row[0] or 0)

    def message_ids_after(self, seq: int) -> list[tuple[int, str]]:
        """(arrival number, message id) of the messages stored after ``seq``, in arrival
        order, by this program or another one on the same vault (nothing is decrypted)."""
        with self._mutex:
            db = self._use()
            with self._sql(db) as conn:
                rows = conn.execute("SELECT seq, message_id FROM messages WHERE seq > ? "
                                    "ORDER BY seq", (seq,)).fetchall()
            return [(int(n), str(mid)) for n, mid in rows]

    def mark_read(self, message_id: str) -> None:
        with self._mutex:
            message = self.message(message_id)
            if message.read:
                return
            self.update_message(msgspec.structs.replace(message, read=True))

    def update_message(self, message: VaultMessage) -> None:
        """Replace a stored message (the SDK drops an attachment's key from the stored body
        once the image is shredded, so the key cannot outlive the image)."""
        with self._mutex:
            db = self._use()
            sealed = self._seal_message(message)
            with self._sql(db) as conn:
                cursor = conn.execute("UPDATE messages SET sealed = ? WHERE message_id = ?",
                                      (sealed, message.message_id))
            if cursor.rowcount != 1:
                raise ItemNotFound(f"no message {message.message_id} in this vault")

    def _seal_message(self, message: VaultMessage) -> bytes:
        return seal_row(self._k().messages, row_label("messages", message.message_id),
                        msgspec.msgpack.encode(message))

    def _decode_message(self, message_id: str, sealed: object) -> VaultMessage:
        return decode_row(self._k().messages, "messages", message_id, sealed, VaultMessage,
                           "a stored message")

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
            raise map_sqlite_error(exc) from exc
        try:
            with mapped():
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
        with mapped():
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
        if meta.get("format") != VAULT_FORMAT:
            raise VaultCorrupt("not a Lightbox vault (or a newer version)")
        if len(meta.get("vault_id", b"")) != 16 or "sealed_master" not in meta:
            raise VaultCorrupt("the vault's key record is missing")
        return meta

    def _set_unlocked(self, db: sqlite3.Connection, master: bytes, vault_id: bytes) -> None:
        self._db = db
        self._master = SecretBytes(master)
        self._keys = VaultKeys.derive(master, vault_id)
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

    def _k(self) -> VaultKeys:
        if self._keys is None:
            raise VaultLocked("the vault is locked: unlock it with your passphrase")
        return self._keys


