"""A relay behind a reverse proxy that answers 502 or 503 itself while the relay restarts
(RFC 9110 §15.6.3, §15.6.4), as a real one does: ``lightbox`` takes it for a relay out of
reach, not a refusal. A command says the one sentence it has for that, and ``lightbox watch``
keeps going (docs/USER_GUIDE.md: it says once that it cannot reach the relay and shows the
consults once it answers), where it used to end on "http_503"."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest

from tests.clients.test_watch_beside_commands import ORTHO, Watch
from tests.clinician_world import enrol_clinician, lightbox_process, run_cli, use_cli_profiles
from tests.helpers import seconds
from tests.identity_world import World

IDLE = 2  # seconds: the vault locks itself this long after its last use, then starts again
UNREACHABLE = "-- cannot reach the relay"
CONNECTED = "-- connected to the relay"
PAGE = b"<html><body><h1>503 Service Temporarily Unavailable</h1></body></html>"


class RestartingProxy:
    """A reverse proxy on loopback in front of the relay's port: passes every connection
    through (websockets included) until :meth:`relay_down`, then answers each request with
    ``status`` and an HTML page, as nginx does when its upstream is away, and closes the
    connections it was passing; :meth:`relay_up` passes them again."""

    def __init__(self, port: int, status: int) -> None:
        self.port, self.status = port, status
        self.down = False
        self.answered = 0
        self._passing: set[asyncio.StreamWriter] = set()

    def relay_down(self) -> None:
        self.down = True
        for writer in self._passing:
            writer.close()

    def relay_up(self) -> None:
        self.down = False

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[str]:
        server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        try:
            yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        finally:
            server.close()
            self.relay_down()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            if self.down:
                await self._unavailable(reader, writer)
                return
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.port)
            self._passing |= {writer, up_writer}
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        except (ConnectionError, OSError):
            pass
        finally:
            self._passing.discard(writer)
            writer.close()

    async def _unavailable(self, reader: asyncio.StreamReader,
                           writer: asyncio.StreamWriter) -> None:
        while (await reader.readline()) not in (b"\r\n", b"\n", b""):
            pass  # the request head; a body, if any, is left unread as nginx may
        self.answered += 1
        reason = {502: "Bad Gateway", 503: "Service Unavailable"}[self.status]
        writer.write(f"HTTP/1.1 {self.status} {reason}\r\nContent-Type: text/html\r\n"
                     f"Content-Length: {len(PAGE)}\r\nConnection: close\r\n\r\n".encode()
                     + PAGE)
        await writer.drain()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        finally:
            self._passing.discard(writer)
            writer.close()


async def _behind(world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                  proxy_url: str, login: str, roles: tuple[str, ...] = ("intern",)) -> None:
    """``login``'s CLI profile, reaching the relay through the proxy."""
    home = use_cli_profiles(monkeypatch, tmp_path)
    c = await enrol_clinician(world, tmp_path, login, roles=roles, vault_dir=home / login)
    c.vault.save(msgspec.structs.replace(c.vault.state, server_url=proxy_url))
    c.vault.lock()


@pytest.mark.parametrize("status", [502, 503])
async def test_a_command_behind_a_proxy_of_a_restarting_relay_says_it_cannot_reach_it(
        world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, status: int) -> None:
    proxy = RestartingProxy(int(world.relay.base_url.rsplit(":", 1)[1]), status)
    async with proxy.running() as url:
        await _behind(world, tmp_path, monkeypatch, url, "ivy.intern")
        assert (await run_cli("--profile", "ivy.intern", "threads"))[0] == 0
        proxy.relay_down()
        rc, out, err = await run_cli("--profile", "ivy.intern", "threads")
    assert proxy.answered >= 1
    # The proxy's answer said as the relay out of reach (it may be restarting), and `threads`
    # then shows what the device holds (docs/USER_GUIDE.md "Follow it").
    assert (rc, err.strip().splitlines()[-1]) == (1, (
        f"error: cannot reach the relay (HTTP {status} from a proxy in front of it: the relay "
        "may be restarting): what follows is what this device holds now; delivery states, "
        "acknowledgements by colleagues, consent changes and expiry orders may be newer at the "
        "relay (run `lightbox threads` again once it answers)")), out + err
    assert out.splitlines()[-1] == "0 threads", out


async def test_watch_behind_a_proxy_of_a_restarting_relay_keeps_going(
        world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The relay restarts behind its proxy while ``watch`` runs; the vault locks itself and
    watch unlocks it again, which starts its client again: the proxy's 503 then is a relay out
    of reach, said once, and the consult sent once the relay is back is shown."""
    proxy = RestartingProxy(int(world.relay.base_url.rsplit(":", 1)[1]), 503)
    async with proxy.running() as url:
        await _behind(world, tmp_path, monkeypatch, url, "ortho", (ORTHO,))
        intern = await enrol_clinician(world, tmp_path, "intern")
        monkeypatch.setenv("LIGHTBOX_VAULT_IDLE_TIMEOUT", str(IDLE))
        watch = Watch(await lightbox_process("--profile", "ortho", "watch",
                                             "--timeout", str(seconds(120))))
        try:
            await watch.until(CONNECTED)
            proxy.relay_down()
            await watch.until(UNREACHABLE)
            assert watch.process.returncode is None, watch.lines
            proxy.relay_up()
            await watch.until(CONNECTED, count=watch.said(CONNECTED) + 1, timeout=60)
            async with intern.client:
                thread = await intern.client.create_thread(roles=[ORTHO])
                await intern.client.send_text(thread.thread_id, "Bed 5: ankle, after the restart")
            await watch.until("Bed 5: ankle, after the restart", timeout=60)
            err = await watch.stop()
        finally:
            if watch.process.returncode is None:
                await watch.stop()
            intern.vault.lock()
    assert "error:" not in err and "Traceback" not in err, err
    unreachable = next(line for line in watch.lines if line.startswith(UNREACHABLE))
    assert "HTTP 503 from a proxy in front of it" in unreachable, unreachable
    assert watch.said(UNREACHABLE) == 1, watch.lines
