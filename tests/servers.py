"""Real third-party servers the tests run as their own processes (tests/orthanc.py, the PACS;
tests/fhir_server.py, the FHIR server): start one, wait until it answers, stop it (SIGTERM,
then SIGKILL), show its log when it fails, and keep its files in a fresh folder under .data/
that is removed afterwards."""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

import httpx

from tests.helpers import ROOT, seconds

__all__ = ["ServerProcess", "free_port", "running_in_data_dir"]


def free_port() -> int:
    """A TCP port free on every interface (some servers bind them all)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return int(s.getsockname()[1])


class ServerProcess:
    """One server process; subclasses say how to start it and when it is ready."""

    name = "the server"

    def __init__(self, workdir: Path, log_name: str) -> None:
        self.workdir = workdir
        self._log = workdir / log_name
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _launch(self, argv: Sequence[str], *, ready_url: str, client: httpx.Client,
                timeout: float, env: Mapping[str, str] | None = None) -> None:
        """Start ``argv`` (output to the log) and wait until ``ready_url`` answers 200."""
        log = self._log.open("ab")
        try:
            self._proc = subprocess.Popen(list(argv), stdout=log, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL, cwd=self.workdir, env=env)
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        with client:
            while True:
                if self._proc.poll() is not None:
                    code = self._proc.returncode
                    self._proc = None
                    raise RuntimeError(f"{self.name} exited with {code} while starting; "
                                       f"log tail:\n{self.log_tail()}")
                with contextlib.suppress(httpx.TransportError):
                    if client.get(ready_url).status_code == 200:
                        return
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"{self.name} was not ready in time; log tail:\n"
                                       f"{self.log_tail()}")
                time.sleep(0.05)

    def stop(self, *, timeout: float | None = None) -> None:
        """SIGTERM, then SIGKILL if it has not exited in time. Safe to call when stopped."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout if timeout is not None else seconds(10))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(seconds(10))

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self._log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


S = TypeVar("S", bound=ServerProcess)


@contextlib.contextmanager
def running_in_data_dir(prefix: str, make: Callable[[Path], S],
                        start: Callable[[S], None]) -> Iterator[S]:
    """``make(folder)`` in a fresh folder under .data/, started; always stopped and the
    folder removed afterwards."""
    (ROOT / ".data").mkdir(exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix=prefix, dir=ROOT / ".data"))
    server: S | None = None
    try:
        server = make(workdir)
        start(server)
        yield server
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
