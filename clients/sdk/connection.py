"""A device's durable link to the relay: reconnect with backoff, resend, de-duplicate.

Delivery is at-least-once (the relay redelivers anything not acknowledged), so the application
must see each message exactly once. :class:`Connection`:

* reconnects with exponential backoff and full jitter after any drop, resuming from the relay's
  durable queue (the relay resends every unacknowledged delivery);
* keeps every send in an outbox until the relay answers ``accepted`` (durable) or refuses it
  with a code that will not change on retry; after a reconnect it resends the same sealed bytes,
  which the relay recognises (idempotent on sender device + message id);
* hands each delivery to the application once (de-duplicated on sender device + message id,
  through a caller-supplied store that a real client persists), and acknowledges it only after
  the application's handler returned, i.e. after the message is stored on the device.

A connection the relay closed because a newer one of the same device opened (4003
``SESSION_REPLACED``: another program on the device's profile, say ``lightbox send`` beside
``lightbox watch`` or the desktop) is no loss and no reason to hurry back: the relay keeps one
connection per device (docs/PROTOCOL.md §3.5), so taking it back at once would cut the other
program off mid-command, and it would take it back in turn. It waits ``replaced_wait``
seconds first (:data:`REPLACED_WAIT`), long enough for a short command to finish, doubled
for each replacement soon after it came back, up to :data:`REPLACED_WAIT_MAX` (two
long-running programs on one device take turns, ever more slowly, rather than fight). A
program the user waits on for a moment passes ``replaced_wait=0`` and reconnects as after a
drop: it is the one the long-running program makes way for.

An access token the relay refuses at the handshake (4001 with token_invalid: a session the
relay ended, a suspension since lifted or a logout elsewhere; or token_expired) is never
offered again: ``token_refused`` is told, and answers how the connection ends (a
:class:`ConnectionStopped` whose cause is what the application tells the user) or None to try
once more with a renewed token (a program that can log in again does, clients/sdk/session.py);
without it, or refused again, the connection ends at once. An open connection the relay closes
with 4001 (its session ended meanwhile: a logout) is told the same way at once, as ended,
without the reconnect whose handshake would only be refused.

Close codes that mean "stop" (revoked device, suspended user) end the connection for good,
and so does an address that is not a websocket URL, and a handler that found the device's vault
locked (:data:`VAULT_LOCKED`: nothing can be stored until the user unlocks it, and what was not
acknowledged stays queued at the relay; the application unlocks and starts again). Anything
else that goes wrong (a drop, a relay that is restarting, a token provider or a message
handler that raises, the device's disk full) is a failed attempt: logged, backed off and tried
again, with ``connected`` cleared meanwhile. A connection never stops in silence while the
application believes it is there; a delivery whose handler raised was not acknowledged, so the
relay delivers it again.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import websockets

from clients.sdk.errors import RelayRequestError, RelayUnavailable, SDKError
from clients.sdk.socket import RelaySocket, SendRefused, SocketClosed, is_retryable
from clients.sdk.vaultrows import VaultLocked
from protocol.errors import CloseCode, ErrorCode, ProtocolError
from protocol.frames import Accepted, Deliver, Frame, QueueEmpty
from protocol.model import SealedMessage

__all__ = ["REPLACED_WAIT", "REPLACED_WAIT_MAX", "VAULT_LOCKED", "Connection",
           "ConnectionStopped", "DedupeStore", "DeferDelivery", "MemoryDedupeStore"]

log = logging.getLogger("lightbox.sdk")

# Close codes after which reconnecting cannot help.
FINAL_CLOSE_CODES = frozenset({CloseCode.DEVICE_REVOKED, CloseCode.USER_SUSPENDED,
                               CloseCode.UNSUPPORTED_VERSION})

# Reasons of a handshake refused (4001) because the relay ended the token's session: the same
# token can never succeed (module docstring).
SESSION_REFUSED = frozenset({ErrorCode.TOKEN_INVALID.value, ErrorCode.TOKEN_EXPIRED.value})

# The reason of a connection stopped because the device's vault is locked.
VAULT_LOCKED = "the vault is locked"
# The reason of a connection its program stopped (Connection.stop).
STOPPED = "stopped"

# Seconds a connection replaced by a newer one of its device (4003) waits before connecting
# again: a ``lightbox`` command (send, inbox...) is done in a second or two; doubled when it is
# replaced again soon after it came back, up to the maximum (see the module's docstring).
STOP_GRACE = 2.0
"""Seconds ``stop()`` gives the relay to answer its close, and the handlers to take what
arrived before that answer, before it cancels what is left (docs/PROTOCOL.md §3.5 "Deliver")."""
REPLACED_WAIT = 5.0
REPLACED_WAIT_MAX = 60.0


class DeferDelivery(Exception):
    """Raised by a message handler that could not store a delivery now (for example the
    sender's certificates could not be fetched): it is not acknowledged, the socket is
    recycled, and the relay delivers it again."""


class ConnectionStopped(RuntimeError):
    """The relay ended this device's access (revoked, suspended) or the connection was stopped."""

    def __init__(self, code: int | None, reason: str = "") -> None:
        super().__init__(f"connection stopped ({code}: {reason})")
        self.code, self.reason = code, reason

    @property
    def stopped_here(self) -> bool:
        """Stopped by the program itself (:meth:`Connection.stop`, its vault locked), not
        ended by the relay or by a refusal that no later attempt can change."""
        return self.code is None and self.reason in {STOPPED, VAULT_LOCKED}


def _stopped_by(exc: SDKError) -> ConnectionStopped:
    """The end of a connection for which no token can be had; ``exc`` is its cause, what the
    application tells the user."""
    stopped = ConnectionStopped(None, str(getattr(exc, "code", "") or exc))
    stopped.__cause__ = exc
    return stopped


class DedupeStore(Protocol):
    def seen(self, sender_device_id: str, message_id: str) -> bool: ...

    def add(self, sender_device_id: str, message_id: str) -> None: ...


class MemoryDedupeStore:
    def __init__(self) -> None:
        self._ids: set[tuple[str, str]] = set()

    def seen(self, sender_device_id: str, message_id: str) -> bool:
        return (sender_device_id, message_id) in self._ids

    def add(self, sender_device_id: str, message_id: str) -> None:
        self._ids.add((sender_device_id, message_id))


@dataclasses.dataclass
class _Outgoing:
    message: SealedMessage
    future: asyncio.Future[Accepted]


Handler = Callable[[Deliver], Awaitable[None]]
EventHandler = Callable[[Frame], Awaitable[None]]


class Connection:
    def __init__(
        self, url: str, *, device_id: str, access_token: Callable[[], Awaitable[str]],
        sign: Callable[[bytes], bytes], on_message: Handler,
        on_event: EventHandler | None = None, dedupe: DedupeStore | None = None,
        backoff_base: float = 0.2, backoff_max: float = 30.0, send_timeout: float = 30.0,
        replaced_wait: float = REPLACED_WAIT,
        token_refused: Callable[[str, str, bool], ConnectionStopped | None] | None = None,
    ) -> None:
        self.url, self.device_id = url, device_id
        self._token, self._sign = access_token, sign
        self._token_refused = token_refused
        self._on_message, self._on_event = on_message, on_event
        self.dedupe = dedupe or MemoryDedupeStore()
        self.backoff_base, self.backoff_max, self.send_timeout = (
            backoff_base, backoff_max, send_timeout)
        self.replaced_wait = replaced_wait
        self._replaced = 0  # replacements in a row
        self._made_way = 0.0  # seconds of the last wait for a connection that replaced this one
        self._outbox: list[_Outgoing] = []
        self._outbox_changed = asyncio.Event()
        self._socket: RelaySocket | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing = False  # stop() closed the socket: the loop ends with it
        self.connected = asyncio.Event()
        # Set when a try to connect failed, cleared once connected: a program that made way for
        # another of its device (4003) learns that the relay is out of reach as it comes back.
        self.unreachable = asyncio.Event()
        self.queue_empty = asyncio.Event()
        self.stopped: asyncio.Future[ConnectionStopped] = (
            asyncio.get_running_loop().create_future())
        self.reconnects = 0
        # How the last connection ended: the relay's close code (None without one) and reason.
        # Set before ``connected`` is cleared, so whoever sees it cleared reads why.
        self.last_close: tuple[int | None, str] = (None, "")

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"connection-{self.device_id[:8]}")

    async def stop(self) -> None:
        """End the connection for good. Connected, it closes first and lets the loop handle
        what the relay wrote before it answered the close, for at most ``STOP_GRACE`` seconds:
        the relay deletes a notice (a receipt, an escalation step, ``not_received``...) once it
        has written it, so one written as the program ends must still be handled, not dropped
        with the loop (docs/PROTOCOL.md §3.5 "Deliver")."""
        task, sock = self._task, self._socket
        if (task is not None and not task.done() and sock is not None
                and task is not asyncio.current_task()):
            self._closing = True
            with contextlib.suppress(Exception):
                async with asyncio.timeout(STOP_GRACE):
                    await sock.close()
                    await asyncio.shield(task)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._socket is not None:
            await self._socket.close()
        self._finish(ConnectionStopped(None, STOPPED))

    async def wait_or_stopped(self, event: asyncio.Event) -> bool:
        """Wait until ``event`` (``connected``, ``queue_empty``) is set or the connection
        stopped, whichever comes first: the relay closing a revoked device for good comes
        between two attempts, so a wait for "connected again" alone could last for ever.
        True when the event was set and the connection has not stopped."""
        waiting: asyncio.Future[Any] = asyncio.ensure_future(event.wait())
        either: set[asyncio.Future[Any]] = {waiting, self.stopped}
        try:
            await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiting.cancel()
        return not self.stopped.done()

    def _finish(self, exc: ConnectionStopped) -> None:
        if not self.stopped.done():
            self.stopped.set_result(exc)
        for item in self._outbox:
            if not item.future.done():
                item.future.set_exception(exc)
        self._outbox.clear()

    async def send_frame(self, frame: Frame) -> None:
        """Send a fire-and-forget frame (receipt, expiry confirmation) on the current socket;
        SocketClosed when not connected (the caller keeps it and tries again)."""
        sock = self._socket
        if sock is None:
            raise SocketClosed(None, "not connected")
        await sock.send_frame(frame)

    async def send(self, message: SealedMessage) -> Accepted:
        """Returns once the relay has durably accepted the message, across reconnects."""
        if self.stopped.done():
            raise self.stopped.result()
        item = _Outgoing(message, asyncio.get_running_loop().create_future())
        self._outbox.append(item)
        self._outbox_changed.set()
        return await item.future

    # -- the loop ----------------------------------------------------------------------------

    async def _run(self) -> None:
        attempt = 0
        failing = 0  # connections in a row that ended with a handler's error
        asked_for_wipe = False
        renewed = False  # the session renewed since a token was refused (SESSION_REFUSED)
        while True:
            try:
                token = await self._token()
            except ConnectionStopped as exc:  # the token provider knows it is over
                self._finish(exc)
                return
            except (RelayUnavailable, RelayRequestError) as exc:
                if isinstance(exc, RelayRequestError) and exc.status < 500:
                    self._finish(_stopped_by(exc))
                    return
                # A failed refresh (relay unreachable, or failing for now): try again later.
                attempt += 1
                await self._try_again(attempt)
                continue
            except SDKError as exc:  # no token to be had (session ended, device refused...)
                self._finish(_stopped_by(exc))
                return
            except VaultLocked:  # locked itself while waiting for the relay: stopped, as below
                log.info("the vault is locked: connection stopped")
                self._finish(ConnectionStopped(None, VAULT_LOCKED))
                return
            except Exception as exc:  # the provider failed otherwise: not a reason to give up
                log.warning("access token failed; trying again",
                            extra={"error_type": type(exc).__name__})
                attempt += 1
                await self._try_again(attempt)
                continue
            try:
                sock = await RelaySocket.connect(
                    self.url, access_token=token, device_id=self.device_id, sign=self._sign)
            except SocketClosed as exc:
                if exc.code in FINAL_CLOSE_CODES:
                    self._finish(ConnectionStopped(exc.code, exc.reason))
                    return
                if exc.code == CloseCode.AUTH_FAILED and exc.reason in SESSION_REFUSED:
                    ended = (self._token_refused(exc.reason, token, False)
                             if self._token_refused is not None else None)
                    if ended is None and (self._token_refused is None or renewed):
                        ended = ConnectionStopped(exc.code, exc.reason)
                    if ended is not None:
                        self._finish(ended)
                        return
                    renewed = True  # the next token is a renewed one
                    continue
                if exc.code == CloseCode.SESSION_REPLACED and self.replaced_wait > 0:
                    # A newer connection of this device won as this one authenticated.
                    self.last_close = (exc.code, exc.reason)
                    await self._make_way(lived=0.0)
                    continue
                attempt += 1
                await self._try_again(attempt)
                continue
            except websockets.InvalidURI:  # configuration: no later attempt can differ
                self._finish(ConnectionStopped(None, "the relay's address is not a websocket "
                                               "URL (ws:// or wss://)"))
                return
            except Exception as exc:  # another attempt, never a silent end
                # Refused or timed out is what a relay out of reach does; anything else is
                # worth a warning.
                expected = isinstance(exc, OSError | TimeoutError | ConnectionError)
                log.log(logging.DEBUG if expected else logging.WARNING,
                        "connect failed; trying again", extra={"error_type": type(exc).__name__})
                attempt += 1
                await self._try_again(attempt)
                continue
            attempt = 0
            renewed = False
            self._socket = sock
            self.unreachable.clear()
            self.connected.set()
            opened_at = asyncio.get_running_loop().time()
            code: int | None = None
            reason = ""
            try:
                code, reason = await self._serve(sock)
            except VaultLocked:
                # The vault locked itself (inactivity) while a frame was handled: no later
                # attempt can store anything until the user unlocks it. Stopped, not retried;
                # the frame was not acknowledged, so the relay keeps it for the next start.
                log.info("the vault is locked: connection stopped")
                self._finish(ConnectionStopped(None, VAULT_LOCKED))
                return
            except Exception as exc:
                # A handler raised (the device's disk full, a bug): what it was handling was
                # not acknowledged, so it comes again on the next connection. Backed off by
                # the failures in a row, so that one that persists does not hammer the relay.
                failing += 1
                log.warning("connection failed while handling a frame; reconnecting",
                            extra={"error_type": type(exc).__name__, "failures": failing})
                code, reason = None, "client error"
            else:
                failing = 0
            finally:
                self.last_close = (code, reason)
                self.connected.clear()
                self.queue_empty.clear()
                self._socket = None
            if self._closing:  # stop(): what arrived before the relay's close was handled
                self._finish(ConnectionStopped(None, STOPPED))
                return
            if code == CloseCode.DEVICE_REVOKED and not asked_for_wipe:
                # Revoked while connected: connect once more, because a device revoked with
                # wipe is let in only to hear its wipe order (docs/PROTOCOL.md §15 "Wipe"); any
                # other revoked device is refused at once and the connection ends.
                asked_for_wipe = True
                continue
            if code in FINAL_CLOSE_CODES:
                self._finish(ConnectionStopped(code, reason))
                return
            if code == CloseCode.AUTH_FAILED and reason in SESSION_REFUSED:
                # The relay ended this token's session while connected (a logout, the session
                # revoked: docs/PROTOCOL.md §3.5 "A session that ends closes its connections"),
                # and a reconnect's handshake would be refused with the same code and reason:
                # the connection ends now, as it would then, told the same way.
                ended = (self._token_refused(reason, token, True)
                         if self._token_refused is not None else None)
                if ended is not None or self._token_refused is None:
                    self._finish(ended or ConnectionStopped(code, reason))
                    return
            self.reconnects += 1
            if code == CloseCode.SESSION_REPLACED and self.replaced_wait > 0:
                await self._make_way(lived=asyncio.get_running_loop().time() - opened_at)
                continue
            self._replaced = 0
            await self._backoff(1 + failing)

    async def _try_again(self, attempt: int) -> None:
        """A try to connect failed (the relay out of reach, or failing for now): said
        (``unreachable``), then backed off."""
        self.unreachable.set()
        await self._backoff(attempt)

    async def _backoff(self, attempt: int) -> None:
        cap = min(self.backoff_max, self.backoff_base * (2 ** min(attempt, 16)))
        await asyncio.sleep(random.uniform(0, cap))  # full jitter

    async def _make_way(self, *, lived: float) -> None:
        """Replaced by a newer connection of this device (4003): leave the relay to it for
        ``replaced_wait`` seconds, doubled for each replacement in a row, with a little jitter
        so that two programs do not come back in step. Replaced again soon after coming back
        (within twice the wait just made) is "in a row": the other program is still at work,
        or runs for long too. A connection that lasted longer starts the count again: the
        user ran another command."""
        cap = max(self.replaced_wait, REPLACED_WAIT_MAX)
        in_a_row = self._replaced > 0 and lived < 2 * self._made_way
        self._replaced = self._replaced + 1 if in_a_row else 1
        wait = min(cap, self.replaced_wait * 2 ** min(self._replaced - 1, 16))
        log.info("replaced by a newer connection of this device; connecting again in %.0f s",
                 wait, extra={"replacements": self._replaced})
        self._made_way = wait * random.uniform(1.0, 1.2)
        await asyncio.sleep(self._made_way)

    async def _serve(self, sock: RelaySocket) -> tuple[int | None, str]:
        sender = asyncio.create_task(self._drain_outbox(sock))
        try:
            while True:
                get: asyncio.Future[object] = asyncio.ensure_future(sock.events.get())
                closed: asyncio.Future[object] = sock.closed  # type: ignore[assignment]
                try:
                    done, _ = await asyncio.wait({get, closed},
                                                 return_when=asyncio.FIRST_COMPLETED)
                except asyncio.CancelledError:
                    get.cancel()  # stopped: leave no pending task behind
                    raise
                if get in done:
                    frame = get.result()
                    assert not isinstance(frame, tuple)
                    await self._handle(sock, frame)  # type: ignore[arg-type]
                    continue
                get.cancel()
                while not sock.events.empty():  # what arrived before the close
                    await self._handle(sock, sock.events.get_nowait())
                return sock.closed.result()
        except SocketClosed as exc:
            return exc.code, exc.reason
        finally:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await sender
            await sock.close()

    async def _handle(self, sock: RelaySocket, frame: Frame) -> None:
        if isinstance(frame, Deliver):
            h = frame.message.header
            if not self.dedupe.seen(h.sender_device_id, h.message_id):
                try:
                    await self._on_message(frame)  # stored on the device before we acknowledge
                except DeferDelivery:
                    await sock.close(1011)  # not acknowledged: redelivered on the next connection
                    raise SocketClosed(1011, "delivery deferred") from None
                self.dedupe.add(h.sender_device_id, h.message_id)
            try:
                await sock.ack([frame.delivery_id])
            except SocketClosed:
                if not self._closing:
                    raise
                # Stored, not acknowledged: the relay sends it again next time, and it is
                # recognised as stored (clients/sdk/receiving.py); what came after it still
                # gets handled.
        elif isinstance(frame, QueueEmpty):
            self.queue_empty.set()
        elif self._on_event is not None:
            await self._on_event(frame)

    async def _drain_outbox(self, sock: RelaySocket) -> None:
        """Send outbox items in order, each until accepted or finally refused."""
        while True:
            pending = [i for i in self._outbox if not i.future.done()]
            if not pending:
                self._outbox_changed.clear()
                await self._outbox_changed.wait()
                continue
            item = pending[0]
            try:
                acc = await sock.send(item.message, timeout=self.send_timeout)
            except SendRefused as refused:
                if is_retryable(refused.code):
                    await asyncio.sleep(refused.retry_after or 1.0)
                    continue
                if not item.future.done():  # the sender may have stopped waiting
                    item.future.set_exception(refused)
            except TimeoutError:
                continue  # unknown outcome: resend the same bytes (idempotent)
            except ProtocolError as exc:
                # Refused here, before it left: a frame over the relay's maximum (announced
                # in ``ready``, docs/PROTOCOL.md §3) can never go as it is. Its sender learns
                # now, and the messages behind it are not held up for good.
                if is_retryable(exc.code.value):
                    await asyncio.sleep(1.0)
                    continue
                log.warning("send refused before it left",
                            extra={"error_type": type(exc).__name__, "code": exc.code.value})
                if not item.future.done():
                    item.future.set_exception(SendRefused(exc.code.value, str(exc)))
            else:
                if not item.future.done():
                    item.future.set_result(acc)
            self._outbox.remove(item)
