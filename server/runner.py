"""``lightbox-server`` with no command: start the relay (what ``make run`` calls). Its arguments
are parsed in server/__main__.py, which runs the relay host's commands (``db upgrade``, ``admin
create``, ``org trust``, ``audit verify|head``: server/manage.py) without importing this module.

With DATABASE_URL unset it starts the embedded Postgres in ``$LIGHTBOX_DATA_DIR/pg`` and stops
it on exit, even after Ctrl-C. It refuses to start, with one line of explanation, when the
schema is not at head, unless ``--migrate`` is given (``make run`` passes it). With
``--workers N`` the parent binds the port once and N relay processes share it (they coordinate
through Postgres only, docs/OPERATIONS.md "Scale-out"). SIGINT (Ctrl-C, which a terminal sends
to every process of the group) or SIGTERM asks for a graceful shutdown, after which it exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import asyncpg
import uvicorn
from prometheus_client.multiprocess import mark_process_dead

from server import migrations
from server.embedded import EmbeddedError, EmbeddedPostgres
from server.gcwatch import YOUNG_THRESHOLD, PauseWatch, freeze_start_up
from server.logs import configure_logging
from server.metrics import SHARED_DIR
from server.settings import Settings, SettingsError, load_settings
from server.tokens import ensure_token_key

if TYPE_CHECKING:
    from server.app import Relay

__all__ = ["RelayServer", "serve", "serve_main"]

log = logging.getLogger("lightbox.runner")

_SHUTDOWN_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class RelayServer(uvicorn.Server):
    """uvicorn's server, closing our websockets with 1001 before uvicorn's own shutdown
    (which would otherwise close them with 1012)."""

    def __init__(self, config: uvicorn.Config, relay: Relay, *,
                 freeze_after_start: bool = False) -> None:
        super().__init__(config)
        self.relay = relay
        self.freeze_after_start = freeze_after_start

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        """uvicorn's (the lifespan, then the listening sockets); then, in a relay process,
        everything start-up made is frozen, so that no garbage collection walks it again, and
        the young generation is collected less often (server/gcwatch.py)."""
        await super().startup(sockets)
        if self.started and self.freeze_after_start:
            log.info("start-up objects frozen", extra={
                "count": freeze_start_up(), "young_threshold": YOUNG_THRESHOLD})

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        await self.relay.hub.close_all(1001)
        await super().shutdown(sockets)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """uvicorn's, less the re-raise of the signal after the graceful shutdown: that would
        end the process *by* SIGTERM (exit status -15, which make reports as "Error 241"; a
        worker gets SIGTERM from its parent after Ctrl-C) and skip the caller's cleanup, such
        as stopping the embedded Postgres. Here a signal only asks for the shutdown."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in _SHUTDOWN_SIGNALS}
        if _stop_asked.is_set():  # a signal came before, its KeyboardInterrupt was dropped
            self.handle_exit(signal.SIGTERM, None)
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def uvicorn_config(relay: Relay, settings: Settings, **kw: Any) -> uvicorn.Config:
    return uvicorn.Config(
        relay.app,
        host=settings.host,
        port=settings.port,
        lifespan="on",
        log_config=None,
        access_log=False,
        server_header=False,
        # uvicorn would rewrite the client address from X-Forwarded-For for connections from
        # its forwarded_allow_ips (127.0.0.1 by default), before our middleware could decide:
        # client addresses are ours alone, as LIGHTBOX_TRUSTED_PROXY_HOPS and
        # LIGHTBOX_TRUSTED_PROXIES say (server/middleware.py client_address).
        proxy_headers=False,
        ws="websockets-sansio",
        # Frames over the limit close the socket with 1009 (RFC 6455 §7.4.1) before we parse
        # them; protocol pings are ours (frames), so uvicorn's own are off.
        ws_max_size=settings.ws_max_frame,
        ws_ping_interval=None,
        ws_ping_timeout=None,
        # No permessage-deflate (RFC 7692), though every browser offers it: the relay answers
        # the handshake without the extension, so none is in use (RFC 6455 §9.1). What a
        # connection carries is ciphertext, which does not compress, and deflating it cost
        # the relay 276 µs of CPU per message instead of about 160, and each connection
        # 77.5 KiB instead of 34 (two zlib contexts kept for its lifetime; docs/BENCHMARKS.md,
        # round 20). It also keeps the access token out of a compression context shared with
        # later data, the CRIME/BREACH class of attack on compressed, then encrypted traffic.
        ws_per_message_deflate=False,
        # The parser's own header limit must sit above ours so that our middleware answers
        # an oversize header set with a problem+json 431 rather than the parser's bare 400.
        h11_max_incomplete_event_size=settings.max_header_bytes * 4,
        timeout_graceful_shutdown=int(settings.shutdown_grace),
        **kw,
    )


