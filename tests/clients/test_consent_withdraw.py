"""Withdrawing a consent without the SDK, against a real relay: the capturing clinician with
``lightbox consent withdraw`` (and ``consent list`` to find the id), the privacy office with
``lightbox-admin consent show|withdraw`` (the relay's admin API) and ``consent find`` by patient
id through the record's real FHIR server after the record gateway filed the consent. After a
withdrawal the relay refuses sends under it, withdraws undelivered messages, and every copy is
ordered to expire and confirmed destroyed. Bad input: a malformed id, an unknown one, someone
else's consent, one already withdrawn, no reason, no confirmation, no admin credentials."""

from __future__ import annotations

import asyncio
import contextlib
import io
import re
import uuid
from collections.abc import Sequence
from pathlib import Path

import pytest

from clients.admin import cli as admin_cli
from clients.gateway.fhir import FhirClient, FhirSettings
from clients.sdk import imaging
from clients.sdk.consent import register_consent
from clients.sdk.timefmt import format_time
from protocol.consent import peek_consent_token_unverified
from tests.clients.test_filing_journey import journey, record
from tests.clients.test_people import _people
from tests.clients.test_people import world as world  # the same relay world
from tests.clients.test_record_consent import refusal
from tests.clinician_world import run_cli as lightbox
from tests.consent_world import count, xray_png
from tests.fhir_server import FhirServer
from tests.helpers import seconds
from tests.identity_world import World
from tests.orthanc import OrthancServer

CONSENT = re.compile(r"^consent ([0-9a-f-]{36}): agreed", re.M)

# A direct-care image is filed under its patient: the CLI asks for them before it sends
# (docs/USER_GUIDE.md, Interns §3). Made up, as every patient in the tests.
PATIENT = ("--patient-id", "TEST-0042", "--patient-name", "Test^Wrist")


async def lightbox_admin(*argv: str) -> tuple[int, str, str]:
    def call(args: Sequence[str]) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = admin_cli.main(list(args))
        return rc, out.getvalue(), err.getvalue()
    return await asyncio.to_thread(call, argv)


