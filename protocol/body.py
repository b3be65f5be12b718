"""The sealed body: what every client puts inside a sealed message (docs/PROTOCOL.md §14).

Why: the relay reads only the header (:class:`~protocol.model.MessageHeader`); everything a
clinician writes or a record needs travels here, encrypted end to end: the text, the thread's
subject, each attachment's descriptor (with its key), the consent token, the patient and study
data the record gateway files (docs/ARCHITECTURE.md §2: the relay never holds a name, MRN or birth
date), the clinical-necessity statement of an external consult, and the gateway's full filing
receipt.

Encoding: MessagePack (maps keyed by field name, binary as ``bin``), like the sealed message.
Decoding is strict (STYLE.md): unknown fields, wrong types, out-of-range values and oversize
strings or lists are refused with :class:`~protocol.errors.DecodeError`
(``validation_failed``), input over :data:`MAX_BODY_SIZE` with
:class:`~protocol.errors.LimitExceeded` (``message_too_large``), and each kind's required
fields are checked (:func:`decode_body`). All fields are plain data: no I/O here.
"""

from __future__ import annotations

import enum
import re
from typing import Annotated, Final, Literal

import msgspec

from protocol.attachments import AttachmentDescriptor
from protocol.canonical import UuidStr
from protocol.envelope import MAX_BODY_SIZE
from protocol.errors import DecodeError, ErrorCode, LimitExceeded

__all__ = [
    "BODY_VERSION",
    "MAX_ATTACHMENTS",
    "MAX_BODY_SIZE",
    "MAX_TEXT",
    "Body",
    "BodyKind",
    "BurnedInIdentifiers",
    "CaptureKind",
    "ConsentFiling",
    "FiledDocument",
    "FilingReceipt",
    "HandoverOf",
    "IdentifierKind",
    "OriginalSearch",
    "OriginalStudy",
    "RecordData",
    "Sex",
    "decode_body",
    "encode_body",
]

BODY_VERSION: Final = 1
MAX_TEXT: Final = 16 * 1024  # characters of message text
MAX_SUBJECT: Final = 200
MAX_ATTACHMENTS: Final = 16
MAX_CONSENT_TOKEN: Final = 8192
MAX_NECESSITY: Final = 4000
MAX_EMERGENCY_REASON: Final = 2000
MAX_WARNINGS: Final = 16

