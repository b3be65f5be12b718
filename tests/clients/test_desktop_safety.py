"""The desktop client's part of CLINICAL_SAFETY.md (clinical safety), against a real relay, a real
record gateway filing into a real Orthanc and, for the page, a real Chromium (the world of
tests/clients/test_desktop.py):

* the patient's consent form: ``GET /api/messages/{id}/consent.pdf`` serves the
  one-page PDF of the consent a message carries (its text read back with poppler's
  ``pdftotext``), 404 ``consent_not_found`` when there is none; the page opens it in a tab;
* the free-text guard: a reply carries the purpose of the message it answers, and a
  reply leaving direct care whose text holds an exact age or a date of service is held back
  (409 ``text_guard`` with a suggested rewrite) until the clinician confirms; the page shows
  the warning, "Use suggested wording" and "Send anyway";
* a photo of a film: the page links to the original study the gateway found in PACS
  by patient and date, or says it was not found, once the photo is filed.

Screenshots go to test-artefacts/desktop-safety/.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import io
import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest

from clients.desktop.views import ReplyPlan, note, reply_plan, study_json
from clients.desktop.web import Refused
from clients.sdk.client import ClientEvent, EscalationEvent, MessageEvent, MessageView
from clients.sdk.consent_pdf import PRIVACY_CONTACT_ENV
from clients.sdk.vault import VaultMessage
from protocol.body import (
    Body,
    BodyKind,
    CaptureKind,
    ConsentFiling,
    FilingReceipt,
    OriginalStudy,
    RecordData,
)
from protocol.consent import (
    ConsentBasis,
    ConsentClaims,
    ConsentDecision,
    ConsentRecipients,
    issue_consent_token,
)
from protocol.frames import EscalationKind, EscalationNotice
from protocol.model import Priority, Purpose
from tests.clients import test_desktop
from tests.clients.test_desktop import (
    DesktopTeam,
    browser_page,
    desktop_http,
    desktop_team,
    send_photo,
    unlock_page,
    wait_for_event,
)
from tests.helpers import ROOT
from tests.identity_world import World
from tests.orthanc import OrthancServer, original_study

pytestmark = test_desktop.DESKTOP_WORLD  # the same relay as the desktop's own tests

SHOTS = ROOT / "test-artefacts" / "desktop-safety"
PDF_VIEWER = "mhjfbmdgcfjbbpaeojofohoefgiehjai"  # Chromium's built-in PDF viewer (extension id)
PRIVACY = "the Privacy Office, privacy@st-elsewhere.example"
NO_ORIGINAL = ("Photo of a film/monitor \u2014 not of diagnostic quality; the record gateway found "
               "no original study in PACS for this patient around this date: look in the PACS "
               "by the patient's ID and the date, and tell the record gateway's operator if the "
               "study is there")
# An exact age and a date of service: what the free-text guard keeps out of teaching material.
AGED = "Good teaching case: a 47-year-old with a distal radius fracture, seen on 3 March."
REWRITTEN = ("Good teaching case: a patient in their 40s with a distal radius fracture, "
             "seen on 3 March.")


def film(patient_id: str = "LBX-0043") -> RecordData:
    return RecordData(patient_name="Testpatient^Beta", patient_id=patient_id,
                      birth_date="1960-01-02", anatomic_region="wrist", capture=CaptureKind.FILM)


def pdf_text(pdf: bytes) -> str:
    """The PDF's text as poppler reads it, whitespace collapsed (lines wrap on the page)."""
    assert shutil.which("pdftotext"), "pdftotext missing: install Debian poppler-utils " \
                                      "(make system-deps)"
    out = subprocess.run(["pdftotext", "-", "-"], input=pdf, capture_output=True, check=True)
    return " ".join(out.stdout.decode().split())


