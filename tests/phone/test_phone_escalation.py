"""The intern follows the on-call escalation of an urgent consult on the phone: nobody
acknowledges, the relay reminds the primary at half the deadline, then passes the consult to
the backup at the deadline; each step shows under the consult with the person's name from their
verified certificate. Real relay, simulated on-call minutes (tokens and proofs keep real
time)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.helpers import seconds
from tests.identity_world import World
from tests.phone.phone_world import (
    ORTHO,
    enrol_by_code,
    phone_page,
    provisioned_intern,
)
from tests.server.test_escalation import SimClock

ORG = "st-elsewhere"


@pytest.fixture
def clock() -> SimClock:
    return SimClock()


@pytest.fixture
def phone_settings(clock: SimClock) -> dict[str, Any]:
    return {"autolock_seconds": 600, "oncall_clock": clock, "oncall_sweep_interval": 0.05}


async def on_call_ladder(world: World, clock: SimClock) -> tuple[str, str]:
    """Bob on call for orthopaedics, Carol his backup, for the next eight hours; their user
    ids."""
    bob = world.org.user("bob", roles=(ORTHO,), display_name="Dr Bob Primary")
    carol = world.org.user("carol", roles=(ORTHO,), display_name="Dr Carol Backup")
    await world.onboard(bob)
    await world.onboard(carol)
    r = await world.http.put(f"/v1/admin/oncall/{ORG}/role:orthopaedics-oncall",
                             headers=world.admin_headers(),
                             json={"display_name": "Orthopaedics on call"})
    assert r.status_code == 200, r.text
    r = await world.http.post(
        f"/v1/admin/oncall/{ORG}/role:orthopaedics-oncall/shifts", headers=world.admin_headers(),
        json={"shifts": [{"starts_at": int(clock()) - 3600, "ends_at": int(clock()) + 8 * 3600,
                          "ladder": ["bob", "carol"]}]})
    assert r.status_code == 200 and all(x["ok"] for x in r.json()["results"]), r.text
    return bob.user_id, carol.user_id


async def test_the_intern_sees_the_reminder_then_the_backup_reached(
        phone: tuple[World, str], clock: SimClock) -> None:
    world, origin = phone
    intern = await provisioned_intern(world)
    await on_call_ladder(world, clock)
    async with phone_page() as (page, problems):
        await enrol_by_code(page, origin, intern.code)
        await page.fill("#text", "Open fracture, needs theatre tonight.")
        await page.tap("#send")
        await page.locator("#send-status", has_text="Sent").wait_for()
        clock.advance(151)  # half the urgent deadline (300 s): the primary is reminded
        await page.locator(".escalation",
                           has_text="No answer yet: reminded Dr Bob Primary (on call)").wait_for()
        clock.advance(150)  # the deadline: the held copy goes to the backup
        await page.locator(".escalation", has_text="No answer in time: passed to Dr Carol "
                           "Backup (backup 1)").wait_for()
        assert problems == []


async def test_two_steps_written_to_the_consult_at_once_are_both_kept(
        phone: tuple[World, str], clock: SimClock) -> None:
    """The phone changes a consult's record by reading it, changing it and writing it back, and
    handles what the relay sends concurrently. Here the reminder's step waits for the primary's
    name (his certificate held on its way back from the relay) while the backup's step is
    written: the reminder, written after, must keep the backup's step, not write back the copy
    it read before it (clients/phone/src/app/worker.ts: the name is looked up before the
    thread's change, which reads and writes the record under changingThread)."""
    world, origin = phone
    intern = await provisioned_intern(world)
    bob, _ = await on_call_ladder(world, clock)
    async with phone_page() as (page, problems):
        await enrol_by_code(page, origin, intern.code)
        await page.fill("#text", "Open fracture, needs theatre tonight.")
        await page.tap("#send")
        await page.locator("#send-status", has_text="Sent").wait_for()
        held, release = asyncio.Event(), asyncio.Event()

        async def hold_the_first(route: Any) -> None:
            if not held.is_set():
                held.set()
                await release.wait()
            await route.continue_()

        await page.context.route(lambda url: url.endswith(f"/v1/users/{bob}/devices"),
                                 hold_the_first)
        clock.advance(151)  # the reminder to Bob: his name is asked for, and held
        await asyncio.wait_for(held.wait(), seconds(30))
        clock.advance(150)  # the deadline: passed to Carol, written while Bob's step waits
        backup = page.locator(".escalation", has_text="No answer in time: passed to Dr Carol "
                              "Backup (backup 1)")
        await backup.wait_for()
        release.set()
        await page.locator(".escalation", has_text="No answer yet: reminded Dr Bob Primary "
                           "(on call)").wait_for()
        assert await backup.count() == 1
        assert problems == []
