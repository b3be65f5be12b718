"""The relay's token signing key, and its access and admin tokens (RFC 7519 JWTs, EdDSA).

Access tokens (audience :data:`protocol.api.ACCESS_TOKEN_AUDIENCE`) name the user (``sub``), the
device (``did``) and the refresh-token family they came from (``sid``), and are bound to the
device's Ed25519 key by ``cnf.jkt`` (RFC 7800 §3.1): every request also carries a proof signed
by that key (server/authn.py), so a stolen token alone is useless. Admin tokens (audience
:data:`protocol.api.ADMIN_TOKEN_AUDIENCE`) name an IT administrator.

Verification always passes ``algorithms=["EdDSA"]``: PyJWT then refuses ``alg: none`` and the
HS256-keyed-with-the-public-key confusion (RFC 8725 §2.1, §3.1). Expiry is checked against an
injected clock, not PyJWT's own, so tests are deterministic. Failures map to exactly one of
``token_invalid``, ``token_expired`` and ``token_audience``.

The signing key is a 32-byte Ed25519 seed in a 0600 file, created once by
:func:`ensure_token_key` (the runner calls it before it starts worker processes, so that they
all share one key). Rotating it logs everybody out within one access-token lifetime.
"""

from __future__ import annotations

import dataclasses
import os
import re
import secrets
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jwt

from protocol.api import ACCESS_TOKEN_AUDIENCE, ADMIN_TOKEN_AUDIENCE, key_thumbprint
from protocol.canonical import b64url_decode, b64url_encode
from protocol.errors import DecodeError, ErrorCode
from protocol.keys import (
    Ed25519KeyPair,
    JwsSigningKey,
    JwsVerifyKey,
    jws_signing_key,
    jws_verify_key,
)
from server.errors import Unauthorized

__all__ = [
    "ISSUER",
    "AccessClaims",
    "AdminClaims",
    "TokenService",
    "ensure_token_key",
    "load_token_key",
]

ISSUER = "lightbox-relay"
_SEED_BYTES = 32
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def ensure_token_key(path: Path) -> None:
    """Create the token signing seed at ``path`` (mode 0600) unless it exists.

    Atomic: the seed is written to a private temporary file and hard-linked into place, so two
    processes racing here both end up reading the same complete key."""
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, secrets.token_bytes(_SEED_BYTES))
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)
    except FileExistsError:
        pass  # another process won the race; use its key
    finally:
        tmp.unlink()


def load_token_key(path: Path) -> bytes:
    """Read the 32-byte seed; refuse a file of another size or readable by others."""
    mode = path.stat().st_mode
    if mode & 0o077:
        raise PermissionError(f"{path} must not be readable by group or others (chmod 600)")
    seed = path.read_bytes()
    if len(seed) != _SEED_BYTES:
        raise ValueError(f"{path} must hold exactly {_SEED_BYTES} bytes")
    return seed


@dataclasses.dataclass(frozen=True)
class AccessClaims:
    """A verified access token."""

    user_id: str
    device_id: str
    family_id: str  # the refresh-token family (``sid``): ends when it is revoked
    jkt: bytes  # SHA-256 of the device signing key the token is bound to
    issued_at: int
    expires_at: int
    token_id: str


@dataclasses.dataclass(frozen=True)
class AdminClaims:
    admin_id: str
    issued_at: int
    expires_at: int


def _fail(code: ErrorCode, detail: str) -> Unauthorized:
    return Unauthorized(code, detail)