@contextlib.asynccontextmanager
async def unlocked_team(world: World, tmp_path: Path, orthanc: OrthancServer
                        ) -> AsyncIterator[tuple[DesktopTeam, httpx.AsyncClient,
                                                 asyncio.Queue[ClientEvent]]]:
    """The desktop team, an HTTP client holding the page's session, and the desktop client's
    events from now on."""
    async with desktop_team(world, tmp_path, orthanc) as team, \
            desktop_http(team.desktop) as http:
        assert team.desktop.client is not None
        yield team, http, team.desktop.client.subscribe()


async def thread_messages(http: httpx.AsyncClient, thread_id: str) -> list[dict[str, Any]]:
    """A thread's messages as the page gets them: the inbox first (which lists new threads),
    then the thread."""
    assert (await http.get("/api/threads")).status_code == 200
    r = await http.get(f"/api/threads/{thread_id}")
    assert r.status_code == 200, r.text
    messages: list[dict[str, Any]] = r.json()["messages"]
    return messages


# --- the patient's consent form -------------------------------------------------------


async def test_the_patients_consent_form_is_a_pdf_with_the_consent_purposes_contact_and_patient(
        world: World, tmp_path: Path, orthanc: OrthancServer,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PRIVACY_CONTACT_ENV, PRIVACY)
    async with unlocked_team(world, tmp_path, orthanc) as (team, http, arrived):
        thread, sent = await send_photo(team.intern, film(), text="Wrist, displaced?",
                                        subject="Wrist", consent_purposes=(Purpose.TEACHING,),
                                        consent_users=(team.specialist.user_id,))
        await wait_for_event(arrived, MessageEvent,
                             lambda e: e.message.message_id == sent.message_id)
        (message,) = await thread_messages(http, thread.thread_id)
        consent = message["consent"]
        assert consent["pdf_url"] == f"/api/messages/{sent.message_id}/consent.pdf"

        r = await http.get(consent["pdf_url"])
        assert r.status_code == 200
        assert r.headers["content-type"] == "application/pdf"
        assert r.headers["content-disposition"] == \
            f'inline; filename="consent-{consent["consent_id"]}.pdf"'
        assert r.headers["cache-control"] == "no-store"
        assert r.content.startswith(b"%PDF-")
    text = pdf_text(r.content)
    assert f"Consent reference: {consent['consent_id']}" in text
    assert "Teaching healthcare staff and students (identifying details removed): agreed" in text
    assert "Your care: sharing with the clinicians treating you: agreed" in text
    assert "Medical research (identifying details removed): not agreed (not asked)" in text
    assert f"Contact {PRIVACY} and quote the consent reference {consent['consent_id']}" in text
    assert "Patient: Testpatient, Beta" in text
    # names from the certificates this device verified, never a bare user id
    assert "Named clinicians: Dr Bo Ortho" in text and "by Dr Ada Intern" in text
    assert "your copy" in text  # the patient's copy, not the record's


async def test_a_consent_form_for_a_consent_that_does_not_exist_is_404(
        world: World, tmp_path: Path, orthanc: OrthancServer) -> None:
    async with unlocked_team(world, tmp_path, orthanc) as (team, http, arrived):
        intern = team.intern.client
        thread = await intern.create_thread(roles=[test_desktop.ORTHO])
        plain = await intern.send_text(thread.thread_id, "Any news on bed 4?")
        # A body naming a "consent token" that is none (a faulty sender): sealed as send_text
        # would seal it, so the desktop receives it like any message.
        garbled, _ = await intern.sender.send_body(
            thread.thread_id, Body(text="consent attached", consent_token="not.a.token"),
            purpose=Purpose.DIRECT_CARE, priority=Priority.ROUTINE)
        for sent in (plain, garbled):
            await wait_for_event(arrived, MessageEvent,
                                 lambda e, s=sent: e.message.message_id == s.message_id)

        for sent in (plain, garbled):
            r = await http.get(f"/api/messages/{sent.message_id}/consent.pdf")
            assert r.status_code == 404
            assert r.json()["error"] == "consent_not_found"
        r = await http.get(f"/api/messages/{uuid.uuid4()}/consent.pdf")
        assert (r.status_code, r.json()) == (404, {"error": "no such message"})
        r = await http.get("/api/messages/not-a-message-id/consent.pdf")
        assert (r.status_code, r.json()) == (404, {"error": "not found"})
        # guarded like every other route: no session cookie, no form
        async with httpx.AsyncClient(base_url=team.desktop.origin) as stranger:
            r = await stranger.get(f"/api/messages/{plain.message_id}/consent.pdf")
            assert r.status_code == 403 and r.headers["content-type"] == "application/json"


