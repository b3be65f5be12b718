"""A photo consult from the phone with a subject, and a second photo and a reply in the same
consult, as the desktop and the SDK write them (PROTOCOL §14: the subject travels in the
sealed body, the thread's first message gives it; a later message goes into the same thread,
with no subject of its own): the specialist's real desktop client (its HTTP API, then its
page) lists one consult under the intern's subject with both photos in it. The photo added
to the consult goes through the same capture, review and consent screens, its consent naming
everyone in the consult as the screen said (the on-call role and the specialist who took it
on). Real relay, real Chromium with a fake camera, the real desktop client."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from clients.desktop.app import DesktopServer
from protocol.model import DeviceKind
from tests.clients.test_desktop import browser_page, desktop_http
from tests.clinician_world import enrol_clinician
from tests.helpers import seconds
from tests.identity_world import World
from tests.phone.phone_world import (
    ORTHO,
    SHOTS,
    axe_violations,
    camera_started,
    enrol_by_code,
    film,
    on_call_rota,
    phone_page,
    provisioned_intern,
    still_video,
)

SUBJECT = "Wrist after a fall"


@pytest.fixture
def phone_settings() -> dict[str, Any]:
    return {"autolock_seconds": 600}


@contextlib.asynccontextmanager
async def specialists_desktop(world: World, tmp_path: Path) -> AsyncIterator[DesktopServer]:
    """Dr Bo Ortho, on call for orthopaedics (the rota's ladder, so the consult he takes on is
    his from then on: PROTOCOL §16.3), with the desktop client on his computer (its profile
    enrolled as a desktop device, served by :class:`DesktopServer`, vault locked)."""
    profile = tmp_path / "specialist-profile"
    specialist = await enrol_clinician(world, tmp_path, "ortho", roles=(ORTHO,),
                                       display_name="Dr Bo Ortho", vault_dir=profile,
                                       kind=DeviceKind.DESKTOP)
    specialist.vault.lock()  # the desktop opens it with the password
    await on_call_rota(world, ["ortho"])
    desktop = DesktopServer(profile, client_options={"backoff_base": 0.05, "backoff_max": 0.5})
    await desktop.start()
    try:
        yield desktop
    finally:
        await desktop.stop()


async def desktop_threads(http: httpx.AsyncClient) -> list[dict[str, Any]]:
    r = await http.get("/api/threads")
    assert r.status_code == 200, r.text
    found: list[dict[str, Any]] = r.json()["threads"]
    return found


async def desktop_thread(http: httpx.AsyncClient, thread_id: str) -> dict[str, Any]:
    r = await http.get(f"/api/threads/{thread_id}")
    assert r.status_code == 200, r.text
    found: dict[str, Any] = r.json()
    return found


async def on_desktop(http: httpx.AsyncClient, thread_id: str, photos: int, texts: int
                     ) -> dict[str, Any]:
    """The consult as the desktop shows it, once it holds ``photos`` stored photos and
    ``texts`` messages without one."""
    async with asyncio.timeout(seconds(30)):
        while True:
            thread = await desktop_thread(http, thread_id)
            stored = [m for m in thread["messages"]
                      if any(i["state"] == "stored" for i in m["images"])]
            plain = [m for m in thread["messages"] if not m["images"]]
            if len(stored) == photos and len(plain) == texts:
                return thread
            await asyncio.sleep(0.2)


async def take_photo(page: Any) -> None:
    """From a screen with a photo button already tapped: take the photo the fake camera shows
    and carry it on to the consent screen."""
    await page.locator("#screen-capture").wait_for()
    await camera_started(page)
    await page.tap("#take")
    await page.locator("#screen-review").wait_for()
    await page.tap("#use-photo")
    await page.locator("#screen-consent").wait_for()


async def test_the_intern_gives_a_photo_consult_a_subject_and_adds_a_photo_to_it(
        phone: tuple[World, str], tmp_path: Path) -> None:
    world, origin = phone
    intern = await provisioned_intern(world)
    video = still_video(tmp_path / "film.y4m", film(1280, 960), size=(1280, 960))
    violations: dict[str, Any] = {}
    SHOTS.mkdir(parents=True, exist_ok=True)
    async with specialists_desktop(world, tmp_path) as desktop, desktop_http(desktop) as http, \
            phone_page(video=video) as (page, problems):
        await enrol_by_code(page, origin, intern.code)

        # 1. A new consult with a photo, and a subject for it.
        await page.tap("#capture")
        await take_photo(page)
        assert await page.is_visible("#img-subject")
        assert not await page.is_visible("#consent-target")
        await page.fill("#patient-name", "Doe^Jane")
        await page.fill("#patient-id", "MRN123")
        await page.fill("#img-text", "Query scaphoid fracture, tender snuffbox.")
        await page.check("#st-permanence")
        await page.check("#st-no-effect")
        # The subject is listed wherever the consult is: the patient's number stays out of it,
        # also spaced out.
        await page.fill("#img-subject", "MRN 123 wrist")
        await page.tap("#consent-send")
        await page.locator("#consent-error", has_text="Keep the patient's name and hospital "
                           "number out of the subject").wait_for()
        # Any of their names too, the given one as well as the family one, as a whole word.
        await page.fill("#img-subject", "Jane's wrist")
        assert await page.inner_text("#consent-error") == ""
        await page.tap("#consent-send")
        await page.locator("#consent-error", has_text="Keep the patient's name and hospital "
                           "number out of the subject").wait_for()
        await page.fill("#img-subject", SUBJECT)
        # Corrected: the sentence about the subject is gone, with its line.
        assert await page.inner_text("#consent-error") == ""
        await page.screenshot(path=str(SHOTS / "43-photo-consult-subject.png"), full_page=True)
        violations["43"] = await axe_violations(page)
        await page.tap("#consent-send")
        await page.locator("#photo-status", has_text="Photo sent").wait_for()
        mine = page.locator("#threads .thread", has_text=SUBJECT)
        assert await mine.locator("h3").inner_text() == f"{SUBJECT} · {ORTHO} · Urgent"

        # The specialist's desktop lists the consult under that subject, with its photo.
        async with asyncio.timeout(seconds(30)):
            while not (listed := await desktop_threads(http)) or not listed[0]["has_image"]:
                await asyncio.sleep(0.2)
        (consult,) = listed
        assert consult["subject"] == SUBJECT
        thread_id = consult["thread_id"]
        first = (await on_desktop(http, thread_id, photos=1, texts=0))["messages"][0]
        assert first["subject"] == SUBJECT
        # He takes it on ("I'm on it": he is in the consult from now on) and asks for more.
        r = await http.post(f"/api/messages/{first['message_id']}/ack")
        assert r.status_code == 200, r.text
        r = await http.post(f"/api/threads/{thread_id}/reply",
                            json={"text": "Fracture line unclear: please send a lateral view."})
        assert r.status_code == 200, r.text
        await mine.locator(".message.theirs", has_text="lateral view").wait_for()

        # 2. The consult on its own screen: his answer, and what the intern can add to it.
        await mine.locator(".open").tap()
        await page.locator("#screen-thread").wait_for()
        assert await page.inner_text("#thread-title") == SUBJECT
        assert await page.inner_text("#thread-about") == \
            f"To the on-call team of {ORTHO} · Urgent"
        shown = page.locator("#thread-messages")
        await shown.locator(".message.theirs", has_text="lateral view").wait_for()
        await shown.locator(".message.mine img").wait_for()
        await page.screenshot(path=str(SHOTS / "44-consult-thread.png"), full_page=True)
        violations["44"] = await axe_violations(page)

        # The lateral view, into this consult: the same capture, review and consent screens;
        # no subject of its own, and the consent names everyone in the consult.
        await page.tap("#thread-photo")
        await take_photo(page)
        assert not await page.is_visible("#img-subject")
        assert await page.inner_text("#consent-target") == \
            f"This photo is added to the consult “{SUBJECT}”."
        await page.locator("#consent-who strong", has_text="Dr Bo Ortho").wait_for()
        assert await page.inner_text("#consent-who") == (
            f"Who may see it: everyone in this consult (the on-call team of {ORTHO}, "
            "Dr Bo Ortho), and the patient's record.")
        assert await page.inner_text("#img-text-label") == "Message"
        assert await page.inner_text("#consent-send") == "Record the decision and send"
        # The consult's patient, as its first photo named them (HAZ-01 C6).
        await page.locator("#patient-known").wait_for()
        assert await page.input_value("#patient-id") == "MRN123"
        await page.fill("#img-text", "Lateral view, as asked.")
        await page.check("#st-permanence")
        await page.check("#st-no-effect")
        await page.screenshot(path=str(SHOTS / "45-photo-added-consent.png"), full_page=True)
        violations["45"] = await axe_violations(page)
        await page.tap("#consent-send")
        # Back on the consult's screen, the photo in it.
        await page.locator("#thread-status", has_text="Photo sent: the relay stored it."
                           ).wait_for()
        assert await page.is_visible("#screen-thread")
        await shown.locator(".message.mine", has_text="Lateral view").locator("img").wait_for()
        # A reply in the same consult.
        await page.fill("#reply-text", "Splinted; seen in fracture clinic tomorrow.")
        await page.tap("#reply-send")
        await page.locator("#thread-status", has_text="Reply sent: the relay stored it."
                           ).wait_for()
        await shown.locator(".message.mine", has_text="Splinted").wait_for()
        assert await page.input_value("#reply-text") == ""
        assert await shown.locator(".message").count() == 4
        await page.screenshot(path=str(SHOTS / "46-photo-added-to-consult.png"), full_page=True)
        violations["46"] = await axe_violations(page)

        # The specialist's desktop: still one consult, under the intern's subject, holding both
        # photos and the reply, in the order they were written.
        thread = await on_desktop(http, thread_id, photos=2, texts=2)
        assert [t["thread_id"] for t in await desktop_threads(http)] == [thread_id]
        assert (await desktop_threads(http))[0]["subject"] == SUBJECT
        said = [(m["text"], m["subject"], len(m["images"])) for m in thread["messages"]]
        assert said == [
            ("Query scaphoid fracture, tender snuffbox.", SUBJECT, 1),
            ("Fracture line unclear: please send a lateral view.", None, 0),
            ("Lateral view, as asked.", None, 1),
            ("Splinted; seen in fracture clinic tomorrow.", None, 0),
        ]
        # The second photo's consent names who the screen said: the role and Dr Bo Ortho.
        conn = await world.db()
        try:
            scopes = await conn.fetch(
                "SELECT recipient_users, recipient_roles FROM consents WHERE issuer_user_id = $1"
                " ORDER BY registered_at", uuid.UUID(intern.user_id))
            ortho = await conn.fetchval("SELECT user_id FROM users WHERE login = 'ortho'")
        finally:
            await conn.close()
        assert [(list(s["recipient_users"]), list(s["recipient_roles"])) for s in scopes] == [
            ([], [ORTHO]), ([ortho], [ORTHO])]

        # What the specialist sees on his desktop's page.
        async with browser_page() as (desk, desk_problems):
            await desk.goto(desktop.launch_url)
            await desk.locator(".thread-item", has_text=SUBJECT).click()
            await desk.locator(".thumb img").nth(1).wait_for()
            await desk.screenshot(path=str(SHOTS / "47-specialist-desktop-one-consult.png"),
                                  full_page=True)
            assert await desk.locator(".thread-item").count() == 1
            assert desk_problems == []
        assert problems == []
    assert {k: v for k, v in violations.items() if v} == {}
