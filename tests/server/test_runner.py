"""``lightbox-server`` as users run it: a real process, the embedded Postgres, Ctrl-C."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import asyncpg
import httpx
import pytest

from server import runner
from server.embedded import postmaster_pid, running
from tests.helpers import ROOT, Cluster, seconds, session_dir
from tests.identity_world import Org, write_trusted_orgs
from tests.make_run import BIN, made_run, run_command


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env.update(extra)
    return env


async def _wait_ready(url: str, proc: subprocess.Popen[str], timeout: float) -> httpx.Response:
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient() as c:
        while time.monotonic() < deadline:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            try:
                r = await c.get(url + "/readyz")
                if r.status_code == 200:
                    return r
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.1)
    raise TimeoutError("relay not ready")


async def test_refuses_to_start_with_one_line_when_schema_is_not_at_head(cluster: Cluster) -> None:
    conn = await asyncpg.connect(cluster.admin_dsn)
    try:
        await conn.execute('CREATE DATABASE "unmigrated"')
    finally:
        await conn.close()
    try:
        dsn = cluster.admin_dsn.replace("/postgres?", "/unmigrated?")
        proc = await asyncio.to_thread(
            subprocess.run, [sys.executable, "-m", "server", "--port", str(_free_port())],
            cwd=ROOT, env=_env(DATABASE_URL=dsn, LIGHTBOX_DATA_DIR=str(session_dir())),
            capture_output=True, text=True,
            timeout=seconds(60))
        assert proc.returncode == 2
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1, proc.stderr
        assert "schema is at nothing" in lines[0]
        assert "lightbox-server db upgrade" in lines[0]
    finally:
        conn = await asyncpg.connect(cluster.admin_dsn)
        await conn.execute('DROP DATABASE "unmigrated" WITH (FORCE)')
        await conn.close()


async def test_embedded_run_serves_ready_and_ctrl_c_leaves_no_postgres_behind() -> None:
    data = Path(tempfile.mkdtemp(prefix="test-run-", dir=ROOT / ".data"))
    port = _free_port()
    env = _env(LIGHTBOX_DATA_DIR=str(data), PORT=str(port), LOG_LEVEL="warning")
    try:
        for run in range(2):  # the second run reattaches to the same data
            proc = subprocess.Popen([sys.executable, "-m", "server", "--migrate"], cwd=ROOT,
                                    env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    text=True)
            try:
                r = await _wait_ready(f"http://127.0.0.1:{port}", proc, seconds(60))
                assert r.json()["status"] == "ready"
                pid = postmaster_pid(data / "pg")
                assert pid is not None
                conn = await asyncpg.connect(f"postgresql://postgres@/postgres?host={data / 'pg'}")
                try:
                    if run == 0:
                        await conn.execute("CREATE TABLE kept_between_runs (x int)")
                    else:
                        kept = "SELECT to_regclass('kept_between_runs') IS NOT NULL"
                        assert await conn.fetchval(kept)
                finally:
                    await conn.close()
                proc.send_signal(signal.SIGINT)
                out, err = await asyncio.to_thread(proc.communicate, timeout=seconds(30))
            finally:
                if proc.poll() is None:
                    proc.kill()
            assert proc.returncode == 0, err
            assert f"http://127.0.0.1:{port}" in out
            assert "Embedded Postgres stopped." in out
            # The first run says it made a new, empty database (a mistyped data folder would
            # otherwise serve an empty relay in silence); the second found it.
            made = runner.NEW_DATABASE.format(cluster=(data / "pg").resolve())
            assert out.splitlines().count(made) == (1 if run == 0 else 0), out
            # The first run trusts no organisation and says so; the second, its key removed
            # (a restore that left it out), says a new one was made and what that ends.
            untrusting = runner.NO_TRUSTED_ORGS.format(path=(data / "trusted-orgs.json"))
            assert out.splitlines().count(untrusting) == (1 if run == 0 else 0), out
            seed_made = runner.SIGNING_SEED_MADE.format(path=data / "token-key")
            assert out.splitlines().count(seed_made) == run, out
            write_trusted_orgs(data / "trusted-orgs.json", Org("st-example"))
            (data / "token-key").unlink()
            assert postmaster_pid(data / "pg") is None
            deadline = time.monotonic() + seconds(5)
            while time.monotonic() < deadline:
                # gone, or a zombie of its reaped parent (a stopped postmaster may linger so)
                if not running(pid):
                    break
                await asyncio.sleep(0.1)
            else:
                raise AssertionError("postgres still running after Ctrl-C")
    finally:
        pid = postmaster_pid(data / "pg")
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
        shutil.rmtree(data, ignore_errors=True)


@pytest.mark.parametrize(("workers", "sig"), [(1, signal.SIGINT), (2, signal.SIGINT),
                                              (1, signal.SIGTERM), (2, signal.SIGTERM)],
                         ids=["1-ctrl-c", "2-ctrl-c", "1-sigterm", "2-sigterm"])
def test_make_run_exits_0_after_a_clean_shutdown_on_a_signal_to_its_group(
        workers: int, sig: signal.Signals) -> None:
    """Ctrl-C in a terminal is SIGINT to the whole process group: the parent and each worker.
    A clean shutdown is exit status 0 (make then reports no error), and the embedded
    Postgres is stopped."""
    with made_run(workers) as run:
        out, err = run.signal_group(sig)
        assert run.proc.returncode == 0, err
        assert f"({workers} process(es)" in out
        assert "Embedded Postgres stopped." in out, out + err
        assert postmaster_pid(run.data / "pg") is None


@pytest.mark.parametrize("workers", [1, 2])
def test_ctrl_c_while_the_workers_start_still_exits_0_after_a_clean_shutdown(
        workers: int) -> None:
    with made_run(workers, ready=False) as run:
        announced = run.wait_announced()
        out, err = run.signal_group(signal.SIGINT)
        assert run.proc.returncode == 0, err
        assert "Embedded Postgres stopped." in announced + out, out + err
        assert postmaster_pid(run.data / "pg") is None


# The relay's own entry point, with a Ctrl-C provoked at a given step and delivered while a
# weakref callback runs: the interpreter prints and drops the KeyboardInterrupt the handler
# raises there ("Exception ignored in: <function WeakSet...>", as seen once in CI).
_DROPPED_INTERRUPT = """
import os, signal, sys, time, weakref
from server import __main__ as server_main, runner

