"""``lightbox watch`` and the vault's idle lock (clients/sdk/vault.py "Locking";
docs/USER_GUIDE.md "Interns: sending a consult", §4 "Follow it"), against a real relay, a real
record gateway filing into a real Orthanc, and the relay's own expiry sweep with a short grace.

The vault locks itself after ``LIGHTBOX_VAULT_IDLE_TIMEOUT`` seconds without a call. ``watch``
then says so in one sentence and stops its connection cleanly (everything stays queued at the
relay), never a traceback; with the password from ``LIGHTBOX_PASSWORD`` it unlocks again and
carries on, on a terminal it asks for the password again, and otherwise it stops with a
sentence saying how to start it again. Once it carries on, the expiry order of an image filed
meanwhile is applied: the copy is deleted and confirmed, and ``lightbox-admin copies`` agrees.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from clients.gateway.app import RecordGateway
from clients.sdk.client import LightboxClient, StatusEvent
from clients.sdk.connection import VAULT_LOCKED
from tests.clients.test_desktop import ORTHO, send_wrist_xray
from tests.clinician_world import Clinician, enrol_clinician, lightbox_process, use_cli_profiles
from tests.clinician_world import run_cli as lightbox
from tests.consent_world import count
from tests.filing_world import admin_copies, copies_json, enrol_gateway, orthanc_gateway
from tests.helpers import eventually, seconds
from tests.identity_world import PASSWORD, World
from tests.orthanc import OrthancServer

# Copies expire two seconds after filing, swept often; attachments in 64 KiB chunks.
pytestmark = pytest.mark.world(attachment_chunk_bytes=64 * 1024, expiry_grace=2,
                               expiry_sweep_interval=0.5)

IDLE = 2  # seconds: the vault locks itself this long after its last use

LOCKED = "the vault locked itself after 2 s without use"


@contextlib.asynccontextmanager
async def team(world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
               orthanc: OrthancServer) -> AsyncIterator[tuple[Clinician, Clinician,
                                                              RecordGateway]]:
    """The intern (an SDK client, connected), the specialist's CLI profile ``ortho`` (locked,
    for ``lightbox watch``) and the record gateway (not started)."""
    home = use_cli_profiles(monkeypatch, tmp_path)
    intern = await enrol_clinician(world, tmp_path, "intern", display_name="Dr Ada Intern")
    ortho = await enrol_clinician(world, tmp_path, "ortho", roles=(ORTHO,),
                                  display_name="Dr Bea Ortho", vault_dir=home / "ortho")
    ortho.vault.lock()  # `lightbox watch` opens it with the password
    gateway = await enrol_gateway(world, tmp_path)
    gw, pacs = orthanc_gateway(gateway, orthanc)
    await intern.client.start(wait_connected=seconds(10))
    # Only the vaults opened from now on (the CLI's) lock themselves this soon.
    monkeypatch.setenv("LIGHTBOX_VAULT_IDLE_TIMEOUT", str(IDLE))
    try:
        yield intern, ortho, gw
    finally:
        await gw.stop()
        await pacs.aclose()
        await intern.client.close()
        intern.vault.lock()


async def confirmed(world: World, device_id: str, aid: str) -> bool:
    return await count(world, "SELECT count(*) FROM expiry_orders WHERE device_id = $1 AND "
                       "attachment_id = $2 AND confirmed_at IS NOT NULL",
                       uuid.UUID(device_id), uuid.UUID(aid)) == 1


async def test_watch_unlocks_again_with_the_environments_password_and_deletes_the_filed_copy(
        world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        orthanc: OrthancServer, capsys: pytest.CaptureFixture[str]) -> None:
    async with team(world, tmp_path, monkeypatch, orthanc) as (intern, ortho, gw):
        device_id = await world.device_of(ortho.user_id)
        watch = await lightbox_process("--profile", "ortho", "watch",
                                       "--timeout", str(seconds(120)))
        lines: list[str] = []

        async def until(text: str) -> None:
            assert watch.stdout is not None
            async with asyncio.timeout(seconds(60)):
                while not any(text in line for line in lines):
                    raw = await watch.stdout.readline()
                    assert raw, f"watch ended before {text!r}: {lines}"
                    lines.append(raw.decode())

        try:
            await until("-- connected to the relay")
            (aid,) = (await send_wrist_xray(intern)).attachment_ids
            await until(f"image {aid[:8]}: stored")
            # Nothing for longer than the idle timeout: the vault locks itself; watch says so
            # and, with the password in the environment, unlocks again and carries on.
            await until(LOCKED)
            await until("unlocked again")
            # Filed, then (after the grace) every copy ordered to expire: watch deletes its
            # copy and confirms, however often its vault locked meanwhile.
            await gw.start()
            await until(f"image {aid[:8]} deleted from this device")
            await eventually(lambda: confirmed(world, device_id, aid), timeout=30)
        finally:
            if watch.returncode is None:
                watch.terminate()
            out, err = await asyncio.wait_for(watch.communicate(), seconds(30))
        text = "".join(lines) + out.decode()
        stderr = err.decode()
        assert "Traceback" not in stderr and "Traceback" not in text, stderr
        assert "never retrieved" not in stderr, stderr
        assert "connection failed while handling a frame" not in stderr, stderr
        assert "VaultLocked" not in stderr + text, stderr
        locked_line = next(line for line in text.splitlines() if LOCKED in line)
        assert locked_line.startswith("-- "), locked_line
    # The relay's record agrees: the watching device's copy was destroyed.
    (report,) = copies_json(*await admin_copies(world, tmp_path / "admin-home", monkeypatch,
                                                capsys, "--attachment", aid, "--json"))
    copy = next(c for c in report["copies"] if c["device_id"] == device_id)
    assert copy["status"] == "destroyed", copy



class Terminal:
    """A terminal in front of the command: ``isatty`` and what the user types at getpass."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, answers: list[str]) -> None:
        self.prompts: list[str] = []
        self.answers = answers
        self.attached = True
        monkeypatch.delenv("LIGHTBOX_PASSWORD")
        monkeypatch.setattr(sys.stdin, "isatty", lambda: self.attached, raising=False)
        monkeypatch.setattr(getpass, "getpass", self.getpass)

    def getpass(self, prompt: str = "Password: ", stream: object = None) -> str:
        self.prompts.append(prompt)
        if not self.answers:
            raise EOFError
        return self.answers.pop(0)


