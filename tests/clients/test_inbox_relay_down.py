"""``lightbox inbox`` and ``lightbox threads`` while the relay is down (docs/USER_GUIDE.md
"Interns: sending a consult", §4 "Follow it"), against a real relay that is stopped and started
again on its port, with the real ``lightbox`` run to its end.

An intern's consult with an image, and the specialist's reply, are on their devices when the
relay goes down: each command shows what its device holds (the consult, its image, the reply,
names as the device learnt them, what waits in its outbox) under one line saying that the relay
cannot be reached and that newer states may be at the relay, with exit status 1; nothing is
changed on the device because of the outage. A session that lapsed meanwhile asks for the
password once, to open the vault, and nothing more. Once the relay answers again, both
commands are as before.
"""

from __future__ import annotations

import asyncio
import os
import select
import subprocess
import sys
import time
import uuid
from pathlib import Path

import msgspec
import pytest

from clients.sdk.connection import Connection
from clients.sdk.threads import THREAD_NOTE
from clients.sdk.vault import OutboxRecord, Vault
from protocol.body import Body
from protocol.keys import CHEAP_PROFILE
from tests.clients.test_patient_fields_cli import ORTHO, _film
from tests.clinician_world import cli_world, relay_back
from tests.clinician_world import run_cli as lightbox
from tests.helpers import ROOT, seconds
from tests.identity_world import PASSWORD, World

world = cli_world  # the relay and the CLI's environment (tests/clinician_world.py)

CONSULT = "Displaced distal radius fracture?"
SUBJECT = "Wrist, bed 4"
REPLY = "Reduce and cast tonight; I will see her in clinic at 8"
KEPT = "Bed 4: cast on, pulses fine"


def heading(command: str, reason: str = "no connection could be made") -> str:
    """The line ``inbox`` and ``threads`` start with, on stderr, while the relay is out of
    reach."""
    return (f"error: cannot reach the relay ({reason}): what follows is what "
            "this device holds now; delivery states, acknowledgements by colleagues, consent "
            f"changes and expiry orders may be newer at the relay (run `lightbox {command}` "
            "again once it answers)")


async def _consult_and_reply(world: World, tmp_path: Path) -> str:
    """The intern's urgent consult with a photo to the on-call role, and the specialist's
    reply, each received by the other's ``inbox``; the thread's id."""
    film = await _film(world, tmp_path)  # the intern, the specialist, a photo of a film
    rc, out, err = await lightbox(
        "--profile", "intern", "send", "--to", f"role:{ORTHO}", "--image", str(film),
        "--send-anyway", "--patient-agreed", "--statements-shown", "--urgent",
        "--patient-name", "Doe^Jane", "--patient-id", "MRN123", "--subject", SUBJECT, CONSULT)
    assert rc == 0 and "sent: message" in out, out + err
    thread_id = out.split(" in thread ")[1].split()[0]
    rc, out, err = await lightbox("--profile", "ortho", "inbox")
    assert rc == 0 and CONSULT in out, out + err
    rc, out, err = await lightbox("--profile", "ortho", "send", "--thread", thread_id, REPLY)
    assert rc == 0 and "sent: message" in out, out + err
    rc, out, err = await lightbox("--profile", "intern", "inbox")
    assert rc == 0 and REPLY in out, out + err
    return thread_id


def _held(home: Path, profile: str) -> tuple[list[str], int, int]:
    """What a profile's vault holds: its messages (id, read or not), its images, its
    outbox."""
    vault = Vault(home / profile, kdf=CHEAP_PROFILE)
    vault.unlock(PASSWORD)
    try:
        messages = [vault.message(mid) for _, mid in vault.message_ids_after(0)]
        images = sum(1 for m in messages for a in m.attachment_ids
                     if vault.tombstone(a) is None and vault.get_image(a).data)
        return (sorted(f"{m.message_id}:{m.read}" for m in messages), images,
                len(vault.outbox()))
    finally:
        vault.lock()


def _keep_in_outbox(home: Path, profile: str, thread_id: str, text: str) -> None:
    """A reply the relay has not stored yet, kept in the profile's outbox (its connection was
    lost as it went: clients/sdk/sending.py)."""
    vault = Vault(home / profile, kdf=CHEAP_PROFILE)
    vault.unlock(PASSWORD)
    try:
        vault.put_outbox(OutboxRecord(
            message_id=str(uuid.uuid4()), thread_id=thread_id, created_at=time.time(),
            purpose="direct_care", priority="routine",
            body=msgspec.msgpack.encode(Body(text=text))))
    finally:
        vault.lock()


