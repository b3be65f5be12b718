"""HTTP error responses: RFC 9457 problem details, and the one table from error code to status.

Every error the relay sends over HTTP is ``application/problem+json`` with ``type``, ``title``,
``status``, our stable ``code`` and a ``detail`` that never echoes input, secrets or PHI.
:data:`HTTP_STATUS` is the single mapping from :class:`ErrorCode` to status; a test checks
that every code has one and that docs/SECURITY.md's table is generated from it
(``python -m server.problems`` prints the table).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import msgspec
from starlette.responses import Response

from protocol.errors import DESCRIPTIONS, CloseCode, ErrorCode
from server.errors import RelayError

__all__ = [
    "HTTP_STATUS",
    "PROBLEM_BASE",
    "ProblemDocument",
    "error_table_markdown",
    "problem_response",
    "relay_error_response",
]

PROBLEM_BASE = "https://lightbox.invalid/problems/"

E = ErrorCode
HTTP_STATUS: dict[ErrorCode, int] = {
    E.BAD_REQUEST: 400, E.MALFORMED_JSON: 400, E.VALIDATION_FAILED: 422,
    E.PAYLOAD_TOO_LARGE: 413, E.HEADER_TOO_LARGE: 431, E.NOT_FOUND: 404,
    E.METHOD_NOT_ALLOWED: 405, E.UNSUPPORTED_MEDIA_TYPE: 415, E.CONFLICT: 409,
    E.RATE_LIMITED: 429, E.NOT_READY: 503, E.INTERNAL_ERROR: 500,
    E.MALFORMED_FRAME: 400, E.UNKNOWN_FRAME_TYPE: 400, E.FRAME_TOO_LARGE: 413,
    E.FIELD_TOO_LARGE: 422, E.UNSUPPORTED_VERSION: 400, E.UNEXPECTED_FRAME: 400,
    E.VERIFICATION_FAILED: 422, E.REPLAYED: 409,
    E.UNAUTHENTICATED: 401, E.FORBIDDEN: 403, E.INVALID_CREDENTIALS: 401,
    E.ACCOUNT_LOCKED: 429, E.USER_SUSPENDED: 403, E.LICENCE_EXPIRED: 403,
    E.DEVICE_REVOKED: 403, E.DEVICE_LIMIT: 409, E.TOKEN_INVALID: 401, E.TOKEN_EXPIRED: 401,
    E.TOKEN_AUDIENCE: 401, E.TOKEN_DEVICE_MISMATCH: 401, E.PROOF_REPLAYED: 401,
    E.REFRESH_REUSED: 401,
    E.CHALLENGE_FAILED: 401, E.ENROLMENT_CODE_INVALID: 400, E.ENROLMENT_CODE_USED: 409,
    E.ENROLMENT_CODE_EXPIRED: 410, E.PAIRING_CODE_INVALID: 400, E.PASSWORD_TOO_WEAK: 422,
    E.USER_ALREADY_ENROLLED: 409, E.SSO_REQUIRED: 401,
    E.CERTIFICATE_INVALID: 422, E.CERTIFICATE_EXPIRED: 422, E.CERTIFICATE_REVOKED: 422,
    E.CERTIFICATE_UNTRUSTED: 422, E.PREKEY_BATCH_TOO_LARGE: 413, E.PREKEY_DUPLICATE: 409,
    E.PREKEY_CLAIMS_LIMITED: 429,
    E.CSV_TOO_LARGE: 413, E.CSV_INVALID: 422,
    E.THREAD_NOT_FOUND: 404, E.NOT_THREAD_MEMBER: 403, E.DEVICE_SET_MISMATCH: 409,
    E.SENDER_MISMATCH: 403, E.DUPLICATE_CONFLICT: 409, E.DELIVERY_NOT_FOUND: 404,
    E.MESSAGE_TOO_LARGE: 413, E.QUEUE_FULL: 503,
    E.UPLOAD_NOT_FOUND: 404, E.CHUNK_OUT_OF_ORDER: 409, E.CHUNK_OVERLAP: 409,
    E.CHUNK_BEYOND_SIZE: 416, E.HASH_MISMATCH: 422, E.ATTACHMENT_TOO_LARGE: 413,
    E.QUOTA_EXCEEDED: 507, E.ATTACHMENT_FORBIDDEN: 403,
    E.CONSENT_MISSING: 403, E.CONSENT_INVALID: 403, E.CONSENT_EXPIRED: 403,
    E.CONSENT_REVOKED: 403, E.CONSENT_REFUSED: 403, E.CONSENT_PURPOSE: 403,
    E.CONSENT_RECIPIENT_OUT_OF_SCOPE: 403, E.CONSENT_EXTERNAL_REQUIRES_WRITTEN: 403,
    E.CONSENT_IMAGE_MISMATCH: 422, E.EXTERNAL_NECESSITY_MISSING: 403,
    E.BREAK_GLASS_NOT_ALLOWED: 403, E.BREAK_GLASS_LIMIT: 429,
    E.FILING_GATEWAY_MISSING: 422, E.FILING_NOT_GATEWAY: 403,
    E.FILING_UNKNOWN_ATTACHMENT: 404, E.FILING_TOO_LATE: 410, E.EXPIRY_UNKNOWN_COPY: 404,
    E.ATTACHMENT_EXPIRED: 410,
    E.ROLE_UNKNOWN: 404, E.SHIFT_OVERLAP: 409, E.SHIFT_EMPTY: 422, E.NOT_ON_LADDER: 403,
    E.ROTA_INVALID: 422, E.AUDIT_CHAIN_BROKEN: 500,
}


class ProblemDocument(msgspec.Struct, kw_only=True, omit_defaults=True):
    """RFC 9457 §3 problem details, plus Lightbox's stable ``code``."""

    type: str
    title: str
    status: int
    code: str
    detail: str | None = None
    instance: str | None = None
    request_id: str | None = None
    retry_after: float | None = None
    extra: dict[str, Any] | None = None


