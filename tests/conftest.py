"""Session fixtures: one embedded Postgres for the whole run (stopped in teardown, even when
tests fail), a migrated template database, and a throwaway database per test that needs one.

The suite leaves nothing behind but its caches, which live in .data/cache (pytest's, for
``--lf``, set in pyproject.toml; hypothesis's examples, here): every file a test makes is in
pytest's tmp_path, in the session folder (tests/helpers.py ``session_dir``, removed at the end)
or in a folder its fixture removes. The session ends by checking it: a new entry in .data/ or
at the top of the tree fails the run, naming it.

Under pytest-xdist (``make test`` runs four workers) each worker is a session of its own, with
its own Postgres, session folder, real servers and Chromium, all in fresh folders under .data/;
the check of what is left behind runs once, in the controller, after every worker has ended
and cleaned up."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import asyncpg
import pytest
from hypothesis import settings as hypothesis_settings
from hypothesis.configuration import set_hypothesis_home_dir
from hypothesis.database import DirectoryBasedExampleDatabase

from server import migrations
from server.embedded import EmbeddedPostgres
from tests.browser import SHARED
from tests.fhir_server import (
    FhirServer,
    FhirServerMissing,
    require_fhir_server,
    running_fhir_server,
)
from tests.helpers import (
    ROOT,
    Cluster,
    RunningRelay,
    end_session,
    running_relay,
    with_database,
)
from tests.identity_world import World, identity_world
from tests.orthanc import OrthancMissing, OrthancServer, require_orthanc, running_orthanc

# The suite starts its commands as a terminal's shell does, with SIGINT at its default action,
# so that the Ctrl-C a test sends them reaches them. A runner started in the background
# (`make test &`, `nohup`: a non-interactive shell starts background jobs with SIGINT ignored)
# would otherwise pass that on: an ignored signal stays ignored across fork and execve
# (signal(7)), Python then installs no KeyboardInterrupt handler, and each such test waits out
# its timeout on a command that never heard the Ctrl-C.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

CACHE = ROOT / ".data" / "cache"
# Hypothesis keeps more than its examples (a Unicode table, for one) under its home directory,
# ./.hypothesis unless told otherwise: here, with the other caches.
set_hypothesis_home_dir(str(CACHE / "hypothesis-home"))
hypothesis_settings.register_profile(
    "lightbox", database=DirectoryBasedExampleDatabase(str(CACHE / "hypothesis")))
hypothesis_settings.load_profile("lightbox")

_BEFORE = pytest.StashKey[frozenset[str]]()


def _tree_entries() -> frozenset[str]:
    data = ROOT / ".data"
    found = {p.name for p in ROOT.iterdir()} - {".data"}  # the project's own state folder
    if data.exists():
        found |= {f".data/{p.name}" for p in data.iterdir()}
    # test-artefacts/: what the browser and guide tests save for people to look at (screenshots,
    # each block's output), on purpose; ignored by git, removed by `make clean`.
    return frozenset(found - {".data/cache", "test-artefacts"})


def _in_worker(config: pytest.Config) -> bool:
    """True in a pytest-xdist worker (it has ``workerinput``); false in plain pytest and in
    xdist's controller, the process that sees the whole run."""
    return hasattr(config, "workerinput")


# The files that take longest, each a whole journey of real programs (a minute or more each,
# measured with --durations on 2026-12-06): under xdist they start first, so neither worker is
# left running one of them alone at the end while the other has nothing to do. Only the order
# changes. The Makefile passes --no-loadscope-reorder: by default xdist hands out the files
# with the most tests first, which put the one-test user guide (over two minutes) last.
LONGEST_FIRST = ("tests/test_user_guide.py", "tests/server/test_runner.py",
                 "tests/phone/test_phone_resume_upload.py", "tests/clients/test_cli_failures.py",
                 "tests/test_demo.py", "tests/clients/test_consent_withdraw.py",
                 "tests/server/test_fuzz_api.py", "tests/clients/test_watch_idle.py",
                 "tests/clients/test_desktop_display.py", "tests/server/test_processes.py")


