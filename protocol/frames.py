"""The websocket frame catalogue of the relay, and its strict codec.

Every message on ``/v1/ws`` is one *binary* websocket data frame (RFC 6455 §5.6, opcode 0x2)
holding one MessagePack map: a frozen, strictly typed struct tagged by its ``t`` field. Text
frames are not used. The codec is the edge where hostile input is stopped, so
:func:`decode_frame` checks the frame size before parsing, rejects unknown fields, wrong types
and oversize values, and raises nothing but :class:`~protocol.errors.DecodeError` (or its
subclass :class:`~protocol.errors.LimitExceeded`) with one precise code:

==========================  ================================================================
``frame_too_large``         the frame is longer than ``max_frame_size`` (checked first)
``unknown_frame_type``      a MessagePack map whose ``t`` names no frame in the catalogue
``field_too_large``         a string, byte string or list is longer than its limit
``malformed_frame``         anything else: not MessagePack, not a map, trailing bytes, a
                            missing or unknown field, a wrong type or an out-of-range number
==========================  ================================================================

Limits are module constants (documented in docs/PROTOCOL.md §3 and docs/SECURITY.md); those a
client must respect when sending are announced in the ``ready`` frame (:class:`Limits`).
:data:`DIRECTION` says who may send each frame; :mod:`protocol.session` enforces it together
with the connection state. Version negotiation (:func:`negotiate`) happens in ``hello`` /
``challenge``; the chosen version is bound into the device's challenge signature
(:func:`challenge_signing_bytes`).
"""

from __future__ import annotations

import enum
import hashlib
import re
from collections.abc import Iterable, Mapping
from typing import Annotated, Final, TypeAlias

import msgspec
from msgspec import Meta

from protocol.canonical import MAX_SAFE_INTEGER, UUID_RE
from protocol.certs import RevocationSubject
from protocol.errors import DecodeError, ErrorCode, LimitExceeded
from protocol.model import SUPPORTED_VERSIONS, Priority, SealedMessage
from protocol.statements import ReceiptKind

__all__ = [
    "BUNDLE_SUBPROTOCOL",
    "CHALLENGE_LABEL",
    "DEFAULT_ACK_BATCH",
    "DEFAULT_HEARTBEAT",
    "DEFAULT_MAX_FRAME",
    "DEFAULT_SEND_WINDOW",
    "DIRECTION",
    "FRAME_TYPES",
    "MAX_ACCESS_TOKEN",
    "MAX_ACK_BATCH",
    "MAX_ATTACHMENTS",
    "MAX_BUNDLE",
    "MAX_CIPHERTEXT",
    "MAX_CLIENT_NAME",
    "MAX_DETAIL",
    "MAX_DEVICE_LIST",
    "MAX_PING_NONCE",
    "MAX_REASON",
    "MAX_RECORD_REF",
    "MAX_REQ_ID",
    "MAX_REVOCATION",
    "MAX_STATEMENT",
    "MAX_VERSIONS",
    "NONCE_SIZE",
    "SIGNATURE_SIZE",
    "Accepted",
    "Ack",
    "Auth",
    "Bundle",
    "Challenge",
    "Deliver",
    "Direction",
    "Error",
    "EscalationKind",
    "EscalationNotice",
    "ExpireOrder",
    "ExpiryConfirm",
    "ExpiryReason",
    "FiledNotice",
    "Filing",
    "Frame",
    "Hello",
    "KeysLow",
    "Limits",
    "NotReceived",
    "Ping",
    "Pong",
    "QueueEmpty",
    "Ready",
    "Receipt",
    "ReceiptKind",
    "ReceiptNotice",
    "ResealRequest",
    "RevocationSubject",
    "Revoked",
    "Send",
    "WipeConfirm",
    "WipeOrder",
    "WithdrawReason",
    "Withdrawn",
    "challenge_signing_bytes",
    "decode_frame",
    "encode_deliver",
    "encode_frame",
    "negotiate",
    "pack_bundles",
    "peek_req_id",
]

