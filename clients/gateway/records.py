"""What the record gateway files, built without I/O: the DICOM object of a consult image (its
UIDs derived from the message and attachment ids, so filing again is idempotent), the consent
form filed beside it (PDF and DICOM, token and FHIR Consent embedded), the FHIR identifier
system of a patient id, and the short codes a filing failure is reported with.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import io
import json
import uuid
from urllib.parse import quote

from PIL import Image

from clients.gateway import dicom
from clients.gateway.pacs import (
    PacsError,
)
from clients.sdk.consent_pdf import (
    Attachment,
    ConsentFormDisplay,
    FormCopy,
    patient_label,
    render_consent_pdf,
)
from protocol.attachments import AttachmentDescriptor
from protocol.body import (
    CaptureKind,
    RecordData,
)
from protocol.consent import (
    FHIR_SYSTEM_BASE,
    ConsentClaims,
    to_fhir_consent,
)
from protocol.model import MessageHeader

__all__ = [
    "CONSENT_IDENTIFIER_SYSTEM",
    "CONSENT_STUDY",
    "UID_NAMESPACE",
    "build_consent_form",
    "build_instance",
    "consent_attachments",
    "dicom_code",
    "dicom_record",
    "dicom_uid",
    "fhir_consent_json",
    "image_uids",
    "iso_date",
    "pacs_code",
    "patient_id_system",
]


UID_NAMESPACE = uuid.UUID("7b0f3c1e-2a54-4c8e-9a61-5d2f8e0c4b17")


CONSENT_STUDY = "Consent for clinical images"  # a consent filed without images: its study


CONSENT_IDENTIFIER_SYSTEM = "urn:ietf:rfc:3986"  # to_fhir_consent's identifier: urn:uuid:<jti>


def patient_id_system(issuer: str) -> str:
    """The FHIR identifier system of a patient id from the sealed record data: the issuer
    (DICOM Issuer of Patient ID, default the gateway's ``--issuer`` or the organisation id)
    under the Lightbox system base, so the privacy office can find a patient's consents in the
    record (``lightbox-admin consent find --patient-id``)."""
    return f"{FHIR_SYSTEM_BASE}/patient-id/{quote(issuer, safe='')}"


def iso_date(ts: int) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def dicom_code(exc: dicom.DicomBuildError) -> str:
    """What the log says of a DICOM build failure: the field's name, never its value."""
    if isinstance(exc, dicom.RecordDataInvalid):
        return f"record_data_invalid ({exc.field_name})"
    return f"dicom_invalid ({type(exc).__name__})"


def pacs_code(exc: PacsError) -> str:
    """What the log says of a PACS refusal: its kind and HTTP status, never its message (it may
    quote the object)."""
    status = getattr(exc, "status", None)
    return f"pacs_refused ({type(exc).__name__}{f', HTTP {status}' if status else ''})"


def dicom_uid(*parts: str) -> str:
    """A UUID-derived UID (PS3.5 §B.2, root 2.25) that is the same for the same inputs, so a
    retried filing stores the same object rather than a duplicate."""
    return "2.25." + str(uuid.uuid5(UID_NAMESPACE, "/".join(parts)).int)


def image_uids(header: MessageHeader, descriptor: AttachmentDescriptor) -> tuple[str, str]:
    """The Series and SOP Instance UIDs of a consult image: the series from the message, the
    instance from the attachment alone, so an image sent again in another message (a
    ``correct-patient``) keeps its SOP Instance UID and the PACS can tell it is filed already."""
    return dicom_uid("series", header.message_id), dicom_uid("sop", descriptor.attachment_id)


def dicom_record(record: RecordData, header: MessageHeader, *, operator: str,
                 default_issuer: str) -> dicom.RecordData:
    """The DICOM patient/study data, from the sealed body's record data (never from server-
    visible fields: the header only contributes ids and the time the image was sent)."""
    region = None
    if record.anatomic_region:
        region = dicom.CodedConcept(record.anatomic_region[:16], "99LBX",
                                    record.anatomic_region[:64])
    try:
        op = dicom.RecordData(  # validate the operator's name alone first
            patient_name="X", patient_id="X", issuer_of_patient_id="X", birth_date=None,
            sex=dicom.Sex.UNKNOWN, accession_number="", study_description="",
            acquisition_datetime=dt.datetime.now(dt.UTC), operator_name=operator,
            consult_reference="x").operator_name
    except dicom.DicomBuildError:
        op = ""
    try:
        birth_date = dt.date.fromisoformat(record.birth_date) if record.birth_date else None
    except ValueError:  # its message quotes the date: a RecordDataInvalid names the field only
        raise dicom.RecordDataInvalid("birth_date", "not a date (YYYY-MM-DD)") from None
    return dicom.RecordData(
        patient_name=record.patient_name, patient_id=record.patient_id,
        issuer_of_patient_id=record.issuer_of_patient_id or default_issuer,
        birth_date=birth_date,
        sex=dicom.Sex(record.sex.value), accession_number=record.accession_number,
        study_description=record.study_description or "Lightbox consult",
        acquisition_datetime=dt.datetime.fromtimestamp(header.sent_at, dt.UTC),
        operator_name=op, consult_reference=header.thread_id,
        study_instance_uid=dicom_uid("study", header.thread_id, record.patient_id),
        anatomic_region=region)


def build_instance(image: bytes, record: RecordData, header: MessageHeader,
                   descriptor: AttachmentDescriptor, *, operator: str,
                   default_issuer: str) -> dicom.DicomInstance:
    data = dicom_record(record, header, operator=operator, default_issuer=default_issuer)
    pixels: bytes | Image.Image = image
    if not image.startswith(b"\xff\xd8"):  # not JPEG (a PNG from a desktop): decode it
        try:
            pixels = Image.open(io.BytesIO(image))
            pixels.load()
        except (OSError, ValueError) as exc:
            raise dicom.DicomBuildError(f"not a readable image: {exc}") from exc
    series, sop_uid = image_uids(header, descriptor)
    sop = iter([sop_uid])

    def new_uid() -> str:
        return next(sop)

    if record.capture is CaptureKind.CLINICAL:
        return dicom.build_vl_photographic(pixels, data, series_instance_uid=series,
                                           new_uid=new_uid)
    return dicom.build_secondary_capture(pixels, data, captured_from=dicom.CapturedFrom.FILM,
                                         series_instance_uid=series, new_uid=new_uid)


def build_consent_form(claims: ConsentClaims, token: str, record: RecordData,
                       header: MessageHeader, *, study_instance_uid: str, clinician_name: str,
                       operator: str, default_issuer: str) -> dicom.DicomInstance:
    """The consent form (copy for the record) as Encapsulated PDF in the images' study, with
    the consent itself embedded in the PDF: the signed token (anyone holding the issuer's
    certificate can verify it, RFC 7515 §5.2) and the FHIR R4 Consent. Its UIDs and content
    depend only on the consent and the study, so every image of the study that the consent
    covers, and every retry, files the same object once."""
    pdf = render_consent_pdf(claims, ConsentFormDisplay(
        patient_label=patient_label(record.patient_name), clinician_name=clinician_name),
        copy=FormCopy.RECORD, attachments=consent_attachments(claims, token))
    data = dataclasses.replace(
        dicom_record(record, header, operator=operator, default_issuer=default_issuer),
        acquisition_datetime=dt.datetime.fromtimestamp(claims.iat, dt.UTC))
    uid = iter([dicom_uid("consent-form", claims.jti, study_instance_uid)])
    return dicom.build_encapsulated_pdf(
        pdf, data, study_instance_uid=study_instance_uid,
        series_instance_uid=dicom_uid("consent-series", claims.jti, study_instance_uid),
        new_uid=lambda: next(uid))


def consent_attachments(claims: ConsentClaims, token: str) -> list[Attachment]:
    """What the record's form carries besides its text: the consent, machine-readable."""
    return [
        Attachment(f"consent-{claims.jti}.jws", token.encode(), "application/jose",
                   "The signed consent token (JWS, EdDSA; Lightbox PROTOCOL.md section 7)"),
        Attachment(f"consent-{claims.jti}.fhir.json", fhir_consent_json(claims),
                   "application/fhir+json", "The consent as a FHIR R4 Consent resource"),
    ]


def fhir_consent_json(claims: ConsentClaims) -> bytes:
    """The FHIR R4 Consent as canonical-enough JSON (sorted keys), hashed into the receipt."""
    return json.dumps(to_fhir_consent(claims), sort_keys=True, separators=(",", ":")).encode()
