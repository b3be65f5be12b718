"""``lightbox-server``: start the relay (what ``make run`` calls).

With DATABASE_URL unset it starts the embedded Postgres in ``$LIGHTBOX_DATA_DIR/pg`` and stops
it on exit, even after Ctrl-C. It refuses to start, with one line of explanation, when the
schema is not at head, unless ``--migrate`` is given (``make run`` passes it). With
``--workers N`` the parent binds the port once and N relay processes share it (they coordinate
through Postgres only, DESIGN §3).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import multiprocessing
import os
import signal
import socket
import sys
from collections.abc import Sequence
from typing import Any

import asyncpg
import uvicorn

from server import migrations
from server.app import Relay, create_app
from server.embedded import EmbeddedPostgres
from server.logs import configure_logging
from server.settings import Settings, SettingsError, load_settings
from server.tokens import ensure_token_key

__all__ = ["RelayServer", "main", "serve"]

log = logging.getLogger("lightbox.runner")


class RelayServer(uvicorn.Server):
    """uvicorn's server, closing our websockets with 1001 before uvicorn's own shutdown
    (which would otherwise close them with 1012)."""

    def __init__(self, config: uvicorn.Config, relay: Relay) -> None:
        super().__init__(config)
        self.relay = relay

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        await self.relay.hub.close_all(1001)
        await super().shutdown(sockets)


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
        # The parser's own header limit must sit above ours so that our middleware answers
        # an oversize header set with a problem+json 431 rather than the parser's bare 400.
        h11_max_incomplete_event_size=settings.max_header_bytes * 4,
        timeout_graceful_shutdown=int(settings.shutdown_grace),
        **kw,
    )


def serve(settings: Settings, dsn: str, sock: socket.socket | None = None) -> None:
    """Run one relay process until SIGINT/SIGTERM."""
    configure_logging(settings.log_level)
    relay = create_app(settings, dsn=dsn)
    server = RelayServer(uvicorn_config(relay, settings), relay)
    server.run(sockets=[sock] if sock is not None else None)
    if not server.started:
        sys.exit(3)


def _worker(settings: Settings, dsn: str, sock: socket.socket) -> None:
    with contextlib.suppress(KeyboardInterrupt):
        serve(settings, dsn, sock)


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


def _run_workers(settings: Settings, dsn: str) -> int:
    sock = _bind(settings.host, settings.port)
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_worker, args=(settings, dsn, sock), name=f"relay-{i}")
             for i in range(settings.workers)]
    for p in procs:
        p.start()

    def forward(signum: int, frame: Any) -> None:
        for p in procs:
            if p.pid is not None and p.is_alive():
                os.kill(p.pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for p in procs:
        p.join()
    sock.close()
    return max((p.exitcode or 0) for p in procs)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lightbox-server", description=__doc__.splitlines()[0])
    parser.add_argument("--host", help="listen address (default: HOST or 127.0.0.1)")
    parser.add_argument("--port", type=int, help="listen port (default: PORT or 8000)")
    parser.add_argument("--workers", type=int, help="relay processes (default: WORKERS or 1)")
    parser.add_argument("--migrate", action="store_true",
                        help="apply database migrations before starting")
    args = parser.parse_args(argv)
    overrides = {k: v for k, v in (("host", args.host), ("port", args.port),
                                   ("workers", args.workers)) if v is not None}
    try:
        settings = load_settings(**overrides)
    except SettingsError as exc:
        print(f"lightbox-server: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level)
    embedded: EmbeddedPostgres | None = None
    try:
        if settings.database_url is None:
            embedded = EmbeddedPostgres(settings.data_dir / "pg")
            dsn = embedded.start()
        else:
            dsn = settings.database_url.reveal()
        # Before any worker starts, so that they all load the same token signing key.
        ensure_token_key(settings.token_key_path)
        problem = asyncio.run(_check_or_migrate(dsn, args.migrate))
        if problem is not None:
            print(f"lightbox-server: {problem}", file=sys.stderr)
            return 2
        where = f"embedded Postgres in {settings.data_dir / 'pg'}" if embedded else "DATABASE_URL"
        url = f"http://{settings.host}:{settings.port}"
        print(f"Lightbox relay on {url} ({settings.workers} process(es), {where}); "
              "Ctrl-C stops it.", flush=True)
        if settings.workers > 1:
            return _run_workers(settings, dsn)
        serve(settings, dsn)
        return 0
    except KeyboardInterrupt:
        return 0
    finally:
        if embedded is not None:
            embedded.stop()
            print("Embedded Postgres stopped.", flush=True)
