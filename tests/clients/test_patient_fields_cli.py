"""The patient fields of ``lightbox send`` checked before anything leaves the device, and an
outbox entry that cannot be read never blocking the device (docs/USER_GUIDE.md "Interns:
sending a consult" §3): the real ``lightbox`` runs as a process of its own against a real
relay, and each refusal is one sentence, exit status 1, with no attachment, message or consent
at the relay."""

from __future__ import annotations

import uuid
from pathlib import Path

import msgspec

from clients.sdk.vault import OutboxImage, OutboxRecord, Vault
from protocol.body import Body, RecordData
from protocol.keys import CHEAP_PROFILE
from tests.clients.test_outbox import lightbox
from tests.clinician_world import cli_world, enrol_clinician, profile_session
from tests.consent_world import count, xray_png
from tests.identity_world import PASSWORD, World

ORTHO = "orthopaedics_oncall"


world = cli_world  # the relay and the CLI's environment (tests/clinician_world.py)


async def _people(world: World, tmp_path: Path) -> str:
    """An intern and the on-call orthopaedic specialist with CLI profiles; the specialist's
    user id."""
    intern = await enrol_clinician(world, tmp_path, "intern", vault_dir=tmp_path / "home" /
                                   "intern")
    ortho = await enrol_clinician(world, tmp_path, "ortho", roles=(ORTHO,),
                                  vault_dir=tmp_path / "home" / "ortho")
    intern.vault.lock()
    ortho.vault.lock()
    return ortho.user_id


async def _film(world: World, tmp_path: Path) -> Path:
    """The intern, the specialist and a photo of a film."""
    await _people(world, tmp_path)
    film = tmp_path / "film.png"
    film.write_bytes(xray_png(900, 700))
    return film


async def _nothing_at_the_relay(world: World) -> None:
    assert await count(world, "SELECT count(*) FROM attachments") == 0
    assert await count(world, "SELECT count(*) FROM messages") == 0


def _refused(rc: int, out: str, err: str) -> str:
    """The one error sentence (after the photo's quality warnings, if any)."""
    assert rc == 1 and "sent:" not in out, out + err
    assert "Traceback" not in err and "unexpected problem" not in err, err
    lines = [line for line in err.splitlines() if not line.startswith("warning: ")]
    assert len(lines) == 1 and err.endswith("\n"), err
    return lines[0]


async def test_malformed_patient_fields_are_refused_before_anything_is_uploaded(
        world: World, tmp_path: Path) -> None:
    film = await _film(world, tmp_path)
    token = tmp_path / "consent.jws"
    rc, out, err = await lightbox(
        "--profile", "intern", "consent", "capture", "--image", str(film), "--purpose",
        "direct_care", "--role", ORTHO, "--decision", "agreed", "--statements-shown", "--yes",
        "--token-out", str(token))
    assert rc == 0, out + err
    send = ["--profile", "intern", "send", "--to", f"role:{ORTHO}", "--image", str(film),
            "--send-anyway", "--consent-token", str(token)]
    birth = ("error: validation_failed: --birth-date must be a date written YYYY-MM-DD (for "
             "example 1957-03-14); nothing was sent")
    for fields, sentence in (
            (["--patient-name", "Doe^Jane", "--patient-id", "MRN123", "--birth-date",
              "14/03/1957"], birth),
            (["--patient-name", "Doe^Jane", "--patient-id", "MRN123", "--birth-date",
              "1957-02-30"], birth),
            (["--patient-name", "Doe^Jane", "--patient-id", "MRN^123"],
             "error: validation_failed: --patient-id must be the record number (MRN): at most "
             "64 characters, without * ? \\ or ^; nothing was sent"),
            (["--patient-name", "Doe\\Jane", "--patient-id", "MRN123"],
             "error: validation_failed: --patient-name must be the patient's name written "
             "FAMILY^GIVEN (for example Doe^Jane): one line, at most 200 characters, without "
             "\\; nothing was sent"),
    ):
        assert _refused(*await lightbox(*send, *fields, "Displaced distal radius?")) == \
            sentence, fields
    # correct-patient checks the same fields, with the same sentence.
    assert _refused(*await lightbox(
        "--profile", "intern", "correct-patient", str(uuid.uuid4()), str(uuid.uuid4()),
        "--patient-id", "MRN123", "--birth-date", "14/03/1957")) == birth
    await _nothing_at_the_relay(world)
    rc, out, err = await lightbox("--profile", "intern", "outbox")
    assert rc == 0 and out.endswith("0 messages waiting to be sent\n"), out + err
    rc, out, err = await lightbox("--profile", "intern", "threads")
    assert rc == 0 and "0 threads" in out, out + err