def _forget_threads(home: Path, profile: str) -> None:
    """The threads as the relay last listed them, forgotten by the profile's vault."""
    vault = Vault(home / profile, kdf=CHEAP_PROFILE)
    vault.unlock(PASSWORD)
    try:
        for thread_id in vault.notes(THREAD_NOTE):
            vault.drop_note(THREAD_NOTE, thread_id)
    finally:
        vault.lock()


def _expire_session(home: Path, profile: str) -> None:
    """The profile's session lapsed (its refresh token too), as after days off."""
    vault = Vault(home / profile, kdf=CHEAP_PROFILE)
    vault.unlock(PASSWORD)
    try:
        session = vault.state.session
        assert session is not None
        past = int(time.time()) - 3600
        vault.update(lambda st: msgspec.structs.replace(st, session=msgspec.structs.replace(
            session, expires_at=past, refresh_expires_at=past)))
    finally:
        vault.lock()


async def test_inbox_and_threads_show_what_the_device_holds_while_the_relay_is_down(
        world: World, tmp_path: Path) -> None:
    home = tmp_path / "home"
    thread_id = await _consult_and_reply(world, tmp_path)
    online = {p: (await lightbox("--profile", p, "inbox"))[1] for p in ("intern", "ortho")}

    await asyncio.to_thread(world.relay.stop)  # off this loop: nothing may answer
    _keep_in_outbox(home, "intern", thread_id, KEPT)
    held = {p: _held(home, p) for p in ("intern", "ortho")}
    assert held["ortho"][1:] == (1, 0) and held["intern"][1:] == (1, 1), held

    # The specialist's phone: the consult, by the intern's name, with its image, exactly as
    # when it was connected, after the one line on stderr.
    rc, out, err = await lightbox("--profile", "ortho", "inbox")
    assert "Traceback" not in out + err and "unexpected problem" not in err, out + err
    assert (rc, err) == (1, heading("inbox") + "\n"), out + err
    lines = out.splitlines()
    assert f"Dr Intern in {thread_id[:8]}: {SUBJECT} - {CONSULT}" in lines[0], out
    assert lines[2].startswith("    image ") and lines[2].endswith(": stored"), out
    assert lines[-1] == "1 unread message", out
    assert out == online["ortho"], (out, online["ortho"])

    # The intern's phone: the specialist's reply, by her name, and the send kept meanwhile.
    rc, out, err = await lightbox("--profile", "intern", "inbox")
    assert (rc, err) == (1, heading("inbox") + "\n"), out + err
    assert out.splitlines() == [
        *online["intern"].splitlines()[:-1],
        "1 message not yet stored by the relay: they are sent again the next time this device "
        "connects (lightbox outbox lists them)", "1 unread message"], out
    assert f"Dr Ortho in {thread_id[:8]}: {REPLY}" in out, out

    for profile in ("intern", "ortho"):
        rc, out, err = await lightbox("--profile", profile, "threads")
        assert (rc, err) == (1, heading("threads") + "\n"), out + err
        lines = out.splitlines()
        assert lines[0].startswith(f"URGENT {thread_id}  {SUBJECT}  [with role:{ORTHO}, Dr "), out
        assert lines[0].endswith("  1 unread"), out
        assert lines[1] == "1 thread", out

    # A session that lapsed meanwhile: nothing more is asked, the same listing.
    _expire_session(home, "ortho")
    rc, out, err = await lightbox("--profile", "ortho", "inbox")
    assert (rc, err, out) == (1, heading("inbox") + "\n", online["ortho"])

    # A consult never listed on this device (only `watch` received it): shown all the same,
    # with those who wrote in it.
    _forget_threads(home, "ortho")
    rc, out, err = await lightbox("--profile", "ortho", "threads")
    assert (rc, err) == (1, heading("threads") + "\n"), out + err
    assert out == f"URGENT {thread_id}  {SUBJECT}  [with Dr Intern]  1 unread\n1 thread\n", out
    rc, out, err = await lightbox("--profile", "ortho", "inbox")
    assert (rc, err, out) == (1, heading("inbox") + "\n", online["ortho"])

    # Nothing changed on either device because of the outage.
    assert {p: _held(home, p) for p in ("intern", "ortho")} == held

    async with relay_back(world, tmp_path):
        rc, out, err = await lightbox("--profile", "intern", "inbox")
        assert (rc, err) == (0, ""), out + err
        assert "cannot reach the relay" not in out, out
        assert out.startswith("-- message ") and "is now stored by the relay" in out, out
        assert out.splitlines()[1:] == online["intern"].splitlines(), out
        rc, out, err = await lightbox("--profile", "ortho", "inbox")
        assert (rc, err) == (0, ""), out + err
        assert "cannot reach the relay" not in out, out
        assert f"Dr Intern in {thread_id[:8]}: {SUBJECT} - {CONSULT}" in out, out
        assert f"Dr Ortho in {thread_id[:8]}: {REPLY}" not in out, out  # her own
        assert f"Dr Intern in {thread_id[:8]}: {KEPT}" in out, out  # sent once connected
        assert out.splitlines()[-1] == "2 unread messages", out
        for profile in ("intern", "ortho"):
            rc, out, err = await lightbox("--profile", profile, "threads")
            assert (rc, err) == (0, ""), out + err
            assert out.splitlines()[0].startswith(f"URGENT {thread_id}  {SUBJECT}  ["), out
            assert out.splitlines()[-1] == "1 thread", out