_Text = Annotated[str, msgspec.Meta(max_length=MAX_TEXT)]
_Short = Annotated[str, msgspec.Meta(max_length=64)]
_DicomUid = Annotated[str, msgspec.Meta(pattern=r"^[0-9]+(\.[0-9]+)*$", max_length=64)]
_Date = Annotated[str, msgspec.Meta(pattern=r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")]
_Warning = Annotated[str, msgspec.Meta(pattern=r"^[a-z_]{1,32}$")]
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


class BodyKind(enum.StrEnum):
    """What a sealed body is."""

    TEXT = "text"  # a message: text and/or images (the first one of a thread may carry subject)
    SUBJECT = "subject"  # the thread's subject line, set or changed
    FILING_RECEIPT = "filing_receipt"  # the record gateway: where the image is filed
    # A consent filed to the record without images (a refusal): the capturing
    # clinician sends it to the record gateway with the patient's record data ...
    CONSENT_RECORD = "consent_record"
    # ... and the gateway answers where it filed it.
    CONSENT_FILED = "consent_filed"


class Sex(enum.StrEnum):
    """DICOM Patient's Sex (0010,0040); empty when unknown."""

    MALE = "M"
    FEMALE = "F"
    OTHER = "O"
    UNKNOWN = ""


class CaptureKind(enum.StrEnum):
    """What the photo shows; decides the DICOM object the gateway builds (PROTOCOL.md §15)."""

    FILM = "film"  # a photo of a film or monitor: Secondary Capture
    CLINICAL = "clinical"  # a clinical photo: VL Photographic Image


class IdentifierKind(enum.StrEnum):
    """Kinds of patient identifier the sender's text recognition found burned into an image
    (clients/clinician/phi.py). Only the kind travels, never the text."""

    NAME = "name"
    DATE_OF_BIRTH = "date_of_birth"
    IDENTIFIER = "identifier"  # a record, hospital or accession number
    DATE = "date"
    AGE = "age"
    INSTITUTION = "institution"


class BurnedInIdentifiers(msgspec.Struct, frozen=True, forbid_unknown_fields=True,
                          kw_only=True):
    """One attachment of this body shows identifiers in its pixels: which kinds (one or more,
    each once), so the recipient is told before looking."""

    attachment_id: UuidStr
    kinds: Annotated[list[IdentifierKind], msgspec.Meta(min_length=1, max_length=6)]


class RecordData(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Patient and study data for the record (filed by the gateway): sealed, never in a header.
    ``patient_name`` is a DICOM person name (``Family^Given``)."""

    patient_name: Annotated[str, msgspec.Meta(max_length=200)]
    patient_id: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    issuer_of_patient_id: _Short = ""
    birth_date: _Date | None = None
    sex: Sex = Sex.UNKNOWN
    accession_number: Annotated[str, msgspec.Meta(max_length=16)] = ""
    anatomic_region: _Short = ""
    study_description: _Short = ""
    capture: CaptureKind = CaptureKind.FILM

    def __repr__(self) -> str:  # never print patient data
        return "RecordData(<sealed patient data>)"


class FiledDocument(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Something the gateway filed beside the image (CLINICAL_SAFETY.md). ``kind``
    ``consent_form``: the consent form as DICOM Encapsulated PDF in the image's study (its
    UIDs set). ``fhir_consent``: the FHIR R4 Consent, ``sha256`` of its JSON, ``location`` the
    FHIR server's answer when one is configured (empty: not posted anywhere)."""

    kind: Annotated[str, msgspec.Meta(pattern=r"^[a-z_]{1,32}$")]
    consent_id: UuidStr
    series_instance_uid: _DicomUid | None = None
    sop_instance_uid: _DicomUid | None = None
    sop_class_uid: _DicomUid | None = None
    sha256: Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{64}$")] | None = None
    location: Annotated[str, msgspec.Meta(max_length=1024)] = ""


class OriginalStudy(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The imaging study a photo of a film or monitor stands for, as the gateway found it in
    PACS by QIDO-RS (CLINICAL_SAFETY.md: a photo of an x-ray is not the study itself). ``url``
    is where to view it: the organisation's PACS viewer when the gateway is configured with
    one, else the study's DICOMweb retrieve URL. Always ``http``/``https``."""

    study_instance_uid: _DicomUid
    study_date: _Date | None = None
    modalities: Annotated[list[Annotated[str, msgspec.Meta(pattern=r"^[A-Z0-9]{1,16}$")]],
                          msgspec.Meta(max_length=16)] = []
    description: _Short = ""
    url: Annotated[str, msgspec.Meta(max_length=1024, pattern=r"^(https?://\S+)?$")] = ""


# How the record gateway's search for a film photo's original study went (FilingReceipt).
OriginalSearch = Literal["", "found", "none", "failed"]


class FilingReceipt(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The gateway's full receipt: where the image now lives in the record, what else was
    filed with it (``documents``: the consent form and FHIR Consent; empty from older
    gateways), and for a photo of a film or monitor the original studies it found in PACS
    (``original_studies``, newest first) and how its search for them went
    (``original_search``: ``found``; ``none``, searched and none found; ``failed``, the PACS
    could not be searched; empty for another capture and from older gateways)."""

    attachment_id: UuidStr
    message_id: UuidStr
    study_instance_uid: _DicomUid
    series_instance_uid: _DicomUid
    sop_instance_uid: _DicomUid
    filed_at: Annotated[int, msgspec.Meta(ge=0, le=2**53 - 1)]
    retrieve_url: Annotated[str, msgspec.Meta(max_length=1024)] = ""
    record_ref: Annotated[str, msgspec.Meta(max_length=256)] = ""
    documents: Annotated[list[FiledDocument], msgspec.Meta(max_length=8)] = []
    original_studies: Annotated[list[OriginalStudy], msgspec.Meta(max_length=4)] = []
    original_search: OriginalSearch = ""


class ConsentFiling(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The gateway's receipt for a ``consent_record`` (a consent filed without images, such as
    a refusal): the study it filed the consent form in, and what it filed."""

    consent_id: UuidStr
    message_id: UuidStr  # the consent_record message this answers
    decision: Annotated[str, msgspec.Meta(pattern=r"^[a-z_]{1,16}$")]
    study_instance_uid: _DicomUid
    filed_at: Annotated[int, msgspec.Meta(ge=0, le=2**53 - 1)]
    documents: Annotated[list[FiledDocument], msgspec.Meta(max_length=8)] = []


class HandoverOf(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Shift handover (docs/PROTOCOL.md §14, §16.4): this body is a consult sealed again by a
    device that held it, for the incoming on-call clinician. Its header names the resealing
    device and the moment of the reseal; this names the consult it copies, as that device
    verified it when it received it: the original message id, who wrote it (user and device)
    and when (``sent_at`` of the original header). Sealed, so the relay stays blind."""

    message_id: UuidStr
    sender_user_id: UuidStr
    sender_device_id: UuidStr
    sent_at: Annotated[int, msgspec.Meta(ge=0, le=2**53 - 1)]


class Body(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The plaintext of a sealed message. Only fields that apply to ``kind`` are set."""

    v: Annotated[int, msgspec.Meta(ge=1, le=255)] = BODY_VERSION
    kind: BodyKind = BodyKind.TEXT
    text: _Text = ""
    subject: Annotated[str, msgspec.Meta(max_length=MAX_SUBJECT)] | None = None
    attachments: Annotated[list[AttachmentDescriptor],
                           msgspec.Meta(max_length=MAX_ATTACHMENTS)] = []
    consent_token: Annotated[str, msgspec.Meta(max_length=MAX_CONSENT_TOKEN)] | None = None
    record: RecordData | None = None
    necessity: Annotated[str, msgspec.Meta(max_length=MAX_NECESSITY)] | None = None
    # Break-glass (PROTOCOL §17): why no consent could be asked, in the sender's words; only
    # its category (MessageHeader.emergency) is visible to the relay.
    emergency_reason: Annotated[str, msgspec.Meta(max_length=MAX_EMERGENCY_REASON)] | None = None
    reply_to: UuidStr | None = None
    # Quality checks the sender saw and chose to send anyway (clients.sdk.imaging QualityIssue).
    quality_warnings: Annotated[list[_Warning], msgspec.Meta(max_length=MAX_WARNINGS)] = []
    filing: FilingReceipt | None = None
    consent_filing: ConsentFiling | None = None
    # Images sent without redacting text that looks like patient identifiers (PROTOCOL §14).
    burned_in_identifiers: Annotated[list[BurnedInIdentifiers],
                                     msgspec.Meta(max_length=MAX_ATTACHMENTS)] = []
    # A consult handed over at a shift change (docs/PROTOCOL.md §16.4): the original's author
    # and time. UNSET is never encoded, so a body without it has the bytes it always had.
    handover_of: HandoverOf | msgspec.UnsetType = msgspec.UNSET

    def __repr__(self) -> str:  # never print text, keys or patient data
        return (f"Body(kind={self.kind.value}, text=<{len(self.text)} chars>, "
                f"attachments={len(self.attachments)})")


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Body)


def _check_receipt_only(body: Body, kind: BodyKind, receipt: object, this: str, what: str) -> None:
    """A body of ``kind`` carries its ``receipt`` and nothing else; no other kind carries one."""
    if body.kind is kind:
        if receipt is None or body.attachments or body.record is not None:
            raise DecodeError(f"{this} carries the receipt only", code=ErrorCode.VALIDATION_FAILED)
    elif receipt is not None:
        raise DecodeError(f"only a {kind.value} body carries {what}",
                          code=ErrorCode.VALIDATION_FAILED)


def _check(body: Body) -> None:
    """Invariants per kind, and no control characters in one-line fields."""
    if body.v != BODY_VERSION:
        raise DecodeError(f"unsupported body version {body.v}", code=ErrorCode.UNSUPPORTED_VERSION)
    if body.kind is BodyKind.TEXT and not (body.text.strip() or body.attachments):
        raise DecodeError("a text body needs text or an attachment",
                          code=ErrorCode.VALIDATION_FAILED)
    if body.kind is BodyKind.SUBJECT and not (body.subject and body.subject.strip()):
        raise DecodeError("a subject body needs a subject", code=ErrorCode.VALIDATION_FAILED)
    _check_receipt_only(body, BodyKind.FILING_RECEIPT, body.filing,
                        "a filing receipt", "a receipt")
    _check_receipt_only(body, BodyKind.CONSENT_FILED, body.consent_filing,
                        "a consent_filed body", "a consent filing")
    if body.kind is BodyKind.CONSENT_RECORD:
        if body.consent_token is None or body.record is None or body.attachments:
            raise DecodeError("a consent_record carries a consent token and record data, "
                              "and no images", code=ErrorCode.VALIDATION_FAILED)
    elif body.record is not None and not body.attachments \
            and isinstance(body.handover_of, msgspec.UnsetType):
        # A copy handed over at a shift change (§16.4) after its images were filed and their
        # copies expired keeps the patient data alone: the incoming clinician must still see
        # whom the consult is about (docs/PROTOCOL.md §14 "record").
        raise DecodeError("record data goes with an image", code=ErrorCode.VALIDATION_FAILED)
    ids = [a.attachment_id for a in body.attachments]
    if len(set(ids)) != len(ids):
        raise DecodeError("an attachment is listed twice", code=ErrorCode.VALIDATION_FAILED)
    flagged = [b.attachment_id for b in body.burned_in_identifiers]
    if len(set(flagged)) != len(flagged) or not set(flagged) <= set(ids):
        raise DecodeError("burned-in identifiers name each of the body's attachments at most "
                          "once", code=ErrorCode.VALIDATION_FAILED)
    if any(len(set(b.kinds)) != len(b.kinds) for b in body.burned_in_identifiers):
        raise DecodeError("a burned-in identifier kind is listed twice",
                          code=ErrorCode.VALIDATION_FAILED)
    one_line = [body.subject or ""]
    if body.record is not None:
        r = body.record
        one_line += [r.patient_name, r.patient_id, r.issuer_of_patient_id, r.accession_number,
                     r.anatomic_region, r.study_description]
    if any(_CONTROL.search(s) or "\n" in s or "\r" in s for s in one_line):
        raise DecodeError("control characters in a one-line field",
                          code=ErrorCode.VALIDATION_FAILED)
    if any(_CONTROL.search(s) for s in (body.text, body.necessity or "",
                                        body.emergency_reason or "")):
        raise DecodeError("control characters in the text", code=ErrorCode.VALIDATION_FAILED)


def encode_body(body: Body) -> bytes:
    """MessagePack bytes of a valid body; DecodeError if it is not valid (a client never seals
    what its peers would refuse), LimitExceeded over MAX_BODY_SIZE."""
    _check(body)
    data = _encoder.encode(body)
    if len(data) > MAX_BODY_SIZE:
        raise LimitExceeded("body too large", code=ErrorCode.MESSAGE_TOO_LARGE)
    return data


def decode_body(data: bytes, *, max_size: int = MAX_BODY_SIZE) -> Body:
    """Strictly decode a body that :func:`protocol.envelope.open_message` returned."""
    if len(data) > max_size:
        raise LimitExceeded("body too large", code=ErrorCode.MESSAGE_TOO_LARGE)
    try:
        body = _decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError, ValueError, RecursionError) as exc:
        raise DecodeError(f"malformed body: {exc}", code=ErrorCode.VALIDATION_FAILED) from exc
    _check(body)
    return body
