"""The wrong-patient check at the record gateway (clients/gateway/identity.py; docs/HAZARD_LOG.md
HAZ-01), end to end against a real relay, a real Orthanc and a real FHIR server: an image whose
typed patient the record does not know, or knows by another name or birth date, is HELD
(nothing filed, nothing expired), the sender and the specialist are told why in the thread
(sealed, naming the field, never the record's value), and ``lightbox correct-patient`` sends it
again with the identity fixed, after which it is filed to the right patient, never the wrong
one."""

from __future__ import annotations

import asyncio
import datetime as dt
import io
import re
import uuid
from pathlib import Path

import httpx
import msgspec
import pydicom
import pytest

from clients.gateway.app import GatewayConfig, RecordGateway
from clients.gateway.fhir import FhirClient, FhirSettings
from clients.gateway.identity import Known, from_fhir_patient, judge, same_name
from clients.gateway.pacs import PacsClient, PacsSettings
from clients.gateway.records import patient_id_system
from clients.sdk import imaging
from clients.sdk.client import ClientEvent, MessageEvent
from protocol.body import FilingReceipt, RecordData, Sex
from tests.clients.test_filing_journey import ORTHO, journey, next_event, send_for_filing
from tests.clinician_world import enrol_clinician
from tests.clinician_world import run_cli as lightbox
from tests.consent_world import xray_png
from tests.fhir_server import FhirServer
from tests.helpers import eventually, seconds
from tests.identity_world import PASSWORD, World
from tests.orthanc import OrthancServer, original_study

# Attachments in 64 KiB chunks, as the image and filing journeys need.
pytestmark = pytest.mark.world(attachment_chunk_bytes=64 * 1024)

ISSUER = "LBX"
BORN = dt.date(1950, 5, 6)
CHECKING = GatewayConfig(retry_base=0.1, retry_max=0.5, patient_check=True)


def _pacs(orthanc: OrthancServer) -> PacsClient:
    return PacsClient(PacsSettings(url=orthanc.dicomweb_url, username=orthanc.username,
                                   password=orthanc.password))


async def _known_patient(orthanc: OrthancServer, name: str = "TESTPATIENT^RIGHT") -> str:
    """A patient the imaging department already filed a study for; their (fresh) ID."""
    patient_id = f"LBX-WP-{uuid.uuid4().hex[:8].upper()}"
    async with _pacs(orthanc) as pacs:
        await pacs.store([original_study(patient_id, ISSUER, dt.date.today(),
                                         patient_name=name, birth_date=BORN)])
    return patient_id


async def _patient_ids_in_pacs(orthanc: OrthancServer, *patient_ids: str) -> dict[str, int]:
    async with _pacs(orthanc) as pacs:
        return {p: len(await pacs.find_studies(p)) for p in patient_ids}


def _record(patient_id: str, name: str = "Testpatient^Right",
            born: dt.date = BORN) -> RecordData:
    return RecordData(patient_name=name, patient_id=patient_id, issuer_of_patient_id=ISSUER,
                      birth_date=born.isoformat(), sex=Sex.FEMALE, anatomic_region="Wrist",
                      study_description="Wrist photo of film")


# --- the verdict, without I/O ------------------------------------------------------------------


def test_names_compare_by_family_and_first_given_name_ignoring_case_and_accents() -> None:
    assert same_name("Doe^Jane", "DOE^JANE^^^")
    assert same_name("Müller^Zoë", "MULLER^ZOE")
    assert same_name("Doe^Jane Mary", "Doe^Jane")
    assert same_name("Doe", "Doe^Jane")  # nothing typed to compare the given name with
    assert not same_name("Doe^Jane", "Doe^John")
    assert not same_name("Dole^Jane", "Doe^Jane")
    assert not same_name("^Jane", "Doe^Jane")


def test_the_verdict_holds_an_unknown_id_a_differing_name_or_birth_date() -> None:
    rec = _record("LBX-1")
    right = Known("PACS", "TESTPATIENT^RIGHT", BORN)
    assert judge(rec, []).code == "patient_unknown"
    assert judge(rec, [right]).code == "patient_confirmed"
    assert not judge(rec, [right]).holds
    other = Known("PACS", "TESTPATIENT^WRONG", BORN)
    assert judge(rec, [other]).code == "patient_name_differs"
    older = Known("FHIR", "Testpatient^Right", dt.date(1949, 5, 6))
    verdict = judge(rec, [older])
    assert verdict.code == "patient_birth_date_differs" and verdict.holds
    assert "1949" not in verdict.reason  # the field, never the record's value
    assert "WRONG" not in judge(rec, [other]).reason
    # A study without name or birth date only proves the ID exists.
    assert judge(rec, [Known("PACS", None, None)]).code == "patient_confirmed"


