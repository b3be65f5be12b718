"""`lightbox send` refused, against a real relay: what can be checked on the device is checked
before the consult's thread is made (a file that is not a consent token, a role nobody holds,
a consent a text needs), so a refused send leaves no empty consult in anyone's list; a first
message the relay refuses for good takes its new thread out of every user's list; and a send
the relay could not take is said in one plain sentence naming the command that sends it."""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path

import httpx
import pytest

from clients.clinician.sending import kept_sentence
from clients.sdk.errors import RelayUnavailable
from clients.sdk.failures import describe
from clients.sdk.sending import WILL_RESEND
from clients.sdk.transport import unreachable
from tests.clinician_world import cli_world, enrol_clinician
from tests.clinician_world import run_cli as lightbox
from tests.consent_world import xray_png
from tests.helpers import seconds
from tests.identity_world import World

ORTHO = "orthopaedics_oncall"
CLASS_NAME = re.compile(r"[A-Z][a-z]+(Error|Exception|Timeout)\b")


world = cli_world  # the relay and the CLI's environment (tests/clinician_world.py)


async def _people(world: World, tmp_path: Path,
                  *who: tuple[str, tuple[str, ...]]) -> None:
    for login, roles in who:
        person = await enrol_clinician(world, tmp_path, login, roles=roles,
                                       vault_dir=tmp_path / "home" / login)
        person.vault.lock()


async def _thread_count(profile: str) -> int:
    rc, out, err = await lightbox("--profile", profile, "threads")
    assert rc == 0, out + err
    found = re.search(r"^(\d+|no) threads?$", out, re.M)
    assert found, out
    return 0 if found.group(1) == "no" else int(found.group(1))


def _one_sentence(rc: int, out: str, err: str) -> str:
    assert rc == 1 and "sent:" not in out, out + err
    assert err.count("\n") == 1 and err.startswith("error: "), err
    assert "Traceback" not in err and "unexpected problem" not in err, err
    assert not CLASS_NAME.search(err), err
    return err


async def test_send_with_nothing_to_send_says_the_command_it_wants() -> None:
    err = _one_sentence(*await lightbox("send"))
    assert err == (
        "error: validation_failed: nothing to send: write the message and who it is for, as "
        'in `lightbox send --to role:ROLE "your message"` (--to user:LOGIN for one colleague, '
        "--image FILE sends a photo)\n")
    err = _one_sentence(*await lightbox("send", "--to", "user:Rita Ray", "  "))
    assert err == (
        "error: validation_failed: nothing to send: write the message, as in `lightbox send "
        "--to 'user:Rita Ray' \"your message\"` (--image FILE sends a photo)\n")


