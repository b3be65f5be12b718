"""The intern's CLI (clients/clinician/commands.py) against a real relay: `lightbox send` an urgent
x-ray with patient data and consent to a role, `lightbox inbox` on the specialist's profile
shows it with the image stored; and every bad input a user can cause gives one clear sentence
and sends nothing: a non-image, a truncated image, a missing file, quality warnings without
--send-anyway, a wrong password."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.clinician_world import cli_world, enrol_clinician
from tests.clinician_world import run_cli as lightbox
from tests.consent_world import xray_png
from tests.identity_world import World

ORTHO = "orthopaedics_oncall"


world = cli_world  # the relay and the CLI's environment (tests/clinician_world.py)


async def test_an_urgent_xray_sent_from_the_cli_reaches_the_specialists_inbox(
        world: World, tmp_path: Path) -> None:
    home = tmp_path / "home"
    for login, roles in (("intern", ("intern",)), ("ortho", (ORTHO,))):
        person = await enrol_clinician(world, tmp_path, login, roles=roles,
                                       vault_dir=home / login)
        person.vault.lock()
    xray = tmp_path / "film.png"
    xray.write_bytes(xray_png(900, 700))  # short side under 800 px: a resolution warning
    send = ["--profile", "intern", "send", "--to", f"role:{ORTHO}", "--urgent",
            "--image", str(xray), "--patient-name", "Testpatient^Alpha",
            "--patient-id", "LBX-0042", "--birth-date", "1957-03-14", "--region", "wrist",
            "--patient-agreed", "--statements-shown", "--subject", "Wrist, bed 4",
            "Displaced distal radius?"]

    rc, out, err = await lightbox(*send)
    assert rc == 1 and "warning:" in err and "--send-anyway" in err
    rc, out, err = await lightbox(*send, "--send-anyway")
    assert rc == 0, err
    assert "sent: message" in out and "uploading [" in err and "100%" in err

    rc, out, err = await lightbox("--profile", "ortho", "inbox", "--mark-read")
    assert rc == 0, err
    assert "URGENT" in out and "Wrist, bed 4 - Displaced distal radius?" in out
    assert "stored" in out and "1 unread message\n" in out
    assert [line for line in out.splitlines() if line != line.rstrip()] == [], out
    rc, out, _ = await lightbox("--profile", "ortho", "inbox")
    assert "0 unread messages" in out
    rc, out, _ = await lightbox("--profile", "intern", "threads")
    assert rc == 0 and "URGENT" in out and "1 thread\n" in out
    assert "[with role:orthopaedics_oncall]" in out


@pytest.mark.parametrize(("command", "gone"), [("inbox", "devices"), ("threads", "users")])
async def test_a_consult_dropped_while_inbox_or_threads_synced_is_said(
        world: World, tmp_path: Path, command: str, gone: str) -> None:
    """A consult whose sender was revoked (its device) or suspended while it waited is dropped
    by the client as `inbox` or `threads` syncs: the command says so, as `watch` does, and
    does not count it, instead of answering "0 unread messages" alone."""
    home = tmp_path / "home"
    intern = await enrol_clinician(world, tmp_path, "intern", vault_dir=home / "intern")
    ortho = await enrol_clinician(world, tmp_path, "ortho", roles=(ORTHO,),
                                  vault_dir=home / "ortho")
    for person in (intern, ortho):
        person.vault.lock()
    rc, out, err = await lightbox("--profile", "intern", "send", "--to", f"role:{ORTHO}",
                                  "--urgent", "Please call about bed 4.")
    assert rc == 0, err
    (thread,) = re.findall(r"in thread (\S+) \(#1\)", out)
    revoked = {"devices": (await world.device_of(intern.user_id),), "users": (intern.user_id,)}
    r = await world.revoke(world.org, 1, **{gone: revoked[gone]})
    assert r.status_code == 200, r.text

    rc, out, err = await lightbox("--profile", "ortho", command)
    assert rc == 0, err
    said = (r"-- error: an urgent message from Dr Intern, sent \S+ \S+ from a device your "
            r"organisation revoked, was dropped: ask them what it said \(certificate_revoked\)"
            if gone == "devices" else
            r"-- error: an urgent message sent \S+ \S+ was dropped: your organisation has "
            r"suspended its sender's account \(user_suspended\)")
    # with the consult it was in, by the start of its id, as `threads` lists it
    assert re.search("^" + said + f" - consult {thread[:8]}$", out, re.MULTILINE), out
    assert ("0 unread messages\n" if command == "inbox" else "1 thread\n") in out
    if command == "threads":  # listed, with nothing in it: said so, not "no subject yet"
        assert "  (no message on this device yet)  [with role:orthopaedics_oncall" in out, out
    rc, out, _ = await lightbox("--profile", "ortho", command)  # dropped once, said once
    assert rc == 0 and "-- error:" not in out, out


async def test_a_consult_dropped_while_send_ran_is_said_once(world: World,
                                                            tmp_path: Path) -> None:
    """`send` connects, and the relay brings what waits for this device: a consult from a
    colleague whose device was revoked meanwhile is dropped by the client, and said, by the
    command during which that happened (here `send`), or else by the next `inbox`; once."""
    home = tmp_path / "home"
    intern = await enrol_clinician(world, tmp_path, "intern", vault_dir=home / "intern")
    ortho = await enrol_clinician(world, tmp_path, "ortho", roles=(ORTHO,),
                                  vault_dir=home / "ortho")
    cai = await enrol_clinician(world, tmp_path, "cai")
    for person in (intern, ortho):
        person.vault.lock()
    await cai.client.start(wait_connected=10)
    try:
        thread = await cai.client.create_thread(users=[intern.user_id])
        await cai.client.send_text(thread.thread_id, "About bed 9.")
    finally:
        await cai.client.close(drain=0)
    r = await world.revoke(world.org, 1, devices=(await world.device_of(cai.user_id),))
    assert r.status_code == 200, r.text

    rc, sent, err = await lightbox("--profile", "intern", "send", "--to", f"role:{ORTHO}",
                                   "Please call about bed 4.")
    assert rc == 0 and "sent: message" in sent, err
    rc, inbox, err = await lightbox("--profile", "intern", "inbox")
    assert rc == 0, err
    line = re.compile(r"^-- error: a message from Dr Cai, sent \S+ \S+ from a device your "
                      r"organisation revoked, was dropped: ask them what it said "
                      rf"\(certificate_revoked\) - consult {thread.thread_id[:8]}$", re.MULTILINE)
    assert len(line.findall(sent)) + len(line.findall(inbox)) == 1, (sent, inbox)


@pytest.mark.parametrize(("content", "expected"), [
    (b"%PDF-1.4 not a photo", "the image cannot be sent"),
    (xray_png(900, 700)[:5000], "the image cannot be sent"),
    (None, "cannot read"),
])
async def test_bad_image_files_give_a_clear_message_and_send_nothing(
        world: World, tmp_path: Path, content: bytes | None, expected: str) -> None:
    path = tmp_path / "photo.png"
    if content is not None:
        path.write_bytes(content)
    rc, out, err = await lightbox("--profile", "intern", "send", "--to", "role:x",
                                  "--image", str(path), "hello")
    assert rc == 1 and expected in err and "sent:" not in out


async def test_a_wrong_password_is_said_plainly(world: World, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    person = await enrol_clinician(world, tmp_path, "intern", vault_dir=tmp_path / "home" /
                                   "intern")
    person.vault.lock()
    monkeypatch.setenv("LIGHTBOX_PASSWORD", "not the password at all")
    rc, _, err = await lightbox("--profile", "intern", "send", "--to", "role:x", "hi")
    assert rc == 1 and "wrong password" in err


async def test_a_text_for_teaching_is_sent_only_under_a_consent_naming_it(
        world: World, tmp_path: Path) -> None:
    """Outside direct care the relay refuses a message without a consent (consent_missing);
    ``--consent-token`` names the one it is sent under, also for text without an image."""
    home = tmp_path / "home"
    for login, roles in (("intern", ("intern",)), ("tutor", ("teaching_lead",))):
        person = await enrol_clinician(world, tmp_path, login, roles=roles,
                                       vault_dir=home / login)
        person.vault.lock()
    film = tmp_path / "film.png"
    film.write_bytes(xray_png(900, 700))
    token = tmp_path / "consent.jws"
    rc, out, err = await lightbox(
        "--profile", "intern", "consent", "capture", "--image", str(film), "--redact",
        "all-text", "--purpose", "teaching", "--role", "teaching_lead", "--basis", "written",
        "--decision", "agreed", "--statements-shown", "--yes", "--token-out", str(token))
    assert rc == 0, out + err
    send = ["--profile", "intern", "send", "--to", "role:teaching_lead", "--purpose",
            "teaching", "A fracture for Thursday's teaching session."]

    rc, out, err = await lightbox(*send)
    assert rc == 1 and "consent_missing" in err and "sent:" not in out
    rc, out, err = await lightbox(*send, "--consent-token", str(tmp_path / "missing.jws"))
    assert rc == 1 and "cannot read" in err
    (tmp_path / "garbage.jws").write_text("not a token")
    rc, out, err = await lightbox(*send, "--consent-token", str(tmp_path / "garbage.jws"))
    assert rc == 1 and "consent_invalid" in err
    rc, out, err = await lightbox(*send, "--consent-token", str(token))
    assert rc == 0 and "sent: message" in out, out + err
    rc, out, _ = await lightbox("--profile", "tutor", "inbox")
    assert "Thursday's teaching session" in out and "1 unread message\n" in out


async def _team(world: World, tmp_path: Path) -> None:
    home = tmp_path / "home"
    for login, roles in (("intern", ("intern",)), ("ortho", (ORTHO,))):
        person = await enrol_clinician(world, tmp_path, login, roles=roles,
                                       vault_dir=home / login)
        person.vault.lock()


def _unread(threads_out: str) -> int:
    return sum(int(n) for n in re.findall(r"(\d+) unread$", threads_out, re.MULTILINE))


async def test_threads_and_inbox_count_the_same_unread_messages(
        world: World, tmp_path: Path) -> None:
    await _team(world, tmp_path)
    rc, out, err = await lightbox("--profile", "intern", "send", "--to", f"role:{ORTHO}",
                                  "--subject", "Wrist", "Is this a scaphoid fracture?")
    assert rc == 0, err
    thread = re.search(r"in thread (\S+)", out)
    assert thread is not None
    await lightbox("--profile", "intern", "send", "--thread", thread.group(1),
                   "Tender in the snuffbox too.")
    # the specialist answers in the thread, without having read it: that answer is no news
    rc, _, err = await lightbox("--profile", "ortho", "send", "--thread", thread.group(1),
                                "Coming down.")
    assert rc == 0, err
    for profile, expected in (("ortho", 2), ("intern", 1)):
        rc, threads_out, err = await lightbox("--profile", profile, "threads")
        assert rc == 0, err
        rc, inbox_out, err = await lightbox("--profile", profile, "inbox")
        assert rc == 0, err
        assert _unread(threads_out) == expected, (profile, threads_out)
        noun = "message" if expected == 1 else "messages"
        assert f"{expected} unread {noun}\n" in inbox_out, (profile, inbox_out)
    await lightbox("--profile", "ortho", "inbox", "--mark-read")
    rc, threads_out, _ = await lightbox("--profile", "ortho", "threads")
    assert _unread(threads_out) == 0, threads_out


async def test_inbox_names_the_sender_of_a_message_stored_in_an_earlier_run(
        world: World, tmp_path: Path) -> None:
    await _team(world, tmp_path)
    rc, _, err = await lightbox("--profile", "intern", "send", "--to", f"role:{ORTHO}",
                                "Can you see bed 4?")
    assert rc == 0, err
    rc, first, err = await lightbox("--profile", "ortho", "inbox")  # delivered in this run
    assert rc == 0 and "Dr Intern in" in first, first + err
    # the next run holds it already: nothing is delivered, the name still comes from the
    # sender's verified certificate, never an id fragment
    rc, again, err = await lightbox("--profile", "ortho", "inbox")
    assert rc == 0 and "Dr Intern in" in again, again + err


async def test_the_specialist_is_told_the_image_shows_identifiers_sent_unredacted(
        world: World, tmp_path: Path) -> None:
    from tests.clients.test_phi import labelled_film

    await _team(world, tmp_path)
    film = tmp_path / "film.png"
    labelled_film("DOE^JOHN  DOB: 14.03.1957", footer=None).save(film)
    send = ["--profile", "intern", "send", "--to", f"role:{ORTHO}", "--image", str(film),
            "--patient-name", "DOE^JOHN", "--patient-id", "MRN123", "--birth-date",
            "1957-03-14", "--patient-agreed", "--statements-shown", "--send-anyway", "Wrist?"]
    rc, out, err = await lightbox(*send)
    assert rc == 0, err
    assert "the recipient is told that the image shows name, date of birth" in err
    rc, out, err = await lightbox("--profile", "ortho", "inbox", "--mark-read")
    assert rc == 0, err
    assert "this image shows patient identifiers: name, date of birth" in out
    assert "DOE" not in out and "1957" not in out  # kinds only, never the text

    # black the identifiers out: the copy sent shows none, and nothing is said
    rc, out, err = await lightbox(*send, "--redact", "identifiers")
    assert rc == 0, err
    rc, out, err = await lightbox("--profile", "ortho", "inbox")
    assert "1 unread message\n" in out and "patient identifiers" not in out