def test_a_fhir_patient_reads_as_name_and_birth_date() -> None:
    [known] = from_fhir_patient({"resourceType": "Patient", "birthDate": "1950-05-06",
                                 "name": [{"family": "Testpatient", "given": ["Right"]}]})
    assert (known.source, known.name, known.birth_date) == ("FHIR", "Testpatient^Right", BORN)
    [nameless] = from_fhir_patient({"resourceType": "Patient", "birthDate": "1950"})
    assert nameless.name is None and nameless.birth_date is None


# --- end to end ------------------------------------------------------------------------------


async def test_a_mistyped_patient_is_held_and_after_correction_filed_to_the_right_patient(
        world: World, tmp_path: Path, orthanc: OrthancServer,
        monkeypatch: pytest.MonkeyPatch) -> None:
    right = await _known_patient(orthanc)
    mistyped = right[:-1] + ("0" if right[-1] != "0" else "1")
    home = tmp_path / "home"
    monkeypatch.setenv("LIGHTBOX_HOME", str(home))
    monkeypatch.setenv("LIGHTBOX_PASSWORD", PASSWORD)
    monkeypatch.setenv("LIGHTBOX_INSECURE_FAST_KDF", "1")
    film = tmp_path / "film.png"
    film.write_bytes(xray_png(1024, 900, seed=51))
    async with journey(world, tmp_path, orthanc, config=CHECKING) as (_intern, ortho, gw):
        registrar = await enrol_clinician(world, tmp_path, "registrar",
                                          vault_dir=home / "registrar")
        registrar.vault.lock()
        events = ortho.client.subscribe()
        # Held: the specialist (and the sender) are told why, in the thread.
        thread_id, message_id, held = await _sent_and_held(film, events, mistyped)
        assert held.body.reply_to == message_id
        assert gw.filed == [] and [code for _, code in gw.failed] != []
        assert await _patient_ids_in_pacs(orthanc, right, mistyped) == {right: 1, mistyped: 0}
        rc, out, err = await lightbox("--profile", "registrar", "inbox")
        assert rc == 0 and "HELD" in out

        # A correction that is still wrong (birth date) is held again; nothing is filed.
        rc, out, err = await lightbox(
            "--profile", "registrar", "correct-patient", thread_id, message_id,
            "--patient-id", right, "--birth-date", "1950-06-05")
        assert rc == 0, out + err
        again = await next_event(events, MessageEvent,
                                 lambda e: "HELD" in e.body.text and "birth date" in e.body.text)
        assert "1950-05-06" not in again.body.text and "RIGHT" not in again.body.text
        assert gw.filed == []
        assert await _patient_ids_in_pacs(orthanc, right, mistyped) == {right: 1, mistyped: 0}

        # Bad input to the command: one sentence each, nothing sent.
        rc, _, err = await lightbox("--profile", "registrar", "correct-patient", thread_id,
                                    message_id, "--patient-id", right, "--birth-date", "6/5/50")
        assert rc == 1 and "YYYY-MM-DD" in err
        rc, _, err = await lightbox("--profile", "registrar", "correct-patient", thread_id,
                                    str(uuid.uuid4()), "--patient-id", right)
        assert rc == 1 and "not_found" in err

        # The right identity: filed to the right patient, and never to the mistyped one.
        rc, out, err = await lightbox(
            "--profile", "registrar", "correct-patient", thread_id, message_id,
            "--patient-id", right, "--birth-date", BORN.isoformat())
        assert rc == 0, out + err

        async def filed() -> bool:
            return bool(gw.filed)
        await eventually(filed, timeout=20)
        (receipt,) = gw.filed
        async with _pacs(orthanc) as pacs:
            ds = pydicom.dcmread(io.BytesIO(await pacs.retrieve_instance(
                receipt.study_instance_uid, receipt.series_instance_uid,
                receipt.sop_instance_uid)))
        assert ds.PatientID == right and str(ds.PatientName) == "Testpatient^Right"
        assert await _patient_ids_in_pacs(orthanc, right, mistyped) == {right: 2, mistyped: 0}


async def test_a_name_the_record_does_not_hold_for_the_id_is_held_and_not_revealed(
        world: World, tmp_path: Path, orthanc: OrthancServer) -> None:
    right = await _known_patient(orthanc, name="TESTPATIENT^SOMEONE")
    film = imaging.prepare_image(xray_png(640, 480, seed=52)).image
    async with journey(world, tmp_path, orthanc, config=CHECKING) as (intern, ortho, gw):
        events = intern.client.subscribe()
        thread = await intern.client.create_thread(users=[ortho.user_id])
        await send_for_filing(intern, thread.thread_id, film, _record(right))
        held = await next_event(events, MessageEvent, lambda e: "HELD" in e.body.text)
        assert "the name typed is not the name the record (PACS) holds" in held.body.text
        assert "SOMEONE" not in held.body.text.upper()
        assert gw.filed == [] and gw.failed[0][0] in held.body.text  # the held attachment
    assert await _patient_ids_in_pacs(orthanc, right) == {right: 1}