# --------------------------------------------------------------------------------------------
# Limits. Sizes are in bytes for ``bytes`` and in characters for ``str``; counts for lists.
# --------------------------------------------------------------------------------------------

DEFAULT_MAX_FRAME: Final = 1024 * 1024
"""Largest frame either side accepts by default (1 MiB). Checked before any parsing; a larger
frame closes the connection with 1009 (RFC 6455 §7.4.1). Images never travel in frames: they are
uploaded as ciphertext over HTTP, so a frame only holds text, keys and headers."""
MAX_CIPHERTEXT: Final = 512 * 1024
"""Largest sealed-message body ciphertext (``SealedMessage.ciphertext``) in a frame."""
MAX_DEVICE_LIST: Final = 256
"""Most devices in any list: wrapped keys and recipients of a message, reseal targets, and the
missing/extra/stale lists of an ``error``."""
MAX_ATTACHMENTS: Final = 32
"""Most attachment ids one message may reference."""
MAX_ACK_BATCH: Final = 256
"""Most delivery ids in one ``ack``."""
MAX_VERSIONS: Final = 16
"""Most protocol versions a ``hello`` may offer."""
MAX_REQ_ID: Final = 64
"""Longest client-chosen request id."""
MAX_ACCESS_TOKEN: Final = 4096
"""Longest access token (a compact JWS, RFC 7515 §7.1) in ``hello``."""
MAX_CLIENT_NAME: Final = 64
"""Longest client name and client version strings in ``hello``."""
MAX_STATEMENT: Final = 8192
"""Longest compact signed statement (receipt, filing, expiry confirmation)."""
MAX_REVOCATION: Final = 900 * 1024
"""Longest org-signed compact revocation list in ``wipe_order`` (protocol.certs; a list is
cumulative, so it is bounded by the frame size rather than by :data:`MAX_STATEMENT`)."""
MAX_DETAIL: Final = 1024
"""Longest human-readable ``detail`` of an ``error``."""
MAX_REASON: Final = 128
"""Longest free-text reason (``revoked``)."""
MAX_RECORD_REF: Final = 256
"""Longest record reference (a DICOM Study Instance UID is at most 64; a URL may be longer)."""
MAX_PING_NONCE: Final = 32
"""Longest ``ping``/``pong`` nonce."""
MAX_BUNDLE: Final = 64
"""Most frames in one ``bundle`` (docs/PROTOCOL.md §3.6)."""
BUNDLE_SUBPROTOCOL: Final = "lightbox.bundle"
"""The websocket subprotocol (RFC 6455 §1.9, ``Sec-WebSocket-Protocol``) a client asks for
when it can take ``bundle`` frames; the relay selects it when it can too, and only then may
either side send one (docs/PROTOCOL.md §3.6)."""
NONCE_SIZE: Final = 32
"""Size of the server's challenge nonce."""
SIGNATURE_SIZE: Final = 64
"""Size of an Ed25519 signature (RFC 8032 §5.1.6)."""
DEFAULT_HEARTBEAT: Final = 30
"""Default heartbeat interval in seconds announced in ``ready``."""
DEFAULT_SEND_WINDOW: Final = 32
"""Default number of ``send`` frames a client may have awaiting ``accepted``/``error``."""
DEFAULT_ACK_BATCH: Final = MAX_ACK_BATCH