def serve(settings: Settings, dsn: str, sock: socket.socket | None = None) -> None:
    """Run one relay process until SIGINT/SIGTERM."""
    configure_logging(settings.log_level)
    # Imported here: the relay-host commands (``db upgrade``, ``scim token issue``, ...) never
    # need the application, and importing it (the SCIM schema most of all) was most of their
    # start-up time.
    from server.app import create_app

    relay = create_app(settings, dsn=dsn)
    relay.metrics.add_per_process(PauseWatch().install())
    server = RelayServer(uvicorn_config(relay, settings), relay, freeze_after_start=True)
    server.run(sockets=[sock] if sock is not None else None)
    if not server.started:
        sys.exit(3)


def _worker(settings: Settings, dsn: str, sock: socket.socket, stopping: Any) -> None:
    """One relay process of ``--workers N``. Ctrl-C reaches every process of the group, and
    one that came while this process was still importing would end it by the signal, so it
    starts with SIGINT and SIGTERM ignored and blocked (inherited from the parent). Once it can
    shut down cleanly it takes them (a pending one now raises KeyboardInterrupt), and checks
    whether the parent already asked it to stop (the parent sets ``stopping`` before it
    signals, so a signal lost while ignored is not missed)."""
    _take_signals()
    try:
        with contextlib.suppress(KeyboardInterrupt):
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _SHUTDOWN_SIGNALS)
            if not stopping.is_set():
                serve(settings, dsn, sock)
    finally:
        # Shut down: a later signal (the parent forwards the group's Ctrl-C or SIGTERM, and
        # may do so after this process has finished) must not end it while the interpreter
        # finalises, which restores the default actions (death by the signal, exit 128 + N).
        # Blocked, it stays pending until the process has exited.
        signal.pthread_sigmask(signal.SIG_BLOCK, _SHUTDOWN_SIGNALS)


async def _check_or_migrate(dsn: str, migrate: bool) -> str | None:
    """Apply migrations or check the schema; return an error line, or None when at head."""
    if migrate:
        await migrations.upgrade_async(dsn)
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        await migrations.ensure_at_head(conn)
    except migrations.SchemaNotAtHead as exc:
        return str(exc)
    finally:
        await conn.close()
    return None


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


@contextlib.contextmanager
def _shared_metrics() -> Iterator[str]:
    """The directory the workers keep their metrics in, so that a scrape answered by any of
    them reports the whole relay (server/metrics.py). The operator's ``PROMETHEUS_MULTIPROC_DIR``
    if set (emptied of an earlier run's files, prometheus_client's documented start-up step),
    else a private one removed at exit."""
    given = os.environ.get(SHARED_DIR)
    if given is None:
        _remove_orphaned_metrics(Path(tempfile.gettempdir()))
    path = given or tempfile.mkdtemp(prefix=f"{_METRICS_PREFIX}{os.getpid()}-")
    for stale in Path(path).glob("*.db"):
        stale.unlink()
    os.environ[SHARED_DIR] = path  # the spawned workers inherit it
    try:
        yield path
    finally:
        if given is None:
            shutil.rmtree(path, ignore_errors=True)
            os.environ.pop(SHARED_DIR, None)


_METRICS_PREFIX = "lightbox-metrics-"


