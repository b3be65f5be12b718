"""Filing and expiry storage (PROTOCOL.md §15): filings, the lifecycle timer of each shared image,
the devices that hold a copy, first downloads, and confirmations of expiry orders.

Queries only: the orchestration (what a filing or a due timer causes) is server/expiry.py.
Every function takes a connection; the caller owns the transaction.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid
from collections.abc import Collection, Sequence

import asyncpg

__all__ = [
    "FilingRecord",
    "Holder",
    "Lifecycle",
    "OrderRecord",
    "claim_due",
    "confirm_order",
    "confirmed_devices",
    "get_filing",
    "get_lifecycle",
    "get_order",
    "holders",
    "insert_filing",
    "mark_ciphertext_deleted",
    "mark_fetched",
    "materialise",
    "never_received",
    "orders_for",
    "org_gateways",
    "received_in_thread",
    "releasable",
    "set_state",
    "thread_attachments",
    "was_delivered",
]


@dataclasses.dataclass(frozen=True)
class Lifecycle:
    attachment_id: str
    thread_id: str
    message_id: str
    sender_device_id: str
    shared_at: dt.datetime
    state: str  # unfiled | filed | expired
    due_at: dt.datetime | None
    filed_at: dt.datetime | None
    expired_at: dt.datetime | None
    ciphertext_deleted_at: dt.datetime | None


@dataclasses.dataclass(frozen=True)
class FilingRecord:
    attachment_id: str
    statement_id: str
    gateway_device_id: str
    message_id: str
    thread_id: str
    filed_at: dt.datetime
    receipt_sha256: bytes


@dataclasses.dataclass(frozen=True)
class Holder:
    """A device that may hold a copy: the sending device or one the image was sent to."""

    device_id: str
    user_id: str
    kind: str
    active: bool
    sender: bool
    fetched_at: dt.datetime | None


@dataclasses.dataclass(frozen=True)
class OrderRecord:
    order_id: str
    device_id: str
    attachment_id: str
    thread_id: str
    reason: str
    issued_at: dt.datetime
    confirmed_at: dt.datetime | None


def _uuid(value: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(value)
    except (ValueError, TypeError, AttributeError):
        return None


def _lifecycle(r: asyncpg.Record) -> Lifecycle:
    return Lifecycle(
        attachment_id=str(r["attachment_id"]), thread_id=str(r["thread_id"]),
        message_id=str(r["message_id"]), sender_device_id=str(r["sender_device_id"]),
        shared_at=r["shared_at"], state=r["state"], due_at=r["due_at"], filed_at=r["filed_at"],
        expired_at=r["expired_at"], ciphertext_deleted_at=r["ciphertext_deleted_at"])


async def materialise(conn: asyncpg.Connection, *, hard_limit: int,
                      attachment_ids: Sequence[str] | None = None, limit: int = 500
                      ) -> list[Lifecycle]:
    """Create the lifecycle row (state ``unfiled``, due at the hard limit) of every shared image
    that has none yet, from the first message that referenced it; returns the new rows."""
    ids = None if attachment_ids is None else [u for a in attachment_ids if (u := _uuid(a))]
    rows = await conn.fetch(
        "INSERT INTO attachment_lifecycle (attachment_id, thread_id, message_id, "
        "sender_device_id, shared_at, state, due_at) "
        "SELECT DISTINCT ON (ma.attachment_id) ma.attachment_id, m.thread_id, m.message_id, "
        "m.sender_device_id, m.created_at, 'unfiled', "
        "m.created_at + make_interval(secs => $1::double precision) "
        "FROM message_attachments ma JOIN messages m USING (message_pk) "
        "WHERE ($2::uuid[] IS NULL OR ma.attachment_id = ANY($2::uuid[])) "
        "AND NOT EXISTS (SELECT 1 FROM attachment_lifecycle l "
        "WHERE l.attachment_id = ma.attachment_id) "
        "ORDER BY ma.attachment_id, m.message_pk LIMIT $3 "
        "ON CONFLICT (attachment_id) DO NOTHING RETURNING *", float(hard_limit), ids, limit)
    return [_lifecycle(r) for r in rows]


async def get_lifecycle(conn: asyncpg.Connection, attachment_id: str, *,
                        for_update: bool = False) -> Lifecycle | None:
    aid = _uuid(attachment_id)
    if aid is None:
        return None
    row = await conn.fetchrow(
        "SELECT * FROM attachment_lifecycle WHERE attachment_id = $1"
        + (" FOR UPDATE" if for_update else ""), aid)
    return None if row is None else _lifecycle(row)


async def thread_attachments(conn: asyncpg.Connection, thread_id: str) -> list[str]:
    tid = _uuid(thread_id)
    rows = await conn.fetch(
        "SELECT DISTINCT ma.attachment_id::text AS a FROM message_attachments ma "
        "JOIN messages m USING (message_pk) WHERE m.thread_id = $1 ORDER BY 1", tid)
    return [r["a"] for r in rows]


async def set_state(conn: asyncpg.Connection, attachment_id: str, *, state: str,
                    due_at: dt.datetime | None, filed_at: dt.datetime | None = None,
                    expired_at: dt.datetime | None = None) -> None:
    await conn.execute(
        "UPDATE attachment_lifecycle SET state = $2, due_at = $3, "
        "filed_at = coalesce($4, filed_at), expired_at = coalesce($5, expired_at) "
        "WHERE attachment_id = $1", uuid.UUID(attachment_id), state, due_at, filed_at,
        expired_at)


async def claim_due(conn: asyncpg.Connection, *, now: dt.datetime, limit: int = 100
                    ) -> list[Lifecycle]:
    """Due timers, locked for this transaction; rows another relay process is handling are
    skipped (``FOR UPDATE SKIP LOCKED``), so a timer fires once."""
    rows = await conn.fetch(
        "SELECT * FROM attachment_lifecycle WHERE due_at <= $1 ORDER BY due_at "
        "LIMIT $2 FOR UPDATE SKIP LOCKED", now, limit)
    return [_lifecycle(r) for r in rows]


async def holders(conn: asyncpg.Connection, attachment_id: str) -> list[Holder]:
    """The sending device (the uploader) and every device a message carrying the image was
    addressed to (forwarding included), with each one's kind, status and first download."""
    rows = await conn.fetch(
        "WITH h AS (SELECT owner_device_id AS device_id, true AS sender, NULL::timestamptz "
        "AS fetched_at FROM attachments WHERE attachment_id = $1 UNION ALL "
        "SELECT device_id, false, fetched_at FROM attachment_access WHERE attachment_id = $1) "
        "SELECT h.device_id::text AS device_id, d.user_id::text AS user_id, d.kind, "
        "(d.status = 'active') AS active, bool_or(h.sender) AS sender, "
        "min(h.fetched_at) AS fetched_at FROM h JOIN devices d USING (device_id) "
        "GROUP BY h.device_id, d.user_id, d.kind, d.status ORDER BY 5 DESC, 1",
        uuid.UUID(attachment_id))
    return [Holder(r["device_id"], r["user_id"], r["kind"], r["active"], r["sender"],
                   r["fetched_at"]) for r in rows]


