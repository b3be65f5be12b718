"""A frame the relay has read is handled to its end, even when the device closes its
connection right after sending it (server/ws.py): a receipt ("I'm on it", read) that a phone
sends as it goes is kept, not cancelled with the connection's writes. Only the answer is lost
(nobody is left to read it); the work is not."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from protocol.frames import Deliver, QueueEmpty
from protocol.statements import ReceiptKind
from tests.helpers import eventually, seconds
from tests.identity_world import World, identity_world
from tests.relay_world import connect, peer, send_while_offline, thread
from tests.server.test_escalation import receipt


@pytest.fixture
async def world(db_dsn: str, tmp_path: Path) -> AsyncIterator[World]:
    async with identity_world(db_dsn, tmp_path) as w:
        yield w


async def test_a_receipt_sent_just_before_the_device_closes_is_kept(world: World) -> None:
    alice, bob = await peer(world, "alice"), await peer(world, "bob")
    tid = await thread(world, alice, bob)
    db = await world.db()
    try:
        for n in range(5):  # each time: the receipt, then the close, at once
            await send_while_offline(world, alice, bob, tid, f"consult {n}".encode())
            b = await connect(world, bob)
            try:
                while not isinstance(d := await b.next_event(seconds(10)), Deliver):
                    assert not isinstance(d, QueueEmpty)
                await b.ack([d.delivery_id])
                await b.send_frame(receipt(bob, d, ReceiptKind.ACKNOWLEDGED))
            finally:
                await b.close()
            message_id = d.message.header.message_id

            async def kept(message_id: str = message_id) -> bool:
                return bool(await db.fetchval(
                    "SELECT count(*) FROM receipts WHERE message_id = $1 AND kind = "
                    "'acknowledged'", message_id))

            assert await eventually(kept, timeout=seconds(10)), f"receipt {n} lost"
    finally:
        await db.close()
