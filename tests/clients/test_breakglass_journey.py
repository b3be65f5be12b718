"""Break-glass end to end (docs/PROTOCOL.md §17), against a real relay and a real Orthanc: a
registrar sends a photo of a film with ``lightbox send --emergency`` (no consent can be asked:
the patient is unconscious); the specialist receives it marked as break-glass with the sealed
reason, the record gateway files it without a consent form, the relay never holds the reason;
the thread reminds the registrar until ``lightbox break-glass follow-up`` files why no consent
was possible; the privacy office lists, shows, closes and reports it with ``lightbox-admin
breakglass``. Bad declarations are refused on the phone before anything is sent."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pydicom
import pytest

from clients.gateway.pacs import PacsClient, PacsSettings
from clients.sdk.client import ImageEvent, MessageEvent
from protocol.body import BodyKind
from tests.clients.test_consent_withdraw import lightbox_admin as admin
from tests.clients.test_filing_journey import ORTHO, journey, next_event
from tests.clinician_world import enrol_clinician
from tests.clinician_world import run_cli as lightbox
from tests.consent_world import assert_blind, xray_png
from tests.helpers import eventually
from tests.identity_world import PASSWORD, World
from tests.orthanc import OrthancServer

# Attachments in 64 KiB chunks, as the image and filing journeys need.
pytestmark = pytest.mark.world(attachment_chunk_bytes=64 * 1024)

REASON = "Unconscious after a fall, no relative or representative reachable tonight"
PATIENT = ["--patient-name", "Testpatient^Breakglass", "--patient-id", "LBX-BG-0001",
           "--birth-date", "1961-02-03", "--region", "wrist"]


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, world: World) -> Path:
    home = tmp_path / "home"
    monkeypatch.setenv("LIGHTBOX_HOME", str(home))
    monkeypatch.setenv("LIGHTBOX_PASSWORD", PASSWORD)
    monkeypatch.setenv("LIGHTBOX_INSECURE_FAST_KDF", "1")
    monkeypatch.setenv("LIGHTBOX_SERVER", world.relay.base_url)
    monkeypatch.setenv("LIGHTBOX_ADMIN_TOKEN", world.admin_token)
    return home


async def test_an_emergency_photo_reaches_the_specialist_is_filed_reviewed_and_followed_up(
        world: World, tmp_path: Path, orthanc: OrthancServer, home: Path) -> None:
    film = tmp_path / "film.png"
    film.write_bytes(xray_png(1024, 900, seed=41))
    async with journey(world, tmp_path, orthanc) as (_intern, ortho, gw):
        registrar = await enrol_clinician(world, tmp_path, "registrar",
                                          vault_dir=home / "registrar")
        registrar.vault.lock()
        events = ortho.client.subscribe()
        rc, out, err = await lightbox(
            "--profile", "registrar", "send", "--to", f"role:{ORTHO}", "--urgent",
            "--image", str(film), *PATIENT, "--send-anyway", "--emergency", REASON,
            "--emergency-category", "unconscious", "Wrist deformity, please advise")
        assert rc == 0, out + err
        assert "BREAK-GLASS: sent without consent" in out

        # The specialist sees it marked, with the reason, and gets the image.
        got = await next_event(events, MessageEvent, lambda e: bool(e.body.attachments))
        assert got.message.emergency == "unconscious"
        assert got.body.emergency_reason == REASON and got.body.consent_token is None
        aid = got.body.attachments[0].attachment_id
        await next_event(events, ImageEvent,
                         lambda e: e.attachment_id == aid and e.status == "stored")

        # The record gateway files it in PACS, for the right patient, without a consent form.
        async def filed() -> bool:
            return bool(gw.filed)
        await eventually(filed, timeout=20)
        (receipt,) = gw.filed
        assert receipt.attachment_id == aid and receipt.documents == []
        async with PacsClient(PacsSettings(url=orthanc.dicomweb_url, username=orthanc.username,
                                           password=orthanc.password)) as pacs:
            ds = pydicom.dcmread(io.BytesIO(await pacs.retrieve_instance(
                receipt.study_instance_uid, receipt.series_instance_uid,
                receipt.sop_instance_uid)))
        assert ds.PatientID == "LBX-BG-0001"

        # The thread reminds the sender until the follow-up is filed.
        rc, out, err = await lightbox("--profile", "registrar", "threads")
        assert rc == 0, err
        assert "BREAK-GLASS: 1 emergency message(s) sent without consent" in out
        rc, out, err = await lightbox("--profile", "registrar", "break-glass")
        assert rc == 0, err
        case_id = out.split()[0]
        assert "unconscious" in out and "1 emergency message awaits" in out

        # The privacy office's queue.
        rc, out, err = await admin("breakglass", "list")
        assert rc == 0, err
        assert case_id in out and "registrar" in out and "(no follow-up yet)" in out
        rc, out, err = await admin("breakglass", "show", case_id)
        assert rc == 0, err
        assert "unconscious" in out and "1 recipient(s), 1 image(s)" in out
        assert "awaiting the consent" in out

        # A follow-up without a real sentence is refused; then filed, sealed into the thread.
        rc, out, err = await lightbox("--profile", "registrar", "break-glass", "follow-up",
                                      case_id, "--no-consent", "patient_died",
                                      "--reason", "died")
        assert rc == 1 and "validation_failed" in err
        rc, out, err = await lightbox(
            "--profile", "registrar", "break-glass", "follow-up", case_id, "--no-consent",
            "patient_died", "--reason", "The patient died before regaining consciousness")
        assert rc == 0, out + err
        assert "reminder is cleared" in out
        note = await next_event(events, MessageEvent,
                                lambda e: "Break-glass follow-up" in e.body.text)
        assert note.body.kind is BodyKind.TEXT and note.body.reply_to == got.message.message_id
        rc, out, err = await lightbox("--profile", "registrar", "threads")
        assert rc == 0 and "BREAK-GLASS" not in out

        rc, out, err = await admin("breakglass", "close", case_id, "--outcome", "appropriate",
                                   "--note", "reviewed with the ward")
        assert rc == 0, err
        assert "closed" in out and "appropriate" in out and "no consent possible" in out
        rc, out, err = await admin("breakglass", "close", case_id, "--outcome", "appropriate")
        assert rc == 2 and "conflict" in err  # lightbox-admin's failure status
        rc, out, err = await admin("breakglass", "report", "--json")
        assert rc == 0, err
        report = json.loads(out)
        assert (report["total"], report["closed"], report["by_outcome"]) == (
            1, 1, {"appropriate": 1})
        rc, out, err = await admin("breakglass", "show", "3f0c9a2e-0000-4000-8000-000000000000")
        assert rc == 2 and "no break-glass case" in err
        rc, out, err = await admin("breakglass", "report", "--since", "last week")
        assert rc == 2 and "YYYY-MM-DD" in err

    # The reason and the patient stayed sealed; the case id (the relay's) is found.
    await assert_blind(world.dsn, {"reason": b"no relative or representative",
                                   "patient id": b"LBX-BG-0001", "name": b"Breakglass"},
                       controls=(case_id.encode(),))


async def test_a_bad_emergency_declaration_is_refused_on_the_phone_and_nothing_is_sent(
        world: World, tmp_path: Path, home: Path) -> None:
    registrar = await enrol_clinician(world, tmp_path, "registrar",
                                      vault_dir=home / "registrar")
    registrar.vault.lock()
    film = tmp_path / "film.png"
    film.write_bytes(xray_png(1024, 900, seed=42))
    send = ["--profile", "registrar", "send", "--to", f"role:{ORTHO}", "--image", str(film),
            "--send-anyway"]
    rc, _, err = await lightbox(*send, "--emergency", "urgent")
    assert rc == 1 and "validation_failed" in err and "at least 20 characters" in err
    rc, _, err = await lightbox(*send, "--emergency", REASON, "--purpose", "teaching")
    assert rc == 1 and "break_glass_not_allowed" in err and "direct care" in err
    rc, _, err = await lightbox(*send, "--emergency", REASON, "--patient-agreed")
    assert rc == 1 and "break_glass_not_allowed" in err
    rc, _, err = await lightbox("--profile", "registrar", "break-glass", "follow-up")
    assert rc == 1 and "say which case" in err
    conn = await world.db()
    try:
        assert await conn.fetchval("SELECT count(*) FROM messages") == 0
        assert await conn.fetchval("SELECT count(*) FROM break_glass_cases") == 0
    finally:
        await conn.close()
