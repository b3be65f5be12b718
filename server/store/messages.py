"""Sealed messages and per-device delivery queues.

A send stores the encoded SealedMessage once and one delivery row per recipient device, and
takes the thread's next sequence number, in one transaction: the relay answers ``accepted``
only after that transaction commits (docs/ARCHITECTURE.md §2, "accepted means durable"). A delivery
row is removed only when its device acknowledges it (at-least-once; clients de-duplicate by message
id). Sends are idempotent on (sender device, message id): a retry with the same bytes returns
the original acceptance, the same id with different bytes is refused and overwrites nothing.

The records made once or more per message on the send and delivery paths (:class:`NewMessage`,
:class:`Accepted`, :class:`Delivery`, :class:`NewDelivery`, and server/store/batches.py's
``Stored`` and ``StoredDelivery``) are frozen msgspec structs rather than frozen dataclasses: a
frozen dataclass sets each field through ``object.__setattr__``, 1.3 µs for eleven fields where
a struct takes 0.1-0.2 µs (docs/BENCHMARKS.md, round 19). Both are immutable and compare by
value; a changed copy is ``msgspec.structs.replace``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Sequence

import asyncpg
import msgspec

__all__ = [
    "DROPPED_AFTER_SENDING",
    "Accepted",
    "Delivery",
    "DeliveryRequest",
    "MessageRef",
    "NewDelivery",
    "NewMessage",
    "Notice",
    "ack",
    "add_notices",
    "drop_notices",
    "drop_queues",
    "dropped_details",
    "fetch_deliveries",
    "fetch_next_deliveries",
    "fetch_notices",
    "message_ref",
    "purge_delivered_ciphertext",
    "queue_depth",
    "queue_order",
]

PRIORITY_RANK = {"urgent": 0, "routine": 1}


class NewMessage(msgspec.Struct, frozen=True):  # a struct: the module's docstring says why
    message_id: str
    thread_id: str
    sender_user_id: str
    sender_device_id: str
    priority: str
    purpose: str
    consent_id: str | None
    body_hash: bytes
    sealed: bytes
    recipients: Sequence[str]


class Accepted(msgspec.Struct, frozen=True):  # a struct: the module's docstring says why
    message_id: str
    thread_id: str
    thread_seq: int
    server_time: dt.datetime
    duplicate: bool


class Delivery(msgspec.Struct, frozen=True):  # a struct: the module's docstring says why
    delivery_pk: int
    delivery_id: str
    thread_seq: int
    priority: str
    received_at: dt.datetime
    sealed: bytes


class NewDelivery(msgspec.Struct, frozen=True):  # a struct: the module's docstring says why
    """A delivery its relay process has just stored (server/sends.py), with what the device's
    pump needs to write it without reading it back: its thread, and the ids of the device's
    other deliveries still queued when it was stored (alembic migration 0017)."""

    device_id: str
    thread_id: str
    delivery: Delivery
    queued: tuple[str, ...] | None  # None: not listed, or too many (server/store/batches.py)


def queue_order(new: Sequence[NewDelivery]) -> list[NewDelivery]:
    """``new`` (one device's) in the order :func:`fetch_next_deliveries` reads a queue, as if
    these were all it held: within a thread by thread number; across threads by the most
    urgent rank of a delivery and every later one of its thread, then by the first queued
    delivery of that tail, then thread id."""
    by_thread: dict[str, list[NewDelivery]] = {}
    for n in new:
        by_thread.setdefault(n.thread_id, []).append(n)
    keyed: list[tuple[tuple[int, int, str, int], NewDelivery]] = []
    for tid, items in by_thread.items():
        items.sort(key=lambda n: n.delivery.thread_seq, reverse=True)
        rank, pk = len(PRIORITY_RANK), None
        for n in items:  # latest first: each takes the minimum over itself and those after it
            rank = min(rank, PRIORITY_RANK[n.delivery.priority])
            pk = n.delivery.delivery_pk if pk is None else min(pk, n.delivery.delivery_pk)
            keyed.append(((rank, pk, tid, n.delivery.thread_seq), n))
    keyed.sort(key=lambda k: k[0])
    return [n for _, n in keyed]


_NEXT_DELIVERIES = """
    SELECT x.ord, r.delivery_pk, r.delivery_id::text AS delivery_id, r.thread_seq, r.priority,
           r.created_at, r.sealed
      FROM unnest($1::uuid[], $2::int[]) WITH ORDINALITY AS x(device_id, lim, ord)
      CROSS JOIN LATERAL (
        SELECT ranked.* FROM (
            SELECT d.delivery_pk, d.delivery_id, d.created_at, m.thread_id, m.thread_seq,
                   m.priority,  m.sealed,
                   min(d.priority) OVER later AS eff_rank,
                   min(d.delivery_pk) OVER later AS eff_pk
              FROM deliveries d
              -- Each delivery's message by its key. OFFSET 0 keeps this a lookup per
              -- delivery (the planner may not turn it into a join that walks messages in
              -- thread order, as a plan made while the tables were empty did; server/db.py).
              CROSS JOIN LATERAL (SELECT mm.thread_id, mm.thread_seq, mm.priority, mm.sealed
                                    FROM messages mm WHERE mm.message_pk = d.message_pk
                                  OFFSET 0) m
             WHERE d.device_id = x.device_id AND NOT d.held
               -- Not already written: the pairs of every device read, in one hash table
               -- built once per read (a subquery that refers to nothing outside it: a
               -- "hashed SubPlan"), not a walk of all of them for each delivery looked at.
               AND (x.device_id, d.delivery_id) NOT IN (
                   SELECT s.device_id, s.delivery_id
                     FROM unnest($3::uuid[], $4::uuid[]) AS s(device_id, delivery_id))
            WINDOW later AS (PARTITION BY m.thread_id ORDER BY m.thread_seq DESC
                             ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)
        ) ranked
        ORDER BY eff_rank, eff_pk, thread_id, thread_seq LIMIT x.lim
      ) r
     ORDER BY x.ord, r.eff_rank, r.eff_pk, r.thread_id, r.thread_seq
"""


@dataclasses.dataclass(frozen=True)
class DeliveryRequest:
    """One device's read: its next ``limit`` deliveries, leaving out ``sent`` (the ids already
    written on its connection and not yet acknowledged)."""

    device_id: str
    sent: Sequence[str]
    limit: int


async def fetch_next_deliveries(conn: asyncpg.Connection, requests: Sequence[DeliveryRequest]
                                ) -> list[list[Delivery]]:
    """The next deliveries of several devices in one query, one list per request, each in the
    order of :func:`fetch_deliveries` with ``sent``: urgent before routine *across* threads,
    never within one. A delivery's effective rank is the most urgent rank of
    itself and every later message of its thread still waiting, so a routine message ahead of
    an urgent one in the same thread is carried forward with it rather than overtaken: thread
    order is kept (ties within a thread break on ``thread_seq``), and between threads urgent
    goes first, then oldest first (by the first queued delivery of the thread's waiting
    tail)."""
    out: list[list[Delivery]] = [[] for _ in requests]
    if not requests:
        return out
    rows = await conn.fetch(
        _NEXT_DELIVERIES, [r.device_id for r in requests], [r.limit for r in requests],
        [r.device_id for r in requests for _ in r.sent],
        [d for r in requests for d in r.sent])
    for r in rows:
        out[r["ord"] - 1].append(Delivery(r["delivery_pk"], r["delivery_id"], r["thread_seq"],
                                          r["priority"], r["created_at"], bytes(r["sealed"])))
    return out


async def fetch_deliveries(conn: asyncpg.Connection, device_id: str, *, after_pk: int = 0,
                           limit: int, sent: Sequence[str] | None = None) -> list[Delivery]:
    """The device's next deliveries.

    Without ``sent``: queue order after the cursor ``after_pk`` (the original behaviour).
    With ``sent``: as :func:`fetch_next_deliveries` for this one device.
    """
    if sent is not None:
        return (await fetch_next_deliveries(conn, [DeliveryRequest(device_id, sent, limit)]))[0]
    rows = await conn.fetch(
        "SELECT d.delivery_pk, d.delivery_id::text AS delivery_id, m.thread_seq, m.priority, "
        "d.created_at, m.sealed FROM deliveries d JOIN messages m USING (message_pk) "
        "WHERE d.device_id = $1 AND NOT d.held AND d.delivery_pk > $2 "
        "ORDER BY d.delivery_pk LIMIT $3", device_id, after_pk, limit)
    return [Delivery(r["delivery_pk"], r["delivery_id"], r["thread_seq"], r["priority"],
                     r["created_at"], bytes(r["sealed"])) for r in rows]


async def ack(conn: asyncpg.Connection, device_id: str, delivery_ids: Sequence[str]
              ) -> list[tuple[str, str, str]]:
    """Remove acknowledged deliveries of this device; returns (delivery id, message id,
    sender device id) of those removed. Ids of other devices' deliveries are never touched."""
    rows = await conn.fetch(
        "DELETE FROM deliveries d USING messages m WHERE d.message_pk = m.message_pk "
        "AND d.device_id = $1 AND d.delivery_id = ANY($2::uuid[]) "
        "RETURNING d.delivery_id::text AS delivery_id, m.message_id::text AS message_id, "
        "m.sender_device_id::text AS sender", device_id, list(delivery_ids))
    return [(r["delivery_id"], r["message_id"], r["sender"]) for r in rows]


