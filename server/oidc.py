"""Single sign-on: the hospital's OpenID provider as the first factor at login and enrolment.

The client runs the Authorization Code flow with PKCE (RFC 7636, RFC 9700 §2.1.1) against the
IdP and brings the ID token here; this module checks it (OpenID Connect Core 1.0 §3.1.3.7):

1. the organisation has SSO configured (``LIGHTBOX_IDENTITY_FILE`` ``oidc``), else
   ``forbidden``;
2. the signature, with a key from the IdP's JWKS (discovery document, OpenID Connect Discovery
   1.0 §4, whose ``issuer`` must equal the configured one), by one of the configured algorithms
   (never ``none``, never HMAC): ``token_invalid``; keys are cached ``LIGHTBOX_OIDC_METADATA_TTL``
   and fetched again when a token names an unknown ``kid`` (rotation, PyJWKClient);
3. ``iss`` equal to the configured issuer: ``token_invalid``; ``aud`` containing the client id,
   and ``azp``, when present or when there are several audiences, equal to it:
   ``token_audience``; ``exp`` (and ``iat`` not in the future) within
   ``LIGHTBOX_PROOF_CLOCK_SKEW``: ``token_expired`` / ``token_invalid``;
4. ``nonce`` is a live single-use challenge of this relay (``POST /v1/auth/sso/challenge``),
   consumed now: a replayed, unknown or expired one is ``challenge_failed`` (§3.1.2.1 nonce,
   RFC 9700 §4.5.3);
5. the ``required_claims`` values, and the login claim naming a user of that organisation:
   ``invalid_credentials``.

Then the device's signature over the challenge and the user's and device's status are checked
exactly as for a password (server/login.py ``open_session``). The IdP authenticates a person;
it certifies nothing: roles, licence and keys still come from certificates IT signed. With a
``role_claim`` configured, a sign-in's groups restate the roles the IdP speaks for
(server/renewals.py): a role it no longer grants is withdrawn at once, one it newly grants
waits for IT's signature. A user the directory suspended (``active: false``) is refused
(``user_suspended``) whatever the IdP says.

JOSE is pyjwt's (``jwt.decode``, ``PyJWKClient``); nothing here parses a JWT by hand.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable
from typing import Any

import httpx
import jwt

from protocol.api import TokenPair
from protocol.canonical import b64url_decode, b64url_encode
from protocol.errors import DecodeError, ErrorCode
from protocol.sso import SsoChallenge, SsoConfig, SsoEnrolComplete, SsoLogin
from server import audit
from server.db import Database
from server.enrolment import EnrolmentService
from server.errors import Forbidden, RelayError, Unauthorized
from server.login import LoginService
from server.orgidentity import IdentitySettings, OidcSettings
from server.renewals import restate_roles
from server.settings import Settings
from server.store import sessions, users

__all__ = ["OidcService", "VerifiedIdToken"]

log = logging.getLogger("lightbox.oidc")


@dataclasses.dataclass(frozen=True)
class VerifiedIdToken:
    org_id: str
    login: str
    nonce: bytes
    subject: str
    roles: list[str] | None = None  # the role claim's roles; None: no role claim configured


@dataclasses.dataclass
class _Issuer:
    """One IdP's discovery document and key set, cached."""

    metadata: dict[str, Any]
    fetched_at: float
    keys: jwt.PyJWKClient


