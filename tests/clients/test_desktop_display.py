"""What the desktop page writes, in a real Chromium (Playwright): times in the one format of
clients/sdk/timefmt.py whatever the browser's locale, the warning that an image shows patient
identifiers (kinds only), sent with the image in the sealed body by the sender's client, the
break-glass mark of an image sent without consent in an emergency; and that it shows the consult
clicked last whatever order its requests are answered in, each reply draft staying with its
consult, never opens the viewer for an image that was still loading when it should not, and
keeps the reply being typed in its box, and the keyboard's place in the inbox, when a message
arrives.
Screenshots go to test-artefacts/desktop-display/."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import shutil
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from clients.desktop.app import DesktopServer
from clients.sdk import imaging, timefmt
from clients.sdk.breakglass import Emergency
from clients.sdk.client import MessageEvent
from protocol.body import CaptureKind, IdentifierKind, RecordData
from protocol.model import EmergencyCategory, Priority
from tests.clients import test_desktop
from tests.clients.test_desktop import (
    ORTHO,
    browser_page,
    desktop_team,
    send_photo,
    unlock_page,
    wait_for_event,
)
from tests.consent_world import xray_png
from tests.helpers import ROOT, seconds
from tests.identity_world import PASSWORD, World
from tests.orthanc import OrthancServer

pytestmark = test_desktop.DESKTOP_WORLD  # the same relay as the desktop's own tests

SHOTS = ROOT / "test-artefacts" / "desktop-display"
LOCKED_ANSWER = "Failed to load resource: the server responded with a status of 423 (Locked)"
AFTERNOON = int(dt.datetime(2026, 12, 3, 14, 5, 42, tzinfo=dt.UTC).timestamp())


@pytest.mark.parametrize(("locale", "zone"), [("en-US", "America/New_York"),
                                              ("de-DE", "Europe/Berlin"),
                                              ("ja-JP", "Asia/Tokyo")])
async def test_the_page_writes_times_like_the_cli_whatever_the_browser_locale(
        tmp_path: Path, locale: str, zone: str) -> None:
    desktop = DesktopServer(tmp_path / "no-profile")  # the locked page is enough
    await desktop.start()
    try:
        async with browser_page(locale=locale, timezone_id=zone) as (page, problems):
            await page.goto(desktop.launch_url)
            await page.locator("#password").wait_for()
            shown = await page.evaluate(f"when({AFTERNOON})")
            assert not problems, problems
    finally:
        await desktop.stop()
    assert shown == timefmt.format_time(AFTERNOON, tz=ZoneInfo(zone))


async def test_the_specialist_is_told_which_identifiers_the_image_shows(
        world: World, tmp_path: Path, orthanc: OrthancServer) -> None:
    shutil.rmtree(SHOTS, ignore_errors=True)
    SHOTS.mkdir(parents=True)
    async with desktop_team(world, tmp_path, orthanc) as team, \
            browser_page() as (page, problems):
        await unlock_page(page, team.desktop)
        record = RecordData(patient_name="Testpatient^Alpha", patient_id="LBX-0042",
                            capture=CaptureKind.FILM)
        await send_photo(
            team.intern, record, text="Wrist?", subject="Film with a label",
            burned_in=(IdentifierKind.NAME, IdentifierKind.DATE_OF_BIRTH))
        await send_photo(team.intern, record, text="Ankle?", subject="Clean film")
        await page.locator(".thread-item", has_text="Film with a label").click()
        warning = page.locator(".burned-in")
        await warning.wait_for()
        assert await warning.inner_text() == \
            "This image shows patient identifiers: name, date of birth"
        await page.screenshot(path=SHOTS / "01-identifiers-warning.png")
        await page.locator(".thread-item", has_text="Clean film").click()
        # the clean film's thread is the one shown (not the previous one still on screen)
        await page.get_by_text("Ankle?").wait_for()
        await page.locator(".thumb").wait_for()
        assert await page.locator(".burned-in").count() == 0
        assert not problems, problems


async def test_the_specialist_sees_an_emergency_image_marked_break_glass_with_its_reason(
        world: World, tmp_path: Path, orthanc: OrthancServer) -> None:
    """docs/PROTOCOL.md §17: an image sent without consent in an emergency is shown, marked
    break-glass with the sender's sealed reason; an ordinary consult carries no mark."""
    reason = "Unconscious after a fall, no relative reachable"
    async with desktop_team(world, tmp_path, orthanc) as team, \
            browser_page() as (page, problems):
        await unlock_page(page, team.desktop)
        thread = await team.intern.client.create_thread(roles=[ORTHO],
                                                        priority=Priority.URGENT)
        await team.intern.client.send_image(
            thread.thread_id, imaging.prepare_image(xray_png(900, 700, seed=61)).image,
            consent_token=None, text="Wrist deformity?", subject="Emergency film",
            record=RecordData(patient_name="Testpatient^Alpha", patient_id="LBX-0042",
                              capture=CaptureKind.FILM),
            emergency=Emergency(EmergencyCategory.UNCONSCIOUS, reason))
        await send_photo(team.intern, RecordData(patient_name="Testpatient^Alpha",
                                                 patient_id="LBX-0042"),
                         text="Ankle?", subject="Ordinary film")
        await page.locator(".thread-item", has_text="Emergency film").click()
        mark = page.locator(".break-glass")
        await mark.wait_for()
        assert await mark.inner_text() == (
            f"BREAK-GLASS (unconscious): sent without consent in an emergency: {reason}")
        await page.locator(".thumb").wait_for()  # the image itself is shown
        await page.locator(".thread-item", has_text="Ordinary film").click()
        await page.get_by_text("Ankle?").wait_for()
        assert await page.locator(".break-glass").count() == 0
        assert not problems, problems