def _remove_orphaned_metrics(tmp: Path) -> None:
    """Remove the private metrics directories of relays that ended without their clean-up (a
    SIGKILL, a power cut): those named after a process that no longer exists, and owned by
    this user. A directory whose process is alive, or whose name this does not make, stays."""
    for orphan in tmp.glob(f"{_METRICS_PREFIX}*-*"):
        pid = orphan.name[len(_METRICS_PREFIX):].split("-", 1)[0]
        try:
            if not pid.isdigit() or orphan.stat().st_uid != os.getuid() \
                    or not orphan.is_dir():
                continue
            os.kill(int(pid), 0)  # signal 0: only whether the process exists (kill(2))
        except ProcessLookupError:
            shutil.rmtree(orphan, ignore_errors=True)
        except OSError:  # alive under another user (EPERM), or the directory just went
            continue


def _run_workers(settings: Settings, dsn: str, sock: socket.socket) -> int:
    with _shared_metrics() as metrics_dir:
        return _serve_workers(settings, dsn, metrics_dir, sock)


def _serve_workers(settings: Settings, dsn: str, metrics_dir: str,
                   sock: socket.socket) -> int:
    ctx = multiprocessing.get_context("spawn")
    stopping = ctx.Event()
    procs = [ctx.Process(target=_worker, args=(settings, dsn, sock, stopping),
                         name=f"relay-{i}") for i in range(settings.workers)]

    def forward(signum: int, frame: Any) -> None:
        stopping.set()
        for p in procs:
            if p.pid is not None and p.is_alive():
                os.kill(p.pid, signal.SIGTERM)

    # The workers inherit both signals ignored and blocked (see _worker). Blocked, a signal that
    # reaches this process meanwhile is kept pending (a blocked signal is not discarded as
    # ignored, signal(7)) and forwarded once the handler is in place.
    signal.pthread_sigmask(signal.SIG_BLOCK, _SHUTDOWN_SIGNALS)
    try:
        for sig in _SHUTDOWN_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)
        for p in procs:
            p.start()
        for sig in _SHUTDOWN_SIGNALS:
            signal.signal(sig, forward)
        if _stop_asked.is_set():  # a signal came before, its KeyboardInterrupt was dropped
            forward(signal.SIGTERM, None)
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _SHUTDOWN_SIGNALS)
    for p in procs:
        p.join()
        if p.pid is not None:  # its live gauges (connections) no longer count
            mark_process_dead(p.pid, metrics_dir)  # type: ignore[no-untyped-call]
    sock.close()
    return _exit_status([p.exitcode or 0 for p in procs])


def _exit_status(codes: Sequence[int]) -> int:
    """0 when every worker exited 0; else the first failure, a death by signal N as 128 + N
    (the shell's convention) rather than a negative number."""
    for code in codes:
        if code:
            return 128 - code if code < 0 else code
    return 0


# Set by the first SIGINT or SIGTERM that reached _take_signals' handler (per process).
_stop_asked = threading.Event()


def _interrupt_once(signum: int, frame: Any) -> None:
    """SIGINT and SIGTERM until uvicorn takes them: raise KeyboardInterrupt once, so that a
    second signal (Ctrl-C, then the parent's SIGTERM) cannot interrupt the unwinding of the
    first. The request is also recorded in ``_stop_asked``: a handler runs wherever the main
    thread happens to be, and an exception raised while it runs a weakref callback or a
    ``__del__`` (a garbage collection, at any allocation) is printed as "Exception ignored"
    and dropped by the interpreter (Python reference, "Data model", ``__del__``). Every step
    that would then wait for a signal already spent checks the record instead:
    RelayServer.capture_signals and _run_workers."""
    if not _stop_asked.is_set():
        _stop_asked.set()
        raise KeyboardInterrupt


def _quiet_dropped_interrupt(unraisable: Any) -> None:
    """sys.unraisablehook: a KeyboardInterrupt of _interrupt_once that the interpreter dropped
    is not news to the person who pressed Ctrl-C (its request is recorded), so it is not
    printed as a traceback; anything else is, as by default."""
    if isinstance(unraisable.exc_value, KeyboardInterrupt) and _stop_asked.is_set():
        return
    sys.__unraisablehook__(unraisable)


