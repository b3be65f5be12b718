"""Lines of the desktop's thread, in a real Chromium against a real relay (and, for the
film, the real record gateway filing into a real Orthanc), as docs/USER_GUIDE.md "Thread" says
them:

* a photo of a film whose original study the record gateway could not look up in PACS: the
  line never offers the original study with nothing to click; before filing it says the
  original is not looked up yet, after it that the search failed (the receipt's
  ``original_search``), or, from a gateway older than that field, that none was found or the
  search failed, and what to do; found with no link to it, it points to the study UID listed
  under it;
* under the specialist's own reply, only the other participants' receipts: the
  "delivered" her own phone signs is no recipient's ("you: delivered");
* a reply written while the relay was out of reach and sent minutes later: "written HH:MM,
  sent HH:MM", the sent time the one in its signed header, which the intern's side shows.

Screenshots go to test-artefacts/desktop-walk8/.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import io
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

import pydicom
import pytest

from clients.gateway import app as gateway_app
from clients.gateway.dicomweb import PacsUnavailable
from clients.sdk.client import MessageEvent
from protocol.body import CaptureKind, RecordData
from tests.clients import test_desktop
from tests.clients.test_desktop import (
    ORTHO,
    browser_page,
    desktop_team,
    send_photo,
    unlock_page,
    wait_for_event,
)
from tests.clients.test_desktop_ack_own_devices import phone_linked_from_the_desktops_profile
from tests.helpers import ROOT, make_settings, running_relay, seconds
from tests.identity_world import World
from tests.orthanc import OrthancServer, original_study

pytestmark = test_desktop.DESKTOP_WORLD  # the same relay as the desktop's own tests

SHOTS = ROOT / "test-artefacts" / "desktop-walk8"
FILM = "Photo of a film/monitor \u2014 not of diagnostic quality; "
NOT_LOOKED_UP = (FILM + "its original study has not been looked up yet: the record gateway "
                 "looks for it in PACS when it files this photo")
SEARCH_FAILED = (FILM + "the record gateway could not search PACS for the original study (its "
                 "operator can see why in its log): look in the PACS by the patient's ID and "
                 "the date")
NO_ORIGINAL = (FILM + "the record gateway found no original study in PACS, or could not search "
               "it: look in the PACS by the patient's ID and the date, and tell the record "
               "gateway's operator if the study is there")
BY_UID = FILM + "open the original study in PACS by its study UID below"
LATER = 300  # seconds between writing the reply and the relay taking it


@pytest.fixture(autouse=True, scope="module")
def _shots() -> None:
    shutil.rmtree(SHOTS, ignore_errors=True)
    SHOTS.mkdir(parents=True)


def hhmm(ts: float) -> str:
    """As the page writes a time (app.js ``when``), in the page's zone (UTC here)."""
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M")


async def test_a_film_whose_original_could_not_be_looked_up_offers_nothing_to_click(
        world: World, tmp_path: Path, orthanc: OrthancServer,
        monkeypatch: pytest.MonkeyPatch) -> None:
    patient = f"LBX-{uuid.uuid4().hex[:8]}"
    async with desktop_team(world, tmp_path, orthanc) as team, \
            browser_page(timezone_id="UTC") as (page, problems):
        searched: list[str] = []
        find_studies = team.gateway.pacs.find_studies

        async def failing_search(patient_id: str, **kw: Any) -> Any:
            if kw.get("study_dates") is None:  # not the original study's search
                return await find_studies(patient_id, **kw)
            searched.append(patient_id)
            raise PacsUnavailable("QIDO-RS answered 503")

        monkeypatch.setattr(team.gateway.pacs, "find_studies", failing_search)
        await unlock_page(page, team.desktop)
        await send_photo(team.intern, RecordData(
            patient_name="Testpatient^Gamma", patient_id=patient, birth_date="1961-02-03",
            anatomic_region="wrist", capture=CaptureKind.FILM),
            text="Old film: displaced?", subject="Film, search down")
        await page.locator(".thread-item", has_text="Film, search down").click()
        line = page.locator(".message .not-diagnostic")
        await line.wait_for()
        # not filed yet: nothing looked up, and nothing offered
        assert await line.inner_text() == NOT_LOOKED_UP
        await page.locator(".thumb").click()
        await page.locator("#canvas").wait_for()
        await page.locator("#viewer-note", has_text="not been looked up").wait_for()
        assert await page.inner_text("#viewer-note") == NOT_LOOKED_UP
        await page.screenshot(path=SHOTS / "01-film-not-filed-yet-viewer.png")
        await page.keyboard.press("Escape")
        await page.screenshot(path=SHOTS / "02-film-not-filed-yet.png")

        await team.gateway.start()
        await page.locator(".pacs-study").wait_for(timeout=seconds(60) * 1000)
        await page.locator(".message .not-diagnostic", has_text="could not search").wait_for()
        assert searched == [patient]  # the gateway's search did fail
        assert await line.inner_text() == SEARCH_FAILED
        assert await page.locator(".originals, a.original-study").count() == 0
        assert "view the original" not in (await page.inner_text("#thread")).lower()
        await page.screenshot(path=SHOTS / "03-film-filed-original-not-looked-up.png")
    assert not problems, problems


