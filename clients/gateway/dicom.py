"""DICOM Part-10 objects for the record gateway, built with pydicom (pure: no network, no files).

Why (docs/ARCHITECTURE.md §6, PROTOCOL.md §15, CLINICAL_SAFETY.md): the gateway files what a
clinician sent into the patient's record in PACS. Everything that identifies the patient or the
study comes from the sealed message body, mapped by the caller into :class:`RecordData`; nothing
here reads a server-visible field.

Three builders, each returning a :class:`DicomInstance` (the Part-10 bytes and its UIDs):

- :func:`build_secondary_capture`: a phone photo of a film or of a monitor (Secondary Capture
  Image Storage, PS3.3 A.8.1; Conversion Type ``DF`` for a film, ``WSD`` for a screen). It is
  marked as having burned-in annotation and, in Image Comments and the series description, as
  *not of diagnostic quality*: a photo of an x-ray is not the study (CLINICAL_SAFETY.md).
- :func:`build_vl_photographic`: a clinical photo (VL Photographic Image Storage, PS3.3 A.32.4,
  modality XC).
- :func:`build_encapsulated_pdf`: a consent form (Encapsulated PDF Storage, PS3.3 A.45.1) for the
  same study as the images it covers.

Images are JPEG Baseline (PS3.5 §8.2.1, transfer syntax 1.2.840.10008.1.2.4.50). A baseline
8-bit JPEG (what :func:`clients.sdk.imaging.sanitise_image` produces) is encapsulated byte for byte,
so the PACS holds exactly the pixels the clinician saw; other images (progressive JPEG, Pillow
images) are decoded and encoded once as baseline. The photometric interpretation follows the JPEG
frame: MONOCHROME2 for one component, YBR_FULL_422 when chroma is subsampled, YBR_FULL when not.

UIDs are fresh for every series and instance (the study too unless the record names one to
reuse). By default they are ``2.25.`` UUID-derived UIDs (PS3.5 §B.2), which need no registered
root; an organisation with its own root passes ``uid_root``. Tests inject ``new_uid``.

Exceptions::

    ValueError
     └── DicomBuildError        the input cannot make a valid object
          └── RecordDataInvalid  a RecordData field breaks its DICOM value representation
"""

from __future__ import annotations

import io
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import date, datetime, time, timedelta
from enum import StrEnum
from typing import Final

from PIL import Image
from pydicom import dcmwrite
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import (
    UID,
    EncapsulatedPDFStorage,
    ExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    SecondaryCaptureImageStorage,
    VLPhotographicImageStorage,
    generate_uid,
)

from clients.gateway.jpeg import (
    FrameError,
    JpegFrame,
    encode_frame,
    has_adobe_transform,
    read_sof,
)

__all__ = [
    "NOT_DIAGNOSTIC_NOTE",
    "CapturedFrom",
    "CodedConcept",
    "DicomBuildError",
    "DicomInstance",
    "RecordData",
    "RecordDataInvalid",
    "Sex",
    "build_encapsulated_pdf",
    "build_secondary_capture",
    "build_vl_photographic",
    "is_uid",
]

MANUFACTURER: Final = "Lightbox"
MODEL: Final = "Lightbox record gateway"
SOFTWARE_VERSION: Final = "0.1.0"
NOT_DIAGNOSTIC_NOTE: Final = (
    "Photograph of a {what} taken with a mobile device; not of diagnostic quality. "
    "The original study is the reference."
)
# LOINC 59284-0 "Patient Consent", the same code the FHIR Consent carries (protocol/consent.py).
CONSENT_CONCEPT: Final = ("59284-0", "LN", "Patient Consent")

UidFactory = Callable[[], str]


class DicomBuildError(ValueError):
    """The input cannot make a valid DICOM object (not an image, not a PDF, too large...)."""


class RecordDataInvalid(DicomBuildError):
    """A :class:`RecordData` field does not fit its DICOM value representation."""

    def __init__(self, field_name: str, reason: str) -> None:
        super().__init__(f"{field_name}: {reason}")
        self.field_name = field_name
        self.reason = reason


class Sex(StrEnum):
    """Patient's Sex (0010,0040), PS3.3 C.7.1.1: M, F, O, or empty when unknown."""

    MALE = "M"
    FEMALE = "F"
    OTHER = "O"
    UNKNOWN = ""


