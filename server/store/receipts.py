"""Recipients' signed receipts (delivered, read, acknowledged), kept per message, device and
kind so a thread's per-recipient status can be listed (PROTOCOL.md §16; PROTOCOL §8, §15). The
signed statement is stored with each row: a client verifies it under the recipient device's key
rather than trusting the relay's word."""

from __future__ import annotations

import dataclasses
import datetime as dt

import asyncpg

__all__ = ["StoredReceipt", "list_for_thread", "store"]


@dataclasses.dataclass(frozen=True)
class StoredReceipt:
    message_id: str
    device_id: str
    user_id: str
    kind: str
    at: dt.datetime
    statement: str


async def store(conn: asyncpg.Connection, r: StoredReceipt, *, thread_id: str,
                now: dt.datetime) -> bool:
    """Keep a receipt; False when this device already sent one of this kind (a retry)."""
    done = await conn.execute(
        "INSERT INTO receipts (message_id, thread_id, device_id, user_id, kind, at, statement, "
        "stored_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT DO NOTHING",
        r.message_id, thread_id, r.device_id, r.user_id, r.kind, r.at, r.statement, now)
    return str(done).endswith(" 1")


async def list_for_thread(conn: asyncpg.Connection, thread_id: str, *,
                          message_id: str | None = None, limit: int = 5000
                          ) -> list[StoredReceipt]:
    rows = await conn.fetch(
        "SELECT message_id::text AS message_id, device_id::text AS device_id, "
        "user_id::text AS user_id, kind, at, statement FROM receipts WHERE thread_id = $1 "
        "AND ($2::uuid IS NULL OR message_id = $2) ORDER BY at, device_id, kind LIMIT $3",
        thread_id, message_id, limit)
    return [StoredReceipt(**dict(r)) for r in rows]
