"""Who is calling: device requests (access token + proof of possession) and admin requests.

A device request carries ``Authorization: Bearer <access token>`` and ``Lightbox-Proof:
<unix seconds>.<b64url nonce>.<b64url signature>`` over
:func:`protocol.api.request_proof_input` (method, request target with its query, body digest,
time, nonce, token hash), made with the device key that the token's ``cnf.jkt`` names
(docs/PROTOCOL.md §11; in the spirit of DPoP, RFC 9449, whose ``jti`` replay check §11.1 the
nonce table mirrors). The token alone is not enough, so a token that leaks from a log or a
proxy cannot be used from elsewhere; and a captured proof is accepted once, for that request
and body only (``proof_replayed``). Then, on every request, the current state is checked:
device active, session (refresh family) not ended, user active, licence and certificate
unexpired, so a revocation or suspension takes effect at once rather than when the token expires.

The websocket handshake uses the same checks without the proof header (the handshake answers a
challenge instead): ``tokens.verify_access(token, now=...)`` then
:meth:`Authenticator.check_device`.
"""

from __future__ import annotations

import dataclasses
import hmac
import time
from collections.abc import Callable

import asyncpg
from starlette.requests import Request

from protocol import keys
from protocol.api import PROOF_NONCE_BYTES, key_thumbprint, request_proof_input
from protocol.canonical import b64url_decode
from protocol.errors import DecodeError, ErrorCode
from server.audit import AUDIT_CONTEXT
from server.db import Database
from server.errors import Forbidden, Unauthorized
from server.store import admins, devices, proofs, sessions, users
from server.tokens import AccessClaims, TokenService

__all__ = [
    "ADMIN_AUTH_ERRORS",
    "DEVICE_AUTH_ERRORS",
    "PROOF_HEADER",
    "AdminPrincipal",
    "Authenticator",
    "Principal",
    "bearer_token",
    "verify_signature",
]

PROOF_HEADER = "lightbox-proof"
_STANDING = {ErrorCode.USER_SUSPENDED: "the user is suspended",
             ErrorCode.LICENCE_EXPIRED: "the user's licence has expired",
             ErrorCode.CERTIFICATE_EXPIRED: "the user's certificate has expired"}

# What a device-authenticated route may answer before its own logic runs (for OpenAPI).
DEVICE_AUTH_ERRORS = (ErrorCode.TOKEN_INVALID, ErrorCode.TOKEN_EXPIRED, ErrorCode.TOKEN_AUDIENCE,
                      ErrorCode.TOKEN_DEVICE_MISMATCH, ErrorCode.PROOF_REPLAYED,
                      ErrorCode.DEVICE_REVOKED,
                      ErrorCode.USER_SUSPENDED, ErrorCode.LICENCE_EXPIRED,
                      ErrorCode.CERTIFICATE_EXPIRED)
ADMIN_AUTH_ERRORS = (ErrorCode.TOKEN_INVALID, ErrorCode.TOKEN_EXPIRED, ErrorCode.TOKEN_AUDIENCE)


def verify_signature(public_key: bytes, message: bytes, signature: bytes) -> bool:
    """Ed25519 (RFC 8032) through protocol/'s one crypto module: False on any failure."""
    return keys.verify_signature(public_key, message, signature)


@dataclasses.dataclass(frozen=True)
class Principal:
    """An authenticated device and its user."""

    user_id: str
    device_id: str
    org_id: str
    device_kind: str
    signing_key: bytes
    family_id: str
    roles: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class AdminPrincipal:
    admin_id: str
    login: str


def bearer_token(request: Request) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized(ErrorCode.UNAUTHENTICATED, "a bearer token is required")
    return token.strip()


