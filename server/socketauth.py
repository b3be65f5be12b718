"""Who is on a websocket: the handshake's checks (docs/PROTOCOL.md §3.2).

A device answers the relay's challenge with ``auth`` (protocol/session.py): its access token,
the device it claims to be, and its Ed25519 signature over the challenge nonce bound to that
token. :class:`DeviceSocketAuthenticator` accepts it when the token is valid and names that
device, the device and its user are still allowed on (revoked, suspended, licence; the same
check as every HTTP request, server/authn.py), and the signature verifies under the device's
key (``challenge_failed``). An access token whose refresh-token family ended (logout,
refresh token reuse, single sign-on lifetime) is ``token_invalid``, as on every HTTP request,
although it has not expired. A device revoked with wipe that proves it holds its key is let in
only to hear its order (server/wipes.py), even with an expired token. Time comes from the
injected clock.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Protocol

from protocol.errors import ErrorCode, VerificationError
from protocol.session import AuthRequested, verify_challenge
from server.authn import Authenticator
from server.db import Database
from server.errors import RelayError
from server.store import users
from server.tokens import TokenService
from server.wipes import WipeService

__all__ = ["DeviceSocketAuthenticator", "SocketAuthenticator", "SocketPrincipal"]


@dataclasses.dataclass(frozen=True)
class SocketPrincipal:
    """An authenticated device on a websocket."""

    user_id: str
    device_id: str
    org_id: str
    signing_key: bytes
    licence_expires_at: int | None = None  # the socket closes (4005) when the licence ends
    # The refresh-token family of the access token (``sid``): the socket closes (4001,
    # token_invalid) when it ends (server/hub.py). The session, not who is connected.
    family_id: str = dataclasses.field(default="", compare=False)


class SocketAuthenticator(Protocol):
    async def authenticate(self, request: AuthRequested) -> SocketPrincipal:
        """Verify the access token and the challenge signature; raise RelayError (token_*,
        challenge_failed, device_revoked, user_suspended, licence_expired) or WipeRequired
        (server/wipes.py) otherwise."""
        ...


class DeviceSocketAuthenticator:
    """The handshake's checks: a valid access token naming the device in ``hello``, the current
    state of device and user (revoked, suspended, licence), and the device's Ed25519 signature
    over this connection's challenge (``challenge_failed``)."""

    def __init__(self, *, db: Database, tokens: TokenService, authenticator: Authenticator,
                 clock: Callable[[], float] = time.time) -> None:
        self.db, self.tokens, self.authenticator, self.clock = db, tokens, authenticator, clock

    async def authenticate(self, request: AuthRequested) -> SocketPrincipal:
        now = self.clock()
        try:
            claims = self.tokens.verify_access(request.hello.access_token, now=now)
        except RelayError as err:
            if err.code is ErrorCode.TOKEN_EXPIRED:
                # A device revoked with wipe can never log in again (its sessions were
                # revoked), so its last token will have expired when a lost phone comes back.
                # A genuine expired token naming it, with this challenge signed by the device's
                # own key, is enough to hear the wipe order: nothing else is let through.
                stale = self.tokens.verify_access(request.hello.access_token, now=now,
                                                  allow_expired=True)
                if stale.device_id == request.hello.device_id:
                    async with self.db.pool.acquire() as conn:
                        await WipeService.pending(conn, stale.device_id, request)
            raise
        if claims.device_id != request.hello.device_id:
            raise RelayError(ErrorCode.TOKEN_DEVICE_MISMATCH,
                             "the token was issued to another device")
        async with self.db.pool.acquire() as conn:
            try:
                principal = await self.authenticator.check_device(conn, claims, now=now)
            except RelayError as err:
                if err.code is ErrorCode.DEVICE_REVOKED:
                    await WipeService.pending(conn, claims.device_id, request)
                raise
            user = await users.get_user(conn, principal.user_id)
        try:
            verify_challenge(principal.signing_key, request.nonce, request.hello.access_token,
                             request.signature)
        except VerificationError as exc:
            raise RelayError(ErrorCode.CHALLENGE_FAILED,
                             "the challenge was not signed by this device") from exc
        return SocketPrincipal(user_id=principal.user_id, device_id=principal.device_id,
                               org_id=principal.org_id, signing_key=principal.signing_key,
                               licence_expires_at=user.licence_expires_at if user else None,
                               family_id=principal.family_id)