class CapturedFrom(StrEnum):
    """What a Secondary Capture photographs, as its Conversion Type (0008,0064), PS3.3 C.8.6.1.

    A phone photo of a film is a digitised film (``DF``). A photo of a monitor shows a
    workstation's screen (``WSD``); it is not a frame-grabbed video signal (``DV``)."""

    FILM = "DF"
    MONITOR = "WSD"


@dataclass(frozen=True)
class CodedConcept:
    """A code sequence item (PS3.3 §8.8), e.g. ``CodedConcept("39607008", "SCT", "Lung")``."""

    value: str
    scheme: str
    meaning: str

    def __post_init__(self) -> None:
        _check_text("code value", self.value, 16)
        _check_text("coding scheme", self.scheme, 16)
        _check_text("code meaning", self.meaning, 64)

    def item(self) -> Dataset:
        ds = Dataset()
        ds.CodeValue = self.value
        ds.CodingSchemeDesignator = self.scheme
        ds.CodeMeaning = self.meaning
        return ds


@dataclass(frozen=True, kw_only=True)
class RecordData:
    """Patient and study data for the record, taken only from the sealed message body.

    ``patient_name`` is a DICOM person name (``Family^Given^Middle^Prefix^Suffix``).
    ``acquisition_datetime`` must carry a time zone: the record keeps the offset (Timezone
    Offset From UTC, 0008,0201).

    Set ``study_instance_uid`` to file into an existing study (the consent form goes into the
    images' study); leave it ``None`` for a new one. Study Date and Time are ``study_date`` and
    ``study_time`` when given, else the acquisition's. Every instance must carry its study's
    attributes: Orthanc (and other PACS) overwrite a study's date, description and accession
    number with the newest instance's, so filing into a study found in PACS means copying its
    values here (:class:`clients.gateway.pacs.StudyRef`)."""

    patient_name: str
    patient_id: str
    issuer_of_patient_id: str
    birth_date: date | None
    sex: Sex
    accession_number: str
    study_description: str
    acquisition_datetime: datetime
    operator_name: str
    consult_reference: str
    study_instance_uid: str | None = None
    study_date: date | None = None
    study_time: time | None = None
    anatomic_region: CodedConcept | None = None

    def __post_init__(self) -> None:
        _check_person_name("patient_name", self.patient_name, required=True)
        _check_text("patient_id", self.patient_id, 64, required=True)
        _check_text("issuer_of_patient_id", self.issuer_of_patient_id, 64, required=True)
        if self.birth_date is not None and not isinstance(self.birth_date, date):
            raise RecordDataInvalid("birth_date", "must be a date")
        if isinstance(self.birth_date, datetime):
            raise RecordDataInvalid("birth_date", "must be a date, not a date-time")
        if not isinstance(self.sex, Sex):
            try:
                object.__setattr__(self, "sex", Sex(self.sex))
            except ValueError:
                raise RecordDataInvalid("sex", "must be M, F, O or empty") from None
        _check_text("accession_number", self.accession_number, 16)
        _check_text("study_description", self.study_description, 64)
        if not isinstance(self.acquisition_datetime, datetime):
            raise RecordDataInvalid("acquisition_datetime", "must be a datetime")
        if self.acquisition_datetime.utcoffset() is None:
            raise RecordDataInvalid("acquisition_datetime", "must carry a time zone")
        _check_person_name("operator_name", self.operator_name, required=False)
        # Filed as Performed Procedure Step Description "Lightbox consult <ref>" (LO, 64).
        _check_text("consult_reference", self.consult_reference, 40, required=True)
        if self.study_instance_uid is not None:
            _check_uid("study_instance_uid", self.study_instance_uid)
        if self.study_date is not None and (
                not isinstance(self.study_date, date) or isinstance(self.study_date, datetime)):
            raise RecordDataInvalid("study_date", "must be a date")
        if self.study_time is not None and not isinstance(self.study_time, time):
            raise RecordDataInvalid("study_time", "must be a time")
        if self.study_time is not None and self.study_date is None:
            raise RecordDataInvalid("study_time", "needs a study_date")
        if self.anatomic_region is not None and not isinstance(self.anatomic_region, CodedConcept):
            raise RecordDataInvalid("anatomic_region", "must be a CodedConcept")


@dataclass(frozen=True)
class DicomInstance:
    """One Part-10 object ready for STOW-RS, with the UIDs the filing receipt needs."""

    data: bytes = field(repr=False)
    sop_class_uid: str
    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str