def never_received(held: Sequence[Holder], named: Collection[str]) -> list[str]:
    """The people an image was sent to none of whose devices downloaded it (docs/PROTOCOL.md
    §15 "Never received"): a person is told apart from the sender's own other devices and the
    record gateways (they keep nothing); one device of theirs that downloaded it is enough for
    the person to have seen it. A person the thread names (``named``: its members) is told of
    whenever they did not see it; one it reached through a role only (the role's certificate
    holders, an on-call ladder's backups, held until an escalation that never came) only when
    nobody it was sent to saw it: one holder of the role who did is the role having seen it.
    User ids, sorted."""
    senders = {h.user_id for h in held if h.sender}
    people: dict[str, bool] = {}
    for h in held:
        if h.kind == "gateway" or h.user_id in senders:
            continue
        people[h.user_id] = people.get(h.user_id, False) or h.fetched_at is not None
    anyone = any(people.values())
    return sorted(u for u, received in people.items()
                  if not received and (u in named or not anyone))


async def org_gateways(conn: asyncpg.Connection, org_id: str, role: str) -> set[str]:
    """Active gateway devices of the organisation's active record-gateway service accounts."""
    rows = await conn.fetch(
        "SELECT d.device_id::text AS d FROM devices d JOIN users u USING (user_id) "
        "WHERE u.org_id = $1 AND u.status = 'active' AND u.account_kind = 'service' "
        "AND $2 = ANY(u.roles) AND d.kind = 'gateway' AND d.status = 'active'", org_id, role)
    return {r["d"] for r in rows}


async def received_in_thread(conn: asyncpg.Connection, device_id: str, thread_id: str) -> bool:
    """Whether a message of the thread was addressed to this device (a gateway may answer
    into the thread with its filing receipt)."""
    return bool(await conn.fetchval(
        "SELECT EXISTS (SELECT 1 FROM messages WHERE thread_id = $1 AND $2 = ANY(recipients))",
        uuid.UUID(thread_id), uuid.UUID(device_id)))


async def was_delivered(conn: asyncpg.Connection, *, attachment_id: str, message_id: str,
                        thread_id: str, device_id: str) -> bool:
    """Whether ``message_id`` of ``thread_id`` carried the attachment and was addressed to the
    device (the gateway can only file what it received)."""
    aid, mid, tid = _uuid(attachment_id), _uuid(message_id), _uuid(thread_id)
    if aid is None or mid is None or tid is None:
        return False
    return bool(await conn.fetchval(
        "SELECT EXISTS (SELECT 1 FROM messages m JOIN message_attachments ma USING "
        "(message_pk) WHERE m.message_id = $1 AND m.thread_id = $2 AND ma.attachment_id = $3 "
        "AND $4 = ANY(m.recipients))", mid, tid, aid, uuid.UUID(device_id)))


