"""Cross-process events over Postgres LISTEN/NOTIFY (docs/ARCHITECTURE.md §3: no home-made cluster
protocol).

Several relay processes share one Postgres. When something happens that sockets held by another
process must react to (a device revoked, a user suspended, a message queued for a device), the
acting process publishes a small JSON notification *inside its transaction*, so it is delivered
only if the change commits. Each process listens on one dedicated connection and dispatches to
local handlers. Payloads carry ids only (NOTIFY payloads are limited to 8000 bytes).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Collection, Coroutine, Sequence
from typing import Any

import asyncpg

__all__ = ["CHANNEL", "SESSION_ENDED", "Announcer", "EventBus", "notification", "publish",
           "publish_revocation", "publish_sessions_ended"]

log = logging.getLogger("lightbox.events")
CHANNEL = "lightbox_events"
# The reason of a ``revoked`` event that ends refresh-token families: the error code a ``hello``
# with one of their access tokens is refused with (server/authn.py), so a socket closed by the
# event and one refused at the handshake tell the client the same thing (docs/PROTOCOL.md §3.4).
SESSION_ENDED = "token_invalid"
Handler = Callable[[dict[str, Any]], Coroutine[Any, Any, None]]


def notification(kind: str, **fields: Any) -> str:
    """The payload of an event on :data:`CHANNEL` (for a statement that sends it itself, as
    the batch store does: server/store/batches.py)."""
    payload = json.dumps({"kind": kind, **fields}, separators=(",", ":"))
    if len(payload) > 7900:
        raise ValueError("event payload too large for NOTIFY")
    return payload


async def publish(conn: asyncpg.Connection, kind: str, **fields: Any) -> None:
    """Queue a notification; Postgres delivers it when the surrounding transaction commits."""
    await conn.execute("SELECT pg_notify($1, $2)", CHANNEL, notification(kind, **fields))


async def publish_revocation(conn: asyncpg.Connection, *, device_ids: Sequence[str] = (),
                             user_ids: Sequence[str] = (), reason: str) -> None:
    """Tell every relay process to close the sockets of these devices / users' devices.

    ``reason`` is ``device_revoked``, ``user_suspended`` or ``licence_expired`` (it selects the
    close code, docs/SECURITY.md)."""
    for i in range(0, max(len(device_ids), len(user_ids), 1), 100):  # stay under 8000 bytes
        await publish(conn, "revoked", device_ids=list(device_ids[i:i + 100]),
                      user_ids=list(user_ids[i:i + 100]), reason=reason)


async def publish_sessions_ended(conn: asyncpg.Connection, family_ids: Sequence[str]) -> None:
    """Tell every relay process to close the sockets opened with an access token of these
    refresh-token families (the ``sid`` claim, server/tokens.py): the session behind them
    ended (logout, refresh token reuse, single sign-on lifetime; server/login.py). A
    ``revoked`` event whose reason is :data:`SESSION_ENDED`; a relay of an earlier version
    finds no device or user in it and does nothing."""
    for i in range(0, len(family_ids), 100):  # stay under 8000 bytes
        await publish(conn, "revoked", device_ids=[], user_ids=[],
                      family_ids=list(family_ids[i:i + 100]), reason=SESSION_ENDED)


class Announcer:
    """``deliver`` events sent in a transaction of their own, for deliveries already committed
    whose wake-up was not sent with them: the takeover rule of local delivery
    (server/hub.py ``Hub.silenced``, docs/ARCHITECTURE.md §3 "Local delivery"). The devices
    announced in one event-loop turn go in one event (180 a payload). A failure is tried again
    three times over about 2.6 s, then logged: what it would have woken stays queued, read at
    the device's next wake-up or connection."""

    PAUSES = (0.1, 0.5, 2.0)

    def __init__(self, pool: Callable[[], asyncpg.Pool]) -> None:
        self._pool = pool
        self._pending: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.sent = 0  # events sent (tests and the metrics read it)

    def announce(self, device_ids: Collection[str]) -> None:
        if not device_ids:
            return
        start = not self._pending
        self._pending.update(device_ids)
        if start:
            task = asyncio.get_running_loop().create_task(self._send(), name="announce")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _send(self) -> None:
        await asyncio.sleep(0)  # the rest of this turn's devices join the event
        ids, self._pending = sorted(self._pending), set()
        for pause in (*self.PAUSES, None):
            try:
                async with self._pool().acquire() as conn:
                    for i in range(0, len(ids), 180):
                        await publish(conn, "deliver", device_ids=ids[i:i + 180],
                                      notices=False)
                        self.sent += 1
                return
            except Exception as exc:
                if pause is None:
                    log.error("wake-up event not sent", exc_info=exc,
                              extra={"devices": len(ids)})
                    return
                await asyncio.sleep(pause)

    async def stop(self) -> None:
        await asyncio.gather(*self._tasks, return_exceptions=True)


class EventBus:
    """One LISTEN connection per process; handlers by event kind."""

    def __init__(self, dsn: str) -> None:
        self._dsn = dsn
        self._conn: asyncpg.Connection | None = None
        self._handlers: dict[str, list[Handler]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def subscribe(self, kind: str, handler: Handler) -> None:
        self._handlers.setdefault(kind, []).append(handler)

    async def start(self) -> None:
        self._conn = await asyncpg.connect(self._dsn)
        await self._conn.add_listener(CHANNEL, self._on_notify)

    async def stop(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            try:
                await conn.remove_listener(CHANNEL, self._on_notify)
            finally:
                await conn.close()
        for t in list(self._tasks):
            t.cancel()

    def _on_notify(self, conn: object, pid: int, channel: str, payload: str) -> None:
        try:
            event = json.loads(payload)
        except ValueError:
            log.warning("undecodable event")
            return
        for handler in self._handlers.get(event.get("kind", ""), []):
            task: asyncio.Task[None] = asyncio.get_running_loop().create_task(handler(event))
            self._tasks.add(task)
            task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("event handler failed", exc_info=task.exception())
