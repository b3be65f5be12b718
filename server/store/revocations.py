"""The newest organisation-signed revocation list of each organisation, as received."""

from __future__ import annotations

import asyncpg

from server.store import at

__all__ = ["all_lists", "get_latest", "put"]


async def get_latest(conn: asyncpg.Connection, org_id: str, *,
                     for_update: bool = False) -> tuple[int, str] | None:
    """(number, list) held for the organisation, or None."""
    sql = "SELECT number, list FROM revocation_lists WHERE org_id = $1"
    row = await conn.fetchrow(sql + (" FOR UPDATE" if for_update else ""), org_id)
    return None if row is None else (int(row["number"]), row["list"])


async def put(conn: asyncpg.Connection, org_id: str, number: int, text: str, *,
              now: float) -> None:
    await conn.execute(
        "INSERT INTO revocation_lists (org_id, number, list, received_at) VALUES ($1,$2,$3,$4) "
        "ON CONFLICT (org_id) DO UPDATE SET number = EXCLUDED.number, list = EXCLUDED.list, "
        "received_at = EXCLUDED.received_at", org_id, number, text, at(now))


async def all_lists(conn: asyncpg.Connection) -> list[str]:
    return [r["list"] for r in await conn.fetch(
        "SELECT list FROM revocation_lists ORDER BY org_id")]
