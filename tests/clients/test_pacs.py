"""clients/gateway/pacs.py against a real Orthanc with its DICOMweb plugin (``orthanc`` fixture).

What Orthanc 1.10.1 + orthanc-dicomweb (Debian 12) does, as these tests pin down:

- STOW-RS of a valid instance: 200, dicom+json with ReferencedSOPSequence and RetrieveURLs.
- the same SOP instance stored again (same patient): 200 again, listed as stored, no warning;
  Orthanc keeps the *first* copy (OverwriteInstances false), so a second, different object with
  the same UIDs is silently dropped and only the read-back notices.
- the same UIDs under another Patient ID: 200, and Orthanc keeps both (its instance id hashes
  the Patient ID); QIDO then finds two, and WADO-RS answers 404 for the UIDs.
- a part that is not DICOM: 400 with an empty FailedSOPSequence, and no Content-Type header.
  Valid parts of the same request are stored anyway (STOW-RS is not atomic).
- an instance whose study differs from the study in the URL: 409, Failure Reason 0110H.
- wrong credentials: 401.

The patient is fake: Testpatient^Alpha, LBX-TEST-..., issuer LIGHTBOX-TEST.
"""

from __future__ import annotations

import asyncio
import io
import secrets
import socket
from collections.abc import AsyncIterator, Iterator
from datetime import date, datetime, time, timedelta, timezone
from pathlib import Path

import httpx
import pydicom
import pytest
from PIL import Image

from clients.gateway.dicom import (
    CapturedFrom,
    RecordData,
    Sex,
    build_encapsulated_pdf,
    build_secondary_capture,
    build_vl_photographic,
)
from clients.gateway.httpio import KEEPALIVE_EXPIRY
from clients.gateway.pacs import (
    PacsAuthError,
    PacsClient,
    PacsConflict,
    PacsError,
    PacsNotFound,
    PacsProtocolError,
    PacsRejected,
    PacsSettings,
    PacsUnavailable,
    PacsVerificationFailed,
    retrying,
)
from tests.helpers import TcpProxy, seconds
from tests.orthanc import OrthancServer

ACQUIRED = datetime(2001, 2, 3, 4, 5, 6, tzinfo=timezone(timedelta(hours=1)))


def new_patient_id() -> str:
    return f"LBX-TEST-0042-{secrets.token_hex(3)}"


def record(patient_id: str = "LBX-TEST-0042", **overrides: object) -> RecordData:
    base: dict[str, object] = dict(
        patient_name="Testpatient^Alpha", patient_id=patient_id,
        issuer_of_patient_id="LIGHTBOX-TEST", birth_date=date(1901, 1, 1), sex=Sex.OTHER,
        accession_number="LBXTEST0001", study_description="Lightbox test study",
        acquisition_datetime=ACQUIRED, operator_name="Testdoctor^Beta",
        consult_reference="consult-test-0001",
    )
    base.update(overrides)
    return RecordData(**base)  # type: ignore[arg-type]


def jpeg(colour: tuple[int, int, int] = (200, 30, 40), size: tuple[int, int] = (320, 240)) -> bytes:
    img = Image.new("RGB", size, colour)
    for x in range(0, size[0], 16):
        img.paste((x % 256, 120, 200), (x, 0, x + 8, size[1]))
    out = io.BytesIO()
    img.save(out, format="JPEG", quality=88)
    return out.getvalue()


def settings(orthanc: OrthancServer, **overrides: object) -> PacsSettings:
    base: dict[str, object] = dict(url=orthanc.dicomweb_url, username=orthanc.username,
                                   password=orthanc.password, timeout=seconds(10))
    base.update(overrides)
    return PacsSettings(**base)  # type: ignore[arg-type]


@pytest.fixture
async def pacs(orthanc: OrthancServer) -> AsyncIterator[PacsClient]:
    async with PacsClient(settings(orthanc)) as client:
        yield client


@pytest.fixture
def restart_orthanc(orthanc: OrthancServer) -> Iterator[OrthancServer]:
    """For tests that stop the shared Orthanc: it is running again afterwards, whatever happens."""
    try:
        yield orthanc
    finally:
        orthanc.start()


def pixel_data(data: bytes) -> bytes:
    return bytes(pydicom.dcmread(io.BytesIO(data)).PixelData)


# --- the journey ---------------------------------------------------------------------------


