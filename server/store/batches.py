"""Set-based storage for group commit: a whole batch of sends in a handful of statements.

The send pipeline (server/sends.py) stores many messages per transaction. Doing that row by row
costs several round trips per message; these functions take the whole batch at once (arrays
through ``unnest``), so a batch costs the same few round trips whatever its size
(docs/BENCHMARKS.md has the figures).

Lock order: :func:`lock_threads` locks the batch's thread rows in ``thread_id`` order before
anything else, so two relay processes storing batches that touch the same threads cannot
deadlock (each waits for the other in the same order).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid
from collections.abc import Iterable, Mapping, Sequence

import asyncpg

from server.store.messages import PRIORITY_RANK, NewMessage
from server.store.threads import DeviceSet

__all__ = [
    "Existing",
    "device_sets",
    "existing_messages",
    "insert_deliveries",
    "insert_messages",
    "lock_threads",
    "participants",
    "reserve_sequence_numbers",
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


async def existing_messages(conn: asyncpg.Connection, keys: Sequence[tuple[str, str]]
                            ) -> dict[tuple[str, str], Existing]:
    """Messages already stored under these (sender device, message id) pairs."""
    if not keys:
        return {}
    rows = await conn.fetch(
        "SELECT m.sender_device_id::text AS d, m.message_id::text AS m, "
        "m.thread_id::text AS t, m.thread_seq, m.body_hash, m.created_at "
        "FROM messages m JOIN unnest($1::uuid[], $2::uuid[]) AS k(d, m) "
        "ON m.sender_device_id = k.d AND m.message_id = k.m",
        [k[0] for k in keys], [k[1] for k in keys])
    return {(r["d"], r["m"]): Existing(r["t"], int(r["thread_seq"]), bytes(r["body_hash"]),
                                       r["created_at"]) for r in rows}


async def participants(conn: asyncpg.Connection, thread_ids: Sequence[str],
                       at: dt.datetime) -> dict[str, set[str]]:
    """Participants of many threads at ``at``: the SQL function ``thread_participants`` (an
    alembic migration creates it), the one definition server.store.threads reads too."""
    rows = await conn.fetch(
        "SELECT thread_id::text AS thread_id, user_id::text AS user_id "
        "FROM thread_participants($1::uuid[], $2)", list(thread_ids), at)
    out: dict[str, set[str]] = {t: set() for t in thread_ids}
    for r in rows:
        out[str(r["thread_id"])].add(str(r["user_id"]))
    return out


async def device_sets(conn: asyncpg.Connection, members: Mapping[str, set[str]]
                      ) -> dict[str, DeviceSet]:
    """Active and inactive devices of each thread's participants (one query)."""
    users = sorted({u for us in members.values() for u in us})
    rows = await conn.fetch(
        "SELECT d.user_id::text AS u, d.device_id::text AS d, u.org_id AS o, "
        "(d.status = 'active' AND u.status = 'active') AS active "
        "FROM devices d JOIN users u USING (user_id) WHERE d.user_id = ANY($1::uuid[])", users)
    by_user: dict[str, list[tuple[str, bool]]] = {}
    orgs: dict[str, str] = {}
    for r in rows:
        by_user.setdefault(r["u"], []).append((r["d"], r["active"]))
        orgs[r["d"]] = r["o"]
    out = {}
    for tid, us in members.items():
        devs = [d for u in us for d in by_user.get(u, ())]
        out[tid] = DeviceSet(active=frozenset(d for d, a in devs if a),
                             inactive=frozenset(d for d, a in devs if not a),
                             orgs={d: orgs[d] for d, _ in devs})
    return out


async def reserve_sequence_numbers(conn: asyncpg.Connection, counts: Mapping[str, int]
                                   ) -> dict[str, int]:
    """Advance each thread's counter by its count; returns the first number reserved."""
    if not counts:
        return {}
    tids = sorted(counts)
    rows = await conn.fetch(
        "UPDATE threads t SET last_seq = t.last_seq + x.n "
        "FROM unnest($1::uuid[], $2::bigint[]) AS x(tid, n) WHERE t.thread_id = x.tid "
        "RETURNING t.thread_id::text AS t, t.last_seq", tids, [counts[t] for t in tids])
    return {r["t"]: int(r["last_seq"]) - counts[r["t"]] + 1 for r in rows}


async def insert_messages(conn: asyncpg.Connection, msgs: Sequence[tuple[NewMessage, int]],
                          now: dt.datetime) -> dict[tuple[str, str], int]:
    """Insert (message, thread sequence number) pairs; returns their primary keys."""
    if not msgs:
        return {}
    cols: list[list[object]] = [[] for _ in range(12)]
    for m, seq in msgs:
        for i, v in enumerate((m.message_id, m.thread_id, seq, m.sender_user_id,
                               m.sender_device_id, m.priority, m.purpose, m.consent_id,
                               m.body_hash, "{" + ",".join(m.recipients) + "}", m.sealed,
                               len(m.sealed))):
            cols[i].append(v)
    rows = await conn.fetch(
        "INSERT INTO messages (message_id, thread_id, thread_seq, sender_user_id, "
        "sender_device_id, priority, purpose, consent_id, body_hash, recipients, sealed, size, "
        "created_at) SELECT x.mid, x.tid, x.seq, x.su, x.sd, x.pr, x.pu, x.c, x.h, "
        "x.r::uuid[], x.s, x.sz, $13 FROM unnest($1::uuid[], $2::uuid[], $3::bigint[], "
        "$4::uuid[], $5::uuid[], $6::text[], $7::text[], $8::uuid[], $9::bytea[], $10::text[], "
        "$11::bytea[], $12::int[]) AS x(mid, tid, seq, su, sd, pr, pu, c, h, r, s, sz) "
        "RETURNING message_pk, sender_device_id::text AS d, message_id::text AS m",
        *cols, now)
    return {(r["d"], r["m"]): int(r["message_pk"]) for r in rows}


async def insert_deliveries(conn: asyncpg.Connection,
                            rows: Sequence[tuple[str, int, str]], now: dt.datetime) -> None:
    """Insert (device id, message pk, priority) delivery rows."""
    if not rows:
        return
    await conn.execute(
        "INSERT INTO deliveries (delivery_id, device_id, message_pk, priority, created_at) "
        "SELECT * , $5 FROM unnest($1::uuid[], $2::uuid[], $3::bigint[], $4::smallint[])",
        [uuid.uuid4() for _ in rows], [r[0] for r in rows], [r[1] for r in rows],
        [PRIORITY_RANK[r[2]] for r in rows], now)
