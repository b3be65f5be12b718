"""clients/gateway/checks.py: the record gateway's consent check (on a real relay, ``world``)
and its search for the original studies a photo of a film may stand for (on a real Orthanc,
``orthanc``). The consent is checked as of when it was issued and in the gateway's
organisation; the search leaves out the photo's own study, studies of photos and documents
only, and studies outside the window, newest first, four at most. Fake patients only:
LBX-TEST-...."""

from __future__ import annotations

import dataclasses
import datetime as dt
import io
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pydicom
import pytest

from clients.gateway.checks import CLOCK_SKEW, original_link, original_studies, verified_consent
from clients.gateway.errors import FilingFailed
from clients.gateway.pacs import PacsClient, PacsSettings, StudyRef
from clients.sdk.consent import ConsentCapture, capture_consent, image_hash
from clients.sdk.keystore import DeviceState
from protocol import certs
from protocol.body import CaptureKind, RecordData
from protocol.consent import ConsentBasis, ConsentDecision
from protocol.model import MessageHeader, Priority, Purpose
from tests.clinician_world import Clinician, enrol_clinician
from tests.helpers import seconds
from tests.identity_world import World
from tests.orthanc import OrthancServer, original_study

DAY = 86400


# -- the consent ----------------------------------------------------------------------------------


@pytest.fixture
async def intern(world: World, tmp_path: Path) -> AsyncIterator[Clinician]:
    c = await enrol_clinician(world, tmp_path, "intern")
    await c.client.ensure_login()
    yield c
    await c.client.relay.aclose()


def _token(state: DeviceState, iat: int) -> tuple[str, int]:
    token, claims = capture_consent(state, ConsentCapture(
        purposes=[Purpose.DIRECT_CARE], images=[image_hash(b"film")],
        decision=ConsentDecision.AGREED, basis=ConsentBasis.TREATMENT_ATTESTATION,
        permanence_statement_shown=True, no_effect_on_care_statement_shown=True,
        valid_for=DAY), now=iat)
    return token, claims.iat


async def _verify(intern: Clinician, token: str, *, now: int) -> str:
    state = intern.vault.state
    sender = certs.verify_chain(state.user_certificate, state.device_certificate,
                                trusted_orgs=state.trusted_orgs(), at=now,
                                revocations=None)
    claims = await verified_consent(token, sender, state.user_certificate,
                                    relay=intern.client.relay, state=state, now=now)
    return claims.jti


async def _refused(intern: Clinician, token: str, *, now: int) -> FilingFailed:
    with pytest.raises(FilingFailed) as err:
        await _verify(intern, token, now=now)
    return err.value


async def test_a_consent_is_checked_as_of_its_issue_and_kept_as_evidence_after_it_expires(
        intern: Clinician) -> None:
    iat = int(dt.datetime.now(dt.UTC).timestamp()) - 3 * DAY  # its day of validity is over
    token, _ = _token(intern.vault.state, iat)
    assert await _verify(intern, token, now=iat + 3 * DAY)


async def test_a_consent_issued_beyond_the_clock_skew_in_the_future_is_refused(
        intern: Clinician) -> None:
    now = int(dt.datetime.now(dt.UTC).timestamp())
    assert await _verify(intern, _token(intern.vault.state, now + CLOCK_SKEW)[0], now=now)
    err = await _refused(intern, _token(intern.vault.state, now + CLOCK_SKEW + 1)[0], now=now)
    assert (err.code, str(err)) == ("consent_from_the_future",
                                    "the consent claims to be issued in the future")


async def test_a_consent_claiming_another_organisation_is_refused(intern: Clinician) -> None:
    now = int(dt.datetime.now(dt.UTC).timestamp())
    elsewhere = msgspec.structs.replace(intern.vault.state, org_id="st-other")
    err = await _refused(intern, _token(elsewhere, now)[0], now=now)
    assert (err.code, str(err)) == ("consent_other_org",
                                    "the consent was issued by someone outside this organisation")


async def test_a_consent_signed_with_another_key_is_refused(intern: Clinician,
                                                             world: World) -> None:
    now = int(dt.datetime.now(dt.UTC).timestamp())
    other = world.org.user("forger")
    forged = msgspec.structs.replace(intern.vault.state,
                                     identity_seed=other.identity.seed.reveal())
    err = await _refused(intern, _token(forged, now)[0], now=now)
    assert (err.code, str(err)) == ("consent_invalid", "the consent does not verify")


async def test_a_consent_by_an_issuer_the_directory_does_not_know_is_refused(
        intern: Clinician) -> None:
    now = int(dt.datetime.now(dt.UTC).timestamp())
    stranger = msgspec.structs.replace(intern.vault.state, user_id=str(uuid.uuid4()))
    err = await _refused(intern, _token(stranger, now)[0], now=now)
    assert err.code == "consent_invalid"