async def test_an_image_to_be_filed_needs_the_patients_id_and_name(
        world: World, tmp_path: Path) -> None:
    film = await _film(world, tmp_path)
    send = ["--profile", "intern", "send", "--to", f"role:{ORTHO}", "--image", str(film),
            "--send-anyway", "--patient-agreed", "--statements-shown"]
    assert _refused(*await lightbox(*send, "--birth-date", "1957-03-14", "hi")) == (
        "error: validation_failed: patient data needs the patient's --patient-id and "
        "--patient-name (the MRN and FAMILY^GIVEN) as well, to be filed under the right "
        "patient; nothing was sent")
    assert _refused(*await lightbox(*send, "--patient-id", "MRN123", "hi")) == (
        "error: validation_failed: patient data needs the patient's --patient-name (the MRN "
        "and FAMILY^GIVEN) as well, to be filed under the right patient; nothing was sent")
    assert _refused(*await lightbox(*send, "hi")) == (
        "error: validation_failed: an image for direct_care is filed in the patient's "
        "record: give the patient's --patient-id MRN and --patient-name FAMILY^GIVEN; nothing "
        "was sent")
    # Patient data without an image: said, and nothing goes.
    assert _refused(*await lightbox(
        "--profile", "intern", "send", "--to", f"role:{ORTHO}", "--patient-id", "MRN123",
        "--patient-name", "Doe^Jane", "hi")) == (
        "error: validation_failed: patient data goes with an image (--image FILE); nothing was "
        "sent")
    await _nothing_at_the_relay(world)
    assert await count(world, "SELECT count(*) FROM consents") == 0


