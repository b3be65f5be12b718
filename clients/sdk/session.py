"""The device's session with the relay: access and refresh tokens, logging in again, and the
token the websocket presents (docs/PROTOCOL.md §4, §15 "Wipe").

One login for all concurrent callers (clients/sdk/http.py ``SingleFlight``), and a refresh
through the relay client's single flight, so the same refresh token is never presented twice.

Once the user has logged out on this device since the program started (``logged_out``,
clients/sdk/profile.py), the session is used no more, even while the relay, out of reach, has
not ended it: no token for the websocket, no login, no refresh saved (which would put the
session back into the device state that ``lightbox logout`` emptied). :class:`LoggedOut` says
why.
"""

from __future__ import annotations

from collections.abc import Callable

import msgspec

from clients.sdk.connection import ConnectionStopped
from clients.sdk.errors import FlowError, LoggedOut, RelayRequestError, SessionEnded
from clients.sdk.http import RelayHTTP
from clients.sdk.identity import log_in_again
from clients.sdk.keystore import DeviceStore
from clients.sdk.singleflight import SingleFlight
from protocol import api
from protocol.errors import CloseCode, ErrorCode

__all__ = ["CUT_OFF", "SESSION_ENDED", "Session"]

# Refusals that mean the session is over: only a new login gives another.
SESSION_ENDED = frozenset({ErrorCode.TOKEN_INVALID.value, ErrorCode.TOKEN_EXPIRED.value,
                           ErrorCode.REFRESH_REUSED.value, ErrorCode.UNAUTHENTICATED.value})
# Refusals that mean the relay has cut this device or user off (not a passing failure).
CUT_OFF = frozenset({ErrorCode.DEVICE_REVOKED.value, ErrorCode.USER_SUSPENDED.value,
                     ErrorCode.TOKEN_INVALID.value, ErrorCode.REFRESH_REUSED.value})


