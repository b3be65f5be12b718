"""Error codes and the exception tree of the Lightbox protocol.

Every error a peer can see is one stable, documented :class:`ErrorCode` (a string on the wire,
in websocket ``error`` frames and in RFC 9457 problem documents). The table in
docs/SECURITY.md is generated from :data:`DESCRIPTIONS` and checked by a test, so the two cannot
drift apart. Websocket close codes use the private range 4000-4999 (RFC 6455 §7.4.2) plus the
standard 1001 (going away), 1008 (policy) and 1009 (message too big).

Exception tree::

    ProtocolError                      base of everything raised by protocol/
    ├── DecodeError                    malformed, unknown, oversize or wrong-version input
    │   └── LimitExceeded              a size or count limit was exceeded (SecurityError-like)
    ├── VerificationError              any failed decrypt, signature or chain check: opaque on
    │                                  purpose (like Fernet's InvalidToken); the reason is kept
    │                                  in ``.reason`` for local logs and never sent to a peer
    ├── ReplayError                    a message id already seen by the caller's seen-set
    └── PolicyDenied                   a well-formed request that policy refuses (consent...)

Each carries ``.code`` (an :class:`ErrorCode`).
"""

from __future__ import annotations

import enum

__all__ = [
    "DESCRIPTIONS",
    "CloseCode",
    "DecodeError",
    "ErrorCode",
    "LimitExceeded",
    "PolicyDenied",
    "ProtocolError",
    "ReplayError",
    "VerificationError",
]


