"""The embedded Postgres: a private cluster (pgserver's bundled PostgreSQL 16) for ``make run``
and the tests, so a fresh machine needs nothing installed by hand.

Production sets DATABASE_URL and never uses this. The cluster's data lives under the project
(``.data/pg`` by default): pgserver opens read/traverse permissions on the parent folders when
it runs as root, so it must never live under a private home folder (NOTES.md). A process that
is SIGKILLed leaves its cluster running, so :meth:`EmbeddedPostgres.stop` is called explicitly
by every owner (``lightbox-server`` on exit, the test session's teardown), never left to atexit.
"""

from __future__ import annotations

import logging
import os
import subprocess
import warnings
from pathlib import Path
from types import TracebackType

__all__ = ["EmbeddedPostgres"]

log = logging.getLogger("lightbox.embedded")


class EmbeddedPostgres:
    """Start (or reattach to) a pgserver cluster in ``data_dir``; stop it explicitly."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir.resolve()
        self._server: object | None = None
        self._uri: str | None = None

    def start(self) -> str:
        """Start the cluster if needed and return its connection URI (unix socket)."""
        with warnings.catch_warnings():
            # platformdirs warns at import when XDG_RUNTIME_DIR is unset (as under CI);
            # pgserver only uses that folder for a lock file.
            warnings.simplefilter("ignore")
            import pgserver  # imported lazily: production never needs it

        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        # cleanup_mode=None: we stop it ourselves (see module docstring).
        server = pgserver.get_server(self.data_dir, cleanup_mode=None)  # type: ignore[attr-defined]
        self._server = server
        self._uri = str(server.get_uri())
        log.info("embedded postgres ready", extra={"data_dir": str(self.data_dir)})
        return self._uri

    @property
    def uri(self) -> str:
        if self._uri is None:
            raise RuntimeError("embedded postgres not started")
        return self._uri

    def stop(self, *, mode: str = "fast") -> None:
        """Stop the cluster (``pg_ctl stop -m fast|immediate``); safe to call twice."""
        if self._server is None:
            return
        from pgserver import pg_ctl  # type: ignore[attr-defined]

        user = getattr(self._server, "system_user", None)
        try:
            pg_ctl(["-w", "-m", mode, "stop"], pgdata=self.data_dir, user=user)
        except subprocess.CalledProcessError:
            log.warning("embedded postgres was not running at stop")
        finally:
            handles = self.data_dir / ".handle_pids.json"
            if handles.exists():
                handles.unlink()
            self._server = None
            self._uri = None

    def __enter__(self) -> EmbeddedPostgres:
        self.start()
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def postmaster_pid(data_dir: Path) -> int | None:
    """The pid of a cluster's postmaster, or None when it is not running."""
    pidfile = data_dir / "postmaster.pid"
    try:
        pid = int(pidfile.read_text().splitlines()[0])
    except (OSError, ValueError, IndexError):
        return None
    try:
        os.kill(pid, 0)
    except OSError:
        return None
    return pid
