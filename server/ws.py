"""The websocket endpoint ``/v1/ws``: one authenticated device per connection.

The I/O shell around :class:`protocol.session.ServerSession` (sans-I/O): it feeds binary
websocket messages in, writes the frames the session produces, and closes with the code the
session sets. After the handshake (access token + the device's signature over a fresh
challenge), three things run per connection:

* the reader: frames from the device (``send``, ``ack``, ``receipt``, ``ping``...), read
  without a timer per frame; heartbeats, the idle timeout, the licence, the absolute session
  lifetime and the acknowledgement timeout are checked by a tick every
  ``min(heartbeat, heartbeat_timeout) / 2`` seconds (one timer per connection, no task);
* the pump: durable notices, then deliveries in queue order, at most ``send_window`` of them
  unacknowledged (flow control: a device that stops acknowledging stops receiving, and one
  that stops reading is closed with 4009 and later resumes from its durable queue). A
  delivery this process has just stored is written without reading it back when the pump is
  idle and every other delivery the device had queued was already written on this connection
  (:meth:`_Connection.offer`, docs/ARCHITECTURE.md §3 "Local delivery");
* the answers to sends and acks: callbacks on the group-commit futures (:mod:`server.sends`,
  :mod:`server.acks`) queue ``accepted`` (or the error) when the batch commits, and one
  flush per connection and event-loop turn writes them (no task per frame). Receipts, filing
  statements and expiry confirmations are handled in a task each, which the connection's end
  does not cancel: a frame the relay has read is handled to its end (up to
  ``HANDLING_GRACE``), and only its answer is lost when the device has gone.

A device that asked for the ``lightbox.bundle`` subprotocol may send ``bundle`` frames, and
gets what one flush writes joined into them (docs/PROTOCOL.md §3.6): its pump queues its frames
on the session, already encoded, instead of writing each at once, and the session packs and
unpacks bundles, so nothing here handles one.

Memory per connection is bounded by the window, never by the queue length. The decisions are
made elsewhere: who the device is (server/socketauth.py), its deadlines (server/liveness.py),
its send budget (server/sendrate.py), a revoked device's wipe order (server/wipes.py), and the
services each frame goes to (sends, acks, receipts, expiry).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import logging
import os
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from starlette.websockets import WebSocket, WebSocketDisconnect

from protocol.errors import CloseCode, ErrorCode
from protocol.frames import (
    BUNDLE_SUBPROTOCOL,
    Accepted,
    Ack,
    Error,
    ExpiryConfirm,
    Filing,
    Frame,
    KeysLow,
    Limits,
    Ping,
    Pong,
    QueueEmpty,
    Receipt,
    Send,
    WipeConfirm,
    encode_deliver,
)
from protocol.model import Priority
from protocol.session import AuthRequested, ErrorEvent, Event, FrameReceived, ServerSession
from server import events
from server.acks import AckPipeline
from server.db import Database
from server.errors import RelayError
from server.expiry import FilingService
from server.hub import Hub
from server.liveness import PING, Close, Liveness
from server.metrics import Metrics
from server.reads import DeliveryReader
from server.sendrate import SendRate
from server.sends import Sender, SendPipeline
from server.socketauth import SocketAuthenticator, SocketPrincipal
from server.store import batches, messages, sessions
from server.wipes import WipeRequired, WipeService

__all__ = ["PrekeyWatch", "ReceiptHook", "SocketConfig", "WebSocketRelay"]

log = logging.getLogger("lightbox.ws")

# How many acknowledged delivery ids a connection still recognises (a duplicate ack is then
# quiet, and a delivery handed over after a read wrote and acknowledged it is not written
# again): a connection's memory is bounded by this and its send window, not its lifetime.
ACKED_KEPT = 1024
# How long a connection that ended waits for the frames it had read to be handled (receipts,
# filing statements, expiry confirmations: a statement each, server/receipts.py and
# server/expiry.py) before it cancels what is left.
HANDLING_GRACE = 10.0


class ReceiptHook(Protocol):
    async def receive(self, *, device_id: str, user_id: str, signing_key: bytes,
                      statement: str) -> None:
        """Verify, check and keep a device's receipt statement and tell the sender's devices
        (server/receipts.py); raise RelayError to refuse it."""
        ...


class PrekeyWatch(Protocol):
    async def connected(self, device_id: str) -> KeysLow | None:
        """Record that the device connected; the keys_low frame to push it if it runs low
        (server/prekeys.py)."""
        ...


@dataclasses.dataclass(frozen=True)
class SocketConfig:
    auth_timeout: float = 10.0
    heartbeat: int = 30
    heartbeat_timeout: float = 20.0
    idle_timeout: float = 3600.0
    session_lifetime: float = 12 * 3600.0
    send_window: int = 32
    max_frame: int = 1024 * 1024
    ack_timeout: float = 120.0
    messages_per_minute: int = 600
    bytes_per_minute: int = 64 * 1024 * 1024
    write_timeout: float = 30.0


_CLOSE_FOR = {
    ErrorCode.DEVICE_REVOKED: CloseCode.DEVICE_REVOKED,
    ErrorCode.USER_SUSPENDED: CloseCode.USER_SUSPENDED,
    ErrorCode.LICENCE_EXPIRED: CloseCode.USER_SUSPENDED,
}


class WebSocketRelay:
    """Builds the ``/v1/ws`` endpoint from the relay's parts (assembled in server/app.py)."""

    filing: FilingService | None = None  # filing and expiry confirmations (PROTOCOL.md §15)
    wipes: WipeService | None = None  # wipe orders (PROTOCOL.md §15 "Wipe")

    def __init__(self, *, db: Database, hub: Hub, pipeline: SendPipeline, acks: AckPipeline,
                 metrics: Metrics, authenticator: SocketAuthenticator, config: SocketConfig,
                 prekeys: PrekeyWatch, reader: DeliveryReader,
                 clock: Callable[[], float] = time.time,
                 receipts: ReceiptHook | None = None) -> None:
        self.db, self.hub, self.pipeline, self.metrics = db, hub, pipeline, metrics
        self.reader = reader
        self.prekeys = prekeys
        self.acks, self.receipts = acks, receipts
        self.authenticator, self.config, self.clock = authenticator, config, clock

    async def endpoint(self, ws: WebSocket) -> None:
        if not self.hub.accepting:
            await ws.close(CloseCode.GOING_AWAY)
            return
        # A client that can take several frames in one websocket message asks for the
        # lightbox.bundle subprotocol (RFC 6455 §1.9, docs/PROTOCOL.md §3.6); others are served
        # one frame per message, as before.
        bundles = BUNDLE_SUBPROTOCOL in ws.scope.get("subprotocols", ())
        await ws.accept(subprotocol=BUNDLE_SUBPROTOCOL if bundles else None)
        conn = _Connection(self, ws)
        if bundles:
            conn.session.use_bundles()
        self.hub.add(conn)
        try:
            await conn.run()
        finally:
            # Whatever way it ended, nothing of it stays indexed (its device, user, family).
            self.hub.unregister(conn)
            self.hub.discard(conn)