async def test_the_page_shows_the_consult_clicked_and_keeps_each_reply_with_its_consult(
        world: World, tmp_path: Path, orthanc: OrthancServer) -> None:
    """The page's requests may be answered in any order. A refresh of the consult that was open,
    answered after the specialist clicked another one, never covers the one clicked (another
    patient's consult under the click: docs/HAZARD_LOG.md HAZ-14); a reply being written stays
    with its consult, and goes to the consult whose reply box it was written in, even while the
    next one clicked is still loading."""
    async with desktop_team(world, tmp_path, orthanc) as team, \
            browser_page() as (page, problems):
        intern = team.intern.client
        team_events = intern.subscribe()
        await unlock_page(page, team.desktop)
        wrist = await intern.create_thread(roles=[ORTHO], priority=Priority.URGENT)
        await intern.send_text(wrist.thread_id, "Wrist?", subject="Bed 4 wrist")
        ankle = await intern.create_thread(roles=[ORTHO], priority=Priority.URGENT)
        await intern.send_text(ankle.thread_id, "Ankle?", subject="Bed 9 ankle")
        await page.locator(".thread-item", has_text="Bed 9 ankle").wait_for()
        await page.locator(".thread-item", has_text="Bed 4 wrist").click()
        await page.get_by_text("Wrist?").wait_for()
        await page.fill("#reply-text", "Splint it")

        # 1. the page's next look at the wrist consult is held on its way back
        held, release = asyncio.Event(), asyncio.Event()

        async def hold(route: Any) -> None:
            held.set()
            await release.wait()
            await route.continue_()

        def of(thread_id: str) -> Any:
            return lambda url: url.endswith(f"/api/threads/{thread_id}")

        await page.route(of(wrist.thread_id), hold)
        await intern.send_text(wrist.thread_id, "Any news?")  # the page refreshes the consult
        await asyncio.wait_for(held.wait(), seconds(30))
        await page.locator(".thread-item", has_text="Bed 9 ankle").click()
        await page.get_by_text("Ankle?").wait_for()
        assert await page.input_value("#reply-text") == ""  # the wrist's draft stayed behind
        async with page.expect_request_finished(
                lambda request: of(wrist.thread_id)(request.url)) as answered:
            release.set()
        await answered.value
        await page.evaluate("() => new Promise((done) => setTimeout(done, 500))")
        assert await page.locator("#thread h2").inner_text() == "URGENT - Bed 9 ankle"
        assert await page.get_by_text("Wrist?").count() == 0
        assert "Bed 9 ankle" in await page.locator(".thread-item.selected").inner_text()
        await page.unroute(of(wrist.thread_id), hold)
        SHOTS.mkdir(parents=True, exist_ok=True)
        await page.screenshot(path=SHOTS / "02-the-consult-clicked.png")

        # 2. back to the wrist: its draft, and the message that came meanwhile
        await page.locator(".thread-item", has_text="Bed 4 wrist").click()
        await page.get_by_text("Any news?").wait_for()
        assert await page.input_value("#reply-text") == "Splint it"

        # 3. the ankle is clicked but still loading: "Send reply" sends the draft on screen to
        # the wrist consult, its own
        held.clear()
        release.clear()
        await page.route(of(ankle.thread_id), hold)
        await page.locator(".thread-item", has_text="Bed 9 ankle").click()
        await asyncio.wait_for(held.wait(), seconds(30))
        await page.click("#reply-send")
        reply = await wait_for_event(team_events, MessageEvent,
                                     lambda e: e.body.text == "Splint it")
        assert reply.message.thread_id == wrist.thread_id
        await page.locator("#reply-status", has_text="sent").wait_for()
        release.set()
        await page.get_by_text("Ankle?").wait_for()
        assert await page.input_value("#reply-text") == ""
        await page.unroute(of(ankle.thread_id), hold)
        await page.locator(".thread-item", has_text="Bed 4 wrist").click()
        await page.locator(".message.mine", has_text="Splint it").wait_for()
        assert await page.input_value("#reply-text") == ""  # sent, so no longer a draft
        assert not problems, problems