# --- the free-text guard on replies ---------------------------------------------------


async def test_a_teaching_reply_with_an_exact_age_is_held_back_with_a_rewrite_and_not_sent(
        world: World, tmp_path: Path, orthanc: OrthancServer) -> None:
    async with unlocked_team(world, tmp_path, orthanc) as (team, http, arrived):
        thread, sent = await send_photo(team.intern, film(), purpose=Purpose.TEACHING,
                                        text="For the teaching file?", subject="Teaching")
        await wait_for_event(arrived, MessageEvent,
                             lambda e: e.message.message_id == sent.message_id)

        r = await http.post(f"/api/threads/{thread.thread_id}/reply", json={"text": AGED})
        assert r.status_code == 409
        warning = r.json()
        assert warning["error"] == "text_guard" and warning["purpose"] == "teaching"
        assert [f["kind"] for f in warning["findings"]] == ["exact_age", "date_of_service"]
        age, when = warning["findings"]
        assert (age["text"], age["suggestion"]) == ("a 47-year-old", "a patient in their 40s")
        assert when["text"].startswith("seen on 3 March") and "interval" in when["suggestion"]
        assert warning["suggestion"] == REWRITTEN
        # nothing was sealed: this device holds the consult and no reply
        messages = await thread_messages(http, thread.thread_id)
        assert [m["message_id"] for m in messages] == [sent.message_id]


async def test_a_confirmed_teaching_reply_is_sent_as_written_for_teaching(
        world: World, tmp_path: Path, orthanc: OrthancServer) -> None:
    async with unlocked_team(world, tmp_path, orthanc) as (team, http, arrived):
        replies = team.intern.client.subscribe()
        thread, sent = await send_photo(team.intern, film(), purpose=Purpose.TEACHING,
                                        text="For the teaching file?", subject="Teaching")
        await wait_for_event(arrived, MessageEvent,
                             lambda e: e.message.message_id == sent.message_id)

        r = await http.post(f"/api/threads/{thread.thread_id}/reply",
                            json={"text": AGED, "confirmed": True})
        assert r.status_code == 200, r.text
        assert r.json()["purpose"] == "teaching"
        reply = await wait_for_event(replies, MessageEvent, lambda e: e.body.text == AGED)
        # sealed for the consult's purpose (the relay took it under the consult's consent)
        assert reply.message.purpose == "teaching"
        assert reply.message.message_id == r.json()["message_id"]
        assert reply.message.thread_id == thread.thread_id


async def test_a_direct_care_reply_is_sent_without_a_warning(
        world: World, tmp_path: Path, orthanc: OrthancServer) -> None:
    async with unlocked_team(world, tmp_path, orthanc) as (team, http, arrived):
        replies = team.intern.client.subscribe()
        thread, sent = await send_photo(team.intern, film(), text="Please review.",
                                        subject="Wrist")
        await wait_for_event(arrived, MessageEvent,
                             lambda e: e.message.message_id == sent.message_id)

        r = await http.post(f"/api/threads/{thread.thread_id}/reply", json={"text": AGED})
        assert r.status_code == 200, r.text
        assert r.json()["purpose"] == "direct_care"
        reply = await wait_for_event(replies, MessageEvent, lambda e: e.body.text == AGED)
        assert reply.message.purpose == "direct_care"


