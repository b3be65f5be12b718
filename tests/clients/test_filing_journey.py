"""Filing to the record and expiry of every copy, end to end against a real relay and a real
Orthanc (PROTOCOL.md §15): an intern sends an x-ray with consent and patient data in the sealed body
to a specialist and the record gateway; the specialist receives it; the gateway files it in Orthanc
(STOW-RS, read back), the sealed receipt reaches both clinicians; after the grace period
(simulated time) both devices shred their copies and confirm; the relay's ciphertext is gone;
the study in Orthanc has the right PatientID and pixel data; ``lightbox-admin copies`` shows
every copy confirmed destroyed. Then: Orthanc stopped mid-way and restarted (the gateway files
when it returns), and Orthanc refusing an object (the sender is told, nothing expires)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import subprocess
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import msgspec
import pydicom
import pytest

from clients.gateway.app import GatewayConfig, RecordGateway
from clients.gateway.fhir import FhirClient
from clients.gateway.pacs import PacsClient, PacsSettings
from clients.gateway.records import build_consent_form, build_instance
from clients.sdk import attachments as sdk_attachments
from clients.sdk import imaging
from clients.sdk.client import ClientEvent, ExpiredEvent, FiledEvent, ImageEvent, MessageEvent
from clients.sdk.consent import ConsentCapture, capture_consent, image_hash, register_consent
from clients.sdk.filing import gateway_bundles
from clients.sdk.vault import ItemNotFound
from protocol.body import Body, BodyKind, RecordData, Sex, encode_body
from protocol.consent import ConsentBasis, ConsentDecision, verify_consent_token
from protocol.envelope import seal_message
from protocol.model import MessageHeader, Priority, Purpose
from tests.clinician_world import Clinician, enrol_clinician
from tests.consent_world import BIRTH_DATE, MRN, PATIENT_NAME, count, xray_png
from tests.filing_world import (
    admin_copies,
    copies_json,
    direct_care_consent,
    enrol_gateway,
    expiry_service,
    later,
    orthanc_gateway,
)
from tests.helpers import eventually, seconds
from tests.identity_world import World
from tests.orthanc import OrthancServer

# Attachments in 64 KiB chunks, as the image and filing journeys need.
pytestmark = pytest.mark.world(attachment_chunk_bytes=64 * 1024)

ORTHO = "orthopaedics_oncall"


@contextlib.asynccontextmanager
async def journey(world: World, tmp_path: Path, orthanc: OrthancServer, *,
                  config: GatewayConfig | None = None, fhir: FhirClient | None = None,
                  ) -> AsyncIterator[tuple[Clinician, Clinician, RecordGateway]]:
    intern = await enrol_clinician(world, tmp_path, "intern")
    ortho = await enrol_clinician(world, tmp_path, "ortho", roles=(ORTHO,))
    gateway = await enrol_gateway(world, tmp_path)
    gw, pacs = orthanc_gateway(gateway, orthanc, config=config, fhir=fhir)
    try:
        for c in (intern, ortho):
            await c.client.start(wait_connected=seconds(10))
        await gw.start()
        yield intern, ortho, gw
    finally:
        await gw.stop()
        await pacs.aclose()
        for c in (intern, ortho):
            await c.client.close()
            c.vault.lock()


def record(patient_id: str = MRN) -> RecordData:
    return RecordData(patient_name=PATIENT_NAME, patient_id=patient_id,
                      issuer_of_patient_id="LBX", birth_date=BIRTH_DATE, sex=Sex.FEMALE,
                      accession_number="ACC42", anatomic_region="Wrist",
                      study_description="Wrist photo of film")


async def send_for_filing(intern: Clinician, thread_id: str, image: imaging.SanitisedImage,
                          rec: RecordData, *, before_send: Any = None
                          ) -> tuple[str, MessageHeader]:
    """What ``send_image`` does, plus the organisation's gateways as recipients
    (clients/sdk/filing.py): consent, encrypt, upload, seal, send; the sender keeps a copy."""
    client = intern.client
    token, claims = capture_consent(intern.vault.state, ConsentCapture(
        purposes=[Purpose.DIRECT_CARE], images=[image_hash(image.data)],
        decision=ConsentDecision.AGREED, basis=ConsentBasis.TREATMENT_ATTESTATION,
        recipient_roles=[ORTHO], permanence_statement_shown=True,
        no_effect_on_care_statement_shown=True))
    await register_consent(client.relay, token)
    enc = await sdk_attachments.encrypt(image.data)
    aid = await sdk_attachments.upload(client.relay, enc.ciphertext)
    body = Body(text="Wrist AP, displaced?", consent_token=token, record=rec,
                attachments=[enc.descriptor(aid, image.media_type, width=image.width,
                                            height=image.height)])
    state = intern.vault.state
    recipients = await client.trust.recipients(thread_id, me=client.device_id)
    recipients += await gateway_bundles(client.relay, trusted_orgs=state.trusted_orgs(),
                                        revocations=await client.revocations())
    header = MessageHeader(
        v=1, message_id=str(uuid.uuid4()), thread_id=thread_id, sender_user_id=state.user_id,
        sender_device_id=state.device_id, sent_at=int(time.time()), purpose=Purpose.DIRECT_CARE,
        priority=Priority.URGENT, consent_id=claims.jti, attachment_ids=[aid],
        recipient_devices=[r.device.device_id for r in recipients])
    sealed = seal_message(header, encode_body(body), sender=state.device_keys(),
                          recipients=recipients)
    if before_send is not None:
        await before_send(header, aid)
    assert client.connection is not None
    await client.connection.send(sealed)
    intern.vault.put_image(aid, image.data, media_type=image.media_type, width=image.width,
                           height=image.height, thread_id=thread_id,
                           message_id=header.message_id)
    return aid, header


async def next_event(queue: asyncio.Queue[ClientEvent], kind: type[Any],
                     match: Any = lambda e: True, timeout: float = 20) -> Any:
    async with asyncio.timeout(seconds(timeout)):
        while True:
            event = await queue.get()
            if isinstance(event, kind) and match(event):
                return event


async def test_the_full_journey_files_the_xray_and_every_copy_is_destroyed(
        world: World, tmp_path: Path, orthanc: OrthancServer,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    prepared = imaging.prepare_image(xray_png(640, 480))
    async with journey(world, tmp_path, orthanc) as (intern, ortho, gw):
        a_events, b_events = intern.client.subscribe(), ortho.client.subscribe()
        intern_device, ortho_device = intern.client.device_id, ortho.client.device_id
        thread = await intern.client.create_thread(users=[ortho.user_id],
                                                   priority=Priority.URGENT)
        aid, header = await send_for_filing(intern, thread.thread_id, prepared.image,
                                            record())

        # The specialist receives and stores the image.
        await next_event(b_events, ImageEvent, lambda e: e.status == "stored")
        assert ortho.client.image(aid) == prepared.image.data

        # The gateway files it; the sealed receipt and the relay's notice reach both.
        for events in (a_events, b_events):
            got = await next_event(events, MessageEvent,
                                   lambda e: e.body.kind is BodyKind.FILING_RECEIPT)
            receipt = got.body.filing
            assert receipt.attachment_id == aid and receipt.message_id == header.message_id
            filed = await next_event(events, FiledEvent, lambda e: e.attachment_id == aid)
        async def gateway_done() -> bool:
            return bool(gw.filed)
        await eventually(gateway_done, timeout=20)
        assert gw.filed[0].sop_instance_uid == receipt.sop_instance_uid
        assert await count(world, "SELECT count(*) FROM filings") == 1

        # The study is in Orthanc with the right patient and the image's pixels.
        async with PacsClient(PacsSettings(url=orthanc.dicomweb_url,
                                           username=orthanc.username,
                                           password=orthanc.password)) as pacs:
            stored = await pacs.retrieve_instance(receipt.study_instance_uid,
                                                  receipt.series_instance_uid,
                                                  receipt.sop_instance_uid)
        ds = pydicom.dcmread(io.BytesIO(stored))
        assert ds.PatientID == MRN and str(ds.PatientName) == PATIENT_NAME
        assert ds.PatientBirthDate == BIRTH_DATE.replace("-", "")
        assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7"  # Secondary Capture (a film)
        expected = build_instance(prepared.image.data, record(), header,
                                  _descriptor(aid), operator="",
                                  default_issuer="LBX")
        assert ds.PixelData == pydicom.dcmread(io.BytesIO(expected.data)).PixelData
        assert (ds.Rows, ds.Columns) == (prepared.image.height, prepared.image.width)

        # The grace period passes (simulated time): both devices shred and confirm.
        async with expiry_service(world) as svc:
            report = await svc.sweep(now=later(filed.expires_at - later(0).timestamp() + 1))
        assert report.orders == 2
        for events, c in ((a_events, intern), (b_events, ortho)):
            await next_event(events, ExpiredEvent, lambda e: e.attachment_id == aid)
            assert c.vault.tombstone(aid) is not None
            with pytest.raises(ItemNotFound):
                c.vault.get_image(aid)

        async def all_confirmed() -> bool:
            return await count(world, "SELECT count(*) FROM expiry_orders "
                               "WHERE confirmed_at IS NULL") == 0
        await eventually(all_confirmed, timeout=20)
        # Filed and every recipient fetched it: the relay's ciphertext is gone.
        assert await count(world, "SELECT count(*) FROM blobs WHERE blob_id = $1",
                           uuid.UUID(aid)) == 0

    # lightbox-admin copies: every copy, from the audit trail, confirmed destroyed.
    home = tmp_path / "admin-home"
    (report_json,) = copies_json(*await admin_copies(world, home, monkeypatch, capsys,
                                                     "--attachment", aid, "--json"))
    assert report_json["all_destroyed"] is True
    assert report_json["filed_at"] is not None and report_json["ciphertext_deleted_at"]
    roles = {c["device_id"]: c for c in report_json["copies"]}
    assert roles[intern_device]["role"] == "sender"
    assert roles[ortho_device]["role"] == "recipient"
    assert roles[ortho_device]["received_at"] is not None
    assert roles[gw.store.state.device_id]["role"] == "gateway"
    for device in (intern_device, ortho_device):
        assert roles[device]["order_reason"] == "filed"
        assert roles[device]["confirmed_at"] is not None
    rc, text = await admin_copies(world, home, monkeypatch, capsys, "--thread",
                                  header.thread_id)
    assert rc == 0 and "every copy confirmed destroyed" in text


def _descriptor(attachment_id: str) -> Any:
    """build_instance only reads the descriptor's attachment id (for the SOP Instance UID)."""
    return SimpleNamespace(attachment_id=attachment_id)


