"""A consult is about one patient (docs/HAZARD_LOG.md HAZ-01 C6): a photo added from the phone
to a consult whose patient the phone knows (the record data of a photo it sent in it) has the
patient's fields filled with that patient and not editable, with why; a photo whose record
names another patient is refused in words before anything is registered or sent, even if the
fields were changed behind the screen's back. The phone judges "another patient" by the rule
the CLI and the desktop use (clients/sdk/patients.py; its port and table:
tests/phone/test_phone_patient_rule.py), against a patient it learnt from a photo it received:
the same number and name with another birth date is another patient; a number and name
written otherwise (case, separators, ``POE, Edgar`` for ``Poe^Edgar``) are the same. A consult
whose patient the phone does not know (a text consult) asks for the patient as before. Real
relay, real SDK specialist, real Chromium with a fake camera."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from clients.sdk import imaging
from protocol.body import RecordData
from tests.clinician_world import Clinician
from tests.consent_world import xray_png
from tests.filing_world import direct_care_consent
from tests.identity_world import User, World
from tests.phone.phone_world import (
    ORTHO,
    SHOTS,
    axe_violations,
    camera_started,
    enrolled_phone,
    fetch_value,
    film,
    sent_from_phone,
    still_video,
)

SUBJECT = "Hip, resus 1"
KNOWN = ("This consult is about Poe^Edgar (MRN789); for another patient, start a new "
         "consult.")
REFUSED = ("This consult is about Poe^Edgar (MRN789): the photo names another patient, so "
           "nothing was sent. For another patient, start a new consult.")


@contextlib.asynccontextmanager
async def phone_on_a_film(phone: tuple[World, str], tmp_path: Path
                          ) -> AsyncIterator[tuple[Any, Clinician, Any, Any, list[str]]]:
    """The intern's phone enrolled, its fake camera on a film; yields the intern, the
    specialist, his events, the page and its problems."""
    world, origin = phone
    video = still_video(tmp_path / "film.y4m", film(1280, 960), size=(1280, 960))
    async with enrolled_phone(world, tmp_path, origin, video=video) as (
            intern, specialist, events, page, problems):
        yield intern, specialist, events, page, problems


async def added_photo_screen(page: Any, consult: Any) -> None:
    """The consult on its screen, *Add a photo to this consult*, the photo taken and used: the
    consent screen."""
    await consult.locator(".open").tap()
    await page.locator("#screen-thread").wait_for()
    await page.tap("#thread-photo")
    await camera_started(page)
    await page.tap("#take")
    await page.tap("#use-photo")
    await page.locator("#screen-consent").wait_for()


async def counts(world: World, user_id: str) -> tuple[int, int]:
    """The consents the intern registered and the messages the relay stored from her."""
    uid = uuid.UUID(user_id)
    consents = await fetch_value(world, "SELECT count(*) FROM consents WHERE issuer_user_id = $1",
                                 uid)
    messages = await fetch_value(world, "SELECT count(*) FROM messages WHERE sender_user_id = $1",
                                 uid)
    return consents, messages


async def test_a_photo_added_to_a_consult_names_its_patient_and_never_another(
        phone: tuple[World, str], tmp_path: Path) -> None:
    world = phone[0]
    async with phone_on_a_film(phone, tmp_path) as (intern, _specialist, _events, page,
                                                    problems):
        # The consult, with a photo of Poe^Edgar's film.
        await page.tap("#capture")
        await camera_started(page)
        await page.tap("#take")
        await page.tap("#use-photo")
        await page.fill("#patient-name", "Poe^Edgar")
        await page.fill("#patient-id", "MRN789")
        await page.fill("#img-subject", SUBJECT)
        await page.fill("#img-text", "Query neck of femur fracture.")
        await page.check("#st-permanence")
        await page.check("#st-no-effect")
        await page.tap("#consent-send")
        await page.locator("#photo-status", has_text="Photo sent").wait_for()
        consult = page.locator("#threads .thread", has_text=SUBJECT)
        await consult.locator(".message.mine .meta", has_text="· sent").wait_for()

        # A second photo into it: the patient is the consult's, and cannot be changed here.
        await added_photo_screen(page, consult)
        known = page.locator("#patient-known")
        await known.wait_for()
        assert await known.inner_text() == KNOWN
        assert await page.input_value("#patient-name") == "Poe^Edgar"
        assert await page.input_value("#patient-id") == "MRN789"
        assert not await page.is_editable("#patient-name")
        assert not await page.is_editable("#patient-id")
        SHOTS.mkdir(parents=True, exist_ok=True)
        await page.screenshot(path=str(SHOTS / "61-photo-added-consult-patient.png"),
                              full_page=True)
        assert await axe_violations(page) == []

        # Changed behind the screen's back (a page script, say): the worker refuses it in
        # words, and nothing is registered or sent.
        before = await counts(world, intern.user_id)
        await page.evaluate("() => { for (const id of ['patient-name', 'patient-id'])"
                            " document.getElementById(id).readOnly = false; }")
        await page.fill("#patient-name", "Doe^Jane")
        await page.fill("#patient-id", "MRN123")
        await page.fill("#img-text", "Lateral view.")
        await page.check("#st-permanence")
        await page.check("#st-no-effect")
        await page.tap("#consent-send")
        error = page.locator("#consent-error", has_text="names another patient")
        await error.wait_for()
        assert await error.inner_text() == REFUSED
        assert await page.is_visible("#screen-consent")
        assert await counts(world, intern.user_id) == before
        assert problems == []


async def test_a_consult_whose_patient_the_phone_does_not_know_asks_for_the_patient(
        phone: tuple[World, str], tmp_path: Path) -> None:
    async with phone_on_a_film(phone, tmp_path) as (_intern, _specialist, events, page,
                                                    problems):
        await sent_from_phone(page, events, "Hip pain after a fall, no film yet.")
        consult = page.locator("#threads .thread", has_text="no film yet")
        await consult.locator(".message.mine .meta", has_text="· sent").wait_for()
        await added_photo_screen(page, consult)
        assert await page.input_value("#patient-name") == ""
        assert await page.input_value("#patient-id") == ""
        assert await page.is_editable("#patient-name")
        assert await page.is_editable("#patient-id")
        assert await page.is_hidden("#patient-known")
        assert problems == []


# The specialist's film names the patient with the issuer and birth date of the hospital's
# record, which the phone's form does not ask for.
FILED = RecordData(patient_name="Poe^Edgar", patient_id="MRN789", issuer_of_patient_id="RGH",
                   birth_date="1970-01-02")
SENT = "Photo sent: the relay stored it."


@contextlib.asynccontextmanager
async def patient_received(phone: tuple[World, str], tmp_path: Path
                           ) -> AsyncIterator[tuple[User, Any, list[str]]]:
    """A text consult from the phone, then the specialist's film in it with FILED's record (the
    phone learns the consult's patient from a photo it receives), and *Add a photo to this
    consult* up to the consent screen, the patient filled in; yields the intern, the page and
    its problems."""
    async with phone_on_a_film(phone, tmp_path) as (intern, specialist, events, page,
                                                    problems):
        consult = await sent_from_phone(page, events, "Query scaphoid fracture.")
        prepared = imaging.prepare_image(xray_png(400, 300, seed=7))
        token = await direct_care_consent(specialist, prepared.image.data, roles=[ORTHO],
                                          users=[intern.user_id])
        await specialist.client.send_image(consult.message.thread_id, prepared.image,
                                           consent_token=token, text="The lateral, labelled.",
                                           record=FILED)
        await page.locator(".message.theirs", has_text="The lateral, labelled.").wait_for()
        await added_photo_screen(page, page.locator("#threads .thread",
                                                    has_text="Query scaphoid fracture."))
        await page.locator("#patient-known").wait_for()
        yield intern, page, problems


async def sent_as(page: Any, fields: dict[str, str]) -> None:
    """*Send* on the consent screen, the record the page hands the worker changed behind the
    screen's back (a page script, say) to have ``fields``."""
    await page.evaluate(
        "(fields) => { const post = Worker.prototype.postMessage;"
        " Worker.prototype.postMessage = function (m, ...rest) {"
        "  if (m && m.op === 'sendImage') Object.assign(m.args.record, fields);"
        "  return post.call(this, m, ...rest); }; }", fields)
    await page.fill("#img-text", "Another view.")
    await page.check("#st-permanence")
    await page.check("#st-no-effect")
    await page.tap("#consent-send")


async def test_a_photo_of_the_same_number_and_name_born_another_day_is_refused(
        phone: tuple[World, str], tmp_path: Path) -> None:
    world = phone[0]
    async with patient_received(phone, tmp_path) as (intern, page, problems):
        assert await page.input_value("#patient-name") == "Poe^Edgar"
        assert await page.input_value("#patient-id") == "MRN789"
        before = await counts(world, intern.user_id)
        await sent_as(page, {"birth_date": "1970-02-01"})
        error = page.locator("#consent-error", has_text="names another patient")
        await error.wait_for()
        assert await error.inner_text() == REFUSED
        assert await counts(world, intern.user_id) == before
        assert problems == []


async def test_a_photo_naming_the_patient_written_otherwise_is_the_same_patient(
        phone: tuple[World, str], tmp_path: Path) -> None:
    world = phone[0]
    async with patient_received(phone, tmp_path) as (intern, page, problems):
        consents, messages = await counts(world, intern.user_id)
        # The number in lower case with a separator, the name as a PACS label writes it, the
        # birth date the specialist's record gives and the issuer left out.
        await sent_as(page, {"patient_name": "POE, edgar", "patient_id": "mrn-789",
                             "birth_date": "1970-01-02"})
        await page.locator("#thread-status", has_text=SENT).wait_for()
        assert await counts(world, intern.user_id) == (consents + 1, messages + 1)
        assert problems == []
