"""The specialist's desktop client in a real browser (Debian's Chromium, driven by Playwright)
against a real relay: unlock, see an urgent consult arrive (urgent first), open the image and
change its contrast (the photo of a film marked as not of diagnostic quality, next to the image
and in the viewer), reply, acknowledge, see it filed in the record by the real record gateway
(into a real Orthanc) with its study named from the filing receipt, and then see the
image replaced by its record reference when its copy expires after the grace period.
Screenshots of every step go to test-artefacts/desktop/.
Also: the local server's guards (per-launch secret, session cookie, CSRF token, Host check,
CSP).

The world these tests share with tests/clients/test_desktop_safety.py (the clinical-safety
features of CLINICAL_SAFETY.md) is built here: :func:`desktop_team`, :func:`send_photo`,
:func:`browser_page`, :func:`unlock_page`, :func:`desktop_http`, :func:`wait_for_event`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from clients.desktop.app import DesktopServer
from clients.gateway.app import RecordGateway
from clients.gateway.pacs import PacsClient
from clients.sdk import imaging
from clients.sdk.client import MessageEvent, ReceiptEvent, SentMessage
from clients.sdk.consent import ConsentCapture, capture_consent, image_hash, register_consent
from clients.sdk.filing import FILING_PURPOSES
from protocol import api
from protocol.body import CaptureKind, IdentifierKind, RecordData
from protocol.consent import ConsentBasis, ConsentDecision
from protocol.model import DeviceKind, Priority, Purpose
from tests.browser import browser_context
from tests.clinician_world import Clinician, enrol_clinician
from tests.consent_world import xray_png
from tests.filing_world import enrol_gateway, orthanc_gateway
from tests.helpers import ROOT, page_problems, seconds
from tests.identity_world import PASSWORD, World
from tests.orthanc import OrthancServer

SHOTS = ROOT / "test-artefacts" / "desktop"
ORTHO = "orthopaedics_oncall"


# The relay of the desktop's tests (and of the modules that share them): a short grace after
# filing, swept often, so the copy expires within the test.
DESKTOP_WORLD = pytest.mark.world(attachment_chunk_bytes=64 * 1024, expiry_grace=3,
                                  expiry_sweep_interval=0.5)
pytestmark = DESKTOP_WORLD


async def wait_for_event(queue: asyncio.Queue[Any], kind: type, match: Any) -> Any:
    async with asyncio.timeout(seconds(15)):
        while True:
            event = await queue.get()
            if isinstance(event, kind) and match(event):
                return event


@dataclasses.dataclass
class DesktopTeam:
    """An intern (started) who consults the orthopaedic on-call specialist, whose profile the
    desktop client serves (started, vault locked: the page or :func:`desktop_http` unlocks
    it), and the organisation's record gateway filing into the real Orthanc (not started: a
    test starts it when the images should be filed)."""

    intern: Clinician
    specialist: Clinician
    desktop: DesktopServer
    gateway: RecordGateway
    pacs: PacsClient


@contextlib.asynccontextmanager
async def desktop_team(world: World, tmp_path: Path,
                       orthanc: OrthancServer) -> AsyncIterator[DesktopTeam]:
    intern = await enrol_clinician(world, tmp_path, "intern", display_name="Dr Ada Intern")
    profile = tmp_path / "specialist-profile"
    specialist = await enrol_clinician(world, tmp_path, "ortho", roles=(ORTHO,),
                                       display_name="Dr Bo Ortho", vault_dir=profile,
                                       kind=DeviceKind.DESKTOP)
    specialist.vault.lock()  # the desktop opens it with the password
    desktop = DesktopServer(profile, client_options={"backoff_base": 0.05, "backoff_max": 0.5})
    await desktop.start()
    gateway = await enrol_gateway(world, tmp_path)
    gw, pacs = orthanc_gateway(gateway, orthanc)
    try:
        await intern.client.start(wait_connected=seconds(10))
        yield DesktopTeam(intern, specialist, desktop, gw, pacs)
    finally:
        await gw.stop()
        await pacs.aclose()
        await intern.client.close()
        intern.vault.lock()
        await desktop.stop()


async def send_photo(intern: Clinician, record: RecordData, *, text: str, subject: str,
                     purpose: Purpose = Purpose.DIRECT_CARE,
                     priority: Priority = Priority.URGENT,
                     consent_users: tuple[str, ...] = (),
                     consent_purposes: tuple[Purpose, ...] = (),
                     burned_in: tuple[IdentifierKind, ...] = (),
                     thread: api.ThreadInfo | None = None
                     ) -> tuple[api.ThreadInfo, SentMessage]:
    """A new consult to the orthopaedic on-call role with a photo of an x-ray and, for direct
    care, the patient's record data (a de-identified share carries none), under the patient's
    consent for ``purpose`` and ``consent_purposes`` (treatment attestation for direct care
    alone, written otherwise; ``consent_users`` also named), registered. ``burned_in``: the
    identifier kinds the sender's text recognition found in the image. ``thread``: into this
    consult instead of a new one."""
    prepared = imaging.prepare_image(xray_png(900, 700))
    purposes = list(dict.fromkeys([purpose, *consent_purposes]))
    token, _ = capture_consent(intern.vault.state, ConsentCapture(
        purposes=purposes, images=[image_hash(prepared.image.data)],
        decision=ConsentDecision.AGREED,
        basis=ConsentBasis.TREATMENT_ATTESTATION if purposes == [Purpose.DIRECT_CARE]
        else ConsentBasis.WRITTEN,
        recipient_roles=[ORTHO], recipient_users=consent_users,
        permanence_statement_shown=True, no_effect_on_care_statement_shown=True))
    await register_consent(intern.client.relay, token)
    if thread is None:
        thread = await intern.client.create_thread(roles=[ORTHO], priority=priority)
    sent = await intern.client.send_image(thread.thread_id, prepared.image, consent_token=token,
                                          text=text, subject=subject,
                                          record=record if purpose in FILING_PURPOSES else None,
                                          purpose=purpose, burned_in=burned_in)
    return thread, sent


async def send_wrist_xray(intern: Clinician) -> SentMessage:
    """:func:`send_photo` of Jane Doe's wrist film (MRN123), urgent, to the on-call role."""
    _, sent = await send_photo(
        intern, RecordData(patient_name="Doe^Jane", patient_id="MRN123",
                           birth_date="1970-01-01", anatomic_region="wrist",
                           capture=CaptureKind.FILM),
        text="Scaphoid? Please review.", subject="Wrist x-ray, bed 9")
    return sent


