"""External consults on the relay (CLINICAL_SAFETY.md): a message to a recipient in another
organisation must carry the server-visible ``external`` flag (its clinical-necessity statement
is sealed in the body); without it the relay refuses with ``external_necessity_missing``,
stores nothing, and audits the refusal."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from clients.sdk.socket import SendRefused
from server import audit
from tests.identity_world import World, identity_world
from tests.relay_world import connect, peer, seal, thread


@pytest.fixture
async def world(db_dsn: str, tmp_path: Path) -> AsyncIterator[World]:
    async with identity_world(db_dsn, tmp_path, orgs=("st-elsewhere", "county-general")) as w:
        yield w


async def test_message_to_another_organisation_without_the_external_flag_is_refused(
        world: World) -> None:
    alice = await peer(world, "alice")
    other_org = world.orgs["county-general"]
    bob = await peer(world, "bob", user=await _provisioned(world, other_org.user("bob")))
    carol = await peer(world, "carol")
    tid = await thread(world, alice, bob, carol)
    a = await connect(world, alice)
    try:
        with pytest.raises(SendRefused) as err:
            await a.send(seal(alice, tid, [bob, carol]))
        assert err.value.code == "external_necessity_missing"
        # flagged external, the necessity check passes and consent is what is asked for next
        with pytest.raises(SendRefused) as err:
            await a.send(seal(alice, tid, [bob, carol], external=True))
        assert err.value.code == "consent_missing"
    finally:
        await a.close()
    conn = await world.db()
    try:
        assert await conn.fetchval("SELECT count(*) FROM messages") == 0
        events = [r.event for r in await audit.rows(conn, limit=10_000)]
    finally:
        await conn.close()
    assert "message.external_necessity_missing" in events


async def test_message_within_the_organisation_needs_no_external_flag(world: World) -> None:
    alice, carol = await peer(world, "alice"), await peer(world, "carol")
    tid = await thread(world, alice, carol)
    a = await connect(world, alice)
    try:
        assert (await a.send(seal(alice, tid, [carol]))).thread_seq == 1
    finally:
        await a.close()


async def _provisioned(world: World, user):  # type: ignore[no-untyped-def]
    (result,) = await world.provision(user)
    assert result["ok"], result
    return user
