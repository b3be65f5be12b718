"""What the parts of the SDK client share while it runs: the connection, the events an
application listens to, the background tasks, and the frames waiting to go to the relay.

:class:`Hub` is built once by :class:`clients.sdk.client.LightboxClient` and handed to each
part (session, trust, sending, receiving, notices); none of them holds another part's state.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeAlias

from clients.sdk.connection import Connection
from clients.sdk.errors import FlowError
from clients.sdk.events import ClientEvent, StatusEvent
from clients.sdk.socket import SocketClosed
from protocol.errors import ErrorCode
from protocol.frames import Frame

__all__ = ["Hub"]

log = logging.getLogger("lightbox.sdk.client")
# What the part that queued a frame does once it has gone to the relay (or nothing).
OnSent: TypeAlias = Callable[[], None] | None


class Hub:
    """The connection (once started), event fan-out, background tasks, outgoing frames."""

    def __init__(self) -> None:
        self.connection: Connection | None = None
        self._subscribers: list[asyncio.Queue[ClientEvent]] = []
        self._callbacks: list[Callable[[ClientEvent], Awaitable[None] | None]] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._outgoing: list[tuple[Frame, OnSent]] = []
        self._outgoing_changed = asyncio.Event()
        self.outgoing_sent = asyncio.Event()  # set whenever the queue has been emptied
        self.outgoing_sent.set()

    def connected(self) -> Connection:
        """The started connection (FlowError ``not_ready`` before ``start``)."""
        if self.connection is None:
            raise FlowError("the client is not started", code=ErrorCode.NOT_READY.value)
        return self.connection

    # -- events ------------------------------------------------------------------------------

    def subscribe(self) -> asyncio.Queue[ClientEvent]:
        queue: asyncio.Queue[ClientEvent] = asyncio.Queue()
        self._subscribers.append(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[ClientEvent]) -> None:
        with contextlib.suppress(ValueError):
            self._subscribers.remove(queue)

    def on_event(self, callback: Callable[[ClientEvent], Awaitable[None] | None]) -> None:
        self._callbacks.append(callback)

    async def emit(self, event: ClientEvent) -> None:
        for queue in self._subscribers:
            queue.put_nowait(event)
        for callback in self._callbacks:
            try:
                result = callback(event)
                if result is not None:
                    await result
            except Exception:  # an application callback must not stop the client
                log.exception("event callback failed")

    # -- background tasks --------------------------------------------------------------------

    def spawn(self, coro: Awaitable[Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(self._settled)
        return task

    def _settled(self, task: asyncio.Task[Any]) -> None:
        """A background task that failed is reported as a problem (``StatusEvent`` error) and
        its exception retrieved: never a "Task exception was never retrieved" traceback on
        the user's terminal (docs/USER_GUIDE.md "Everyday commands": one sentence)."""
        if task.cancelled() or task.exception() is None:
            return
        exc = task.exception()
        log.debug("background task %s failed", task.get_name(), exc_info=exc)
        event = StatusEvent("error", detail=f"{task.get_name()} stopped: "
                                            f"{exc or type(exc).__name__}")
        for queue in self._subscribers:
            queue.put_nowait(event)

    async def cancel_tasks(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    # -- frames for the relay: receipts and confirmations, kept until sent --------------------

    def queue_frame(self, frame: Frame, on_sent: OnSent = None) -> None:
        """Send ``frame`` whenever connected; ``on_sent`` is called once it has been written
        to the relay (never, if this client stops first: the frame is kept in memory only)."""
        self._outgoing.append((frame, on_sent))
        self.outgoing_sent.clear()
        self._outgoing_changed.set()

    async def flush_outgoing(self) -> None:
        """Send queued receipts and confirmations whenever connected (kept until sent)."""
        connection = self.connected()
        while True:
            if not self._outgoing:
                self._outgoing_changed.clear()
                await self._outgoing_changed.wait()
                continue
            await connection.connected.wait()
            frame, on_sent = self._outgoing[0]
            try:
                await connection.send_frame(frame)
            except (SocketClosed, ConnectionError):
                await asyncio.sleep(0.2)
                continue
            self._outgoing.pop(0)
            if on_sent is not None:
                try:
                    on_sent()
                except Exception:  # the frame has gone; what follows must not stop the queue
                    log.exception("after a frame was sent")
            if not self._outgoing:
                self.outgoing_sent.set()
