"""``lightbox watch`` beside another ``lightbox`` command of the same profile, against a real
relay and real CLI runs (docs/USER_GUIDE.md "Interns: sending a consult", §4 "Follow it").

The relay keeps one connection per device and closes the older one with 4003
(docs/PROTOCOL.md §3.5 "One connection per device"), so a ``lightbox send`` run while ``watch``
runs takes watch's connection. That is no loss: the send goes through at once, never held up
by watch taking the connection back; watch says so once, calmly (not "connection lost"), makes
way (clients/sdk/connection.py REPLACED_WAIT), connects again by itself once the command is
done, and shows every consult that arrived meanwhile, also one the other command received and
stored for the device (clients/sdk/receiving.py), once.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from clients.clinician.shell import command_client
from clients.sdk.client import ClientEvent, LightboxClient, MessageEvent, ReceiptEvent
from clients.sdk.profile import open_profile
from tests.clinician_world import Clinician, intern_and_specialist, lightbox_process
from tests.clinician_world import run_cli as lightbox
from tests.helpers import seconds
from tests.identity_world import PASSWORD, World

ORTHO = "orthopaedics_oncall"
LOST = "relay connection lost"
REPLACED_LINE = ("-- another lightbox command of this device is using the relay connection: "
                 "watching resumes when it finishes (nothing is missed)")


class Watch:
    """``lightbox --profile ortho watch`` as a process of its own, its lines as they come."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.lines: list[str] = []
        self._reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        assert self.process.stdout is not None
        while raw := await self.process.stdout.readline():
            self.lines.append(raw.decode().rstrip("\n"))

    async def until(self, text: str, *, count: int = 1, timeout: float = 30) -> None:
        """Until ``count`` lines hold ``text`` (the test fails with what watch said)."""
        try:
            async with asyncio.timeout(seconds(timeout)):
                while sum(text in line for line in self.lines) < count:
                    if self._reader.done():
                        raise AssertionError(f"watch ended before {text!r}: {self.lines}")
                    await asyncio.sleep(0.02)
        except TimeoutError:
            raise AssertionError(f"watch did not say {text!r}: {self.lines}") from None

    async def shows_consult(self, intern: Clinician, text: str) -> None:
        """``intern`` sends a new consult to the role; watch shows it, and runs on."""
        thread = await intern.client.create_thread(roles=[ORTHO])
        await intern.client.send_text(thread.thread_id, text)
        await self.until(text, timeout=60)
        assert self.process.returncode is None, self.lines

    def said(self, text: str) -> int:
        return sum(text in line for line in self.lines)

    async def stop(self) -> str:
        """Stop it (as Ctrl-C does); every line it said is read, and its standard error."""
        if self.process.returncode is None:
            self.process.terminate()
        assert self.process.stderr is not None
        async with asyncio.timeout(seconds(30)):
            await self._reader
            err = await self.process.stderr.read()
            await self.process.wait()
        return err.decode()


@contextlib.asynccontextmanager
async def watching(world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                   ) -> AsyncIterator[tuple[Clinician, Clinician, Watch]]:
    """The intern (an SDK client, connected, on a profile of her own) and the specialist's
    profile ``ortho`` with ``lightbox watch`` running on it, connected."""
    intern, ortho = await intern_and_specialist(world, tmp_path, monkeypatch, ORTHO)
    await intern.client.start(wait_connected=seconds(10))
    watch = Watch(await lightbox_process("--profile", "ortho", "watch",
                                         "--timeout", str(seconds(120))))
    try:
        await watch.until("-- connected to the relay")
        yield intern, ortho, watch
    finally:
        err = await watch.stop()
        assert "Traceback" not in err and "never retrieved" not in err, err
        await intern.client.close()
        intern.vault.lock()


