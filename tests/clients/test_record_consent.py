"""CLINICAL_SAFETY.md at the record gateway, against a real relay and a real Orthanc:

* a refused consent is filed in the patient's record without images: the capturing clinician's
  SDK seals the token with the patient's record data to the organisation's record gateway (in
  the user's record thread), the gateway files the consent form as Encapsulated PDF in a study
  of its own and answers with a ``consent_filed`` receipt; a consent that does not verify is
  not filed and the clinician is told;
* with a FHIR server configured (a real one, tests/fhir_server.py), the FHIR Consent is filed
  there once, with the gateway's credentials, and the receipt names where;
* for a photo of a film, the gateway finds the original study in PACS (QIDO-RS by patient and
  date) and lists it in the filing receipt, with a viewer link; a clinical photo gets none.
"""

from __future__ import annotations

import base64
import datetime as dt
import io
import re
import subprocess
import uuid
from pathlib import Path

import httpx
import msgspec
import pydicom
import pytest
from pydicom.encaps import generate_frames

from clients.gateway.app import GatewayConfig
from clients.gateway.fhir import FhirAuthError, FhirClient, FhirSettings
from clients.gateway.pacs import PacsClient, PacsSettings
from clients.gateway.records import CONSENT_IDENTIFIER_SYSTEM
from clients.sdk import imaging
from clients.sdk.client import RECORD_THREAD_SUBJECT, ImageEvent, MessageEvent
from clients.sdk.consent import ConsentCapture, capture_consent, image_hash, register_consent
from clients.sdk.errors import FlowError
from clients.sdk.keystore import DeviceState
from protocol.body import BodyKind, CaptureKind
from protocol.consent import ConsentBasis, ConsentDecision, peek_consent_token_unverified
from protocol.model import Purpose
from tests.clients.test_filing_journey import (
    ORTHO,
    journey,
    next_event,
    record,
    send_for_filing,
)
from tests.clients.test_phi import labelled_film
from tests.clinician_world import enrol_clinician
from tests.clinician_world import run_cli as lightbox
from tests.consent_world import assert_blind, count, xray_png
from tests.fhir_server import FhirServer
from tests.filing_world import enrol_gateway
from tests.helpers import eventually
from tests.identity_world import PASSWORD, World
from tests.orthanc import OrthancServer, original_study

# Attachments in 64 KiB chunks, as the image and filing journeys need.
pytestmark = pytest.mark.world(attachment_chunk_bytes=64 * 1024)