async def test_a_reply_with_bad_input_is_refused_with_the_exact_error(
        world: World, tmp_path: Path, orthanc: OrthancServer) -> None:
    async with unlocked_team(world, tmp_path, orthanc) as (team, http, arrived):
        thread = await team.intern.client.create_thread(roles=[test_desktop.ORTHO])
        sent = await team.intern.client.send_text(thread.thread_id, "Bed 4, wrist.")
        await wait_for_event(arrived, MessageEvent,
                             lambda e: e.message.message_id == sent.message_id)
        path = f"/api/threads/{thread.thread_id}/reply"
        cases = [
            (path, {"text": "ok", "confirmed": "yes"}, 400, "confirmed must be true or false"),
            (path, {"text": "   "}, 400, "write a reply first"),
            (path, {"text": "ok", "reply_to": str(uuid.uuid4())}, 404,
             "no such message in this thread"),
            (f"/api/threads/{uuid.uuid4()}/reply", {"text": "ok"}, 404, "no such thread"),
        ]
        for url, body, status, error in cases:
            r = await http.post(url, json=body)
            assert (r.status_code, r.json()["error"]) == (status, error), body
        messages = await thread_messages(http, thread.thread_id)
        assert [m["message_id"] for m in messages] == [sent.message_id]


# --- which purpose a reply has (no sockets) -----------------------------------------------------

THREAD = str(uuid.uuid4())
T0 = int(dt.datetime(2026, 11, 22, tzinfo=dt.UTC).timestamp())
NEED = "No hand surgeon on call here tonight; your opinion on fixation is needed."


def _token(*purposes: Purpose) -> tuple[str, str]:
    jti = str(uuid.uuid4())
    claims = ConsentClaims(
        jti=jti, iss=str(uuid.uuid4()), org="st-elsewhere", patient="pt-1",
        purposes=list(purposes),
        recipients=ConsentRecipients(users=[], roles=["orthopaedics_oncall"], orgs=[],
                                     external=Purpose.EXTERNAL_CONSULT in purposes),
        images=["ab" * 32], form_version="2026.1", decision=ConsentDecision.AGREED,
        basis=ConsentBasis.WRITTEN, permanence_statement_shown=True,
        no_effect_on_care_statement_shown=True, iat=T0, nbf=T0, exp=T0 + 86400)
    return issue_consent_token(claims, bytes(range(32))), jti


def _view(purpose: Purpose, *, mine: bool = False, body: Body | None = None) -> MessageView:
    message = VaultMessage(message_id=str(uuid.uuid4()), thread_id=THREAD,
                           sender_user_id=str(uuid.uuid4()), sender_device_id=str(uuid.uuid4()),
                           sent_at=float(T0), body="", purpose=purpose.value, outgoing=mine)
    return MessageView(message, body or Body(text="..."), (), (), False)


def test_a_reply_takes_the_purpose_and_consent_of_the_message_it_answers() -> None:
    token, jti = _token(Purpose.TEACHING)
    teaching = _view(Purpose.TEACHING, body=Body(text="teaching?", consent_token=token))
    later = _view(Purpose.DIRECT_CARE)
    views = [teaching, later]
    assert reply_plan(views, teaching.message.message_id) == ReplyPlan(Purpose.TEACHING, jti)
    assert reply_plan(views, later.message.message_id) == ReplyPlan(Purpose.DIRECT_CARE)


def test_a_reply_naming_no_message_answers_the_latest_incoming_clinician_message() -> None:
    token, jti = _token(Purpose.RESEARCH)
    consult = _view(Purpose.RESEARCH, body=Body(text="for the registry", consent_token=token))
    question = _view(Purpose.RESEARCH)  # a later question in the consult, under its consent
    mine = _view(Purpose.DIRECT_CARE, mine=True)
    receipt = _view(Purpose.DIRECT_CARE, body=Body(kind=BodyKind.FILING_RECEIPT))
    assert reply_plan([consult, question, mine, receipt], None) == \
        ReplyPlan(Purpose.RESEARCH, jti)
    assert reply_plan([mine], None) == ReplyPlan(Purpose.DIRECT_CARE)
    assert reply_plan([], None) == ReplyPlan(Purpose.DIRECT_CARE)