class Thing:
    pass

def ctrl_c_in_a_weakref_callback(ref):
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(1)  # the handler runs here, inside the callback

def wrap(step):
    def provoked(*args, **kwargs):
        thing = Thing()
        ref = weakref.ref(thing, ctrl_c_in_a_weakref_callback)
        del thing
        assert runner._stop_asked.is_set()
        print("interrupt dropped", flush=True)
        return step(*args, **kwargs)
    return provoked

step = sys.argv.pop(1)
setattr(runner, step, wrap(getattr(runner, step)))
sys.exit(server_main.main(sys.argv[1:]))
"""


@pytest.mark.parametrize(("workers", "step"), [(1, "serve"), (2, "_run_workers")])
def test_a_ctrl_c_whose_interrupt_the_interpreter_dropped_still_stops_the_relay(
        workers: int, step: str) -> None:
    """A Ctrl-C that arrives while a garbage collection runs a weakref callback still shuts the
    relay down cleanly (exit 0, Postgres stopped), without printing a traceback."""
    with made_run(workers, ready=False,
                  program=[sys.executable, "-c", _DROPPED_INTERRUPT, step]) as run:
        out, err = run.proc.communicate(timeout=seconds(60))
        assert "interrupt dropped" in out, out + err
        assert run.proc.returncode == 0, err
        assert "Embedded Postgres stopped." in out, out + err
        assert "Traceback" not in err, err
        assert postmaster_pid(run.data / "pg") is None


def test_a_relay_removes_the_metrics_directories_of_relays_killed_before_their_clean_up(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A relay of several processes keeps its metrics in a private temporary directory named
    after it, removed when it stops; one SIGKILLed never removes it. The next relay removes
    those whose relay is gone, and keeps a running relay's and anything else."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    dead = subprocess.Popen(["true"])
    dead.wait()
    alive = subprocess.Popen(["sleep", "60"])
    try:
        orphan = tmp_path / f"lightbox-metrics-{dead.pid}-x1"
        running = tmp_path / f"lightbox-metrics-{alive.pid}-x2"
        unrelated = tmp_path / "lightbox-metrics-notes"
        for d in (orphan, running, unrelated):
            d.mkdir()
            (d / "counter_1.db").write_bytes(b"")
        with runner._shared_metrics() as path:
            mine = Path(path)
            assert mine.parent == tmp_path
            assert mine.name.startswith(f"lightbox-metrics-{os.getpid()}-")
            assert not orphan.exists()
            assert running.exists() and unrelated.exists()
        assert not mine.exists()  # its own, removed as it stops
    finally:
        alive.kill()
        alive.wait()


@pytest.mark.parametrize("workers", [1, 2])
def test_a_second_relay_on_a_taken_port_says_so_and_leaves_the_first_serving(
        workers: int) -> None:
    """Started again while one runs (found following the guide by hand): it printed "Lightbox
    relay on ... Ctrl-C stops it." and then a JSON log line "[Errno 98] ... address already
    in use", exit status 3. Now one sentence before any banner, exit 2; the first relay and
    its database are untouched."""
    with made_run(1) as first:
        second = run_command([str(BIN / "lightbox-server"), "--migrate", "--host", "127.0.0.1",
                              "--port", str(first.port), "--workers", str(workers)],
                             first.env)
        assert second.returncode == 2, second.stdout + second.stderr
        assert "Lightbox relay on" not in second.stdout
        assert second.stderr.splitlines()[-1] == (
            f"lightbox-server: cannot listen on 127.0.0.1:{first.port}: Address already in use "
            "(is a relay already running there? stop it, or give another --port)")
        assert "Traceback" not in second.stderr
        assert httpx.get(first.url + "/readyz", timeout=seconds(5)).status_code == 200