async def test_sc_and_vl_are_stored_found_retrieved_and_verified(pacs: PacsClient) -> None:
    pid = new_patient_id()
    photo = build_vl_photographic(jpeg(), record(pid))
    film = build_secondary_capture(
        jpeg((30, 30, 30)), record(pid, study_instance_uid=photo.study_instance_uid),
        captured_from=CapturedFrom.FILM,
    )
    result = await pacs.store([photo, film])

    assert {s.sop_instance_uid for s in result.stored} == {photo.sop_instance_uid,
                                                           film.sop_instance_uid}
    assert result.failed == ()
    assert result.study_retrieve_url is not None
    assert result.study_retrieve_url.endswith(f"/dicom-web/studies/{photo.study_instance_uid}")
    for stored in result.stored:
        assert stored.warning_reason is None
        assert stored.retrieve_url is not None and stored.sop_instance_uid in stored.retrieve_url

    for inst in (photo, film):
        ref = await pacs.find_instance(inst.study_instance_uid, inst.series_instance_uid,
                                       inst.sop_instance_uid)
        assert ref is not None
        assert ref.sop_class_uid == inst.sop_class_uid
        assert ref.retrieve_url is not None and ref.retrieve_url.startswith(pacs_root(pacs))

        data = await pacs.retrieve_instance(inst.study_instance_uid, inst.series_instance_uid,
                                            inst.sop_instance_uid)
        assert pixel_data(data) == pixel_data(inst.data)
        got = pydicom.dcmread(io.BytesIO(data))
        assert got.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.50"  # not transcoded
        assert got.PatientID == pid and got.IssuerOfPatientID == "LIGHTBOX-TEST"

        verified = await pacs.verify_stored(inst)
        assert verified == ref

    (study,) = await pacs.find_studies(pid)
    assert study.study_instance_uid == photo.study_instance_uid
    assert study.patient_id == pid
    assert study.issuer_of_patient_id == "LIGHTBOX-TEST"
    assert study.study_date == date(2001, 2, 3)
    assert study.study_time == time(4, 5, 6)
    assert study.study_description == "Lightbox test study"
    assert study.accession_number == "LBXTEST0001"
    assert set(study.modalities) == {"XC", "OT"}
    assert study.number_of_instances == 2


def pacs_root(pacs: PacsClient) -> str:
    return repr(pacs).split("'")[1]


async def test_find_instance_is_none_for_an_unknown_instance(pacs: PacsClient) -> None:
    assert await pacs.find_instance("2.25.1", "2.25.2", "2.25.3") is None


async def test_retrieving_an_unknown_instance_is_not_found(pacs: PacsClient) -> None:
    with pytest.raises(PacsNotFound):
        await pacs.retrieve_instance("2.25.1", "2.25.2", "2.25.3")


async def test_find_studies_filters_by_date_and_issuer(pacs: PacsClient) -> None:
    pid = new_patient_id()
    inst = build_vl_photographic(jpeg(), record(pid))
    await pacs.store([inst])

    (study,) = await pacs.find_studies(pid, study_date=date(2001, 2, 3))
    assert study.study_instance_uid == inst.study_instance_uid
    assert await pacs.find_studies(pid, study_date=date(2001, 2, 4)) == []
    assert await pacs.find_studies(pid, issuer_of_patient_id="OTHER-ISSUER") == []
    assert len(await pacs.find_studies(pid, issuer_of_patient_id="LIGHTBOX-TEST")) == 1
    assert await pacs.find_studies(new_patient_id()) == []


async def test_find_studies_reports_the_patients_whole_name_and_birth_date(
        pacs: PacsClient) -> None:
    """What the wrong-patient check compares (a Person Name is one value, not a list of its
    characters)."""
    pid = new_patient_id()
    rec = record(pid)
    await pacs.store([build_vl_photographic(jpeg(), rec)])
    (study,) = await pacs.find_studies(pid)
    assert study.patient_name == rec.patient_name
    assert study.patient_birth_date == rec.birth_date == date(1901, 1, 1)