async def test_a_relay_that_goes_down_as_the_command_starts_is_said_at_once(
        world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The relay answers the command's login and revocation list, then goes down before its
    connection is up (a restart at that moment): ``inbox`` says so and shows what the device
    holds at once, as when the relay was down from the start, rather than wait out
    ``--timeout`` while the connection tries again (``threads`` starts the same way,
    clients/clinician/reading.py ``_start_or_offline``)."""
    await _consult_and_reply(world, tmp_path)
    online = (await lightbox("--profile", "ortho", "inbox"))[1]
    connect = Connection.start

    async def relay_down_first(self: Connection) -> None:
        await asyncio.to_thread(world.relay.stop)
        await connect(self)

    monkeypatch.setattr(Connection, "start", relay_down_first)
    begun = time.monotonic()
    rc, out, err = await lightbox("--profile", "ortho", "inbox", "--timeout", "120")
    took = time.monotonic() - begun
    assert (rc, err) == (1, heading("inbox", "it stopped answering") + "\n"), out + err
    assert out == online, (out, online)
    assert took < 60, f"inbox waited {took:.0f} s"


async def test_inbox_with_a_lapsed_session_and_the_relay_down_asks_for_the_password_once(
        world: World, tmp_path: Path) -> None:
    """At a terminal, without ``LIGHTBOX_PASSWORD``: the password opens the vault, once; the
    login the lapsed session needs cannot reach the relay, and no prompt comes again."""
    home = tmp_path / "home"
    await _consult_and_reply(world, tmp_path)
    await asyncio.to_thread(world.relay.stop)
    _expire_session(home, "intern")
    env = {k: v for k, v in os.environ.items() if k != "LIGHTBOX_PASSWORD"}
    # The terminal is the process's own (setsid, then the pty as its controlling terminal):
    # the password prompt reads from it as from a person's.
    start = ("import fcntl, os, sys, termios; os.setsid(); fcntl.ioctl(0, termios.TIOCSCTTY, 0);"
             " os.execv(sys.executable, [sys.executable, '-m', 'clients.clinician.cli',"
             " *sys.argv[1:]])")
    controller, terminal = os.openpty()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-c", start, "--profile", "intern", "inbox"], cwd=ROOT, env=env,
            stdin=terminal, stdout=terminal, stderr=terminal)
        os.close(terminal)
        said = await asyncio.to_thread(_answer_once, controller, proc)
    finally:
        os.close(controller)
    assert proc.returncode == 1, said
    assert said.count("Your Lightbox password (profile intern):") == 1, said
    lines = [line.strip() for line in said.splitlines() if line.strip()]
    assert heading("inbox") in lines and lines[-1] == "1 unread message", said
    assert REPLY in said and "Traceback" not in said, said


def _answer_once(controller: int, proc: subprocess.Popen[bytes]) -> str:
    """What the terminal shows until ``proc`` ends, typing the password at the first prompt
    only (a prompt that came again would wait, unanswered, until it is ended here)."""
    said, answered = b"", False
    deadline = time.monotonic() + seconds(60)
    try:
        while time.monotonic() < deadline:
            if not select.select([controller], [], [], 0.5)[0]:
                continue
            try:
                chunk = os.read(controller, 4096)
            except OSError:  # the process ended and closed the terminal
                break
            if not chunk:
                break
            said += chunk
            if not answered and b"Your Lightbox password (profile intern):" in said:
                os.write(controller, PASSWORD.encode() + b"\n")
                answered = True
    finally:
        if proc.poll() is None and time.monotonic() >= deadline:
            proc.kill()
        proc.wait(timeout=seconds(10))
    return said.decode(errors="replace").replace("\r", "")
