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
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence

from server.db import Database

__all__ = ["AckPipeline"]

log = logging.getLogger("lightbox.acks")


class AckPipeline:
    def __init__(self, db: Database, *, max_batch: int = 2048) -> None:
        self.db = db
        self.max_batch = max_batch
        self._queue: asyncio.Queue[tuple[str, list[str], asyncio.Future[set[str]]]] = (
            asyncio.Queue())
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="ack-pipeline")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def submit(self, device_id: str, delivery_ids: Sequence[str]) -> asyncio.Future[set[str]]:
        """Queue the removal of these deliveries of this device; the future resolves after
        COMMIT with the ids actually removed."""
        fut: asyncio.Future[set[str]] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((device_id, list(delivery_ids), fut))
        return fut

    async def _run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            size = len(batch[0][1])
            while size < self.max_batch and not self._queue.empty():
                item = self._queue.get_nowait()
                batch.append(item)
                size += len(item[1])
            devices = [d for d, ids, _ in batch for _ in ids]
            deliveries = [i for _, ids, _ in batch for i in ids]
            try:
                async with self.db.hot_pool.acquire() as conn:
                    rows = await conn.fetch(
                        "SELECT device_id AS dev, delivery_id AS del "
                        "FROM ack_deliveries($1::uuid[], $2::uuid[])", devices, deliveries)
            except Exception as exc:
                log.error("ack batch failed", exc_info=exc, extra={"count": len(batch)})
                for _, _, fut in batch:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            removed: dict[str, set[str]] = {}
            for r in rows:
                removed.setdefault(r["dev"], set()).add(r["del"])
            for device, ids, fut in batch:
                if not fut.done():
                    fut.set_result(removed.get(device, set()) & set(ids))
