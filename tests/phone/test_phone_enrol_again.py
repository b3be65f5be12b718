"""A phone IT revoked without the wipe order can be enrolled again with a new code (USER_GUIDE
"A lost phone": the intern enrols with the new code `lightbox-admin user reissue` gives): once
the relay has refused it as revoked, the app offers to enrol it again, says plainly that the
revoked device's keys and everything the app holds go first, erases them only when the intern
confirms, and enrols as on the first day; the new device then sends. Real relay, real
Chromium; the new code is made as IT's tool makes it (clients/admin/ops.py)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from clients.admin import ops
from clients.sdk.client import MessageEvent
from clients.sdk.http import RelayHTTP
from protocol.keys import CHEAP_PROFILE
from tests.helpers import page_problems
from tests.identity_world import World
from tests.phone.phone_world import (
    PASSPHRASE,
    SHOTS,
    axe_violations,
    enrol_by_code,
    idb_records,
    intern_and_specialist,
    phone_page,
    sent_from_phone,
    vault_names,
)

REVOKED = ("This phone has been revoked by IT: it can no longer send or receive consults. "
           "Ask IT if you did not expect this.")
WARNING = ("This erases everything Lightbox holds on this phone: its revoked keys, your consults "
           "and photos, and any consult not sent yet. It cannot be undone. What you sent is "
           "still with its recipients.")
ERASED = ("This phone's revoked Lightbox keys and data have been erased. Enrol it with the new "
          "code IT gave you.")


@pytest.fixture
def phone_settings() -> dict[str, Any]:
    return {"autolock_seconds": 600}


async def new_code(world: World, login: str) -> str:
    """IT's `lightbox-admin user reissue <login>`: a new enrolment code (and identity key)."""
    async with RelayHTTP(world.relay.base_url, admin_token=world.admin_token) as it:
        user = await ops.resolve_user(it, login)
        made = await ops.reissue_enrolment(it, user, org_id=world.org.org_id,
                                           org_key=world.org.key, now=int(time.time()),
                                           code_valid_hours=24, kdf=CHEAP_PROFILE)
    return made.code


async def test_a_phone_revoked_without_wipe_is_enrolled_again_with_a_new_code(
        phone: tuple[World, str], tmp_path: Path) -> None:
    world, origin = phone
    async with intern_and_specialist(world, tmp_path) as (intern, _s, events), \
            phone_page() as (page, problems):
        await enrol_by_code(page, origin, intern.code)
        await sent_from_phone(page, events, "Query scaphoid fracture, bay 6.")
        old_device = await world.device_of(intern.user_id)
        context = page.context
        await page.close()  # the phone is off (left in a locker) when IT revokes it
        r = await world.revoke(world.org, 1, devices=(old_device,), wipe=False)
        assert r.status_code == 200, r.text
        code = await new_code(world, intern.login)

        found = await context.new_page()
        found_problems = page_problems(found)
        await found.goto(origin)
        await found.fill("#passphrase", PASSPHRASE)
        await found.tap("#unlock")
        await found.locator("#banner", has_text="This phone has been revoked by IT").wait_for()
        assert await found.text_content("#banner") == REVOKED
        offer = found.locator("#reenrol")
        await offer.wait_for()
        # Unlocking is offered no more: the relay refuses this phone for good.
        assert await found.is_hidden("#unlock-form")
        assert await found.is_hidden("#screen-home")
        assert await axe_violations(found) == []
        SHOTS.mkdir(parents=True, exist_ok=True)
        await found.screenshot(path=str(SHOTS / "38-revoked-offer-enrol-again.png"),
                               full_page=True)

        # Nothing is erased before the intern has read what goes, and confirmed.
        kept = await idb_records(found)
        assert kept != []
        await found.tap("#reenrol-start")
        await found.locator("#reenrol-warning").wait_for()
        assert await found.text_content("#reenrol-warning") == WARNING
        await found.screenshot(path=str(SHOTS / "39-revoked-enrol-again-confirm.png"),
                               full_page=True)
        await found.tap("#reenrol-cancel")
        assert await found.is_hidden("#reenrol-warning")
        assert await idb_records(found) == kept
        await found.tap("#reenrol-start")
        await found.tap("#reenrol-erase")

        await found.locator("#screen-enrol").wait_for()
        assert await found.text_content("#banner") == ERASED
        assert await found.text_content("#conn") == "not enrolled"
        assert await found.locator("#reenrol").count() == 0
        assert await vault_names(found) == []
        assert await idb_records(found) == []
        await found.screenshot(path=str(SHOTS / "40-revoked-erased-enrol.png"), full_page=True)

        # A first-day enrolment with the new code; the new device sends.
        await enrol_by_code(found, origin, code)
        assert await found.is_hidden("#banner")
        assert await found.locator(".thread").count() == 0
        got = await sent_from_phone(found, events, "Bay 6 again, from the enrolled phone.")
        assert got.message.sender_device_id != old_device
        await found.locator(".message.mine .meta", has_text="sent").wait_for()
        await found.screenshot(path=str(SHOTS / "41-enrolled-again-sent.png"), full_page=True)
        assert isinstance(got, MessageEvent)
        # The browser's report of the relay refusing the revoked device; nothing else.
        assert [p for p in problems + found_problems if "status of 403" not in p
                and "WebSocket connection to" not in p] == []
