"""Nonces of accepted request proofs (``Lightbox-Proof``, docs/PROTOCOL.md §11).

A proof is accepted once: the first insert of its (device, nonce) wins, any later one is a
replay, whichever relay process sees it (the table is shared through Postgres). Rows are kept
until the proof's timestamp leaves the clock-skew window, after which the timestamp check alone
refuses it; each insert also removes a few expired rows, so the table stays the size of one
window of traffic without a sweeper.
"""

from __future__ import annotations

import asyncpg

from server.store import at

__all__ = ["remember"]

_PURGE_BATCH = 64


async def remember(conn: asyncpg.Connection, device_id: str, nonce: bytes, *,
                   expires_at: float, now: float) -> bool:
    """Record the nonce; False when this device used it before (a replay)."""
    fresh = await conn.fetchval(
        "INSERT INTO proof_nonces (device_id, nonce, expires_at) VALUES ($1, $2, $3) "
        "ON CONFLICT DO NOTHING RETURNING true", device_id, nonce, at(expires_at))
    await conn.execute(
        "DELETE FROM proof_nonces WHERE ctid = ANY (ARRAY(SELECT ctid FROM proof_nonces "
        "WHERE expires_at < $1 LIMIT $2))", at(now), _PURGE_BATCH)
    return bool(fresh)
