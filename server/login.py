"""Login, token refresh and logout for devices; login for IT administrators.

A device logs in with the user's login and password *and* its signature over a fresh server
nonce (:func:`protocol.api.login_signing_input`), so a phished password alone does not log in
from an unenrolled machine. Order of checks (each failure audited with its code, never the
password):

1. the failure counters of server/throttle.py: the (account, address) pair, the account and,
   unless the nonce is signed by an active device of the account, the address:
   ``account_locked`` with ``retry_after``, before the password is looked at;
2. the nonce is single use and unexpired (``challenge_failed``);
3. a clinician of an organisation that signs on with its IdP and refuses passwords
   (server/orgidentity.py ``password_login``): ``sso_required`` when the nonce is signed by a
   device of the account, whatever the password; the password is never checked, and nothing
   is counted, so the answer tells nothing about it. Without that signature the attempt goes
   on as an unknown login's (below: the dummy hash, ``invalid_credentials``, counted), so a
   stranger learns neither whether the login exists nor that its organisation signs on;
4. the password, with Argon2id off the event loop; an unknown login is verified against a dummy
   hash so it takes the same time, and both count as failures (``invalid_credentials``);
5. the nonce signed by a device of the account: without that signature the password, right or
   wrong, gets the one answer of a wrong password (``invalid_credentials``, "login, password or
   device key is wrong"), after the same Argon2id verification, and is counted as a failure,
   so whoever holds a clinician's password but not her device cannot tell that it is right
   (OWASP ASVS 5.0 V6.3.3, docs/SECURITY.md "Login"). The audit row says what failed
   (``failed``: ``password``, ``device_signature`` or both), never the password;
6. the device is active (``device_revoked``: only the holder of its key gets this far); the
   user is active (``user_suspended``), licence and certificate unexpired
   (``licence_expired``, ``certificate_expired``).

Refresh rotates the refresh token; a used token presented again revokes its whole family
(``refresh_reused``, audited), except the legitimate race of one device's own requests within
``LIGHTBOX_REFRESH_REUSE_GRACE`` (the same new pair again, ``auth.refresh_repeat``, audited).
Refresh re-checks device and user status. A session begun with a password that the user's
organisation no longer accepts (step 3) ends at its next refresh (``token_expired``, audited
``sso_required``), as one begun at the IdP does after ``LIGHTBOX_SSO_SESSION_TTL``.

Whatever ends a family (logout, reuse, either end at refresh) also closes, on every relay
process, the websockets opened with its access tokens (:func:`_end_session`), and those tokens
are refused from then on although they have not expired (server/authn.py).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import NoReturn

import asyncpg
import msgspec

from protocol.api import (
    AdminToken,
    LoginChallenge,
    LoginRequest,
    TokenPair,
    login_signing_input,
)
from protocol.canonical import b64url_decode, b64url_encode
from protocol.errors import DecodeError, ErrorCode
from server import audit, events
from server.audit import AUDIT_CONTEXT
from server.authn import verify_signature
from server.db import Database
from server.errors import Forbidden, LimitError, RelayError, Unauthorized
from server.orgidentity import IdentitySettings
from server.passwords import Passwords
from server.settings import Settings
from server.store import admins, devices, sessions, sso, users
from server.throttle import Attempt, Throttle, Who
from server.tokens import TokenService

__all__ = ["SSO_REQUIRED_LOGIN", "WRONG_LOGIN", "WRONG_WITHOUT_DEVICE", "LoginService"]

# The ``invalid_credentials`` sentences. A login whose nonce no device of the account signed
# gets the second whatever its password (step 5): it covers the legitimate user whose device
# key is not the enrolled one (a profile restored from another machine) as well as a wrong
# password. Only the holder of the device's key hears the first.
WRONG_LOGIN = "login or password is wrong"
WRONG_WITHOUT_DEVICE = "login, password or device key is wrong"

SSO_REQUIRED_LOGIN = (
    "your organisation signs you in with its single sign-on, not a Lightbox password: sign in "
    "with your hospital account (`lightbox login --sso`, or \"Sign in with your hospital "
    "account\" in the phone app)")


class LoginService:
    def __init__(self, *, db: Database, tokens: TokenService, passwords: Passwords,
                 settings: Settings, identity: IdentitySettings | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.db, self.tokens, self.passwords = db, tokens, passwords
        self.settings, self.clock = settings, clock
        self.identity = identity or IdentitySettings()
        self.throttle = Throttle(settings)

    # --- device login ---------------------------------------------------------------------

    async def challenge(self) -> LoginChallenge:
        async with self.db.pool.acquire() as conn:
            nonce, expires = await sessions.create_nonce(
                conn, now=self.clock(), ttl=self.settings.login_challenge_ttl)
        return LoginChallenge(nonce=b64url_encode(nonce), expires_at=expires)

    async def login(self, body: LoginRequest) -> TokenPair:
        now = self.clock()
        try:
            nonce = b64url_decode(body.nonce, length=32)
            signature = b64url_decode(body.signature, length=64)
        except DecodeError:
            nonce, signature = b"", b""
        async with self.db.pool.acquire() as conn:
            user = await users.get_user_by_login(conn, body.login)
            device = await devices.get_device(conn, body.device_id)
            signed = bool(nonce) and user is not None and device is not None \
                and device.user_id == user.user_id and verify_signature(
                    device.signing_key, login_signing_input(nonce, body.login, body.device_id),
                    signature)
            holder = signed and device is not None and device.status == "active"
            attempt = Attempt.of(Who.HOLDER if holder else Who.OTHER, body.login,
                                 AUDIT_CONTEXT.get().client_ip)
            await self._check_lockout(conn, attempt, "auth.login", now,
                                      subject_id=user.user_id if user is not None else None)
            if not nonce or not await sessions.consume_nonce(conn, nonce, now=now):
                await self._deny(conn, "auth.login", None, ErrorCode.CHALLENGE_FAILED)
            refused = user is not None and self.identity.for_org(user.org_id).refuses_password(
                user.account_kind)
            if refused and signed:
                # Step 3: the IdP is this clinician's first factor; the password is not looked
                # at (docs/SECURITY.md "Single sign-on").
                assert user is not None
                await self._deny(conn, "auth.login", user.user_id, ErrorCode.SSO_REQUIRED,
                                 detail=SSO_REQUIRED_LOGIN,
                                 details={"first_factor": "password"})
        # A refused password is checked against the dummy hash, as an unknown login's: the
        # same time, never True.
        ok = await self.passwords.verify(
            user.password_hash if user is not None and not refused else None, body.password)
        async with self.db.pool.acquire() as conn:
            if user is None or refused:
                await self._failure(conn, attempt, "auth.login", user.user_id if user else None,
                                    now, details={"password_login": "refused"} if refused
                                    else None, sentence=WRONG_WITHOUT_DEVICE)
            if not ok or not signed:
                # Step 5: a right password without the device's signature is answered, and
                # counted, as a wrong one, so only the holder of the device's key learns which
                # (ASVS 5.0 V6.3.3, both factors; OWASP Authentication Cheat Sheet,
                # "Authentication and Error Messages": one generic answer).
                failed = [factor for factor, bad in (("password", not ok),
                                                     ("device_signature", not signed)) if bad]
                await self._failure(conn, attempt, "auth.login", user.user_id, now,
                                    details={"failed": ",".join(failed)},
                                    sentence=WRONG_LOGIN if signed
                                    else WRONG_WITHOUT_DEVICE)
            pair = await self.open_session(conn, user, body.device_id, nonce, signature,
                                           event="auth.login", now=now)
            await self.throttle.success(conn, attempt)
            if self.passwords.needs_rehash(user.password_hash or ""):
                new_hash = await self.passwords.hash(body.password)
                await users.set_password_hash(conn, user.user_id, new_hash, now=now)
        return pair

    async def open_session(self, conn: asyncpg.Connection, user: users.UserRecord,
                           device_id: str, nonce: bytes, signature: bytes, *, event: str,
                           now: float, details: dict[str, str] | None = None,
                           reauth_after: float | None = None) -> TokenPair:
        """The second factor and the session, once the first (password, or the IdP's ID
        token: server/oidc.py) named ``user``: the device is the user's and signed the nonce
        (``challenge_failed``), device and user may log in (``device_revoked``,
        ``user_suspended``, ...); then a new refresh family and an access token bound to the
        device key (``cnf.jkt``). With ``reauth_after`` (a session begun at the IdP) the
        family refreshes for that many seconds only (server/store/sso.py)."""
        device = await devices.get_device(conn, device_id)
        if device is None or device.user_id != user.user_id or not verify_signature(
                device.signing_key, login_signing_input(nonce, user.login, device_id),
                signature):
            await self._deny(conn, event, user.user_id, ErrorCode.CHALLENGE_FAILED)
        assert device is not None
        code = _status_refusal(user, device.status, now)
        if code is not None:
            await self._deny(conn, event, user.user_id, code)
        family_id = str(uuid.uuid4())
        async with conn.transaction():
            refresh, refresh_exp = await sessions.issue_refresh(
                conn, family_id=family_id, user_id=user.user_id, device_id=device.device_id,
                now=now, ttl=self.settings.refresh_token_ttl)
            await devices.touch(conn, device.device_id, now=now)
            if reauth_after is not None:
                await sso.record(conn, family_id, user.user_id, reauth_at=now + reauth_after)
            await audit.append(conn, event, subject_kind="device",
                               subject_id=device.device_id, actor_kind="user",
                               actor_id=user.user_id,
                               details={"user_id": user.user_id, **(details or {})})
        access, exp = self.tokens.issue_access(user_id=user.user_id, device_id=device.device_id,
                                               family_id=family_id,
                                               signing_key=device.signing_key, now=now)
        return TokenPair(access_token=access, expires_at=exp, refresh_token=refresh,
                         refresh_expires_at=refresh_exp, user_id=user.user_id,
                         device_id=device.device_id)

    async def refresh(self, token: str) -> TokenPair:
        """Exchange a refresh token for a new pair (rotation, RFC 9700 §4.14.2).

        A used token presented again is reuse and ends the family, except within
        ``refresh_reuse_grace`` seconds of its exchange while its successor is still unused:
        that is two requests of one device racing, and they get the very pair the first one
        got (sealed under the old token, server/store/sessions.py), not a third one. The row
        lock of :func:`sessions.get_refresh` serialises racing exchanges across processes."""
        now = self.clock()
        async with self.db.pool.acquire() as conn:
            async with conn.transaction():
                rec = await sessions.get_refresh(conn, token)
                if rec is None:
                    raise Unauthorized(ErrorCode.TOKEN_INVALID, "unknown or revoked token")
                if rec.revoked and not rec.used:
                    # Ended with its device or user (revoked, suspended): say why, as a login
                    # would, so that a revoked device knows to present its last access token to
                    # hear a wipe order (PROTOCOL.md §15 "Wipe"). Ended otherwise (logout):
                    # token_invalid.
                    await self._check_status(conn, rec, now)
                    raise Unauthorized(ErrorCode.TOKEN_INVALID, "unknown or revoked token")
                if rec.used:
                    pair = await self._repeat(conn, token, rec, now)
                    if pair is not None:
                        return pair
                    # A copy of a token that was already exchanged: someone else holds the
                    # family. End it for everybody, the legitimate device included.
                    revoked = await _end_session(conn, rec.family_id, now=now)
                    await audit.append(conn, "auth.refresh_reused", subject_kind="device",
                                       subject_id=rec.device_id, outcome="denied",
                                       details={"user_id": rec.user_id, "revoked": revoked})
                else:
                    if now >= rec.expires_at:
                        raise Unauthorized(ErrorCode.TOKEN_EXPIRED, "refresh token expired")
                    reauth = await sso.reauth_at(conn, rec.family_id)
                    if reauth is None:
                        if not await self._password_refused(conn, rec.user_id):
                            return await self._rotate(conn, token, rec, now)
                        # Begun with a password the organisation no longer accepts (it turned
                        # single sign-on on since): the session ends as an SSO session past
                        # its lifetime does, so the IdP decides from now on.
                        reason = ErrorCode.SSO_REQUIRED.value
                    elif now < reauth:
                        return await self._rotate(conn, token, rec, now)
                    else:
                        # Begun at the IdP and past its lifetime: sign in there again (it
                        # decides whether the user still may).
                        reason = "sso_reauth"
                    # The family ends; the refusal follows the commit.
                    await _end_session(conn, rec.family_id, now=now)
                    await audit.append(conn, "auth.refresh", subject_kind="device",
                                       subject_id=rec.device_id, outcome="denied",
                                       details={"reason": reason})
            if not rec.used:
                raise Unauthorized(ErrorCode.TOKEN_EXPIRED,
                                   "the single sign-on session has ended: sign in again")
        raise Unauthorized(ErrorCode.REFRESH_REUSED, "refresh token reused: the session was ended")

    async def _password_refused(self, conn: asyncpg.Connection, user_id: str) -> bool:
        """Whether the user's organisation refuses their password (step 3 of the module
        docstring)."""
        user = await users.get_user(conn, user_id)
        return user is not None and self.identity.for_org(user.org_id).refuses_password(
            user.account_kind)

    async def _rotate(self, conn: asyncpg.Connection, token: str,
                      rec: sessions.RefreshRecord, now: float) -> TokenPair:
        """The next pair of the family, the presented token marked used (in the caller's
        transaction)."""
        device = await self._check_status(conn, rec, now)
        new, new_exp = await sessions.issue_refresh(
            conn, family_id=rec.family_id, user_id=rec.user_id,
            device_id=rec.device_id, now=now, ttl=self.settings.refresh_token_ttl)
        access, exp = self.tokens.issue_access(
            user_id=rec.user_id, device_id=rec.device_id, family_id=rec.family_id,
            signing_key=device.signing_key, now=now)
        pair = TokenPair(access_token=access, expires_at=exp, refresh_token=new,
                         refresh_expires_at=new_exp, user_id=rec.user_id,
                         device_id=rec.device_id)
        await sessions.rotate(conn, token, successor=new, now=now,
                              sealed=sessions.seal_successor(token, msgspec.json.encode(pair)))
        await audit.append(conn, "auth.refresh", subject_kind="device",
                           subject_id=rec.device_id, actor_kind="device",
                           actor_id=rec.device_id)
        return pair

    async def _check_status(self, conn: asyncpg.Connection, rec: sessions.RefreshRecord,
                            now: float) -> devices.DeviceRecord:
        """The device, if it and its user may still hold a session (else the refusal)."""
        user = await users.get_user(conn, rec.user_id)
        device = await devices.get_device(conn, rec.device_id)
        assert user is not None  # foreign keys
        assert device is not None
        code = _status_refusal(user, device.status, now)
        if code is not None:
            raise _refusal(code)
        return device

    async def _repeat(self, conn: asyncpg.Connection, token: str, rec: sessions.RefreshRecord,
                      now: float) -> TokenPair | None:
        """The pair this used token was exchanged for, if this is the legitimate race (within
        the grace, family live, successor unused); None if it is reuse."""
        grace = self.settings.refresh_reuse_grace
        if (rec.revoked or rec.used_at is None or now >= rec.used_at + grace
                or rec.successor_hash is None or rec.successor_sealed is None
                or not await sessions.successor_live(conn, rec.successor_hash)):
            return None
        sealed = sessions.open_successor(token, rec.successor_sealed)
        if sealed is None:
            return None
        await self._check_status(conn, rec, now)
        await audit.append(conn, "auth.refresh_repeat", subject_kind="device",
                           subject_id=rec.device_id, actor_kind="device", actor_id=rec.device_id,
                           details={"after_ms": int((now - rec.used_at) * 1000)})
        return msgspec.json.decode(sealed, type=TokenPair)

    async def logout(self, token: str) -> None:
        now = self.clock()
        async with self.db.pool.acquire() as conn, conn.transaction():
            rec = await sessions.get_refresh(conn, token)
            if rec is None:
                raise Unauthorized(ErrorCode.TOKEN_INVALID, "unknown token")
            await _end_session(conn, rec.family_id, now=now)
            await audit.append(conn, "auth.logout", subject_kind="device",
                               subject_id=rec.device_id, actor_kind="device",
                               actor_id=rec.device_id)

    # --- administrators -------------------------------------------------------------------

    async def admin_login(self, login: str, password: str) -> AdminToken:
        now = self.clock()
        attempt = Attempt.of(Who.ADMIN, login, AUDIT_CONTEXT.get().client_ip)
        async with self.db.pool.acquire() as conn:
            # The audit names the administrator a failure or a lock is charged to, so that an
            # auditor sees whose account is being guessed at; a login no administrator has is
            # never written (it may be a password typed into the wrong field).
            known = await admins.get_admin_by_login(conn, login)
            subject = known.admin_id if known is not None else None
            await self._check_lockout(conn, attempt, "admin.login", now,
                                      subject_kind="admin", subject_id=subject)
            try:
                admin = await admins.check_admin_password(self.passwords, known, password)
            except Unauthorized:
                await self._failure(conn, attempt, "admin.login", subject, now,
                                    subject_kind="admin")
            async with conn.transaction():
                await self.throttle.success(conn, attempt)
                await audit.append(conn, "admin.login", subject_kind="admin",
                                   subject_id=admin.admin_id, actor_kind="admin",
                                   actor_id=admin.admin_id)
        token, exp = self.tokens.issue_admin(admin.admin_id, now=now)
        return AdminToken(token=token, expires_at=exp)

    # --- shared ---------------------------------------------------------------------------

    async def _check_lockout(self, conn: asyncpg.Connection, attempt: Attempt, event: str,
                             now: float, *, subject_kind: str = "user",
                             subject_id: str | None = None) -> None:
        """Refuse an attempt while its account, pair or address is locked, audited against the
        account when it exists (``subject_id``)."""
        try:
            await self.throttle.check(conn, attempt, now=now)
        except LimitError:
            await audit.append(conn, event, subject_kind=subject_kind if subject_id else None,
                               subject_id=subject_id, outcome="denied",
                               details={"reason": ErrorCode.ACCOUNT_LOCKED.value})
            raise

    async def _failure(self, conn: asyncpg.Connection, attempt: Attempt, event: str,
                       subject_id: str | None, now: float, *, subject_kind: str = "user",
                       details: dict[str, str] | None = None,
                       sentence: str = WRONG_LOGIN) -> NoReturn:
        """Charge a wrong password (or unknown login, or a login without the device's
        signature) to the attempt's counters; ``invalid_credentials`` with ``sentence``."""
        async with conn.transaction():
            locked = await self.throttle.failure(conn, attempt, now=now)
            await audit.append(conn, event, subject_kind=subject_kind if subject_id else None,
                               subject_id=subject_id, outcome="denied",
                               details={"reason": ErrorCode.INVALID_CREDENTIALS.value,
                                        **(details or {})})
            if locked:
                await audit.append(conn, "auth.lockout", subject_kind=subject_kind if subject_id
                                   else None, subject_id=subject_id, outcome="denied",
                                   details={"seconds": max(locked.values()), **locked})
        raise Unauthorized(ErrorCode.INVALID_CREDENTIALS, sentence)

    @staticmethod
    async def _deny(conn: asyncpg.Connection, event: str, user_id: str | None,
                    code: ErrorCode, *, detail: str | None = None,
                    details: dict[str, str] | None = None) -> NoReturn:
        await audit.append(conn, event, subject_kind="user" if user_id else None,
                           subject_id=user_id, outcome="denied",
                           details={"reason": code.value, **(details or {})})
        raise _refusal(code, detail)


