"""Expiry orders: the relay's durable instruction to one device to shred its copy of one
attachment (docs/ARCHITECTURE.md §6), until that device confirms.

Each order is also queued as a device notice of kind ``expire_order``
(:func:`server.store.messages.add_notices`), which the websocket pump sends before any
delivery and does not drop after sending: it stays until the device confirms (PROTOCOL.md §15
``expiry_confirm`` sets ``confirmed_at`` and removes the notice). An order is unique per
(device, attachment, reason), so issuing it twice is a no-op. Each new order is audited
(``expiry.order_issued``) in the same transaction: ``lightbox-admin copies`` reads it.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid
from collections.abc import Sequence

import asyncpg

from protocol.frames import ExpireOrder, ExpiryReason, encode_frame
from server import audit
from server.store import messages

__all__ = ["NOTICE_KIND", "NewOrder", "issue", "pending_for"]

NOTICE_KIND = "expire_order"


@dataclasses.dataclass(frozen=True)
class NewOrder:
    device_id: str
    attachment_id: str
    thread_id: str


async def issue(conn: asyncpg.Connection, orders: Sequence[NewOrder], reason: ExpiryReason, *,
                now: dt.datetime) -> list[ExpireOrder]:
    """Record the orders not yet issued and queue each as a notice for its device (call in the
    transaction of the change that causes them); returns the new ones."""
    issued: list[ExpireOrder] = []
    for o in orders:
        order_id = str(uuid.uuid4())
        row = await conn.fetchrow(
            "INSERT INTO expiry_orders (order_id, device_id, attachment_id, thread_id, reason, "
            "issued_at) VALUES ($1, $2, $3, $4, $5, $6) "
            "ON CONFLICT (device_id, attachment_id, reason) DO NOTHING RETURNING order_id",
            order_id, o.device_id, o.attachment_id, o.thread_id, reason.value, now)
        if row is None:
            continue
        frame = ExpireOrder(order_id=order_id, attachment_id=o.attachment_id,
                            thread_id=o.thread_id, reason=reason, issued_at=int(now.timestamp()))
        await messages.add_notices(conn, [o.device_id], NOTICE_KIND, encode_frame(frame),
                                   dedupe_key=f"expire:{order_id}", now=now)
        await audit.append(conn, "expiry.order_issued", subject_kind="attachment",
                           subject_id=o.attachment_id, details={
                               "device_id": o.device_id, "order_id": order_id,
                               "reason": reason.value, "thread_id": o.thread_id})
        issued.append(frame)
    return issued


async def pending_for(conn: asyncpg.Connection, device_id: str) -> list[ExpireOrder]:
    """The device's unconfirmed orders, oldest first."""
    rows = await conn.fetch(
        "SELECT order_id::text AS order_id, attachment_id::text AS attachment_id, "
        "thread_id::text AS thread_id, reason, issued_at FROM expiry_orders "
        "WHERE device_id = $1 AND confirmed_at IS NULL ORDER BY issued_at, order_id",
        uuid.UUID(device_id))
    return [ExpireOrder(order_id=r["order_id"], attachment_id=r["attachment_id"],
                        thread_id=r["thread_id"], reason=ExpiryReason(r["reason"]),
                        issued_at=int(r["issued_at"].timestamp())) for r in rows]
