"""Shared test helpers: time scaling, throwaway databases, and a real relay on a loopback port.

All waits go through :func:`seconds`, so a slow machine can scale every timeout at once with
``LIGHTBOX_TEST_TIME_SCALE`` (STYLE.md: timeouts come from one unit).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from server.app import Relay, create_app
from server.migrations import alembic_config, current_revision
from server.runner import RelayServer, uvicorn_config
from server.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parent.parent
TIME_SCALE = float(os.environ.get("LIGHTBOX_TEST_TIME_SCALE", "1"))
T = TypeVar("T")


def seconds(s: float) -> float:
    """A timeout of ``s`` seconds, scaled for slow machines."""
    return s * TIME_SCALE


async def eventually(probe: Callable[[], Awaitable[T]], *, timeout: float = 10.0) -> T:
    """The first truthy answer of ``probe``, asked again until ``timeout`` (scaled) runs out:
    for a state that another task or process reaches on its own (a sweeper's step, a counter
    after an acknowledgement that has no answer frame), where no frame announces it. Never a
    pause to let things settle: it returns as soon as the state is there."""
    async with asyncio.timeout(seconds(timeout)):
        while not (answer := await probe()):
            await asyncio.sleep(0.02)
    return answer


async def query_loggers_called() -> None:
    """Return once the query loggers of the queries already answered have run: asyncpg hands
    each answered query to its loggers with ``loop.call_soon``, so one turn of the event loop
    runs them all (an ordering, not a wait for time)."""
    await asyncio.sleep(0)


def page_problems(page: Any) -> list[str]:
    """The console errors and uncaught errors a Playwright page reports from now on, as a list
    that fills as they come (a browser test ends asserting it is empty)."""
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    return problems


def with_database(dsn: str, name: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))


@dataclass
class Cluster:
    """The session's embedded Postgres, with a migrated template database."""

    admin_dsn: str
    template: str

    async def create_database(self, *, empty: bool = False) -> str:
        """A new database at the schema's head (``empty``: with no schema at all)."""
        name = "t_" + uuid.uuid4().hex[:16]
        template = "" if empty else f' TEMPLATE "{self.template}"'
        conn = await asyncpg.connect(self.admin_dsn)
        try:
            await conn.execute(f'CREATE DATABASE "{name}"{template}')
        finally:
            await conn.close()
        return with_database(self.admin_dsn, name)

    async def drop_database(self, dsn: str) -> None:
        name = urlsplit(dsn).path.lstrip("/")
        conn = await asyncpg.connect(self.admin_dsn)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()


def revision_of(dsn: str) -> str | None:
    """The schema's revision, read as the relay reads it when it starts (blocking)."""

    async def read() -> str | None:
        conn = await asyncpg.connect(dsn)
        try:
            return await current_revision(conn)
        finally:
            await conn.close()
    return asyncio.run(read())


def previous(revision: str) -> str:
    """The revision just before ``revision`` among this release's migrations."""
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(alembic_config()).get_revision(revision)
    assert script is not None and isinstance(script.down_revision, str)
    return script.down_revision


_session: list[Path] = []


def session_dir() -> Path:
    """This test session's folder under .data/ (the relays' token key, the relay processes'
    logs), made on first use and removed when the session ends (tests/conftest.py)."""
    if not _session:
        (ROOT / ".data").mkdir(exist_ok=True)
        _session.append(Path(tempfile.mkdtemp(prefix="test-session-", dir=ROOT / ".data")))
    return _session[0]


def end_session() -> None:
    """Remove :func:`session_dir`, if it was made."""
    while _session:
        shutil.rmtree(_session.pop(), ignore_errors=True)


def make_settings(**overrides: object) -> Settings:
    base: dict[str, object] = {"host": "127.0.0.1", "port": 0, "log_level": "warning",
                               "db_pool_min": 1, "db_pool_max": 4,
                               "token_key_file": session_dir() / "token-key",
                               "argon2_profile": "cheap"}
    base.update(overrides)
    return load_settings({}, **base)


class ShiftedClock:
    """Wall-clock time plus an offset a test moves forward (``clock.advance(30)``): a relay
    given it sees simulated seconds pass while proofs signed at real time still verify."""

    def __init__(self) -> None:
        self.offset = 0.0

    def advance(self, seconds: float) -> None:
        self.offset += seconds

    def __call__(self) -> float:
        return time.time() + self.offset