@contextlib.asynccontextmanager
async def browser_page(*, full: bool = False, **options: Any
                       ) -> AsyncIterator[tuple[Any, list[str]]]:
    """A page in a real Chromium, in a context of its own (tests/browser.py), and the console
    errors and page errors it reports; ``options`` for its context (``locale``,
    ``timezone_id``...); ``full``: in the whole browser (its PDF viewer, say)."""
    async with browser_context(full=full, viewport={"width": 1280, "height": 900},
                               **options) as context:
        page = await context.new_page()
        # Unlocking runs Argon2id (the vault's real cost); a loaded machine needs longer.
        page.set_default_timeout(seconds(60) * 1000)
        yield page, page_problems(page)


async def unlock_page(page: Any, desktop: DesktopServer) -> None:
    """Open the launch address and unlock with the password, as the specialist does."""
    await page.goto(desktop.launch_url)
    await page.fill("#password", PASSWORD)
    await page.press("#password", "Enter")
    await page.locator("#inbox").wait_for()
    await page.locator("#conn", has_text="connected").wait_for()


async def urgent_consult_open(page: Any, team: DesktopTeam, text: str, subject: str
                              ) -> tuple[api.ThreadInfo, SentMessage, Any]:
    """The intern sends an urgent consult to the orthopaedic on-call role; the specialist
    opens it on the page. Returns the thread, the message and its element on the page."""
    thread = await team.intern.client.create_thread(roles=[ORTHO], priority=Priority.URGENT)
    sent = await team.intern.client.send_text(thread.thread_id, text, subject=subject)
    await page.locator(".thread-item", has_text=subject).click()
    shown = page.locator(f'.message[data-message-id="{sent.message_id}"]')
    await shown.wait_for()
    return thread, sent, shown


async def urgent_consult_read(page: Any, team: DesktopTeam, text: str, subject: str
                              ) -> tuple[api.ThreadInfo, SentMessage, Any]:
    """:func:`urgent_consult_open`, and read: the list's refresh that follows has answered (a
    request still on its way when the vault locks, or is erased, is answered 423, rightly,
    and the console would show it)."""
    opened = await urgent_consult_open(page, team, text, subject)
    await page.locator(".thread-item.selected .badge").wait_for(state="detached")
    return opened