# --- builders ------------------------------------------------------------------------------


def build_secondary_capture(
    image: bytes | Image.Image,
    record: RecordData,
    *,
    captured_from: CapturedFrom,
    series_instance_uid: str | None = None,
    instance_number: int = 1,
    uid_root: str | None = None,
    new_uid: UidFactory | None = None,
) -> DicomInstance:
    """A Secondary Capture of a photographed film or monitor (PS3.3 A.8.1), not diagnostic."""
    uid = _uid_factory(uid_root, new_uid)
    frame = _jpeg_frame(image)
    what = "film" if captured_from is CapturedFrom.FILM else "monitor"
    note = NOT_DIAGNOSTIC_NOTE.format(what=what)
    ds = _common(record, SecondaryCaptureImageStorage, uid, series_instance_uid, instance_number)
    ds.Modality = "OT"  # General Series (Type 1); SC Equipment's Modality says the same
    ds.ConversionType = captured_from.value
    ds.SeriesDescription = f"Photo of {what} - not of diagnostic quality"
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.BurnedInAnnotation = "YES"  # a film label or a screen's text is part of the picture
    ds.ImageComments = note
    ds.DerivationDescription = f"Photograph of a {what} with a mobile device; JPEG baseline"
    _image_pixel(ds, frame)
    return _finish(ds)


def build_vl_photographic(
    image: bytes | Image.Image,
    record: RecordData,
    *,
    series_instance_uid: str | None = None,
    instance_number: int = 1,
    recognizable_visual_features: bool = True,
    uid_root: str | None = None,
    new_uid: UidFactory | None = None,
) -> DicomInstance:
    """A clinical photo (VL Photographic Image, PS3.3 A.32.4, modality XC).

    ``recognizable_visual_features`` defaults to True: a clinical photo may show a face, a
    tattoo or a scar, and downstream de-identification must assume it does unless told."""
    uid = _uid_factory(uid_root, new_uid)
    frame = _jpeg_frame(image)
    ds = _common(record, VLPhotographicImageStorage, uid, series_instance_uid, instance_number)
    ds.Modality = "XC"
    ds.SeriesDescription = "Clinical photo"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.BurnedInAnnotation = "NO"
    ds.RecognizableVisualFeatures = "YES" if recognizable_visual_features else "NO"
    ds.AcquisitionContextSequence = DicomSequence([])  # Acquisition Context module, Type 2
    _image_pixel(ds, frame)
    return _finish(ds)


def build_encapsulated_pdf(
    pdf: bytes,
    record: RecordData,
    *,
    study_instance_uid: str | None = None,
    document_title: str = "Patient consent form",
    series_instance_uid: str | None = None,
    instance_number: int = 1,
    uid_root: str | None = None,
    new_uid: UidFactory | None = None,
) -> DicomInstance:
    """A consent form as Encapsulated PDF (PS3.3 A.45.1), concept LOINC 59284-0.

    Pass the images' ``study_instance_uid`` so the form lands in the same study (it overrides
    ``record.study_instance_uid``)."""
    if not isinstance(pdf, bytes | bytearray) or not bytes(pdf).startswith(b"%PDF-"):
        raise DicomBuildError("not a PDF document (no %PDF- header)")
    if len(pdf) > 0xFFFFFFFE:
        raise DicomBuildError("PDF too large for one DICOM element")
    _check_text("document_title", document_title, 64, required=True)
    if study_instance_uid is not None:
        _check_uid("study_instance_uid", study_instance_uid)
        record = replace(record, study_instance_uid=study_instance_uid)
    uid = _uid_factory(uid_root, new_uid)
    ds = _common(record, EncapsulatedPDFStorage, uid, series_instance_uid, instance_number)
    ds.Modality = "DOC"
    ds.ConversionType = "WSD"  # produced on a workstation, not scanned from paper
    ds.SeriesDescription = "Patient consent form"
    ds.BurnedInAnnotation = "YES"  # the form names the patient
    ds.RecognizableVisualFeatures = "NO"
    ds.DocumentTitle = document_title
    code, scheme, meaning = CONSENT_CONCEPT
    ds.ConceptNameCodeSequence = DicomSequence([CodedConcept(code, scheme, meaning).item()])
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    body = bytes(pdf)
    ds.EncapsulatedDocumentLength = len(body)
    # OB values have even length: a single trailing NUL pads an odd PDF (PS3.3 C.24.2.1).
    ds.EncapsulatedDocument = body + b"\x00" if len(body) % 2 else body
    return _finish(ds, transfer_syntax=ExplicitVRLittleEndian)