@pytest.fixture
def admin_session(world: World, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """IT's tool logged in to the relay (the session `lightbox-admin login` would cache)."""
    monkeypatch.setenv("LIGHTBOX_ADMIN_HOME", str(tmp_path / "it"))
    monkeypatch.setenv("LIGHTBOX_SERVER", world.relay.base_url)
    monkeypatch.setenv("LIGHTBOX_ADMIN_TOKEN", world.admin_token)


async def _capture_and_send(tmp_path: Path) -> tuple[str, Path, Path]:
    """Ivy captures a consent naming Rita and Ada and sends them the film under it; Rita reads
    it (her copy is stored), Ada has not connected since. Returns (consent id, token, film)."""
    film = tmp_path / "film.png"
    film.write_bytes(xray_png(900, 700))
    token = tmp_path / "consent.jws"
    rc, out, err = await lightbox(
        "--profile", "ivy.intern", "consent", "capture", "--image", str(film), "--purpose",
        "direct_care", "--user", "rita.ray", "--user", "ada.bone", "--decision", "agreed",
        "--statements-shown", "--yes", "--token-out", str(token))
    assert rc == 0, out + err
    found = CONSENT.search(out)
    assert found, out
    rc, out, err = await lightbox(
        "--profile", "ivy.intern", "send", "--to", "user:rita.ray", "--to", "user:ada.bone",
        "--image", str(film), "--send-anyway", "--consent-token", str(token),
        *PATIENT, "Wrist, bed 4")
    assert rc == 0, out + err
    rc, out, err = await lightbox("--profile", "rita.ray", "inbox")
    assert rc == 0 and "Wrist, bed 4" in out and "stored" in out, out + err
    return found.group(1), token, film


async def _orders(world: World, consent_id: str) -> list[tuple[str, bool]]:
    """(device owner login, confirmed) of every consent_revoked expiry order."""
    conn = await world.db()
    try:
        rows = await conn.fetch(
            "SELECT u.login, e.confirmed_at IS NOT NULL AS confirmed FROM expiry_orders e "
            "JOIN devices d USING (device_id) JOIN users u USING (user_id) "
            "WHERE e.reason = 'consent_revoked' AND e.attachment_id IN (SELECT "
            "ma.attachment_id FROM messages m JOIN message_attachments ma USING (message_pk) "
            "WHERE m.consent_id = $1) ORDER BY u.login", uuid.UUID(consent_id))
    finally:
        await conn.close()
    return [(r["login"], r["confirmed"]) for r in rows]


async def _until_confirmed(world: World, consent_id: str) -> None:
    """Each device holding a copy connects (``lightbox inbox``) until every one has confirmed
    destroying it: the relay repeats an order until its device confirms, and a CLI run may
    end before its confirmation went out, so a device not yet confirmed connects again."""
    deadline = asyncio.get_running_loop().time() + seconds(60)
    while pending := [login for login, c in await _orders(world, consent_id) if not c]:
        assert asyncio.get_running_loop().time() < deadline, pending
        for login in pending:
            rc, _, err = await lightbox("--profile", login, "inbox")
            assert rc == 0, err


async def test_a_clinician_withdraws_a_consent_from_the_cli(world: World, tmp_path: Path) -> None:
    await _people(world, tmp_path)
    consent_id, token, film = await _capture_and_send(tmp_path)
    withdraw = ["consent", "withdraw", consent_id, "--reason", "the patient asked", "--yes"]

    rc, out, err = await lightbox("--profile", "ivy.intern", "consent", "list")
    assert rc == 0, err
    assert f"{consent_id}  active: agreed for direct_care, 1 image, captured " in out
    assert "1 consent you captured" in out

    # Bad input first: nothing is withdrawn by any of these.
    rc, _, err = await lightbox("--profile", "ivy.intern", "consent", "withdraw", "not-an-id",
                                "--yes")
    assert rc == 1 and "error: validation_failed: 'not-an-id' is not a consent id" in err
    rc, _, err = await lightbox("--profile", "ivy.intern", "consent", "withdraw", consent_id)
    assert rc == 1 and "error: validation_failed: withdrawing a consent cannot be undone: " \
                       "pass --yes" in err
    unknown = str(uuid.uuid4())
    rc, _, err = await lightbox("--profile", "ivy.intern", "consent", "withdraw", unknown,
                                "--yes")
    assert rc == 1 and f"error: not_found: no consent {unknown} that you captured" in err
    rc, _, err = await lightbox("--profile", "rita.ray", *withdraw)  # a recipient, not issuer
    assert rc == 1 and f"error: forbidden: consent {consent_id} was captured by Dr Ivy " \
                       "Intern: only they or the privacy office can withdraw it" in err
    assert await _orders(world, consent_id) == []

    rc, out, err = await lightbox("--profile", "ivy.intern", *withdraw)
    assert rc == 0, out + err
    assert f"withdrawn: consent {consent_id} at " in out
    assert "messages withdrawn before delivery: 1" in out  # Ada's, never delivered
    assert "copies ordered to expire: 3" in out  # Ivy's, Rita's and Ada's devices
    rc, _, err = await lightbox("--profile", "ivy.intern", *withdraw)
    assert rc == 1 and f"error: consent_revoked: consent {consent_id} was already withdrawn " \
                       "on " in err
    rc, out, _ = await lightbox("--profile", "ivy.intern", "consent", "list")
    assert f"{consent_id}  withdrawn " in out

    # Delivery is refused after: a new send under it, and Ada never gets the first one.
    rc, out, err = await lightbox(
        "--profile", "ivy.intern", "send", "--to", "user:rita.ray", "--image", str(film),
        "--send-anyway", "--consent-token", str(token), *PATIENT, "Again")
    assert rc == 1 and "consent_revoked" in err and "sent:" not in out
    rc, out, err = await lightbox("--profile", "ada.bone", "inbox")
    assert rc == 0 and "0 unread messages" in out, out + err
    # Rita's copy is destroyed when her device next connects, and her inbox says why.
    rc, out, err = await lightbox("--profile", "rita.ray", "inbox")
    assert rc == 0, err
    assert "consent withdrawn " in out and "shredded" in out and "stored" not in out
    await _until_confirmed(world, consent_id)
    assert [login for login, _ in await _orders(world, consent_id)] == [
        "ada.bone", "ivy.intern", "rita.ray"]


async def test_the_privacy_office_withdraws_by_id_and_sees_every_copy(
        world: World, tmp_path: Path, admin_session: None) -> None:
    await _people(world, tmp_path)
    consent_id, _token, _film = await _capture_and_send(tmp_path)

    rc, out, err = await lightbox_admin("consent", "show", consent_id)
    assert rc == 0, err
    assert "captured by Dr Ivy Intern (ivy.intern)" in out and "status: active" in out
    assert "messages sent under it: 1; withdrawn before delivery: 0" in out
    assert out.count("no expiry order") == 3

    # Bad input, each with its exact words; nothing withdrawn.
    rc, _, err = await lightbox_admin("consent", "withdraw", "12345", "--reason", "x", "--yes")
    assert rc == 2 and "error: validation_failed: '12345' is not a consent id" in err
    unknown = str(uuid.uuid4())
    rc, _, err = await lightbox_admin("consent", "withdraw", unknown, "--reason", "x", "--yes")
    assert rc == 2 and f"error: not_found: the relay holds no consent {unknown}" in err
    rc, _, err = await lightbox_admin("consent", "show", unknown)
    assert rc == 2 and f"error: not_found: the relay holds no consent {unknown}" in err
    rc, _, err = await lightbox_admin("consent", "withdraw", consent_id, "--reason", "  ",
                                      "--yes")
    assert rc == 2 and "error: validation_failed: say why the consent is withdrawn" in err
    rc, _, err = await lightbox_admin("consent", "withdraw", consent_id, "--reason", "asked")
    assert rc == 2 and "pass --yes to confirm" in err
    # The admin routes: no credentials, a device's credentials, an empty reason, bad JSON.
    path = f"/v1/admin/consents/{consent_id}/revoke"
    r = await world.http.post(path, json={"reason": "asked"})
    assert (r.status_code, r.json()["code"]) == (401, "unauthenticated")
    r = await world.http.get(f"/v1/admin/consents/{consent_id}",
                             headers={"authorization": "Bearer not-a-token"})
    assert (r.status_code, r.json()["code"]) == (401, "token_invalid")
    r = await world.http.post(path, json={"reason": ""}, headers=world.admin_headers())
    assert (r.status_code, r.json()["code"]) == (422, "validation_failed")
    r = await world.http.post(path, json={"reason": "x" * 501}, headers=world.admin_headers())
    assert (r.status_code, r.json()["code"]) == (422, "validation_failed")
    r = await world.http.post(path, json={"why": "asked"}, headers=world.admin_headers())
    assert (r.status_code, r.json()["code"]) == (422, "validation_failed")
    r = await world.http.post("/v1/admin/consents/nope/revoke", json={"reason": "asked"},
                              headers=world.admin_headers())
    assert (r.status_code, r.json()["code"]) == (404, "not_found")
    assert await _orders(world, consent_id) == []

    rc, out, err = await lightbox_admin("consent", "withdraw", consent_id, "--reason",
                                        "patient phoned the privacy office", "--yes")
    assert rc == 0, out + err
    assert "messages withdrawn before delivery: 1" in out and "copies ordered to expire: 3" in out
    rc, _, err = await lightbox_admin("consent", "withdraw", consent_id, "--reason", "again",
                                      "--yes")
    assert rc == 2 and f"error: consent_revoked: consent {consent_id} was already withdrawn" \
        in err
    rc, out, err = await lightbox("--profile", "ivy.intern", "consent", "withdraw", consent_id,
                                  "--yes")
    assert rc == 1 and "consent_revoked" in err

    rc, out, err = await lightbox_admin("consent", "show", consent_id)
    assert rc == 0, err
    assert "status: WITHDRAWN " in out and "by the privacy office through IT (it-admin)" in out
    assert "reason: patient phoned the privacy office" in out
    assert "withdrawn before delivery: 1" in out and "NOT YET CONFIRMED" in out
    # Devices confirm when they next connect: then the report says so.
    await _until_confirmed(world, consent_id)
    rc, out, err = await lightbox_admin("consent", "show", consent_id)
    assert "every copy confirmed destroyed" in out and out.count("confirmed destroyed 20") == 3
    assert "Dr Rita Ray (rita.ray)'s mobile" in out
    assert await count(world, "SELECT count(*) FROM audit_log WHERE event = 'consent.revoked' "
                              "AND details->>'as' = 'it_admin' AND details->>'reason' = $1",
                       "patient phoned the privacy office") == 1


async def test_the_privacy_office_finds_a_patients_consents_in_the_record(
        world: World, tmp_path: Path, orthanc: OrthancServer, fhir_server: FhirServer,
        admin_session: None, monkeypatch: pytest.MonkeyPatch) -> None:
    token_file = tmp_path / "fhir-token"
    token_file.write_text(fhir_server.token)
    monkeypatch.setenv("LIGHTBOX_FHIR_TOKEN_FILE", str(token_file))
    monkeypatch.delenv("LIGHTBOX_FHIR_USERNAME", raising=False)
    shown = imaging.prepare_image(xray_png(320, 240, seed=41)).image
    mrn = f"LBX-TEST-FIND-{uuid.uuid4().hex[:6]}"
    settings = FhirSettings(url=fhir_server.base_url, token=fhir_server.token)
    async with FhirClient(settings) as fhir, journey(world, tmp_path, orthanc, fhir=fhir) as (
            intern, _ortho, _gw):
        ids, captured = [], []
        for patient in (mrn, mrn, f"{mrn}-OTHER"):  # two consents for the patient, one not
            token, consent_id = refusal(intern.vault.state, shown.data)
            captured.append(peek_consent_token_unverified(token).iat)
            await register_consent(intern.client.relay, token)
            _, filed = await intern.client.file_consent(token, record(patient), wait=60)
            assert filed is not None and filed.documents[1].location
            ids.append(consent_id)

    find = ["consent", "find", "--patient-id", mrn, "--fhir-url", fhir_server.base_url]
    rc, out, err = await lightbox_admin(*find)
    assert rc == 0, err
    assert f"2 consents filed for patient {mrn} in the record" in out
    assert ids[0] in out and ids[1] in out and ids[2] not in out
    # Its capture time written as every time a person reads (clients/sdk/timefmt.py), not
    # the record's ISO 8601 with seconds.
    assert f"{ids[0]}  refused for direct_care, captured {format_time(captured[0])}; relay: " \
        "refused; by Dr Intern (intern)\n" in out, out
    rc, out, err = await lightbox_admin(*find, "--issuer", "another-hospital")
    assert rc == 0 and "0 consents filed" in out

    rc, out, err = await lightbox_admin("consent", "withdraw", ids[0], "--reason",
                                        "patient asked at the front desk", "--yes")
    assert rc == 0, out + err
    rc, out, err = await lightbox_admin(*find)
    assert re.search(rf"^{ids[0]} .*relay: withdrawn 20", out, re.M), out
    assert re.search(rf"^{ids[1]} .*relay: refused", out, re.M), out

    # The FHIR server's credentials are needed, and said so when missing.
    monkeypatch.delenv("LIGHTBOX_FHIR_TOKEN_FILE")
    rc, out, err = await lightbox_admin(*find)
    assert rc == 2 and "error: fhir_unavailable: the FHIR server: FHIR server refused the " \
        "credentials" in err
    rc, out, err = await lightbox_admin("consent", "find", "--patient-id", mrn, "--fhir-url",
                                        "")
    assert rc == 2 and "LIGHTBOX_FHIR_URL is not set" in err


def test_watch_says_when_a_withdrawal_withdrew_a_message_or_deleted_a_copy() -> None:
    """`lightbox watch` prints the relay's withdrawn notices and consent expiry in words."""
    from clients.clinician.reading import describe
    from clients.sdk.client import ExpiredEvent, WithdrawnEvent

    mid, tid, aid = (str(uuid.uuid4()) for _ in range(3))
    client = None  # these lines need nothing from the client
    assert describe(client, WithdrawnEvent(mid, tid, "consent_revoked")) == (  # type: ignore[arg-type]
        f"    message {mid[:8]} withdrawn before delivery (the patient's consent was withdrawn)")
    assert describe(client, ExpiredEvent(aid, tid, None, "consent_revoked")) == (  # type: ignore[arg-type]
        f"    image {aid[:8]} deleted from this device (the patient's consent was withdrawn)")
