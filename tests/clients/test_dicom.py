"""clients/gateway/dicom.py: Part-10 objects built from a JPEG and the sealed record data, read
back with
pydicom. Pure: no network. The patient is obviously fake (LBX-TEST-0042, issuer LIGHTBOX-TEST)."""

from __future__ import annotations

import dataclasses
import io
import itertools
from datetime import date, datetime, time, timedelta, timezone
from typing import Any

import pydicom
import pytest
from PIL import Image
from pydicom.encaps import generate_frames
from pydicom.uid import UID

from clients.gateway.dicom import (
    NOT_DIAGNOSTIC_NOTE,
    CapturedFrom,
    CodedConcept,
    DicomBuildError,
    DicomInstance,
    RecordData,
    RecordDataInvalid,
    Sex,
    build_encapsulated_pdf,
    build_secondary_capture,
    build_vl_photographic,
)

SC = "1.2.840.10008.5.1.4.1.1.7"
VL = "1.2.840.10008.5.1.4.1.1.77.1.4"
PDF = "1.2.840.10008.5.1.4.1.1.104.1"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
TZ = timezone(timedelta(hours=2))


def record(**overrides: object) -> RecordData:
    base: dict[str, object] = dict(
        patient_name="Testpatient^Alpha",
        patient_id="LBX-TEST-0042",
        issuer_of_patient_id="LIGHTBOX-TEST",
        birth_date=date(1901, 1, 1),
        sex=Sex.OTHER,
        accession_number="LBXTEST0001",
        study_description="Lightbox test study",
        acquisition_datetime=datetime(2001, 2, 3, 4, 5, 6, 789000, tzinfo=TZ),
        operator_name="Testdoctor^Beta",
        consult_reference="consult-test-0001",
    )
    base.update(overrides)
    return RecordData(**base)  # type: ignore[arg-type]


def jpeg(size: tuple[int, int] = (96, 64), colour: tuple[int, int, int] = (200, 30, 40), *,
         mode: str = "RGB", **save: object) -> bytes:
    img = Image.new(mode, size, colour if mode == "RGB" else colour[0])
    # A gradient so the frame is not trivially compressible.
    for x in range(0, size[0], 8):
        img.paste((x % 256, 90, 160) if mode == "RGB" else x % 256, (x, 0, x + 4, size[1]))
    out = io.BytesIO()
    img.save(out, format="JPEG", quality=90, **save)
    return out.getvalue()


def read(instance: DicomInstance) -> pydicom.Dataset:
    return pydicom.dcmread(io.BytesIO(instance.data))


def frames(ds: pydicom.Dataset) -> list[bytes]:
    return list(generate_frames(ds.PixelData, number_of_frames=1))


def decoded(ds: pydicom.Dataset) -> Image.Image:
    """The one frame, decoded as a viewer would (numpy is not a dependency, so not
    ``ds.pixel_array``); checks it agrees with the Image Pixel module."""
    (frame,) = frames(ds)
    img = Image.open(io.BytesIO(frame))
    img.load()
    assert (img.height, img.width) == (ds.Rows, ds.Columns)
    assert len(img.getbands()) == ds.SamplesPerPixel
    return img