# --- shared modules ------------------------------------------------------------------------


def _common(
    record: RecordData, sop_class: UID, uid: UidFactory,
    series_instance_uid: str | None, instance_number: int,
) -> Dataset:
    """Patient, General Study, General Series, General Equipment and SOP Common modules."""
    if series_instance_uid is not None:
        _check_uid("series_instance_uid", series_instance_uid)
    if not 1 <= instance_number <= 2**31 - 1:
        raise DicomBuildError("instance_number must be a positive integer")
    acquired = record.acquisition_datetime
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"  # UTF-8: names are not all ASCII
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = uid()
    ds.InstanceCreationDate, ds.InstanceCreationTime = _da(acquired), _tm(acquired)

    ds.PatientName = record.patient_name
    ds.PatientID = record.patient_id
    ds.IssuerOfPatientID = record.issuer_of_patient_id
    ds.PatientBirthDate = "" if record.birth_date is None else record.birth_date.strftime("%Y%m%d")
    ds.PatientSex = record.sex.value

    ds.StudyInstanceUID = record.study_instance_uid or uid()
    if record.study_date is None:
        ds.StudyDate, ds.StudyTime = _da(acquired), _tm(acquired)
    else:
        ds.StudyDate = record.study_date.strftime("%Y%m%d")
        ds.StudyTime = "" if record.study_time is None else record.study_time.strftime("%H%M%S.%f")
    ds.StudyDescription = record.study_description
    ds.AccessionNumber = record.accession_number
    ds.ReferringPhysicianName = ""
    ds.StudyID = ""

    ds.SeriesInstanceUID = series_instance_uid or uid()
    ds.SeriesNumber = 1
    ds.SeriesDate, ds.SeriesTime = _da(acquired), _tm(acquired)
    ds.InstanceNumber = instance_number
    ds.OperatorsName = record.operator_name
    # The consult reference links the record back to the conversation it came from.
    ds.PerformedProcedureStepID = ""
    ds.PerformedProcedureStepDescription = f"Lightbox consult {record.consult_reference}"
    if record.anatomic_region is not None:
        ds.AnatomicRegionSequence = DicomSequence([record.anatomic_region.item()])

    ds.ContentDate, ds.ContentTime = _da(acquired), _tm(acquired)
    ds.AcquisitionDateTime = _dt(acquired)
    ds.TimezoneOffsetFromUTC = _offset(acquired)
    ds.PatientOrientation = ""  # General Image, Type 2C: unknown for a hand-held photo

    ds.Manufacturer = MANUFACTURER
    ds.ManufacturerModelName = MODEL
    ds.SoftwareVersions = SOFTWARE_VERSION
    return ds


def _finish(ds: Dataset, *, transfer_syntax: UID = JPEGBaseline8Bit) -> DicomInstance:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = transfer_syntax
    ds.file_meta = meta
    buf = io.BytesIO()
    dcmwrite(buf, ds, enforce_file_format=True)
    return DicomInstance(
        data=buf.getvalue(),
        sop_class_uid=str(ds.SOPClassUID),
        study_instance_uid=str(ds.StudyInstanceUID),
        series_instance_uid=str(ds.SeriesInstanceUID),
        sop_instance_uid=str(ds.SOPInstanceUID),
        transfer_syntax_uid=str(transfer_syntax),
    )


# --- pixels --------------------------------------------------------------------------------


def _image_pixel(ds: Dataset, frame: JpegFrame) -> None:
    """Image Pixel module for one JPEG Baseline frame, plus the lossy-compression flags."""
    ds.Rows = frame.rows
    ds.Columns = frame.columns
    ds.SamplesPerPixel = frame.components
    if frame.components == 1:
        ds.PhotometricInterpretation = "MONOCHROME2"
    else:
        ds.PhotometricInterpretation = "YBR_FULL_422" if frame.subsampled else "YBR_FULL"
        ds.PlanarConfiguration = 0
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.LossyImageCompression = "01"
    ds.LossyImageCompressionMethod = "ISO_10918_1"
    ds.PixelData = encapsulate([frame.jpeg])
    ds["PixelData"].VR = "OB"


