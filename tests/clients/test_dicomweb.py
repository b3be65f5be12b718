"""clients/gateway/dicomweb.py, the reading and building of DICOMweb messages, on real answers of
a real Orthanc (``orthanc`` fixture) where an answer comes from a PACS, and on answers built
here where Orthanc cannot be made to give one (a 5xx, an oversize error document).

The patient is fake: Testpatient^Alpha, LBX-TEST-..., issuer LIGHTBOX-TEST.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import date, time

import httpx
import pytest
from pydicom.dataset import Dataset

from clients.gateway import dicomweb as dw
from clients.gateway.dicom import build_vl_photographic
from tests.clients.test_pacs import jpeg, new_patient_id, record
from tests.helpers import seconds
from tests.orthanc import OrthancServer

DICOM_JSON = "application/dicom+json"


@pytest.fixture
async def orthanc_http(orthanc: OrthancServer) -> AsyncIterator[httpx.AsyncClient]:
    auth = httpx.BasicAuth(orthanc.username, orthanc.password)
    async with httpx.AsyncClient(base_url=orthanc.dicomweb_url, auth=auth,
                                 timeout=seconds(10)) as http:
        yield http


def _answer(status: int, body: bytes = b"", content_type: str | None = None) -> httpx.Response:
    headers = {"Content-Type": content_type} if content_type else {}
    return httpx.Response(status, content=body, headers=headers)


async def _stow(http: httpx.AsyncClient, parts: list[bytes]) -> httpx.Response:
    body, content_type = dw.multipart_related(parts)
    return await http.post("/studies", content=body,
                           headers={"Content-Type": content_type, "Accept": DICOM_JSON})


# -- against Orthanc ------------------------------------------------------------------------------


async def test_a_built_multipart_request_is_stored_and_its_answer_read(
        orthanc_http: httpx.AsyncClient) -> None:
    photo = build_vl_photographic(jpeg(), record(new_patient_id()))
    answer = await _stow(orthanc_http, [photo.data])
    dw.raise_for_status(answer)
    result = dw.store_result(answer)
    [stored] = result.stored
    assert (stored.sop_class_uid, stored.sop_instance_uid) == (photo.sop_class_uid,
                                                               photo.sop_instance_uid)
    assert stored.retrieve_url is not None and photo.sop_instance_uid in stored.retrieve_url
    assert result.failed == ()
    assert dw.unacknowledged([photo.data], result) == []


async def test_a_part_that_is_not_dicom_is_named_by_its_place_in_the_rejection(
        orthanc_http: httpx.AsyncClient) -> None:
    photo = build_vl_photographic(jpeg(), record(new_patient_id()))
    answer = await _stow(orthanc_http, [photo.data, b"not a DICOM file"])
    with pytest.raises(dw.PacsRejected) as err:
        dw.raise_for_status(answer)
    assert err.value.status == 400
    result = dw.store_result(answer)
    assert dw.unacknowledged([photo.data, b"not a DICOM file"], result) == [(2, None)]
    reason = dw.rejection_reason([photo.data, b"not a DICOM file"], result, answer)
    assert reason.endswith("part 2 of 2 is not a DICOM Part-10 object")


async def test_a_retrieved_multipart_answer_reads_back_the_stored_object(
        orthanc_http: httpx.AsyncClient) -> None:
    photo = build_vl_photographic(jpeg(), record(new_patient_id()))
    dw.raise_for_status(await _stow(orthanc_http, [photo.data]))
    answer = await orthanc_http.get(
        f"/studies/{dw.checked_uid(photo.study_instance_uid)}/series/{photo.series_instance_uid}"
        f"/instances/{photo.sop_instance_uid}",
        headers={"Accept": 'multipart/related; type="application/dicom"'})
    dw.raise_for_status(answer)
    [part] = dw.multipart_parts(answer)
    assert dw.parse_part(part, "the instance").SOPInstanceUID == photo.sop_instance_uid


async def test_an_unknown_instance_is_not_found(orthanc_http: httpx.AsyncClient) -> None:
    answer = await orthanc_http.get("/studies/1.2.3.999/series/1.2.3.998/instances/1.2.3.997")
    with pytest.raises(dw.PacsNotFound):
        dw.raise_for_status(answer)


async def test_wrong_credentials_are_an_auth_error(orthanc: OrthancServer) -> None:
    async with httpx.AsyncClient(auth=httpx.BasicAuth(orthanc.username, "wrong"),
                                 timeout=seconds(10)) as http:
        answer = await http.get(f"{orthanc.dicomweb_url}/studies")
    with pytest.raises(dw.PacsAuthError, match=r"HTTP 401"):
        dw.raise_for_status(answer)


# -- status mapping and error text ----------------------------------------------------------------


@pytest.mark.parametrize("status", [500, 503, 408, 429])
def test_server_failures_and_throttling_are_retryable(status: int) -> None:
    with pytest.raises(dw.PacsUnavailable) as err:
        dw.raise_for_status(_answer(status))
    assert err.value.retryable


def test_a_refusal_is_not_retryable_and_carries_the_pacs_message() -> None:
    doc = json.dumps({"Message": "Bad request", "Details": "the study UID differs"}).encode()
    with pytest.raises(dw.PacsRejected) as err:
        dw.raise_for_status(_answer(409, doc, "application/json"))
    assert not err.value.retryable
    assert (err.value.status, err.value.reason) == (409, "Bad request: the study UID differs")


def test_the_pacs_message_is_cut_to_300_characters_and_never_the_whole_body() -> None:
    doc = json.dumps({"Message": "x" * 500, "Echo": "Testpatient^Alpha"}).encode()
    message = dw.orthanc_message(_answer(400, doc))
    assert message == "x" * 300
    assert dw.orthanc_message(_answer(400, b"Testpatient^Alpha")) is None


def test_without_a_pacs_message_the_status_line_is_the_reason() -> None:
    with pytest.raises(dw.PacsRejected) as err:
        dw.raise_for_status(_answer(415))
    assert err.value.reason == "HTTP 415 Unsupported Media Type"


def test_a_failed_instance_is_described_by_its_uid_and_failure_reason() -> None:
    failed = dw.FailedInstance
    assert failed(None, "1.2.3", 0x0110).describe() == "1.2.3: processing failure (0110H)"
    assert failed(None, None, 0xFFFF).describe() == "an instance: unknown reason (FFFFH)"
    assert failed(None, "1.2.3", None).describe() == "1.2.3: no failure reason given"


def test_a_rejection_with_nothing_to_say_falls_back_to_the_status_line() -> None:
    assert dw.rejection_reason([], dw.StoreResult((), ()), _answer(400)) == "HTTP 400 Bad Request"


# -- reading answers ------------------------------------------------------------------------------


def test_an_error_document_is_not_read_as_a_store_result() -> None:
    doc = json.dumps({"Message": "Bad file format"}).encode()
    assert dw.store_result(_answer(400, doc)) == dw.StoreResult(stored=(), failed=())
    assert dw.store_result(_answer(400)) == dw.StoreResult(stored=(), failed=())


def test_a_tag_keyed_answer_that_is_not_dicom_json_is_a_protocol_error() -> None:
    with pytest.raises(dw.PacsProtocolError, match="not a DICOM JSON object"):
        dw.store_result(_answer(200, b'{"00081199": {"vr": "SQ", "Value": 7}}', DICOM_JSON))


@pytest.mark.parametrize(("content_type", "body", "error"), [
    ("text/html", b"<html/>", "expected multipart/related, got text/html"),
    ('multipart/related; boundary="b"',
     b"--b\r\nContent-Type: text/plain\r\n\r\nhello\r\n--b--\r\n", "unexpected part type"),
    ('multipart/related; boundary="b"', b"--b\r\nContent-Type: application/dicom\r\n\r\nx",
     "malformed multipart answer"),
])
def test_a_retrieve_answer_that_is_not_multipart_dicom_is_a_protocol_error(
        content_type: str, body: bytes, error: str) -> None:
    with pytest.raises(dw.PacsProtocolError, match=error):
        dw.multipart_parts(_answer(200, body, content_type))


def test_a_single_part_answer_is_the_object_itself() -> None:
    assert dw.multipart_parts(_answer(200, b"DICM", "application/dicom")) == [b"DICM"]


def test_the_boundary_never_occurs_in_a_part_and_parts_read_back_exactly() -> None:
    parts = [b"\r\n--lightbox-" + bytes(range(256)), b"", b"second\r\n"]
    body, content_type = dw.multipart_related(parts)
    assert content_type.startswith('multipart/related; type="application/dicom"; boundary=')
    boundary = content_type.split('boundary="')[1].rstrip('"').encode()
    assert not any(boundary in p for p in parts)
    assert body.count(b"--" + boundary) == len(parts) + 1
    assert dw.multipart_parts(_answer(200, body, content_type)) == parts


def test_a_part_that_is_not_part_10_is_a_protocol_error_naming_it() -> None:
    with pytest.raises(dw.PacsProtocolError, match="the instance is not a readable DICOM Part-10"):
        dw.parse_part(b"not DICOM", "the instance")


def test_a_uid_put_in_a_url_is_digits_and_dots_only() -> None:
    assert dw.checked_uid("1.2.840.10008.5.1.4.1.1.7") == "1.2.840.10008.5.1.4.1.1.7"
    for bad in ("1.2/../3", "1.2.3?x=1", ""):
        with pytest.raises(ValueError, match="not a valid DICOM UID"):
            dw.checked_uid(bad)


def test_data_set_values_read_one_or_many_and_a_person_name_whole() -> None:
    ds = Dataset()
    ds.PatientName = "Testpatient^Alpha"
    ds.ModalitiesInStudy = ["XC", "OT"]
    ds.NumberOfStudyRelatedInstances = "3"
    ds.AccessionNumber = ""
    assert dw.ds_text(ds, "PatientName") == "Testpatient^Alpha"
    assert dw.ds_values(ds, "ModalitiesInStudy") == ["XC", "OT"]
    assert dw.ds_int(ds, "NumberOfStudyRelatedInstances") == 3
    assert dw.ds_values(ds, "AccessionNumber") == [] and dw.ds_text(ds, "StudyID") is None
    ds.StudyID = "not-a-number"
    assert dw.ds_int(ds, "StudyID") is None


@pytest.mark.parametrize(("value", "read"), [
    ("20260229", None), ("20240229", date(2024, 2, 29)), ("2024-02-29", None), ("", None),
    (None, None), ("202402", None),
])
def test_a_da_value_is_a_date_only_when_it_is_a_real_yyyymmdd(value: str | None,
                                                              read: date | None) -> None:
    assert dw.da_date(value) == read


@pytest.mark.parametrize(("value", "read"), [
    ("07", time(7)), ("0705", time(7, 5)), ("070560", time(7, 5, 59)),
    ("070506.25", time(7, 5, 6, 250000)), ("070506.1234567", time(7, 5, 6, 123456)),
    ("2500", None), ("07:05", None), ("070", None), ("070506.x", None), (None, None),
])
def test_a_tm_value_reads_hours_minutes_seconds_and_fraction(value: str | None,
                                                             read: time | None) -> None:
    assert dw.tm_time(value) == read