def test_secondary_capture_of_a_film_round_trips_with_the_record_data() -> None:
    data = jpeg()
    inst = build_secondary_capture(data, record(), captured_from=CapturedFrom.FILM)
    ds = read(inst)
    assert ds.file_meta.TransferSyntaxUID == JPEG_BASELINE
    assert ds.SOPClassUID == SC == inst.sop_class_uid
    assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID == inst.sop_instance_uid
    assert ds.StudyInstanceUID == inst.study_instance_uid
    assert ds.SeriesInstanceUID == inst.series_instance_uid
    assert ds.ConversionType == "DF"
    assert ds.Modality == "OT"
    assert ds.BurnedInAnnotation == "YES"
    assert "not of diagnostic quality" in ds.ImageComments
    assert ds.ImageComments == NOT_DIAGNOSTIC_NOTE.format(what="film")
    assert "not of diagnostic quality" in ds.SeriesDescription
    assert str(ds.PatientName) == "Testpatient^Alpha"
    assert ds.PatientID == "LBX-TEST-0042"
    assert ds.IssuerOfPatientID == "LIGHTBOX-TEST"
    assert ds.PatientBirthDate == "19010101"
    assert ds.PatientSex == "O"
    assert ds.AccessionNumber == "LBXTEST0001"
    assert ds.StudyDescription == "Lightbox test study"
    assert str(ds.OperatorsName) == "Testdoctor^Beta"
    assert ds.AcquisitionDateTime == "20010203040506.789000+0200"
    assert ds.TimezoneOffsetFromUTC == "+0200"
    assert ds.ContentDate == ds.StudyDate == "20010203"
    assert ds.PerformedProcedureStepDescription == "Lightbox consult consult-test-0001"
    assert (ds.Rows, ds.Columns, ds.SamplesPerPixel) == (64, 96, 3)
    assert ds.LossyImageCompression == "01"
    assert "AnatomicRegionSequence" not in ds


def test_secondary_capture_of_a_monitor_is_a_workstation_capture() -> None:
    inst = build_secondary_capture(jpeg(), record(), captured_from=CapturedFrom.MONITOR)
    ds = read(inst)
    assert ds.ConversionType == "WSD"
    assert ds.ImageComments == NOT_DIAGNOSTIC_NOTE.format(what="monitor")


def test_baseline_jpeg_is_encapsulated_byte_for_byte_and_decodes() -> None:
    data = jpeg()
    ds = read(build_vl_photographic(data, record()))
    (frame,) = frames(ds)
    # Even-length padding is allowed after EOI; the JPEG itself is untouched.
    assert frame.rstrip(b"\x00") == data.rstrip(b"\x00")
    assert len(frame) == len(data) + len(data) % 2
    img = decoded(ds)
    assert img.size == (96, 64)
    red, green, blue = img.getpixel((6, 32))  # type: ignore[misc]
    assert red > 150 and green < 90 and blue < 90  # the red background, converted to RGB


def test_vl_photographic_is_xc_with_its_modules() -> None:
    region = CodedConcept("39937001", "SCT", "Skin structure")
    ds = read(build_vl_photographic(jpeg(), record(anatomic_region=region)))
    assert ds.SOPClassUID == VL
    assert ds.Modality == "XC"
    assert list(ds.ImageType) == ["ORIGINAL", "PRIMARY"]
    assert ds.RecognizableVisualFeatures == "YES"
    assert ds.BurnedInAnnotation == "NO"
    assert len(ds.AcquisitionContextSequence) == 0
    (item,) = ds.AnatomicRegionSequence
    assert (item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning) == (
        "39937001", "SCT", "Skin structure")


@pytest.mark.parametrize(("mode", "save", "photometric", "samples"), [
    ("RGB", {"subsampling": 2}, "YBR_FULL_422", 3),  # 4:2:0
    ("RGB", {"subsampling": 1}, "YBR_FULL_422", 3),  # 4:2:2
    ("RGB", {"subsampling": 0}, "YBR_FULL", 3),  # 4:4:4: no chroma subsampling
    ("L", {}, "MONOCHROME2", 1),
])
def test_photometric_interpretation_follows_the_jpeg_frame(
    mode: str, save: dict[str, Any], photometric: str, samples: int,
) -> None:
    data = jpeg(mode=mode, **save)
    ds = read(build_vl_photographic(data, record()))
    assert ds.PhotometricInterpretation == photometric
    assert ds.SamplesPerPixel == samples
    assert frames(ds)[0].rstrip(b"\x00") == data.rstrip(b"\x00")
    assert decoded(ds).size == (96, 64)


def test_progressive_jpeg_is_reencoded_as_baseline() -> None:
    data = jpeg(progressive=True)
    ds = read(build_vl_photographic(data, record()))
    (frame,) = frames(ds)
    assert frame != data
    assert b"\xff\xc0" in frame and b"\xff\xc2" not in frame  # SOF0, no SOF2
    assert decoded(ds).size == (96, 64)


