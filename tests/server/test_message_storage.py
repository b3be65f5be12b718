"""How a sealed message is kept (alembic migration 0018): in its row and uncompressed up to
about 8 KB, out of line (still uncompressed) beyond, and delivered byte for byte either way,
including a message stored out of line before the migration."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from clients.sdk.socket import RelaySocket
from protocol.frames import Deliver
from tests.helpers import eventually, seconds
from tests.identity_world import World, identity_world
from tests.relay_world import Peer, connect, opened, peer, seal, send_while_offline, thread


@pytest.fixture
async def world(db_dsn: str, tmp_path: Path) -> AsyncIterator[World]:
    async with identity_world(db_dsn, tmp_path) as w:
        yield w


async def toast_rows(db: asyncpg.Connection) -> int:
    """Rows of the TOAST relation of ``messages``: the out-of-line pieces of sealed messages."""
    toast = await db.fetchval(
        "SELECT reltoastrelid::regclass::text FROM pg_class WHERE oid = 'messages'::regclass")
    return int(await db.fetchval(f"SELECT count(*) FROM {toast}"))


async def delivered(sock: RelaySocket, n: int) -> list[Deliver]:
    out: list[Deliver] = []
    while len(out) < n:
        frame = await sock.next_event(seconds(10))
        if isinstance(frame, Deliver):
            out.append(frame)
    return out


async def send_and_receive(world: World, alice: Peer, bob: Peer, tid: str,
                           bodies: list[bytes], *, queued: int = 0) -> list[bytes]:
    """``bodies`` from Alice to Bob, delivered, opened and acknowledged, after the ``queued``
    messages already waiting for Bob."""
    a, b = await connect(world, alice), await connect(world, bob)
    try:
        for body in bodies:
            await a.send(seal(alice, tid, [bob], body))
        got = await delivered(b, queued + len(bodies))
        await b.ack([d.delivery_id for d in got])
        # An ack has no answer frame, and its removal commits a moment later: the next call's
        # connection would otherwise be handed these again (a redelivery, PROTOCOL.md §3.5).
        db = await world.db()
        try:
            async def removed() -> bool:
                return bool(await db.fetchval("SELECT count(*) FROM deliveries") == 0)

            assert await eventually(removed)
        finally:
            await db.close()
        return [opened(bob, alice, d.message) for d in got]
    finally:
        await a.close()
        await b.close()


async def test_a_message_of_a_few_kilobytes_stays_in_its_row_and_a_long_one_goes_out_of_line(
        world: World) -> None:
    alice, bob = await peer(world, "alice"), await peer(world, "bob")
    tid = await thread(world, alice, bob)
    db = await world.db()
    try:
        assert await db.fetchval(
            "SELECT attstorage::text FROM pg_attribute WHERE attrelid = 'messages'::regclass "
            "AND attname = 'sealed'") == "e"  # EXTERNAL: never compressed
        # Each queued for Bob, who is offline: its ciphertext is kept until he acknowledges it.
        short = b"x-ray: " + bytes(range(256)) * 8  # 2 KB body: a 2.8 KB sealed message
        await send_while_offline(world, alice, bob, tid, short)
        size = await db.fetchval("SELECT octet_length(sealed) FROM messages")
        assert 2500 < size < 8000
        assert await toast_rows(db) == 0  # Postgres's defaults would have moved it out
        long = bytes(range(256)) * 48  # 12 KB: more than one heap page holds
        await send_while_offline(world, alice, bob, tid, long)
        assert await toast_rows(db) > 0
        assert await send_and_receive(world, alice, bob, tid, [], queued=2) == [short, long]
        # Acknowledged: the ciphertext is gone, the out-of-line pieces with it.
        assert await db.fetchval("SELECT count(*) FROM messages WHERE sealed IS NOT NULL") == 0
        assert await toast_rows(db) == 0
    finally:
        await db.close()


async def test_a_message_stored_out_of_line_before_the_migration_is_delivered_after_it(
        world: World) -> None:
    alice, bob = await peer(world, "alice"), await peer(world, "bob")
    tid = await thread(world, alice, bob)
    db = await world.db()
    try:
        await db.execute("ALTER TABLE messages RESET (toast_tuple_target)")
        await db.execute("ALTER TABLE messages ALTER COLUMN sealed SET STORAGE EXTENDED")
        body = bytes(range(256)) * 8
        await send_while_offline(world, alice, bob, tid, body)  # it stays queued for Bob
        assert await toast_rows(db) > 0  # stored the way the release before stored it
        await db.execute("ALTER TABLE messages ALTER COLUMN sealed SET STORAGE EXTERNAL")
        await db.execute("ALTER TABLE messages SET (toast_tuple_target = 8160)")
        b = await connect(world, bob)
        try:
            (d,) = await delivered(b, 1)
            assert opened(bob, alice, d.message) == body
        finally:
            await b.close()
    finally:
        await db.close()