def test_a_reply_to_an_external_consult_carries_its_necessity_statement() -> None:
    token, jti = _token(Purpose.EXTERNAL_CONSULT)
    consult = _view(Purpose.EXTERNAL_CONSULT,
                    body=Body(text="opinion?", consent_token=token, necessity=NEED))
    assert reply_plan([consult], None) == ReplyPlan(Purpose.EXTERNAL_CONSULT, jti, NEED)


def test_a_reply_to_a_message_outside_the_thread_is_404() -> None:
    with pytest.raises(Refused) as refused:
        reply_plan([_view(Purpose.DIRECT_CARE)], str(uuid.uuid4()))
    assert (refused.value.status, refused.value.message) == (404, "no such message in this thread")


# --- the original study of a photo of a film (no sockets) -------------------------------


def test_the_filed_study_lists_the_original_studies_in_order_and_drops_links_that_are_not_http(
        ) -> None:
    message_id, aid = str(uuid.uuid4()), str(uuid.uuid4())
    newest = OriginalStudy(study_instance_uid="1.2.3.4", study_date="2026-11-22",
                           modalities=["CR"], description="XR WRIST 2 VIEWS",
                           url="https://pacs.example/viewer?study=1.2.3.4")
    # constructed, not decoded: the receipt's own check is bypassed, the desktop's is not
    sneaky = OriginalStudy(study_instance_uid="1.2.3.5", study_date=None, modalities=[],
                           url="javascript:alert(1)")
    older = OriginalStudy(study_instance_uid="1.2.3.6", study_date="2026-11-20",
                          modalities=["DX", "CR"], url="HTTP://pacs.example/studies/1.2.3.6")
    receipt = FilingReceipt(
        attachment_id=aid, message_id=message_id, study_instance_uid="1.2.9",
        series_instance_uid="1.2.9.1", sop_instance_uid="1.2.9.1.1", filed_at=T0,
        retrieve_url="data:text/html,hi", original_studies=[newest, sneaky, older],
        original_search="found")
    assert study_json(receipt, message_id) == {
        "study_uid": "1.2.9", "retrieve_url": "",
        "originals": [
            {"study_uid": "1.2.3.4", "date": "2026-11-22", "modalities": ["CR"],
             "description": "XR WRIST 2 VIEWS", "url": "https://pacs.example/viewer?study=1.2.3.4"},
            {"study_uid": "1.2.3.5", "date": None, "modalities": [], "description": "",
             "url": ""},
            {"study_uid": "1.2.3.6", "date": "2026-11-20", "modalities": ["DX", "CR"],
             "description": "", "url": "HTTP://pacs.example/studies/1.2.3.6"},
        ], "search": "found"}
    assert study_json(receipt, str(uuid.uuid4())) is None  # another message's image


def test_the_record_thread_says_what_was_sent_to_and_filed_in_the_record() -> None:
    """A refusal sent for filing, and the gateway's answer, have no text of
    their own; the page shows what they are."""
    token = "a.b.c"
    record = RecordData(patient_name="Testpatient^Beta", patient_id="LBX-TEST-7")
    sent = Body(kind=BodyKind.CONSENT_RECORD, consent_token=token, record=record)
    assert note(sent) == "Consent sent to the record gateway to be filed in the patient's record"
    consent_id = str(uuid.uuid4())
    filed = Body(kind=BodyKind.CONSENT_FILED, consent_filing=ConsentFiling(
        consent_id=consent_id, message_id=str(uuid.uuid4()), decision="refused",
        study_instance_uid="2.25.9", filed_at=T0))
    assert note(filed) == (f"Consent {consent_id[:8]} (refused) filed in the patient's "
                            "record, study 2.25.9")
    assert note(Body(text="Displaced?")) == ""