async def test_an_image_still_loading_when_the_viewer_closes_is_never_shown(
        world: World, tmp_path: Path, orthanc: OrthancServer) -> None:
    """The viewer loads an image after the click. Its bytes, answered by the desktop while
    allowed, may reach the page after the specialist locked the desktop, after the image
    expired, or after another consult was opened: the viewer, a full-screen overlay, must not
    open then (over the unlock screen, or with an image deleted from this device)."""
    async with desktop_team(world, tmp_path, orthanc) as team, \
            browser_page() as (page, problems):
        await unlock_page(page, team.desktop)
        record = RecordData(patient_name="Testpatient^Alpha", patient_id="LBX-0042")
        await send_photo(team.intern, record, text="Wrist?", subject="Bed 4 wrist")
        await send_photo(team.intern, record, text="Ankle?", subject="Bed 9 ankle")
        held, release = asyncio.Event(), asyncio.Event()

        async def hold(route: Any) -> None:
            if route.request.resource_type != "fetch":  # a thumbnail, drawn again
                await route.continue_()
                return
            answer = await route.fetch()  # the desktop answers now, while it may
            held.set()
            await release.wait()
            await route.fulfill(response=answer)

        def image_url(url: str) -> bool:
            return "/api/images/" in url

        async def click_and_hold_the_image() -> str:
            thumb = page.locator(".thumb")
            await page.wait_for_function(
                "() => document.querySelector('.thumb img')?.complete === true")
            aid = await thumb.get_attribute("data-attachment-id")
            assert aid
            held.clear()
            release.clear()
            await page.route(image_url, hold)
            await thumb.click()
            await asyncio.wait_for(held.wait(), seconds(30))
            return str(aid)

        async def release_and_settle(aid: str) -> None:
            """Let the held answer reach the page, wait until the page has read or dropped its
            body, then give the viewer the time to open, had the page gone on to draw it."""
            body_done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

            def settled(request: Any) -> None:
                if (request.resource_type == "fetch" and request.url.endswith(f"/api/images/{aid}")
                        and not body_done.done()):
                    body_done.set_result(None)

            page.on("requestfinished", settled)
            page.on("requestfailed", settled)
            release.set()
            await asyncio.wait_for(body_done, seconds(30))
            page.remove_listener("requestfinished", settled)
            page.remove_listener("requestfailed", settled)
            await page.unroute(image_url, hold)
            from playwright.async_api import TimeoutError as PlaywrightTimeout
            with contextlib.suppress(PlaywrightTimeout):
                await page.locator("#viewer").wait_for(state="visible", timeout=2000)

        # 1. locked while the image loads: the unlock screen, and no viewer over it
        await page.locator(".thread-item", has_text="Bed 4 wrist").click()
        aid = await click_and_hold_the_image()
        await page.click("#lock")
        await page.locator("#password").wait_for()
        await release_and_settle(aid)
        assert await page.locator("#viewer").is_hidden()
        SHOTS.mkdir(parents=True, exist_ok=True)
        await page.screenshot(path=SHOTS / "03-locked-while-an-image-loaded.png")
        # A request of the page's already on its way when the vault locked is answered 423,
        # which the browser logs; the page then shows the unlock screen, as it does here.
        problems[:] = [p for p in problems if p != LOCKED_ANSWER]

        # 2. another consult opened while the image loads: that consult, no viewer
        await page.fill("#password", PASSWORD)
        await page.press("#password", "Enter")
        await page.locator(".thread-item", has_text="Bed 4 wrist").click()
        aid = await click_and_hold_the_image()
        await page.locator(".thread-item", has_text="Bed 9 ankle").click()
        await page.get_by_text("Ankle?").wait_for()
        await release_and_settle(aid)
        assert await page.locator("#viewer").is_hidden()

        # 3. expired while the image loads (filed, then the grace period passed): deleted
        # from the page, and no viewer showing it
        aid = await click_and_hold_the_image()
        await team.gateway.start()
        await page.locator(f'.expired[data-attachment-id="{aid}"]').wait_for()
        await release_and_settle(aid)
        assert await page.locator("#viewer").is_hidden()
        assert not problems, problems


