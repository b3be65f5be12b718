"""A ``lightbox watch`` running in one terminal stops when its user runs ``lightbox logout`` in
another (docs/USER_GUIDE.md "Everyday commands"; clients/sdk/profile.py): a person who logs out
of a shared workstation expects everything of theirs on it to stop at once.

With the relay out of reach, logout forgets the session here but cannot end it at the relay,
so the watch, which holds the tokens in memory, used to reconnect with them once the relay was
back and go on showing consults on a device whose user had logged out. Now it ends with one
sentence and exit status 1, shows nothing sent after the logout, and puts no session back into
the profile. A logout that reaches the relay ends it with the same sentence. The desktop, or
any program built on the profile, meets the same refusal in the SDK before it would reconnect.
Real relay (stopped, then started again on its port), real ``lightbox`` processes.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from clients.sdk.client import MessageEvent
from clients.sdk.errors import LoggedOut
from clients.sdk.profile import open_profile
from tests.clients.test_cli_watch_start import CONNECTED, _ended
from tests.clients.test_watch_beside_commands import LOST, ORTHO, Watch
from tests.clinician_world import (
    Clinician,
    cli_world,
    intern_and_specialist,
    lightbox_process,
    profile_session,
    relay_back,
)
from tests.helpers import seconds
from tests.identity_world import PASSWORD, World

world = cli_world  # the relay and the CLI's environment (tests/clinician_world.py)

STOPPED = ("error: watch stopped: you logged out on this device (in another terminal); "
           "`lightbox login` signs in again\n")


async def _logout() -> tuple[int, str, str]:
    """``lightbox --profile ortho logout`` in a process of its own (another terminal)."""
    process = await lightbox_process("--profile", "ortho", "logout")
    async with asyncio.timeout(seconds(60)):
        out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def _started(world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                   ) -> tuple[Clinician, Watch]:
    """The intern (connected) and the specialist's ``lightbox watch``, shown a consult."""
    intern, _ = await intern_and_specialist(world, tmp_path, monkeypatch, ORTHO)
    watch = Watch(await lightbox_process("--profile", "ortho", "watch",
                                         "--timeout", str(seconds(180))))
    await watch.until(CONNECTED)
    await intern.client.start(wait_connected=seconds(10))
    await watch.shows_consult(intern, "Bed 2: wrist, before the logout")
    return intern, watch


async def _send_after(intern: Clinician) -> None:
    """A consult to the role once the logout is done; it reaches the relay."""
    await intern.client.wait_synced(timeout=seconds(60))
    thread = await intern.client.create_thread(roles=[ORTHO])
    await intern.client.send_text(thread.thread_id, "Bed 7: ankle, after the logout")


async def test_a_logout_while_the_relay_is_down_stops_the_running_watch_before_it_reconnects(
        world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    intern, watch = await _started(world, tmp_path, monkeypatch)
    try:
        await asyncio.to_thread(world.relay.stop)
        await watch.until(LOST)
        rc, out, err = await _logout()
        assert (rc, out) == (1, ""), err
        assert err.startswith("error: cannot reach the relay (no connection could be made), "
                              "so it could not be told to end the session of ortho"), err
        async with relay_back(world, tmp_path):
            await _send_after(intern)
            err = await _ended(watch)
            # Nothing of the session came back into the profile (a refresh saved by watch).
            assert profile_session(tmp_path / "home", "ortho") is None
    finally:
        await watch.stop()
        await intern.client.close()
    assert (watch.process.returncode, err) == (1, STOPPED), (watch.lines, err)
    assert not [line for line in watch.lines if "after the logout" in line], watch.lines
    assert watch.lines[-1].startswith(f"-- {LOST}"), watch.lines  # its last line before it


async def test_a_logout_that_reaches_the_relay_stops_the_running_watch_with_the_same_sentence(
        world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    intern, watch = await _started(world, tmp_path, monkeypatch)
    try:
        rc, out, err = await _logout()
        assert (rc, err) == (0, ""), out + err
        assert out.startswith("logged out: the relay ended the session of ortho"), out
        err = await _ended(watch)
        await _send_after(intern)
    finally:
        await watch.stop()
        await intern.client.close()
    assert (watch.process.returncode, err) == (1, STOPPED), (watch.lines, err)
    assert not [line for line in watch.lines if "after the logout" in line], watch.lines
    assert profile_session(tmp_path / "home", "ortho") is None


async def test_a_program_on_the_profile_does_not_reconnect_after_a_logout_while_the_relay_is_down(
        world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The SDK client a long-running program builds on the profile (the desktop's, as
    clients/desktop/app.py does) ends its connection with :class:`LoggedOut` at its next try,
    instead of reconnecting with the tokens it holds once the relay is back."""
    intern, _ = await intern_and_specialist(world, tmp_path, monkeypatch, ORTHO)
    device = await asyncio.to_thread(open_profile, tmp_path / "home" / "ortho", PASSWORD)
    client = device.client(backoff_base=0.05, backoff_max=0.5)
    arrived = client.subscribe()
    await client.start(wait_connected=seconds(10))
    connection = client.connection
    assert connection is not None
    try:
        await asyncio.to_thread(world.relay.stop)
        rc, _, err = await _logout()
        assert rc == 1 and err.startswith("error: cannot reach the relay"), err
        async with asyncio.timeout(seconds(30)):
            stopped = await connection.stopped
        assert isinstance(stopped.__cause__, LoggedOut), repr(stopped.__cause__)
        async with relay_back(world, tmp_path):
            await intern.client.start(wait_connected=seconds(10))
            await _send_after(intern)
            await asyncio.sleep(seconds(2))  # what a reconnected client would have received
    finally:
        await client.close(drain=0)
        await intern.client.close()
    assert not connection.connected.is_set()
    heard = [arrived.get_nowait() for _ in range(arrived.qsize())]
    assert not [e for e in heard if isinstance(e, MessageEvent)], heard  # nothing came
    assert profile_session(tmp_path / "home", "ortho") is None
