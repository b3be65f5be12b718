"""Statements signed by a device key: filing receipts, expiry confirmations, read receipts.

Why (docs/ARCHITECTURE.md §6, docs/PROTOCOL.md §8): the relay acts on what devices attest - the
record gateway that an image is filed in PACS, each device that it shredded its copy, recipients
that a message was delivered, read or acknowledged - and keeps the statements as evidence. Each is
a frozen struct, RFC 8785 canonical JSON, in the compact signed format of
:mod:`protocol.canonical` (Ed25519, RFC 8032) with its own domain label, so no statement can
pass for another or for a certificate. Verification failures raise one opaque
VerificationError (reason in ``.reason``).
"""

from __future__ import annotations

import enum
from typing import Annotated, Final, Generic, TypeVar

import msgspec

from protocol import canonical
from protocol.canonical import Bytes32, Signer, Timestamp, UuidStr
from protocol.errors import DecodeError, VerificationError

__all__ = [
    "MAX_STATEMENT_LENGTH",
    "STATEMENT_VERSION",
    "ExpiryConfirmation",
    "FilingStatement",
    "ReceiptKind",
    "ReceiptStatement",
    "WipeConfirmation",
    "issue_expiry_confirmation",
    "issue_filing_statement",
    "issue_receipt_statement",
    "issue_wipe_confirmation",
    "verify_expiry_confirmation",
    "verify_filing_statement",
    "verify_receipt_statement",
    "verify_wipe_confirmation",
]

T = TypeVar("T")
S = TypeVar("S", bound=msgspec.Struct)

STATEMENT_VERSION: Final = 1
MAX_STATEMENT_LENGTH: Final = 4 * 1024
Version = Annotated[int, msgspec.Meta(ge=1, le=255)]


class ReceiptKind(enum.StrEnum):
    DELIVERED = "delivered"
    READ = "read"
    ACKNOWLEDGED = "acknowledged"  # the consultant accepted responsibility for the consult


class FilingStatement(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """By the record gateway device: the attachment is stored in PACS and read back.

    ``receipt_sha256`` is the SHA-256 of the full sealed filing receipt (the encrypted message
    carrying the Study/Series/SOP Instance UIDs), binding this statement to it."""

    v: Version
    statement_id: UuidStr
    device_id: UuidStr  # the gateway device
    attachment_id: UuidStr
    message_id: UuidStr
    thread_id: UuidStr
    filed_at: Timestamp
    receipt_sha256: Bytes32


class ExpiryConfirmation(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """By a device: it deleted the attachment's key and file, as ordered by ``order_id``."""

    v: Version
    device_id: UuidStr
    attachment_id: UuidStr
    order_id: UuidStr
    shredded_at: Timestamp


class WipeConfirmation(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """By a device revoked with wipe: it verified the order ``order_id`` and erased its vault
    and keys (signed just before the key itself was erased; sent only once it is gone)."""

    v: Version
    device_id: UuidStr
    order_id: UuidStr
    wiped_at: Timestamp


class ReceiptStatement(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """By a recipient device: a message was delivered to it, read, or acknowledged."""

    v: Version
    device_id: UuidStr
    message_id: UuidStr
    thread_id: UuidStr
    kind: ReceiptKind
    at: Timestamp


def _issue(label: bytes, body: msgspec.Struct, signer: Signer) -> str:
    if getattr(body, "v", None) != STATEMENT_VERSION:
        raise ValueError("unsupported statement version")
    return canonical.sign_compact(label, canonical.encode_struct(body), signer)


def _verify(
    label: bytes, token: str, cls: type[T], signing_key: bytes, expected_device_id: str | None
) -> T:
    try:
        body = canonical.open_compact(
            label, token, cls, signing_key, max_length=MAX_STATEMENT_LENGTH
        )
    except DecodeError as exc:
        raise VerificationError(f"malformed {cls.__name__}: {exc}") from exc
    if getattr(body, "v", None) != STATEMENT_VERSION:
        raise VerificationError(f"unsupported {cls.__name__} version")
    if expected_device_id is not None and getattr(body, "device_id", None) != expected_device_id:
        raise VerificationError(f"{cls.__name__} names another device than its signer")
    return body


class _Statement(Generic[S]):
    """One kind of statement: its domain label and struct, and the sign/verify pair for it."""

    def __init__(self, label: bytes, cls: type[S]) -> None:
        self._label = label
        self._cls = cls

    def issue(self, body: S, device_key: Signer) -> str:
        """Sign ``body`` with the device's key (ValueError for another statement version)."""
        return _issue(self._label, body, device_key)

    def verify(self, token: str, signing_key: bytes, *, device_id: str | None = None) -> S:
        """Verify under the device's Ed25519 key (and that it names ``device_id``)."""
        return _verify(self._label, token, self._cls, signing_key, device_id)


_FILING: Final = _Statement(canonical.LABEL_FILING_STATEMENT, FilingStatement)
_EXPIRY: Final = _Statement(canonical.LABEL_EXPIRY_CONFIRMATION, ExpiryConfirmation)
_RECEIPT: Final = _Statement(canonical.LABEL_RECEIPT_STATEMENT, ReceiptStatement)
_WIPE: Final = _Statement(canonical.LABEL_WIPE_CONFIRMATION, WipeConfirmation)

# By the record gateway device, under its key.
issue_filing_statement: Final = _FILING.issue
verify_filing_statement: Final = _FILING.verify
# By a device, once it deleted the attachment's key and file.
issue_expiry_confirmation: Final = _EXPIRY.issue
verify_expiry_confirmation: Final = _EXPIRY.verify
# By a recipient device: delivered, read or acknowledged.
issue_receipt_statement: Final = _RECEIPT.issue
verify_receipt_statement: Final = _RECEIPT.verify
# By a device revoked with wipe, before its key is erased.
issue_wipe_confirmation: Final = _WIPE.issue
verify_wipe_confirmation: Final = _WIPE.verify