@contextlib.asynccontextmanager
async def other_command(ortho: Clinician, watch: Watch
                        ) -> AsyncIterator[tuple[LightboxClient, asyncio.Queue[ClientEvent]]]:
    """Another command of the specialist's profile, as the CLI makes its client, holding the
    device's connection (watch has made way) until the block ends; what it heard."""
    device = await asyncio.to_thread(open_profile, ortho.vault.directory, PASSWORD)
    other = command_client(device)
    heard = other.subscribe()
    try:
        await other.start(wait_connected=seconds(10))
        await other.wait_synced(seconds(10))
        await watch.until(REPLACED_LINE)
        yield other, heard
    finally:
        await other.close()
        device.vault.lock()


async def test_a_send_beside_watch_goes_at_once_and_watch_says_so_calmly_then_shows_what_came(
        world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with watching(world, tmp_path, monkeypatch) as (intern, ortho, watch):
        begun = time.monotonic()
        rc, out, err = await lightbox("--profile", "ortho", "send", "--to", "user:intern",
                                      "Seen the film: bring her to fracture clinic")
        took = time.monotonic() - begun
        assert rc == 0, err
        assert "sent: message" in out, out
        assert "Traceback" not in err and "error" not in err, err
        await watch.until(REPLACED_LINE)
        # A colleague's consult to the watching specialist while watch makes way (or just
        # after): watch shows it once it is back, with nothing said twice.
        thread = await intern.client.create_thread(users=[ortho.user_id])
        consult = await intern.client.send_text(thread.thread_id, "Bed 9: scaphoid?")
        await watch.until("Bed 9: scaphoid?")
        await watch.until("-- connected to the relay", count=2)
    lines = watch.lines
    assert took < seconds(10), f"the send took {took:.1f} s"
    assert not [line for line in lines if LOST in line], lines
    assert watch.said(REPLACED_LINE) == 1, lines
    assert watch.said("Bed 9: scaphoid?") == 1, lines
    # Said in order: made way, back, then the consult (never before it is back).
    assert lines.index(REPLACED_LINE) < max(
        i for i, line in enumerate(lines) if line == "-- connected to the relay")
    assert consult.message_id  # stored by the relay: the intern's send went through


async def test_a_consult_the_other_command_received_is_shown_by_watch_once_it_is_back(
        world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The consult reaches the relay while the other command holds the device's connection: the
    relay gives it to that command, which stores it in the profile's vault and acknowledges it,
    so the relay will never send it to watch. Watch shows it all the same, once it is back."""
    async with watching(world, tmp_path, monkeypatch) as (intern, ortho, watch):
        # The other command, as the CLI makes its client (an `inbox` that takes its time).
        async with other_command(ortho, watch) as (_other, heard):
            thread = await intern.client.create_thread(users=[ortho.user_id])
            consult = await intern.client.send_text(thread.thread_id, "Bed 12: hip film?")
            async with asyncio.timeout(seconds(10)):
                while not (isinstance(event := await heard.get(), MessageEvent)
                           and event.message.message_id == consult.message_id):
                    pass
            assert not watch.said("Bed 12: hip film?"), watch.lines  # not watch's to show yet
        await watch.until("Bed 12: hip film?")
        await watch.until("-- connected to the relay", count=2)
    assert watch.said("Bed 12: hip film?") == 1, watch.lines
    assert watch.said(REPLACED_LINE) == 1, watch.lines
    assert not [line for line in watch.lines if LOST in line], watch.lines


async def test_a_receipt_the_other_command_received_is_said_by_watch_once_it_is_back(
        world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The intern's device signs "delivered" of the specialist's reply while another command of
    the specialist's profile holds the connection: the relay gives the receipt to that command,
    which keeps it in the profile's vault, and will never send it to watch. Watch says it all
    the same, once it is back (it missed a third of them when a colleague's loop of sends held
    the connection)."""
    async with watching(world, tmp_path, monkeypatch) as (intern, ortho, watch):
        async with other_command(ortho, watch) as (other, heard):
            thread = await other.create_thread(users=[intern.user_id])
            reply = await other.send_text(thread.thread_id, "Bring her to fracture clinic")
            async with asyncio.timeout(seconds(10)):
                while not (isinstance(event := await heard.get(), ReceiptEvent)
                           and event.message_id == reply.message_id
                           and event.kind == "delivered"):
                    pass
        said = f": delivered ({reply.message_id[:8]})"
        assert not watch.said(said), watch.lines  # not watch's to say while it made way
        await watch.until("-- connected to the relay", count=2)
        await watch.until(said)
        await asyncio.sleep(1)  # nothing said twice
    assert watch.said(said) == 1, watch.lines
    assert watch.said(f"Dr Ada Intern{said}") == 1, watch.lines


async def test_the_specialist_acknowledges_from_another_terminal_while_watch_runs(
        world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The on-call journey on a terminal: ``watch`` in one shows the consult with the command
    that says "I'm on it"; ``lightbox ack`` in another takes the device's connection for a
    moment, and the relay keeps the receipt; watch makes way and comes back."""
    async with watching(world, tmp_path, monkeypatch) as (intern, ortho, watch):
        thread = await intern.client.create_thread(users=[ortho.user_id])
        consult = await intern.client.send_text(thread.thread_id, "Bed 3: Weber B?")
        await watch.until(f"I'm on it: lightbox ack {consult.message_id}")
        rc, out, err = await lightbox("--profile", "ortho", "ack", consult.message_id)
        assert (rc, err) == (0, ""), out + err
        assert out.startswith("acknowledged "), out
        await watch.until("-- connected to the relay", count=2)
    assert not [line for line in watch.lines if LOST in line], watch.lines


async def test_a_loop_of_sends_beside_watch_is_said_once(
        world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A loop of ``lightbox send`` on the profile beside watch: watch says the first hand-over
    and that it is back, then nothing of the next ones (it said the pair 14 times in 17
    minutes beside such a loop); every consult that came meanwhile is shown
    (clients/clinician/reading.py REPLACED_QUIET)."""
    async with watching(world, tmp_path, monkeypatch) as (intern, _ortho, watch):
        for n in range(2):
            rc, _out, err = await lightbox("--profile", "ortho", "send", "--to", "user:intern",
                                           f"Reviewed film {n}: fracture clinic")
            assert rc == 0, err
            await watch.shows_consult(intern, f"Bed {n}: wrist film?")
        await watch.until(": delivered", count=2)
    assert watch.said(REPLACED_LINE) == 1, watch.lines
    assert watch.said("-- connected to the relay") == 2, watch.lines
    assert not [line for line in watch.lines if LOST in line], watch.lines


async def test_watch_offers_im_on_it_under_each_opening_message_until_the_consult_is_acknowledged(
        world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The intern's consult, then a second message in it before anyone answered: watch shows
    each as it comes, so the hint comes under each (the consult's newest information is the
    second; docs/USER_GUIDE.md "Specialists"). Once the specialist says "I'm on it" (to the
    second, from another terminal), a third message of hers comes without it: the consult is
    acknowledged (clients/sdk/acking.py ``offers_acknowledgement``)."""
    async with watching(world, tmp_path, monkeypatch) as (intern, ortho, watch):
        thread = await intern.client.create_thread(users=[ortho.user_id])
        first = await intern.client.send_text(thread.thread_id, "Bed 3: Weber B?")
        await watch.until(f"I'm on it: lightbox ack {first.message_id}")
        second = await intern.client.send_text(thread.thread_id, "Medial tenderness too.")
        await watch.until(f"I'm on it: lightbox ack {second.message_id}")
        rc, out, err = await lightbox("--profile", "ortho", "ack", second.message_id)
        assert (rc, err) == (0, ""), out + err
        await watch.until("-- connected to the relay", count=2)
        await intern.client.send_text(thread.thread_id, "Films uploading now.")
        await watch.until("Films uploading now.")
        await asyncio.sleep(1)  # a hint would be printed right under it
    assert watch.said("I'm on it: lightbox ack") == 2, watch.lines