# --- the page ---------------------------------------------------------------------------------


async def test_the_page_opens_the_consent_form_and_warns_before_a_teaching_reply(
        world: World, tmp_path: Path, orthanc: OrthancServer) -> None:
    shots = SHOTS / "guard"
    shutil.rmtree(shots, ignore_errors=True)
    shots.mkdir(parents=True)
    async with desktop_team(world, tmp_path, orthanc) as team, \
            browser_page(full=True) as (page, problems):  # the PDF viewer is the browser's
        replies = team.intern.client.subscribe()
        await unlock_page(page, team.desktop)
        thread, sent = await send_photo(team.intern, film(), purpose=Purpose.TEACHING,
                                        text="For the teaching file?", subject="Teaching case")
        await page.locator(".thread-item", has_text="Teaching case").click()
        link = page.locator(".consent .consent-pdf")
        await link.wait_for()
        assert await link.inner_text() == "Patient's consent form (PDF)"
        assert await link.get_attribute("target") == "_blank"

        # the patient's consent form opens in a new tab, from this same local client
        async with page.context.expect_page() as opened:
            await link.click()
        tab = await opened.value
        await tab.wait_for_load_state()
        assert tab.url == f"{team.desktop.origin}/api/messages/{sent.message_id}/consent.pdf"
        # and Chromium's PDF viewer shows it (the page's strict CSP does not get in the way):
        # its toolbar names the form once the PDF is loaded
        def pdf_viewer(frame: Any) -> bool:
            return bool(frame.url.startswith(f"chrome-extension://{PDF_VIEWER}/"))
        viewer = next((f for f in tab.frames if pdf_viewer(f)), None) \
            or await tab.wait_for_event("framenavigated", predicate=pdf_viewer)
        await viewer.get_by_text("Consent to share clinical images", exact=True).wait_for()
        await tab.screenshot(path=shots / "01-consent-form.png")
        await tab.close()

        # a reply with an exact age and a date of service: warned, nothing sent
        await page.fill("#reply-text", AGED)
        await page.click("#reply-send")
        guard = page.locator("#text-guard")
        await guard.locator(".finding[data-kind='exact_age']",
                            has_text="\u201ca 47-year-old\u201d").wait_for()
        assert "This reply is for teaching" in await guard.inner_text()
        await guard.locator(".suggestion", has_text=REWRITTEN).wait_for()
        await page.screenshot(path=shots / "02-warned.png")

        # "Use suggested wording" puts the rewrite in the box; the warning goes
        await page.click("#guard-use")
        assert await page.input_value("#reply-text") == REWRITTEN
        await guard.wait_for(state="hidden")

        # the date of service has no mechanical rewrite: warned again, then "Send anyway"
        await page.click("#reply-send")
        await guard.locator(".finding[data-kind='date_of_service']").wait_for()
        assert await page.locator("#guard-use").count() == 0
        await page.click("#guard-send")
        reply = await wait_for_event(replies, MessageEvent, lambda e: e.body.text == REWRITTEN)
        assert reply.message.purpose == "teaching" and reply.message.thread_id == thread.thread_id
        await page.locator(".message.mine", has_text="a patient in their 40s").wait_for()
        await guard.wait_for(state="hidden")
        await page.screenshot(path=shots / "03-sent.png")
    # the browser logs each 409 answer as a console error; nothing else may go wrong
    assert not [p for p in problems if "409" not in p], problems


