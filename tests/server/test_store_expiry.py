"""Expiry orders (server/store/expiry.py) on a real database: each order is issued once per
(device, attachment, reason), queued as a durable ``expire_order`` notice for its device and
audited in the same call; a device's pending orders are its own unconfirmed ones, oldest first."""

from __future__ import annotations

import datetime as dt
import json
import uuid

import asyncpg

from protocol.frames import ExpireOrder, ExpiryReason, decode_frame
from server.store import expiry, messages

NOW = dt.datetime(2026, 11, 1, 12, 0, tzinfo=dt.UTC)
THREAD = str(uuid.uuid4())


def order(device: str, attachment: str) -> expiry.NewOrder:
    return expiry.NewOrder(device_id=device, attachment_id=attachment, thread_id=THREAD)


def ids(n: int) -> list[str]:
    return [str(uuid.uuid4()) for _ in range(n)]


async def test_an_order_is_queued_for_its_device_as_the_frame_it_returns(
        conn: asyncpg.Connection) -> None:
    device, attachment = ids(2)
    (frame,) = await expiry.issue(conn, [order(device, attachment)], ExpiryReason.FILED, now=NOW)
    assert (frame.attachment_id, frame.thread_id, frame.reason, frame.issued_at) == (
        attachment, THREAD, ExpiryReason.FILED, int(NOW.timestamp()))
    (notice,) = await messages.fetch_notices(conn, device, limit=10)
    assert decode_frame(notice.frame) == frame
    assert await conn.fetchval("SELECT kind FROM device_notices") == expiry.NOTICE_KIND


async def test_each_new_order_is_audited_without_the_patient(conn: asyncpg.Connection) -> None:
    device, attachment = ids(2)
    (frame,) = await expiry.issue(conn, [order(device, attachment)], ExpiryReason.WIPE, now=NOW)
    row = await conn.fetchrow("SELECT event, subject_kind, subject_id, details FROM audit_log "
                              "WHERE event = 'expiry.order_issued'")
    assert (row["event"], row["subject_kind"], row["subject_id"]) == (
        "expiry.order_issued", "attachment", attachment)
    assert json.loads(row["details"]) == {"device_id": device, "order_id": frame.order_id,
                                          "reason": "wipe", "thread_id": THREAD}


async def test_issuing_an_order_again_issues_nothing(conn: asyncpg.Connection) -> None:
    device, attachment = ids(2)
    await expiry.issue(conn, [order(device, attachment)], ExpiryReason.FILED, now=NOW)
    again = await expiry.issue(conn, [order(device, attachment)], ExpiryReason.FILED,
                               now=NOW + dt.timedelta(hours=1))
    assert again == []
    assert len(await messages.fetch_notices(conn, device, limit=10)) == 1
    assert await conn.fetchval(
        "SELECT count(*) FROM audit_log WHERE event = 'expiry.order_issued'") == 1


async def test_another_reason_or_device_is_another_order(conn: asyncpg.Connection) -> None:
    device, other, attachment = ids(3)
    await expiry.issue(conn, [order(device, attachment)], ExpiryReason.FILED, now=NOW)
    new = await expiry.issue(conn, [order(device, attachment), order(other, attachment)],
                             ExpiryReason.CONSENT_REVOKED, now=NOW)
    assert len(new) == 2 and len({f.order_id for f in new}) == 2
    assert {o.reason for o in await expiry.pending_for(conn, device)} == {
        ExpiryReason.FILED, ExpiryReason.CONSENT_REVOKED}


async def test_pending_orders_are_the_devices_own_unconfirmed_ones_oldest_first(
        conn: asyncpg.Connection) -> None:
    device, other, first, second, third = ids(5)
    later = NOW + dt.timedelta(minutes=5)
    (newer,) = await expiry.issue(conn, [order(device, second)], ExpiryReason.HARD_LIMIT,
                                  now=later)
    (older,) = await expiry.issue(conn, [order(device, first)], ExpiryReason.FILED, now=NOW)
    (done,) = await expiry.issue(conn, [order(device, third)], ExpiryReason.FILED, now=NOW)
    await expiry.issue(conn, [order(other, first)], ExpiryReason.FILED, now=NOW)
    await conn.execute("UPDATE expiry_orders SET confirmed_at = $2 WHERE order_id = $1",
                       uuid.UUID(done.order_id), later)
    pending = await expiry.pending_for(conn, device)
    assert pending == [older, newer]
    assert all(isinstance(p, ExpireOrder) for p in pending)


async def test_a_device_with_no_orders_has_none_pending(conn: asyncpg.Connection) -> None:
    assert await expiry.pending_for(conn, str(uuid.uuid4())) == []