class TokenService:
    """Issues and verifies the relay's JWTs with one Ed25519 key."""

    def __init__(self, seed: bytes | None, *, access_ttl: int, admin_ttl: int,
                 clock: Callable[[], float] = time.time, clock_skew: int = 60) -> None:
        self.access_ttl, self.admin_ttl = access_ttl, admin_ttl
        self.clock_skew = clock_skew
        self.clock = clock
        self._keys: tuple[JwsSigningKey, JwsVerifyKey] | None = None
        if seed is not None:
            self.load(seed)

    def load(self, seed: bytes) -> None:
        """Install the signing seed (the app does it at start-up, from the key file). The keys
        come from protocol.keys, the same crypto module as every other Lightbox signature."""
        pair = Ed25519KeyPair.from_seed(seed)
        self._keys = (jws_signing_key(pair.seed), jws_verify_key(pair.public))

    @property
    def _signing_key(self) -> JwsSigningKey:
        if self._keys is None:
            raise RuntimeError("token signing key not loaded")
        return self._keys[0]

    @property
    def _verify_key(self) -> JwsVerifyKey:
        if self._keys is None:
            raise RuntimeError("token signing key not loaded")
        return self._keys[1]

    def _now(self, now: float | None) -> int:
        return int(self.clock() if now is None else now)

    # --- access tokens --------------------------------------------------------------------

    def issue_access(self, *, user_id: str, device_id: str, family_id: str, signing_key: bytes,
                     now: float | None = None) -> tuple[str, int]:
        """An access token for this device, and its expiry (unix seconds)."""
        iat = self._now(now)
        exp = iat + self.access_ttl
        claims = {
            "iss": ISSUER, "aud": ACCESS_TOKEN_AUDIENCE, "sub": user_id, "did": device_id,
            "sid": family_id, "iat": iat, "exp": exp, "jti": str(uuid.uuid4()),
            "cnf": {"jkt": b64url_encode(key_thumbprint(signing_key))},
        }
        return jwt.encode(claims, self._signing_key, algorithm="EdDSA"), exp

    def verify_access(self, token: str, *, now: float | None = None,
                      allow_expired: bool = False) -> AccessClaims:
        """Verify an access token (signature, issuer, audience, expiry) and return its claims.

        Raises :class:`~server.errors.Unauthorized` with ``token_invalid``, ``token_expired``
        or ``token_audience``. It does not check the device's proof or status: see
        server/authn.py. ``allow_expired`` skips only the expiry check, for the one use that
        needs it: identifying a revoked device that must hear its wipe order (server/ws.py)."""
        payload = self._decode(token, ACCESS_TOKEN_AUDIENCE, now, extra=("did", "sid", "cnf"),
                               allow_expired=allow_expired)
        did, sid, cnf = payload["did"], payload["sid"], payload["cnf"]
        if not (isinstance(did, str) and _UUID.match(did) and isinstance(sid, str)
                and _UUID.match(sid) and isinstance(cnf, dict)
                and isinstance(cnf.get("jkt"), str)):
            raise _fail(ErrorCode.TOKEN_INVALID, "malformed token claims")
        try:
            jkt = b64url_decode(cnf["jkt"], length=32)
        except DecodeError as exc:
            raise _fail(ErrorCode.TOKEN_INVALID, "malformed cnf claim") from exc
        return AccessClaims(user_id=payload["sub"], device_id=did, family_id=sid, jkt=jkt,
                            issued_at=payload["iat"], expires_at=payload["exp"],
                            token_id=payload["jti"])

    # --- admin tokens ---------------------------------------------------------------------

    def issue_admin(self, admin_id: str, *, now: float | None = None) -> tuple[str, int]:
        iat = self._now(now)
        exp = iat + self.admin_ttl
        claims = {"iss": ISSUER, "aud": ADMIN_TOKEN_AUDIENCE, "sub": admin_id, "iat": iat,
                  "exp": exp, "jti": str(uuid.uuid4())}
        return jwt.encode(claims, self._signing_key, algorithm="EdDSA"), exp

    def verify_admin(self, token: str, *, now: float | None = None) -> AdminClaims:
        payload = self._decode(token, ADMIN_TOKEN_AUDIENCE, now, extra=())
        return AdminClaims(admin_id=payload["sub"], issued_at=payload["iat"],
                           expires_at=payload["exp"])

    # --- shared ---------------------------------------------------------------------------

    def _decode(self, token: str, audience: str, now: float | None,
                extra: tuple[str, ...], allow_expired: bool = False) -> dict[str, Any]:
        if not isinstance(token, str) or len(token) > 4096:
            raise _fail(ErrorCode.TOKEN_INVALID, "malformed token")
        try:
            payload: dict[str, Any] = jwt.decode(
                token, self._verify_key, algorithms=["EdDSA"], audience=audience,
                issuer=ISSUER,
                # Claims of one kind of token only are checked after the audience, so that
                # an admin token shown as an access token is token_audience, not invalid.
                options={"require": ["iss", "aud", "sub", "iat", "exp", "jti"],
                         # Time claims are checked below against the injected clock.
                         "verify_exp": False, "verify_iat": False, "verify_nbf": False},
            )
        except jwt.InvalidAudienceError as exc:
            raise _fail(ErrorCode.TOKEN_AUDIENCE, "token issued for another audience") from exc
        except jwt.PyJWTError as exc:
            raise _fail(ErrorCode.TOKEN_INVALID, "token malformed or signature bad") from exc
        if any(name not in payload for name in extra):
            raise _fail(ErrorCode.TOKEN_INVALID, "token lacks required claims")
        sub, iat, exp = payload["sub"], payload["iat"], payload["exp"]
        if not (isinstance(sub, str) and _UUID.match(sub) and type(iat) is int
                and type(exp) is int and isinstance(payload["jti"], str)):
            raise _fail(ErrorCode.TOKEN_INVALID, "malformed token claims")
        current = self._now(now)
        # RFC 7519 §4.1.6 and §4.1.5: a token issued, or valid only from, later than now (beyond
        # the clock skew) is not one this relay issued at a time it can vouch for.
        nbf = payload.get("nbf", iat)
        if type(nbf) is not int:
            raise _fail(ErrorCode.TOKEN_INVALID, "malformed token claims")
        if max(iat, nbf) > current + self.clock_skew:
            raise _fail(ErrorCode.TOKEN_INVALID, "token issued in the future")
        if current >= exp and not allow_expired:
            raise _fail(ErrorCode.TOKEN_EXPIRED, "token expired")
        return payload
