"""What the vault stores and how a row is sealed (clients/sdk/vault.py has the design): the
records (messages, images, pending sends, tombstones), the errors, the vault's subkeys, and
each row sealed by protocol.local under a label naming its table and id, so a row cannot be
moved to another place and still open.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Final, Protocol, TypeVar

import msgspec

from protocol.errors import VerificationError
from protocol.keys import (
    SecretBytes,
)
from protocol.local import (
    derive_local_key,
    local_tag,
    open_local,
    record_label,
    seal_local,
)

__all__ = [
    "MAX_ID",
    "MAX_IMAGE_BYTES",
    "OUTBOX_STAGES",
    "UNAVAILABLE",
    "VAULT_FORMAT",
    "ImageInfo",
    "ImageShredded",
    "ItemNotFound",
    "OutboxImage",
    "OutboxRecord",
    "StoredImage",
    "Tombstone",
    "VaultCore",
    "VaultCorrupt",
    "VaultError",
    "VaultExists",
    "VaultKeys",
    "VaultLocked",
    "VaultMessage",
    "VaultNotFound",
    "VaultPassphraseError",
    "VaultUnavailable",
    "check_id",
    "decode_row",
    "map_sqlite_error",
    "mapped",
    "open_row",
    "row_label",
    "row_tag",
    "seal_row",
]


MAX_IMAGE_BYTES: Final = 64 * 1024 * 1024  # protocol.attachments.MAX_ATTACHMENT_SIZE


MAX_ID: Final = 200


VAULT_FORMAT: Final = b"lightbox-vault/1"


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
    # Break-glass (docs/PROTOCOL.md §17): the category the signed header declared, if any.
    emergency: str | None = None
    # The signed header's sent_at of a message this device sent (``sent_at`` is when it was
    # written); None in rows kept before it was recorded, and for received messages, whose
    # ``sent_at`` is the header's. A handed-over copy names it (docs/PROTOCOL.md §16.4).
    signed_at: int | None = None

    @property
    def header_sent_at(self) -> int:
        """The sent_at of the message's signed header, as every recipient holds it."""
        return int(self.sent_at) if self.signed_at is None else self.signed_at

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
    emergency: str | None = None  # break-glass category for the header (reason in the body)
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


@dataclass(frozen=True, slots=True)
class VaultKeys:
    state: SecretBytes
    messages: SecretBytes
    threads: SecretBytes
    image_keys: SecretBytes
    tombstones: SecretBytes
    dedupe: SecretBytes
    notes: SecretBytes
    outbox: SecretBytes

    @classmethod
    def derive(cls, master: bytes, vault_id: bytes) -> VaultKeys:
        def sub(label: str) -> SecretBytes:
            return derive_local_key(master, salt=vault_id,
                                    label=b"lightbox/vault/v1/" + label.encode())

        return cls(state=sub("state"), messages=sub("messages"), threads=sub("threads"),
                   image_keys=sub("image-keys"), tombstones=sub("tombstones"),
                   dedupe=sub("dedupe"), notes=sub("notes"), outbox=sub("outbox"))


def row_label(table: str, *row_id: str) -> bytes:
    """A row's label (protocol.local.record_label): the format, the table, the row's id."""
    return record_label(VAULT_FORMAT, table, *row_id)


def seal_row(key: SecretBytes, ad: bytes, plaintext: bytes) -> bytes:
    return seal_local(key, plaintext, label=ad)


def open_row(key: SecretBytes, ad: bytes, blob: object) -> bytes:
    if not isinstance(blob, bytes):
        raise VaultCorrupt("a vault record is damaged")
    try:
        return open_local(key, blob, label=ad)
    except VerificationError as exc:
        raise VaultCorrupt("a vault record is damaged or was tampered with") from exc


Row = TypeVar("Row", "VaultMessage", "OutboxRecord", "ImageInfo")


def decode_row(key: SecretBytes, table: str, row_id: str, sealed: object,
               cls: type[Row], what: str) -> Row:
    """Open and decode a row (a message, a pending send, an image's record) and check that it
    is the row its id says (the id it holds, ``message_id`` or ``attachment_id``)."""
    plain = open_row(key, row_label(table, row_id), sealed)
    try:
        row = msgspec.msgpack.decode(plain, type=cls)
    except msgspec.DecodeError as exc:
        raise VaultCorrupt(f"{what} is unreadable") from exc
    held = row.attachment_id if isinstance(row, ImageInfo) else row.message_id
    if held != row_id:
        raise VaultCorrupt(f"{what} is damaged")
    return row


def row_tag(key: SecretBytes, *parts: str) -> bytes:
    return local_tag(key, *parts)


def check_id(value: str, what: str) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= MAX_ID:
        raise ValueError(f"{what} must be a non-empty string of at most {MAX_ID} characters")
    return value


# --- SQLite errors as vault errors ---------------------------------------------------------


UNAVAILABLE: Final = frozenset({
    "SQLITE_BUSY", "SQLITE_LOCKED", "SQLITE_FULL", "SQLITE_READONLY", "SQLITE_CANTOPEN",
    "SQLITE_PERM", "SQLITE_IOERR", "SQLITE_NOMEM", "SQLITE_INTERRUPT",
})


def map_sqlite_error(exc: sqlite3.Error) -> VaultError:
    # Extended names such as SQLITE_IOERR_SHORT_READ map by their primary code.
    primary = "_".join((getattr(exc, "sqlite_errorname", "") or "").split("_")[:2])
    if primary in UNAVAILABLE:
        return VaultUnavailable(f"the vault cannot be used right now ({exc})")
    return VaultCorrupt(f"the vault file is damaged or is not a vault ({exc})")


@contextlib.contextmanager
def mapped() -> Iterator[None]:
    try:
        yield
    except sqlite3.Error as exc:
        raise map_sqlite_error(exc) from exc


class VaultCore(Protocol):
    """What the vault's parts (clients/sdk/vaultimages.py, clients/sdk/vaultnotes.py) use of
    the :class:`~clients.sdk.vault.Vault` they work in: its lock, its open connection, its
    keys (VaultLocked while locked), one transaction, its clock."""

    _mutex: threading.RLock
    _keys: VaultKeys | None
    _now: Callable[[], float]

    def _use(self) -> sqlite3.Connection: ...

    def _k(self) -> VaultKeys: ...

    def _sql(self, db: sqlite3.Connection) -> AbstractContextManager[sqlite3.Connection]: ...
