"""The intern follows the on-call escalation of an urgent consult on the phone: nobody
acknowledges, the relay reminds the primary at half the deadline, then passes the consult to
the backup at the deadline; each step shows under the consult with the person's name from their
verified certificate. Real relay, simulated on-call minutes (tokens and proofs keep real
time)."""

from __future__ import annotations

from typing import Any

import pytest

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


async def test_the_intern_sees_the_reminder_then_the_backup_reached(
        phone: tuple[World, str], clock: SimClock) -> None:
    world, origin = phone
    intern = await provisioned_intern(world)
    await world.onboard(world.org.user("bob", roles=(ORTHO,), display_name="Dr Bob Primary"))
    await world.onboard(world.org.user("carol", roles=(ORTHO,), display_name="Dr Carol Backup"))
    r = await world.http.put(f"/v1/admin/oncall/{ORG}/role:orthopaedics-oncall",
                             headers=world.admin_headers(),
                             json={"display_name": "Orthopaedics on call"})
    assert r.status_code == 200, r.text
    r = await world.http.post(
        f"/v1/admin/oncall/{ORG}/role:orthopaedics-oncall/shifts", headers=world.admin_headers(),
        json={"shifts": [{"starts_at": int(clock()) - 3600, "ends_at": int(clock()) + 8 * 3600,
                          "ladder": ["bob", "carol"]}]})
    assert r.status_code == 200 and all(x["ok"] for x in r.json()["results"]), r.text
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