def test_pillow_pixels_are_encoded_once_as_baseline() -> None:
    img = Image.new("RGBA", (40, 30), (10, 200, 10, 255))
    ds = read(build_secondary_capture(img, record(), captured_from=CapturedFrom.FILM))
    assert ds.file_meta.TransferSyntaxUID == JPEG_BASELINE
    assert (ds.Rows, ds.Columns) == (30, 40)
    assert ds.PhotometricInterpretation == "YBR_FULL"
    red, green, _ = decoded(ds).getpixel((20, 15))  # type: ignore[misc]
    assert green > 150 and red < 60


@pytest.mark.parametrize("data", [
    b"",
    b"not an image at all",
    b"\xff\xd8\xff\xe0\x00\x10JFIF",  # truncated JPEG
])
def test_undecodable_images_are_refused(data: bytes) -> None:
    with pytest.raises(DicomBuildError):
        build_vl_photographic(data, record())


def test_a_png_is_not_taken_for_a_jpeg() -> None:
    out = io.BytesIO()
    Image.new("RGB", (8, 8)).save(out, format="PNG")
    with pytest.raises(DicomBuildError, match="expected a JPEG"):
        build_vl_photographic(out.getvalue(), record())


def test_every_build_gets_fresh_valid_uids() -> None:
    a = build_vl_photographic(jpeg(), record())
    b = build_vl_photographic(jpeg(), record())
    uids = {a.study_instance_uid, a.series_instance_uid, a.sop_instance_uid,
            b.study_instance_uid, b.series_instance_uid, b.sop_instance_uid}
    assert len(uids) == 6
    for uid in uids:
        assert UID(uid).is_valid and len(uid) <= 64
        assert uid.startswith("2.25.")  # UUID-derived by default (PS3.5 §B.2)


def test_an_organisation_uid_root_is_used() -> None:
    inst = build_vl_photographic(jpeg(), record(), uid_root="1.2.826.0.1.3680043.10.999.")
    for uid in (inst.study_instance_uid, inst.series_instance_uid, inst.sop_instance_uid):
        assert uid.startswith("1.2.826.0.1.3680043.10.999.")
        assert UID(uid).is_valid


@pytest.mark.parametrize("root", ["1.2.3", "abc.", "1.02.3.", "1." * 20])
def test_a_malformed_uid_root_is_refused(root: str) -> None:
    with pytest.raises(DicomBuildError, match="uid_root"):
        build_vl_photographic(jpeg(), record(), uid_root=root)


def test_injected_uids_make_the_build_deterministic() -> None:
    def factory() -> object:
        counter = itertools.count(1)
        return lambda: f"2.25.{next(counter)}"

    a = build_vl_photographic(jpeg(), record(), new_uid=factory())  # type: ignore[arg-type]
    b = build_vl_photographic(jpeg(), record(), new_uid=factory())  # type: ignore[arg-type]
    assert a == b
    assert a.data == b.data
    assert (a.sop_instance_uid, a.study_instance_uid, a.series_instance_uid) == (
        "2.25.1", "2.25.2", "2.25.3")


def test_an_existing_study_and_series_are_reused() -> None:
    first = build_vl_photographic(jpeg(), record())
    second = build_secondary_capture(
        jpeg(), record(study_instance_uid=first.study_instance_uid),
        captured_from=CapturedFrom.FILM, series_instance_uid="2.25.424242", instance_number=2,
    )
    ds = read(second)
    assert second.study_instance_uid == first.study_instance_uid == ds.StudyInstanceUID
    assert ds.SeriesInstanceUID == "2.25.424242"
    assert ds.InstanceNumber == 2
    assert ds.StudyDate == "20010203"  # the same record: the same study date