async def _end_session(conn: asyncpg.Connection, family_id: str, *, now: float) -> int:
    """End a refresh-token family (logout, refresh token reuse as RFC 6749 §10.4 and RFC 9700
    §4.14.2 ask, a single sign-on session past its lifetime or refused passwords) and, when
    the caller's transaction commits, the websockets opened with its access tokens, on every
    relay process (server/hub.py: 4001 ``token_invalid``, what the handshake now answers those
    tokens, as every HTTP request does: server/authn.py). The caller's audit row of the end
    covers the closes. Returns how many of its refresh tokens were still live."""
    revoked = await sessions.revoke_family(conn, family_id, now=now)
    await events.publish_sessions_ended(conn, [family_id])
    return revoked


def _status_refusal(user: users.UserRecord, device_status: str, now: float) -> ErrorCode | None:
    if device_status != "active":
        return ErrorCode.DEVICE_REVOKED
    if user.status == "pending":
        return ErrorCode.INVALID_CREDENTIALS
    return user.standing(now)


def _refusal(code: ErrorCode, detail: str | None = None) -> RelayError:
    if code in {ErrorCode.DEVICE_REVOKED, ErrorCode.USER_SUSPENDED, ErrorCode.LICENCE_EXPIRED,
                ErrorCode.CERTIFICATE_EXPIRED}:
        return Forbidden(code, detail)
    return Unauthorized(code, detail)
