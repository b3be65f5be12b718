"""The intern sends an urgent consult from the phone while nobody is on call for the role (a
gap in the rota, docs/PROTOCOL.md §16.4): the consult reaches the role's certificate holder,
and the phone shows under it at once that no one is on call and when the next shift starts,
then each reminder. Real relay, simulated on-call minutes."""

from __future__ import annotations

from clients.sdk.timefmt import format_time
from tests.identity_world import World
from tests.phone.phone_world import ORTHO, enrol_by_code, phone_page, provisioned_intern
from tests.phone.test_phone_escalation import ORG
from tests.phone.test_phone_escalation import clock as clock  # simulated on-call minutes
from tests.phone.test_phone_escalation import phone_settings as phone_settings  # on that clock
from tests.phone.test_phone_times import PHONE_ZONE
from tests.server.test_escalation import SimClock

ADVICE = "If it cannot wait, phone or page the department."


async def test_the_phone_says_nobody_is_on_call_and_when_the_next_shift_starts(
        phone: tuple[World, str], clock: SimClock) -> None:
    world, origin = phone
    intern = await provisioned_intern(world)
    await world.onboard(world.org.user("carol", roles=(ORTHO,), display_name="Dr Carol Reg"))
    await world.onboard(world.org.user("dan", roles=("orthopaedist",),
                                       display_name="Dr Dan Night"))
    role = f"/v1/admin/oncall/{ORG}/role:orthopaedics-oncall"
    r = await world.http.put(role, headers=world.admin_headers(), json={})
    assert r.status_code == 200, r.text
    starts = int(clock()) + 3600
    r = await world.http.post(f"{role}/shifts", headers=world.admin_headers(), json={
        "shifts": [{"starts_at": starts, "ends_at": starts + 8 * 3600, "ladder": ["dan"]}]})
    assert r.status_code == 200 and r.json()["results"][0]["ok"], r.text
    async with phone_page() as (page, problems):
        await enrol_by_code(page, origin, intern.code)
        await page.fill("#text", "Hot swollen knee, bed 12.")
        await page.tap("#send")
        await page.locator("#send-status", has_text="Sent").wait_for()
        nxt = ("it goes to the next shift when that starts at "
               + format_time(starts, tz=PHONE_ZONE))
        await page.locator(".escalation", has_text="No one is on call for the role now; "
                           + nxt).wait_for()
        # A warning as prominent as the app's others (not a message's small grey details),
        # with what to do if it cannot wait.
        warning = page.locator(".escalation.warning[role=alert]")
        assert (await warning.inner_text()).endswith(
            "No one is on call for the role now; " + nxt + ". " + ADVICE)
        assert await warning.evaluate("(e) => getComputedStyle(e).fontSize") == "17px"
        clock.advance(300)  # the urgent deadline: reminded
        await page.locator(".escalation", has_text="Still no one on call for the role: "
                           "reminded; " + nxt).wait_for()
        # The warning is the latest step's; the first is a plain line of the consult now.
        assert (await warning.inner_text()).endswith(
            "Still no one on call for the role: reminded; " + nxt + ". " + ADVICE)
        assert await page.locator(".escalation").count() == 2
        assert problems == []