# And the quickest last: files of pure functions (no relay, no database, no browser), each a
# second or less. A worker is handed a whole file at a time, so the run ends when the last
# long file handed out ends, while the other worker has nothing left; with these at the end
# that worker has small files to take meanwhile, one by one, instead of waiting.
QUICKEST_LAST = ("tests/protocol/", "tests/scripts/", "tests/test_docs.py",
                 "tests/test_bench_profile.py", "tests/test_harness.py")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not _in_worker(config):
        return  # one process: the order the files are in

    def rank(item: pytest.Item) -> int:
        path = item.nodeid.split("::", 1)[0]
        if path in LONGEST_FIRST:
            return LONGEST_FIRST.index(path)
        return len(LONGEST_FIRST) + path.startswith(QUICKEST_LAST)

    items.sort(key=rank)  # stable: the rest keep their order


def pytest_sessionstart(session: pytest.Session) -> None:
    if not _in_worker(session.config):  # a worker's siblings' folders come and go
        session.config.stash[_BEFORE] = _tree_entries()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    end_session()
    if _in_worker(session.config):
        return
    before: frozenset[str] = session.config.stash.get(_BEFORE, frozenset())
    left = sorted(_tree_entries() - before)
    if left:
        print(f"\nThe test session left files behind (tests/conftest.py): {', '.join(left)}",
              file=sys.stderr)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(scope="session", autouse=True)
async def _shared_browser() -> AsyncIterator[None]:
    """The browser tests' shared Chromium (tests/browser.py), stopped as the session ends."""
    yield
    await SHARED.close()


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    (ROOT / ".data").mkdir(exist_ok=True)
    data = Path(tempfile.mkdtemp(prefix="test-pg-", dir=ROOT / ".data"))
    pg = EmbeddedPostgres(data)
    try:
        uri = pg.start()
        if os.environ.get("LIGHTBOX_TEST_FSYNC") != "on":
            asyncio.run(_no_fsync(uri))
        template = "lightbox_template"
        asyncio.run(_create_db(uri, template))
        migrations.upgrade(with_database(uri, template))
        yield Cluster(admin_dsn=uri, template=template)
    finally:
        # A SIGKILLed holder would leak the server (NOTES.md): always stop it explicitly.
        pg.stop(mode="immediate")
        shutil.rmtree(data, ignore_errors=True)


async def _no_fsync(uri: str) -> None:
    """The tests' cluster does not flush to the disk (``fsync = off``): what it writes survives
    any process killed in a test, relay or Postgres, in the kernel's cache, and no test can
    cut the machine's power, the only loss it risks. On this machine's disk a flush can stall
    for tens of milliseconds under load (docs/BENCHMARKS.md round 28): measured on 233 relay,
    filing and watch tests on two workers, 89.8 and 94.9 s with flushes, 87.8 and 79.9 s
    without. ``LIGHTBOX_TEST_FSYNC=on`` keeps them. The relay's own durability (``accepted``
    only after COMMIT) is the same either way: it is Postgres's flush, not the relay's, that
    this skips; ``make run`` and the bench keep Postgres's defaults."""
    conn = await asyncpg.connect(uri)
    try:
        await conn.execute("ALTER SYSTEM SET fsync = off")
        await conn.execute("SELECT pg_reload_conf()")
    finally:
        await conn.close()


async def _create_db(uri: str, name: str) -> None:
    conn = await asyncpg.connect(uri)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