async def test_orthanc_down_mid_way_files_once_it_returns(
        world: World, tmp_path: Path, orthanc: OrthancServer,
        caplog: pytest.LogCaptureFixture) -> None:
    prepared = imaging.prepare_image(xray_png(320, 240, seed=3))
    async with journey(world, tmp_path, orthanc) as (intern, ortho, gw):
        thread = await intern.client.create_thread(users=[ortho.user_id])
        orthanc.stop()
        try:
            aid, _ = await send_for_filing(intern, thread.thread_id, prepared.image,
                                           record("LBX-TEST-DOWN"))

            async def retried() -> bool:
                # The gateway tried, waited and tried again: its second failed attempt.
                return any(r.getMessage().startswith("PACS unavailable")
                           and getattr(r, "count", 0) >= 2 for r in caplog.records)
            await eventually(retried, timeout=20)
            assert not gw.filed
            assert await count(world, "SELECT count(*) FROM filings") == 0
        finally:
            await asyncio.to_thread(orthanc.start)

        async def filed() -> bool:
            # The relay records the filing when the gateway's receipt arrives; the gateway
            # adds it to its own list just after: wait for both, not for the first alone.
            return bool(gw.filed) and await count(
                world, "SELECT count(*) FROM filings") == 1
        await eventually(filed, timeout=30)
        assert gw.filed[0].attachment_id == aid and not gw.failed


