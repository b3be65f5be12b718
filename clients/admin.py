"""``lightbox-admin``: hospital IT's tool.

Commands that act on the relay host's database directly (``db upgrade``, ``audit verify``,
``audit head``) use DATABASE_URL, or the embedded Postgres in ``$LIGHTBOX_DATA_DIR/pg`` when it
is unset (started for the command and stopped after it). Provisioning commands that need the
organisation key run on IT's workstation and talk to the relay's admin API.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from collections.abc import Iterator, Sequence

import asyncpg

from server import audit, migrations
from server.embedded import EmbeddedPostgres
from server.settings import load_settings

__all__ = ["main"]


@contextlib.contextmanager
def _database() -> Iterator[str]:
    settings = load_settings()
    if settings.database_url is not None:
        yield settings.database_url.reveal()
        return
    pg = EmbeddedPostgres(settings.data_dir / "pg")
    try:
        yield pg.start()
    finally:
        pg.stop()


def _db_upgrade(args: argparse.Namespace) -> int:
    with _database() as dsn:
        migrations.upgrade(dsn, args.revision)
    print(f"database schema upgraded to {args.revision}")
    return 0


async def _verify(dsn: str) -> audit.VerifyReport:
    conn = await asyncpg.connect(dsn)
    try:
        return await audit.verify(conn)
    finally:
        await conn.close()


def _audit_verify(args: argparse.Namespace) -> int:
    with _database() as dsn:
        report = asyncio.run(_verify(dsn))
    if report.ok:
        print(f"audit trail intact: {report.checked} rows verified")
        return 0
    print(f"AUDIT TRAIL BROKEN at row {report.first_bad_seq} ({report.problem}): "
          f"{report.message}; {report.checked} rows verified before it", file=sys.stderr)
    return 1


async def _head(dsn: str) -> tuple[int, bytes]:
    conn = await asyncpg.connect(dsn)
    try:
        row = await conn.fetchrow("SELECT seq, row_hash FROM audit_head")
        assert row is not None
        return int(row["seq"]), bytes(row["row_hash"])
    finally:
        await conn.close()


def _audit_head(args: argparse.Namespace) -> int:
    with _database() as dsn:
        seq, h = asyncio.run(_head(dsn))
    print(f"{seq} {h.hex()}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lightbox-admin", description="Lightbox IT administration.")
    sub = p.add_subparsers(dest="group", required=True)

    db = sub.add_parser("db", help="database schema").add_subparsers(dest="cmd", required=True)
    up = db.add_parser("upgrade", help="apply migrations (default: to head)")
    up.add_argument("revision", nargs="?", default="head")
    up.set_defaults(func=_db_upgrade)

    au = sub.add_parser("audit", help="audit trail").add_subparsers(dest="cmd", required=True)
    au.add_parser("verify", help="check the hash chain; exit 1 naming the first bad row"
                  ).set_defaults(func=_audit_verify)
    au.add_parser("head", help="print the chain head (sequence and hash) to anchor elsewhere"
                  ).set_defaults(func=_audit_head)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