# Identifiers are lowercase UUID strings (docs/PROTOCOL.md §1).
Uuid: TypeAlias = Annotated[str, Meta(min_length=36, max_length=36, pattern=f"^{UUID_RE.pattern}$")]
ReqId: TypeAlias = Annotated[str, Meta(min_length=1, max_length=MAX_REQ_ID)]
Time: TypeAlias = Annotated[int, Meta(ge=0, le=MAX_SAFE_INTEGER)]  # seconds since the epoch, UTC
Count: TypeAlias = Annotated[int, Meta(ge=0, le=2**31 - 1)]
Positive: TypeAlias = Annotated[int, Meta(ge=1, le=2**31 - 1)]
Seq: TypeAlias = Annotated[int, Meta(ge=1, le=2**63 - 1)]
Version: TypeAlias = Annotated[int, Meta(ge=1, le=65535)]
Statement: TypeAlias = Annotated[str, Meta(min_length=1, max_length=MAX_STATEMENT)]
DeviceList: TypeAlias = Annotated[list[Uuid], Meta(max_length=MAX_DEVICE_LIST)]
Nonce: TypeAlias = Annotated[bytes, Meta(min_length=NONCE_SIZE, max_length=NONCE_SIZE)]
Signature: TypeAlias = Annotated[bytes, Meta(min_length=SIGNATURE_SIZE, max_length=SIGNATURE_SIZE)]
PingNonce: TypeAlias = Annotated[bytes, Meta(max_length=MAX_PING_NONCE)]


# --------------------------------------------------------------------------------------------
# Enums carried in frames
# --------------------------------------------------------------------------------------------


class Direction(enum.StrEnum):
    """Who may send a frame type."""

    CLIENT_TO_SERVER = "client->server"
    SERVER_TO_CLIENT = "server->client"
    BOTH = "both"


class WithdrawReason(enum.StrEnum):
    """Why the relay withdrew a message it had accepted."""

    CONSENT_REVOKED = "consent_revoked"  # the patient withdrew the consent it was sent under
    SENDER_REVOKED = "sender_revoked"  # the sending device was revoked before delivery


class ExpiryReason(enum.StrEnum):
    """Why a device copy of an attachment must be shredded (docs/ARCHITECTURE.md §6)."""

    FILED = "filed"  # filed in the record; grace period over
    CONSENT_REVOKED = "consent_revoked"
    HARD_LIMIT = "hard_limit"  # never filed within the hard limit
    WIPE = "wipe"  # the device is being wiped


class EscalationKind(enum.StrEnum):
    """On-call escalation events of a consult."""

    RENOTIFY = "renotify"  # nobody acknowledged: notify the current step again
    RELEASED = "released"  # released to the next step of the ladder
    HANDOVER = "handover"  # shift handover: the consult moves to the incoming clinician
    # Nobody is on call for the role (a gap in the rota): the consult waits for the role's next
    # shift (``next_shift_at``, or none on the rota yet); told at once, then every deadline.
    NO_SHIFT = "no_shift"


# --------------------------------------------------------------------------------------------
# Frames
# --------------------------------------------------------------------------------------------


class _Frame(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True, tag_field="t"):
    """Base of every frame: a MessagePack map tagged by ``t``.

    Subclasses repeat ``frozen=True, kw_only=True`` (inherited at run time anyway) so that
    type checkers, which read them per class through ``dataclass_transform``, see them too.
    """