@contextlib.asynccontextmanager
async def desktop_http(desktop: DesktopServer) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client that holds what the page holds: the session cookie (from the launch
    address) and the CSRF token; the vault unlocked with the password."""
    async with httpx.AsyncClient(base_url=desktop.origin, timeout=seconds(60),
                                 headers={"X-CSRF-Token": desktop.csrf}) as http:
        r = await http.get(f"/?k={desktop.secret}")
        assert r.status_code == 303
        r = await http.post("/api/unlock", json={"password": PASSWORD})
        assert r.status_code == 200, r.text
        yield http


async def test_specialist_sees_an_urgent_consult_views_replies_and_acknowledges(
        world: World, tmp_path: Path, orthanc: OrthancServer) -> None:
    shutil.rmtree(SHOTS, ignore_errors=True)
    SHOTS.mkdir(parents=True)
    async with desktop_team(world, tmp_path, orthanc) as team, \
            browser_page() as (page, problems):
        intern, specialist, desktop, gw = team.intern, team.specialist, team.desktop, team.gateway
        events = intern.client.subscribe()
        # 1. log in: the launch address sets the session cookie, the vault unlocks
        await page.goto(desktop.launch_url)
        assert "k=" not in page.url  # the secret left the address bar
        await page.locator("#password").wait_for()
        await page.screenshot(path=SHOTS / "01-unlock.png")
        await page.fill("#password", "not my password")
        await page.press("#password", "Enter")
        await page.locator("#unlock-error", has_text="wrong password").wait_for()
        problems.clear()  # the browser logs that 401 as a console error
        await page.fill("#password", PASSWORD)
        await page.press("#password", "Enter")
        await page.locator("#inbox").wait_for()
        await page.locator("#conn", has_text="connected").wait_for()
        await page.screenshot(path=SHOTS / "02-inbox-empty.png")

        # 2. a routine consult, then an urgent one with an x-ray: urgent comes first
        routine = await intern.client.create_thread(users=[specialist.user_id])
        await intern.client.send_text(routine.thread_id, "Routine: clinic letter query",
                                      subject="Clinic letter")
        urgent, sent = await send_photo(
            intern, RecordData(patient_name="Testpatient^Alpha", patient_id="LBX-0042",
                               birth_date="1957-03-14", anatomic_region="wrist",
                               capture=CaptureKind.FILM),
            text="Displaced distal radius fracture? Please review.",
            subject="Wrist x-ray, bed 4")
        first = page.locator(".thread-item").first
        await first.filter(has_text="Wrist x-ray, bed 4").wait_for(timeout=15000)
        assert "urgent" in (await first.get_attribute("class") or "")
        assert await page.locator(".thread-item").count() == 2
        await page.screenshot(path=SHOTS / "03-urgent-consult-arrived.png")

        # 3. open it (keyboard: focus, Enter); the image, the patient data, the consent
        await first.focus()
        await page.keyboard.press("Enter")
        thumb = page.locator(".thumb")
        await thumb.wait_for(timeout=15000)
        await page.locator(".record", has_text="LBX-0042").wait_for()
        consent = page.locator(".consent")
        await consent.filter(has_text="direct care").wait_for()
        assert "role orthopaedics_oncall" in await consent.inner_text()
        # a photo of a film is marked as not the study itself (CLINICAL_SAFETY.md)
        await page.locator(".message .not-diagnostic",
                           has_text="not of diagnostic quality").wait_for()
        await page.screenshot(path=SHOTS / "04-thread.png")
        # The browser may keep no copy of the image: the desktop serves it no-store.
        cache = await page.evaluate(
            "async (a) => (await fetch('/api/images/' + a)).headers.get('cache-control')",
            await thumb.get_attribute("data-attachment-id"))
        assert cache == "no-store"

        # 4. the viewer: zoom with the keyboard, then lower the contrast window
        await thumb.click()
        canvas = page.locator("#canvas")
        await canvas.wait_for()
        # not filed yet: the original study is not looked up, and nothing offers it
        await page.locator("#viewer .not-diagnostic",
                           has_text="its original study has not been looked up yet").wait_for()
        sample = ("() => { const c = document.getElementById('canvas');"
                  " const d = c.getContext('2d').getImageData(c.width/2 - 50, c.height/2,"
                  " 100, 1).data; let s = 0; for (const v of d) s += v; return s; }")
        before = await page.evaluate(sample)
        await page.keyboard.press("+")
        assert await canvas.get_attribute("data-scale") == "1.25"
        await page.fill("#contrast", "80")
        assert await canvas.get_attribute("data-window") == "80"
        after = await page.evaluate(sample)
        assert after != before  # the pixels changed, not just a number
        await page.screenshot(path=SHOTS / "05-image-contrast.png")
        await page.keyboard.press("Escape")
        await page.locator("#viewer").wait_for(state="hidden")

        # 5. reply
        await page.keyboard.press("r")
        await page.keyboard.type("Splint and send to fracture clinic; I will see at 8.")
        await page.click("#reply-send")
        reply = await wait_for_event(events, MessageEvent,
                                     lambda e: e.body.text.startswith("Splint and send"))
        assert reply.message.thread_id == urgent.thread_id
        await page.locator(".message.mine").wait_for()
        await page.screenshot(path=SHOTS / "06-replied.png")

        # 6. acknowledge ("I'm on it"): the intern sees the signed receipt
        await page.click(f'.ack-button[data-message-id="{sent.message_id}"]')
        await page.locator(".ack-state").wait_for()
        ack = await wait_for_event(events, ReceiptEvent, lambda e: e.kind == "acknowledged")
        assert ack.message_id == sent.message_id and ack.display_name == "Dr Bo Ortho"
        await page.screenshot(path=SHOTS / "07-acknowledged.png")

        # 7. the record gateway (started only now, so the specialist had the image while
        # reading) files it into the PACS: the thread shows it filed in the record
        await gw.start()
        await page.locator(".filing").wait_for()
        # the gateway's filing receipt names the study the photo was filed into (its own
        # consult study, so it is not presented as the original imaging study)
        await page.locator(".pacs-study").wait_for()
        study = await page.locator(".pacs-study").inner_text()
        assert study.startswith("Filed in PACS as study ")
        assert "not the original imaging study" in study
        assert gw.filed and gw.filed[0].study_instance_uid in study
        await page.screenshot(path=SHOTS / "08-filed.png")

        # 8. after the grace period the relay orders every copy to expire: the image is
        # replaced by its record reference
        await page.locator(".expired").wait_for()
        assert await page.locator(".thumb").count() == 0
        await page.screenshot(path=SHOTS / "09-expired.png")
        assert not problems, problems
    for step in ("01", "03", "05", "07", "08", "09"):
        assert any(p.name.startswith(step) for p in SHOTS.iterdir())


async def test_the_local_server_refuses_other_sites_and_missing_secrets(tmp_path: Path) -> None:
    desktop = DesktopServer(tmp_path / "no-profile")
    await desktop.start()
    try:
        async with httpx.AsyncClient(base_url=desktop.origin) as http:
            r = await http.get("/")
            assert r.status_code == 403 and "lightbox desktop" in r.json()["error"]
            assert "default-src 'none'" in r.headers["content-security-policy"]
            r = await http.get("/?k=wrong")
            assert r.status_code == 403
            r = await http.get(f"/?k={desktop.secret}")
            assert r.status_code == 303 and "httponly" in r.headers["set-cookie"].lower()
            assert "samesite=strict" in r.headers["set-cookie"].lower()
            page = await http.get("/")
            assert page.status_code == 200 and desktop.csrf in page.text
            # state changes need the CSRF token and a same origin
            r = await http.post("/api/lock", json={})
            assert r.status_code == 403 and "CSRF" in r.json()["error"]
            r = await http.post("/api/lock", json={}, headers={
                "X-CSRF-Token": desktop.csrf, "Origin": "http://evil.example"})
            assert r.status_code == 403
            r = await http.post("/api/lock", json={}, headers={"X-CSRF-Token": desktop.csrf})
            assert r.status_code == 200
            # a rebinding attack arrives with another Host header
            r = await http.get("/api/state", headers={"Host": "evil.example"})
            assert r.status_code == 421
            r = await http.get("/api/threads")
            assert r.status_code == 423  # locked
            r = await http.post("/api/unlock", json={"password": "x"},
                                headers={"X-CSRF-Token": desktop.csrf})
            assert r.status_code == 401
    finally:
        await desktop.stop()
