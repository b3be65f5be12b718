"""The gateway's connection to the relay: deliveries are filed beside the read loop, so the
relay's answer to a filing statement reaches the gateway while the filing waits for it; each
delivery is acknowledged only once its filing finished.

A filing interrupted by a failure that may pass (the relay out of reach for a moment, a refused
request, a lost connection) is tried again on the same connection with backoff, at once, not
only when the relay, tired of waiting for its acknowledgement (``LIGHTBOX_WS_ACK_TIMEOUT``),
closes the connection as too slow (4009) and delivers it again. One interrupted because the
relay ended the gateway's session, or refused its login, stops the gateway with one line
saying what to do: no attempt could file anything until IT acts (the same refusal ends the
connection at its next connect, clients/sdk/connection.py), and a wrong password tried again
and again would lock the account (docs/SECURITY.md "Login"). Each line says in words what
failed, with the relay's error code, never an exception's text (which may quote the record
data) nor its class or source line; a failure nobody foresaw (a bug) writes its traceback to a
private file (clients/sdk/failures.py ``report_crash``) and the line says where.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from clients.gateway.errors import FilingFailed
from clients.sdk.connection import Connection, ConnectionStopped
from clients.sdk.errors import (
    FlowError,
    RelayRequestError,
    RelayResponseError,
    RelayUnavailable,
    SessionEnded,
)
from clients.sdk.failures import report_crash
from clients.sdk.keystore import lightbox_home
from clients.sdk.session import SESSION_ENDED
from clients.sdk.socket import RelaySocket, SendRefused, SocketClosed
from protocol.errors import ErrorCode, ProtocolError
from protocol.frames import Deliver, Frame

__all__ = [
    "STOPS",
    "GatewayConnection",
    "what_failed",
]

log = logging.getLogger("lightbox.gateway")

# What IT does when the relay ended the gateway's session or refused its login
# (docs/USER_GUIDE.md, "The record gateway").
STOPS = ("the gateway stops (the relay keeps the message): start it again with its password "
         "(LIGHTBOX_PASSWORD), and if the relay refuses that, enrol it afresh "
         "(docs/USER_GUIDE.md, \"The record gateway\" §4)")

# Refused logins: the password (or a password at all) is not accepted.
_LOGIN_REFUSED = frozenset({ErrorCode.INVALID_CREDENTIALS.value, ErrorCode.SSO_REQUIRED.value})


def _no_session(exc: BaseException) -> str | None:
    """Why the gateway has no session and cannot get one by itself, or None."""
    if isinstance(exc, SessionEnded):
        return f"the relay ended the gateway's session ({exc.code})"
    if isinstance(exc, RelayRequestError):
        if exc.code in SESSION_ENDED:
            return f"the relay ended the gateway's session ({exc.code})"
        if exc.code in _LOGIN_REFUSED:
            return f"the relay refused the gateway's login ({exc.code})"
    return None


def what_failed(exc: BaseException, *, reported: set[str] | None = None,
                key: str = "") -> str:
    """What failed, in words, for the log: the relay's code where it gave one, never the
    exception's text. A failure nobody foresaw has its traceback written to a private file
    (once per ``key`` in ``reported``) and the words say where."""
    if isinstance(exc, RelayUnavailable):
        return f"the relay could not be reached ({exc.reason})"
    if isinstance(exc, RelayRequestError):
        return f"the relay refused a request of the gateway ({exc.code})"
    if isinstance(exc, RelayResponseError):
        return "the relay's answer to a request of the gateway could not be read"
    if isinstance(exc, SendRefused):
        return f"the relay refused a message of the gateway ({exc.code})"
    if isinstance(exc, ConnectionError | ConnectionStopped):
        return "the connection to the relay was lost"
    if isinstance(exc, TimeoutError):
        return "the relay did not answer in time"
    if isinstance(exc, FlowError):
        return f"a certificate or list from the relay did not verify ({exc.code})"
    if isinstance(exc, ProtocolError):
        return f"a certificate or list from the relay did not verify ({exc.code.value})"
    if isinstance(exc, FilingFailed):
        return f"the gateway's message to the thread could not be sent ({exc.code})"
    if reported is not None and key in reported:
        return "an unexpected problem in the gateway (its details were written before)"
    path = report_crash("lightbox-gateway", exc, lightbox_home())
    if reported is not None:
        reported.add(key)
    return f"an unexpected problem in the gateway; the details are in {path}"


class GatewayConnection(Connection):
    """A Connection that files deliveries beside the read loop rather than inside it, so the
    relay's answer to a filing statement (``filed_notice`` or ``error``) reaches the gateway
    while the filing waits for it. Each delivery is still acknowledged only after its filing
    finished (filed, or failed for good); one that is interrupted is tried again, or the
    gateway stops (the module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Deliveries being filed; each with the same message delivered again meanwhile (on the
        # next connection, the relay having closed the first as too slow): answered when the
        # filing ends.
        self._busy: dict[tuple[str, str], list[tuple[RelaySocket, Deliver]]] = {}
        self._jobs: set[asyncio.Task[None]] = set()
        self._reported: set[str] = set()  # messages whose unexpected failure is on file
        self._ending: asyncio.Task[None] | None = None

    async def _handle(self, sock: RelaySocket, frame: Frame) -> None:
        if not isinstance(frame, Deliver):
            await super()._handle(sock, frame)
            return
        h = frame.message.header
        key = (h.sender_device_id, h.message_id)
        if self.dedupe.seen(*key):
            await sock.ack([frame.delivery_id])
            return
        if key in self._busy:
            self._busy[key].append((sock, frame))  # delivered again while being filed
            return
        self._busy[key] = []
        job = asyncio.create_task(self._file(sock, frame, key))
        self._jobs.add(job)
        job.add_done_callback(self._jobs.discard)

    async def _file(self, sock: RelaySocket, frame: Deliver, key: tuple[str, str]) -> None:
        """File one delivery, trying again while the connection it came on lasts (the module
        docstring); acknowledged once filed."""
        attempt = 0
        done = False
        try:
            while True:
                try:
                    await self._on_message(frame)
                    break
                except Exception as exc:  # not acknowledged: the relay keeps it
                    if self._gave_up(exc, key[1]):
                        return
                    attempt += 1
                    delay = min(self.backoff_max, self.backoff_base * 2 ** min(attempt, 16))
                    if not await self._again(sock, exc, key[1], delay):
                        return
            self.dedupe.add(*key)
            done = True
        finally:
            again = self._busy.pop(key, [])
            if done:  # this delivery, and the same message delivered again meanwhile
                for on, delivered in [(sock, frame), *again]:
                    with contextlib.suppress(SocketClosed, ConnectionError):
                        await on.ack([delivered.delivery_id])
            elif again and not self._closing and not self.stopped.done():
                # Given up on its connection, which closed: the delivery that came again on
                # the next is filed now, rather than after the relay's next too_slow close.
                on, delivered = again[-1]
                if not on.closed.done():
                    await self._handle(on, delivered)

    def _gave_up(self, exc: Exception, message_id: str) -> bool:
        """Stop the gateway when the relay ended its session or refused its login: one line
        says what to do (module docstring)."""
        why = _no_session(exc)
        if why is None:
            return False
        log.error("filing of message %s interrupted: %s; %s", message_id, why, STOPS,
                  extra={"message_id": message_id, "code": getattr(exc, "code", None)})
        stopped = ConnectionStopped(None, str(getattr(exc, "code", "")))
        stopped.__cause__ = exc  # what the program says as it ends (clients/sdk/failures.py)
        self._finish(stopped)
        if self._ending is None:
            self._ending = asyncio.create_task(self.stop(), name="gateway-stop")
        return True

    async def _again(self, sock: RelaySocket, exc: Exception, message_id: str,
                     delay: float) -> bool:
        """Say what failed, wait ``delay`` seconds and answer True to try again; False when
        the connection closed (then or meanwhile): the relay delivers it again on the next."""
        what = what_failed(exc, reported=self._reported, key=message_id)
        extra = {"message_id": message_id, "code": getattr(exc, "code", None)}
        if sock.closed.done():
            log.warning("filing of message %s interrupted: %s; the relay will deliver it again",
                        message_id, what, extra=extra)
            return False
        log.warning("filing of message %s interrupted: %s; trying again in %.1f s",
                    message_id, what, delay, extra=extra)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(sock.closed), delay)
        return not sock.closed.done()

    async def stop(self) -> None:
        for job in list(self._jobs):
            job.cancel()
        await super().stop()
