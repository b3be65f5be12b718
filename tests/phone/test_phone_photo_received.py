"""A photo another clinician sends to the phone (the specialist's marked-up film back, from a
real SDK client): downloaded and decrypted in the worker, checked against its consent as the
SDK does (clients/sdk/attachments.py), shown in the thread and full screen, and erased from
the vault with a signed confirmation when the relay's expiry order comes, like the phone's
own photos. A photo its consent does not name is not shown, and the relay hears of it. A photo
whose consent is withdrawn before the phone downloads it is shown as withdrawn, not as a
download to try again."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from clients.sdk import attachments as sdk_attachments
from clients.sdk import imaging
from protocol.body import Body
from protocol.consent import peek_consent_token_unverified
from protocol.model import Priority, Purpose
from tests.clinician_world import Clinician
from tests.consent_world import xray_png
from tests.filing_world import direct_care_consent
from tests.helpers import seconds
from tests.identity_world import User, World
from tests.phone.phone_world import (
    ORTHO,
    SHOTS,
    axe_violations,
    confirmed,
    enrolled_phone,
    phone_device_id,
    proxied_phone_world,
    sent_from_phone,
    vault_names,
)

# The hard limit here (seconds): the test moves the relay's clock past it (world.clock) once
# the phone has shown the photo, rather than waiting it out. Under the relay's proof clock skew
# (60 s), so that the phone's signed requests, at real time, still verify after the move.
HARD_LIMIT = 40


@pytest.fixture
def phone_settings() -> dict[str, Any]:
    # An image never filed expires everywhere after the hard limit, swept often.
    return {"autolock_seconds": 600, "expiry_hard_limit": HARD_LIMIT,
            "expiry_sweep_interval": 0.5}


async def shown(page: Any, attachment_id: str) -> bool:
    loaded: bool = await page.evaluate(
        "(id) => { const i = document.querySelector(`img[data-attachment='${id}']`);"
        " return !!i && i.complete && i.naturalWidth > 0; }", attachment_id)
    return loaded


async def photo_on_screen(page: Any, attachment_id: str) -> str:
    """Wait until the received photo is drawn in its thread; the object URL it is shown under."""
    async with asyncio.timeout(seconds(20)):
        while not await shown(page, attachment_id):
            await page.wait_for_timeout(100)
    url = await page.get_attribute(f"img[data-attachment='{attachment_id}']", "src")
    assert url and url.startswith("blob:"), url
    return str(url)


MISSED = "Failed to load resource: net::ERR_FILE_NOT_FOUND"


async def resolves(page: Any, url: str, problems: list[str]) -> bool:
    """Whether the page can still load this object URL as an image (a revoked one no longer
    resolves; the app's CSP lets images, not fetch, read blob: URLs). The console error of a
    probe that missed is the probe's, and is taken out of ``problems``; any other (an image of
    the app's own under a revoked URL) stays there."""
    answer: bool = await page.evaluate(
        "(u) => new Promise((done) => { const i = new Image();"
        " i.onload = () => done(true); i.onerror = () => done(false); i.src = u; })", url)
    if not answer:
        async with asyncio.timeout(seconds(10)):
            while MISSED not in problems:
                await page.wait_for_timeout(50)
        problems.remove(MISSED)
    return answer


async def marked_up_film(specialist: Clinician, intern: User, thread_id: str
                         ) -> tuple[str, str]:
    """The specialist sends a film into the intern's consult, under a direct-care consent that
    names the intern: the attachment id and the consent token."""
    prepared = imaging.prepare_image(xray_png(400, 300, seed=7))
    token = await direct_care_consent(specialist, prepared.image.data,
                                      roles=[ORTHO], users=[intern.user_id])
    sent = await specialist.client.send_image(
        thread_id, prepared.image, consent_token=token,
        text="Marked up: the fracture line is circled.")
    (aid,) = sent.attachment_ids
    return aid, token


async def test_the_specialists_photo_opens_on_the_phone_full_screen_and_is_erased_on_expiry(
        phone: tuple[World, str], tmp_path: Path) -> None:
    world, origin = phone
    async with enrolled_phone(world, tmp_path, origin) as (intern, specialist, events, page,
                                                           problems):
        consult = await sent_from_phone(page, events, "Query scaphoid fracture.")
        aid, _ = await marked_up_film(specialist, intern, consult.message.thread_id)
        photo = page.locator(f".message.theirs img[data-attachment='{aid}']")
        await photo.wait_for()
        await page.locator(".message.theirs", has_text="the fracture line is circled").wait_for()
        # The decrypted photo is in the page once, under one object URL, whatever the number of
        # times the list is drawn again (here for a message that comes after it).
        url = await photo_on_screen(page, aid)
        assert await photo.get_attribute("alt") == "The photo from Dr Bo Ortho"
        await specialist.client.send_text(consult.message.thread_id, "Splint for now.")
        await page.locator(".message.theirs", has_text="Splint for now.").wait_for()
        assert await photo.get_attribute("src") == url
        SHOTS.mkdir(parents=True, exist_ok=True)
        await page.screenshot(path=str(SHOTS / "14-photo-received.png"), full_page=True)
        assert await axe_violations(page) == []
        await page.locator(".message.theirs .full-screen").tap()
        await page.locator("img:fullscreen").wait_for()
        await page.screenshot(path=str(SHOTS / "15-photo-full-screen.png"))
        await page.evaluate("() => document.exitFullscreen()")

        # The hard limit passes unfiled: every copy is ordered destroyed, the phone's included.
        world.clock.advance(HARD_LIMIT)
        await page.locator(".message.theirs .photo-gone").wait_for(timeout=seconds(60) * 1000)
        assert await page.locator(f"img[data-attachment='{aid}']").count() == 0
        assert not await resolves(page, url, problems)  # nor is it left in the page's memory
        assert await confirmed(world, await phone_device_id(world, intern.user_id), aid)
        assert problems == []


async def test_locking_the_phone_drops_the_photos_it_showed_from_the_page(
        phone: tuple[World, str], tmp_path: Path) -> None:
    """Locked, the app keeps no decrypted photo in the page: the object URL a received photo
    was shown under no longer resolves."""
    world, origin = phone
    async with enrolled_phone(world, tmp_path, origin) as (intern, specialist, events, page,
                                                           problems):
        consult = await sent_from_phone(page, events, "Query scaphoid fracture.")
        aid, _ = await marked_up_film(specialist, intern, consult.message.thread_id)
        url = await photo_on_screen(page, aid)
        assert await resolves(page, url, problems)
        await page.locator("#lock").tap()
        await page.locator("#passphrase").wait_for()
        assert not await resolves(page, url, problems)
        assert problems == []


async def test_a_photo_its_consent_does_not_name_is_not_shown_and_is_reported(
        phone: tuple[World, str], tmp_path: Path) -> None:
    world, origin = phone
    async with enrolled_phone(world, tmp_path, origin) as (intern, specialist, events, page,
                                                           problems):
        consult = await sent_from_phone(page, events, "Query scaphoid fracture.")
        named = imaging.prepare_image(xray_png(400, 300, seed=7))
        other = imaging.prepare_image(xray_png(400, 300, seed=8))
        token = await direct_care_consent(specialist, named.image.data,
                                          roles=[ORTHO], users=[intern.user_id])
        # The SDK refuses to send an image its consent does not name: here a client that lies
        # seals one anyway (the relay cannot see image hashes), so the phone's check is tested.
        enc = await sdk_attachments.encrypt(other.image.data)
        aid = await sdk_attachments.upload(specialist.client.relay, enc.ciphertext)
        body = Body(text="And this one.", consent_token=token,
                    attachments=[enc.descriptor(aid, "image/jpeg", width=400, height=300)])
        await specialist.client.sender.send_body(
            consult.message.thread_id, body, purpose=Purpose.DIRECT_CARE,
            priority=Priority.ROUTINE, consent_id=peek_consent_token_unverified(token).jti,
            attachment_ids=[aid])
        await page.locator(".message.theirs .photo-refused", has_text="The photo is not shown: "
                           "the photo is not one the patient was shown and agreed to").wait_for()
        assert await page.locator(f"img[data-attachment='{aid}']").count() == 0
        conn = await world.db()
        try:
            reported = await conn.fetchval("SELECT count(*) FROM audit_log WHERE event = $1",
                                           "consent.image_mismatch")
        finally:
            await conn.close()
        assert reported == 1
        assert problems == []


async def test_a_withdrawn_consent_erases_the_photo_and_the_phone_confirms_it(
        phone: tuple[World, str], tmp_path: Path) -> None:
    world, origin = phone
    async with enrolled_phone(world, tmp_path, origin) as (intern, specialist, events, page,
                                                           problems):
        consult = await sent_from_phone(page, events, "Query scaphoid fracture.")
        aid, token = await marked_up_film(specialist, intern, consult.message.thread_id)
        await page.locator(f".message.theirs img[data-attachment='{aid}']").wait_for()
        # The patient withdraws consent (the specialist captured it): every copy is ordered
        # erased, the phone's with it, and the phone confirms with a signed statement.
        revoked = await specialist.client.relay.revoke_consent(
            peek_consent_token_unverified(token).jti, "the patient asked")
        assert revoked.expiry_orders >= 1
        await page.locator(".message.theirs .photo-gone",
                           has_text="The patient's consent was withdrawn on").wait_for()
        assert await page.locator(f"img[data-attachment='{aid}']").count() == 0
        assert await confirmed(world, await phone_device_id(world, intern.user_id), aid)
        SHOTS.mkdir(parents=True, exist_ok=True)
        await page.screenshot(path=str(SHOTS / "16-consent-withdrawn.png"), full_page=True)
        assert await axe_violations(page) == []
        assert problems == []


async def test_a_photo_whose_consent_was_withdrawn_before_download_is_shown_withdrawn(
        db_dsn: str, tmp_path: Path) -> None:
    # The relay's frames to the phone are held back while the consent is withdrawn (its
    # expiry order would otherwise come first and say the same): the download's own refusal
    # is what the phone acts on.
    async with proxied_phone_world(db_dsn, tmp_path) as (world, origin, proxy), \
            enrolled_phone(world, tmp_path, origin) as (intern, specialist, events, page,
                                                        problems):
        consult = await sent_from_phone(page, events, "Query scaphoid fracture.")
        downloads: list[str] = []
        withdrawn = asyncio.Event()

        async def download_after_withdrawal(route: Any) -> None:
            downloads.append(route.request.url)
            await withdrawn.wait()
            await route.continue_()

        await page.context.route("**/v1/attachments/*", download_after_withdrawal)
        aid, token = await marked_up_film(specialist, intern, consult.message.thread_id)
        async with asyncio.timeout(seconds(30)):
            while not downloads:
                await asyncio.sleep(0.05)
        proxy.hold_down = True
        await specialist.client.relay.revoke_consent(
            peek_consent_token_unverified(token).jti, "the patient asked")
        withdrawn.set()
        note = page.locator(".message.theirs .photo-withdrawn")
        await note.wait_for()
        assert await note.inner_text() == (
            "The patient's consent was withdrawn before the photo was downloaded: it is "
            "not shown, and it was never kept on this phone.")
        assert await page.locator(f"img[data-attachment='{aid}']").count() == 0
        # Not kept to be tried again at the next connection: its key is gone.
        assert f"incoming:{aid}" not in await vault_names(page)
        SHOTS.mkdir(parents=True, exist_ok=True)
        await page.screenshot(path=str(SHOTS / "27-photo-received-withdrawn.png"),
                              full_page=True)
        assert await axe_violations(page) == []
        # The expiry order, once through, is confirmed as for any photo.
        proxy.release()
        await page.locator(".message.theirs .photo-gone",
                           has_text="The patient's consent was withdrawn on").wait_for()
        assert await confirmed(world, await phone_device_id(world, intern.user_id), aid)
        assert len(downloads) == 1, downloads
        assert problems == []