async def test_a_file_that_is_not_a_consent_token_is_named_and_no_consult_is_made(
        world: World, tmp_path: Path) -> None:
    await _people(world, tmp_path, ("intern", ("intern",)), ("ortho", (ORTHO,)))
    film = tmp_path / "film.png"
    film.write_bytes(xray_png(900, 700))
    photo = tmp_path / "film.jpg"  # a photo given by mistake: not UTF-8 text
    photo.write_bytes(b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01" + bytes(range(256)) * 8)
    garbage = tmp_path / "notes.txt"
    garbage.write_text("not a token\n")
    for token in (photo, garbage):
        for what in (["--image", str(film), "--send-anyway"], ["--purpose", "teaching"]):
            err = _one_sentence(*await lightbox(
                "--profile", "intern", "send", "--to", f"role:{ORTHO}", *what,
                "--consent-token", str(token), "Wrist?"))
            assert err == (
                f"error: consent_invalid: {token} is not a consent token: give the file "
                "`lightbox consent capture --token-out FILE` wrote when the patient "
                "consented (one line of text starting with eyJ), or capture the consent with "
                "this send (--patient-agreed --statements-shown)\n")
    assert await _thread_count("intern") == 0
    assert await _thread_count("ortho") == 0


async def test_a_role_nobody_holds_is_named_with_the_nearest_one_and_no_consult_is_made(
        world: World, tmp_path: Path) -> None:
    await _people(world, tmp_path, ("intern", ("intern",)), ("ortho", (ORTHO,)))
    err = _one_sentence(*await lightbox("--profile", "intern", "send", "--to",
                                        "role:orthopaedic_oncall", "x"))
    assert err == (
        "error: role_unknown: nobody in your organisation holds the role "
        "'orthopaedic_oncall' (did you mean role:orthopaedics_oncall?): check its spelling "
        "(lightbox lookup WORD lists colleagues with their roles); nothing was sent\n")
    assert await _thread_count("intern") == 0
    rc, out, err = await lightbox("--profile", "intern", "send", "--to", f"role:{ORTHO}", "x")
    assert rc == 0 and "sent: message" in out, out + err
    assert await _thread_count("ortho") == 1


async def test_a_text_outside_direct_care_without_consent_makes_no_consult(
        world: World, tmp_path: Path) -> None:
    await _people(world, tmp_path, ("intern", ("intern",)), ("tutor", ("teaching_lead",)))
    err = _one_sentence(*await lightbox(
        "--profile", "intern", "send", "--to", "role:teaching_lead", "--purpose", "teaching",
        "A fracture for Thursday's teaching session."))
    assert err.startswith("error: consent_missing: a message for teaching needs the "
                          "patient's consent"), err
    assert await _thread_count("intern") == 0
    assert await _thread_count("tutor") == 0


async def test_a_first_message_refused_for_good_takes_its_new_thread_out_of_every_list(
        world: World, tmp_path: Path) -> None:
    """The relay refuses the first message (the consent names the teaching lead, the consult
    goes to someone else): the thread made for it is left by its users, so nobody has an
    empty consult."""
    await _people(world, tmp_path, ("intern", ("intern",)), ("tutor", ("teaching_lead",)),
                  ("bea", ("physician",)))
    film = tmp_path / "film.png"
    film.write_bytes(xray_png(900, 700))
    token = tmp_path / "consent.jws"
    rc, out, err = await lightbox(
        "--profile", "intern", "consent", "capture", "--image", str(film), "--redact",
        "all-text", "--purpose", "teaching", "--role", "teaching_lead", "--basis", "written",
        "--decision", "agreed", "--statements-shown", "--yes", "--token-out", str(token))
    assert rc == 0, out + err
    rc, out, err = await lightbox(
        "--profile", "intern", "send", "--to", "user:bea", "--purpose", "teaching",
        "--consent-token", str(token), "A fracture for Thursday's teaching session.")
    assert rc == 1 and "sent:" not in out and "consent_recipient_out_of_scope" in err, \
        out + err
    assert await _thread_count("intern") == 0
    assert await _thread_count("bea") == 0
    rc, out, err = await lightbox("--profile", "intern", "outbox")
    assert rc == 0 and "0 messages" in out, out + err


def test_a_send_kept_after_the_connection_broke_is_one_plain_sentence() -> None:
    """What the tester met: the relay stopped while the access token was being refreshed
    (httpx's ReadError has no text)."""
    broke = unreachable("POST", "/v1/auth/refresh", httpx.ReadError(""))
    assert str(broke) == "POST /v1/auth/refresh: ReadError"  # for logs only
    kept = RelayUnavailable(f"{broke.reason}: {WILL_RESEND}", reason=broke.reason,
                            kept=WILL_RESEND)
    assert kept_sentence(kept) == (
        "error: cannot reach the relay (the connection broke before it answered), so the "
        "consult is not sent yet: it is kept on this device and goes the next time lightbox "
        "connects to the relay (run `lightbox inbox` to send it; `lightbox outbox` lists it)")
    assert describe(broke, login_hint="") == (
        "error: cannot reach the relay (the connection broke before it answered): check the "
        "network and the server address, then try again")
    for sentence in (kept_sentence(kept), describe(kept, login_hint="")):
        assert sentence is not None and ": :" not in sentence and "(" in sentence
        assert not CLASS_NAME.search(sentence), sentence


async def test_a_send_the_stopped_relay_did_not_take_is_said_plainly(
        world: World, tmp_path: Path) -> None:
    intern = await enrol_clinician(world, tmp_path, "intern")
    ortho = await enrol_clinician(world, tmp_path, "ortho", roles=(ORTHO,))
    await intern.client.start(wait_connected=seconds(10))
    try:
        thread = await intern.client.create_thread(users=[ortho.user_id])
        await asyncio.to_thread(world.relay.stop)
        with pytest.raises(RelayUnavailable) as caught:
            await intern.client.send_text(thread.thread_id, "Bay 2: Weber B?", timeout=5)
    finally:
        await intern.client.close()
    exc = caught.value
    assert exc.kept and len(intern.client.pending_sends()) == 1
    for sentence in (kept_sentence(exc, "the message"), describe(exc, login_hint="")):
        assert sentence is not None and sentence.startswith("error: cannot reach the relay (")
        assert ": :" not in sentence and not CLASS_NAME.search(sentence), sentence
        assert "/v1/" not in sentence, sentence
    assert "`lightbox inbox` to send it" in kept_sentence(exc, "the message")


async def test_an_on_call_role_nobody_holds_between_shifts_is_said_as_it_is(
        world: World, tmp_path: Path) -> None:
    """An on-call role of the organisation with nobody on call now and nobody holding it is no
    misspelling: the refusal says so (no device could be sealed for before its next shift),
    and tells what to do instead; a misspelt role is still named as one."""
    await _people(world, tmp_path, ("intern", ("intern",)), ("dan", ("orthopaedist",)))
    role = "role:orthopaedics-oncall"
    r = await world.http.put(f"/v1/admin/oncall/st-elsewhere/{role}",
                             headers=world.admin_headers(),
                             json={"display_name": "Orthopaedics on call"})
    assert r.status_code == 200, r.text
    starts = int(time.time()) + 3600
    r = await world.http.post(
        f"/v1/admin/oncall/st-elsewhere/{role}/shifts", headers=world.admin_headers(),
        json={"shifts": [{"starts_at": starts, "ends_at": starts + 8 * 3600,
                          "ladder": ["dan"]}]})
    assert r.status_code == 200 and r.json()["results"][0]["ok"], r.text
    err = _one_sentence(*await lightbox("--profile", "intern", "send", "--to", role,
                                        "--subject", "Knee, bed 12", "Hot swollen knee"))
    assert err == (
        "error: nobody_on_call: nobody is on call for the role 'orthopaedics_oncall' now and "
        "nobody else holds it, so a consult to it would reach no one before its next shift: "
        "page the on-call doctor, or send to a colleague by name (--to user:LOGIN); nothing "
        "was sent\n")
    err = _one_sentence(*await lightbox("--profile", "intern", "send", "--to",
                                        "role:orthopaedic_oncall", "x"))
    assert err.startswith("error: role_unknown: nobody in your organisation holds the role "
                          "'orthopaedic_oncall'"), err
    assert await _thread_count("intern") == 0