class Limits(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Limits the relay announces in ``ready``; the client must stay within them."""

    max_frame: Positive = DEFAULT_MAX_FRAME
    max_ciphertext: Positive = MAX_CIPHERTEXT
    max_recipient_devices: Positive = MAX_DEVICE_LIST
    max_attachments: Positive = MAX_ATTACHMENTS
    send_window: Positive = DEFAULT_SEND_WINDOW
    max_ack_batch: Positive = DEFAULT_ACK_BATCH


# --- handshake -------------------------------------------------------------------------------


class Hello(_Frame, tag="hello", frozen=True, kw_only=True):
    """Client, first frame: offered versions, access token and the device it claims to be."""

    versions: Annotated[list[Version], Meta(min_length=1, max_length=MAX_VERSIONS)]
    access_token: Annotated[str, Meta(min_length=1, max_length=MAX_ACCESS_TOKEN)]
    device_id: Uuid
    client: Annotated[str, Meta(min_length=1, max_length=MAX_CLIENT_NAME)]
    client_version: Annotated[str, Meta(min_length=1, max_length=MAX_CLIENT_NAME)]


class Challenge(_Frame, tag="challenge", frozen=True, kw_only=True):
    """Server: the chosen version and a fresh 32-byte nonce for the device to sign."""

    version: Version
    nonce: Nonce
    server_time: Time


class Auth(_Frame, tag="auth", frozen=True, kw_only=True):
    """Client: Ed25519 signature by the device key over :func:`challenge_signing_bytes`."""

    signature: Signature


class Ready(_Frame, tag="ready", frozen=True, kw_only=True):
    """Server: authenticated. Queued deliveries follow, then ``queue_empty``."""

    session_id: Uuid
    device_id: Uuid
    user_id: Uuid
    version: Version
    server_time: Time
    heartbeat: Annotated[int, Meta(ge=1, le=3600)]  # seconds between pings
    expires_at: Time  # absolute session lifetime: the relay closes with 4006 then
    limits: Limits


# --- messaging -------------------------------------------------------------------------------


class Send(_Frame, tag="send", frozen=True, kw_only=True):
    """Client: submit a sealed message. Answered by ``accepted`` or ``error`` with the req_id."""

    req_id: ReqId
    message: SealedMessage


class Accepted(_Frame, tag="accepted", frozen=True, kw_only=True):
    """Server: the message is durably committed (docs/ARCHITECTURE.md §2, "accepted means
    durable")."""

    req_id: ReqId
    message_id: Uuid
    thread_id: Uuid
    thread_seq: Seq
    server_time: Time
    duplicate: bool  # the same message id and body had been accepted before


class Deliver(_Frame, tag="deliver", frozen=True, kw_only=True):
    """Server: a queued message for this device. Redelivered until acknowledged."""

    delivery_id: Uuid
    thread_seq: Seq
    priority: Priority
    received_at: Time
    message: SealedMessage


class Ack(_Frame, tag="ack", frozen=True, kw_only=True):
    """Client: these deliveries are stored durably on the device; remove them from the queue."""

    delivery_ids: Annotated[list[Uuid], Meta(min_length=1, max_length=MAX_ACK_BATCH)]


class QueueEmpty(_Frame, tag="queue_empty", frozen=True, kw_only=True):
    """Server: the backlog queued while the device was offline has been sent.

    ``pending`` counts deliveries still waiting in the durable queue: always 0 in version 1; the
    field lets a later version announce a partial drain under flow control.
    """

    pending: Count
    server_time: Time


class Withdrawn(_Frame, tag="withdrawn", frozen=True, kw_only=True):
    """Server: a message was withdrawn (for example its consent was revoked)."""

    message_id: Uuid
    thread_id: Uuid
    reason: WithdrawReason
    at: Time


# --- receipts --------------------------------------------------------------------------------


class Receipt(_Frame, tag="receipt", frozen=True, kw_only=True):
    """Client: a signed receipt statement (compact form, protocol.statements)."""

    req_id: ReqId | None = None
    statement: Statement


class ReceiptNotice(_Frame, tag="receipt_notice", frozen=True, kw_only=True):
    """Server -> sender: a recipient device's receipt, with its statement to verify."""

    message_id: Uuid
    device_id: Uuid
    user_id: Uuid
    kind: ReceiptKind
    at: Time
    statement: Statement


# --- errors ----------------------------------------------------------------------------------


class Error(_Frame, tag="error", frozen=True, kw_only=True):
    """Server: a request was refused, or the connection is about to close (``fatal``).

    ``missing``/``extra``/``stale`` list recipient devices for ``device_set_mismatch``
    (docs/ARCHITECTURE.md §5: the relay never silently skips a device).
    """

    req_id: ReqId | None = None
    code: ErrorCode
    detail: Annotated[str, Meta(max_length=MAX_DETAIL)] = ""
    retry_after: Annotated[float, Meta(ge=0, le=86400)] | None = None
    missing: DeviceList | None = None
    extra: DeviceList | None = None
    stale: DeviceList | None = None
    fatal: bool = False


# --- filing and expiry (docs/ARCHITECTURE.md §6) --------------------------------------------------


class Filing(_Frame, tag="filing", frozen=True, kw_only=True):
    """Gateway: a filing statement signed by the gateway device key."""

    req_id: ReqId | None = None
    statement: Statement


class FiledNotice(_Frame, tag="filed_notice", frozen=True, kw_only=True):
    """Server: an attachment was filed in the record; device copies expire at ``expires_at``."""

    attachment_id: Uuid
    message_id: Uuid
    thread_id: Uuid
    filed_at: Time
    expires_at: Time
    record_ref: Annotated[str, Meta(max_length=MAX_RECORD_REF)] | None = None


class NotReceived(_Frame, tag="not_received", frozen=True, kw_only=True):
    """Server -> the sender's devices: expiry (``reason``) ordered every copy of an image of
    the sender's message while no device of the person ``user_id`` had downloaded it, so that
    person never saw it (docs/PROTOCOL.md §15 "Never received"). Ids only: the client names
    the person and the record reference."""

    message_id: Uuid
    thread_id: Uuid
    attachment_id: Uuid
    user_id: Uuid
    reason: ExpiryReason
    at: Time


class ExpireOrder(_Frame, tag="expire_order", frozen=True, kw_only=True):
    """Server: shred the local copy of an attachment now, then confirm with ``expiry_confirm``."""

    order_id: Uuid
    attachment_id: Uuid
    thread_id: Uuid
    reason: ExpiryReason
    record_ref: Annotated[str, Meta(max_length=MAX_RECORD_REF)] | None = None
    issued_at: Time


class ExpiryConfirm(_Frame, tag="expiry_confirm", frozen=True, kw_only=True):
    """Client: signed confirmation that a copy was shredded."""

    req_id: ReqId | None = None
    statement: Statement


class WipeOrder(_Frame, tag="wipe_order", frozen=True, kw_only=True):
    """Server: this device is revoked; shred everything. ``revocation`` is the compact,
    organisation-signed revocation list (protocol.certs) holding this device's entry with
    ``wipe`` set, so the device verifies the order is genuine before wiping: a relay alone
    cannot make a device erase itself."""

    order_id: Uuid
    issued_at: Time
    revocation: Annotated[str, Meta(min_length=1, max_length=MAX_REVOCATION)]


class WipeConfirm(_Frame, tag="wipe_confirm", frozen=True, kw_only=True):
    """Client: the answer to ``wipe_order``, sent once the vault and keys are gone: a
    protocol.statements.WipeConfirmation signed by the device key just before it was erased."""

    statement: Statement


# --- keys and revocation ---------------------------------------------------------------------


class KeysLow(_Frame, tag="keys_low", frozen=True, kw_only=True):
    """Server: few one-time prekeys remain; upload a batch to get back to ``target``."""

    remaining: Count
    target: Count


class Revoked(_Frame, tag="revoked", frozen=True, kw_only=True):
    """Server: a user or device was revoked (it may be this device, or a peer's)."""

    subject: RevocationSubject
    id: Uuid
    reason: Annotated[str, Meta(max_length=MAX_REASON)] = ""
    at: Time


# --- on-call ---------------------------------------------------------------------------------


class EscalationNotice(_Frame, tag="escalation_notice", frozen=True, kw_only=True,
                       omit_defaults=True):
    """Server: an on-call escalation step of a consult (renotify, release, handover, no_shift).
    ``next_shift_at`` (``no_shift`` only: when the role's next shift starts, if the rota has
    one) is left out when null, so the other kinds encode as they always did."""

    thread_id: Uuid
    message_id: Uuid
    step: Count
    level: Count
    user_id: Uuid
    at: Time
    kind: EscalationKind
    next_shift_at: Time | None = None


class ResealRequest(_Frame, tag="reseal_request", frozen=True, kw_only=True):
    """Server -> a device holding the message: wrap its content key for new recipient devices
    (shift handover) before ``deadline``."""

    thread_id: Uuid
    message_id: Uuid
    devices: Annotated[list[Uuid], Meta(min_length=1, max_length=MAX_DEVICE_LIST)]
    deadline: Time


# --- liveness --------------------------------------------------------------------------------


class Bundle(_Frame, tag="bundle", frozen=True, kw_only=True):
    """Either side, only on a connection that selected :data:`BUNDLE_SUBPROTOCOL`: several
    encoded frames in one websocket message, each handled exactly as if it had come alone, in
    order (docs/PROTOCOL.md §3.6). Never nested, never before ``ready``."""

    frames: Annotated[list[bytes], Meta(min_length=1, max_length=MAX_BUNDLE)]


class Ping(_Frame, tag="ping", frozen=True, kw_only=True):
    """Either side: liveness check; the peer answers ``pong`` with the same nonce."""

    nonce: PingNonce


class Pong(_Frame, tag="pong", frozen=True, kw_only=True):
    nonce: PingNonce


Frame: TypeAlias = (
    Hello
    | Challenge
    | Auth
    | Ready
    | Send
    | Accepted
    | Deliver
    | Ack
    | QueueEmpty
    | Withdrawn
    | Receipt
    | ReceiptNotice
    | Error
    | Filing
    | FiledNotice
    | NotReceived
    | ExpireOrder
    | ExpiryConfirm
    | WipeOrder
    | WipeConfirm
    | KeysLow
    | Revoked
    | EscalationNotice
    | ResealRequest
    | Bundle
    | Ping
    | Pong
)

_C2S = Direction.CLIENT_TO_SERVER
_S2C = Direction.SERVER_TO_CLIENT

DIRECTION: Final[Mapping[type[Frame], Direction]] = {
    Hello: _C2S,
    Challenge: _S2C,
    Auth: _C2S,
    Ready: _S2C,
    Send: _C2S,
    Accepted: _S2C,
    Deliver: _S2C,
    Ack: _C2S,
    QueueEmpty: _S2C,
    Withdrawn: _S2C,
    Receipt: _C2S,
    ReceiptNotice: _S2C,
    Error: _S2C,
    Filing: _C2S,
    FiledNotice: _S2C,
    NotReceived: _S2C,
    ExpireOrder: _S2C,
    ExpiryConfirm: _C2S,
    WipeOrder: _S2C,
    WipeConfirm: _C2S,
    KeysLow: _S2C,
    Revoked: _S2C,
    EscalationNotice: _S2C,
    ResealRequest: _S2C,
    Bundle: Direction.BOTH,
    Ping: Direction.BOTH,
    Pong: Direction.BOTH,
}
"""Who may send each frame type (the session state machine enforces it)."""

FRAME_TYPES: Final[Mapping[str, type[Frame]]] = {
    str(cls.__struct_config__.tag): cls for cls in DIRECTION
}
"""Frame type by its wire tag ``t``."""


# --------------------------------------------------------------------------------------------
# Codec
# --------------------------------------------------------------------------------------------

_ENCODER: Final = msgspec.msgpack.Encoder()
_DECODER: Final = msgspec.msgpack.Decoder(Frame)


class _Peek(msgspec.Struct):
    """Reads only ``t`` of a map (other keys are skipped), to classify a rejected frame."""

    t: str


class _PeekReqId(msgspec.Struct):
    req_id: Annotated[str, Meta(max_length=MAX_REQ_ID)] | int | None = None


_PEEK: Final = msgspec.msgpack.Decoder(_Peek)
_PEEK_REQ_ID: Final = msgspec.msgpack.Decoder(_PeekReqId)
# msgspec reports a violated ``max_length`` as "Expected `str` of length <= 36 - at `$.x`"
# (likewise for bytes, array and object). Numeric bounds ("Expected `int` <= 5") are a
# malformed value, not an oversize one, and do not match.
_TOO_LONG: Final = re.compile(r"^Expected `(str|bytes|array|object)` of length <= \d+")


def encode_frame(frame: Frame) -> bytes:
    """Encode a frame as the payload of one binary websocket frame."""
    return _ENCODER.encode(frame)


class _DeliverEncoded(msgspec.Struct, frozen=True, kw_only=True, tag="deliver", tag_field="t"):
    """Encode-only twin of :class:`Deliver` whose message is already MessagePack: the same
    bytes on the wire, without decoding and re-encoding the stored sealed message."""

    delivery_id: str
    thread_seq: int
    priority: str
    received_at: int
    message: msgspec.Raw


def encode_deliver(*, delivery_id: str, thread_seq: int, priority: Priority, received_at: int,
                   sealed: bytes) -> bytes:
    """``encode_frame(Deliver(...))`` for a message stored as ``encode_sealed`` bytes (the relay
    stores exactly what the sender sent, after strict decoding)."""
    return _ENCODER.encode(_DeliverEncoded(
        delivery_id=delivery_id, thread_seq=thread_seq, priority=priority.value,
        received_at=received_at, message=msgspec.Raw(sealed)))


# A bundle's MessagePack map before its frames: fixmap of 2, "t": "bundle", "frames", and an
# array header of at most 3 bytes (MAX_BUNDLE <= 65535); each frame adds a bin header of at
# most 5 bytes (bin 32). An upper bound, so a packed bundle never exceeds the size it was cut to.
_BUNDLE_HEAD: Final = 1 + 2 + 7 + 7 + 3
_BUNDLE_PER_FRAME: Final = 5


def pack_bundles(frames: list[bytes], max_size: int) -> list[bytes]:
    """Websocket messages carrying ``frames`` in order: consecutive frames joined into
    ``bundle`` frames of at most ``max_size`` bytes and :data:`MAX_BUNDLE` frames; a frame that
    would be alone is sent as itself (docs/PROTOCOL.md §3.6)."""
    if len(frames) < 2:
        return frames
    out: list[bytes] = []
    group: list[bytes] = []
    size = _BUNDLE_HEAD

    def close_group() -> None:
        if len(group) == 1:
            out.append(group[0])
        elif group:
            out.append(_ENCODER.encode(Bundle(frames=group)))

    for data in frames:
        cost = len(data) + _BUNDLE_PER_FRAME
        if group and (size + cost > max_size or len(group) == MAX_BUNDLE):
            close_group()
            group, size = [], _BUNDLE_HEAD
        group.append(data)
        size += cost
    close_group()
    return out


def decode_frame(data: bytes, *, max_frame_size: int = DEFAULT_MAX_FRAME) -> Frame:
    """Decode one binary websocket frame payload strictly.

    Raises :class:`DecodeError` (``malformed_frame``, ``unknown_frame_type``) or
    :class:`LimitExceeded` (``frame_too_large``, ``field_too_large``); never anything else.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise DecodeError("frame payload must be bytes", code=ErrorCode.MALFORMED_FRAME)
    if len(data) > max_frame_size:
        raise LimitExceeded(
            f"frame of {len(data)} bytes exceeds {max_frame_size}", code=ErrorCode.FRAME_TOO_LARGE
        )
    try:
        frame: Frame = _DECODER.decode(data)
    except msgspec.ValidationError as exc:
        raise _classify(data, str(exc)) from None
    except (msgspec.DecodeError, RecursionError) as exc:
        raise DecodeError(
            f"not a MessagePack frame: {exc}", code=ErrorCode.MALFORMED_FRAME
        ) from None
    except Exception as exc:  # belt and braces: the decoder must only ever raise DecodeError
        raise DecodeError(f"undecodable frame: {type(exc).__name__}") from None
    if isinstance(frame, Send | Deliver):
        _check_sealed(frame.message)
    return frame


def _classify(data: bytes | bytearray | memoryview, message: str) -> DecodeError:
    """Map a msgspec validation message to the precise protocol error."""
    try:
        tag = _PEEK.decode(data).t
    except Exception:  # not a map, no ``t``, ``t`` not a string, or nesting too deep
        return DecodeError(message, code=ErrorCode.MALFORMED_FRAME)
    if tag not in FRAME_TYPES:
        return DecodeError(f"unknown frame type {tag[:32]!r}", code=ErrorCode.UNKNOWN_FRAME_TYPE)
    if _TOO_LONG.match(message):
        return LimitExceeded(f"{tag}: {message}", code=ErrorCode.FIELD_TOO_LARGE)
    return DecodeError(f"{tag}: {message}", code=ErrorCode.MALFORMED_FRAME)


def _check_sealed(message: SealedMessage) -> None:
    """Size limits of a sealed message (protocol.model declares no ``Meta`` limits itself).

    The cryptographic checks (nonce and key sizes, signature) belong to protocol.envelope; this
    only bounds what the relay has to store and fan out.
    """
    header = message.header
    if len(message.ciphertext) > MAX_CIPHERTEXT:
        raise LimitExceeded("message.ciphertext too large", code=ErrorCode.FIELD_TOO_LARGE)
    if len(message.keys) > MAX_DEVICE_LIST or len(header.recipient_devices) > MAX_DEVICE_LIST:
        raise LimitExceeded("too many recipient devices", code=ErrorCode.FIELD_TOO_LARGE)
    if len(header.attachment_ids) > MAX_ATTACHMENTS:
        raise LimitExceeded("too many attachments", code=ErrorCode.FIELD_TOO_LARGE)


def peek_req_id(data: bytes) -> str | None:
    """Best-effort ``req_id`` of a frame that failed to decode, so the ``error`` answering it
    can name the request. Never raises; returns None when there is no usable string id."""
    try:
        if len(data) > DEFAULT_MAX_FRAME:
            return None
        value = _PEEK_REQ_ID.decode(data).req_id
    except Exception:
        return None
    return value if isinstance(value, str) and value else None


# --------------------------------------------------------------------------------------------
# Version negotiation and the challenge signature
# --------------------------------------------------------------------------------------------


def negotiate(client_versions: Iterable[int], supported: Iterable[int] = SUPPORTED_VERSIONS) -> int:
    """Pick the highest version both sides support.

    Raises :class:`DecodeError` with code ``unsupported_version`` when there is none.
    """
    common = set(client_versions) & set(supported)
    if not common:
        raise DecodeError("no protocol version in common", code=ErrorCode.UNSUPPORTED_VERSION)
    return max(common)


CHALLENGE_LABEL: Final = b"lightbox/ws-auth/v1\x00"
"""Domain separation label of the challenge signature (never valid as any other statement)."""


def challenge_signing_bytes(nonce: bytes, access_token: str) -> bytes:
    """The exact bytes a device signs with its Ed25519 key in ``auth``::

        b"lightbox/ws-auth/v1\\x00" || nonce (32 bytes) || SHA-256(UTF-8 access token) (32 bytes)

    84 bytes in all. The nonce makes the answer fresh; the token hash binds it to the token
    presented in ``hello``: a stolen token is useless without the device key (proof of
    possession), and an answer cannot be replayed with another token or nonce. The version is
    fixed by the label: a later protocol version uses a new label.
    """
    if len(nonce) != NONCE_SIZE:
        raise ValueError(f"challenge nonce must be {NONCE_SIZE} bytes")
    token_hash = hashlib.sha256(access_token.encode("utf-8")).digest()
    return CHALLENGE_LABEL + bytes(nonce) + token_hash