class _Connection:
    def __init__(self, relay: WebSocketRelay, ws: WebSocket) -> None:
        self.relay, self.ws, self.cfg = relay, ws, relay.config
        now = relay.clock()
        self.session = ServerSession(
            nonce=os.urandom(32), now=int(now),
            limits=Limits(max_frame=self.cfg.max_frame, send_window=self.cfg.send_window))
        self.principal: SocketPrincipal | None = None
        self.session_id = str(uuid.uuid4())
        self.registered_at = 0  # Postgres's clock at registration, in µs (server/hub.py)
        self.device_id = ""
        self.user_id = ""
        self._wake = asyncio.Event()
        self._notices_pending = True  # read the device's notices at least once, at connect
        self._read_needed = True  # the pump must read the queue (at connect, and each wake)
        self._idle = False  # the pump waits for a wake-up, every read's deliveries written
        self._handed: list[messages.NewDelivery] = []  # stored here, to write without a read
        self._closed = False
        self._write_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        # Of those, the tasks handling a frame the device sent: finished even after the
        # connection ends (:meth:`run`).
        self._handling: set[asyncio.Task[None]] = set()
        self._flush_scheduled = False
        self._in_flight: dict[str, float] = {}  # delivery id -> sent at (monotonic)
        # Delivery ids written on this connection and not yet acknowledged, then the latest
        # acknowledged ones (a bounded few: a duplicate ack or a late hand-over of one of
        # them is recognised), so that what a connection remembers does not grow with its
        # lifetime.
        self._sent_ids: set[str] = set()
        self._acked_recently: dict[str, None] = {}
        self._kept_notices: set[int] = set()  # orders written here, still queued until confirmed
        self._window_bound = False
        self._rate = SendRate(messages_per_minute=self.cfg.messages_per_minute,
                              bytes_per_minute=self.cfg.bytes_per_minute, now=now)
        self._liveness = Liveness(  # heartbeat, idle, lifetime, licence, ack deadlines
            started=time.monotonic(), heartbeat=self.cfg.heartbeat,
            heartbeat_timeout=self.cfg.heartbeat_timeout, idle_timeout=self.cfg.idle_timeout,
            session_lifetime=self.cfg.session_lifetime, ack_timeout=self.cfg.ack_timeout)
        self._tick_handle: asyncio.TimerHandle | None = None
        self._wipe: WipeRequired | None = None

    # -- Member protocol (hub) ---------------------------------------------------------------

    def wake(self, notices: bool = True) -> None:
        if notices:
            self._notices_pending = True
        self._read_needed = True
        self._wake.set()

    def offer(self, new: list[messages.NewDelivery]) -> None:
        """Deliveries this process has just committed for this device (server/sends.py). The
        pump writes them without reading them back only when a read would return exactly
        them: it is idle (every delivery a read returned is written, no wake-up pending, the
        window was not full), they fit in the window, and every other delivery the device had
        queued when they were stored (``queued``, seen under the thread locks) has been
        written on this connection. So the queue's order holds across relay processes: a
        message for this device stored by another process, whose wake-up has not arrived
        yet, sends these to the read instead. Otherwise: a wake-up, and the pump reads."""
        if (self._settled()
                and len(self._in_flight) + len(self._handed) + len(new) <= self.cfg.send_window
                and all(n.queued is not None and all(map(self._written, n.queued))
                        for n in new)):
            self._handed.extend(new)
            self._wake.set()
        elif not self._closed:
            self.wake(notices=False)

    def _written(self, delivery_id: str) -> bool:
        """Whether the delivery was written on this connection (acknowledged or not)."""
        return delivery_id in self._sent_ids or delivery_id in self._acked_recently

    def may_take(self) -> bool:
        """Whether :meth:`offer` could take deliveries stored now: the pump is idle and
        fewer deliveries are unacknowledged than the store would list (QUEUED_LIMIT)."""
        return self._settled() and len(self._in_flight) < batches.QUEUED_LIMIT

    def unacknowledged(self) -> int:
        return len(self._in_flight)

    def _settled(self) -> bool:
        """The pump waits with nothing to read: every delivery a read returned is written,
        no wake-up is pending and the last read did not fill the window."""
        return (not self._closed and self._idle and not self._read_needed
                and not self._window_bound)

    def push(self, frame: Frame) -> None:
        self._spawn(self._send(frame))

    async def close(self, code: int = 1000, reason: str = "") -> None:
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(Exception):
            await self.ws.close(code, reason[:120])
        self._wake.set()

    # -- plumbing ----------------------------------------------------------------------------

    async def _flush(self) -> None:
        out = self.session.data_to_send()
        if self._closed:
            return
        if not out:  # most incoming frames queue no answer: no lock, no timer
            if self.session.close_code is not None:
                await self.close(int(self.session.close_code), self.session.close_reason)
            return
        async with self._write_lock:
            try:
                async with asyncio.timeout(self.cfg.write_timeout):
                    for data in out:
                        await self.ws.send_bytes(data)
            except TimeoutError:
                # The device stopped reading: drop it; it resumes from its durable queue.
                await self.close(CloseCode.TOO_SLOW, "too slow")
            except (WebSocketDisconnect, RuntimeError, OSError):
                self._closed = True
        if self.session.close_code is not None:
            await self.close(int(self.session.close_code), self.session.close_reason)

    async def _send(self, frame: Frame) -> None:
        if self._closed:
            return
        self.session.send(frame)
        await self._flush()

    async def _receive(self, wait: float) -> bytes | None:
        """One binary message; None on timeout. Raises WebSocketDisconnect when gone."""
        try:
            async with asyncio.timeout(wait):
                msg = await self.ws.receive()
        except TimeoutError:
            return None
        return self._unpack(msg)

    @staticmethod
    def _unpack(msg: Any) -> bytes:
        """The bytes of a received ASGI message; WebSocketDisconnect when the peer is gone."""
        if msg["type"] == "websocket.disconnect":
            raise WebSocketDisconnect(msg.get("code", 1000))
        data = msg.get("bytes")
        if data is None:
            # Text frames are not part of the protocol: feed an undecodable byte string so
            # the session answers with its malformed_frame error.
            return b"\xc1"
        return bytes(data)

    def _spawn(self, coro: Awaitable[None]) -> asyncio.Task[None]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _handle(self, coro: Awaitable[None]) -> None:
        """Handle a frame the device sent in a task of its own, which the connection's end
        does not cancel (:meth:`run`)."""
        task = self._spawn(coro)
        self._handling.add(task)
        task.add_done_callback(self._handling.discard)

    def _done(self, task: asyncio.Task[None]) -> None:
        """A frame's task ended: an exception it raised is logged (type only, never the
        frame), not lost with the task."""
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            log.error("frame handling failed", extra={"error_type": type(exc).__name__},
                      exc_info=exc)

    # -- lifecycle ---------------------------------------------------------------------------

    async def run(self) -> None:
        try:
            await self._flush()  # nothing yet; the session waits for hello
            if not await self._handshake():
                return
            assert self.principal is not None
            if not await self._register():
                return
            try:
                pump = asyncio.create_task(self._pump(), name="pump")
                pump.add_done_callback(self._pump_ended)
                try:
                    await self._read_loop()
                finally:
                    pump.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await pump
            finally:
                self.relay.hub.unregister(self)
                self.relay.metrics.ws_connections.dec()
        except WebSocketDisconnect:
            pass
        finally:
            self._closed = True
            for t in self._tasks - self._handling:
                t.cancel()
            if self._handling:
                # A frame read before the connection ended is handled to its end: a receipt
                # ("I'm on it") a phone sends as it closes is kept. Only its answer is lost.
                await asyncio.wait(set(self._handling), timeout=HANDLING_GRACE)
                for t in list(self._handling):
                    t.cancel()

    def _pump_ended(self, task: asyncio.Task[None]) -> None:
        """A pump that fails must not leave a connection that silently receives nothing: log
        it and close (1011), so the device reconnects and resumes from its durable queue."""
        if task.cancelled() or self._closed:
            return
        exc = task.exception()
        if exc is not None:
            log.error("delivery pump failed", exc_info=exc,
                      extra={"device_id": self.device_id})
            self._spawn(self.close(1011, "internal error"))

    async def _handshake(self) -> bool:
        async def settled(ev: Event) -> bool:
            if isinstance(ev, AuthRequested):
                await self._authenticate(ev)
            return self.principal is not None or self._wipe is not None

        if not await self._serve_until(self.cfg.auth_timeout, settled):
            if not self._closed and self.session.close_code is None:
                await self.close(CloseCode.AUTH_TIMEOUT, "authentication timeout")
            return False
        await self._flush()
        if self._closed or self.session.close_code is not None:
            return False
        if self._wipe is not None:
            await self._send_wipe(self._wipe)
            return False
        return True

    async def _serve_until(self, seconds: float,
                           handle: Callable[[Event], Awaitable[bool]]) -> bool:
        """Feed the device's frames to the session for up to ``seconds``, each event to
        ``handle`` until it returns True (then True); False when the time is up or the session
        closes. Raises WebSocketDisconnect when the device goes."""
        deadline = time.monotonic() + seconds
        while (remaining := deadline - time.monotonic()) > 0:
            data = await self._receive(remaining)
            if data is None:
                continue
            for ev in self.session.receive_data(data):
                if await handle(ev):
                    return True
            await self._flush()
            if self._closed or self.session.close_code is not None:
                return False
        return False

    async def _authenticate(self, ev: AuthRequested) -> None:
        try:
            p = await self.relay.authenticator.authenticate(ev)
        except WipeRequired as wipe:
            # Revoked with wipe, and the device proved it holds its key: let it in only to
            # hear the order (before anything else), then close (PROTOCOL.md §15).
            self._wipe = wipe
            now = self.relay.clock()
            self.session.accept(session_id=self.session_id, user_id=wipe.user_id,
                                server_time=int(now), expires_at=int(now) + 60,
                                heartbeat=self.cfg.heartbeat)
            return
        except RelayError as err:
            self.relay.metrics.ws_rejections.labels(err.code.value).inc()
            self.session.reject(err.code, err.detail or err.code.value,
                                _CLOSE_FOR.get(err.code, CloseCode.AUTH_FAILED))
            return
        self.principal = p
        self._liveness.licence_expires_at = p.licence_expires_at
        self.device_id, self.user_id = p.device_id, p.user_id
        now = self.relay.clock()
        self.session.accept(session_id=self.session_id, user_id=p.user_id,
                            server_time=int(now),
                            expires_at=int(now + self.cfg.session_lifetime),
                            heartbeat=self.cfg.heartbeat)

    async def _register(self) -> bool:
        """Index this connection as its device's one connection and tell the other relay
        processes, whose connection of this device (if older) must go. Postgres's clock orders
        the registrations (server/hub.py). False if a newer connection of the device won, or
        if the session of its access token ended since the handshake checked it.

        The connection follows its refresh-token family in the hub *before* the same
        statement that reads the clock reads whether the family is still active: an end
        (logout, refresh token reuse; RFC 9700 §4.14.2) that commits after that read is heard
        as a ``revoked`` event, which then finds this connection; one that committed before
        it is read. Once per connection, never per frame (docs/BENCHMARKS.md)."""
        hub = self.relay.hub
        assert self.principal is not None
        hub.follow(self, self.principal.family_id)
        try:
            async with self.relay.db.pool.acquire() as conn:
                self.registered_at, active = await sessions.registration(
                    conn, self.principal.family_id)
                ended = not active or self._closed
                loser = None if ended else hub.register(self)
                if not ended and loser is not self:
                    await events.publish(conn, "session", device_id=self.device_id,
                                         session_id=self.session_id,
                                         registered_at=self.registered_at, origin=hub.origin)
        except BaseException:
            hub.unregister(self)
            raise
        if ended:
            hub.unfollow(self)
            await self.close(CloseCode.AUTH_FAILED, events.SESSION_ENDED)
            return False
        if loser is self:
            hub.unfollow(self)
            await self.close(CloseCode.SESSION_REPLACED, "session replaced")
            return False
        self.relay.metrics.ws_connections.inc()
        if loser is not None:
            await loser.close(CloseCode.SESSION_REPLACED, "session replaced")
        low = await self.relay.prekeys.connected(self.device_id)
        if low is not None:
            self.push(low)
        return True

    # -- reader ------------------------------------------------------------------------------

    async def _read_loop(self) -> None:
        """Frames until the connection closes. No timer per frame: the tick (below) enforces
        every deadline, and a close it decides ends the pending read (the server closes the
        transport at most 10 s after its close frame if the device never answers)."""
        self._arm_tick()
        try:
            while not self._closed:
                data = self._unpack(await self.ws.receive())
                for ev in self.session.receive_data(data):
                    if isinstance(ev, FrameReceived):
                        await self._on_frame(ev.frame)
                    elif isinstance(ev, ErrorEvent):
                        self.relay.metrics.ws_rejections.labels(ev.code.value).inc()
                await self._flush()
                if self.session.close_code is not None:
                    return
        finally:
            if self._tick_handle is not None:
                self._tick_handle.cancel()

    def _arm_tick(self) -> None:
        every = max(0.05, min(self.cfg.heartbeat, self.cfg.heartbeat_timeout) / 2)
        self._tick_handle = asyncio.get_running_loop().call_later(every, self._on_tick)

    def _on_tick(self) -> None:
        if self._closed:
            return
        if self._check_deadlines():
            self._spawn(self._flush())  # a ping or a close to write
        self._arm_tick()

    def _check_deadlines(self) -> bool:
        """True when a frame (ping) or a close was queued on the session (server/liveness.py)."""
        due = self._liveness.due(time.monotonic(), self.relay.clock(),
                                 min(self._in_flight.values(), default=None))
        if due == PING:
            self.session.send(Ping(nonce=os.urandom(8)))
            return True
        if isinstance(due, Close):
            self.session.close(due.close_code, code=due.code, detail=due.detail)
        return self.session.close_code is not None

    async def _on_frame(self, frame: Frame) -> None:
        if isinstance(frame, Pong):
            self._liveness.pong(time.monotonic())
            return
        if isinstance(frame, Ping):
            self._liveness.seen(time.monotonic(), activity=False)
            return  # the session already queued the pong
        self._liveness.seen(time.monotonic(), activity=True)
        assert self.principal is not None
        key, filing, receipts = self.principal.signing_key, self.relay.filing, self.relay.receipts
        if isinstance(frame, Send):
            self._on_send(frame)
        elif isinstance(frame, Ack):
            self._on_ack(frame)
        elif isinstance(frame, Receipt) and receipts is not None:
            # A recipient's signed receipt: kept and passed on (server/receipts.py) or refused.
            self._handle(self._answer(frame.req_id, receipts.receive(
                device_id=self.device_id, user_id=self.user_id, signing_key=key,
                statement=frame.statement)))
        elif isinstance(frame, Filing) and filing is not None:
            # A gateway's filing statement: answered by filed_notice or refused (expiry.py).
            self._handle(self._answer(frame.req_id, filing.file(
                device_id=self.device_id, signing_key=key, statement=frame.statement)))
        elif isinstance(frame, ExpiryConfirm) and filing is not None:
            self._handle(self._answer(frame.req_id, filing.confirm(
                device_id=self.device_id, signing_key=key, statement=frame.statement)))
        else:
            self.session.send(Error(code=ErrorCode.UNEXPECTED_FRAME,
                                    detail=f"{type(frame).__name__} is not accepted by this "
                                           "relay version", req_id=getattr(frame, "req_id",
                                                                          None)))

    def _queue_refusal(self, req_id: str | None, err: RelayError) -> None:
        """Queue the error frame answering a refused frame (written by the next flush)."""
        self.relay.metrics.ws_rejections.labels(err.code.value).inc()
        log.info("frame refused", extra={"code": err.code.value})
        extra = err.extra
        self.session.send(Error(
            req_id=req_id, code=err.code, detail=(err.detail or "")[:200],
            retry_after=err.retry_after,
            missing=extra.get("missing"), extra=extra.get("extra"), stale=extra.get("stale")))

    async def _refuse(self, req_id: str | None, err: RelayError) -> None:
        if not self._closed:
            self._queue_refusal(req_id, err)
            await self._flush()

    def _flush_soon(self) -> None:
        """Write what the session has queued, once for everything queued in this event-loop
        turn: the answers of one group-commit batch to one connection cost one task, not one
        each (docs/BENCHMARKS.md)."""
        if not self._flush_scheduled and not self._closed:
            self._flush_scheduled = True
            self._spawn(self._flush_scheduled_now())

    async def _flush_scheduled_now(self) -> None:
        self._flush_scheduled = False
        await self._flush()

    def _on_send(self, frame: Send) -> None:
        """Validate and queue a send; ``accepted`` (or the refusal) is queued by a callback
        when its batch commits (no task per send)."""
        assert self.principal is not None
        sender = Sender(self.principal.user_id, self.principal.device_id,
                        self.principal.signing_key)
        try:
            self._rate.admit(frame.message, self.relay.clock())
            fut = self.relay.pipeline.enqueue(sender, frame.message)
        except RelayError as err:
            self._queue_refusal(frame.req_id, err)  # written by the read loop's flush
            return
        req_id = frame.req_id
        fut.add_done_callback(lambda f: self._answer_send(req_id, f))

    def _answer_send(self, req_id: str, fut: asyncio.Future[messages.Accepted]) -> None:
        if fut.cancelled():
            return
        err = fut.exception()  # retrieved even when nobody is left to answer
        if self._closed:
            return
        if isinstance(err, RelayError):
            self._queue_refusal(req_id, err)
        elif err is not None:  # the pipeline answers RelayError only: logged, not lost
            log.error("send answer failed", extra={"error_type": type(err).__name__},
                      exc_info=err)
            self._queue_refusal(req_id, RelayError(ErrorCode.INTERNAL_ERROR, "not stored; retry"))
        else:
            acc = fut.result()
            self.session.send(Accepted(
                req_id=req_id, message_id=acc.message_id, thread_id=acc.thread_id,
                thread_seq=acc.thread_seq, server_time=int(acc.server_time.timestamp()),
                duplicate=acc.duplicate))
        self._flush_soon()

    def _on_ack(self, frame: Ack) -> None:
        """Queue the removal of the acknowledged deliveries (group commit, server/acks.py);
        a callback finishes when it is durable (no task per ack)."""
        mine = [d for d in frame.delivery_ids if self._written(d)]
        unknown = [d for d in frame.delivery_ids if not self._written(d)]
        if mine:
            self.relay.acks.submit(self.device_id, mine).add_done_callback(
                lambda f: self._acked(mine, f))
        if unknown:
            self._queue_refusal(None, RelayError(
                ErrorCode.DELIVERY_NOT_FOUND,
                f"{len(unknown)} acknowledged deliveries were never sent to this device"))

    def _acked(self, mine: list[str], fut: asyncio.Future[set[str]]) -> None:
        if fut.cancelled():
            return
        err = fut.exception()
        if err is not None:  # not removed: the deliveries stay queued and in flight
            log.error("ack failed", extra={"error_type": type(err).__name__}, exc_info=err)
            return
        acked = self._acked_recently
        for d in mine:  # an id acknowledged twice is simply no longer in flight
            self._in_flight.pop(d, None)
            if d in self._sent_ids:
                self._sent_ids.discard(d)
                acked[d] = None
        while len(acked) > ACKED_KEPT:
            del acked[next(iter(acked))]  # the oldest (insertion order)
        self.relay.metrics.messages_delivered.inc(len(fut.result()))
        if self._window_bound:
            self.wake(notices=False)

    async def _answer(self, req_id: str | None, call: Awaitable[Frame | bool | None]) -> None:
        """Await a service's handling of a frame: send the frame it answers with, if any, or
        refuse with its RelayError."""
        try:
            answer = await call
        except RelayError as err:
            await self._refuse(req_id, err)
            return
        if answer is not None and not isinstance(answer, bool):
            await self._send(answer)

    # -- wipe (server/wipes.py) --------------------------------------------------------------

    async def _send_wipe(self, wipe: WipeRequired) -> None:
        """``wipe_order`` first (queued deliveries dropped, audited), then the device's one
        ``wipe_confirm`` awaited for up to the authentication timeout (recorded if it verifies;
        nothing else is served), then close with 4004 (server/wipes.py)."""
        wipes = self.relay.wipes
        order = None if wipes is None else await wipes.order(wipe.device_id)
        if wipes is not None and order is not None:
            self.session.send(order)
            await self._flush()

            async def confirmed(ev: Event) -> bool:
                if isinstance(ev, FrameReceived) and isinstance(ev.frame, WipeConfirm):
                    await wipes.confirm(wipe.device_id, order, ev.frame.statement)
                    return True
                return False

            with contextlib.suppress(WebSocketDisconnect):
                await self._serve_until(self.cfg.auth_timeout, confirmed)
        self.session.close(CloseCode.DEVICE_REVOKED, code=ErrorCode.DEVICE_REVOKED,
                           detail="this device was revoked")
        await self._flush()

    # -- pump --------------------------------------------------------------------------------

    async def _pump(self) -> None:
        backlog_done = False
        page = self.cfg.send_window
        while not self._closed:
            self._wake.clear()
            if not self._read_needed:
                # Woken only by deliveries handed over after their COMMIT (offer): written in
                # queue order, without a read; any a read has written meanwhile are skipped.
                handed, self._handed = self._handed, []
                await self._write_deliveries(
                    [n.delivery for n in messages.queue_order(handed)
                     if not self._written(n.delivery.delivery_id)], "handed_over")
                await self._flush()
                await self._sleep()
                continue
            self._read_needed = False
            self._handed = []  # committed before the read below: it returns them, in order
            notices: list[messages.Notice] = []
            if self._notices_pending:
                # Only when a wake-up said notices may be waiting (and once at connect): a
                # message's wake-up does not (server/sends.py), so the paced path reads
                # deliveries alone.
                self._notices_pending = False
                async with self.relay.db.pool.acquire() as conn:
                    notices = await messages.fetch_notices(
                        conn, self.device_id, skip=list(self._kept_notices), limit=64)
                self._notices_pending = self._notices_pending or len(notices) == 64
            room = self.cfg.send_window - len(self._in_flight)
            # Urgent first across threads, thread order kept: everything still queued and not
            # in flight on this connection, rather than a cursor, so a later urgent or a
            # released held delivery is not skipped. Read together with the other pumps
            # that ask in this event-loop turn (server/reads.py).
            batch = (await self.relay.reader.next_deliveries(
                self.device_id, sent=list(self._in_flight), limit=min(room, page))
                if room > 0 else [])
            for n in notices:
                if n.kept:
                    self._kept_notices.add(n.notice_pk)
                await self._write(n.frame)
            if notices:
                await self._flush()  # written before they are dropped from the database
                async with self.relay.db.pool.acquire() as conn:
                    await messages.drop_notices(conn, self.device_id,
                                                [n.notice_pk for n in notices])
            await self._write_deliveries(batch, "read")
            await self._flush()
            if not backlog_done and room > 0 and len(batch) < min(room, page):
                # Everything queued when the device connected has now been sent.
                backlog_done = True
                await self._send(QueueEmpty(pending=0, server_time=int(self.relay.clock())))
            # Deliveries may be waiting behind a full window: only then must an ack wake us.
            self._window_bound = room <= 0 or len(batch) == min(room, page)
            if self._notices_pending or (room > 0 and len(batch) == min(room, page)):
                self._read_needed = True
                continue  # more waiting: go on without sleeping
            await self._sleep()

    async def _sleep(self) -> None:
        """Wait for the next wake-up or handed-over delivery, marked idle meanwhile (offer)."""
        if self._wake.is_set():
            return
        self._idle = True
        try:
            await self._wake.wait()
        finally:
            self._idle = False

    async def _write_deliveries(self, batch: list[messages.Delivery], path: str) -> None:
        now = time.monotonic()
        wall = dt.datetime.now(dt.UTC)
        frames = []
        for d in batch:
            self._in_flight[d.delivery_id] = now
            self._sent_ids.add(d.delivery_id)
            # The stored bytes are the sender's sealed message as strictly decoded and
            # re-encoded at send time: embed them as they are (same wire bytes as Deliver).
            frames.append(encode_deliver(
                delivery_id=d.delivery_id, thread_seq=d.thread_seq,
                priority=Priority(d.priority), received_at=int(d.received_at.timestamp()),
                sealed=d.sealed))
            self.relay.metrics.delivery_latency.observe(
                max(0.0, (wall - d.received_at).total_seconds()))
        if frames:
            self.relay.metrics.deliveries_written.labels(path).inc(len(frames))
        for data in frames:
            await self._write(data)

    async def _write(self, data: bytes) -> None:
        """An encoded relay frame (a delivery, a stored notice). For a device that asked for
        bundles it is queued on the session, in order with the others, and the pump's next
        flush writes them together (PROTOCOL.md §3.6); nothing is queued on a session that is
        closing (what was not written stays queued in the database). For any other device it
        is written at once, one websocket message, as before bundles existed."""
        if self.session.bundles:
            if not self._closed and self.session.close_code is None:
                self.session.send_encoded(data)
            return
        async with self._write_lock:
            with contextlib.suppress(Exception):
                await self.ws.send_bytes(data)