def _take_signals() -> None:
    sys.unraisablehook = _quiet_dropped_interrupt
    for sig in _SHUTDOWN_SIGNALS:
        signal.signal(sig, _interrupt_once)


NEW_DATABASE = ("There was no relay database in {cluster}, so a new, empty one was made there; "
                "if this relay has run before, its database is in another folder: stop it "
                "(Ctrl-C) and give LIGHTBOX_DATA_DIR as it was.")

SIGNING_SEED_MADE = (
    "There was no token signing key at {path}, so a new one was made: every session and admin "
    "token issued before is refused (devices sign in again by themselves; IT logs in again); "
    "if the relay's key is elsewhere, stop it (Ctrl-C) and put the key back.")
NO_TRUSTED_ORGS = (
    "The relay trusts no organisation yet ({path} is missing): it refuses every enrolment and "
    "login until `lightbox-server org trust ORG.pub.json` is run and the relay restarted.")


def serve_main(args: argparse.Namespace) -> int:
    """``lightbox-server`` with no command: start the relay (server/__main__.py parsed the
    arguments)."""
    overrides = {k: v for k, v in (("host", args.host), ("port", args.port),
                                   ("workers", args.workers)) if v is not None}
    try:
        settings = load_settings(**overrides)
    except SettingsError as exc:
        print(f"lightbox-server: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level)
    # Until uvicorn takes the signals over: SIGTERM, like Ctrl-C, unwinds through `finally`.
    _take_signals()
    embedded: EmbeddedPostgres | None = None
    try:
        made = False
        if settings.database_url is None:
            cluster = (settings.data_dir / "pg").resolve()
            made = not (cluster / "PG_VERSION").exists()
            embedded = EmbeddedPostgres(cluster)
            dsn = embedded.start()
        else:
            dsn = settings.database_url.reveal()
        # Before any worker starts, so that they all load the same token signing key.
        new_key = not settings.token_key_path.exists()
        ensure_token_key(settings.token_key_path)
        problem = asyncio.run(_check_or_migrate(dsn, args.migrate))
        if problem is not None:
            print(f"lightbox-server: {problem}", file=sys.stderr)
            return 2
        where = f"embedded Postgres in {settings.data_dir / 'pg'}" if embedded else "DATABASE_URL"
        # Listening before saying so: a port already taken (a relay running there) is one
        # sentence, not a banner followed by a log line and exit status 3.
        try:
            sock = _bind(settings.host, settings.port)
        except OSError as exc:
            print(f"lightbox-server: cannot listen on {settings.host}:{settings.port}: "
                  f"{exc.strerror or exc} (is a relay already running there? stop it, or "
                  "give another --port)", file=sys.stderr)
            return 2
        url = f"http://{settings.host}:{sock.getsockname()[1]}"
        print(f"Lightbox relay on {url} ({settings.workers} process(es), {where}); "
              "Ctrl-C stops it.", flush=True)
        if made:
            # A first start, or a mistyped LIGHTBOX_DATA_DIR: the relay would otherwise serve
            # an empty database as if it were the hospital's, in silence.
            print(NEW_DATABASE.format(cluster=cluster), flush=True)
        elif new_key:
            # A database from before without its key: a restore that left the key out
            # (docs/OPERATIONS.md "Backups"), or another data folder.
            print(SIGNING_SEED_MADE.format(path=settings.token_key_path.resolve()), flush=True)
        if not settings.trusted_orgs_path.exists():
            print(NO_TRUSTED_ORGS.format(path=settings.trusted_orgs_path.resolve()), flush=True)
        if settings.workers > 1:
            return _run_workers(settings, dsn, sock)
        serve(settings, dsn, sock)
        return 0
    except KeyboardInterrupt:
        return 0
    except EmbeddedError as exc:
        print(f"lightbox-server: {exc}", file=sys.stderr)
        return 2
    finally:
        for sig in _SHUTDOWN_SIGNALS:  # another Ctrl-C must not cut the cleanup short
            signal.signal(sig, signal.SIG_IGN)
        if embedded is not None and embedded.started:
            if embedded.stop():
                print("Embedded Postgres stopped.", flush=True)
            else:
                print("Embedded Postgres left running: another command is using it.",
                      flush=True)