async def test_a_receipt_from_a_gateway_older_than_its_search_field_names_both_causes(
        world: World, tmp_path: Path, orthanc: OrthancServer,
        monkeypatch: pytest.MonkeyPatch) -> None:
    async def older_gateway(*args: Any, **kw: Any) -> tuple[list[Any], str]:
        return [], ""  # its receipt has no original_search: none listed, and no why

    monkeypatch.setattr(gateway_app, "original_studies", older_gateway)
    async with desktop_team(world, tmp_path, orthanc) as team, \
            browser_page(timezone_id="UTC") as (page, problems):
        await unlock_page(page, team.desktop)
        await send_photo(team.intern, RecordData(
            patient_name="Testpatient^Epsilon", patient_id=f"LBX-{uuid.uuid4().hex[:8]}",
            birth_date="1963-04-05", anatomic_region="wrist", capture=CaptureKind.FILM),
            text="Old film: healed?", subject="Film, older gateway")
        await team.gateway.start()
        await page.locator(".thread-item", has_text="Film, older gateway").click()
        await page.locator(".pacs-study").wait_for(timeout=seconds(60) * 1000)
        line = page.locator(".message .not-diagnostic", has_text="or could not search")
        await line.wait_for()
        assert await line.inner_text() == NO_ORIGINAL
        assert await page.locator(".originals, a.original-study").count() == 0
    assert not problems, problems