async def queue_depth(conn: asyncpg.Connection, device_id: str) -> int:
    return int(await conn.fetchval(
        "SELECT count(*) FROM deliveries WHERE device_id = $1 AND NOT held", device_id))


PURGE_CHUNK = 1000

# The sweep's backstop (server/purge.py). A message's ciphertext goes in the transaction that
# removes its last queued delivery (alembic migration 0021: a trigger on ``deliveries``); what
# that leaves is a message that never had a delivery, and what a relay before that revision
# kept. The sweep looks at each message once, in key order, from where it last stopped
# (``purge_progress``), and only at keys it read at its previous sweep: a send still
# committing then has committed since. Each message is looked up in the queue by itself (a
# subquery with LIMIT, which the planner cannot turn into a join that reads the whole queue;
# docs/BENCHMARKS.md, round 21).
_PURGE_SPAN = """
UPDATE messages m SET sealed = NULL
 WHERE m.message_pk > $1 AND m.message_pk <= $2 AND m.sealed IS NOT NULL
   AND (SELECT true FROM deliveries d WHERE d.message_pk = m.message_pk LIMIT 1) IS NULL
"""


async def purge_delivered_ciphertext(conn: asyncpg.Connection, *,
                                     chunk: int = PURGE_CHUNK) -> int:
    """Drop the ciphertext of the messages stored since the previous sweep began that no
    delivery is queued for; the row stays for idempotent retries, receipts and thread order.
    In spans of ``chunk`` keys, each its own transaction, so that no lock is held long; two
    relay processes take turns on ``purge_progress``. Returns how many."""
    purged = 0
    while True:
        async with conn.transaction():
            # Each lookup by its index, though the statistics say the queue is empty
            # (server/db.py says why the hot pool plans so); for this statement only. And no
            # wait for the disk at COMMIT (PostgreSQL manual, "Asynchronous Commit"): a purge
            # a database crash loses is done again (its progress is lost with it).
            await conn.execute("SET LOCAL enable_seqscan = off; "
                               "SET LOCAL synchronous_commit = off")
            low, high = await conn.fetchrow(
                "SELECT swept_to, next_to FROM purge_progress FOR UPDATE")
            if low >= high:
                await conn.execute(
                    "UPDATE purge_progress SET next_to = greatest(next_to, "
                    "(SELECT coalesce(max(message_pk), 0) FROM messages))")
                return purged
            upto = min(low + chunk, high)
            status = await conn.execute(_PURGE_SPAN, low, upto)
            purged += int(status.split()[-1])
            await conn.execute("UPDATE purge_progress SET swept_to = $1", upto)


