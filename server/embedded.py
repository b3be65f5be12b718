"""The embedded Postgres: a private cluster (pgserver's bundled PostgreSQL 16) for ``make run``
and the tests, so a fresh machine needs nothing installed by hand.

Production sets DATABASE_URL and never uses this. The cluster's data lives under the project
(``.data/pg`` by default): pgserver opens read/traverse permissions on the parent folders when
it runs as root, so it must never live under a private home folder (NOTES.md).

Several processes use one cluster at once: the relay (``lightbox-server``) and the relay-host
commands run beside it (``lightbox-server db upgrade``, ``admin create``, ``audit verify``...).
So every :class:`EmbeddedPostgres` registers itself as a *holder* of the cluster in
``<data_dir>/lightbox-holders.json`` (process id, that process's start time and a token of its
own) when it starts or attaches, and :meth:`EmbeddedPostgres.stop` stops the cluster only when
no other live holder is left: a command never stops the relay's database under it, and the
last one out stops it, whoever started it. A holder whose process has died (SIGKILL) no longer
counts, so the next one to leave stops a cluster such a process left running. Registration is
serialised by an exclusive ``flock`` on the data directory's parent folder. ``stop`` is called
explicitly by every holder (``lightbox-server`` on exit, the test session's teardown), never
left to atexit.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import pwd
import re
import secrets
import subprocess
import warnings
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

__all__ = ["HOLDERS_FILE", "EmbeddedError", "EmbeddedPostgres", "postmaster_pid", "running"]

log = logging.getLogger("lightbox.embedded")

HOLDERS_FILE = "lightbox-holders.json"


class EmbeddedError(RuntimeError):
    """The embedded cluster could not be made or started; the message says where to look."""


class EmbeddedPostgres:
    """Start (or attach to) a pgserver cluster in ``data_dir``; leave it with :meth:`stop`."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir.resolve()
        self._server: Any = None
        self._uri: str | None = None
        self._token = secrets.token_hex(8)

    def start(self) -> str:
        """Start the cluster if needed, register as one of its holders, and return its
        connection URI (unix socket)."""
        with warnings.catch_warnings():
            # platformdirs warns at import when XDG_RUNTIME_DIR is unset (as under CI);
            # pgserver only uses that folder for a lock file.
            warnings.simplefilter("ignore")
            import pgserver  # imported lazily: production never needs it

        self.data_dir.mkdir(parents=True, exist_ok=True)
        with self._locked():
            # The constructor, not get_server(): get_server() caches a handle per process,
            # which would hand back a stale one after this process stopped the cluster.
            # cleanup_mode=None: stopping is ours (see the module docstring).
            heard = _Heard()
            quiet = logging.getLogger("pgserver")
            quiet.addFilter(heard)  # its failures are said in one sentence below, not dumped
            try:
                server = pgserver.PostgresServer(  # type: ignore[attr-defined]
                    self.data_dir, cleanup_mode=None)
            except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
                raise EmbeddedError(_not_started(self.data_dir, heard.errors)) from exc
            finally:
                quiet.removeFilter(heard)
            holders = [h for h in self._holders() if _alive(h)]
            holders.append(_me(self._token))
            self._write_holders(holders)
        self._server = server
        self._uri = str(server.get_uri())
        log.info("embedded postgres ready", extra={"data_dir": str(self.data_dir)})
        return self._uri

    @property
    def started(self) -> bool:
        """Whether this handle holds the cluster (between start and stop)."""
        return self._server is not None

    @property
    def uri(self) -> str:
        if self._uri is None:
            raise RuntimeError("embedded postgres not started")
        return self._uri

    def stop(self, *, mode: str = "fast") -> bool:
        """Leave the cluster, and stop it (``pg_ctl stop -m fast|immediate``) when no other
        live process holds it. Returns whether it was stopped; safe to call twice."""
        if self._server is None:
            return False
        from pgserver import pg_ctl  # type: ignore[attr-defined]

        user = getattr(self._server, "system_user", None)
        self._server = None
        self._uri = None
        with self._locked():
            others = [h for h in self._holders() if h.get("token") != self._token and _alive(h)]
            self._write_holders(others)
            if others:
                log.info("embedded postgres left running for its other holders",
                         extra={"data_dir": str(self.data_dir), "holders": len(others)})
                return False
            try:
                pg_ctl(["-w", "-m", mode, "stop"], pgdata=self.data_dir, user=user)
            except subprocess.CalledProcessError:
                log.warning("embedded postgres was not running at stop")
            handles = self.data_dir / ".handle_pids.json"  # pgserver's own list
            handles.unlink(missing_ok=True)
        return True

    def __enter__(self) -> EmbeddedPostgres:
        self.start()
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        fd = os.open(self.data_dir.parent, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    def _holders(self) -> list[dict[str, Any]]:
        try:
            raw = json.loads((self.data_dir / HOLDERS_FILE).read_text())
        except (OSError, ValueError):
            return []
        return [h for h in raw if isinstance(h, dict)] if isinstance(raw, list) else []

    def _write_holders(self, holders: list[dict[str, Any]]) -> None:
        path = self.data_dir / HOLDERS_FILE
        if not holders:
            path.unlink(missing_ok=True)
            return
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(holders))
        tmp.replace(path)


class _Heard(logging.Filter):
    """Keeps pgserver's error records (the commands it ran, their output, the server's log)
    instead of letting them through: a person reads one sentence (:func:`_not_started`)."""

    def __init__(self) -> None:
        super().__init__()
        self.errors: list[str] = []

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.ERROR:
            return True
        self.errors.append(record.getMessage())
        return False


def _not_started(data_dir: Path, errors: list[str]) -> str:
    """Why the cluster did not start, in one sentence. A folder its server cannot write is
    told with the user that must own it: pgserver runs PostgreSQL as ``pgserver`` when
    started by root (PostgreSQL refuses to run as root), else as the user itself."""
    said = f"the embedded Postgres in {data_dir} did not start"
    denied = [line for e in errors for line in e.splitlines() if "Permission denied" in line]
    if denied:
        runs_as = "pgserver" if os.geteuid() == 0 else _user_name(os.geteuid())
        # The first file of the folder named where it was refused (the server's log, a file
        # of the cluster's), and who owns it.
        named = re.search(re.escape(str(data_dir)) + r"[^\s:\"']*", denied[0])
        where = Path(named[0]) if named else data_dir
        try:
            owner = f"{where} belongs to {_user_name(where.stat().st_uid)}"
        except OSError:
            owner = f"{where} cannot be read"
        return (f"{said}: {runs_as}, the user PostgreSQL runs as, may not write in it ({owner}): "
                f"give the folder back with `chown -R {runs_as} {data_dir}`, or set "
                "LIGHTBOX_DATA_DIR to a folder of the relay's own")
    return f"{said} (its log: {data_dir / 'log'})"


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (proc(5), field 22), which tells a
    live holder from a later process that reuses a dead holder's id; None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return fields[19] if fields[0] != "Z" else None


def running(pid: int) -> bool:
    """Whether process ``pid`` runs: it exists and is no zombie (killed, not yet reaped by its
    parent; proc(5))."""
    return _start_time(pid) is not None


def _me(token: str) -> dict[str, Any]:
    pid = os.getpid()
    return {"pid": pid, "started": _start_time(pid), "token": token}


def _alive(holder: dict[str, Any]) -> bool:
    pid, started = holder.get("pid"), holder.get("started")
    return isinstance(pid, int) and started is not None and _start_time(pid) == started


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
