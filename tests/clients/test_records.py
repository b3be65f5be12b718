"""clients/gateway/records.py, the objects the record gateway files, built from the sealed
record data: UIDs the same for the same inputs (a retried filing stores the same object,
never a duplicate), the study data from the sealed body and never from what the relay can
see, failures logged by field and kind and never by value, and the consent form carrying the
consent itself. The patient is fake: Testpatient^Alpha, LBX-TEST-0042."""

from __future__ import annotations

import datetime as dt
import io
import json
import uuid

import msgspec
import pydicom
import pytest
from PIL import Image

from clients.gateway import dicom, records
from clients.gateway.dicom import is_uid
from clients.gateway.dicomweb import PacsRejected, PacsUnavailable
from clients.sdk.consent import ConsentCapture, capture_consent, image_hash
from clients.sdk.keystore import DeviceState
from protocol.attachments import AttachmentDescriptor
from protocol.body import CaptureKind, RecordData
from protocol.consent import ConsentBasis, ConsentClaims, ConsentDecision
from protocol.model import MessageHeader, Priority, Purpose
from tests.clients.test_pacs import jpeg

SENT_AT = 1_780_000_000
IMAGE = jpeg()
RECORD = RecordData(patient_name="Testpatient^Alpha", patient_id="LBX-TEST-0042",
                    birth_date="1957-03-14", accession_number="LBXTEST0001")


def _header(**changes: object) -> MessageHeader:
    base = MessageHeader(
        v=1, message_id=str(uuid.UUID(int=1)), thread_id=str(uuid.UUID(int=2)),
        sender_user_id=str(uuid.UUID(int=3)), sender_device_id=str(uuid.UUID(int=4)),
        sent_at=SENT_AT, purpose=Purpose.DIRECT_CARE, priority=Priority.URGENT,
        consent_id=None, attachment_ids=[str(uuid.UUID(int=5))], recipient_devices=[])
    return msgspec.structs.replace(base, **changes)


def _descriptor(attachment_id: str = str(uuid.UUID(int=5))) -> AttachmentDescriptor:
    return AttachmentDescriptor(attachment_id=attachment_id, key=b"k" * 32, sha256=b"s" * 32,
                                size=len(IMAGE), media_type="image/jpeg")


def _instance(image: bytes = IMAGE, record: RecordData = RECORD,
              header: MessageHeader | None = None,
              descriptor: AttachmentDescriptor | None = None,
              operator: str = "Testdoctor^Beta") -> dicom.DicomInstance:
    return records.build_instance(image, record, header or _header(),
                                  descriptor or _descriptor(), operator=operator,
                                  default_issuer="LIGHTBOX-TEST")


def _uids(inst: dicom.DicomInstance) -> tuple[str, str, str]:
    return inst.study_instance_uid, inst.series_instance_uid, inst.sop_instance_uid


# -- UIDs -----------------------------------------------------------------------------------------


def test_a_retried_filing_builds_the_same_object() -> None:
    first, again = _instance(), _instance()
    assert _uids(first) == _uids(again)
    assert first.data == again.data


def test_uids_are_2_25_uuid_uids_that_fit_dicom() -> None:
    uid = records.dicom_uid("study", "thread", "patient")
    assert uid.startswith("2.25.") and is_uid(uid) and len(uid) <= 64
    assert uid == records.dicom_uid("study", "thread", "patient")
    assert uid != records.dicom_uid("study", "thread", "another patient")


def test_each_image_its_own_instance_each_message_its_series_each_patient_its_study() -> None:
    base = _uids(_instance())
    other_image = _uids(_instance(descriptor=_descriptor(str(uuid.UUID(int=6)))))
    other_message = _uids(_instance(header=_header(message_id=str(uuid.UUID(int=7)))))
    other_patient = _uids(_instance(record=msgspec.structs.replace(
        RECORD, patient_id="LBX-TEST-0043")))
    assert other_image[:2] == base[:2] and other_image[2] != base[2]
    assert other_message[0] == base[0] and other_message[1] != base[1]
    assert other_patient[0] != base[0]


# -- what the DICOM object says -------------------------------------------------------------------


def test_the_study_data_comes_from_the_sealed_record_and_the_header_ids_only() -> None:
    ds = pydicom.dcmread(io.BytesIO(_instance().data))
    assert (str(ds.PatientName), ds.PatientID, ds.PatientBirthDate) == (
        "Testpatient^Alpha", "LBX-TEST-0042", "19570314")
    assert ds.IssuerOfPatientID == "LIGHTBOX-TEST"  # the gateway's default issuer
    assert ds.StudyDescription == "Lightbox consult"
    assert str(ds.OperatorsName) == "Testdoctor^Beta"
    data = records.dicom_record(RECORD, _header(), operator="Testdoctor^Beta",
                                default_issuer="LIGHTBOX-TEST")
    assert data.acquisition_datetime == dt.datetime.fromtimestamp(SENT_AT, dt.UTC)
    assert data.consult_reference == _header().thread_id