async def test_find_studies_matches_a_date_range_inclusively(pacs: PacsClient) -> None:
    pid = new_patient_id()
    inst = build_vl_photographic(jpeg(), record(pid))  # study date 2001-02-03
    await pacs.store([inst])

    for first, last in [(date(2001, 2, 2), date(2001, 2, 4)), (date(2001, 2, 3),) * 2,
                        (date(2001, 2, 1), date(2001, 2, 3))]:
        (study,) = await pacs.find_studies(pid, study_dates=(first, last))
        assert study.study_instance_uid == inst.study_instance_uid
    assert await pacs.find_studies(pid, study_dates=(date(2001, 2, 4), date(2001, 2, 9))) == []


@pytest.mark.parametrize("patient_id", ["", "LBX-TEST-*", "LBX-TEST-004?", "LBX\\TEST"])
async def test_find_studies_refuses_wildcards_that_would_match_other_patients(
    pacs: PacsClient, patient_id: str,
) -> None:
    with pytest.raises(ValueError, match="patient_id"):
        await pacs.find_studies(patient_id)


async def test_encapsulated_pdf_is_filed_in_the_images_study(pacs: PacsClient) -> None:
    pid = new_patient_id()
    photo = build_vl_photographic(jpeg(), record(pid))
    pdf_bytes = b"%PDF-1.4\n% Lightbox test consent form for a fake patient\n%%EOF\n"
    form = build_encapsulated_pdf(pdf_bytes, record(pid),
                                  study_instance_uid=photo.study_instance_uid)
    await pacs.store([photo, form])

    await pacs.verify_stored(form)
    data = await pacs.retrieve_instance(form.study_instance_uid, form.series_instance_uid,
                                        form.sop_instance_uid)
    got = pydicom.dcmread(io.BytesIO(data))
    assert got.SOPClassUID == "1.2.840.10008.5.1.4.1.1.104.1"
    assert got.EncapsulatedDocument[: got.EncapsulatedDocumentLength] == pdf_bytes
    (study,) = await pacs.find_studies(pid)
    assert set(study.modalities) == {"XC", "DOC"}
    assert study.number_of_instances == 2


# --- failures ------------------------------------------------------------------------------


async def test_wrong_credentials_are_an_auth_error(orthanc: OrthancServer) -> None:
    inst = build_vl_photographic(jpeg(), record())
    async with PacsClient(settings(orthanc, password="not-the-password")) as pacs:
        with pytest.raises(PacsAuthError) as err:
            await pacs.store([inst])
        assert not err.value.retryable
        with pytest.raises(PacsAuthError):
            await pacs.find_studies("LBX-TEST-0042")
    async with PacsClient(settings(orthanc, username=None, password=None)) as anonymous:
        with pytest.raises(PacsAuthError):
            await anonymous.find_instance("2.25.1", "2.25.2", "2.25.3")


async def test_a_non_dicom_part_is_rejected_with_a_reason(pacs: PacsClient) -> None:
    with pytest.raises(PacsRejected) as err:
        await pacs.store([b"this is not a DICOM file"])
    assert err.value.status == 400
    assert not err.value.retryable
    assert "part 1 of 1 is not a DICOM Part-10 object" in err.value.reason
    assert err.value.result is not None and err.value.result.stored == ()


async def test_a_partly_rejected_request_says_what_was_stored(pacs: PacsClient) -> None:
    good = build_vl_photographic(jpeg(), record(new_patient_id()))
    with pytest.raises(PacsRejected) as err:
        await pacs.store([good, b"junk"])
    assert err.value.status == 400
    assert "part 2 of 2 is not a DICOM Part-10 object" in err.value.reason
    assert err.value.result is not None
    # Not atomic: Orthanc kept the valid part, and the result says so.
    assert [s.sop_instance_uid for s in err.value.result.stored] == [good.sop_instance_uid]
    await pacs.verify_stored(good)


async def test_an_instance_outside_the_addressed_study_is_a_409_with_failure_reason(
    pacs: PacsClient,
) -> None:
    inst = build_vl_photographic(jpeg(), record(new_patient_id()))
    with pytest.raises(PacsRejected) as err:
        await pacs.store([inst], study_instance_uid="2.25.999999")
    assert err.value.status == 409
    assert f"{inst.sop_instance_uid}: processing failure (0110H)" in err.value.reason
    assert err.value.result is not None
    (failed,) = err.value.result.failed
    assert failed.failure_reason == 0x0110
    assert await pacs.find_instance(inst.study_instance_uid, inst.series_instance_uid,
                                    inst.sop_instance_uid) is None


