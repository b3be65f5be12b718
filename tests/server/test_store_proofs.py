"""Nonces of accepted request proofs (server/store/proofs.py) on a real database, with the
clock injected: a (device, nonce) pair is accepted once, whichever connection sees it; the same
nonce from another device is its own; rows past their expiry go away as new proofs arrive."""

from __future__ import annotations

import uuid

import asyncpg

from server.store import proofs

NOW = 1_800_000_000.0
DEVICE, OTHER = str(uuid.uuid4()), str(uuid.uuid4())
NONCE = bytes(range(16))


async def remember(conn: asyncpg.Connection, device: str = DEVICE, nonce: bytes = NONCE, *,
                   expires_at: float = NOW + 300, now: float = NOW) -> bool:
    return await proofs.remember(conn, device, nonce, expires_at=expires_at, now=now)


async def stored(conn: asyncpg.Connection) -> set[tuple[str, bytes]]:
    rows = await conn.fetch("SELECT device_id::text, nonce FROM proof_nonces")
    return {(r["device_id"], bytes(r["nonce"])) for r in rows}


async def test_a_nonce_is_accepted_the_first_time_and_refused_as_a_replay_after(
        conn: asyncpg.Connection) -> None:
    assert await remember(conn) is True
    assert await remember(conn) is False
    assert await remember(conn, now=NOW + 100) is False


async def test_a_replay_through_another_connection_is_refused(
        conn: asyncpg.Connection, db_dsn: str) -> None:
    """Two relay processes share the table: the second one to see the nonce refuses it."""
    assert await remember(conn) is True
    other = await asyncpg.connect(db_dsn)
    try:
        assert await remember(other) is False
    finally:
        await other.close()


async def test_the_same_nonce_from_another_device_is_not_a_replay(
        conn: asyncpg.Connection) -> None:
    assert await remember(conn, DEVICE) is True
    assert await remember(conn, OTHER) is True
    assert await remember(conn, DEVICE, bytes(16)) is True


async def test_a_new_proof_removes_the_nonces_whose_window_has_passed(
        conn: asyncpg.Connection) -> None:
    await remember(conn, DEVICE, b"a" * 16, expires_at=NOW + 10)
    await remember(conn, DEVICE, b"b" * 16, expires_at=NOW + 100)
    await remember(conn, OTHER, b"c" * 16, now=NOW + 60)
    assert await stored(conn) == {(DEVICE, b"b" * 16), (OTHER, b"c" * 16)}


async def test_a_nonce_still_in_its_window_is_kept(conn: asyncpg.Connection) -> None:
    await remember(conn, DEVICE, b"a" * 16, expires_at=NOW + 10)
    await remember(conn, OTHER, b"c" * 16, now=NOW + 10)
    assert (DEVICE, b"a" * 16) in await stored(conn)