class ErrorCode(enum.StrEnum):
    """Stable error codes. Append only: a code, once published, keeps its meaning."""

    # --- generic HTTP / request shape -------------------------------------------------------
    BAD_REQUEST = "bad_request"
    MALFORMED_JSON = "malformed_json"
    VALIDATION_FAILED = "validation_failed"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    HEADER_TOO_LARGE = "header_too_large"
    NOT_FOUND = "not_found"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
    CONFLICT = "conflict"
    RATE_LIMITED = "rate_limited"
    NOT_READY = "not_ready"
    INTERNAL_ERROR = "internal_error"

    # --- wire format (websocket frames, sealed artefacts) ------------------------------------
    MALFORMED_FRAME = "malformed_frame"
    UNKNOWN_FRAME_TYPE = "unknown_frame_type"
    FRAME_TOO_LARGE = "frame_too_large"
    FIELD_TOO_LARGE = "field_too_large"
    UNSUPPORTED_VERSION = "unsupported_version"
    UNEXPECTED_FRAME = "unexpected_frame"
    VERIFICATION_FAILED = "verification_failed"
    REPLAYED = "replayed"

    # --- authentication and sessions ---------------------------------------------------------
    UNAUTHENTICATED = "unauthenticated"
    FORBIDDEN = "forbidden"
    INVALID_CREDENTIALS = "invalid_credentials"
    ACCOUNT_LOCKED = "account_locked"
    USER_SUSPENDED = "user_suspended"
    LICENCE_EXPIRED = "licence_expired"
    DEVICE_REVOKED = "device_revoked"
    DEVICE_LIMIT = "device_limit"
    TOKEN_INVALID = "token_invalid"
    TOKEN_EXPIRED = "token_expired"
    TOKEN_AUDIENCE = "token_audience"
    TOKEN_DEVICE_MISMATCH = "token_device_mismatch"
    PROOF_REPLAYED = "proof_replayed"
    REFRESH_REUSED = "refresh_reused"
    CHALLENGE_FAILED = "challenge_failed"
    ENROLMENT_CODE_INVALID = "enrolment_code_invalid"
    ENROLMENT_CODE_USED = "enrolment_code_used"
    ENROLMENT_CODE_EXPIRED = "enrolment_code_expired"
    PAIRING_CODE_INVALID = "pairing_code_invalid"
    PASSWORD_TOO_WEAK = "password_too_weak"
    USER_ALREADY_ENROLLED = "user_already_enrolled"
    SSO_REQUIRED = "sso_required"

    # --- certificates, keys, directory -------------------------------------------------------
    CERTIFICATE_INVALID = "certificate_invalid"
    CERTIFICATE_EXPIRED = "certificate_expired"
    CERTIFICATE_REVOKED = "certificate_revoked"
    CERTIFICATE_UNTRUSTED = "certificate_untrusted"
    PREKEY_BATCH_TOO_LARGE = "prekey_batch_too_large"
    PREKEY_DUPLICATE = "prekey_duplicate"
    PREKEY_CLAIMS_LIMITED = "prekey_claims_limited"
    CSV_TOO_LARGE = "csv_too_large"
    CSV_INVALID = "csv_invalid"

    # --- relay: threads, sends, deliveries ---------------------------------------------------
    THREAD_NOT_FOUND = "thread_not_found"
    NOT_THREAD_MEMBER = "not_thread_member"
    DEVICE_SET_MISMATCH = "device_set_mismatch"
    SENDER_MISMATCH = "sender_mismatch"
    DUPLICATE_CONFLICT = "duplicate_conflict"
    DELIVERY_NOT_FOUND = "delivery_not_found"
    MESSAGE_TOO_LARGE = "message_too_large"
    QUEUE_FULL = "queue_full"

    # --- attachments -------------------------------------------------------------------------
    UPLOAD_NOT_FOUND = "upload_not_found"
    CHUNK_OUT_OF_ORDER = "chunk_out_of_order"
    CHUNK_OVERLAP = "chunk_overlap"
    CHUNK_BEYOND_SIZE = "chunk_beyond_size"
    HASH_MISMATCH = "hash_mismatch"
    ATTACHMENT_TOO_LARGE = "attachment_too_large"
    QUOTA_EXCEEDED = "quota_exceeded"
    ATTACHMENT_FORBIDDEN = "attachment_forbidden"

    # --- consent (docs/ARCHITECTURE.md §5) --------------------------------------------------------
    CONSENT_MISSING = "consent_missing"
    CONSENT_INVALID = "consent_invalid"
    CONSENT_EXPIRED = "consent_expired"
    CONSENT_REVOKED = "consent_revoked"
    CONSENT_REFUSED = "consent_refused"
    CONSENT_PURPOSE = "consent_purpose"
    CONSENT_RECIPIENT_OUT_OF_SCOPE = "consent_recipient_out_of_scope"
    CONSENT_EXTERNAL_REQUIRES_WRITTEN = "consent_external_requires_written"
    CONSENT_IMAGE_MISMATCH = "consent_image_mismatch"
    EXTERNAL_NECESSITY_MISSING = "external_necessity_missing"
    BREAK_GLASS_NOT_ALLOWED = "break_glass_not_allowed"
    BREAK_GLASS_LIMIT = "break_glass_limit"

    # --- filing and expiry (docs/ARCHITECTURE.md §6) ----------------------------------------------
    FILING_GATEWAY_MISSING = "filing_gateway_missing"
    FILING_NOT_GATEWAY = "filing_not_gateway"
    FILING_UNKNOWN_ATTACHMENT = "filing_unknown_attachment"
    FILING_TOO_LATE = "filing_too_late"
    EXPIRY_UNKNOWN_COPY = "expiry_unknown_copy"
    ATTACHMENT_EXPIRED = "attachment_expired"

    # --- on-call -----------------------------------------------------------------------------
    ROLE_UNKNOWN = "role_unknown"
    SHIFT_OVERLAP = "shift_overlap"
    SHIFT_EMPTY = "shift_empty"
    NOT_ON_LADDER = "not_on_ladder"
    ROTA_INVALID = "rota_invalid"

    # --- audit -------------------------------------------------------------------------------
    AUDIT_CHAIN_BROKEN = "audit_chain_broken"