async def test_orthanc_stopped_is_unavailable_then_retrying_stores_after_restart(
    restart_orthanc: OrthancServer,
) -> None:
    orthanc = restart_orthanc
    before = build_vl_photographic(jpeg(), record(new_patient_id()))
    async with PacsClient(settings(orthanc)) as pacs:
        await pacs.store([before])
        orthanc.stop()

        inst = build_vl_photographic(jpeg((10, 200, 10)), record(new_patient_id()))
        with pytest.raises(PacsUnavailable) as err:
            await pacs.store([inst])
        assert err.value.retryable

        slept: list[float] = []

        async def sleep(delay: float) -> None:
            slept.append(delay)
            if len(slept) == 2:  # the PACS comes back during the second wait
                await asyncio.to_thread(orthanc.start)

        result = await retrying(lambda: pacs.store([inst]), attempts=5, base_delay=0.5,
                                sleep=sleep)
        assert [s.sop_instance_uid for s in result.stored] == [inst.sop_instance_uid]
        assert slept == [0.5, 1.0]
        await pacs.verify_stored(inst)
        await pacs.verify_stored(before)  # same storage after the restart


async def test_a_pacs_that_never_answers_times_out_as_unavailable() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)  # accepts connections into the backlog, never answers
        port = listener.getsockname()[1]
        cfg = PacsSettings(url=f"http://127.0.0.1:{port}/dicom-web", timeout=0.3)
        async with PacsClient(cfg) as pacs:
            with pytest.raises(PacsUnavailable, match="timed out"):
                await pacs.find_studies("LBX-TEST-0042")


async def test_orthanc_closes_an_idle_connection_after_one_second_and_says_so(
        orthanc: OrthancServer) -> None:
    async with httpx.AsyncClient(auth=orthanc.auth) as http:
        r = await http.get(f"{orthanc.base_url}/system")
    assert r.status_code == 200 and r.headers["Keep-Alive"] == "timeout=1"
    assert KEEPALIVE_EXPIRY <= 0.5  # half of it, for the race of RFC 9112 §9.6


async def test_a_connection_is_reused_at_once_but_not_once_idle_past_the_expiry(
        orthanc: OrthancServer) -> None:
    proxy = TcpProxy(orthanc.port)
    async with proxy.running() as base_url, \
            PacsClient(settings(orthanc, url=f"{base_url}/dicom-web")) as pacs:
        await pacs.find_studies("LBX-TEST-0042")
        await pacs.find_studies("LBX-TEST-0042")
        assert proxy.opened == 1  # a burst shares one connection
        await asyncio.sleep(KEEPALIVE_EXPIRY + 0.25)  # still short of Orthanc's second
        await pacs.find_studies("LBX-TEST-0042")
        assert proxy.opened == 2  # never sent as Orthanc may be closing it


# --- duplicates ----------------------------------------------------------------------------


async def test_storing_the_same_instance_twice_succeeds_and_keeps_one_copy(
    pacs: PacsClient, orthanc: OrthancServer,
) -> None:
    inst = build_vl_photographic(jpeg(), record(new_patient_id()))
    first = await pacs.store([inst])
    second = await pacs.store([inst])  # Orthanc: 200 again, no warning reason
    assert first.stored == second.stored
    await pacs.verify_stored(inst)
    async with httpx.AsyncClient(auth=orthanc.auth) as http:
        found = (await http.post(f"{orthanc.base_url}/tools/lookup",
                                 content=inst.sop_instance_uid)).json()
    assert len(found) == 1


async def test_a_different_object_under_the_same_uids_is_dropped_and_verify_catches_it(
    pacs: PacsClient,
) -> None:
    uids = iter([f"2.25.{secrets.randbits(100)}" for _ in range(3)] * 2)
    pid = new_patient_id()
    original = build_vl_photographic(jpeg((200, 30, 40)), record(pid), new_uid=lambda: next(uids))
    impostor = build_vl_photographic(jpeg((20, 30, 240)), record(pid), new_uid=lambda: next(uids))
    assert impostor.sop_instance_uid == original.sop_instance_uid
    assert pixel_data(impostor.data) != pixel_data(original.data)

    await pacs.store([original])
    await pacs.store([impostor])  # 200: Orthanc answers success and keeps the first copy
    await pacs.verify_stored(original)
    with pytest.raises(PacsVerificationFailed, match="PixelData differs"):
        await pacs.verify_stored(impostor)