async def drop_queues(conn: asyncpg.Connection, device_ids: Sequence[str]
                      ) -> dict[str, list[str]]:
    """Remove everything queued for ``device_ids`` (revoked: none of them will ever be sent
    anything again): their deliveries, held or not, and their notices. Returns, for each
    device that had deliveries, the ids of the messages they carried."""
    if not device_ids:
        return {}
    rows = await conn.fetch(
        "DELETE FROM deliveries d USING messages m WHERE d.message_pk = m.message_pk "
        "AND d.device_id = ANY($1::uuid[]) "
        "RETURNING d.device_id::text AS device_id, m.message_id::text AS message_id",
        list(device_ids))
    await conn.execute("DELETE FROM device_notices WHERE device_id = ANY($1::uuid[])",
                       list(device_ids))
    dropped: dict[str, list[str]] = {}
    for r in rows:
        dropped.setdefault(r["device_id"], []).append(r["message_id"])
    return {d: sorted(ids) for d, ids in dropped.items()}


def dropped_details(dropped: dict[str, list[str]], device_id: str) -> dict[str, object]:
    """The audit details of what was dropped for ``device_id``: how many deliveries, and the
    ids (at most 64) of the messages they carried; ids only, never a header or a byte of
    ciphertext."""
    ids = dropped.get(device_id, [])
    return {"dropped_deliveries": len(ids), "dropped_messages": sorted(set(ids))[:64]}