async def test_a_film_whose_original_has_no_link_points_to_its_study_uid(
        world: World, tmp_path: Path, orthanc: OrthancServer,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The gateway found the original study, but the PACS gave no address to view it (no
    viewer configured, no retrieve URL): the line points to the study UID listed under it."""
    patient, today = f"LBX-{uuid.uuid4().hex[:8]}", dt.datetime.now(dt.UTC).date()
    async with desktop_team(world, tmp_path, orthanc) as team, \
            browser_page(timezone_id="UTC") as (page, problems):
        original = original_study(patient, "LBX", today)
        study_uid = pydicom.dcmread(io.BytesIO(original)).StudyInstanceUID
        await team.pacs.store([original])
        find_studies = team.gateway.pacs.find_studies

        async def no_address(patient_id: str, **kw: Any) -> Any:
            return [dataclasses.replace(s, retrieve_url=None)
                    for s in await find_studies(patient_id, **kw)]

        monkeypatch.setattr(team.gateway.pacs, "find_studies", no_address)
        await unlock_page(page, team.desktop)
        await send_photo(team.intern, RecordData(
            patient_name="Testpatient^Delta", patient_id=patient, birth_date="1962-03-04",
            anatomic_region="wrist", capture=CaptureKind.FILM),
            text="Old film: union?", subject="Film, no viewer")
        await team.gateway.start()
        await page.locator(".thread-item", has_text="Film, no viewer").click()
        listed = page.locator("span.original-study")
        await listed.wait_for(timeout=seconds(60) * 1000)
        assert await page.inner_text(".message .not-diagnostic") == BY_UID
        assert await listed.inner_text() == (
            f"Original study in PACS (CR, {today:%Y-%m-%d}, XR WRIST 2 VIEWS): {study_uid}")
        assert await page.locator("a.original-study").count() == 0
        await page.screenshot(path=SHOTS / "07-film-original-without-link.png")
    assert not problems, problems


async def test_her_own_reply_lists_the_intern_s_receipts_and_not_her_own_phone_s(
        world: World, tmp_path: Path, orthanc: OrthancServer) -> None:
    async with desktop_team(world, tmp_path, orthanc) as team, \
            browser_page() as (page, problems):
        phone = await phone_linked_from_the_desktops_profile(world, tmp_path, "bo-phone")
        await phone.start(wait_connected=seconds(10))
        try:
            await unlock_page(page, team.desktop)
            thread = await team.intern.client.create_thread(roles=[ORTHO])
            await team.intern.client.send_text(thread.thread_id, "Bay 4: Colles?",
                                               subject="Bay 4 wrist")
            await page.locator(".thread-item", has_text="Bay 4 wrist").click()
            await page.get_by_text("Bay 4: Colles?").wait_for()
            await page.fill("#reply-text", "Reduce and cast; fracture clinic Monday.")
            await page.click("#reply-send")
            own = page.locator(".message.mine:not(.pending)",
                               has_text="Reduce and cast; fracture clinic Monday.")
            await own.wait_for()
            message_id = await own.get_attribute("data-message-id")
            desktop = team.desktop.client
            assert desktop is not None and message_id

            def phone_receipt() -> bool:  # her phone's "delivered", as the desktop holds it
                view = desktop.view(desktop.vault.message(message_id))
                return any(r.user_id == desktop.user_id and r.device_id == phone.device_id
                           for r in view.receipts)

            async with asyncio.timeout(seconds(30)):
                while not phone_receipt():
                    await asyncio.sleep(0.1)
        finally:
            await phone.close()
        await team.intern.client.mark_read(thread.thread_id)
        receipts = own.locator(".receipts")
        await receipts.filter(has_text="Dr Ada Intern: read").wait_for(
            timeout=seconds(30) * 1000)
        # the intern's receipts only: her own phone is no recipient
        assert await receipts.inner_text() == "Dr Ada Intern: delivered; Dr Ada Intern: read"
        await page.screenshot(path=SHOTS / "04-own-reply-receipts.png")
    assert not problems, problems


async def test_a_reply_sent_minutes_after_it_was_written_says_both_times(
        world: World, tmp_path: Path, orthanc: OrthancServer,
        monkeypatch: pytest.MonkeyPatch) -> None:
    async with desktop_team(world, tmp_path, orthanc) as team, \
            browser_page(timezone_id="UTC") as (page, problems):
        intern_events = team.intern.client.subscribe()
        await unlock_page(page, team.desktop)
        thread = await team.intern.client.create_thread(roles=[ORTHO])
        await team.intern.client.send_text(thread.thread_id, "Bay 6: Maisonneuve?",
                                           subject="Bay 6 ankle")
        await page.locator(".thread-item", has_text="Bay 6 ankle").click()
        await page.get_by_text("Bay 6: Maisonneuve?").wait_for()
        # Stopped off this loop: the desktop's client on it answers the relay's closing handshake.
        await asyncio.to_thread(world.relay.stop)
        await page.fill("#reply-text", "Get a full-length tib fib film.")
        await page.click("#reply-send")
        pending = page.locator(".message.mine.pending", has_text="Get a full-length tib fib film.")
        await pending.wait_for()
        await page.screenshot(path=SHOTS / "05-reply-kept-while-the-relay-is-down.png")
        # Five minutes pass before the relay is back (the desktop client's injected clock).
        desktop = team.desktop.client
        assert desktop is not None
        (kept,) = desktop.pending_sends()
        written = kept.created_at
        monkeypatch.setattr(desktop.sender, "_clock", lambda: time.time() + LATER)
        settings = make_settings(trusted_orgs_file=tmp_path / "trusted-orgs.json",
                                 port=int(world.relay.base_url.rsplit(":", 1)[1]),
                                 attachment_chunk_bytes=64 * 1024, expiry_grace=3,
                                 expiry_sweep_interval=0.5)
        async with running_relay(world.dsn, settings):
            sent = page.locator(".message.mine:not(.pending)",
                                has_text="Get a full-length tib fib film.")
            await sent.wait_for(timeout=seconds(60) * 1000)
            reply = await wait_for_event(
                intern_events, MessageEvent,
                lambda e: e.body.text == "Get a full-length tib fib film.")
            # the intern's side (`lightbox watch` prints it) shows the signed header's time
            header_time = team.intern.client.authorship(reply.message, reply.body).written_at
            assert header_time >= written + LATER - 1
            meta = await sent.locator(".meta").first.inner_text()
            assert meta == f"you - written {hhmm(written)}, sent {hhmm(header_time)}", meta
            # the inbox list gives the consult's last message the same sent time
            listed = page.locator(".thread-item", has_text="Bay 6 ankle").locator(".meta")
            await listed.filter(has_text=hhmm(header_time)).wait_for(timeout=seconds(30) * 1000)
            assert hhmm(written) not in await listed.inner_text()
            await page.screenshot(path=SHOTS / "06-reply-written-then-sent.png")
    assert not problems, problems