async def test_the_same_uids_under_two_patients_are_ambiguous(pacs: PacsClient) -> None:
    uids = iter([f"2.25.{secrets.randbits(100)}" for _ in range(3)] * 2)
    a = build_vl_photographic(jpeg(), record(new_patient_id()), new_uid=lambda: next(uids))
    b = build_vl_photographic(jpeg(), record(new_patient_id()), new_uid=lambda: next(uids))
    await pacs.store([a])
    await pacs.store([b])  # 200: Orthanc files a second instance under the other patient
    with pytest.raises(PacsConflict):
        await pacs.find_instance(a.study_instance_uid, a.series_instance_uid, a.sop_instance_uid)
    with pytest.raises(PacsVerificationFailed, match="2 instances"):
        await pacs.verify_stored(a)
    with pytest.raises(PacsNotFound):  # Orthanc's WADO-RS gives up on the ambiguity
        await pacs.retrieve_instance(a.study_instance_uid, a.series_instance_uid,
                                     a.sop_instance_uid)


async def test_a_sop_instance_uid_in_two_series_is_found_twice_and_said_so_on_read_back(
        pacs: PacsClient) -> None:
    """A consult image sent again in another message (its series) keeps its SOP Instance UID:
    Orthanc stores a second instance (200) and then returns neither by WADO-RS. The read-back
    says the PACS holds two, never that the instance is missing, and ``find_instances`` (what
    the gateway asks before storing) finds both."""
    sop = f"2.25.{secrets.randbits(100)}"
    data = record(new_patient_id(), study_instance_uid=f"2.25.{secrets.randbits(100)}")
    first, again = (build_vl_photographic(jpeg(), data, new_uid=lambda: sop,
                                          series_instance_uid=f"2.25.{secrets.randbits(100)}")
                    for _ in range(2))
    assert await pacs.find_instances(sop) == []
    await pacs.store([first])
    await pacs.verify_stored(first)
    assert [r.series_instance_uid for r in await pacs.find_instances(sop)] == \
        [first.series_instance_uid]
    await pacs.store([again])
    assert {r.series_instance_uid for r in await pacs.find_instances(sop)} == \
        {first.series_instance_uid, again.series_instance_uid}
    with pytest.raises(PacsVerificationFailed,
                       match=f"the PACS holds 2 instances with SOP Instance UID {sop}"):
        await pacs.verify_stored(again)


async def test_verify_fails_for_an_instance_never_stored(pacs: PacsClient) -> None:
    inst = build_vl_photographic(jpeg(), record(new_patient_id()))
    with pytest.raises(PacsVerificationFailed, match="does not find"):
        await pacs.verify_stored(inst)


# --- status mapping and limits (a scripted transport stands in for a misbehaving PACS) -----


def scripted(status: int, body: bytes = b"", content_type: str | None = None) -> PacsClient:
    headers = {"Content-Type": content_type} if content_type else {}

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, content=body, headers=headers)

    return PacsClient(PacsSettings(url="http://pacs.invalid/dicom-web"),
                      transport=httpx.MockTransport(handler))


@pytest.mark.parametrize(("status", "error"), [
    (500, PacsUnavailable), (502, PacsUnavailable), (503, PacsUnavailable),
    (408, PacsUnavailable), (429, PacsUnavailable),
    (401, PacsAuthError), (403, PacsAuthError),
    (400, PacsRejected), (409, PacsRejected), (413, PacsRejected), (415, PacsRejected),
])
async def test_store_status_codes_map_to_exceptions(status: int, error: type[PacsError]) -> None:
    inst = build_vl_photographic(jpeg(size=(16, 16)), record())
    async with scripted(status) as pacs:
        with pytest.raises(error) as err:
            await pacs.store([inst])
    assert err.value.retryable is (error is PacsUnavailable)


async def test_an_orthanc_error_document_gives_the_reason() -> None:
    body = b'{"HttpStatus": 415, "Message": "Unsupported media type"}'
    inst = build_vl_photographic(jpeg(size=(16, 16)), record())
    async with scripted(415, body, "application/json") as pacs:
        with pytest.raises(PacsRejected) as err:
            await pacs.store([inst])
    assert "Unsupported media type" in err.value.reason