async def test_an_outbox_entry_that_cannot_be_read_is_named_kept_out_of_the_way_and_dropped(
        world: World, tmp_path: Path) -> None:
    """What an older client left: a consult whose sealed record holds a birth date the body
    schema refuses, its image not uploaded yet."""
    ortho_id = await _people(world, tmp_path)
    rc, out, err = await lightbox("--profile", "intern", "send", "--to", "user:ortho", "first")
    assert rc == 0 and "sent: message" in out, out + err
    thread_id = out.split(" in thread ")[1].split()[0]
    poisoned = OutboxRecord(
        message_id=str(uuid.uuid4()), thread_id=thread_id, created_at=1.0,
        purpose="direct_care", priority="routine", stage="upload",
        body=msgspec.msgpack.encode(Body(text="Wrist?", record=RecordData(
            patient_name="Doe^Jane", patient_id="MRN123", birth_date="14/03/1957"))),
        image=OutboxImage(data=b"x" * 64, media_type="image/png", key=bytes(32),
                          sha256=bytes(32), size=64, ciphertext=b"y" * 80))
    vault = Vault(tmp_path / "home" / "intern", kdf=CHEAP_PROFILE)
    vault.unlock(PASSWORD)
    try:
        vault.put_outbox(poisoned)
    finally:
        vault.lock()
    mid = poisoned.message_id
    sentence = (f"-- message {mid} in the outbox cannot be read or sealed (the field "
                "record.birth_date is not valid), so it is not sent: remove it with "
                f"`lightbox outbox --drop {mid}` and send it again")
    for argv in (["inbox"], ["threads"], ["watch", "--timeout", "3"]):
        rc, out, err = await lightbox("--profile", "intern", *argv)
        assert rc == 0, (argv, out, err)
        assert "Traceback" not in out + err and "never retrieved" not in err, (argv, err)
        assert sentence in (out + err).splitlines(), (argv, out, err)
    rc, out, err = await lightbox("--profile", "intern", "send", "--to", "user:ortho", "again")
    assert rc == 0 and "sent: message" in out, out + err
    assert "Traceback" not in err and "never retrieved" not in err, err
    rc, out, err = await lightbox("--profile", "intern", "outbox")
    assert rc == 0 and "(cannot be read or sealed: the field record.birth_date is not valid; " \
        "lightbox outbox --drop ID removes it)" in out and "1 message waiting" in out, out + err
    assert await count(world, "SELECT count(*) FROM attachments") == 0
    rc, out, err = await lightbox("--profile", "intern", "outbox", "--drop", mid)
    assert rc == 0 and out.startswith(f"removed message {mid} (with an image, kept since "), \
        out + err
    assert out.rstrip().endswith(f"for thread {thread_id}) from the outbox: it was not sent "
                                 "and will not be"), out
    rc, out, err = await lightbox("--profile", "intern", "outbox")
    assert rc == 0 and out == "0 messages waiting to be sent\n", out + err
    assert _refused(*await lightbox("--profile", "intern", "outbox", "--drop", mid)) == (
        f"error: not_found: no message {mid} is waiting in the outbox (lightbox outbox lists "
        "them)")
    rc, out, err = await lightbox("--profile", "intern", "inbox")
    assert rc == 0 and "Traceback" not in err and "cannot be read" not in err, out + err
    assert ortho_id and await count(world, "SELECT count(*) FROM messages") == 2


async def test_consent_capture_refuses_a_role_nobody_holds_before_signing(
        world: World, tmp_path: Path) -> None:
    film = await _film(world, tmp_path)
    token = tmp_path / "consent.jws"
    capture = ["--profile", "intern", "consent", "capture", "--image", str(film), "--purpose",
               "direct_care", "--decision", "agreed", "--statements-shown", "--yes",
               "--token-out", str(token)]
    assert _refused(*await lightbox(*capture, "--role", "orthopaedic_oncall")) == (
        "error: role_unknown: nobody in your organisation holds the role "
        "'orthopaedic_oncall' (did you mean role:orthopaedics_oncall?): check its spelling "
        "(lightbox lookup WORD lists colleagues with their roles); no consent was recorded")
    assert not token.exists()
    assert await count(world, "SELECT count(*) FROM consents") == 0
    rc, out, err = await lightbox(*capture, "--role", ORTHO)
    assert rc == 0 and token.exists(), out + err
    assert await count(world, "SELECT count(*) FROM consents") == 1


async def test_logout_ends_the_session_at_the_relay_and_forgets_its_tokens(
        world: World, tmp_path: Path) -> None:
    intern = await enrol_clinician(world, tmp_path, "intern", vault_dir=tmp_path / "home" /
                                   "intern")
    await intern.client.ensure_login()
    await intern.client.close()
    session = intern.vault.state.session
    assert session is not None
    device_id = intern.vault.state.device_id
    intern.vault.lock()
    rc, out, err = await lightbox("--profile", "intern", "logout")
    assert rc == 0 and not err, out + err
    assert out == (f"logged out: the relay ended the session of intern on device {device_id} "
                   "and this device forgot its tokens; `lightbox login` signs in again\n")
    r = await world.http.post("/v1/auth/refresh", json={"refresh_token": session.refresh_token})
    assert r.status_code == 401, r.text
    assert profile_session(tmp_path / "home", "intern") is None
    rc, out, err = await lightbox("--profile", "intern", "logout")
    assert rc == 0 and out == (f"not logged in: intern on device {device_id} holds no "
                               "session; `lightbox login` signs in again\n"), out + err