def problem_response(
    code: ErrorCode,
    detail: str | None = None,
    *,
    request_id: str | None = None,
    retry_after: float | None = None,
    extra: Mapping[str, Any] | None = None,
    headers: Mapping[str, str] | None = None,
) -> Response:
    status = HTTP_STATUS[code]
    doc = ProblemDocument(
        type=PROBLEM_BASE + code.value,
        title=DESCRIPTIONS[code],
        status=status,
        code=code.value,
        detail=detail,
        request_id=request_id,
        retry_after=retry_after,
        extra=dict(extra) if extra else None,
    )
    hdrs = dict(headers or {})
    if retry_after is not None:
        # RFC 9110 §10.2.3: delay-seconds is a non-negative integer.
        hdrs["Retry-After"] = str(max(0, math.ceil(retry_after)))
    return Response(msgspec.json.encode(doc), status_code=status, headers=hdrs,
                    media_type="application/problem+json")


def relay_error_response(exc: RelayError, request_id: str | None = None) -> Response:
    return problem_response(exc.code, exc.detail, request_id=request_id,
                            retry_after=exc.retry_after, extra=exc.extra)


_CLOSE_FOR: dict[ErrorCode, CloseCode] = {
    E.FRAME_TOO_LARGE: CloseCode.MESSAGE_TOO_BIG,
    E.UNSUPPORTED_VERSION: CloseCode.UNSUPPORTED_VERSION,
    E.CHALLENGE_FAILED: CloseCode.AUTH_FAILED,
    E.TOKEN_INVALID: CloseCode.AUTH_FAILED,
    E.TOKEN_EXPIRED: CloseCode.AUTH_FAILED,
    E.TOKEN_AUDIENCE: CloseCode.AUTH_FAILED,
    E.TOKEN_DEVICE_MISMATCH: CloseCode.AUTH_FAILED,
    E.DEVICE_REVOKED: CloseCode.DEVICE_REVOKED,
    E.USER_SUSPENDED: CloseCode.USER_SUSPENDED,
    E.LICENCE_EXPIRED: CloseCode.USER_SUSPENDED,
}


def error_table_markdown() -> str:
    """The error-code table of docs/SECURITY.md (kept in sync by a test)."""
    lines = [
        "| code | HTTP status | websocket close | meaning |",
        "|------|-------------|-----------------|---------|",
    ]
    for code in ErrorCode:
        close = _CLOSE_FOR.get(code)
        close_s = f"{int(close)} ({close.name.lower()})" if close else "—"
        lines.append(f"| `{code.value}` | {HTTP_STATUS[code]} | {close_s} | {DESCRIPTIONS[code]} |")
    lines += ["", "| close code | name | meaning |", "|-----|------|---------|"]
    for cc in CloseCode:
        lines.append(f"| {int(cc)} | `{cc.name.lower()}` | {_CLOSE_MEANING[cc]} |")
    return "\n".join(lines) + "\n"


_CLOSE_MEANING: dict[CloseCode, str] = {
    CloseCode.GOING_AWAY: "The relay is shutting down; reconnect (to another process).",
    CloseCode.POLICY_VIOLATION: "Generic policy violation.",
    CloseCode.MESSAGE_TOO_BIG: "A frame exceeded the maximum frame size.",
    CloseCode.PROTOCOL_ERROR: "Repeated malformed input; the session was ended.",
    CloseCode.AUTH_FAILED: "The access token or the challenge answer did not verify, or the "
    "session of the access token ended (reason `token_invalid`).",
    CloseCode.AUTH_TIMEOUT: "No authentication within the handshake timeout.",
    CloseCode.SESSION_REPLACED: "The same device opened a newer connection.",
    CloseCode.DEVICE_REVOKED: "The device was revoked.",
    CloseCode.USER_SUSPENDED: "The user was suspended or their licence expired.",
    CloseCode.SESSION_EXPIRED: "The absolute session lifetime was reached; log in again.",
    CloseCode.IDLE_TIMEOUT: "The connection was idle for too long.",
    CloseCode.UNSUPPORTED_VERSION: "No protocol version in common.",
    CloseCode.TOO_SLOW: "The device did not keep up; resume from the durable queue.",
    CloseCode.HEARTBEAT_TIMEOUT: "No pong within the heartbeat timeout.",
}


if __name__ == "__main__":  # pragma: no cover - documentation helper
    print(error_table_markdown(), end="")
