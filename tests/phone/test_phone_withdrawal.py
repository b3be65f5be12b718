"""A consent withdrawn while the phone's photo still waits at the relay for the specialist
(whose device is off): the relay withdraws the undelivered message and orders every copy
erased; the phone shows the withdrawal, erases its own copy and confirms with a signed
statement, as the SDK does (clients/sdk/notices.py). Real relay, real Chromium, fake camera."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import seconds
from tests.identity_world import World
from tests.phone.phone_world import (
    ORTHO,
    SHOTS,
    axe_violations,
    confirmed,
    enrol_by_code,
    film,
    phone_device_id,
    phone_page,
    photo_from_phone,
    provision_with_package,
    still_video,
)


@pytest.fixture
def phone_settings() -> dict[str, Any]:
    return {"autolock_seconds": 600}


async def test_the_privacy_office_withdraws_consent_and_the_phone_erases_and_confirms(
        phone: tuple[World, str], tmp_path: Path) -> None:
    world, origin = phone
    intern = world.org.user("intern", roles=("intern",), display_name="Dr Ada Intern")
    await provision_with_package(world, intern)
    await world.onboard(world.org.user("bob", roles=(ORTHO,), display_name="Dr Bob Ortho"))
    video = still_video(tmp_path / "film.y4m", film(1280, 960), size=(1280, 960))
    async with phone_page(video=video) as (page, problems):
        await enrol_by_code(page, origin, intern.code)
        await photo_from_phone(page, text="Query scaphoid fracture, film attached.")
        await page.locator(".message.mine img").wait_for()
        conn = await world.db()
        try:
            consent_id, aid = await conn.fetchrow(
                "SELECT c.consent_id, a.attachment_id FROM consents c, attachments a "
                "WHERE c.issuer_user_id = $1", uuid.UUID(intern.user_id))
        finally:
            await conn.close()
        r = await world.http.post(f"/v1/admin/consents/{consent_id}/revoke",
                                  headers=world.admin_headers(),
                                  json={"reason": "the patient asked"})
        assert r.status_code == 200, r.text
        assert r.json()["withdrawn_messages"] == 1
        mine = page.locator(".message.mine")
        await mine.locator(".withdrawn", has_text="before it was delivered: the patient "
                           "withdrew consent.").wait_for(timeout=seconds(30) * 1000)
        await mine.locator(".photo-gone", has_text="The patient's consent was withdrawn on"
                           ).wait_for()
        assert await page.locator(".message.mine img").count() == 0
        assert await confirmed(world, await phone_device_id(world, intern.user_id), str(aid))
        SHOTS.mkdir(parents=True, exist_ok=True)
        await page.screenshot(path=str(SHOTS / "17-consult-withdrawn.png"), full_page=True)
        assert await axe_violations(page) == []
        assert problems == []