async def test_orthanc_refusing_the_object_alerts_the_sender_and_nothing_expires(
        world: World, tmp_path: Path, orthanc: OrthancServer) -> None:
    prepared = imaging.prepare_image(xray_png(320, 240, seed=5))
    other = imaging.prepare_image(xray_png(320, 240, seed=9)).image.data
    rec = record("LBX-TEST-CONFLICT")
    async with journey(world, tmp_path, orthanc) as (intern, ortho, gw):
        events = intern.client.subscribe()
        thread = await intern.client.create_thread(users=[ortho.user_id])

        async def occupy(header: MessageHeader, aid: str) -> None:
            # The PACS already holds a different object under the very UIDs this image will
            # be filed with: Orthanc keeps its own copy and refuses ours, which only the
            # read-back shows. The gateway must not report a filing it cannot prove.
            squatter = build_instance(other, rec, header, _descriptor(aid), operator="",
                                      default_issuer="LBX")
            async with PacsClient(PacsSettings(url=orthanc.dicomweb_url,
                                               username=orthanc.username,
                                               password=orthanc.password)) as pacs:
                await pacs.store([squatter], study_instance_uid=squatter.study_instance_uid)

        aid, _ = await send_for_filing(intern, thread.thread_id, prepared.image, rec,
                                       before_send=occupy)
        alert = await next_event(events, MessageEvent,
                                 lambda e: "could not file" in e.body.text)
        assert aid in alert.body.text and "NOT saved" in alert.body.text
        assert gw.failed and gw.failed[0][0] == aid and not gw.filed
        assert await count(world, "SELECT count(*) FROM filings") == 0
        async with expiry_service(world) as svc:
            report = await svc.sweep(now=later(3600))
        assert report.orders == 0  # nothing expires before the hard limit
        assert intern.client.image(aid) == prepared.image.data