class _Databases:
    """The tests' fresh databases, each made one test ahead. CREATE DATABASE from the migrated
    template takes the cluster 0.3-0.45 s (measured on 2026-12-06; the same with fsync off or
    STRATEGY FILE_COPY), most of a relay test's set-up: the next test's is made while this one
    runs, after the previous test's is dropped (one at a time: a DROP DATABASE waits for a
    CREATE DATABASE). Only the timing changes: every test still gets a database of its own,
    at the schema's head, that no other test has used, dropped once the test has ended."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.spare: asyncio.Task[str] | None = None
        self.used: list[str] = []  # dropped before the next one is made

    async def _next(self, used: list[str]) -> str:
        for dsn in used:
            await self.cluster.drop_database(dsn)
        return await self.cluster.create_database()

    async def take(self) -> str:
        spare, self.spare = self.spare, None
        used, self.used = self.used, []
        dsn = None
        if spare is not None and spare.get_loop() is asyncio.get_running_loop():
            with contextlib.suppress(Exception):  # made again here, where its error shows
                dsn = await spare
        if dsn is None:
            dsn = await self._next(used)
            used = []
        self.spare = asyncio.get_running_loop().create_task(self._next(used))
        return dsn

    def give_back(self, dsn: str) -> None:
        self.used.append(dsn)

    async def close(self) -> None:
        spare, self.spare = self.spare, None
        if spare is not None and spare.get_loop() is asyncio.get_running_loop():
            with contextlib.suppress(Exception):
                self.used.append(await spare)
        for dsn in self.used:
            await self.cluster.drop_database(dsn)


@pytest.fixture(scope="session")
async def _databases(cluster: Cluster) -> AsyncIterator[_Databases]:
    databases = _Databases(cluster)
    try:
        yield databases
    finally:
        await databases.close()


@pytest.fixture
async def db_dsn(_databases: _Databases) -> AsyncIterator[str]:
    """A fresh database at the schema's head, dropped after the test (with the next one)."""
    dsn = await _databases.take()
    try:
        yield dsn
    finally:
        _databases.give_back(dsn)


@pytest.fixture
async def empty_dsn(cluster: Cluster) -> AsyncIterator[str]:
    """A database with no schema at all (where a hospital restores its relay, or a first
    ``db upgrade`` starts), dropped after the test."""
    dsn = await cluster.create_database(empty=True)
    try:
        yield dsn
    finally:
        await cluster.drop_database(dsn)


@pytest.fixture
async def conn(db_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    """A plain connection to the test's database, for the storage tests."""
    c = await asyncpg.connect(db_dsn)
    try:
        yield c
    finally:
        await c.close()


@pytest.fixture
async def relay(db_dsn: str) -> AsyncIterator[RunningRelay]:
    """A real relay (uvicorn on a loopback port) on a fresh database."""
    async with running_relay(db_dsn) as running:
        yield running


@pytest.fixture
async def world(request: pytest.FixtureRequest, db_dsn: str, tmp_path: Path
                ) -> AsyncIterator[World]:
    """A relay with its organisation (tests/identity_world.py), with the settings of the
    nearest ``world`` mark: ``pytestmark = pytest.mark.world(attachment_chunk_bytes=...)``."""
    mark = request.node.get_closest_marker("world")
    async with identity_world(db_dsn, tmp_path, **(mark.kwargs if mark else {})) as w:
        yield w


def _require(check: Callable[[], object], missing: type[Exception]) -> None:
    """A machine without a real part the tests run fails here with how to install it: never a
    silent skip."""
    try:
        check()
    except missing as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(scope="session")
def fhir_server() -> Iterator[FhirServer]:
    """A real FHIR R4 server on a loopback port (tests/fhir_server.py), stopped in teardown."""
    _require(require_fhir_server, FhirServerMissing)
    with running_fhir_server() as server:
        yield server


@pytest.fixture(scope="session")
def orthanc() -> Iterator[OrthancServer]:
    """A real Orthanc PACS with DICOMweb on a loopback port (tests/orthanc.py), stopped in
    teardown. Tests may ``stop()`` and ``start()`` it; it restarts on the same storage."""
    _require(require_orthanc, OrthancMissing)
    with running_orthanc() as server:
        yield server