DESCRIPTIONS: dict[ErrorCode, str] = {
    ErrorCode.BAD_REQUEST: "The request is not well formed.",
    ErrorCode.MALFORMED_JSON: "The request body is not valid JSON.",
    ErrorCode.VALIDATION_FAILED: "A field is missing, unknown, of the wrong type or out of range.",
    ErrorCode.PAYLOAD_TOO_LARGE: "The request body exceeds the configured limit.",
    ErrorCode.HEADER_TOO_LARGE: "A request header, or all of them together, exceeds the limit.",
    ErrorCode.NOT_FOUND: "No such route or resource.",
    ErrorCode.METHOD_NOT_ALLOWED: "The route exists but not with this method.",
    ErrorCode.UNSUPPORTED_MEDIA_TYPE: "The body has a content type the route does not take.",
    ErrorCode.CONFLICT: "The request conflicts with the current state of the resource.",
    ErrorCode.RATE_LIMITED: "Too many requests; retry after the indicated delay.",
    ErrorCode.NOT_READY: "The relay is not ready (database unreachable or schema not at head).",
    ErrorCode.INTERNAL_ERROR: "An unexpected error; it has been logged with the request id.",
    ErrorCode.MALFORMED_FRAME: "A frame could not be decoded, or a field has the wrong type.",
    ErrorCode.UNKNOWN_FRAME_TYPE: "The frame's type is not in the catalogue.",
    ErrorCode.FRAME_TOO_LARGE: "The frame exceeds the maximum frame size.",
    ErrorCode.FIELD_TOO_LARGE: "A field of the frame exceeds its size or count limit.",
    ErrorCode.UNSUPPORTED_VERSION: "No protocol version in common with the peer.",
    ErrorCode.UNEXPECTED_FRAME: "The frame is not allowed in the connection's current state.",
    ErrorCode.VERIFICATION_FAILED: "A signature, certificate chain or decryption check failed.",
    ErrorCode.REPLAYED: "The message, token or statement was already used.",
    ErrorCode.UNAUTHENTICATED: "No valid credentials were presented.",
    ErrorCode.FORBIDDEN: "The authenticated caller may not do this.",
    ErrorCode.INVALID_CREDENTIALS: "Login, password or device key is wrong (never says "
    "which to whoever does not hold the device).",
    ErrorCode.ACCOUNT_LOCKED: "Too many failed logins; retry after the indicated delay.",
    ErrorCode.USER_SUSPENDED: "The user is suspended by the organisation.",
    ErrorCode.LICENCE_EXPIRED: "The user's professional licence has expired.",
    ErrorCode.DEVICE_REVOKED: "The device has been revoked.",
    ErrorCode.DEVICE_LIMIT: "The user already has the maximum number of devices.",
    ErrorCode.TOKEN_INVALID: "The access or refresh token is malformed or its signature is bad, "
    "or the session it belongs to has ended (logout, a refresh token reused).",
    ErrorCode.TOKEN_EXPIRED: "The token has expired.",
    ErrorCode.TOKEN_AUDIENCE: "The token was issued for another audience.",
    ErrorCode.TOKEN_DEVICE_MISMATCH: "The token is bound to another device key.",
    ErrorCode.PROOF_REPLAYED: "This Lightbox-Proof was used before; sign a new one per request.",
    ErrorCode.REFRESH_REUSED: "A used refresh token was presented; its whole family is revoked.",
    ErrorCode.CHALLENGE_FAILED: "The server challenge is unknown, used or expired, or the "
    "device's answer to it did not verify (at a password login: invalid_credentials).",
    ErrorCode.ENROLMENT_CODE_INVALID: "The enrolment code is unknown or wrong.",
    ErrorCode.ENROLMENT_CODE_USED: "The enrolment code has already been used.",
    ErrorCode.ENROLMENT_CODE_EXPIRED: "The enrolment code has expired.",
    ErrorCode.PAIRING_CODE_INVALID: "The device pairing code is unknown, used or expired.",
    ErrorCode.PASSWORD_TOO_WEAK: "The password is too short or too common.",
    ErrorCode.USER_ALREADY_ENROLLED: "The user has a device still active, so no new enrolment "
    "code is issued: link a new device from it (and revoke a lost one).",
    ErrorCode.SSO_REQUIRED: "The organisation signs its clinicians in with single sign-on: a "
    "Lightbox password is neither accepted nor checked; sign in with the hospital account.",
    ErrorCode.CERTIFICATE_INVALID: "A certificate is malformed or its signature does not verify.",
    ErrorCode.CERTIFICATE_EXPIRED: "A certificate is outside its validity period.",
    ErrorCode.CERTIFICATE_REVOKED: "A certificate has been revoked.",
    ErrorCode.CERTIFICATE_UNTRUSTED: "A certificate chains to no trusted organisation key.",
    ErrorCode.PREKEY_BATCH_TOO_LARGE: "Too many one-time prekeys in one upload.",
    ErrorCode.PREKEY_DUPLICATE: "A one-time prekey id is repeated or already known.",
    ErrorCode.PREKEY_CLAIMS_LIMITED: "This device claimed too many one-time prekeys of one "
    "device lately; retry after the indicated delay.",
    ErrorCode.CSV_TOO_LARGE: "The uploaded CSV exceeds the size limit.",
    ErrorCode.CSV_INVALID: "The CSV lacks required columns or cannot be parsed.",
    ErrorCode.THREAD_NOT_FOUND: "No such consult thread.",
    ErrorCode.NOT_THREAD_MEMBER: "The device's user is not a participant of the thread.",
    ErrorCode.DEVICE_SET_MISMATCH: "Recipient devices missing, extra, revoked or stale (listed).",
    ErrorCode.SENDER_MISMATCH: "The frame names a sender device other than the authenticated one.",
    ErrorCode.DUPLICATE_CONFLICT: "The client message id was already used with a different body.",
    ErrorCode.DELIVERY_NOT_FOUND: "No such delivery for this device (or it belongs to another).",
    ErrorCode.MESSAGE_TOO_LARGE: "The sealed message exceeds the maximum message size.",
    ErrorCode.QUEUE_FULL: "The recipient's queue is full; retry later.",
    ErrorCode.UPLOAD_NOT_FOUND: "No such upload, or not yours.",
    ErrorCode.CHUNK_OUT_OF_ORDER: "The chunk does not start at the committed offset.",
    ErrorCode.CHUNK_OVERLAP: "The chunk overlaps bytes already committed.",
    ErrorCode.CHUNK_BEYOND_SIZE: "The chunk ends beyond the declared size.",
    ErrorCode.HASH_MISMATCH: "The final hash does not match the uploaded bytes.",
    ErrorCode.ATTACHMENT_TOO_LARGE: "The declared attachment size exceeds the limit.",
    ErrorCode.QUOTA_EXCEEDED: "The user's attachment storage quota is exhausted.",
    ErrorCode.ATTACHMENT_FORBIDDEN: "The device has no delivery referencing this attachment.",
    ErrorCode.CONSENT_MISSING: "The message needs a consent token and references none.",
    ErrorCode.CONSENT_INVALID: "The consent token is malformed, badly signed or unregistered.",
    ErrorCode.CONSENT_EXPIRED: "The consent token is outside its validity period.",
    ErrorCode.CONSENT_REVOKED: "The consent was withdrawn.",
    ErrorCode.CONSENT_REFUSED: "The patient refused consent.",
    ErrorCode.CONSENT_PURPOSE: "The consent does not cover the message's purpose.",
    ErrorCode.CONSENT_RECIPIENT_OUT_OF_SCOPE: "The consent does not cover a recipient.",
    ErrorCode.CONSENT_EXTERNAL_REQUIRES_WRITTEN: "An external recipient needs written consent.",
    ErrorCode.CONSENT_IMAGE_MISMATCH: "The image's hash is not one the consent names.",
    ErrorCode.EXTERNAL_NECESSITY_MISSING: "An external consult lacks its clinical-necessity flag.",
    ErrorCode.BREAK_GLASS_NOT_ALLOWED: "An emergency (break-glass) message may go only to "
    "credentialed clinicians of the sender's organisation, for direct care, without a consent.",
    ErrorCode.BREAK_GLASS_LIMIT: "The clinician reached the day's limit of emergency "
    "(break-glass) messages.",
    ErrorCode.FILING_GATEWAY_MISSING: "Policy requires filing; no gateway device is a recipient.",
    ErrorCode.FILING_NOT_GATEWAY: "The filing statement is not signed by a gateway device.",
    ErrorCode.FILING_UNKNOWN_ATTACHMENT: "The gateway never received this attachment.",
    ErrorCode.FILING_TOO_LATE: "The attachment already expired at the hard limit.",
    ErrorCode.EXPIRY_UNKNOWN_COPY: "The device never held the copy it confirms expiring.",
    ErrorCode.ATTACHMENT_EXPIRED: "This device's copy was ordered destroyed, or it is gone.",
    ErrorCode.ROLE_UNKNOWN: "No such on-call role.",
    ErrorCode.SHIFT_OVERLAP: "The shift overlaps another shift of the same role.",
    ErrorCode.SHIFT_EMPTY: "The shift names nobody.",
    ErrorCode.NOT_ON_LADDER: "The caller is not on the consult's escalation ladder.",
    ErrorCode.ROTA_INVALID: "A rota row has bad dates or unknown users.",
    ErrorCode.AUDIT_CHAIN_BROKEN: "The audit trail's hash chain does not verify.",
}


