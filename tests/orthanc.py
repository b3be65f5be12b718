"""A real Orthanc PACS for the record gateway's tests (NOTES.md, "Orthanc").

Debian's ``orthanc`` and ``orthanc-dicomweb`` packages (``make system-deps``). Each
:class:`OrthancServer` gets its own temporary storage and index folders, a free loopback HTTP
port, the DICOM port off, remote access off, HTTP basic authentication on with a random user, and
the DICOMweb plugin enabled. ``DicomWeb.Host`` stays unset: set, the plugin writes that host into
every RetrieveURL and the port is lost.

Orthanc 1.10 has no bind-address option: it listens on every interface and refuses non-local
clients because ``RemoteAccessAllowed`` is false.

:meth:`OrthancServer.stop` and :meth:`OrthancServer.start` let a test take the PACS away mid-way
and bring it back on the same port and the same storage.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from tests.helpers import ROOT, seconds

__all__ = ["DICOMWEB_PLUGIN", "OrthancMissing", "OrthancServer", "require_orthanc",
           "running_orthanc"]

BINARY = "Orthanc"
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
INSTALL_HINT = (
    "the record gateway's tests need a real Orthanc with its DICOMweb plugin (Debian packages "
    "orthanc and orthanc-dicomweb); install them with `make system-deps` (as root), which runs "
    "`.ci/system-deps orthanc orthanc-dicomweb`"
)


class OrthancMissing(RuntimeError):
    """The Orthanc binary or its DICOMweb plugin is not installed."""


def require_orthanc() -> str:
    """The Orthanc binary's path; :class:`OrthancMissing` (saying how to install) if absent."""
    binary = shutil.which(BINARY)
    if binary is None:
        raise OrthancMissing(f"`{BINARY}` is not on PATH: {INSTALL_HINT}")
    if not DICOMWEB_PLUGIN.exists():
        raise OrthancMissing(f"{DICOMWEB_PLUGIN} is missing: {INSTALL_HINT}")
    return binary


def _free_port() -> int:
    # Orthanc binds every interface, so ask for a port that is free on all of them.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return int(s.getsockname()[1])


class OrthancServer:
    """One Orthanc process on a loopback port; start, stop and start again on the same data."""

    def __init__(self, workdir: Path, *, port: int | None = None) -> None:
        self.binary = require_orthanc()
        self.workdir = workdir
        self.port = port or _free_port()
        self.username = "lbx-test-" + secrets.token_hex(4)
        self.password = secrets.token_urlsafe(24)
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: Path = workdir / "orthanc.log"
        self.config_path = workdir / "orthanc.json"
        self._write_config()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def dicomweb_url(self) -> str:
        """The DICOMweb root (QIDO-RS, WADO-RS and STOW-RS live under it)."""
        return f"{self.base_url}/dicom-web"

    @property
    def auth(self) -> tuple[str, str]:
        return (self.username, self.password)

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _write_config(self) -> None:
        storage = self.workdir / "storage"
        index = self.workdir / "index"
        storage.mkdir(exist_ok=True)
        index.mkdir(exist_ok=True)
        config = {
            "Name": "LIGHTBOX-TEST",
            "StorageDirectory": str(storage),
            "IndexDirectory": str(index),
            "StorageCompression": False,
            "HttpServerEnabled": True,
            "HttpPort": self.port,
            "HttpThreadsCount": 8,
            "HttpDescribeErrors": True,
            "DicomServerEnabled": False,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": True,
            "RegisteredUsers": {self.username: self.password},
            "ConcurrentJobs": 1,
            "SaveJobs": False,
            "OverwriteInstances": False,
            "ExecuteLuaEnabled": False,
            "Plugins": [str(DICOMWEB_PLUGIN)],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": False},
        }
        self.config_path.write_text(json.dumps(config, indent=2))
        self.config_path.chmod(0o600)

    def start(self, *, timeout: float | None = None) -> None:
        """Start Orthanc and wait until its REST API answers an authenticated request."""
        if self.running:
            return
        log = self._log.open("ab")
        try:
            self._proc = subprocess.Popen(
                [self.binary, str(self.config_path)],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                cwd=self.workdir,
            )
        finally:
            log.close()
        deadline = time.monotonic() + (timeout if timeout is not None else seconds(20))
        with httpx.Client(auth=self.auth, timeout=seconds(2)) as client:
            while True:
                if self._proc.poll() is not None:
                    code = self._proc.returncode
                    self._proc = None
                    raise RuntimeError(
                        f"Orthanc exited with {code} while starting; log tail:\n{self.log_tail()}"
                    )
                with contextlib.suppress(httpx.TransportError):
                    if client.get(f"{self.base_url}/system").status_code == 200:
                        return
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"Orthanc not ready in time; log tail:\n{self.log_tail()}")
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


@contextlib.contextmanager
def running_orthanc() -> Iterator[OrthancServer]:
    """An Orthanc in a fresh folder under .data/, always stopped and removed afterwards."""
    (ROOT / ".data").mkdir(exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="test-orthanc-", dir=ROOT / ".data"))
    server: OrthancServer | None = None
    try:
        server = OrthancServer(workdir)
        server.start()
        yield server
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