# -- the original studies -------------------------------------------------------------------------


def _header(sent: dt.date) -> MessageHeader:
    return MessageHeader(
        v=1, message_id=str(uuid.uuid4()), thread_id=str(uuid.uuid4()),
        sender_user_id=str(uuid.uuid4()), sender_device_id=str(uuid.uuid4()),
        sent_at=int(dt.datetime.combine(sent, dt.time(12), dt.UTC).timestamp()),
        purpose=Purpose.DIRECT_CARE, priority=Priority.URGENT, consent_id=None,
        attachment_ids=[], recipient_devices=[])


def _study_uid(obj: bytes) -> str:
    return str(pydicom.dcmread(io.BytesIO(obj)).StudyInstanceUID)


@pytest.fixture
async def pacs(orthanc: OrthancServer) -> AsyncIterator[PacsClient]:
    async with PacsClient(PacsSettings(url=orthanc.dicomweb_url, username=orthanc.username,
                                       password=orthanc.password, timeout=seconds(10))) as p:
        yield p


async def test_a_film_photo_links_the_newest_acquisitions_in_the_window_only(
        pacs: PacsClient) -> None:
    today = dt.date(2026, 6, 15)
    pid, issuer = f"LBX-TEST-{uuid.uuid4().hex[:8]}", "LIGHTBOX-TEST"
    days = [original_study(pid, issuer, today - dt.timedelta(days=n)) for n in range(6)]
    photos = original_study(pid, issuer, today, modality="XC", description="photos")
    own = original_study(pid, issuer, today, description="the photo's own study")
    too_old = original_study(pid, issuer, today - dt.timedelta(days=30))
    await pacs.store([*days, photos, own, too_old])
    record = RecordData(patient_name="Testpatient^Alpha", patient_id=pid,
                        issuer_of_patient_id=issuer)
    found, searched = await original_studies(pacs, record, _header(today), _study_uid(own),
                                             lookback_days=14, viewer_url=None)
    assert searched == "found"
    assert [f.study_instance_uid for f in found] == [_study_uid(d) for d in days[:4]]
    assert found[0].study_date == today.isoformat() and found[0].modalities == ["CR"]
    assert found[0].url.startswith("http://127.0.0.1:")  # the PACS's own retrieve URL

    clinical = msgspec.structs.replace(record, capture=CaptureKind.CLINICAL)
    assert await original_studies(pacs, clinical, _header(today), _study_uid(own),
                                  lookback_days=14, viewer_url=None) == ([], "")
    # the same patient a month before the window: searched, and none found
    assert await original_studies(pacs, record, _header(today - dt.timedelta(days=60)),
                                  _study_uid(own), lookback_days=14,
                                  viewer_url=None) == ([], "none")


async def test_a_failed_search_only_means_no_link_and_the_receipt_says_it_failed() -> None:
    async with PacsClient(PacsSettings(url="http://127.0.0.1:9/dicom-web",
                                       timeout=seconds(5))) as unreachable:
        record = RecordData(patient_name="Testpatient^Alpha", patient_id="LBX-TEST-0042")
        assert await original_studies(unreachable, record, _header(dt.date(2026, 6, 15)),
                                      "1.2.3", lookback_days=14,
                                      viewer_url=None) == ([], "failed")


def _ref(**changes: Any) -> StudyRef:
    base = StudyRef(study_instance_uid="1.2.3", patient_id="LBX-TEST-0042",
                    issuer_of_patient_id=None, study_date=dt.date(2026, 6, 15), study_time=None,
                    study_description="XR WRIST", accession_number=None, modalities=("CR",),
                    number_of_instances=1, retrieve_url="https://pacs.test/studies/1.2.3")
    return dataclasses.replace(base, **changes)


def test_the_viewer_link_names_the_study_and_only_http_links_are_kept() -> None:
    viewer = "https://viewer.test/?study={study_instance_uid}"
    assert original_link(_ref(), viewer).url == "https://viewer.test/?study=1.2.3"
    assert original_link(_ref(), None).url == "https://pacs.test/studies/1.2.3"
    for bad in ("javascript:alert(1)", "https://pacs.test/a b", "https://p.test/" + "a" * 1024,
                None):
        assert original_link(_ref(retrieve_url=bad), None).url == ""


def test_odd_modalities_and_long_descriptions_are_trimmed() -> None:
    link = original_link(_ref(modalities=("CR", "<b>", *["DX"] * 20),
                              study_description="d" * 100, study_date=None), None)
    assert link.modalities == ["CR", *["DX"] * 15]
    assert link.description == "d" * 64 and link.study_date is None