class CloseCode(enum.IntEnum):
    """Websocket close codes (RFC 6455 §7.4; 4000-4999 are ours)."""

    GOING_AWAY = 1001  # relay shutting down: reconnect elsewhere
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009  # frame over the maximum frame size
    PROTOCOL_ERROR = 4000  # repeated malformed input; the session is not trustworthy
    AUTH_FAILED = 4001  # bad access token or challenge answer, or its session ended
    AUTH_TIMEOUT = 4002  # no authentication within the handshake timeout
    SESSION_REPLACED = 4003  # the same device connected again elsewhere
    DEVICE_REVOKED = 4004
    USER_SUSPENDED = 4005  # suspended user or expired licence
    SESSION_EXPIRED = 4006  # absolute session lifetime reached
    IDLE_TIMEOUT = 4007
    UNSUPPORTED_VERSION = 4008
    TOO_SLOW = 4009  # outbound queue full: resume from the durable queue later
    HEARTBEAT_TIMEOUT = 4010


class ProtocolError(Exception):
    """Base of every exception raised by protocol/."""

    code: ErrorCode = ErrorCode.BAD_REQUEST

    def __init__(self, message: str = "", *, code: ErrorCode | None = None) -> None:
        super().__init__(message or (code or self.code).value)
        if code is not None:
            self.code = code


class DecodeError(ProtocolError):
    """Input could not be decoded into a valid protocol object."""

    code = ErrorCode.MALFORMED_FRAME


class LimitExceeded(DecodeError):
    """A size or count limit was exceeded."""

    code = ErrorCode.FIELD_TOO_LARGE


class VerificationError(ProtocolError):
    """A decrypt, signature or chain check failed.

    Deliberately opaque to peers: ``str()`` is always the same, the detailed reason is in
    ``reason`` for the local log only.
    """

    code = ErrorCode.VERIFICATION_FAILED

    def __init__(self, reason: str = "", *, code: ErrorCode | None = None) -> None:
        super().__init__("verification failed", code=code)
        self.reason = reason


class ReplayError(ProtocolError):
    """The artefact's id was already seen."""

    code = ErrorCode.REPLAYED


class PolicyDenied(ProtocolError):
    """A valid request refused by policy (consent, credentials...)."""

    code = ErrorCode.FORBIDDEN