async def test_watch_on_a_terminal_asks_for_the_password_again_and_deletes_the_filed_copy(
        world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        orthanc: OrthancServer) -> None:
    async with team(world, tmp_path, monkeypatch, orthanc) as (intern, ortho, gw):
        device_id = await world.device_of(ortho.user_id)
        # the first password opens the profile; then one for each time the vault locked
        terminal = Terminal(monkeypatch, [PASSWORD] * 50)
        (aid,) = (await send_wrist_xray(intern)).attachment_ids
        # Ended by its --timeout (exit status 0): long enough for the vault to lock, the filing
        # and the copy's deletion (confirmed 6 s after the start on a quiet 2-core machine),
        # not much longer, as the test waits for it to end.
        watch = asyncio.ensure_future(lightbox("--profile", "ortho", "watch",
                                               "--timeout", str(seconds(15))))
        try:
            await eventually(lambda: _true(len(terminal.prompts) >= 2), timeout=30)
            await gw.start()
            await eventually(lambda: confirmed(world, device_id, aid), timeout=40)
        finally:
            rc, out, err = await watch
        assert rc == 0, err
        assert f"image {aid[:8]}: stored" in out, out
        assert LOCKED in out, out
        assert f"image {aid[:8]} deleted from this device" in out, out
        assert "Traceback" not in err and "never retrieved" not in err, err
        assert len(terminal.prompts) >= 2, terminal.prompts


async def _true(value: bool) -> bool:
    return value


async def test_watch_without_a_way_to_unlock_again_stops_and_says_how_to_start_it(
        world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        orthanc: OrthancServer) -> None:
    async with team(world, tmp_path, monkeypatch, orthanc):
        terminal = Terminal(monkeypatch, [PASSWORD])  # typed once, then the terminal is gone
        watch = asyncio.ensure_future(lightbox("--profile", "ortho", "watch",
                                               "--timeout", str(seconds(60))))
        await eventually(lambda: _true(bool(terminal.prompts)), timeout=10)
        terminal.attached = False
        rc, out, err = await asyncio.wait_for(watch, seconds(30))
    assert LOCKED in out, out
    assert "lightbox watch" in out.split(LOCKED, 1)[1], out
    assert rc == 1, (out, err)
    assert "Traceback" not in err and "never retrieved" not in err, err
    assert len(terminal.prompts) == 1, terminal.prompts


async def test_a_frame_met_by_a_locked_vault_stops_the_connection_and_stays_queued(
        world: World, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The vault locks between two frames (before a timer noticed): the client's connection
    stops at once, never a reconnect loop, and says why; the delivery was not acknowledged,
    so it arrives once the vault is unlocked and the client started again."""
    intern = await enrol_clinician(world, tmp_path, "intern")
    ortho = await enrol_clinician(world, tmp_path, "ortho", roles=(ORTHO,))
    await intern.client.start(wait_connected=seconds(10))
    try:
        events = ortho.client.subscribe()
        await ortho.client.start(wait_connected=seconds(10))
        await ortho.client.wait_synced(seconds(10))
        ortho.vault.lock()  # as the idle timeout does
        thread = await intern.client.create_thread(roles=[ORTHO])
        sent = await intern.client.send_text(thread.thread_id, "Still there?")
        connection = ortho.client.connection
        assert connection is not None
        stopped = await asyncio.wait_for(asyncio.shield(connection.stopped), seconds(10))
        assert stopped.reason == VAULT_LOCKED
        assert connection.reconnects == 0
        async with asyncio.timeout(seconds(10)):
            while True:
                event = await events.get()
                if isinstance(event, StatusEvent) and event.state == "stopped":
                    break
        await ortho.client.close()
        assert "connection failed while handling a frame" not in caplog.text
        # Unlocked again, a new client: the message was kept for this device.
        ortho.vault.unlock(PASSWORD)
        again = LightboxClient(ortho.vault, ortho.vault, password=PASSWORD,
                               backoff_base=0.05, backoff_max=0.5)
        await again.start(wait_connected=seconds(10))
        try:
            await again.wait_synced(seconds(10))
            assert [m.message_id for m in ortho.vault.messages(thread.thread_id)] == [
                sent.message_id]
        finally:
            await again.close()
    finally:
        await intern.client.close()
