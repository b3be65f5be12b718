"""The consent screen's button says what tapping it does now, from the form as it stands:
*Record the decision and send* for an agreement, *Record the refusal* for a refusal (nothing
goes to anyone but the record). When the relay refuses the photo after the patient's decision
was registered (here the consent names teaching only, and a consult is for direct care: the
relay's `consent_purpose`), the sentence says why and the button *Send the photo again*: the
same form sends again without registering the decision a second time. A changed purpose is a
new decision, recorded as such. A photo whose upload started and could not be finished (the
connection fails mid-upload) is kept and sent by itself: the screen says so and closes, and
offers no second send, which would reach the specialist twice. Real relay, real Chromium with a
fake camera, the specialist's real SDK client."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import pytest

from clients.sdk.client import ImageEvent, MessageEvent
from tests.helpers import seconds
from tests.identity_world import World
from tests.phone.phone_world import (
    PASSPHRASE,
    SHOTS,
    axe_violations,
    enrol_by_code,
    fetch_value,
    film,
    intern_and_specialist,
    next_event,
    phone_page,
    photo_with_consent,
    still_video,
    vault_names,
)

NOT_FOR_DIRECT_CARE = (
    "Not sent: the patient's consent does not name direct care, which a consult is for. If the "
    "patient agrees to it, tick Direct care and record their decision again.")


@pytest.fixture
def phone_settings() -> dict[str, Any]:
    return {"autolock_seconds": 600}


async def registered(world: World, user_id: str) -> int:
    """How many consents the user registered at the relay."""
    count: int = await fetch_value(world, "SELECT count(*) FROM consents WHERE "
                                   "issuer_user_id = $1", uuid.UUID(user_id))
    return count


async def uploads(world: World) -> int:
    count: int = await fetch_value(world, "SELECT count(*) FROM attachments")
    return count


async def test_after_the_relay_refuses_the_photo_the_button_says_it_sends_it_again(
        phone: tuple[World, str], tmp_path: Path) -> None:
    world, origin = phone
    video = still_video(tmp_path / "film.y4m", film(1280, 960), size=(1280, 960))
    async with intern_and_specialist(world, tmp_path) as (intern, _specialist, events), \
            phone_page(video=video) as (page, problems):
        await enrol_by_code(page, origin, intern.code)
        await photo_with_consent(page)
        button = page.locator("#consent-send")
        assert await button.inner_text() == "Record the decision and send"
        # A refusal is recorded and filed, never sent to the specialist: the button says so.
        await page.check("#refused")
        assert await button.inner_text() == "Record the refusal"
        await page.check("#agreed")
        assert await button.inner_text() == "Record the decision and send"
        await page.fill("#patient-name", "Doe^Jane")
        await page.fill("#patient-id", "MRN123")
        await page.fill("#img-subject", "Wrist after a fall")
        await page.fill("#img-text", "Query scaphoid fracture.")
        # Teaching only: the relay registers the consent, then refuses the consult under it.
        await page.uncheck("#p-direct")
        await page.check("#p-teaching")
        await button.tap()
        error = page.locator("#consent-error", has_text="Not sent")
        await error.wait_for()
        assert await error.inner_text() == NOT_FOR_DIRECT_CARE
        # Nothing is uploading any more: no "Uploading: 100%" beside "Not sent".
        assert await page.inner_text("#consent-status") == ""
        assert await page.evaluate("() => document.getElementById('upload').value") == 0
        # The decision is registered: tapping again sends the photo again, nothing more.
        assert await button.inner_text() == "Send the photo again"
        assert await page.is_visible("#screen-consent")
        assert await registered(world, intern.user_id) == 1
        SHOTS.mkdir(parents=True, exist_ok=True)
        await page.screenshot(path=str(SHOTS / "48-photo-refused-send-again.png"),
                              full_page=True)
        assert await axe_violations(page) == []
        await button.tap()
        async with asyncio.timeout(seconds(30)):  # uploaded again, and refused again
            while await uploads(world) < 2 or not await button.is_enabled() \
                    or await error.count() == 0:
                await asyncio.sleep(0.1)
        assert await error.inner_text() == NOT_FOR_DIRECT_CARE
        assert await button.inner_text() == "Send the photo again"
        assert await registered(world, intern.user_id) == 1
        # Direct care ticked: another decision, recorded when the button is tapped; unticked
        # again, the form is the one already recorded.
        await page.check("#p-direct")
        assert await button.inner_text() == "Record the decision and send"
        await page.uncheck("#p-direct")
        assert await button.inner_text() == "Send the photo again"
        await page.check("#p-direct")
        await button.tap()
        await page.locator("#photo-status", has_text="Photo sent").wait_for()
        message = await next_event(events, MessageEvent, lambda e: "scaphoid" in e.body.text)
        assert message.body.subject == "Wrist after a fall"
        (descriptor,) = message.body.attachments
        stored = await next_event(events, ImageEvent,
                                  lambda e: e.attachment_id == descriptor.attachment_id)
        assert stored.status == "stored", stored
        assert await registered(world, intern.user_id) == 2
        # The next photo's consent starts afresh: agreed, for direct care, to be recorded.
        await photo_with_consent(page)
        assert await button.inner_text() == "Record the decision and send"
        assert await page.is_checked("#agreed") and await page.is_checked("#p-direct")
        assert not await page.is_checked("#p-teaching")
        assert problems == []


async def test_a_photo_whose_upload_cannot_be_finished_now_is_kept_and_not_offered_again(
        phone: tuple[World, str], tmp_path: Path) -> None:
    world, origin = phone
    video = still_video(tmp_path / "film.y4m", film(1280, 960), size=(1280, 960))
    async with intern_and_specialist(world, tmp_path) as (intern, _specialist, events), \
            phone_page(video=video) as (page, problems):
        await enrol_by_code(page, origin, intern.code)
        # Every chunk of the upload is cut off on its way (the relay's other requests pass).
        await page.context.route("**/v1/attachments/*/upload?offset=*",
                                 lambda route: route.abort("connectionreset"))
        await photo_with_consent(page)
        await page.fill("#patient-id", "MRN123")
        await page.fill("#img-text", "Query scaphoid fracture.")
        await page.tap("#consent-send")
        status = page.locator("#photo-status", has_text="Not sent yet")
        await status.wait_for(timeout=seconds(60) * 1000)
        assert await status.inner_text() == (
            "Not sent yet: the relay cannot be reached. Check the network; nothing is lost. The "
            "app keeps the photo and sends it by itself the next time it connects to the relay, "
            "at the latest when you next unlock the app.")
        assert await page.is_visible("#screen-home")
        assert len([n for n in await vault_names(page) if n.startswith("upload:")]) == 1
        # Sent by itself once the chunks pass, at the next connection (here: unlocked again),
        # once: the consent registered once, one message.
        await page.context.unroute_all(behavior="ignoreErrors")
        await page.tap("#lock")
        await page.fill("#passphrase", PASSPHRASE)
        await page.tap("#unlock")
        await page.locator("#photo-status", has_text="finished: photo sent").wait_for()
        await next_event(events, MessageEvent, lambda e: "scaphoid" in e.body.text)
        assert await registered(world, intern.user_id) == 1
        assert await fetch_value(world, "SELECT count(*) FROM messages") == 1
        assert [p for p in problems if "net::ERR_CONNECTION_RESET" not in p] == []
