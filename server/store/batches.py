"""Set-based storage for group commit: a whole batch of sends in three statements.

The send pipeline (server/sends.py) stores many messages per transaction. Doing that row by row
costs several round trips per message; these functions take the whole batch at once (arrays
through ``unnest``), so a batch costs the same round trips whatever its size. Paced traffic
makes batches of one or two messages, where the round trips are the cost, so there are three:
:func:`lock_threads`, :func:`read_batch` (everything the checks read) and
:func:`store_messages` (everything written, and the wake-up), besides ``BEGIN`` and ``COMMIT``
(docs/BENCHMARKS.md has the figures).

Lock order: :func:`lock_threads` locks the batch's thread rows in ``thread_id`` order before
anything else, so two relay processes storing batches that touch the same threads cannot
deadlock (each waits for the other in the same order).
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
    "lock_threads",
    "read_batch",
    "store_messages",
]


async def lock_threads(conn: asyncpg.Connection, thread_ids: Iterable[str]) -> dict[str, str]:
    """Lock the threads' rows in id order; returns thread id → organisation for those that
    exist."""
    rows = await conn.fetch(
        "SELECT thread_id::text AS t, org_id FROM threads WHERE thread_id = ANY($1::uuid[]) "
        "ORDER BY thread_id FOR UPDATE", sorted(set(thread_ids)))
    return {r["t"]: r["org_id"] for r in rows}


@dataclasses.dataclass(frozen=True)
class Existing:
    thread_id: str
    thread_seq: int
    body_hash: bytes
    created_at: dt.datetime


@dataclasses.dataclass(frozen=True)
class BatchReads:
    """What the checks of a batch read, in one statement (:func:`read_batch`)."""

    existing: dict[tuple[str, str], Existing]  # (sender device, message id) already stored
    members: dict[str, set[str]]  # thread -> its participants at the moment given
    device_sets: dict[str, DeviceSet]  # thread -> its participants' devices
    routed: frozenset[str]  # threads with on-call work: a role, or a reseal request pending


# One statement, its parts told apart by ``k``: the messages already stored under the batch's
# keys (retries); the participants at ``$4`` by the SQL function ``thread_participants`` (an
# alembic migration creates it; server.store.threads reads the same definition); their devices,
# active or stale, with their organisations; and the threads that have on-call work
# (server/oncall.py ``after_store`` reads nothing for the others).
_READ_BATCH = """
WITH p AS (SELECT thread_id, user_id FROM thread_participants($3::uuid[], $4))
SELECT 'm' AS k, m.sender_device_id::text AS a, m.message_id::text AS b,
       m.thread_id::text AS c, m.thread_seq AS n, m.body_hash AS h, m.created_at AS at,
       NULL::boolean AS f
  FROM messages m JOIN unnest($1::uuid[], $2::uuid[]) AS x(d, m)
    ON m.sender_device_id = x.d AND m.message_id = x.m
UNION ALL
SELECT 'p', p.thread_id::text, p.user_id::text, NULL, NULL, NULL, NULL, NULL FROM p
UNION ALL
SELECT 'd', d.user_id::text, d.device_id::text, u.org_id, NULL, NULL, NULL,
       (d.status = 'active' AND u.status = 'active')
  FROM devices d JOIN users u USING (user_id) WHERE d.user_id IN (SELECT user_id FROM p)
UNION ALL
SELECT 'r', t.tid::text, NULL, NULL, NULL, NULL, NULL, NULL FROM unnest($3::uuid[]) AS t(tid)
 WHERE EXISTS (SELECT 1 FROM thread_roles r WHERE r.thread_id = t.tid AND r.removed_at IS NULL)
    OR EXISTS (SELECT 1 FROM reseal_requests q WHERE q.thread_id = t.tid AND q.done_at IS NULL)
"""


async def read_batch(conn: asyncpg.Connection, thread_ids: Sequence[str],
                     keys: Sequence[tuple[str, str]], at: dt.datetime) -> BatchReads:
    """Retries, participants at ``at``, device sets and on-call work of a batch's threads."""
    rows = await conn.fetch(_READ_BATCH, [k[0] for k in keys], [k[1] for k in keys],
                            list(thread_ids), at)
    existing: dict[tuple[str, str], Existing] = {}
    members: dict[str, set[str]] = {t: set() for t in thread_ids}
    by_user: dict[str, list[tuple[str, bool]]] = {}
    orgs: dict[str, str] = {}
    routed = set()
    for r in rows:
        k = r["k"]
        if k == "m":
            existing[(r["a"], r["b"])] = Existing(r["c"], int(r["n"]), bytes(r["h"]), r["at"])
        elif k == "p":
            members[r["a"]].add(r["b"])
        elif k == "d":
            by_user.setdefault(r["a"], []).append((r["b"], r["f"]))
            orgs[r["b"]] = r["c"]
        else:
            routed.add(r["a"])
    sets = {}
    for tid, us in members.items():
        devs = [d for u in us for d in by_user.get(u, ())]
        sets[tid] = DeviceSet(active=frozenset(d for d, a in devs if a),
                              inactive=frozenset(d for d, a in devs if not a),
                              orgs={d: orgs[d] for d, _ in devs})
    return BatchReads(existing, members, sets, frozenset(routed))


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
