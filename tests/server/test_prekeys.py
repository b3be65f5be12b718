"""Limits on one-time prekey claims (server/prekeys.py) through a real relay, with its clock
injected: one member cannot drain a colleague's one-time prekeys, colluders are held to the
target's window and still get the signed prekey, and the windows reopen as the clock moves."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from server import audit
from tests.identity_world import Device, World, identity_world
from tests.server.test_http_edge import assert_problem

WINDOW = 3600
PER_REQUESTER, PER_TARGET = 3, 5


@pytest.fixture
async def world(db_dsn: str, tmp_path: Path) -> AsyncIterator[World]:
    async with identity_world(db_dsn, tmp_path, prekey_claim_window=WINDOW,
                              prekey_claims_per_requester=PER_REQUESTER,
                              prekey_claims_per_target=PER_TARGET) as w:
        yield w


async def claim(world: World, by: Device, *targets: Device) -> list[str | None]:
    r = await world.call(by, "POST", "/v1/keys/claim",
                         json={"devices": [t.device_id for t in targets]})
    assert r.status_code == 200, r.text
    keys = r.json()["keys"]
    assert all(k["signed_prekey"] for k in keys)
    return [k["one_time_prekey"] for k in keys]


async def remaining(world: World, device: Device) -> int:
    r = await world.call(device, "GET", "/v1/keys/count")
    assert r.status_code == 200, r.text
    return int(r.json()["remaining"])


async def events(world: World, prefix: str) -> list[audit.AuditRow]:
    conn = await world.db()
    try:
        return await audit.rows(conn, event_prefix=prefix)
    finally:
        await conn.close()


async def test_one_member_draining_a_device_is_refused_with_retry_after(world: World) -> None:
    amy = await world.onboard(world.org.user("amy.ortho"), prekeys=10)
    mallory = await world.onboard(world.org.user("mallory.derm"))
    for _ in range(PER_REQUESTER):
        assert (await claim(world, mallory, amy))[0] is not None
    r = await world.call(mallory, "POST", "/v1/keys/claim", json={"devices": [amy.device_id]})
    body = assert_problem(r, 429, "prekey_claims_limited")
    wait = float(body["retry_after"])  # type: ignore[arg-type]
    assert wait == pytest.approx(WINDOW, abs=5)
    assert int(r.headers["retry-after"]) >= int(wait)
    # Nothing was handed out by the refusal; a colleague still gets a one-time prekey.
    assert await remaining(world, amy) == 10 - PER_REQUESTER
    ben = await world.onboard(world.org.user("ben.cardio"))
    assert (await claim(world, ben, amy))[0] is not None
    limited = await events(world, "keys.claims_limited")
    assert [(e.subject_id, e.outcome) for e in limited] == [(mallory.device_id, "denied")]
    # The window slides on with the relay's clock.
    world.clock.advance(wait)
    await world.login(mallory)  # its access token expired meanwhile
    assert (await claim(world, mallory, amy))[0] is not None


async def test_a_refused_claim_hands_out_nothing_of_the_other_devices(world: World) -> None:
    amy = await world.onboard(world.org.user("amy.ortho"), prekeys=10)
    ben = await world.onboard(world.org.user("ben.cardio"), prekeys=10)
    mallory = await world.onboard(world.org.user("mallory.derm"))
    for _ in range(PER_REQUESTER):
        await claim(world, mallory, amy)
    r = await world.call(mallory, "POST", "/v1/keys/claim",
                         json={"devices": [ben.device_id, amy.device_id]})
    assert_problem(r, 429, "prekey_claims_limited")
    assert await remaining(world, ben) == 10


async def test_colluders_are_held_to_the_targets_window_and_still_get_its_signed_prekey(
        world: World) -> None:
    amy = await world.onboard(world.org.user("amy.ortho"), prekeys=20)
    members = [await world.onboard(world.org.user(f"member.{n}")) for n in range(4)]
    handed: list[str | None] = []
    for member in members:
        handed += await claim(world, member, amy)
        handed += await claim(world, member, amy)
    assert len([k for k in handed if k is not None]) == PER_TARGET
    assert handed[PER_TARGET:] == [None] * (len(handed) - PER_TARGET)  # signed prekey alone
    assert await remaining(world, amy) == 20 - PER_TARGET  # the rest kept for later
    assert len(await events(world, "keys.one_time_withheld")) == len(handed) - PER_TARGET
    world.clock.advance(WINDOW + 1)
    await world.login(members[0])
    assert (await claim(world, members[0], amy))[0] is not None