class Authenticator:
    def __init__(self, *, db: Database, tokens: TokenService, proof_skew: int,
                 clock: Callable[[], float] = time.time) -> None:
        self.db, self.tokens, self.proof_skew, self.clock = db, tokens, proof_skew, clock

    async def require_device(self, request: Request) -> Principal:
        """The device behind this request, or the precise refusal (see module docstring).

        The proof covers the method, the request target (path and query), the body, the time
        and a nonce (protocol.api.request_proof_input); the body is read here, within the edge
        middleware's cap, and stays available to the route (Starlette caches it)."""
        token = bearer_token(request)
        now = self.clock()
        claims = self.tokens.verify_access(token, now=now)
        timestamp, nonce, signature = self._proof(request)
        if abs(now - timestamp) > self.proof_skew:
            raise Unauthorized(ErrorCode.TOKEN_DEVICE_MISMATCH, "proof timestamp out of range")
        target = _request_target(request)
        body = await request.body()
        async with self.db.pool.acquire() as conn:
            principal = await self.check_device(conn, claims, now=now)
            message = request_proof_input(request.method, target, timestamp, nonce, body, token)
            if not verify_signature(principal.signing_key, message, signature):
                raise Unauthorized(ErrorCode.TOKEN_DEVICE_MISMATCH,
                                   "proof not signed by the device the token is bound to")
            # Accepted once, in any relay process, while its timestamp could still pass.
            if not await proofs.remember(conn, principal.device_id, nonce,
                                         expires_at=timestamp + self.proof_skew + 1, now=now):
                raise Unauthorized(ErrorCode.PROOF_REPLAYED, "this proof was used before")
        _set_actor("device", principal.device_id)
        return principal

    async def check_device(self, conn: asyncpg.Connection, claims: AccessClaims, *,
                           now: float) -> Principal:
        """Check a verified token against the current state of its device and user.

        token_invalid (unknown device, session ended), token_device_mismatch (the token is
        bound to another key), device_revoked, user_suspended, licence_expired,
        certificate_expired."""
        device = await devices.get_device(conn, claims.device_id)
        if device is None or device.user_id != claims.user_id:
            raise Unauthorized(ErrorCode.TOKEN_INVALID, "token names an unknown device")
        if not hmac.compare_digest(key_thumbprint(device.signing_key), claims.jkt):
            raise Unauthorized(ErrorCode.TOKEN_DEVICE_MISMATCH,
                               "token bound to another device key")
        if device.status != "active":
            raise Forbidden(ErrorCode.DEVICE_REVOKED, "this device was revoked")
        user = await users.get_user(conn, claims.user_id)
        if user is None or user.status == "pending":
            raise Unauthorized(ErrorCode.TOKEN_INVALID, "token names an unknown user")
        refused = user.standing(now)
        if refused is not None:
            raise Forbidden(refused, _STANDING[refused])
        if not await sessions.family_active(conn, claims.family_id):
            raise Unauthorized(ErrorCode.TOKEN_INVALID, "session ended; log in again")
        return Principal(user_id=user.user_id, device_id=device.device_id, org_id=user.org_id,
                         device_kind=device.kind, signing_key=device.signing_key,
                         family_id=claims.family_id, roles=tuple(user.roles))

    def _proof(self, request: Request) -> tuple[int, bytes, bytes]:
        """``<unix seconds>.<b64url nonce[16]>.<b64url signature[64]>``."""
        raw = request.headers.get(PROOF_HEADER)
        parts = (raw or "").split(".")
        try:
            if len(parts) != 3:
                raise DecodeError("three parts expected")
            ts, nonce, sig = parts
            if not ts.isdigit() or len(ts) > 12:
                raise DecodeError("bad timestamp")
            return (int(ts), b64url_decode(nonce, length=PROOF_NONCE_BYTES),
                    b64url_decode(sig, length=64))
        except DecodeError as exc:
            raise Unauthorized(ErrorCode.TOKEN_DEVICE_MISMATCH,
                               "a valid Lightbox-Proof header is required") from exc

    async def require_admin(self, request: Request) -> AdminPrincipal:
        """The IT administrator behind this request (admin token, account not disabled)."""
        claims = self.tokens.verify_admin(bearer_token(request), now=self.clock())
        async with self.db.pool.acquire() as conn:
            admin = await admins.get_admin(conn, claims.admin_id)
        if admin is None or admin.disabled:
            raise Unauthorized(ErrorCode.TOKEN_INVALID, "administrator unknown or disabled")
        # A token issued before the account's password was last set is refused: a reset after
        # a suspected compromise ends the old password's tokens (docs/SECURITY.md "Lockout").
        # ``iat`` counts whole seconds (RFC 7519 §4.1.6), so one issued in the second of the
        # change is refused too: its holder logs in again.
        if admin.password_set_at is not None and claims.issued_at < admin.password_set_at:
            raise Unauthorized(ErrorCode.TOKEN_INVALID,
                               "the administrator's password changed since this token was "
                               "issued: log in again")
        _set_actor("admin", admin.admin_id)
        return AdminPrincipal(admin_id=admin.admin_id, login=admin.login)


def _request_target(request: Request) -> str:
    """The request target as the client sent it: raw path, and ``?query`` when there is one
    (RFC 9110 §7.1 origin-form), percent-encoding untouched, as the proof signs it."""
    scope = request.scope
    raw_path = scope.get("raw_path") or scope["path"].encode()
    query = scope.get("query_string") or b""
    try:
        target = bytes(raw_path).decode("ascii")
        return target + ("?" + bytes(query).decode("ascii") if query else "")
    except UnicodeDecodeError as exc:
        raise Unauthorized(ErrorCode.TOKEN_DEVICE_MISMATCH,
                           "the request target is not ASCII") from exc


def _set_actor(kind: str, actor_id: str) -> None:
    """Name the actor in the audit rows this request writes (reset by the edge middleware)."""
    AUDIT_CONTEXT.set(dataclasses.replace(AUDIT_CONTEXT.get(), actor_kind=kind,
                                          actor_id=actor_id))