async def get_filing(conn: asyncpg.Connection, attachment_id: str) -> FilingRecord | None:
    row = await conn.fetchrow("SELECT * FROM filings WHERE attachment_id = $1",
                              uuid.UUID(attachment_id))
    if row is None:
        return None
    return FilingRecord(str(row["attachment_id"]), str(row["statement_id"]),
                        str(row["gateway_device_id"]), str(row["message_id"]),
                        str(row["thread_id"]), row["filed_at"], bytes(row["receipt_sha256"]))


async def insert_filing(conn: asyncpg.Connection, *, attachment_id: str, statement_id: str,
                        gateway_device_id: str, message_id: str, thread_id: str,
                        filed_at: dt.datetime, receipt_sha256: bytes, statement: str,
                        now: dt.datetime) -> bool:
    """Record a filing; False when the attachment was already filed (the first one stands)."""
    done = await conn.execute(
        "INSERT INTO filings (attachment_id, statement_id, gateway_device_id, message_id, "
        "thread_id, filed_at, receipt_sha256, statement, recorded_at) "
        "VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9) ON CONFLICT DO NOTHING",
        uuid.UUID(attachment_id), uuid.UUID(statement_id), uuid.UUID(gateway_device_id),
        uuid.UUID(message_id), uuid.UUID(thread_id), filed_at, receipt_sha256, statement, now)
    return bool(done.split()[-1] == "1")


async def mark_fetched(conn: asyncpg.Connection, attachment_id: str, device_id: str,
                       now: dt.datetime) -> bool:
    """Record the device's first download; True the first time only."""
    done = await conn.execute(
        "UPDATE attachment_access SET fetched_at = $3 WHERE attachment_id = $1 "
        "AND device_id = $2 AND fetched_at IS NULL", uuid.UUID(attachment_id),
        uuid.UUID(device_id), now)
    return bool(done.split()[-1] == "1")


def _order(r: asyncpg.Record) -> OrderRecord:
    return OrderRecord(str(r["order_id"]), str(r["device_id"]), str(r["attachment_id"]),
                       str(r["thread_id"]), r["reason"], r["issued_at"], r["confirmed_at"])


async def get_order(conn: asyncpg.Connection, order_id: str, *, for_update: bool = False
                    ) -> OrderRecord | None:
    oid = _uuid(order_id)
    if oid is None:
        return None
    row = await conn.fetchrow("SELECT * FROM expiry_orders WHERE order_id = $1"
                              + (" FOR UPDATE" if for_update else ""), oid)
    return None if row is None else _order(row)


async def orders_for(conn: asyncpg.Connection, attachment_id: str) -> list[OrderRecord]:
    rows = await conn.fetch("SELECT * FROM expiry_orders WHERE attachment_id = $1 "
                            "ORDER BY issued_at, device_id", uuid.UUID(attachment_id))
    return [_order(r) for r in rows]


async def confirm_order(conn: asyncpg.Connection, order_id: str, now: dt.datetime) -> None:
    """Mark the order confirmed and remove its queued notice (it is no longer resent)."""
    row = await conn.fetchrow(
        "UPDATE expiry_orders SET confirmed_at = coalesce(confirmed_at, $2) "
        "WHERE order_id = $1 RETURNING device_id", uuid.UUID(order_id), now)
    if row is not None:
        await conn.execute("DELETE FROM device_notices WHERE device_id = $1 AND dedupe_key = $2",
                           row["device_id"], f"expire:{order_id}")


async def confirmed_devices(conn: asyncpg.Connection, attachment_id: str) -> set[str]:
    rows = await conn.fetch(
        "SELECT DISTINCT device_id::text AS d FROM expiry_orders WHERE attachment_id = $1 "
        "AND confirmed_at IS NOT NULL", uuid.UUID(attachment_id))
    return {r["d"] for r in rows}


async def releasable(conn: asyncpg.Connection, attachment_id: str) -> bool:
    """Filed, and every active device the image was sent to has fetched it or confirmed its
    expiry: the relay's ciphertext is no longer needed (docs/ARCHITECTURE.md §6)."""
    return bool(await conn.fetchval(
        "SELECT EXISTS (SELECT 1 FROM attachment_lifecycle WHERE attachment_id = $1 "
        "AND state <> 'unfiled' AND ciphertext_deleted_at IS NULL) AND NOT EXISTS ("
        "SELECT 1 FROM attachment_access x JOIN devices d USING (device_id) "
        "WHERE x.attachment_id = $1 AND d.status = 'active' AND x.fetched_at IS NULL "
        "AND NOT EXISTS (SELECT 1 FROM expiry_orders o WHERE o.attachment_id = $1 "
        "AND o.device_id = x.device_id AND o.confirmed_at IS NOT NULL))",
        uuid.UUID(attachment_id)))


async def mark_ciphertext_deleted(conn: asyncpg.Connection, attachment_id: str,
                                  now: dt.datetime) -> bool:
    done = await conn.execute(
        "UPDATE attachment_lifecycle SET ciphertext_deleted_at = $2 WHERE attachment_id = $1 "
        "AND ciphertext_deleted_at IS NULL", uuid.UUID(attachment_id), now)
    return bool(done.split()[-1] == "1")
