"""A consult from the phone to a mistyped on-call role (``orthopaedic_oncall`` where the
organisation's is ``orthopaedics_oncall``): the phone says the role does not exist, with the
closest role of the organisation, as `lightbox send` does (clients/clinician/sending.py
check_roles), never that nobody on call has a device yet; nothing is sent. A role nothing
resembles is refused without a guess. Real relay, real SDK specialist holding the role, real
Chromium."""

from __future__ import annotations

from pathlib import Path

from tests.identity_world import World
from tests.phone.phone_world import enrolled_phone, fetch_value

MISTYPED = ("Nobody in your organisation holds the role orthopaedic_oncall (did you mean "
            "orthopaedics_oncall?): check its spelling. Nothing was sent.")
UNLIKE = "Nobody in your organisation holds the role cardiology_oncall: check its spelling. " \
         "Nothing was sent."


async def test_a_mistyped_role_is_said_not_to_exist_with_the_role_meant(
        phone: tuple[World, str], tmp_path: Path) -> None:
    world, origin = phone
    async with enrolled_phone(world, tmp_path, origin) as (_i, _s, _e, page, problems):
        for role, said in (("orthopaedic_oncall", MISTYPED), ("cardiology_oncall", UNLIKE)):
            await page.fill("#role", role)
            await page.fill("#text", "Hot swollen knee, bed 12.")
            await page.tap("#send")
            status = page.locator("#send-status", has_text=said)
            await status.wait_for()
            assert await status.inner_text() == said
            # The consult stays in the form, to correct the role and send.
            assert await page.input_value("#text") == "Hot swollen knee, bed 12."
        assert await fetch_value(world, "SELECT count(*) FROM messages") == 0
        assert problems == []