class Session:
    """Tokens of one device. ``relay`` is attached once built (it calls back into this)."""

    def __init__(self, store: DeviceStore, *, password: str | None,
                 clock: Callable[[], float],
                 logged_out: Callable[[], bool] | None = None) -> None:
        self._store, self._password, self._clock = store, password, clock
        self._logged_out = logged_out or (lambda: False)
        self.relay: RelayHTTP | None = None
        self._logging_in: SingleFlight[None] = SingleFlight()
        self._last_tokens: api.TokenPair | None = None  # presented once after a cut-off
        self._refused: api.TokenPair | None = None  # its access token refused by the relay
        self._cut_off: RelayRequestError | FlowError | None = None  # why _last_tokens went

    @property
    def can_log_in(self) -> bool:
        """Whether this program can log in again by itself: it holds the password, and the
        user has one at the relay (not a user who signs in at the identity provider)."""
        return self._password is not None and not self._store.state.sso

    def _relay(self) -> RelayHTTP:
        assert self.relay is not None
        return self.relay

    def check_logged_in(self) -> None:
        """:class:`LoggedOut` once the user logged out on this device (module docstring)."""
        if self._logged_out():
            raise LoggedOut

    def save_tokens(self, tokens: api.TokenPair) -> None:
        self.check_logged_in()
        # Onto the state as saved now: another program of the profile may have saved since.
        self._store.update(lambda st: msgspec.structs.replace(st, session=tokens))

    def usable(self) -> bool:
        tokens = self._relay().tokens
        return tokens is not None and tokens.refresh_expires_at > self._clock() + 60

    async def ensure_login(self) -> None:
        """Log in again (password + device signature) when there is no usable session; one
        login for all concurrent callers. :class:`~clients.sdk.errors.SessionEnded` when this
        program cannot (clients/sdk/identity.py ``log_in_again``)."""
        self.check_logged_in()
        if self.usable():
            return
        await self._logging_in.run(self._login)

    async def login_again(self) -> api.TokenPair:
        """Password and device signature, when the relay ended the session (RelayHTTP calls
        it in place of a refused refresh or access token)."""
        self.check_logged_in()
        return await log_in_again(self._relay(), self._store, self._password,
                                  ended=ErrorCode.TOKEN_INVALID.value)

    async def _login(self) -> None:
        if self.usable():  # a login that finished just before this one started
            return
        self._relay().tokens = None
        await log_in_again(self._relay(), self._store, self._password)

    def token_refused(self, reason: str, access_token: str,
                      while_connected: bool = False) -> ConnectionStopped | None:
        """The relay refused ``access_token`` at the websocket's handshake (4001,
        docs/PROTOCOL.md §3.2): how the connection ends, or None to try once more.

        The last token of a device the relay cut off, presented to hear a wipe order
        (:meth:`socket_token`) and refused: the cut-off is why. Expired (the device's clock
        may be behind): None, and the next :meth:`socket_token` refreshes it. Invalid: the
        relay ended the session (a suspension since lifted, a logout elsewhere), as a device
        request is told (token_invalid): :class:`SessionEnded`, unless this program can log
        in again and it was refused at the handshake (below). The user logged out on this
        device meanwhile (the relay ends the session as ``lightbox logout`` reaches it):
        :class:`LoggedOut`."""
        if self._logged_out():
            return self._stopped(LoggedOut())
        if self._cut_off is not None:
            return self._stopped(self._cut_off)
        tokens = self._relay().tokens
        # Refused at the handshake as ended (a session the relay ended before this program
        # connected: a suspension since lifted, one ended as stolen), to a program that can
        # log in again: the next token is a new login's, as for a refused refresh
        # (clients/sdk/transport.py ``_exchange``; docs/USER_GUIDE.md "Your session renews
        # itself"). Ended while connected (a logout of this session): the connection ends.
        if reason == ErrorCode.TOKEN_EXPIRED.value or (
                reason in SESSION_ENDED and self.can_log_in and not while_connected):
            if tokens is not None and tokens.access_token == access_token:
                self._refused = tokens
            return None
        return self._stopped(SessionEnded(reason, sso=self._store.state.sso))

    def _stopped(self, exc: RelayRequestError | FlowError | SessionEnded | LoggedOut
                 ) -> ConnectionStopped:
        """The end of the connection, its cause what the user is told: logging in again
        cannot help (revoked, suspended), or this program cannot (:class:`SessionEnded`: a
        session the relay ended, no password, or only the user can sign in again), or may not
        (:class:`LoggedOut`)."""
        if isinstance(exc, LoggedOut):
            stopped = ConnectionStopped(None, "logged out")
            stopped.__cause__ = exc
            return stopped
        if not isinstance(exc, SessionEnded) and exc.code in SESSION_ENDED:
            exc = SessionEnded(exc.code, sso=self._store.state.sso)
        revoked = not isinstance(exc, SessionEnded) and exc.code in CUT_OFF
        stopped = ConnectionStopped(CloseCode.DEVICE_REVOKED if revoked else None, exc.code)
        stopped.__cause__ = exc
        return stopped

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
            self._cut_off = exc
            return last.access_token

    async def _fresh_access_token(self) -> str:
        relay = self._relay()
        await self.ensure_login()
        tokens = relay.tokens
        assert tokens is not None
        if self._clock() >= tokens.expires_at - 60 or tokens is self._refused:
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
        wipe order (docs/PROTOCOL.md §15 "Wipe"); any other revoked device is refused. Once
        the user logged out on this device, none: the connection ends (:class:`LoggedOut`)."""
        if self._logged_out():
            raise self._stopped(LoggedOut())
        held = self._relay().tokens or self._last_tokens
        try:
            return await self.access_token()
        except SessionEnded as exc:  # only the user can sign in again: stop
            raise self._stopped(exc) from exc
        except (RelayRequestError, FlowError) as exc:
            if exc.code in CUT_OFF and held is not None and self._last_tokens is None:
                self._last_tokens = held  # presented once
                self._cut_off = exc
                return held.access_token
            if isinstance(exc, RelayRequestError) and exc.status >= 500:
                raise  # the connection tries again later
            raise self._stopped(exc) from exc
