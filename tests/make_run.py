"""The relay as ``make run`` starts it: the ``lightbox-server`` console script from the
project's environment, ``--migrate --host --port --workers``, on the embedded Postgres in a
fresh ``LIGHTBOX_DATA_DIR`` under .data/, in its own process group (as a terminal runs it, so
that Ctrl-C is SIGINT to the whole group). Always stopped, any cluster it left killed, and the
folder removed afterwards. IT's relay-host commands run beside it with :func:`run_command`, or
:func:`beside`, which also checks that the relay answers ``/readyz`` throughout."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import httpx

from server.embedded import postmaster_pid
from tests.helpers import ROOT, seconds

__all__ = ["BIN", "MadeRun", "ReadyzWatch", "beside", "data_folder", "made_run", "relay_host_env",
           "run_command"]

BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def relay_host_env(data: Path, **extra: str) -> dict[str, str]:
    """The environment of a shell on the relay host: no DATABASE_URL, the given data folder."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("LIGHTBOX_") and k != "DATABASE_URL"}
    env.update(LIGHTBOX_DATA_DIR=str(data), LOG_LEVEL="warning",
               LIGHTBOX_ARGON2_PROFILE="cheap", **extra)
    return env


class MadeRun:
    """One ``lightbox-server`` process and its data folder. ``program``: what is run instead
    of the console script, given the same arguments (its entry point, instrumented)."""

    def __init__(self, data: Path, workers: int, program: Sequence[str] | None = None) -> None:
        self.data = data
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = relay_host_env(data)
        self.proc = subprocess.Popen(
            [*(program or [str(BIN / "lightbox-server")]), "--migrate", "--host", "127.0.0.1",
             "--port", str(self.port), "--workers", str(workers)],
            cwd=ROOT, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            start_new_session=True)

    def wait_ready(self) -> None:
        deadline = time.monotonic() + seconds(60)
        with httpx.Client(timeout=seconds(5)) as c:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    out, err = self.proc.communicate()
                    raise AssertionError(f"lightbox-server exited {self.proc.returncode}:\n"
                                         f"{out}\n{err}")
                with contextlib.suppress(httpx.TransportError):
                    if c.get(self.url + "/readyz").status_code == 200:
                        return
                time.sleep(0.05)
        raise TimeoutError("the relay was not ready")

    def wait_announced(self) -> str:
        """Until it prints its URL (the workers are being started then); that line."""
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert "Ctrl-C stops it" in line, line + self.proc.communicate()[1]
        return line

    def signal_group(self, sig: int) -> tuple[str, str]:
        """Send ``sig`` to the whole process group, as a terminal does; its output."""
        os.killpg(self.proc.pid, sig)
        return self.proc.communicate(timeout=seconds(60))

    def close(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.communicate(timeout=seconds(10))


@contextlib.contextmanager
def data_folder() -> Iterator[Path]:
    """A fresh LIGHTBOX_DATA_DIR under .data/; any cluster left in it killed, then removed."""
    (ROOT / ".data").mkdir(exist_ok=True)
    data = Path(tempfile.mkdtemp(prefix="test-run-", dir=ROOT / ".data"))
    try:
        yield data
    finally:
        pid = postmaster_pid(data / "pg")
        if pid is not None:  # a SIGKILLed holder leaves the cluster running (NOTES.md)
            os.kill(pid, signal.SIGKILL)
        shutil.rmtree(data, ignore_errors=True)


@contextlib.contextmanager
def made_run(workers: int = 1, *, ready: bool = True, program: Sequence[str] | None = None
             ) -> Iterator[MadeRun]:
    """``make run WORKERS=workers``, ready (or just started); killed (group) afterwards if
    still running."""
    with data_folder() as data:
        run = MadeRun(data, workers, program)
        try:
            if ready:
                run.wait_ready()
            yield run
        finally:
            run.close()


def run_command(argv: Sequence[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """A command as a person runs it on the relay host (no terminal: secrets from env)."""
    return subprocess.run(list(argv), cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=seconds(60), stdin=subprocess.DEVNULL)


class ReadyzWatch:
    """Polls ``/readyz`` in a thread and keeps every status that was not 200."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.polls = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(timeout=seconds(5)) as c:
            while not self._stop.is_set():
                try:
                    r = c.get(self.url + "/readyz")
                    if r.status_code != 200:
                        self.failures.append(f"{r.status_code} {r.text[:200]}")
                except httpx.HTTPError as exc:
                    self.failures.append(repr(exc))
                self.polls += 1
                self._stop.wait(0.02)

    def __enter__(self) -> ReadyzWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(seconds(10))


def beside(url: str, argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """A command that must succeed while the relay at ``url`` answers ``/readyz`` 200."""
    with ReadyzWatch(url) as watch:
        done = run_command(argv, env)
        assert done.returncode == 0, done.stdout + done.stderr
        after = httpx.get(url + "/readyz", timeout=seconds(5))
    assert watch.polls > 0 and watch.failures == [], (argv[1:], watch.failures)
    assert after.status_code == 200, (argv[1:], after.text)
    return done
