"""The photo of a film on the phone, in a real Chromium with a fake camera showing a generated
x-ray: capture (re-encoded from a canvas), the quality hints, the consent screen (the photo, the
two statements, the decision, the purposes), the upload with its progress, the specialist's SDK
client opening the image under the phone-signed consent; the bytes that left the phone carry
no EXIF or anything but pixels; then the relay's expiry order erases the photo from the phone's
IndexedDB and the phone confirms it with a signed statement. A refusal is recorded and nothing
is sent."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest

from clients.sdk.client import ImageEvent, MessageEvent
from clients.sdk.imaging import jpeg_segments
from tests.helpers import seconds
from tests.identity_world import World
from tests.phone.phone_world import (
    ORTHO,
    SHOTS,
    axe_violations,
    camera_started,
    confirmed,
    enrol_by_code,
    film,
    idb_records,
    listening_specialist,
    next_event,
    phone_device_id,
    phone_page,
    photo_with_consent,
    provisioned_intern,
    space_taken,
    still_video,
)

# The hard limit here (seconds): the test moves the relay's clock past it (world.clock) once
# the specialist holds the image, rather than waiting it out. Under the relay's proof clock skew
# (60 s), so that the phone's signed requests, at real time, still verify after the move.
HARD_LIMIT = 40
ALLOWED = {0xD8, 0xE0, 0xDB, 0xC0, 0xC1, 0xC2, 0xC4, 0xDA, 0xD9}  # SOI APP0 DQT SOF DHT SOS EOI


@pytest.fixture
def phone_settings() -> dict[str, Any]:
    # An image never filed expires everywhere after the hard limit, swept often.
    return {"autolock_seconds": 600, "expiry_hard_limit": HARD_LIMIT,
            "expiry_sweep_interval": 0.5}


async def test_a_film_captured_consented_and_sent_from_the_phone_then_erased_on_expiry(
        phone: tuple[World, str], tmp_path: Path) -> None:
    world, origin = phone
    intern = await provisioned_intern(world)
    specialist, events = await listening_specialist(world, tmp_path)
    video = still_video(tmp_path / "film.y4m", film(1280, 960), size=(1280, 960))
    violations: dict[str, Any] = {}
    try:
        async with phone_page(video=video) as (page, problems):
            await enrol_by_code(page, origin, intern.code)
            await page.tap("#capture")
            await page.locator("#screen-capture").wait_for()
            await camera_started(page)
            await page.screenshot(path=str(SHOTS / "07-capture.png"), full_page=True)
            violations["07"] = await axe_violations(page)
            await page.tap("#take")
            await page.locator("#screen-review").wait_for()
            await page.screenshot(path=str(SHOTS / "08-review.png"), full_page=True)
            violations["08"] = await axe_violations(page)
            await page.tap("#use-photo")
            await page.locator("#screen-consent").wait_for()
            # The decision cannot be recorded before both statements were read to the patient.
            await page.fill("#patient-name", "Doe^Jane")
            await page.fill("#patient-id", "MRN123")
            await page.fill("#img-text", "Query scaphoid fracture, film attached.")
            await page.tap("#consent-send")
            await page.locator("#consent-error", has_text="Show the patient both statements"
                               ).wait_for()
            await page.check("#st-permanence")
            await page.check("#st-no-effect")
            # Both read now: the sentence that said they were not is gone, with its line.
            assert await page.inner_text("#consent-error") == ""
            assert await space_taken(page, "#consent-error") == 0
            await page.screenshot(path=str(SHOTS / "09-consent.png"), full_page=True)
            violations["09"] = await axe_violations(page)
            await page.tap("#consent-send")
            await page.locator("#photo-status", has_text="Photo sent").wait_for()
            await page.locator(".message.mine img").wait_for()
            await page.screenshot(path=str(SHOTS / "10-photo-sent.png"), full_page=True)
            violations["10"] = await axe_violations(page)

            # The specialist's SDK client opens it: the consent the phone signed covers the
            # image (or the client would refuse to store it).
            message = await next_event(events, MessageEvent,
                                       lambda e: "scaphoid" in e.body.text)
            (descriptor,) = message.body.attachments
            assert message.body.record is not None
            assert message.body.record.patient_id == "MRN123"
            assert message.message.sender_user_id == intern.user_id
            stored = await next_event(events, ImageEvent,
                                      lambda e: e.attachment_id == descriptor.attachment_id)
            assert stored.status == "stored", stored
            jpeg = specialist.client.image(descriptor.attachment_id)
            assert jpeg[:2] == b"\xff\xd8" and b"Exif" not in jpeg
            markers = {marker for marker, _ in jpeg_segments(jpeg)}
            assert markers <= ALLOWED, sorted(hex(m) for m in markers - ALLOWED)
            assert (descriptor.width, descriptor.height) == (1280, 960)
            assert hashlib.sha256(jpeg).digest() == descriptor.sha256

            # The hard limit passes unfiled: the relay orders every copy destroyed. The phone
            # erases the photo from IndexedDB and confirms with a signed statement.
            world.clock.advance(HARD_LIMIT)
            await page.locator(".photo-gone").wait_for(timeout=seconds(60) * 1000)
            await page.screenshot(path=str(SHOTS / "11-photo-expired.png"), full_page=True)
            assert not any(jpeg[200:264] in r for r in await idb_records(page))
            phone_device = await phone_device_id(world, intern.user_id)
            assert await confirmed(world, phone_device, descriptor.attachment_id)
            assert problems == []
    finally:
        specialist.client.unsubscribe(events)
        await specialist.client.close()
    assert {k: v for k, v in violations.items() if v} == {}


async def test_a_refusal_is_registered_and_nothing_is_sent(phone: tuple[World, str],
                                                           tmp_path: Path) -> None:
    world, origin = phone
    intern = await provisioned_intern(world)
    await world.onboard(world.org.user("ortho", roles=(ORTHO,)))
    video = still_video(tmp_path / "film.y4m", film(640, 480))
    async with phone_page(video=video) as (page, _):
        await enrol_by_code(page, origin, intern.code)
        await page.tap("#capture")
        await camera_started(page)
        await page.tap("#take")
        # A 640 x 480 photo is small: the hint says so, and "Use it anyway" carries it on to
        # the consent (not "Send anyway": nothing is sent from this screen).
        await page.locator("#hints", has_text="The photo is small").wait_for()
        assert await page.text_content("#use-photo") == "Use it anyway"
        # The phone reads no text in photos, and says so where the intern decides.
        await page.locator("#screen-review .warning",
                           has_text="this app does not read text in photos").wait_for()
        await page.tap("#use-photo")
        await page.check("#st-permanence")
        await page.check("#st-no-effect")
        await page.check("#refused")
        # A refusal is filed in the record too (as the CLI does): it needs the hospital number.
        await page.tap("#consent-send")
        await page.locator("#consent-error", has_text="a refusal is filed in the patient's "
                           "record too").wait_for()
        await page.fill("#patient-id", "MRN123")
        await page.tap("#consent-send")
        # This organisation has no record gateway: the intern is told where to record it.
        await page.locator("#photo-status", has_text="The refusal is recorded at the relay, "
                           "but your organisation has no record gateway").wait_for()
    conn = await world.db()
    try:
        consents = await conn.fetch("SELECT decision FROM consents")
        messages = await conn.fetchval("SELECT count(*) FROM messages")
        uploads = await conn.fetchval("SELECT count(*) FROM attachments")
    finally:
        await conn.close()
    assert [r["decision"] for r in consents] == ["refused"] and messages == 0 and uploads == 0


async def test_an_upload_cut_off_midway_resumes_and_the_consult_arrives(
        phone: tuple[World, str], tmp_path: Path) -> None:
    world, origin = phone
    intern = await provisioned_intern(world)
    await world.onboard(world.org.user("ortho", roles=(ORTHO,)))
    video = still_video(tmp_path / "film.y4m", film(640, 480))
    cut: list[str] = []

    async def drop_first_chunk(route: Any) -> None:
        # The connection breaks during the first chunk: the relay never answers it.
        if route.request.method == "PUT" and not cut:
            cut.append(route.request.url)
            await route.abort("connectionreset")
        else:
            await route.continue_()

    async with phone_page(video=video) as (page, _):
        await enrol_by_code(page, origin, intern.code)
        await page.context.route("**/v1/attachments/*/upload?offset=*", drop_first_chunk)
        await photo_with_consent(page)
        await page.fill("#patient-id", "MRN123")
        await page.tap("#consent-send")
        await page.locator("#photo-status", has_text="Photo sent").wait_for()
    assert len(cut) == 1
    conn = await world.db()
    try:
        finalised = await conn.fetchval(
            "SELECT count(*) FROM attachments WHERE finalised_at IS NOT NULL")
        messages = await conn.fetchval("SELECT count(*) FROM messages")
    finally:
        await conn.close()
    assert (finalised, messages) == (1, 1)