def test_filing_into_a_study_found_in_pacs_carries_that_studys_date() -> None:
    rec = record(study_instance_uid="2.25.77", study_date=date(1999, 12, 31),
                 study_time=time(23, 59, 1))
    ds = read(build_vl_photographic(jpeg(), rec))
    assert (ds.StudyInstanceUID, ds.StudyDate, ds.StudyTime) == (
        "2.25.77", "19991231", "235901.000000")
    assert ds.ContentDate == "20010203"  # the photo keeps its own date
    ds = read(build_vl_photographic(jpeg(), record(study_date=date(1999, 12, 31))))
    assert ds.StudyTime == ""


def test_non_ascii_names_are_utf8() -> None:
    ds = read(build_vl_photographic(jpeg(), record(patient_name="Testpatiënt^Ålpha")))
    assert ds.SpecificCharacterSet == "ISO_IR 192"
    assert str(ds.PatientName) == "Testpatiënt^Ålpha"


def test_encapsulated_pdf_joins_the_images_study() -> None:
    image = build_vl_photographic(jpeg(), record())
    pdf = b"%PDF-1.4\n% Lightbox test consent form\n%%EOF"  # odd length on purpose
    assert len(pdf) % 2 == 1
    inst = build_encapsulated_pdf(pdf, record(), study_instance_uid=image.study_instance_uid)
    ds = read(inst)
    assert ds.SOPClassUID == PDF == inst.sop_class_uid
    assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    assert ds.StudyInstanceUID == image.study_instance_uid
    assert ds.SeriesInstanceUID != image.series_instance_uid
    assert ds.Modality == "DOC"
    assert ds.MIMETypeOfEncapsulatedDocument == "application/pdf"
    assert ds.EncapsulatedDocumentLength == len(pdf)
    assert ds.EncapsulatedDocument == pdf + b"\x00"
    assert ds.EncapsulatedDocument[: ds.EncapsulatedDocumentLength] == pdf
    assert ds.DocumentTitle == "Patient consent form"
    (concept,) = ds.ConceptNameCodeSequence
    assert (concept.CodeValue, concept.CodingSchemeDesignator) == ("59284-0", "LN")
    assert ds.PatientID == "LBX-TEST-0042"


@pytest.mark.parametrize("data", [b"", b"GIF89a", b"%PDX-1.4"])
def test_encapsulated_pdf_refuses_what_is_not_a_pdf(data: bytes) -> None:
    with pytest.raises(DicomBuildError, match="not a PDF"):
        build_encapsulated_pdf(data, record())


@pytest.mark.parametrize(("field", "value"), [
    ("patient_name", ""),
    ("patient_name", "A" * 65 + "^B"),
    ("patient_name", "Test\\patient"),
    ("patient_id", "X" * 65),
    ("patient_id", ""),
    ("patient_id", "LBX\nTEST"),
    ("issuer_of_patient_id", ""),
    ("accession_number", "A" * 17),
    ("study_description", "D" * 65),
    ("sex", "X"),
    ("acquisition_datetime", datetime(2001, 2, 3, 4, 5, 6)),  # naive: no time zone
    ("birth_date", datetime(1901, 1, 1, tzinfo=TZ)),
    ("consult_reference", ""),
    ("study_instance_uid", "1.2.abc"),
    ("study_instance_uid", "1." * 40),
    ("study_date", datetime(1999, 1, 1, tzinfo=TZ)),
    ("study_time", time(1, 2)),  # a time without a date
])
def test_record_data_refuses_values_dicom_cannot_hold(field: str, value: object) -> None:
    with pytest.raises(RecordDataInvalid) as err:
        record(**{field: value})
    assert err.value.field_name == field


def test_sex_given_as_text_is_accepted() -> None:
    assert record(sex="F").sex is Sex.FEMALE
    assert read(build_vl_photographic(jpeg(), record(sex="", birth_date=None))).PatientSex == ""


def test_record_data_is_immutable() -> None:
    rec = record()
    with pytest.raises(dataclasses.FrozenInstanceError):
        rec.patient_id = "other"  # type: ignore[misc]
