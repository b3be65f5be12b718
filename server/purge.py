"""What the relay stops keeping once nobody needs it: a message's ciphertext (docs/SECURITY.md,
"What the relay keeps").

A message's sealed bytes are stored once, with one delivery row per recipient device
(server/store/batches.py), and are read only to write those deliveries. Once no delivery of it
is queued any more (every recipient device acknowledged it; or its deliveries were dropped:
a consent withdrawn, a device revoked, a wipe ordered, an on-call handover), the relay has no
use for them. The transaction that removes a message's last queued delivery sets them to NULL
(a trigger on ``deliveries``, alembic migration 0021), whichever way it was removed. The row
stays: its ids, body hash, recipients, size and times answer a retried send as a duplicate,
check a receipt against the message's recipients and keep the thread's order; none of it is
the message.

Every relay process also sweeps every ``LIGHTBOX_CIPHERTEXT_PURGE_INTERVAL`` seconds, as the
backstop: it looks once at each message stored since (server/store/messages.py
``purge_delivered_ciphertext``) for one that never had a delivery, or that a relay before
migration 0021 kept, and purges it.

A revoked device is never sent anything again, so its revocation drops its queue in the same
transaction (server/provisioning.py, server/scim/service.py; audited with the count and the
message ids). A send whose transaction was already under way when the device was revoked can
still commit a delivery to it afterwards: the sweep drops those first, audited
(``device.queue_dropped``), and their messages' ciphertext goes with them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging

from server import audit
from server.db import Database
from server.metrics import Metrics
from server.store import messages

__all__ = ["CiphertextPurge", "PurgeReport"]

log = logging.getLogger("lightbox.purge")

# Revoked devices that still have deliveries queued (see the module docstring): one probe of
# the queue index (device, delivery) per revoked device, however long the queue. A delivery
# held for an on-call step is not in that index until the step releases it (server/store/
# escalations.py ``release_held`` releases a user's devices whatever their state); the next
# sweep then drops it.
_LEFT_FOR_REVOKED = """
SELECT v.device_id::text FROM devices v
 WHERE v.status = 'revoked'
   AND EXISTS (SELECT 1 FROM deliveries d WHERE d.device_id = v.device_id AND NOT d.held)
"""


@dataclasses.dataclass(frozen=True)
class PurgeReport:
    purged: int  # messages whose ciphertext the sweep set to NULL
    revoked_queues: dict[str, list[str]]  # device id -> message ids dropped from its queue


@dataclasses.dataclass
class CiphertextPurge:
    db: Database
    metrics: Metrics
    interval: float = 60.0

    async def sweep(self) -> PurgeReport:
        """Drop what is still queued for revoked devices (their messages' ciphertext goes with
        it), then look at the messages stored since the last sweep for ciphertext no delivery
        is queued for."""
        async with self.db.pool.acquire() as conn:
            async with conn.transaction():
                await conn.execute("SET LOCAL enable_seqscan = off")  # as the purge's chunks
                revoked = [r[0] for r in await conn.fetch(_LEFT_FOR_REVOKED)]
            dropped: dict[str, list[str]] = {}
            if revoked:
                async with conn.transaction():
                    dropped = await messages.drop_queues(conn, revoked)
                    for device_id in sorted(dropped):
                        await audit.append(conn, "device.queue_dropped", subject_kind="device",
                                           subject_id=device_id,
                                           details=messages.dropped_details(dropped, device_id))
            purged = await messages.purge_delivered_ciphertext(conn)
        if purged:
            self.metrics.ciphertext_purged.inc(purged)
        return PurgeReport(purged, dropped)

    async def run(self) -> None:
        """Sweep every ``interval`` seconds, for the relay's lifetime."""
        while True:
            try:
                report = await self.sweep()
                if report.purged or report.revoked_queues:
                    log.info("ciphertext purged", extra={
                        "count": report.purged,
                        "revoked_devices": len(report.revoked_queues)})
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a failed sweep is retried; it must not stop the relay
                log.warning("ciphertext purge failed", extra={"error_type": type(exc).__name__})
            await asyncio.sleep(self.interval)