async def test_a_photo_of_a_film_links_to_the_original_study_the_gateway_found_in_pacs(
        world: World, tmp_path: Path, orthanc: OrthancServer) -> None:
    shots = SHOTS / "original"
    shutil.rmtree(shots, ignore_errors=True)
    shots.mkdir(parents=True)
    today = dt.datetime.now(dt.UTC).date()
    found, missing = f"LBX-{uuid.uuid4().hex[:8]}", f"LBX-{uuid.uuid4().hex[:8]}"
    async with desktop_team(world, tmp_path, orthanc) as team, \
            browser_page() as (page, problems):
        # what the imaging department filed before anyone photographed the film
        original = original_study(found, "LBX", today)
        study_uid = pydicom.dcmread(io.BytesIO(original)).StudyInstanceUID
        await team.pacs.store([original])
        await unlock_page(page, team.desktop)
        await send_photo(team.intern, film(missing), text="Old film, no study?",
                         subject="Film without study")
        await send_photo(team.intern, film(found), text="Is this displaced?",
                         subject="Film with study")
        await page.locator(".thread-item", has_text="Film with study").click()
        await page.locator(".thumb").wait_for()
        await page.locator(".message .not-diagnostic").wait_for()
        # not filed yet: no claim either way about the original study
        assert await page.locator(".originals, .original-none").count() == 0

        await team.gateway.start()
        link = page.locator(".originals a.original-study")
        await link.wait_for()
        assert await link.inner_text() == \
            f"View the original study (CR, {today:%Y-%m-%d}, XR WRIST 2 VIEWS)"
        assert await link.get_attribute("data-study-uid") == study_uid
        href = await link.get_attribute("href") or ""
        assert href.startswith(("http://", "https://")) and study_uid in href
        assert await link.get_attribute("target") == "_blank"
        assert await link.get_attribute("rel") == "noopener noreferrer"
        await page.screenshot(path=shots / "01-original-linked.png")

        await page.locator(".thread-item", has_text="Film without study").click()
        # none found: nothing offers one, in one plain line
        await page.locator(".not-diagnostic", has_text=NO_ORIGINAL).wait_for()
        assert await page.inner_text(".message .not-diagnostic") == NO_ORIGINAL
        assert await page.locator(".originals, .original-none").count() == 0
        await page.screenshot(path=shots / "02-original-not-found.png")
    assert not problems, problems


# --- PROTOCOL.md §16: the consult's escalation, as the page shows it  -----------------------------


async def test_each_escalation_step_shows_once_under_the_consult(
        world: World, tmp_path: Path, orthanc: OrthancServer) -> None:
    """The relay's escalation notices are at-least-once: the SDK tells each step once, and
    the page lists the steps under the consult in order, with who was reached."""
    async with desktop_team(world, tmp_path, orthanc) as team, \
            browser_page() as (page, problems):
        await unlock_page(page, team.desktop)
        thread, sent = await send_photo(team.intern, film(), text="Wrist, displaced?",
                                        subject="Escalating wrist")
        await page.locator(".thread-item", has_text="Escalating wrist").click()
        await page.locator(".message", has_text="Wrist, displaced?").wait_for()
        client = team.desktop.client
        assert client is not None
        steps = client.subscribe()
        at = int(dt.datetime.now(dt.UTC).timestamp())
        reminded, released = (
            EscalationNotice(thread_id=thread.thread_id, message_id=sent.message_id, step=step,
                             level=level, user_id=user, at=at + step, kind=kind)
            for step, level, user, kind in (
                (1, 0, team.specialist.user_id, EscalationKind.RENOTIFY),
                (2, 1, team.intern.user_id, EscalationKind.RELEASED)))
        for frame in (reminded, released, released, reminded):  # two redelivered
            await client.notices.handle(frame)

        told = [steps.get_nowait() for _ in range(steps.qsize())]
        assert [(e.kind, e.step) for e in told if isinstance(e, EscalationEvent)] == [
            ("renotify", 1), ("released", 2)]
        lines = page.locator(".message .escalation li")
        await lines.nth(1).wait_for()
        texts = await lines.all_inner_texts()
        assert len(texts) == 2
        assert texts[0].startswith("No acknowledgement yet: reminded you (step 1, ")
        assert texts[1].startswith("Not acknowledged in time: passed to Dr Ada Intern (step 2, ")
    assert not problems, problems