async def test_an_older_inbox_answered_late_never_replaces_a_newer_one(
        world: World, tmp_path: Path, orthanc: OrthancServer) -> None:
    """Each new consult makes the page list the inbox again; a list answered late (taken before
    the newest consult came) never replaces the newer one already shown, which would hide that
    consult until the next one arrived."""
    async with desktop_team(world, tmp_path, orthanc) as team, \
            browser_page() as (page, problems):
        await unlock_page(page, team.desktop)
        intern = team.intern.client
        held, release = asyncio.Event(), asyncio.Event()

        async def hold_the_first(route: Any) -> None:
            if held.is_set():
                await route.continue_()
                return
            answer = await route.fetch()  # the list as it is now
            held.set()
            await release.wait()
            await route.fulfill(response=answer)

        def inbox(url: str) -> bool:
            return url.endswith("/api/threads")

        await page.route(inbox, hold_the_first)
        wrist = await intern.create_thread(roles=[ORTHO], priority=Priority.URGENT)
        await intern.send_text(wrist.thread_id, "Wrist?", subject="Bed 4 wrist")
        await asyncio.wait_for(held.wait(), seconds(30))
        ankle = await intern.create_thread(roles=[ORTHO], priority=Priority.URGENT)
        await intern.send_text(ankle.thread_id, "Ankle?", subject="Bed 9 ankle")
        await page.locator(".thread-item", has_text="Bed 9 ankle").wait_for()
        async with page.expect_request_finished(
                lambda request: inbox(request.url)) as answered:
            release.set()
        await answered.value
        await page.unroute(inbox, hold_the_first)
        await page.evaluate("() => new Promise((settled) => setTimeout(settled, 500))")
        assert await page.locator(".thread-item", has_text="Bed 9 ankle").count() == 1
        assert not problems, problems


async def test_a_message_arriving_while_the_specialist_types_a_reply_does_not_take_the_keys(
        world: World, tmp_path: Path, orthanc: OrthancServer) -> None:
    """The consult is drawn again when a message arrives in it. The specialist typing a reply
    goes on typing in it: the reply box keeps the focus and the caret, and no keystroke falls
    through to the page's shortcuts ("a" acknowledges the consult, which would stop its
    escalation, docs/HAZARD_LOG.md HAZ-02)."""
    async with desktop_team(world, tmp_path, orthanc) as team, \
            browser_page() as (page, problems):
        await unlock_page(page, team.desktop)
        intern = team.intern.client
        wrist = await intern.create_thread(roles=[ORTHO], priority=Priority.URGENT)
        await intern.send_text(wrist.thread_id, "Wrist?", subject="Bed 4 wrist")
        await page.locator(".thread-item", has_text="Bed 4 wrist").click()
        await page.get_by_text("Wrist?").wait_for()
        await page.click("#reply-text")
        await page.keyboard.type("Splint it, then ")
        await intern.send_text(wrist.thread_id, "Also swollen fingers.")
        await page.get_by_text("Also swollen fingers.").wait_for()
        await page.keyboard.type("a sling")
        assert await page.input_value("#reply-text") == "Splint it, then a sling"
        await page.click("#reply-send")
        await page.locator(".message.mine", has_text="Splint it, then a sling").wait_for()
        assert await page.locator(".ack-state").count() == 0  # nothing acknowledged
        # One "I'm on it" for the consult, under the last of its opening messages
        # (clients/sdk/acking.py offered_under): the "a" key would take it.
        assert await page.locator(".ack-button").count() == 1
        assert await page.locator(".message", has_text="Also swollen fingers.").locator(
            ".ack-button").count() == 1
        assert not problems, problems


async def test_a_consult_arriving_while_the_specialist_moves_through_the_inbox_keeps_their_place(
        world: World, tmp_path: Path, orthanc: OrthancServer) -> None:
    """The inbox is listed again when a consult arrives. Someone moving through it with the
    keyboard (j/k, Enter) keeps their place: Enter opens the consult they had reached."""
    async with desktop_team(world, tmp_path, orthanc) as team, \
            browser_page() as (page, problems):
        await unlock_page(page, team.desktop)
        intern = team.intern.client
        for subject in ("Bed 4 wrist", "Bed 9 ankle"):
            thread = await intern.create_thread(roles=[ORTHO], priority=Priority.ROUTINE)
            await intern.send_text(thread.thread_id, f"{subject}?", subject=subject)
        await page.locator(".thread-item", has_text="Bed 9 ankle").wait_for()
        await page.keyboard.press("j")
        await page.keyboard.press("j")  # the second consult in the list
        reached = await page.evaluate("() => document.activeElement.textContent")
        hip = await intern.create_thread(roles=[ORTHO], priority=Priority.ROUTINE)
        await intern.send_text(hip.thread_id, "Bed 2 hip?", subject="Bed 2 hip")
        await page.locator(".thread-item", has_text="Bed 2 hip").wait_for()
        assert await page.evaluate("() => document.activeElement.textContent") == reached
        await page.keyboard.press("Enter")
        await page.locator("#thread h2").wait_for()
        subject = await page.locator("#thread h2").inner_text()
        assert subject in reached and "Bed 2 hip" not in subject
        assert not problems, problems