async def test_a_patient_known_to_the_fhir_server_is_checked_there_too(
        world: World, tmp_path: Path, orthanc: OrthancServer,
        fhir_server: FhirServer) -> None:
    """PACS has never seen this patient; the FHIR server knows them. A matching identity is
    filed; one whose birth date differs from the FHIR Patient is held."""
    patient_id = f"LBX-WP-FHIR-{uuid.uuid4().hex[:6].upper()}"
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {fhir_server.token}"}) as h:
        r = await h.post(f"{fhir_server.base_url}/Patient", json={
            "resourceType": "Patient", "birthDate": BORN.isoformat(),
            "identifier": [{"system": patient_id_system(ISSUER), "value": patient_id}],
            "name": [{"family": "Testpatient", "given": ["Fhir"]}]},
            headers={"Content-Type": "application/fhir+json"})
        assert r.status_code == 201, r.text
    settings = FhirSettings(url=fhir_server.base_url, token=fhir_server.token)
    first = imaging.prepare_image(xray_png(640, 480, seed=53)).image
    second = imaging.prepare_image(xray_png(640, 480, seed=54)).image
    async with FhirClient(settings) as fhir, \
            journey(world, tmp_path, orthanc, config=CHECKING, fhir=fhir) as (intern, ortho, gw):
        events = intern.client.subscribe()
        thread = await intern.client.create_thread(users=[ortho.user_id])
        wrong = msgspec.structs.replace(_record(patient_id, "Testpatient^Fhir"),
                                        birth_date="1950-05-07")
        await send_for_filing(intern, thread.thread_id, first, wrong)
        held = await next_event(events, MessageEvent, lambda e: "HELD" in e.body.text)
        assert "the birth date typed is not the one the record (FHIR) holds" in held.body.text
        await send_for_filing(intern, thread.thread_id, second,
                              _record(patient_id, "Testpatient^Fhir"))

        async def filed() -> bool:
            return bool(gw.filed)
        await eventually(filed, timeout=20)
        assert len(gw.filed) == 1  # stored and read back before it counts as filed
    assert await _patient_ids_in_pacs(orthanc, patient_id) == {patient_id: 1}



# --- a filed image is never filed again (the tester's sequence) ------------------------------


async def _filed_copies(orthanc: OrthancServer, sop_instance_uid: str) -> list[str]:
    """The Patient ID of every instance the PACS holds under ``sop_instance_uid`` (QIDO-RS over
    all studies, PS3.18 §10.6), so a second copy under any patient shows."""
    async with httpx.AsyncClient(auth=orthanc.auth) as http:
        r = await http.get(f"{orthanc.dicomweb_url}/instances",
                           params=[("SOPInstanceUID", sop_instance_uid),
                                   ("includefield", "00100020")],
                           headers={"Accept": "application/dicom+json"})
    assert r.status_code in (200, 204), r.text
    found = [pydicom.Dataset.from_json(d) for d in (r.json() if r.content.strip() else [])]
    return [str(d.PatientID) for d in found]


async def _sent_and_held(film: Path, events: asyncio.Queue[ClientEvent], patient_id: str
                         ) -> tuple[str, str, MessageEvent]:
    """The registrar sends the film under ``patient_id``, which the PACS does not know: the
    gateway holds it and says so in the thread. Returns the thread, the held message and the
    gateway's message (its ``correct-patient`` command names both)."""
    rc, out, err = await lightbox(
        "--profile", "registrar", "send", "--to", f"role:{ORTHO}", "--image", str(film),
        "--send-anyway", "--patient-agreed", "--statements-shown",
        "--patient-name", "Testpatient^Right", "--patient-id", patient_id,
        "--issuer", ISSUER, "--birth-date", BORN.isoformat(), "Wrist, please review")
    assert rc == 0, out + err
    held = await next_event(events, MessageEvent, lambda e: "HELD" in e.body.text)
    assert "does not know the patient ID" in held.body.text
    command = re.search(r"lightbox correct-patient (\S+) (\S+)", held.body.text)
    assert command is not None
    thread_id, message_id = command.groups()
    return thread_id, message_id, held


