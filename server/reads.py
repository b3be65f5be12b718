"""Delivery reads batched per event-loop turn.

A paced message wakes one recipient's pump; a group-commit batch wakes several at once (one
NOTIFY names them all). Each pump used to borrow a pooled connection and run its own query;
here every pump that asks in the same event-loop turn is answered by one query
(:func:`server.store.messages.fetch_next_deliveries`), and the results are handed back per
device. Reads stay exactly what each pump would have read alone: the same window, the same
order, the same ids left out.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from server.db import Database
from server.metrics import Metrics
from server.store import messages

__all__ = ["DeliveryReader"]

log = logging.getLogger("lightbox.reads")


class DeliveryReader:
    def __init__(self, db: Database, *, max_devices: int = 256,
                 metrics: Metrics | None = None) -> None:
        self.db, self.metrics = db, metrics
        self.max_devices = max_devices
        self._waiting: list[tuple[messages.DeliveryRequest,
                                  asyncio.Future[list[messages.Delivery]]]] = []
        self._tasks: set[asyncio.Task[None]] = set()

    async def next_deliveries(self, device_id: str, *, sent: Sequence[str], limit: int
                              ) -> list[messages.Delivery]:
        """The device's next deliveries (see :func:`messages.fetch_next_deliveries`), read
        together with those of every other device asking in this event-loop turn."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[list[messages.Delivery]] = loop.create_future()
        if not self._waiting:
            # Runs after every callback already scheduled: the pumps woken together ask first.
            loop.call_soon(self._read_waiting)
        self._waiting.append((messages.DeliveryRequest(device_id, list(sent), limit), fut))
        return await fut

    def _read_waiting(self) -> None:
        waiting, self._waiting = self._waiting, []
        for i in range(0, len(waiting), self.max_devices):
            task = asyncio.get_running_loop().create_task(
                self._read(waiting[i:i + self.max_devices]))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _read(self, waiting: list[tuple[messages.DeliveryRequest,
                                              asyncio.Future[list[messages.Delivery]]]]
                    ) -> None:
        try:
            async with self.db.hot_pool.acquire() as conn:
                if self.metrics is not None:
                    self.metrics.delivery_reads.inc()
                found = await messages.fetch_next_deliveries(conn, [r for r, _ in waiting])
        except BaseException as exc:  # each pump sees the failure (and its connection closes)
            for _, fut in waiting:
                if not fut.done():
                    fut.set_exception(exc if isinstance(exc, Exception)
                                      else RuntimeError("delivery read cancelled"))
            if not isinstance(exc, Exception):
                raise
            return
        for (_, fut), deliveries in zip(waiting, found, strict=True):
            if not fut.done():
                fut.set_result(deliveries)