async def test_the_consent_form_is_filed_as_encapsulated_pdf_in_the_images_study(
        world: World, tmp_path: Path, orthanc: OrthancServer) -> None:
    """With the image, the gateway files the consent form (copy for the
    record) as DICOM Encapsulated PDF in the same study, lists it and the FHIR Consent in the
    receipt; the form's UIDs and bytes depend only on the consent and the study."""
    first = imaging.prepare_image(xray_png(320, 240, seed=11))
    second = imaging.prepare_image(xray_png(320, 240, seed=12))  # only hashed
    rec = record("LBX-TEST-CONSENT")
    async with journey(world, tmp_path, orthanc) as (intern, ortho, gw):
        thread = await intern.client.create_thread(users=[ortho.user_id])
        _, header = await send_for_filing(intern, thread.thread_id, first.image, rec)

        async def filed_once() -> bool:
            return len(gw.filed) == 1
        await eventually(filed_once, timeout=30)
        receipt = gw.filed[0]
        form, fhir = receipt.documents
        assert form.kind == "consent_form" and form.consent_id == header.consent_id
        assert form.sop_class_uid == "1.2.840.10008.5.1.4.1.1.104.1"
        assert fhir.kind == "fhir_consent" and fhir.consent_id == header.consent_id
        assert fhir.sha256 and fhir.location == ""  # no FHIR endpoint configured

        auth = (orthanc.username, orthanc.password)
        async with httpx.AsyncClient(auth=auth) as http:  # QIDO-RS: the form is in the study
            found = (await http.get(
                f"{orthanc.dicomweb_url}/studies/{receipt.study_instance_uid}/instances",
                params={"SOPClassUID": "1.2.840.10008.5.1.4.1.1.104.1"},
                headers={"Accept": "application/dicom+json"})).json()
        assert [i["00080018"]["Value"][0] for i in found] == [form.sop_instance_uid]
        async with PacsClient(PacsSettings(url=orthanc.dicomweb_url, username=auth[0],
                                           password=auth[1])) as pacs:
            stored = await pacs.retrieve_instance(receipt.study_instance_uid,
                                                  form.series_instance_uid or "",
                                                  form.sop_instance_uid or "")
        ds = pydicom.dcmread(io.BytesIO(stored))
        assert ds.StudyInstanceUID == receipt.study_instance_uid and ds.PatientID == rec.patient_id
        pdf = bytes(ds.EncapsulatedDocument)[:int(ds.EncapsulatedDocumentLength)]
        (tmp_path / "form.pdf").write_bytes(pdf)
        text = subprocess.run(["pdftotext", "-layout", str(tmp_path / "form.pdf"), "-"],
                              check=True, capture_output=True, text=True).stdout
        assert f"Consent reference: {header.consent_id}" in text
        assert "copy for the record" in text
        family, given = PATIENT_NAME.split("^")[:2]
        assert f"Patient: {family}, {given}" in text
        # The consent itself rides in the form: the signed token, which verifies under the
        # intern's identity key, and the FHIR Consent whose SHA-256 the receipt names.
        out = tmp_path / "embedded"
        out.mkdir()
        subprocess.run(["pdfdetach", "-saveall", "-o", str(out), str(tmp_path / "form.pdf")],
                       check=True, capture_output=True)
        jws = (out / f"consent-{header.consent_id}.jws").read_text()
        identity = intern.vault.state.identity_key()
        assert identity is not None
        verified = verify_consent_token(jws, identity.public,
                                        at=header.sent_at)
        assert verified.jti == header.consent_id
        fhir_json = (out / f"consent-{header.consent_id}.fhir.json").read_bytes()
        assert hashlib.sha256(fhir_json).hexdigest() == fhir.sha256
        assert sorted(p.name for p in out.iterdir()) == sorted(
            [f"consent-{header.consent_id}.jws", f"consent-{header.consent_id}.fhir.json"])

        # Once per consent and study: another image (another message, sent later) under the
        # same consent, or a retry, builds the very same object, which the PACS already holds.
        token, claims = capture_consent(intern.vault.state, ConsentCapture(
            purposes=[Purpose.DIRECT_CARE], images=[image_hash(second.image.data)],
            decision=ConsentDecision.AGREED, basis=ConsentBasis.TREATMENT_ATTESTATION,
            recipient_roles=[ORTHO], permanence_statement_shown=True,
            no_effect_on_care_statement_shown=True))
        later_header = msgspec.structs.replace(header, message_id=str(uuid.uuid4()),
                                               sent_at=header.sent_at + 600)
        a, b = (build_consent_form(claims, token, rec, h,
                                   study_instance_uid=receipt.study_instance_uid,
                                   clinician_name="", operator="", default_issuer="LBX")
                for h in (header, later_header))
        assert (a.sop_instance_uid, a.series_instance_uid, a.data) == (
            b.sop_instance_uid, b.series_instance_uid, b.data)


async def test_sdk_send_image_names_the_record_gateway_and_the_image_is_filed(
        world: World, tmp_path: Path, orthanc: OrthancServer) -> None:
    """The SDK's own ``send_image`` adds the organisation's gateway devices (verified like any
    recipient), so the relay accepts it and the gateway files it: no filing_gateway_missing."""
    prepared = imaging.prepare_image(xray_png(320, 240))
    async with journey(world, tmp_path, orthanc) as (intern, ortho, _gw):
        events = intern.client.subscribe()
        thread = await intern.client.create_thread(users=[ortho.user_id],
                                                   priority=Priority.URGENT)
        token = await direct_care_consent(intern, prepared.image.data, roles=[ORTHO])
        sent = await intern.client.send_image(thread.thread_id, prepared.image,
                                              consent_token=token, record=record(),
                                              text="Wrist AP")
        (aid,) = sent.attachment_ids
        filed = await next_event(events, FiledEvent, lambda e: e.attachment_id == aid,
                                 timeout=60)
        assert filed.message_id == sent.message_id
        assert filed.expires_at > filed.filed_at  # copies expire after the grace period
