"""Set-based storage for group commit: a whole batch of sends in two statements.

The send pipeline (server/sends.py) stores many messages per transaction. Doing that row by row
costs several round trips per message; these functions take the whole batch at once (arrays
through ``unnest``), so a batch costs the same round trips whatever its size. Paced traffic
makes batches of one or two messages, where the round trips are the cost, so there are two:
:func:`lock_and_read` (the thread locks, then everything the checks read) and
:func:`store_messages` (everything written, and the wake-up), besides ``BEGIN`` and ``COMMIT``
(docs/BENCHMARKS.md has the figures).

Lock order: :func:`lock_and_read` locks the batch's thread rows in ``thread_id`` order before
it reads anything, so two relay processes storing batches that touch the same threads cannot
deadlock (each waits for the other in the same order). The locks and the reads are one call of
the SQL function ``lock_and_read_batch`` (alembic migration 0014 says why it is a function: its
reads take their snapshot after the locks are granted, never before).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Iterable, Sequence

import asyncpg

from server.store.messages import PRIORITY_RANK, NewMessage
from server.store.threads import DeviceSet

__all__ = [
    "BatchReads",
    "Existing",
    "Stored",
    "lock_and_read",
    "store_messages",
]


@dataclasses.dataclass(frozen=True)
class Existing:
    thread_id: str
    thread_seq: int
    body_hash: bytes
    created_at: dt.datetime


@dataclasses.dataclass(frozen=True)
class BatchReads:
    """What the checks of a batch read once its threads are locked (:func:`lock_and_read`)."""

    orgs: dict[str, str]  # thread -> its organisation, for the threads that exist
    existing: dict[tuple[str, str], Existing]  # (sender device, message id) already stored
    members: dict[str, set[str]]  # thread -> its participants at the moment given
    device_sets: dict[str, DeviceSet]  # thread -> its participants' devices
    routed: frozenset[str]  # threads with on-call work: a role, or a reseal request pending


async def lock_and_read(conn: asyncpg.Connection, thread_ids: Iterable[str],
                        keys: Sequence[tuple[str, str]], at: dt.datetime) -> BatchReads:
    """Lock the threads' rows in id order (within the caller's transaction), then read the
    retries among ``keys`` (sender device, message id), each existing thread's organisation,
    participants at ``at``, device sets and on-call work: one round trip."""
    rows = await conn.fetch(
        "SELECT * FROM lock_and_read_batch($1::uuid[], $2::uuid[], $3::uuid[], $4)",
        [k[0] for k in keys], [k[1] for k in keys], sorted(set(thread_ids)), at)
    orgs: dict[str, str] = {}
    existing: dict[tuple[str, str], Existing] = {}
    members: dict[str, set[str]] = {}
    by_user: dict[str, list[tuple[str, bool]]] = {}
    device_orgs: dict[str, str] = {}
    routed = set()
    for r in rows:
        k = r["k"]
        if k == "o":
            orgs[r["a"]] = r["b"]
            members.setdefault(r["a"], set())
        elif k == "m":
            existing[(r["a"], r["b"])] = Existing(r["c"], int(r["n"]), bytes(r["h"]), r["at"])
        elif k == "p":
            members.setdefault(r["a"], set()).add(r["b"])
        elif k == "d":
            by_user.setdefault(r["a"], []).append((r["b"], r["f"]))
            device_orgs[r["b"]] = r["c"]
        else:
            routed.add(r["a"])
    sets = {}
    for tid, us in members.items():
        devs = [d for u in us for d in by_user.get(u, ())]
        sets[tid] = DeviceSet(active=frozenset(d for d, a in devs if a),
                              inactive=frozenset(d for d, a in devs if not a),
                              orgs={d: device_orgs[d] for d, _ in devs})
    return BatchReads(orgs, existing, members, sets, frozenset(routed))


@dataclasses.dataclass(frozen=True)
class Stored:
    message_pk: int
    thread_seq: int


# One statement: each thread's counter advanced by its count, the messages numbered on from it
# in batch order (submission order: thread order is kept), one delivery per recipient device in
# the same order, and the notifications (delivered by Postgres only if the transaction commits).
_STORE_MESSAGES = """
WITH x AS (
    SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::uuid[], $5::text[],
                         $6::smallint[], $7::text[], $8::uuid[], $9::bytea[], $10::text[],
                         $11::bytea[]) WITH ORDINALITY
        AS x(mid, tid, su, sd, pr, rank, pu, c, h, r, s, ord)
), n AS (
    SELECT tid, count(*) AS n FROM x GROUP BY tid
), seq AS (
    UPDATE threads t SET last_seq = t.last_seq + n.n FROM n WHERE t.thread_id = n.tid
    RETURNING t.thread_id AS tid, t.last_seq - n.n AS base
), m AS (
    INSERT INTO messages (message_id, thread_id, thread_seq, sender_user_id, sender_device_id,
                          priority, purpose, consent_id, body_hash, recipients, sealed, size,
                          created_at)
    SELECT x.mid, x.tid, seq.base + row_number() OVER (PARTITION BY x.tid ORDER BY x.ord),
           x.su, x.sd, x.pr, x.pu, x.c, x.h, x.r::uuid[], x.s, octet_length(x.s), $12
      FROM x JOIN seq USING (tid) ORDER BY x.ord
    RETURNING message_pk, sender_device_id, message_id, thread_seq, recipients, priority
), d AS (
    INSERT INTO deliveries (delivery_id, device_id, message_pk, priority, created_at)
    SELECT gen_random_uuid(), r.dev, m.message_pk, x.rank, $12
      FROM m JOIN x ON x.sd = m.sender_device_id AND x.mid = m.message_id
     CROSS JOIN LATERAL unnest(m.recipients) WITH ORDINALITY AS r(dev, k)
     ORDER BY m.message_pk, r.k
), woken AS (
    SELECT count(pg_notify($13, p)) AS n FROM unnest($14::text[]) AS p
)
SELECT m.message_pk, m.sender_device_id::text AS d, m.message_id::text AS mid, m.thread_seq
  FROM m CROSS JOIN woken
"""


async def store_messages(conn: asyncpg.Connection, msgs: Sequence[NewMessage],
                         now: dt.datetime, *, channel: str, notifications: Sequence[str]
                         ) -> dict[tuple[str, str], Stored]:
    """Store messages (in batch order) with their deliveries and send ``notifications`` on
    ``channel``, in one statement; returns each message's primary key and thread number.
    The threads must be locked (:func:`lock_threads`)."""
    if not msgs:
        return {}
    cols: list[list[object]] = [[] for _ in range(11)]
    for m in msgs:
        for i, v in enumerate((m.message_id, m.thread_id, m.sender_user_id, m.sender_device_id,
                               m.priority, PRIORITY_RANK[m.priority], m.purpose, m.consent_id,
                               m.body_hash, "{" + ",".join(m.recipients) + "}", m.sealed)):
            cols[i].append(v)
    rows = await conn.fetch(_STORE_MESSAGES, *cols, now, channel, list(notifications))
    return {(r["d"], r["mid"]): Stored(int(r["message_pk"]), int(r["thread_seq"]))
            for r in rows}