def _jpeg_frame(image: bytes | Image.Image) -> JpegFrame:
    """A JPEG Baseline frame: the input bytes when they already are one, else encoded once."""
    try:
        return _frame_of(image)
    except FrameError as exc:
        raise DicomBuildError(str(exc)) from exc


def _frame_of(image: bytes | Image.Image) -> JpegFrame:
    if isinstance(image, Image.Image):
        return encode_frame(image)
    if not isinstance(image, bytes | bytearray):
        raise DicomBuildError("image must be JPEG bytes or a Pillow image")
    data = bytes(image)
    sof = read_sof(data)
    decoded = _decode(data)  # refuse what a viewer could not show
    if sof is not None and sof.baseline and not has_adobe_transform(data):
        if (decoded.width, decoded.height) != (sof.columns, sof.rows):
            raise DicomBuildError("JPEG frame header disagrees with the decoded size")
        return JpegFrame(data, sof.rows, sof.columns, sof.components, sof.subsampled)
    return encode_frame(decoded)


def _decode(data: bytes) -> Image.Image:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            if img.format != "JPEG":
                raise DicomBuildError(f"expected a JPEG image, got {img.format or 'unknown'}")
            img.load()
    except DicomBuildError:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError,
            Image.DecompressionBombWarning) as exc:
        raise DicomBuildError(f"not a decodable JPEG image ({type(exc).__name__})") from exc
    return img


# --- value checks and formatting -----------------------------------------------------------

_CONTROL = re.compile(r"[\x00-\x1f\x7f\\]")  # no control characters, no value separator


def _check_text(name: str, value: object, max_len: int, *, required: bool = False) -> None:
    if not isinstance(value, str):
        raise RecordDataInvalid(name, "must be text")
    if required and not value.strip():
        raise RecordDataInvalid(name, "is required")
    if len(value) > max_len:
        raise RecordDataInvalid(name, f"longer than {max_len} characters")
    if _CONTROL.search(value):
        raise RecordDataInvalid(name, "contains a control character or a backslash")


def _check_person_name(name: str, value: object, *, required: bool) -> None:
    _check_text(name, value, 5 * 64 + 4, required=required)
    if not isinstance(value, str):  # _check_text refused it already; this narrows the type
        raise RecordDataInvalid(name, "must be text")
    if "=" in value:
        raise RecordDataInvalid(name, "ideographic and phonetic groups are not supported")
    parts = value.split("^")
    if len(parts) > 5 or any(len(p) > 64 for p in parts):
        raise RecordDataInvalid(name, "at most five ^-separated components of 64 characters")
    if required and not parts[0].strip():
        raise RecordDataInvalid(name, "family name is required")


def _check_uid(name: str, value: object) -> None:
    if not isinstance(value, str) or not is_uid(value):
        raise RecordDataInvalid(name, "not a valid DICOM UID")


_UID_RE: Final = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")


def is_uid(value: str) -> bool:
    """PS3.5 §9.1: dotted numeric components without leading zeros, 64 characters at most.
    (pydicom's ``UID(...)`` warns on an invalid value, so check before constructing one.)"""
    return len(value) <= 64 and _UID_RE.fullmatch(value) is not None


def _uid_factory(root: str | None, new_uid: UidFactory | None) -> UidFactory:
    if new_uid is not None:
        return new_uid
    if root is not None:
        if not re.fullmatch(r"[1-9][0-9]*(\.(0|[1-9][0-9]*))*\.", root) or len(root) > 32:
            raise DicomBuildError("uid_root must be a dotted numeric root ending with '.' "
                                  "(32 characters at most)")
        return lambda: str(generate_uid(prefix=root))
    return lambda: str(generate_uid(prefix=None))  # 2.25.<UUID as integer>


def _da(t: datetime) -> str:
    return t.strftime("%Y%m%d")


def _tm(t: datetime) -> str:
    return t.strftime("%H%M%S.%f")


def _offset(t: datetime) -> str:
    off = t.utcoffset() or timedelta(0)
    minutes = int(off.total_seconds() // 60)
    sign = "-" if minutes < 0 else "+"
    return f"{sign}{abs(minutes) // 60:02d}{abs(minutes) % 60:02d}"


def _dt(t: datetime) -> str:
    return t.strftime("%Y%m%d%H%M%S.%f") + _offset(t)
