"""Wipe orders (server/wipes.py), called directly over the real database: an order only for a
device the organisation's newest signed list revokes with wipe, what is still queued for it
dropped and audited, the same order id for the same list, and a confirmation recorded only when the
device itself signed it for that order."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from protocol import statements
from protocol.frames import WipeOrder
from protocol.keys import DeviceKeys
from server import audit
from server.db import Database
from server.wipes import WipeService
from tests.consent_world import count
from tests.identity_world import World, identity_world
from tests.relay_world import peer, send_while_offline, thread


@pytest.fixture
async def world(db_dsn: str, tmp_path: Path) -> AsyncIterator[World]:
    async with identity_world(db_dsn, tmp_path) as w:
        yield w


@pytest.fixture
def wipes(world: World, relay_db: Database) -> WipeService:
    return WipeService(db=relay_db, trust=world.relay.relay.trust, clock=world.clock)


def confirmation(keys: DeviceKeys, device_id: str, order_id: str) -> str:
    return statements.issue_wipe_confirmation(statements.WipeConfirmation(
        v=1, device_id=device_id, order_id=order_id, wiped_at=int(time.time())), keys.signing)


async def wipe_events(world: World) -> list[tuple[str, Mapping[str, Any]]]:
    conn = await world.db()
    try:
        return [(r.event, r.details) for r in await audit.rows(conn, event_prefix="device.wipe")]
    finally:
        await conn.close()


async def test_a_device_not_revoked_with_wipe_gets_no_order(
        world: World, wipes: WipeService) -> None:
    phone = await peer(world, "amy")
    assert await wipes.order(phone.device_id) is None
    assert (await world.revoke(world.org, 1, devices=(phone.device_id,))).status_code == 200
    assert await wipes.order(phone.device_id) is None
    assert await wipes.order(str(uuid.uuid4())) is None
    assert await wipe_events(world) == []


async def test_no_order_unless_the_newest_signed_list_names_the_wipe(
        world: World, wipes: WipeService) -> None:
    """The order carries the list as its proof: a device still marked for wipe whose newest
    list no longer says so (IT re-issued it without the flag) is not ordered to wipe."""
    lost = await peer(world, "ortho")
    assert (await world.revoke(world.org, 1, devices=(lost.device_id,),
                               wipe=True)).status_code == 200
    assert (await world.revoke(world.org, 2, devices=(lost.device_id,))).status_code == 200
    assert await count(world, "SELECT count(*) FROM devices WHERE device_id = $1 AND "
                       "wipe_pending", uuid.UUID(lost.device_id)) == 1
    assert await wipes.order(lost.device_id) is None
    assert await wipe_events(world) == []


async def test_the_order_carries_the_signed_list_and_drops_what_is_still_queued(
        world: World, wipes: WipeService) -> None:
    """The revocation dropped the lost phone's queue already (tests/server/test_purge.py); a
    delivery a send committed after it (its transaction under way when the device was
    revoked: written here as it would have been) goes with the order, audited there."""
    sender, lost = await peer(world, "intern", roles=("intern",)), await peer(world, "ortho")
    await send_while_offline(world, sender, lost, await thread(world, sender, lost),
                             b"queued for the lost phone")
    queued = "SELECT count(*) FROM deliveries WHERE device_id = $1"
    assert await count(world, queued, uuid.UUID(lost.device_id)) == 1
    conn = await world.db()
    try:
        late = await conn.fetchrow(
            "SELECT d.message_pk, d.priority, m.message_id::text AS message_id "
            "FROM deliveries d JOIN messages m USING (message_pk) WHERE d.device_id = $1",
            uuid.UUID(lost.device_id))
        assert (await world.revoke(world.org, 3, devices=(lost.device_id,),
                                   wipe=True)).status_code == 200
        assert await count(world, queued, uuid.UUID(lost.device_id)) == 0
        await conn.execute(
            "INSERT INTO deliveries (delivery_id, device_id, message_pk, priority, created_at) "
            "VALUES ($1, $2, $3, $4, now())", uuid.uuid4(), uuid.UUID(lost.device_id),
            late["message_pk"], late["priority"])
    finally:
        await conn.close()
    world.clock.advance(120)
    order = await wipes.order(lost.device_id)
    assert order is not None
    assert world.relay.relay.trust.verify_list(order.revocation).number == 3
    assert abs(order.issued_at - world.clock()) <= 2  # the injected clock, not the database's
    assert await count(world, queued, uuid.UUID(lost.device_id)) == 0
    (event, details), = await wipe_events(world)
    assert event == "device.wipe_ordered"
    assert details["order_id"] == order.order_id and details["revocation_list"] == 3
    assert details["dropped_deliveries"] == 1
    assert details["dropped_messages"] == [late["message_id"]]
    again = await wipes.order(lost.device_id)  # a device that reconnects before confirming
    assert again is not None and again.order_id == order.order_id


async def test_only_the_devices_own_confirmation_of_that_order_is_recorded(
        world: World, wipes: WipeService) -> None:
    lost = await peer(world, "ortho")
    keys = lost.device.keys
    assert (await world.revoke(world.org, 1, devices=(lost.device_id,),
                               wipe=True)).status_code == 200
    order = await wipes.order(lost.device_id)
    assert order is not None
    other = WipeOrder(order_id=str(uuid.uuid4()), issued_at=order.issued_at,
                      revocation=order.revocation)
    thief = DeviceKeys.generate(lost.device_id)
    assert not await wipes.confirm(lost.device_id, order,
                                   confirmation(thief, lost.device_id, order.order_id))
    assert not await wipes.confirm(lost.device_id, order,
                                   confirmation(keys, lost.device_id, other.order_id))
    assert not await wipes.confirm(lost.device_id, order, "not-a-statement")
    assert not await wipes.confirm(str(uuid.uuid4()), order,
                                   confirmation(keys, lost.device_id, order.order_id))
    assert [e for e, _ in await wipe_events(world)] == ["device.wipe_ordered"]
    assert await wipes.confirm(lost.device_id, order,
                               confirmation(keys, lost.device_id, order.order_id))
    assert [e for e, _ in await wipe_events(world)] == ["device.wipe_ordered",
                                                        "device.wipe_confirmed"]
    assert await wipes.order(lost.device_id) is None  # ordered no more