ENCAPSULATED_PDF = "1.2.840.10008.5.1.4.1.1.104.1"


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Where the ``lightbox`` CLI keeps its profiles in these tests (its password and fast
    key derivation from the environment, as in tests/clients/test_clinician.py)."""
    home = tmp_path / "home"
    monkeypatch.setenv("LIGHTBOX_HOME", str(home))
    monkeypatch.setenv("LIGHTBOX_PASSWORD", PASSWORD)
    monkeypatch.setenv("LIGHTBOX_INSECURE_FAST_KDF", "1")
    return home


def refusal(state: DeviceState, image: bytes) -> tuple[str, str]:
    token, claims = capture_consent(state, ConsentCapture(
        purposes=[Purpose.DIRECT_CARE], images=[image_hash(image)],
        decision=ConsentDecision.REFUSED, basis=ConsentBasis.TREATMENT_ATTESTATION,
        recipient_roles=[ORTHO], permanence_statement_shown=True,
        no_effect_on_care_statement_shown=True))
    return token, claims.jti


async def pdf_text(orthanc: OrthancServer, tmp_path: Path, study_uid: str) -> tuple[str, str]:
    """(the Encapsulated PDF's text, its PatientID), found by QIDO-RS in ``study_uid``."""
    auth = (orthanc.username, orthanc.password)
    async with httpx.AsyncClient(auth=auth) as http:
        found = (await http.get(f"{orthanc.dicomweb_url}/studies/{study_uid}/instances",
                                headers={"Accept": "application/dicom+json"})).json()
    (instance,) = found
    assert instance["00080016"]["Value"] == [ENCAPSULATED_PDF]  # nothing but the form
    series, sop = instance["0020000E"]["Value"][0], instance["00080018"]["Value"][0]
    async with PacsClient(PacsSettings(url=orthanc.dicomweb_url, username=auth[0],
                                       password=auth[1])) as pacs:
        ds = pydicom.dcmread(io.BytesIO(await pacs.retrieve_instance(study_uid, series, sop)))
    path = tmp_path / f"{sop}.pdf"
    path.write_bytes(bytes(ds.EncapsulatedDocument)[:int(ds.EncapsulatedDocumentLength)])
    text = subprocess.run(["pdftotext", "-layout", str(path), "-"], check=True,
                          capture_output=True, text=True).stdout
    return text, str(ds.PatientID)


async def test_a_refusal_is_filed_in_the_record_without_images(
        world: World, tmp_path: Path, orthanc: OrthancServer) -> None:
    shown = imaging.prepare_image(xray_png(320, 240, seed=21)).image
    rec = record("LBX-TEST-REFUSED")
    async with journey(world, tmp_path, orthanc) as (intern, _ortho, gw):
        token, consent_id = refusal(intern.vault.state, shown.data)
        await register_consent(intern.client.relay, token)
        sent, filed = await intern.client.file_consent(token, rec, wait=60)

        assert filed is not None and gw.consents_filed == [filed]
        assert (filed.consent_id, filed.message_id, filed.decision) == (
            consent_id, sent.message_id, "refused")
        form, fhir = filed.documents
        assert form.kind == "consent_form" and form.sop_class_uid == ENCAPSULATED_PDF
        assert fhir.kind == "fhir_consent" and fhir.sha256 and fhir.location == ""
        text, patient_id = await pdf_text(orthanc, tmp_path, filed.study_instance_uid)
        assert patient_id == rec.patient_id
        assert f"Consent reference: {consent_id}" in text and "copy for the record" in text
        assert "refused" in text.lower()

        # The record thread holds the gateway and me only; a second filing reuses it.
        threads = [t for t in await intern.client.threads() if t.thread_id ==
                   intern.vault.message(sent.message_id).thread_id]
        assert set(threads[0].members) == {intern.user_id, gw.store.state.user_id}
        again, refiled = await intern.client.file_consent(token, rec, wait=60)
        assert intern.vault.message(again.message_id).thread_id == threads[0].thread_id
        subjects = {v.message.message_id: v.body.subject
                    for v in intern.client.thread_messages(threads[0].thread_id)}
        assert subjects[sent.message_id] == RECORD_THREAD_SUBJECT  # named once, when made
        assert subjects[again.message_id] is None
        # The same consent and patient: the same study and form, filed once in PACS.
        assert refiled is not None and refiled.study_instance_uid == filed.study_instance_uid
        assert refiled.documents[0].sop_instance_uid == form.sop_instance_uid
        await pdf_text(orthanc, tmp_path, filed.study_instance_uid)  # still exactly one

    # The relay stayed blind: the patient's name and ID travelled sealed only, while the
    # consent id (which the relay registered) is found, proving the search can find things.
    family, given = rec.patient_name.split("^")[:2]
    await assert_blind(world.dsn, {"patient id": rec.patient_id.encode(),
                                   "family name": family.encode(), "given name": given.encode()},
                       controls=(consent_id.encode(),))


async def test_a_consent_that_does_not_verify_is_not_filed_and_the_sender_is_told(
        world: World, tmp_path: Path, orthanc: OrthancServer) -> None:
    shown = imaging.prepare_image(xray_png(320, 240, seed=22)).image
    async with journey(world, tmp_path, orthanc) as (intern, ortho, gw):
        events = intern.client.subscribe()
        # Signed by the specialist, but claiming the intern issued it: a forgery.
        forged, _ = refusal(ortho.vault.state, shown.data)
        header, payload, signature = forged.split(".")
        claims = msgspec.json.decode(base64.urlsafe_b64decode(payload + "=="))
        claims["iss"] = intern.user_id
        payload = base64.urlsafe_b64encode(
            msgspec.json.encode(claims)).rstrip(b"=").decode()
        sent, filed = await intern.client.file_consent(
            f"{header}.{payload}.{signature}", record("LBX-TEST-FORGED"), wait=None)
        assert filed is None
        alert = await next_event(events, MessageEvent,
                                 lambda e: e.body.reply_to == sent.message_id, timeout=60)
        assert "could not file the consent" in alert.body.text
        assert "NOT saved" in alert.body.text
        assert gw.consents_filed == []


async def test_filing_a_consent_needs_a_record_gateway(
        world: World, tmp_path: Path) -> None:
    intern = await enrol_clinician(world, tmp_path, "intern")
    try:
        await intern.client.start()
        token, _ = refusal(intern.vault.state, b"shown")
        with pytest.raises(FlowError) as refused:
            await intern.client.file_consent(token, record("LBX-TEST-NOGW"))
        assert refused.value.code == "filing_gateway_missing"
        with pytest.raises(FlowError) as malformed:
            await intern.client.file_consent("not.a.token", record("LBX-TEST-NOGW"))
        assert malformed.value.code == "consent_invalid"
    finally:
        await intern.client.close()


async def test_a_photo_of_a_film_lists_the_original_study_found_in_pacs(
        world: World, tmp_path: Path, orthanc: OrthancServer) -> None:
    today = dt.datetime.now(dt.UTC).date()
    rec = record("LBX-TEST-ORIGINAL")
    cr = original_study(rec.patient_id, rec.issuer_of_patient_id, today)
    old = original_study(rec.patient_id, rec.issuer_of_patient_id, today - dt.timedelta(days=9))
    other = original_study("LBX-TEST-SOMEONE-ELSE", rec.issuer_of_patient_id, today)
    async with PacsClient(PacsSettings(url=orthanc.dicomweb_url, username=orthanc.username,
                                       password=orthanc.password)) as pacs:
        await pacs.store([cr, old, other])
    cr_uid = pydicom.dcmread(io.BytesIO(cr)).StudyInstanceUID
    viewer = "https://pacs.example.org/viewer?StudyInstanceUIDs={study_instance_uid}"
    config = GatewayConfig(retry_base=0.1, retry_max=0.5, viewer_url=viewer)
    film = imaging.prepare_image(xray_png(320, 240, seed=23)).image
    photo = imaging.prepare_image(xray_png(320, 240, seed=24)).image
    async with journey(world, tmp_path, orthanc, config=config) as (intern, ortho, gw):
        thread = await intern.client.create_thread(users=[ortho.user_id])
        await send_for_filing(intern, thread.thread_id, film, rec)
        clinical = msgspec.structs.replace(rec, capture=CaptureKind.CLINICAL)
        await send_for_filing(intern, thread.thread_id, photo, clinical)

        async def both_filed() -> bool:
            return len(gw.filed) == 2
        await eventually(both_filed, timeout=60)
    by_photo = {r.study_instance_uid: r for r in gw.filed}
    assert len(by_photo) == 1  # the same thread and patient: one study of photos
    film_receipt, photo_receipt = sorted(gw.filed, key=lambda r: not r.original_studies)
    (found,) = film_receipt.original_studies  # not the old one, the other patient's, or ours
    assert found.study_instance_uid == cr_uid and found.study_date == today.isoformat()
    assert found.modalities == ["CR"] and found.description == "XR WRIST 2 VIEWS"
    assert found.url == viewer.replace("{study_instance_uid}", cr_uid)
    assert photo_receipt.original_studies == []  # a clinical photo is not a copy of a study


async def test_without_a_viewer_the_link_is_the_studys_dicomweb_url(
        world: World, tmp_path: Path, orthanc: OrthancServer) -> None:
    today = dt.datetime.now(dt.UTC).date()
    rec = record("LBX-TEST-ORIGINAL-2")
    cr = original_study(rec.patient_id, rec.issuer_of_patient_id, today, modality="DX")
    async with PacsClient(PacsSettings(url=orthanc.dicomweb_url, username=orthanc.username,
                                       password=orthanc.password)) as pacs:
        await pacs.store([cr])
    cr_uid = pydicom.dcmread(io.BytesIO(cr)).StudyInstanceUID
    film = imaging.prepare_image(xray_png(320, 240, seed=25)).image
    async with journey(world, tmp_path, orthanc) as (intern, ortho, _gw):
        events = ortho.client.subscribe()
        thread = await intern.client.create_thread(users=[ortho.user_id])
        await send_for_filing(intern, thread.thread_id, film, rec)
        got = await next_event(events, MessageEvent,
                               lambda e: e.body.kind is BodyKind.FILING_RECEIPT, timeout=60)
    (found,) = got.body.filing.original_studies
    assert found.study_instance_uid == cr_uid and found.modalities == ["DX"]
    assert found.url == f"{orthanc.dicomweb_url}/studies/{cr_uid}"


async def test_the_cli_files_a_refusal_and_refuses_one_without_patient_data(
        world: World, tmp_path: Path, orthanc: OrthancServer, home: Path) -> None:
    """``lightbox consent capture --decision refused`` registers the refusal, gives the
    patient their copy, and files it in the record; without patient data it signs nothing."""
    image = tmp_path / "film.png"
    image.write_bytes(xray_png(320, 240, seed=26))
    capture = ["--profile", "registrar", "consent", "capture", "--image", str(image),
               "--purpose", "direct_care", "--role", ORTHO, "--decision", "refused",
               "--statements-shown", "--yes", "--pdf", str(tmp_path / "patient.pdf")]
    async with journey(world, tmp_path, orthanc) as (_intern, _ortho, gw):
        registrar = await enrol_clinician(world, tmp_path, "registrar", vault_dir=home /
                                          "registrar")
        registrar.vault.lock()
        rc, out, err = await lightbox(*capture)
        assert rc == 1 and "validation_failed" in err and "--patient-id" in err
        assert not (tmp_path / "patient.pdf").exists()

        rc, out, err = await lightbox(*capture, "--patient-id", "LBX-TEST-CLI-REFUSED",
                                      "--patient-name", "TEST^REFUSED")
        assert rc == 0, out + err
        assert "refused (relay: refused)" in out
        assert "filed in the patient's record by the record gateway: consent form in study " \
            in out
        (filed,) = gw.consents_filed
        assert filed.study_instance_uid in out and filed.decision == "refused"
        text = subprocess.run(["pdftotext", str(tmp_path / "patient.pdf"), "-"], check=True,
                              capture_output=True, text=True).stdout
        assert filed.consent_id in text  # the patient's copy names what was filed
        rc, out, err = await lightbox("--profile", "registrar", "inbox")
        assert rc == 0, err
        assert f"({filed.decision}) filed in the record (study {filed.study_instance_uid})" \
            in out


async def _gateway_enrolled_not_running(world: World, tmp_path: Path, home: Path, *,
                                       seed: int) -> Path:
    """A film, an orthopaedist, and a registrar (the CLI's profile) whose refusals go to a
    record gateway that is enrolled but not running."""
    image = tmp_path / "film.png"
    image.write_bytes(xray_png(320, 240, seed=seed))
    await enrol_gateway(world, tmp_path)
    await enrol_clinician(world, tmp_path, "ortho", roles=(ORTHO,))
    registrar = await enrol_clinician(world, tmp_path, "registrar", vault_dir=home / "registrar")
    registrar.vault.lock()
    return image


async def test_the_cli_says_a_refusal_not_confirmed_within_its_wait_is_not_filed_yet(
        world: World, tmp_path: Path, home: Path) -> None:
    """The gateway is enrolled but not running: ``--file-wait`` runs out, and the command says
    the refusal is not filed yet, not merely "sent for filing", which reads as done."""
    image = await _gateway_enrolled_not_running(world, tmp_path, home, seed=27)
    rc, out, err = await lightbox(
        "--profile", "registrar", "consent", "capture", "--image", str(image), "--purpose",
        "direct_care", "--role", ORTHO, "--decision", "refused", "--statements-shown", "--yes",
        "--patient-id", "LBX-TEST-CLI-WAIT", "--patient-name", "TEST^WAIT", "--file-wait", "1")
    assert rc == 0, out + err
    (line,) = [x for x in out.splitlines() if "record gateway" in x]
    assert re.fullmatch(
        r"not filed yet: sent to the record gateway for filing \(message [0-9a-f-]{36}\), "
        r"which did not confirm it within 1 s; its receipt will arrive in your record thread "
        r"\(`lightbox inbox`\) once it is filed", line), line


class _Terminal(io.StringIO):
    """Answers typed at the CLI's prompts, as from a terminal."""

    def isatty(self) -> bool:
        return True


async def test_a_patient_who_says_no_at_the_send_prompt_has_the_refusal_filed(
        world: World, tmp_path: Path, orthanc: OrthancServer, home: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    image = tmp_path / "film.png"
    image.write_bytes(xray_png(320, 240, seed=27))
    async with journey(world, tmp_path, orthanc) as (_intern, ortho, gw):
        registrar = await enrol_clinician(world, tmp_path, "registrar", vault_dir=home /
                                          "registrar")
        registrar.vault.lock()
        events = ortho.client.subscribe()
        monkeypatch.setattr("sys.stdin", _Terminal("yes\nno\n"))  # shown: yes; agrees: no
        rc, out, err = await lightbox(
            "--profile", "registrar", "send", "--to", f"role:{ORTHO}", "--image", str(image),
            "--send-anyway", "--patient-id", "LBX-TEST-SAID-NO", "--patient-name",
            "TEST^SAIDNO", "Wrist, displaced?")
        assert rc == 1 and "consent_refused" in err, out + err
        assert "nothing was sent; the refusal was registered and filed in the record" in err
        (filed,) = gw.consents_filed
        assert filed.decision == "refused"
        assert await count(world, "SELECT count(*) FROM consents WHERE consent_id = $1",
                           uuid.UUID(filed.consent_id)) == 1
        assert events.empty()  # the specialist got nothing


async def test_a_refusal_at_the_send_prompt_not_confirmed_within_its_wait_is_not_filed_yet(
        world: World, tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The gateway is enrolled but not running: ``send --file-wait`` runs out, and the refusal
    is said to be registered but not filed yet, with the wait it gave."""
    image = await _gateway_enrolled_not_running(world, tmp_path, home, seed=28)
    monkeypatch.setattr("sys.stdin", _Terminal("yes\nno\n"))  # shown: yes; agrees: no
    rc, out, err = await lightbox(
        "--profile", "registrar", "send", "--to", f"role:{ORTHO}", "--image", str(image),
        "--send-anyway", "--patient-id", "LBX-TEST-SAID-NO-WAIT", "--patient-name",
        "TEST^SAIDNOWAIT", "--file-wait", "1.5", "Wrist, displaced?")
    assert rc == 1 and "consent_refused" in err, out + err
    assert ("the patient refused: nothing was sent; the refusal was registered, but not filed "
            "yet: the record gateway did not confirm it within 1.5 s; its receipt will arrive "
            "in your record thread (`lightbox inbox`)") in err, err
    # registered with the relay, and sealed to the gateway for when it runs
    assert await count(world, "SELECT count(*) FROM consents WHERE decision = 'refused'") == 1
    assert await count(world, "SELECT count(*) FROM deliveries") == 1


async def test_the_fhir_consent_is_filed_on_the_fhir_server_once_with_credentials(
        world: World, tmp_path: Path, orthanc: OrthancServer, fhir_server: FhirServer) -> None:
    shown = imaging.prepare_image(xray_png(320, 240, seed=28)).image
    rec = record("LBX-TEST-FHIR")
    settings = FhirSettings(url=fhir_server.base_url, token=fhir_server.token)
    async with FhirClient(settings) as fhir, journey(world, tmp_path, orthanc, fhir=fhir) as (
            intern, ortho, gw):
        # with an image: the receipt's fhir_consent names the server's Consent
        thread = await intern.client.create_thread(users=[ortho.user_id])
        _, header = await send_for_filing(intern, thread.thread_id, shown, rec)

        async def filed() -> bool:
            return bool(gw.filed)
        await eventually(filed, timeout=60)
        fhir_doc = gw.filed[0].documents[1]
        assert fhir_doc.kind == "fhir_consent"
        assert fhir_doc.location.startswith(f"{fhir_server.base_url}/Consent/")
        stored = await fhir.find_consent(CONSENT_IDENTIFIER_SYSTEM, f"urn:uuid:{header.consent_id}")
        assert stored is not None and stored["status"] == "active"

        # a refusal: filed there too, as rejected; filing it again finds the same Consent
        token, consent_id = refusal(intern.vault.state, shown.data)
        await register_consent(intern.client.relay, token)
        _, first = await intern.client.file_consent(token, rec, wait=60)
        _, second = await intern.client.file_consent(token, rec, wait=60)
        assert first is not None and second is not None
        assert first.documents[1].location.split("/_history")[0] == \
            second.documents[1].location.split("/_history")[0]
        stored = await fhir.find_consent(CONSENT_IDENTIFIER_SYSTEM, f"urn:uuid:{consent_id}")
        assert stored is not None and stored["status"] == "rejected"

    # without the gateway's credentials the server files nothing (what the token is for)
    async with FhirClient(FhirSettings(url=fhir_server.base_url)) as anonymous:
        with pytest.raises(FhirAuthError):
            await anonymous.find_consent(CONSENT_IDENTIFIER_SYSTEM, f"urn:uuid:{consent_id}")


async def test_a_teaching_share_carries_no_patient_data_and_the_identified_original_is_filed(
        world: World, tmp_path: Path, orthanc: OrthancServer, home: Path) -> None:
    """CLINICAL_SAFETY.md: "the redacted copy is what is shared, while the identified original is
    what the gateway files for direct care". With patient data, ``lightbox send --purpose
    teaching`` shares the redacted copy without it and files the original in the record."""
    film = tmp_path / "film.png"
    labelled_film().save(film)
    original = imaging.prepare_image(film.read_bytes()).image
    token_file = tmp_path / "consent.jws"
    # The patient the film's label shows (DOE^JOHN, MRN 12345678): the phone checks the two
    # agree before sending (clients/clinician/identity.py).
    rec = ["--patient-id", "12345678", "--patient-name", "DOE^JOHN"]
    async with journey(world, tmp_path, orthanc) as (_intern, ortho, gw):
        registrar = await enrol_clinician(world, tmp_path, "registrar", vault_dir=home /
                                          "registrar")
        registrar.vault.lock()
        events = ortho.client.subscribe()
        capture = ["--profile", "registrar", "consent", "capture", "--image", str(film),
                   "--purpose", "teaching", "--role", ORTHO, "--basis", "written",
                   "--decision", "agreed", "--statements-shown", "--yes", "--redact",
                   "all-text", "--token-out", str(token_file)]
        send = ["--profile", "registrar", "send", "--to", f"role:{ORTHO}", "--purpose",
                "teaching", "--image", str(film), "--redact", "all-text", "--send-anyway",
                "--consent-token", str(token_file), *rec, "A fracture for the teaching file"]

        # A consent for teaching only names the redacted copy: the original cannot be filed
        # under it, and nothing is sent.
        rc, out, err = await lightbox(*capture)
        assert rc == 0, out + err
        rc, out, err = await lightbox(*send)
        assert rc == 1 and "consent_purpose" in err and "--purpose direct_care" in err
        assert "sent:" not in out and events.empty()

        # For teaching and direct care, the consent names both copies.
        rc, out, err = await lightbox(*capture, "--purpose", "direct_care")
        assert rc == 0, out + err
        claims = peek_consent_token_unverified(token_file.read_text().strip())
        assert image_hash(original.data) in claims.images and len(claims.images) == 2
        rc, out, err = await lightbox(*send)
        assert rc == 0, out + err
        assert "the identified original went to the record gateway" in out

        shared = await next_event(events, MessageEvent, lambda e: bool(e.body.attachments),
                                  timeout=60)
        assert shared.message.purpose == "teaching" and shared.body.record is None
        await next_event(events, ImageEvent, lambda e: e.status == "stored", timeout=60)
        seen = ortho.client.image(shared.body.attachments[0].attachment_id)
        assert seen != original.data and image_hash(seen) in claims.images  # the redacted copy

        async def filed() -> bool:
            return bool(gw.filed)
        await eventually(filed, timeout=60)
    (receipt,) = gw.filed
    async with PacsClient(PacsSettings(url=orthanc.dicomweb_url, username=orthanc.username,
                                       password=orthanc.password)) as pacs:
        ds = pydicom.dcmread(io.BytesIO(await pacs.retrieve_instance(
            receipt.study_instance_uid, receipt.series_instance_uid, receipt.sop_instance_uid)))
    assert ds.PatientID == "12345678"
    (frame,) = generate_frames(ds.PixelData, number_of_frames=1)
    assert frame.rstrip(b"\0") == original.data  # the identified original, as photographed


async def test_the_sdk_never_seals_patient_data_into_a_de_identified_share(
        world: World, tmp_path: Path) -> None:
    intern = await enrol_clinician(world, tmp_path, "intern")
    image = imaging.prepare_image(xray_png(320, 240, seed=29)).image
    for purpose in (Purpose.TEACHING, Purpose.PUBLICATION, Purpose.RESEARCH):
        with pytest.raises(FlowError) as refused:  # before anything is uploaded or sealed
            await intern.client.send_image(str(uuid.uuid4()), image, consent_token="a.b.c",
                                           record=record(), purpose=purpose)
        assert refused.value.code == "validation_failed" and "never goes" in str(refused.value)


@pytest.mark.parametrize(("argv", "env", "expected"), [
    (["--viewer-url", "javascript:alert(1)/{study_instance_uid}"], {},
     "--viewer-url must be an http(s) URL holding {study_instance_uid}"),
    (["--viewer-url", "https://pacs.example.org/viewer"], {},
     "--viewer-url must be an http(s) URL holding {study_instance_uid}"),
    (["--original-lookback-days", "31"], {}, "between 0 and 30"),
    ([], {}, "LIGHTBOX_PACS_URL is not set"),
    (["--fhir-url", "http://fhir.example.org/r4"],
     {"LIGHTBOX_PACS_URL": "https://pacs.example.org/dicom-web", "LIGHTBOX_FHIR_TOKEN_FILE": ""},
     "only sent over https"),
])
def test_the_gateway_refuses_settings_it_cannot_use_before_it_starts(
        argv: list[str], env: dict[str, str], expected: str, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """``lightbox-gateway`` says what is wrong in one line and files nothing."""
    from clients.gateway import cli as gateway

    for name in ("LIGHTBOX_PACS_URL", "LIGHTBOX_FHIR_URL", "LIGHTBOX_PACS_VIEWER_URL"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        if name == "LIGHTBOX_FHIR_TOKEN_FILE":  # a real token file, over plain http
            (tmp_path / "token").write_text("a-bearer-token")
            value = str(tmp_path / "token")
        monkeypatch.setenv(name, value)
    try:
        rc = gateway.main(argv)
    except SystemExit as exit_:  # argparse's own refusals
        rc = int(exit_.code or 0)
    assert rc == 2
    assert expected in capsys.readouterr().err


async def test_an_unclear_answer_at_the_send_prompt_is_asked_again_never_taken_for_no(
        world: World, tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A slip at the prompt ("maybe", "agreed", an empty line) is asked again: taken for "no",
    it would sign and file a refusal in the patient's record for good."""
    image = await _gateway_enrolled_not_running(world, tmp_path, home, seed=29)
    monkeypatch.setattr("sys.stdin", _Terminal("Yes \nmaybe\nagreed\n\nyes\n"))
    rc, out, err = await lightbox(
        "--profile", "registrar", "send", "--to", f"role:{ORTHO}", "--image", str(image),
        "--send-anyway", "--patient-id", "LBX-TEST-SLIP", "--patient-name", "TEST^SLIP",
        "Wrist, displaced?")
    assert rc == 0 and "consent_refused" not in err, out + err
    assert out.count("Please answer yes or no.") == 3, out
    assert out.count("Does the patient agree? (yes/no): ") == 4, out
    assert await count(world, "SELECT count(*) FROM consents WHERE decision = 'refused'") == 0
    assert await count(world, "SELECT count(*) FROM consents WHERE decision = 'agreed'") == 1


@pytest.mark.parametrize(("typed", "said"), [
    # statements not shown and understood: consent is not asked at all
    ("no\n", "nothing was sent or registered: consent is asked only once the patient has seen "
             "the photo and both statements were read and understood; run the command again "
             "then"),
    # the input ends before an answer
    ("yes\nmaybe\n", "no answer was given: nothing was sent, registered or filed"),
])
async def test_statements_not_shown_or_no_answer_at_the_send_prompt_record_nothing(
        world: World, tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch,
        typed: str, said: str) -> None:
    image = await _gateway_enrolled_not_running(world, tmp_path, home, seed=30)
    monkeypatch.setattr("sys.stdin", _Terminal(typed))
    rc, out, err = await lightbox(
        "--profile", "registrar", "send", "--to", f"role:{ORTHO}", "--image", str(image),
        "--send-anyway", "--patient-id", "LBX-TEST-NOTHING", "--patient-name", "TEST^NOTHING",
        "Wrist, displaced?")
    assert rc == 1 and f"error: consent_missing: {said}" in err, out + err
    assert "Traceback" not in err
    assert await count(world, "SELECT count(*) FROM consents") == 0
    assert await count(world, "SELECT count(*) FROM deliveries") == 0
