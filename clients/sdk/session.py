"""The device's session with the relay: access and refresh tokens, logging in again, and the
token the websocket presents (docs/PROTOCOL.md §4, §15 "Wipe").

One login for all concurrent callers (clients/sdk/http.py ``SingleFlight``), and a refresh
through the relay client's single flight, so the same refresh token is never presented twice.
"""

from __future__ import annotations

from collections.abc import Callable

import msgspec

from clients.sdk.connection import ConnectionStopped
from clients.sdk.errors import FlowError, RelayRequestError
from clients.sdk.http import RelayHTTP
from clients.sdk.identity import login
from clients.sdk.keystore import DeviceStore
from clients.sdk.singleflight import SingleFlight
from protocol import api
from protocol.errors import CloseCode, ErrorCode

__all__ = ["CUT_OFF", "Session"]

# Refusals that mean the relay has cut this device or user off (not a passing failure).
CUT_OFF = frozenset({ErrorCode.DEVICE_REVOKED.value, ErrorCode.USER_SUSPENDED.value,
                     ErrorCode.TOKEN_INVALID.value, ErrorCode.REFRESH_REUSED.value})


class Session:
    """Tokens of one device. ``relay`` is attached once built (it calls back into this)."""

    def __init__(self, store: DeviceStore, *, password: str | None,
                 clock: Callable[[], float]) -> None:
        self._store, self._password, self._clock = store, password, clock
        self.relay: RelayHTTP | None = None
        self._logging_in: SingleFlight[None] = SingleFlight()
        self._last_tokens: api.TokenPair | None = None  # presented once after a cut-off

    @property
    def can_log_in(self) -> bool:
        return self._password is not None

    def _relay(self) -> RelayHTTP:
        assert self.relay is not None
        return self.relay

    def save_tokens(self, tokens: api.TokenPair) -> None:
        self._store.save(msgspec.structs.replace(self._store.state, session=tokens))

    def usable(self) -> bool:
        tokens = self._relay().tokens
        return tokens is not None and tokens.refresh_expires_at > self._clock() + 60

    async def ensure_login(self) -> None:
        """Log in again (password + device signature) when there is no usable session; one
        login for all concurrent callers."""
        if self.usable():
            return
        if self._password is None:
            raise FlowError("the session has expired: log in again with your password",
                            code=ErrorCode.UNAUTHENTICATED.value)
        await self._logging_in.run(self._login)

    async def login_again(self) -> api.TokenPair:
        """Password and device signature, when the relay ended the session (RelayHTTP calls
        it in place of a refused refresh)."""
        assert self._password is not None
        return await login(self._relay(), self._store.state, self._password)

    async def _login(self) -> None:
        if self.usable():  # a login that finished just before this one started
            return
        assert self._password is not None
        self._relay().tokens = None
        await login(self._relay(), self._store.state, self._password)

    async def access_token(self) -> str:
        """A fresh access token (the websocket connection asks for one on each connect); a
        stale one is refreshed through the relay client's single flight, shared with the HTTP
        calls.

        A revoked device can neither refresh nor log in, but the relay lets it in with its
        last token, expired or not, to hear a wipe order (server/ws.py): that token is
        offered then, and the relay either orders the wipe or closes with device_revoked."""
        try:
            return await self._fresh_access_token()
        except RelayRequestError as exc:
            last = self._store.state.session
            if exc.code != ErrorCode.DEVICE_REVOKED.value or last is None:
                raise
            return last.access_token

    async def _fresh_access_token(self) -> str:
        relay = self._relay()
        await self.ensure_login()
        tokens = relay.tokens
        assert tokens is not None
        if self._clock() >= tokens.expires_at - 60:
            try:
                tokens = await relay.refresh_if_stale(tokens)
            except RelayRequestError as exc:  # the session ended: log in again
                if exc.code == ErrorCode.DEVICE_REVOKED.value:
                    raise  # a login would be refused the same way
                if relay.tokens is tokens:
                    relay.tokens = None
                await self.ensure_login()
                tokens = relay.tokens
        assert tokens is not None
        return tokens.access_token

    async def socket_token(self) -> str:
        """The access token for the websocket. When the relay refuses this device a new one
        (revoked), the last token it was issued is presented all the same, expired or not:
        with the device key's answer to the challenge, that is how a revoked device hears its
        wipe order (docs/PROTOCOL.md §15 "Wipe"); any other revoked device is refused."""
        held = self._relay().tokens or self._last_tokens
        try:
            return await self.access_token()
        except (RelayRequestError, FlowError) as exc:
            if exc.code in CUT_OFF and held is not None and self._last_tokens is None:
                self._last_tokens = held  # presented once
                return held.access_token
            if isinstance(exc, RelayRequestError) and exc.status >= 500:
                raise  # the connection tries again later
            # Logging in again cannot help (revoked, suspended, no password): stop.
            raise ConnectionStopped(CloseCode.DEVICE_REVOKED if exc.code in CUT_OFF else None,
                                    exc.code) from exc