@dataclasses.dataclass(frozen=True)
class Notice:
    notice_pk: int
    kind: str
    frame: bytes

    @property
    def kept(self) -> bool:
        """Whether it stays queued after it is written to the socket (an order, until the
        device confirms it; see DROPPED_AFTER_SENDING)."""
        return self.kind not in DROPPED_AFTER_SENDING


async def add_notices(conn: asyncpg.Connection, device_ids: Sequence[str], kind: str,
                      frame: bytes, *, dedupe_key: str | None = None,
                      now: dt.datetime) -> None:
    """Queue a relay-to-device frame (receipt notice, order...) for devices, durable until sent
    (or, for orders, until confirmed)."""
    await conn.executemany(
        "INSERT INTO device_notices (device_id, kind, frame, dedupe_key, created_at) "
        "VALUES ($1, $2, $3, $4, $5) ON CONFLICT (device_id, dedupe_key) DO NOTHING",
        [(d, kind, frame, dedupe_key, now) for d in device_ids])


async def fetch_notices(conn: asyncpg.Connection, device_id: str, *, skip: Sequence[int] = (),
                        limit: int) -> list[Notice]:
    """The device's queued notices in number order, except those in ``skip`` (the orders this
    connection already wrote). Not a "numbers after the last one read" cursor: a notice's number
    is drawn when it is inserted, not when it commits, so a notice can become visible after a
    higher-numbered one has been read, and a cursor would pass it by."""
    rows = await conn.fetch(
        "SELECT notice_pk, kind, frame FROM device_notices WHERE device_id = $1 "
        "AND notice_pk <> ALL($2::bigint[]) ORDER BY notice_pk LIMIT $3",
        device_id, list(skip), limit)
    return [Notice(r["notice_pk"], r["kind"], bytes(r["frame"])) for r in rows]


DROPPED_AFTER_SENDING = ("receipt", "withdrawn", "escalation_notice", "filed", "not_received")
"""Notice kinds removed once written to the device's socket. Orders (``expire_order``,
``wipe_order``) are not: they stay until the device confirms them (server/store/expiry.py); nor
is ``reseal_request``, which stays until a holder answers it (server/oncall.py)."""


async def drop_notices(conn: asyncpg.Connection, device_id: str, notice_pks: Sequence[int]
                       ) -> None:
    await conn.execute(
        "DELETE FROM device_notices WHERE device_id = $1 AND notice_pk = ANY($2::bigint[]) "
        "AND kind = ANY($3::text[])", device_id, list(notice_pks), list(DROPPED_AFTER_SENDING))


@dataclasses.dataclass(frozen=True)
class MessageRef:
    sender_user_id: str
    sender_device_id: str
    recipients: frozenset[str]


async def message_ref(conn: asyncpg.Connection, thread_id: str, message_id: str
                      ) -> MessageRef | None:
    row = await conn.fetchrow(
        "SELECT sender_user_id::text AS u, sender_device_id::text AS d, "
        "recipients::text[] AS r FROM messages WHERE thread_id = $1 AND message_id = $2 "
        "LIMIT 1", thread_id, message_id)
    if row is None:
        return None
    return MessageRef(row["u"], row["d"], frozenset(row["r"]))