def test_a_clinical_photo_is_vl_photographic_and_a_film_secondary_capture() -> None:
    photo = _instance(record=msgspec.structs.replace(RECORD, capture=CaptureKind.CLINICAL))
    film = _instance()
    assert photo.sop_class_uid == "1.2.840.10008.5.1.4.1.1.77.1.4"
    assert film.sop_class_uid == "1.2.840.10008.5.1.4.1.1.7"


def test_a_png_from_a_desktop_is_decoded_and_garbage_is_refused() -> None:
    png = io.BytesIO()
    Image.new("L", (64, 48), 128).save(png, format="PNG")
    assert _instance(image=png.getvalue()).sop_instance_uid
    with pytest.raises(dicom.DicomBuildError, match="not a readable image"):
        _instance(image=b"not an image")


def test_an_operator_name_dicom_refuses_is_left_out_not_fatal() -> None:
    ds = pydicom.dcmread(io.BytesIO(_instance(operator="x" * 400).data))
    assert str(ds.get("OperatorsName", "")) == ""


def test_a_bad_birth_date_names_the_field_never_the_value() -> None:
    bad = msgspec.structs.replace(RECORD, birth_date="1957-02-30")
    with pytest.raises(dicom.RecordDataInvalid) as err:
        _instance(record=bad)
    assert err.value.field_name == "birth_date"
    assert "1957" not in str(err.value)
    assert records.dicom_code(err.value) == "record_data_invalid (birth_date)"


# -- what the log says ----------------------------------------------------------------------------


def test_a_pacs_refusal_is_logged_by_kind_and_status_never_its_message() -> None:
    refused = PacsRejected("Testpatient^Alpha is not allowed", status=409)
    assert records.pacs_code(refused) == "pacs_refused (PacsRejected, HTTP 409)"
    assert records.pacs_code(PacsUnavailable("down")) == "pacs_refused (PacsUnavailable)"
    assert records.dicom_code(dicom.DicomBuildError("LBX-TEST-0042")) == (
        "dicom_invalid (DicomBuildError)")


def test_the_patient_id_system_quotes_the_issuer() -> None:
    assert records.patient_id_system("St Elsewhere/ED").endswith(
        "/patient-id/St%20Elsewhere%2FED")


def test_times_in_the_form_are_utc() -> None:
    assert records.iso_date(0) == "1970-01-01 00:00:00 UTC"


# -- the consent form -----------------------------------------------------------------------------


def _consent() -> tuple[str, ConsentClaims]:
    state = DeviceState(
        server_url="http://relay.test", login="alice", user_id=str(uuid.UUID(int=3)),
        org_id="org.test", org_public_key=b"\x01" * 32,
        identity_seed=b"IDENTITY-SEED-SECRET-32-BYTES!!!", device_id=str(uuid.UUID(int=4)),
        device_kind="mobile", device_seed=b"DEVICE-SEED-SECRET-32-BYTES!!!!!",
        dh_secret=b"DH-SECRET-SECRET-32-BYTES!!!!!!!", user_certificate="u.c",
        device_certificate="d.c")
    return capture_consent(state, ConsentCapture(
        purposes=[Purpose.DIRECT_CARE], images=[image_hash(IMAGE)],
        decision=ConsentDecision.AGREED, basis=ConsentBasis.TREATMENT_ATTESTATION,
        permanence_statement_shown=True, no_effect_on_care_statement_shown=True),
        now=SENT_AT - 600, consent_id=str(uuid.UUID(int=8)))


def test_the_consent_form_is_filed_once_per_consent_and_study() -> None:
    token, claims = _consent()
    study = _instance().study_instance_uid

    def form(study_uid: str) -> dicom.DicomInstance:
        return records.build_consent_form(
            claims, token, RECORD, _header(), study_instance_uid=study_uid,
            clinician_name="Dr Testdoctor", operator="Testdoctor^Beta",
            default_issuer="LIGHTBOX-TEST")

    first, again = form(study), form(study)
    assert _uids(first) == _uids(again) and first.study_instance_uid == study
    assert _uids(form(records.dicom_uid("another study")))[1:] != _uids(first)[1:]
    ds = pydicom.dcmread(io.BytesIO(first.data))
    assert ds.MIMETypeOfEncapsulatedDocument == "application/pdf"


def test_the_consent_travels_with_the_form_signed_and_as_fhir() -> None:
    token, claims = _consent()
    jws, fhir = records.consent_attachments(claims, token)
    assert (jws.data, jws.media_type) == (token.encode(), "application/jose")
    resource = json.loads(fhir.data)
    assert fhir.media_type == "application/fhir+json" and resource["resourceType"] == "Consent"
    assert fhir.data == records.fhir_consent_json(claims)
    assert list(resource) == sorted(resource)