async def _held_then_filed(orthanc: OrthancServer, film: Path, gw: RecordGateway,
                           events: asyncio.Queue[ClientEvent], unknown: str, right: str
                           ) -> tuple[str, str, FilingReceipt]:
    """The tester's steps 1 and 2: a film sent under a patient ID the PACS does not know is
    held; ``correct-patient`` to a known patient files it, once, under that patient. Returns
    the thread, the held message and the filing receipt."""
    thread_id, message_id, _ = await _sent_and_held(film, events, unknown)
    rc, out, err = await lightbox(
        "--profile", "registrar", "correct-patient", thread_id, message_id,
        "--patient-id", right, "--birth-date", BORN.isoformat())
    assert rc == 0, out + err

    async def filed() -> bool:
        return bool(gw.filed)
    await eventually(filed, timeout=20)
    (receipt,) = gw.filed
    assert await _filed_copies(orthanc, receipt.sop_instance_uid) == [right]
    return thread_id, message_id, receipt


def _setup_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, seed: int) -> tuple[Path, Path]:
    home = tmp_path / "home"
    monkeypatch.setenv("LIGHTBOX_HOME", str(home))
    monkeypatch.setenv("LIGHTBOX_PASSWORD", PASSWORD)
    monkeypatch.setenv("LIGHTBOX_INSECURE_FAST_KDF", "1")
    film = tmp_path / "film.png"
    film.write_bytes(xray_png(1024, 900, seed=seed))
    return home, film


async def test_correct_patient_refuses_an_image_already_filed_before_sending_anything(
        world: World, tmp_path: Path, orthanc: OrthancServer,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The tester's sequence through ``lightbox``: held (unknown ID), corrected and filed, then
    the same correction again and one to another known patient: both refused on the device,
    one sentence and a non-zero exit, nothing sent; the PACS holds the image once, under the
    corrected patient."""
    right, other = await _known_patient(orthanc), await _known_patient(orthanc)
    unknown = f"LBX-WP-UNKNOWN-{uuid.uuid4().hex[:6].upper()}"
    home, film = _setup_cli(tmp_path, monkeypatch, seed=55)
    async with journey(world, tmp_path, orthanc, config=CHECKING) as (_intern, ortho, gw):
        registrar = await enrol_clinician(world, tmp_path, "registrar",
                                          vault_dir=home / "registrar")
        registrar.vault.lock()
        events = ortho.client.subscribe()
        thread_id, message_id, receipt = await _held_then_filed(
            orthanc, film, gw, events, unknown, right)
        failed = len(gw.failed)
        refusal = (f"error: conflict: the image {receipt.attachment_id} is already filed in "
                   f"the patient's record as {receipt.study_instance_uid}; a filed image is "
                   "corrected by the records team in the PACS\n")
        for patient_id in (right, other):
            rc, out, err = await lightbox(
                "--profile", "registrar", "correct-patient", thread_id, message_id,
                "--patient-id", patient_id, "--birth-date", BORN.isoformat())
            assert (rc, out, err) == (1, "", refusal)
        await asyncio.sleep(1)  # anything sent would have reached the gateway by now
        assert len(gw.filed) == 1 and len(gw.failed) == failed
    assert await _filed_copies(orthanc, receipt.sop_instance_uid) == [right]


async def test_the_gateway_never_files_again_an_image_the_pacs_already_holds(
        world: World, tmp_path: Path, orthanc: OrthancServer,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The same sequence with corrections that get past the device (an older client, a stale
    message): the gateway finds the image in the PACS before storing and refuses, in the thread,
    without storing it again and without calling a filed image "NOT saved"."""
    right, other = await _known_patient(orthanc), await _known_patient(orthanc)
    unknown = f"LBX-WP-UNKNOWN-{uuid.uuid4().hex[:6].upper()}"
    home, film = _setup_cli(tmp_path, monkeypatch, seed=56)
    async with journey(world, tmp_path, orthanc, config=CHECKING) as (_intern, ortho, gw):
        registrar = await enrol_clinician(world, tmp_path, "registrar",
                                          vault_dir=home / "registrar")
        registrar.vault.lock()
        events = ortho.client.subscribe()
        _thread_id, message_id, receipt = await _held_then_filed(
            orthanc, film, gw, events, unknown, right)
        refusal = (f"The record gateway did not file the image {receipt.attachment_id} again: "
                   f"it is already filed in the patient's record as "
                   f"{receipt.study_instance_uid}; a filed image is corrected by the records "
                   "team in the PACS.")
        registrar.vault.unlock(PASSWORD)  # the SDK sends what the command would refuse
        try:
            await registrar.client.start(wait_connected=seconds(10))
            for patient_id in (right, other):
                sent = await registrar.client.correct_patient(
                    message_id, patient_id=patient_id, birth_date=BORN.isoformat())
                told = await next_event(events, MessageEvent,
                                        lambda e, m=sent.message_id: e.body.reply_to == m)
                assert told.body.text == refusal
        finally:
            await registrar.client.close()
            registrar.vault.lock()
        assert len(gw.filed) == 1
    assert await _filed_copies(orthanc, receipt.sop_instance_uid) == [right]