class OidcService:
    def __init__(self, *, db: Database, identity: IdentitySettings, login: LoginService,
                 enrolment: EnrolmentService, settings: Settings,
                 clock: Callable[[], float] = time.time) -> None:
        self.db, self.identity, self.login_service = db, identity, login
        self.enrolment, self.settings, self.clock = enrolment, settings, clock
        self._issuers: dict[str, _Issuer] = {}
        self._lock = asyncio.Lock()

    # --- configuration --------------------------------------------------------------------

    def _settings(self, org_id: str) -> OidcSettings:
        cfg = self.identity.for_org(org_id).oidc
        if cfg is None:
            raise Forbidden(detail="single sign-on is not configured for this organisation")
        return cfg

    def config(self, org_id: str) -> SsoConfig:
        cfg = self._settings(org_id)
        return SsoConfig(org_id=org_id, issuer=cfg.issuer, client_id=cfg.client_id,
                         scopes=list(cfg.scopes))

    async def challenge(self) -> SsoChallenge:
        async with self.db.pool.acquire() as conn:
            nonce, expires = await sessions.create_nonce(
                conn, now=self.clock(), ttl=self.settings.sso_challenge_ttl)
        return SsoChallenge(nonce=b64url_encode(nonce), expires_at=expires)

    async def _issuer(self, cfg: OidcSettings) -> _Issuer:
        """The discovery document (refetched after the TTL) and the key client for it."""
        async with self._lock:
            cached = self._issuers.get(cfg.issuer)
            if cached is not None and self.clock() - cached.fetched_at < \
                    self.settings.oidc_metadata_ttl:
                return cached
            url = cfg.issuer.rstrip("/") + "/.well-known/openid-configuration"
            try:
                async with httpx.AsyncClient(timeout=self.settings.oidc_http_timeout,
                                             follow_redirects=False) as http:
                    response = await http.get(url)
                response.raise_for_status()
                metadata = response.json()
            except (httpx.HTTPError, ValueError) as exc:
                log.warning("IdP discovery failed", extra={"error_type": type(exc).__name__})
                raise RelayError(ErrorCode.NOT_READY, "the identity provider is unreachable") \
                    from exc
            if not isinstance(metadata, dict) or metadata.get("issuer") != cfg.issuer \
                    or not isinstance(metadata.get("jwks_uri"), str):
                raise RelayError(ErrorCode.NOT_READY,
                                 "the identity provider's discovery document does not match "
                                 "its configured issuer")
            keys = cached.keys if cached is not None and \
                cached.metadata.get("jwks_uri") == metadata["jwks_uri"] else jwt.PyJWKClient(
                    # The key *set* is cached (with its lifespan), never single keys:
                    # PyJWKClient's per-kid cache has no expiry, and would keep trusting a key
                    # the IdP retired (tests/server/test_oidc.py, the rotation test).
                    metadata["jwks_uri"], cache_keys=False, cache_jwk_set=True,
                    lifespan=self.settings.oidc_metadata_ttl,
                    timeout=self.settings.oidc_http_timeout,
                    cooldown_duration=self.settings.oidc_key_refetch_cooldown)
            entry = _Issuer(metadata=metadata, fetched_at=self.clock(), keys=keys)
            self._issuers[cfg.issuer] = entry
            return entry

    # --- the ID token ---------------------------------------------------------------------

    async def verify(self, org_id: str, token: str) -> VerifiedIdToken:
        """Steps 1-3 and 5 of the module docstring; the nonce is returned, not consumed."""
        cfg = self._settings(org_id)
        issuer = await self._issuer(cfg)
        try:
            key = await asyncio.to_thread(issuer.keys.get_signing_key_from_jwt, token)
        except (jwt.PyJWKClientError, jwt.DecodeError) as exc:
            raise Unauthorized(ErrorCode.TOKEN_INVALID, "the ID token's key is unknown") \
                from exc
        try:
            claims: dict[str, Any] = jwt.decode(
                token, key, algorithms=list(cfg.algorithms), audience=cfg.client_id,
                issuer=cfg.issuer, leeway=self.settings.proof_clock_skew,
                options={"require": ["iss", "aud", "exp", "iat", "sub", "nonce"]})
        except jwt.ExpiredSignatureError as exc:
            raise Unauthorized(ErrorCode.TOKEN_EXPIRED, "the ID token has expired") from exc
        except jwt.InvalidAudienceError as exc:
            raise Unauthorized(ErrorCode.TOKEN_AUDIENCE,
                               "the ID token is for another client") from exc
        except jwt.InvalidIssuerError as exc:
            raise Unauthorized(ErrorCode.TOKEN_INVALID,
                               "the ID token is from another issuer") from exc
        except jwt.InvalidTokenError as exc:
            raise Unauthorized(ErrorCode.TOKEN_INVALID, "the ID token does not verify") from exc
        if int(claims["iat"]) > self.clock() + self.settings.proof_clock_skew:
            raise Unauthorized(ErrorCode.TOKEN_INVALID, "the ID token is issued in the future")
        audiences = claims["aud"] if isinstance(claims["aud"], list) else [claims["aud"]]
        azp = claims.get("azp")
        if (len(audiences) > 1 or azp is not None) and azp != cfg.client_id:
            raise Unauthorized(ErrorCode.TOKEN_AUDIENCE,
                               "the ID token was issued to another party (azp)")
        for name, value in cfg.required_claims.items():
            if claims.get(name) != value:
                raise Unauthorized(ErrorCode.INVALID_CREDENTIALS,
                                   "the ID token lacks a required claim")
        login = claims.get(cfg.login_claim)
        if not isinstance(login, str) or not login:
            raise Unauthorized(ErrorCode.INVALID_CREDENTIALS, "the ID token names no login")
        try:
            nonce = b64url_decode(str(claims["nonce"]), length=32)
        except DecodeError as exc:
            raise Unauthorized(ErrorCode.CHALLENGE_FAILED, "unknown nonce") from exc
        return VerifiedIdToken(org_id=org_id, login=login.lower(), nonce=nonce,
                               subject=str(claims["sub"]), roles=cfg.roles_for(claims))

    async def _first_factor(self, org_id: str, token: str, event: str
                            ) -> tuple[VerifiedIdToken, users.UserRecord]:
        """The ID token verified, its nonce consumed, and the user it names."""
        now = self.clock()
        async with self.db.pool.acquire() as conn:
            try:
                verified = await self.verify(org_id, token)
                if not await sessions.consume_nonce(conn, verified.nonce, now=now):
                    raise Unauthorized(ErrorCode.CHALLENGE_FAILED,
                                       "the nonce is unknown, expired or used")
                user = await users.get_user_by_login(conn, verified.login)
                if user is None or user.org_id != org_id:
                    raise Unauthorized(ErrorCode.INVALID_CREDENTIALS,
                                       "no such user in this organisation")
            except RelayError as exc:
                await audit.append(conn, event, outcome="denied",
                                   details={"reason": exc.code.value, "org_id": org_id,
                                            "first_factor": "sso"})
                raise
        return verified, user

    async def login(self, body: SsoLogin) -> TokenPair:
        verified, user = await self._first_factor(body.org_id, body.id_token, "auth.login")
        try:
            signature = b64url_decode(body.signature, length=64)
        except DecodeError:
            signature = b""
        async with self.db.pool.acquire() as conn:
            pair = await self.login_service.open_session(
                conn, user, body.device_id, verified.nonce, signature, event="auth.login",
                now=self.clock(), details={"first_factor": "sso"},
                reauth_after=self.settings.sso_session_ttl)
        await self._restate_roles(verified)
        return pair

    async def enrol(self, body: SsoEnrolComplete) -> Any:
        verified, _ = await self._first_factor(body.org_id, body.id_token, "enrol.complete")

        async def same_user(user: users.UserRecord) -> None:
            if user.login != verified.login or user.org_id != verified.org_id:
                raise Unauthorized(ErrorCode.INVALID_CREDENTIALS,
                                   "the ID token names another user than the enrolment code")

        enrolled = await self.enrolment.complete(body, first_factor=same_user)
        await self._restate_roles(verified)
        return enrolled

    async def _restate_roles(self, verified: VerifiedIdToken) -> None:
        """After a successful sign-in: what the token's role claim says, applied
        (server/renewals.py). The session token was issued before, from the same row the
        next request reads again, so a withdrawn role is gone from that request on."""
        if verified.roles is None:
            return
        managed = self._settings(verified.org_id).claim_roles.values()
        async with self.db.pool.acquire() as conn, conn.transaction():
            user = await users.get_user_by_login(conn, verified.login)
            if user is None:
                return
            user = await users.get_user(conn, user.user_id, for_update=True)
            if user is not None:
                await restate_roles(conn, user, verified.roles, managed, source="idp",
                                    now=self.clock())
