"""A consent withdrawn while the phone's photo still waits at the relay for the specialist
(whose device is off): the relay withdraws the undelivered message and orders every copy
erased; the phone shows the withdrawal, erases its own copy and confirms with a signed
statement, as the SDK does (clients/sdk/notices.py). A consent withdrawn while the phone is still
uploading its photo: the relay refuses the photo, and the phone says so in words (never the
bare code) and keeps no copy. Real relay, real Chromium, fake camera."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
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
    consent_of,
    enrol_by_code,
    film,
    phone_device_id,
    phone_page,
    photo_from_phone,
    photo_records,
    photo_with_consent,
    provision_with_package,
    still_video,
    stored_under,
)


@pytest.fixture
def phone_settings() -> dict[str, Any]:
    return {"autolock_seconds": 600}


@contextlib.asynccontextmanager
async def interns_phone(world: World, origin: str, tmp_path: Path
                        ) -> AsyncIterator[tuple[str, Any, list[str]]]:
    """The intern's phone, enrolled (the on-call specialist Bob has a device, switched off);
    yields her user id, the page and its problems."""
    intern = world.org.user("intern", roles=("intern",), display_name="Dr Ada Intern")
    await provision_with_package(world, intern)
    await world.onboard(world.org.user("bob", roles=(ORTHO,), display_name="Dr Bob Ortho"))
    video = still_video(tmp_path / "film.y4m", film(1280, 960), size=(1280, 960))
    async with phone_page(video=video) as (page, problems):
        await enrol_by_code(page, origin, intern.code)
        yield intern.user_id, page, problems


async def withdraw(world: World, consent_id: uuid.UUID) -> int:
    """The privacy office withdraws the consent; how many undelivered messages it withdrew."""
    r = await world.http.post(f"/v1/admin/consents/{consent_id}/revoke",
                              headers=world.admin_headers(), json={"reason": "the patient asked"})
    assert r.status_code == 200, r.text
    withdrawn: int = r.json()["withdrawn_messages"]
    return withdrawn


async def test_the_privacy_office_withdraws_consent_and_the_phone_erases_and_confirms(
        phone: tuple[World, str], tmp_path: Path) -> None:
    world, origin = phone
    async with interns_phone(world, origin, tmp_path) as (intern_id, page, problems):
        await photo_from_phone(page, text="Query scaphoid fracture, film attached.")
        await page.locator(".message.mine img").wait_for()
        conn = await world.db()
        try:
            consent_id, aid = await conn.fetchrow(
                "SELECT c.consent_id, a.attachment_id FROM consents c, attachments a "
                "WHERE c.issuer_user_id = $1", uuid.UUID(intern_id))
        finally:
            await conn.close()
        assert await withdraw(world, consent_id) == 1
        mine = page.locator(".message.mine")
        await mine.locator(".withdrawn", has_text="before it was delivered: the patient "
                           "withdrew consent.").wait_for(timeout=seconds(30) * 1000)
        await mine.locator(".photo-gone", has_text="The patient's consent was withdrawn on"
                           ).wait_for()
        assert await page.locator(".message.mine img").count() == 0
        assert await confirmed(world, await phone_device_id(world, intern_id), str(aid))
        SHOTS.mkdir(parents=True, exist_ok=True)
        await page.screenshot(path=str(SHOTS / "17-consult-withdrawn.png"), full_page=True)
        assert await axe_violations(page) == []
        assert problems == []


async def test_a_consent_withdrawn_while_the_photo_uploads_is_refused_in_words_and_erased(
        phone: tuple[World, str], tmp_path: Path) -> None:
    world, origin = phone
    async with interns_phone(world, origin, tmp_path) as (intern_id, page, problems):
        uploaded = asyncio.Event()
        withdrawn = asyncio.Event()

        async def finalise_after_withdrawal(route: Any) -> None:
            uploaded.set()
            await withdrawn.wait()
            await route.continue_()

        await page.route("**/v1/attachments/*/finalise", finalise_after_withdrawal)
        await photo_with_consent(page)
        await page.fill("#patient-name", "Doe^Jane")
        await page.fill("#patient-id", "MRN123")
        await page.fill("#img-text", "Query scaphoid fracture, film attached.")
        await page.tap("#consent-send")
        await uploaded.wait()
        consent_id = await consent_of(world, intern_id)
        assert await withdraw(world, consent_id) == 0  # nothing was sent under it yet
        withdrawn.set()
        # Told on the home screen: the consent screen, still ticked "agreed", is gone with the
        # photo, so nothing offers to send it again under a new consent.
        said = page.locator("#photo-status", has_text="The patient withdrew consent")
        await said.wait_for()
        assert await page.locator("#screen-consent").is_hidden()
        assert not await page.locator("#st-permanence").is_checked()
        assert await page.locator("#consent-photo").get_attribute("src") is None
        assert await said.inner_text() == (
            "The patient withdrew consent, so the relay refused the photo: it was not sent. "
            "Do not send it again unless the patient gives consent again and it is recorded.")
        SHOTS.mkdir(parents=True, exist_ok=True)
        await page.screenshot(path=str(SHOTS / "22-photo-refused-consent-withdrawn.png"),
                              full_page=True)
        assert await stored_under(world, consent_id) == 0
        # Erased before the page was told: no photo, no consult left "sending", no job.
        assert await photo_records(page) == []
        assert await axe_violations(page) == []
        assert problems == []