@dataclass
class RunningRelay:
    relay: Relay
    server: RelayServer
    base_url: str
    thread: threading.Thread | None = None

    @property
    def ws_url(self) -> str:
        return "ws" + self.base_url[len("http"):]

    def stop(self) -> None:
        """Stop the relay now (as a restart would); leaving the context then does nothing."""
        self.server.should_exit = True
        if self.thread is not None:
            self.thread.join(seconds(30))
            if self.thread.is_alive():
                raise TimeoutError("the relay did not stop")


@contextlib.contextmanager
def relay_in_thread(dsn: str, settings: Settings | None = None, *,
                    oncall_clock: Callable[[], float] | None = None,
                    clock: Callable[[], float] = time.time) -> Iterator[RunningRelay]:
    """A real uvicorn serving the relay on a free loopback port, in its own thread and loop.
    ``oncall_clock`` replaces the rota and escalation clock (simulated minutes); ``clock``
    the relay's own (tokens, sessions, expiry)."""
    settings = settings or make_settings()
    relay = create_app(settings, dsn=dsn, oncall_clock=oncall_clock, clock=clock)
    server = RelayServer(uvicorn_config(relay, settings), relay)
    thread = threading.Thread(target=server.run, name="relay", daemon=True)
    thread.start()
    deadline = time.monotonic() + seconds(20)
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("relay failed to start")
        if time.monotonic() > deadline:
            raise TimeoutError("relay did not start")
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield RunningRelay(relay, server, f"http://127.0.0.1:{port}", thread)
    finally:
        server.should_exit = True
        thread.join(seconds(30))


@contextlib.asynccontextmanager
async def running_relay(dsn: str, settings: Settings | None = None, *,
                        oncall_clock: Callable[[], float] | None = None,
                        clock: Callable[[], float] = time.time
                        ) -> AsyncIterator[RunningRelay]:
    """Async wrapper: start and stop the relay thread without blocking the test's loop."""
    cm = relay_in_thread(dsn, settings, oncall_clock=oncall_clock, clock=clock)
    running = await asyncio.to_thread(cm.__enter__)
    try:
        yield running
    finally:
        await asyncio.to_thread(cm.__exit__, None, None, None)


class TcpProxy:
    """Forwards TCP on loopback to ``port`` (the relay, a PACS...) and counts the connections
    opened through it (``opened``: how a client's pool reuses connections, seen from outside).
    On a websocket connection, while ``swallow`` is set, bytes the client writes go nowhere (a
    connection that silently stopped delivering), and while ``hold_down`` is set, bytes the
    server writes wait, in order, until it is cleared (a connection slow to bring the relay's
    frames); :meth:`websockets_down` cuts the websocket connections and refuses new ones
    (plain HTTP still passes) until :meth:`websockets_up`."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.swallow = False
        self.swallowed = 0
        self.hold_down = False
        self.held = 0
        self.opened = 0
        self._released = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._refuse_websockets = False
        self._websockets: set[asyncio.StreamWriter] = set()

    def websockets_down(self) -> None:
        self._refuse_websockets = True
        for writer in self._websockets:
            writer.close()

    def websockets_up(self) -> None:
        self._refuse_websockets = False

    def release(self) -> None:
        """Clear ``hold_down``: what the relay wrote meanwhile goes on to the phone."""
        self.hold_down = False
        self._released.set()

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[str]:
        """The proxy listening; yields its base URL."""
        self._server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            self.release()
            self._server.close()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.opened += 1
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.port)
        websocket = False

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter,
                       from_phone: bool) -> None:
            nonlocal websocket
            with contextlib.suppress(ConnectionError):
                while data := await src.read(65536):
                    if from_phone and b"upgrade: websocket" in data.lower():
                        if self._refuse_websockets:
                            writer.close()  # the phone's upgrade request meets a closed connection
                            break
                        websocket = True
                        self._websockets.add(writer)
                    elif from_phone and websocket and self.swallow:
                        self.swallowed += len(data)
                        continue
                    elif not from_phone and websocket and self.hold_down:
                        self.held += len(data)
                        self._released.clear()
                        await self._released.wait()
                    dst.write(data)
                    await dst.drain()
            dst.close()

        try:
            await asyncio.gather(pipe(reader, up_writer, True), pipe(up_reader, writer, False))
        finally:
            self._websockets.discard(writer)


__all__ = [
    "ROOT",
    "Cluster",
    "RunningRelay",
    "ShiftedClock",
    "TcpProxy",
    "end_session",
    "make_settings",
    "relay_in_thread",
    "running_relay",
    "seconds",
    "session_dir",
    "with_database",
]

