"""Acknowledgements with group commit.

Every ``ack`` removes delivery rows, which is a write: one transaction (one WAL flush) per
acknowledgement frame would cap the relay at the disk's flush rate. Acknowledgements from all
connections of this process queue up and one flusher removes each batch in a single statement
(the SQL function ``ack_deliveries``, alembic migration 0014), resolving each connection's
future after COMMIT, and never for another device (the device id is part of every pair).

The removal's COMMIT does not wait for the WAL flush (asynchronous commit, for that transaction
only): an acknowledgement lost to a database crash is a redelivery, which clients de-duplicate
(docs/PROTOCOL.md §3.5), so waiting for the disk would buy nothing and would queue the flush a
message's ``accepted`` waits for behind this one.

A batch lingers: after the first acknowledgement the flusher waits ``linger`` seconds
(``LIGHTBOX_ACK_LINGER``, 5 ms by default) for more, unless ``max_batch`` ids are already queued,
so paced traffic, where acknowledgements come one at a time, shares statements too
(docs/BENCHMARKS.md, round 7). Nothing waits on the removal but the device's window: an
acknowledged delivery stays in flight, and out of the next read, until its removal commits,
so the linger delays no delivery that has room. ``stop()`` flushes what is queued, without
lingering, before it ends the flusher.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence

from server.db import Database
from server.store.batches import uuid_array

__all__ = ["AckPipeline"]

log = logging.getLogger("lightbox.acks")


class AckPipeline:
    def __init__(self, db: Database, *, max_batch: int = 2048, linger: float = 0.0,
                 stop_timeout: float = 5.0) -> None:
        self.db = db
        self.max_batch = max_batch
        self.linger = linger
        self.stop_timeout = stop_timeout
        self.statements = 0  # removal statements run (tests read it)
        self._queue: asyncio.Queue[tuple[str, list[str], asyncio.Future[set[str]]]] = (
            asyncio.Queue())
        self._queued = 0  # delivery ids in the queue
        self._full = asyncio.Event()  # set when a batch's worth is queued, or when stopping
        self._stopping = False
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._stopping = False
        self._task = asyncio.create_task(self._run(), name="ack-pipeline")

    async def stop(self) -> None:
        """Remove what is queued (no lingering; at most ``stop_timeout`` seconds), then end
        the flusher. An acknowledgement that still does not make it is a redelivery."""
        if self._task is None:
            return
        self._stopping = True
        self._full.set()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.stop_timeout):
                await self._queue.join()
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None

    def submit(self, device_id: str, delivery_ids: Sequence[str]) -> asyncio.Future[set[str]]:
        """Queue the removal of these deliveries of this device; the future resolves after
        COMMIT with the ids actually removed."""
        fut: asyncio.Future[set[str]] = asyncio.get_running_loop().create_future()
        ids = list(delivery_ids)
        self._queue.put_nowait((device_id, ids, fut))
        self._queued += len(ids)
        if self._queued >= self.max_batch:
            self._full.set()
        return fut

    async def _linger(self) -> None:
        """Wait up to ``linger`` seconds for more acknowledgements, less when a batch's worth
        is queued or the pipeline stops."""
        if self.linger <= 0 or self._stopping or self._queued >= self.max_batch:
            return
        self._full.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.linger):
                await self._full.wait()

    async def _run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            await self._linger()
            size = len(batch[0][1])
            while size < self.max_batch and not self._queue.empty():
                item = self._queue.get_nowait()
                batch.append(item)
                size += len(item[1])
            self._queued -= size
            try:
                await self._remove(batch)
            finally:
                for _ in batch:
                    self._queue.task_done()

    async def _remove(self, batch: list[tuple[str, list[str], asyncio.Future[set[str]]]]
                      ) -> None:
        devices = [d for d, ids, _ in batch for _ in ids]
        deliveries = [i for _, ids, _ in batch for i in ids]
        try:
            self.statements += 1
            async with self.db.hot_pool.acquire() as conn:
                rows = await conn.fetch(  # ids as text (server/store/batches.py uuid_array)
                    "SELECT device_id AS dev, delivery_id AS del "
                    "FROM ack_deliveries($1::text::uuid[], $2::text::uuid[])",
                    uuid_array(devices), uuid_array(deliveries))
        except Exception as exc:
            log.error("ack batch failed", exc_info=exc, extra={"count": len(batch)})
            for _, _, fut in batch:
                if not fut.done():
                    fut.set_exception(exc)
            return
        removed: dict[str, set[str]] = {}
        for r in rows:
            removed.setdefault(r["dev"], set()).add(r["del"])
        for device, ids, fut in batch:
            if not fut.done():
                fut.set_result(removed.get(device, set()) & set(ids))
