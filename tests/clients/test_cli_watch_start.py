"""``lightbox watch`` started while the relay cannot be reached (docs/USER_GUIDE.md
"Specialists: receiving and answering", ``watch``), against a real relay stopped and started
again on the same port, and real ``lightbox`` processes.

The specialist who starts watch in a terminal before going to the ward must not come back to
an error: watch says once that it waits for the relay at the profile's address and how often
it tries, connects by itself when the relay answers, and shows the consult sent then; its
``--timeout`` still ends it. What waiting cannot mend (here a TLS certificate that does not
verify) still ends it at once with one sentence.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest

from tests.clients.test_watch_beside_commands import ORTHO, Watch
from tests.clinician_world import (
    cli_world,
    intern_and_specialist,
    lightbox_process,
    relay_back,
)
from tests.fhir_server import make_tls_files
from tests.helpers import seconds
from tests.identity_world import PASSWORD, World

world = cli_world  # the relay and the CLI's environment (tests/clinician_world.py)

CONNECTED = "-- connected to the relay"
UNLOCKED = "-- vault unlocked again: listening for consults"


def waiting(url: str) -> str:
    return (f"-- waiting for the relay at {url} (cannot reach it now: no connection could be "
            "made): watch keeps trying, at least every 10 s, and shows the consults as soon "
            "as it answers (nothing is lost: the relay keeps everything for this device)")


async def _ended(watch: Watch) -> str:
    """Its standard error once it ended by itself (failing the test after a minute)."""
    async with asyncio.timeout(seconds(60)):
        await watch.process.wait()
    return await watch.stop()


async def test_watch_started_while_the_relay_is_down_waits_for_it_and_shows_what_comes(
        world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    intern, _ = await intern_and_specialist(world, tmp_path, monkeypatch, ORTHO)
    url = world.relay.base_url
    await asyncio.to_thread(world.relay.stop)  # IT restarts the relay

    # --timeout still bounds the run: the wait ends with it, calmly.
    short = Watch(await lightbox_process("--profile", "ortho", "watch", "--timeout", "3"))
    started = time.monotonic()
    err = await _ended(short)
    assert short.process.returncode == 0, (short.lines, err)
    assert time.monotonic() - started < seconds(30), short.lines
    assert short.lines == ["watching for consults (Ctrl-C to stop)", waiting(url)], short.lines
    assert err == "", err

    watch = Watch(await lightbox_process("--profile", "ortho", "watch",
                                         "--timeout", str(seconds(180))))
    try:
        await watch.until(waiting(url))
        await asyncio.sleep(seconds(3))  # tries meanwhile, and says nothing more
        assert watch.process.returncode is None, watch.lines
        assert watch.lines == ["watching for consults (Ctrl-C to stop)", waiting(url)], \
            watch.lines
        async with relay_back(world, tmp_path):
            await watch.until(CONNECTED, timeout=60)
            await intern.client.start(wait_connected=seconds(10))
            try:
                await watch.shows_consult(intern, "Bed 4: wrist, after the restart")
            finally:
                await intern.client.close()
                intern.vault.lock()
            err = await watch.stop()
    finally:
        if watch.process.returncode is None:
            await watch.stop()
    assert "Traceback" not in err and "error:" not in err, err
    lines = watch.lines
    assert lines[:3] == ["watching for consults (Ctrl-C to stop)", waiting(url), CONNECTED], lines
    assert any("Dr Ada Intern" in line and "Bed 4: wrist, after the restart" in line
               for line in lines[3:]), lines


async def test_watch_waiting_for_the_relay_prints_no_warning_as_its_vault_relocks(
        world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each unlock starts the client again without the relay, and its prekey upkeep with it:
    the upkeep waits for the relay too (clients/sdk/prekeys.py ``after_outage``) instead of
    warning on the terminal each time that it cannot reach it, and a connection waiting for
    the relay as the vault locks stops quietly (nothing but watch's own lines)."""
    _, ortho = await intern_and_specialist(world, tmp_path, monkeypatch, ORTHO)
    ortho.vault.unlock(PASSWORD)  # a session, as `lightbox enroll` leaves one
    await ortho.client.ensure_login()
    await ortho.client.close()
    ortho.vault.lock()
    url = world.relay.base_url
    await asyncio.to_thread(world.relay.stop)
    monkeypatch.setenv("LIGHTBOX_VAULT_IDLE_TIMEOUT", "2")
    watch = Watch(await lightbox_process("--profile", "ortho", "watch",
                                         "--timeout", str(seconds(180))))
    try:
        await watch.until(waiting(url))
        await watch.until(UNLOCKED, count=2)
        async with relay_back(world, tmp_path):
            await watch.until(CONNECTED, timeout=60)
            await asyncio.sleep(seconds(2))  # the upkeep's try once connected
            err = await watch.stop()
    finally:
        if watch.process.returncode is None:
            await watch.stop()
    assert err == "", err
    assert watch.said(waiting(url)) == 1, watch.lines
    assert watch.said("-- cannot reach the relay") == 0, watch.lines


@contextlib.asynccontextmanager
async def _untrusted_tls(tmp_path: Path) -> AsyncIterator[str]:
    """An HTTPS server on loopback whose certificate comes from a CA nobody trusts."""
    files = make_tls_files(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(files.server_cert, files.server_key)

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0, ssl=context)
    try:
        yield f"https://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()


async def test_watch_ends_at_once_when_the_relays_tls_certificate_does_not_verify(
        world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _, ortho = await intern_and_specialist(world, tmp_path, monkeypatch, ORTHO)
    async with _untrusted_tls(tmp_path) as url:
        ortho.vault.unlock(PASSWORD)
        ortho.vault.save(msgspec.structs.replace(ortho.vault.state, server_url=url))
        ortho.vault.lock()
        watch = Watch(await lightbox_process("--profile", "ortho", "watch",
                                             "--timeout", str(seconds(120))))
        started = time.monotonic()
        err = await _ended(watch)
    assert watch.process.returncode == 1, (watch.lines, err)
    assert time.monotonic() - started < seconds(30), watch.lines
    assert watch.lines == ["watching for consults (Ctrl-C to stop)"], watch.lines
    assert err == ("error: cannot reach the relay (its TLS certificate does not verify: "
                   "unable to get local issuer certificate): check the network and the server "
                   "address, then try again\n"), err
