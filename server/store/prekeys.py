"""Signed prekeys (one per device, replaced on rotation) and one-time prekeys.

A one-time prekey is handed out at most once (docs/ARCHITECTURE.md §4): :func:`claim_one_time` takes
the lowest unclaimed row with ``FOR UPDATE SKIP LOCKED`` and marks it claimed in the same
statement, so concurrent claimers never get the same key and never wait on each other. The
claimed row is kept (its text erased, its claimer and time kept) so the device cannot reuse the
id, and so that claims can be counted per requester and per target over a window
(server/prekeys.py).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

import asyncpg

from protocol.errors import ErrorCode
from server.errors import Conflict
from server.store import at

__all__ = [
    "add_one_time",
    "claim_one_time",
    "claims_since",
    "count_one_time",
    "get_signed",
    "get_signed_many",
    "set_signed",
]


async def set_signed(conn: asyncpg.Connection, device_id: str, prekey_id: int, prekey: str, *,
                     now: float) -> None:
    await conn.execute(
        "INSERT INTO signed_prekeys (device_id, prekey_id, prekey, uploaded_at) "
        "VALUES ($1, $2, $3, $4) ON CONFLICT (device_id) DO UPDATE "
        "SET prekey_id = EXCLUDED.prekey_id, prekey = EXCLUDED.prekey, "
        "uploaded_at = EXCLUDED.uploaded_at",
        uuid.UUID(device_id), prekey_id, prekey, at(now))


async def get_signed(conn: asyncpg.Connection, device_id: str) -> str | None:
    prekey: str | None = await conn.fetchval(
        "SELECT prekey FROM signed_prekeys WHERE device_id = $1", uuid.UUID(device_id))
    return prekey


async def get_signed_many(conn: asyncpg.Connection,
                          device_ids: Sequence[str]) -> dict[str, str]:
    rows = await conn.fetch(
        "SELECT device_id, prekey FROM signed_prekeys WHERE device_id = ANY($1::uuid[])",
        [uuid.UUID(d) for d in device_ids])
    return {str(r["device_id"]): r["prekey"] for r in rows}


async def add_one_time(conn: asyncpg.Connection, device_id: str,
                       prekeys: Sequence[tuple[int, str]]) -> None:
    """Store a batch; prekey_duplicate if an id repeats within it or was ever stored before
    (nothing of the batch is stored then)."""
    ids = [pid for pid, _ in prekeys]
    if len(set(ids)) != len(ids):
        raise Conflict(ErrorCode.PREKEY_DUPLICATE, "a prekey id is repeated in the batch")
    inserted = await conn.fetch(
        "INSERT INTO one_time_prekeys (device_id, prekey_id, prekey) "
        "SELECT $1, * FROM unnest($2::bigint[], $3::text[]) "
        "ON CONFLICT (device_id, prekey_id) DO NOTHING RETURNING prekey_id",
        uuid.UUID(device_id), ids, [p for _, p in prekeys])
    if len(inserted) != len(ids):
        # The caller's transaction rolls the partial insert back.
        raise Conflict(ErrorCode.PREKEY_DUPLICATE, "a prekey id was already uploaded")


async def count_one_time(conn: asyncpg.Connection, device_id: str) -> int:
    return int(await conn.fetchval(
        "SELECT count(*) FROM one_time_prekeys WHERE device_id = $1 AND claimed_at IS NULL",
        uuid.UUID(device_id)))


async def claim_one_time(conn: asyncpg.Connection, device_id: str, *, by: str | None = None,
                         now: float) -> str | None:
    """Hand out one unclaimed one-time prekey of the device to device ``by``, or None when none
    is left."""
    prekey: str | None = await conn.fetchval(
        "WITH c AS (SELECT device_id, prekey_id, prekey FROM one_time_prekeys "
        "WHERE device_id = $1 AND claimed_at IS NULL ORDER BY prekey_id LIMIT 1 "
        "FOR UPDATE SKIP LOCKED) "
        "UPDATE one_time_prekeys o SET claimed_at = $2, claimed_by = $3, prekey = NULL FROM c "
        "WHERE o.device_id = c.device_id AND o.prekey_id = c.prekey_id RETURNING c.prekey",
        uuid.UUID(device_id), at(now), uuid.UUID(by) if by else None)
    return prekey


async def claims_since(conn: asyncpg.Connection, device_id: str, *, since: float,
                       by: str | None = None) -> tuple[int, float | None]:
    """How many one-time prekeys of the device were claimed after ``since`` (by device ``by``
    only, if given), and when the oldest of them was."""
    row = await conn.fetchrow(
        "SELECT count(*) AS n, min(claimed_at) AS oldest FROM one_time_prekeys "
        "WHERE device_id = $1 AND claimed_at > $2 AND ($3::uuid IS NULL OR claimed_by = $3)",
        uuid.UUID(device_id), at(since), uuid.UUID(by) if by else None)
    oldest = row["oldest"]
    return int(row["n"]), None if oldest is None else oldest.timestamp()