async def test_a_success_that_does_not_acknowledge_the_instance_is_a_rejection() -> None:
    inst = build_vl_photographic(jpeg(size=(16, 16)), record())
    async with scripted(200, b"{}", "application/dicom+json") as pacs:
        with pytest.raises(PacsRejected, match=r"part 1 of 1 \(.*\) was not stored"):
            await pacs.store([inst])


@pytest.mark.parametrize("body", [b"not json", b'{"a": 1}', b"[1, 2]"])
async def test_a_qido_answer_that_is_not_dicom_json_is_a_protocol_error(body: bytes) -> None:
    async with scripted(200, body, "application/dicom+json") as pacs:
        with pytest.raises(PacsProtocolError):
            await pacs.find_studies("LBX-TEST-0042")


async def test_a_wado_answer_that_is_not_multipart_is_a_protocol_error() -> None:
    async with scripted(200, b"<html></html>", "text/html") as pacs:
        with pytest.raises(PacsProtocolError, match="multipart/related"):
            await pacs.retrieve_instance("2.25.1", "2.25.2", "2.25.3")


async def test_an_answer_over_the_size_limit_is_refused(orthanc: OrthancServer) -> None:
    inst = build_vl_photographic(jpeg(), record(new_patient_id()))
    async with PacsClient(settings(orthanc)) as pacs:
        await pacs.store([inst])
    async with PacsClient(settings(orthanc, max_response_bytes=1024)) as small:
        with pytest.raises(PacsProtocolError, match="size limit"):
            await small.retrieve_instance(inst.study_instance_uid, inst.series_instance_uid,
                                          inst.sop_instance_uid)


@pytest.mark.parametrize("uid", ["1.2.abc", "../../system", "1.2.3/../4"])
async def test_uids_that_are_not_uids_never_reach_a_url(uid: str) -> None:
    async with scripted(200) as pacs:
        with pytest.raises(ValueError, match="not a valid DICOM UID"):
            await pacs.retrieve_instance("2.25.1", uid, "2.25.3")


# --- retrying and settings -----------------------------------------------------------------


async def test_retrying_backs_off_exponentially_and_gives_up() -> None:
    slept: list[float] = []
    calls = 0

    async def sleep(delay: float) -> None:
        slept.append(delay)

    async def down() -> None:
        nonlocal calls
        calls += 1
        raise PacsUnavailable("down")

    with pytest.raises(PacsUnavailable):
        await retrying(down, attempts=5, base_delay=1.0, max_delay=5.0, sleep=sleep)
    assert calls == 5
    assert slept == [1.0, 2.0, 4.0, 5.0]


@pytest.mark.parametrize("error", [PacsRejected("bad", status=400), PacsAuthError("no"),
                                   PacsVerificationFailed("differs"), ValueError("bug")])
async def test_retrying_does_not_retry_what_time_will_not_fix(error: Exception) -> None:
    calls = 0

    async def sleep(delay: float) -> None:
        raise AssertionError("must not sleep")

    async def fails() -> None:
        nonlocal calls
        calls += 1
        raise error

    with pytest.raises(type(error)):
        await retrying(fails, attempts=5, base_delay=1.0, sleep=sleep)
    assert calls == 1


def test_settings_hide_the_password_and_read_the_environment(tmp_path: Path) -> None:
    secret_file = tmp_path / "pacs-password"
    secret_file.write_text("s3cret-from-file\n")
    cfg = PacsSettings.from_env({
        "LIGHTBOX_PACS_URL": "https://pacs.example.invalid/dicom-web",
        "LIGHTBOX_PACS_USERNAME": "gateway",
        "LIGHTBOX_PACS_PASSWORD_FILE": str(secret_file),
        "LIGHTBOX_PACS_TIMEOUT": "12.5",
    })
    assert cfg.password == "s3cret-from-file"
    assert cfg.timeout == 12.5
    assert "s3cret" not in repr(cfg)
    with pytest.raises(ValueError, match="LIGHTBOX_PACS_URL"):
        PacsSettings.from_env({})


@pytest.mark.parametrize("url", ["ftp://pacs.invalid/dicom-web", "pacs.invalid", ""])
def test_a_pacs_url_must_be_http(url: str) -> None:
    with pytest.raises(ValueError, match="http"):
        PacsClient(PacsSettings(url=url))



def test_a_machine_without_orthanc_is_told_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from tests.orthanc import OrthancMissing, require_orthanc

    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(OrthancMissing, match="make system-deps"):
        require_orthanc()
