"""The relay host's own commands, behind ``lightbox-server``'s subcommands:

* ``lightbox-server db upgrade [REVISION]``: apply migrations, forward only (default: to head);
  ``lightbox-server db backup DIR``: the database (``pg_dump``), ``token-key`` and
  ``trusted-orgs.json`` into a new folder, with a manifest of their SHA-256, the relay running
  or not; ``lightbox-server db restore DIR``: such a backup into a relay that has no database
  yet, checked first, in one transaction, and brought to this release's schema
  (server/backups.py);
* ``lightbox-server admin create --login LOGIN``: create an IT administrator (password from a
  no-echo prompt, twice, or ``LIGHTBOX_ADMIN_PASSWORD``; the clinicians' password policy);
  ``lightbox-server admin password --login LOGIN``: a new password for one (read and checked
  the same way; its login lock is lifted); ``lightbox-server admin remove --login LOGIN``:
  disable one (never the last active one); ``lightbox-server admin list``;
* ``lightbox-server org trust FILE [--replace]``: merge an organisation's public key (the
  ``<org_id>.pub.json`` that ``lightbox-admin org init`` writes) into the relay's trusted
  organisations file (``LIGHTBOX_TRUSTED_ORGS_FILE``; the relay loads it when it starts);
* ``lightbox-server audit verify [--head SEQ HASH]``: check the audit trail's hash chain (exit
  1 naming the first bad row), and that it still passes through a head kept elsewhere;
  ``lightbox-server audit head``: print the chain head to anchor it elsewhere;
  ``lightbox-server audit show [--event PREFIX] [--subject ID] [--after SEQ] [--limit N]
  [--json]``: print rows, oldest first (what a security auditor looks for, e.g. ``--event
  auth.refresh_reused``, a session ended as stolen);
* ``lightbox-server scim token issue|rotate|revoke|list --org ORG``: the bearer tokens a
  hospital directory uses at ``/scim/v2`` (printed once, stored as hashes; ``rotate`` issues a
  new one and revokes the others, ``revoke`` revokes them all).

They use the relay's own database: DATABASE_URL, or the embedded Postgres in
``$LIGHTBOX_DATA_DIR/pg``, attached to when the relay is running and started for the command
otherwise. Either way the cluster is left exactly as the command found it: server/embedded.py
stops it only when its last holder leaves, so a command never stops a running relay's database.
Exit status: 0 done, 1 the audit trail is broken, 2 nothing was done (the reason on stderr).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import errno
import getpass
import json
import os
import re
import socket
import sys
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg

from protocol.errors import ProtocolError
from protocol.keys import key_id
from protocol.passwords import check_password
from server import audit, backups, migrations
from server.embedded import EmbeddedError, EmbeddedPostgres
from server.errors import RelayError
from server.passwords import Passwords
from server.settings import Settings, SettingsError, load_settings
from server.store import directory
from server.store.admins import (
    AdminRecord,
    create_admin,
    disable_admin,
    get_admin_by_login,
    list_admins,
    set_admin_password,
)
from server.throttle import forget_admin_failures
from server.trust import TrustError, load_trusted_orgs, read_trusted_orgs, write_trusted_orgs

__all__ = ["COMMANDS", "CommandError", "add_commands", "run"]

COMMANDS = frozenset({"db", "admin", "org", "audit", "scim"})


class CommandError(Exception):
    """Nothing was done; the message says why (exit status 2)."""


@contextlib.contextmanager
def _database(settings: Settings, *, create: bool = False) -> Iterator[str]:
    """The relay's database. An embedded cluster that does not exist yet is made only when
    ``create`` (``db upgrade``): ``LIGHTBOX_DATA_DIR`` is relative to the folder a command runs
    in, and a command run from another folder than the relay's would otherwise make a new,
    empty database there and act on it (create an administrator the relay never sees, verify
    an empty audit trail) without a word."""
    if settings.database_url is not None:
        dsn = settings.database_url.reveal()
        try:
            yield dsn
        except (OSError, TimeoutError) as exc:
            if not _unreachable(exc):
                raise
            raise CommandError(
                f"the database at DATABASE_URL ({_host_port(dsn)}) could not be reached "
                f"({_reason(exc)}): check that Postgres runs there and accepts connections "
                "from this host, and that DATABASE_URL is the one the relay uses") from exc
        return
    cluster = (settings.data_dir / "pg").resolve()
    if not create and not (cluster / "PG_VERSION").exists():
        raise CommandError(
            f"there is no relay database in {cluster}: run lightbox-server in the folder the "
            f"relay runs in (its data folder, LIGHTBOX_DATA_DIR={settings.data_dir}, is "
            "relative to it), or set LIGHTBOX_DATA_DIR or DATABASE_URL as the relay has them")
    with EmbeddedPostgres(settings.data_dir / "pg") as pg:
        yield pg.uri


_UNREACHABLE = {errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ETIMEDOUT}


def _unreachable(exc: BaseException) -> bool:
    """A connection that never opened: refused, no route, no such host, or timed out (asyncio
    joins one failure per address into an OSError without errno: "Multiple exceptions")."""
    if isinstance(exc, TimeoutError | socket.gaierror):
        return True
    return isinstance(exc, OSError) and (
        exc.errno in _UNREACHABLE
        or (exc.errno is None and str(exc).startswith("Multiple exceptions")))


def _reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, socket.gaierror):
        return "no such host"
    if isinstance(exc, OSError) and exc.errno is not None:
        return os.strerror(exc.errno).lower()
    return "refused or unreachable"


def _host_port(dsn: str) -> str:
    """Host and port of a connection URL, never its user or password (libpq's defaults)."""
    try:
        url = urllib.parse.urlsplit(dsn)
        query = urllib.parse.parse_qs(url.query)
        host = url.hostname or query.get("host", ["localhost"])[0]
        port = url.port or int(query.get("port", ["5432"])[0])
    except ValueError:
        return "its host and port"
    return f"{host}:{port}"


async def _on(dsn: str, work: Any) -> Any:
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        return await work(conn)
    finally:
        await conn.close()


def _db_upgrade(args: argparse.Namespace, settings: Settings) -> int:
    with _database(settings, create=True) as dsn:
        try:
            done = migrations.upgrade_forward(dsn, args.revision)
        except migrations.BadRevision as exc:
            raise CommandError(str(exc)) from None
    print(done)
    return 0


def _db_backup(args: argparse.Namespace, settings: Settings) -> int:
    return _done(backups.backup(Path(args.dir), settings, _database))


def _db_restore(args: argparse.Namespace, settings: Settings) -> int:
    return _done(backups.restore(Path(args.dir), settings, _database))


def _done(done: backups.Taken | backups.Restored) -> int:
    """What a backup or restore did; on stderr, the relay files it had no copy of."""
    print(done)
    for note in done.notes():
        print(note, file=sys.stderr)
    return 0


def _kept_head(words: list[str] | None) -> tuple[int, bytes] | None:
    """``--head``: what ``audit head`` printed, as one argument or two."""
    if words is None:
        return None
    parts = " ".join(words).split()
    try:
        if len(parts) != 2 or int(parts[0]) < 1 or len(parts[1]) != 64:
            raise ValueError
        return int(parts[0]), bytes.fromhex(parts[1])
    except ValueError:
        raise CommandError("--head takes what `lightbox-server audit head` printed: a row "
                           "number and a hash of 64 hexadecimal digits") from None


def _audit_verify(args: argparse.Namespace, settings: Settings) -> int:
    kept = _kept_head(args.head)

    async def check(conn: asyncpg.Connection) -> audit.VerifyReport:
        return await audit.verify(conn, kept=kept)
    with _database(settings) as dsn:
        report: audit.VerifyReport = asyncio.run(_on(dsn, check))
    if report.ok:
        through = "" if kept is None else f"; it still passes through the kept head (row {kept[0]})"
        print(f"audit trail intact: {report.checked} rows verified{through}")
        return 0
    print(f"AUDIT TRAIL BROKEN at row {report.first_bad_seq} ({report.problem}): "
          f"{report.message}; {report.checked} rows verified before it", file=sys.stderr)
    return 1


async def _head(conn: asyncpg.Connection) -> tuple[int, bytes]:
    row = await conn.fetchrow("SELECT seq, row_hash FROM audit_head")
    if row is None:
        raise CommandError("the database has no audit head: run `lightbox-server db upgrade`")
    return int(row["seq"]), bytes(row["row_hash"])


def _audit_head(args: argparse.Namespace, settings: Settings) -> int:
    with _database(settings) as dsn:
        seq, h = asyncio.run(_on(dsn, _head))
    print(f"{seq} {h.hex()}")
    return 0


def _audit_show(args: argparse.Namespace, settings: Settings) -> int:
    """Rows of the audit trail, oldest first, one line each (or JSON lines). They name ids,
    events and outcomes, never a patient (docs/SECURITY.md "Audit trail")."""
    if not 1 <= args.limit <= 10_000:
        raise CommandError("--limit is a number of rows from 1 to 10000")

    # ``--subject`` as a row prints it (``device:ID``), or the id alone.
    kind, sep, ident = (args.subject or "").partition(":")
    subject_kind, subject_id = ((kind, ident) if sep and re.fullmatch(r"[a-z_]+", kind)
                                else (None, args.subject))

    async def read(conn: asyncpg.Connection) -> list[audit.AuditRow]:
        return await audit.rows(conn, subject_kind=subject_kind, subject_id=subject_id,
                                event_prefix=args.event, after_seq=args.after,
                                limit=args.limit)
    with _database(settings) as dsn:
        found: list[audit.AuditRow] = asyncio.run(_on(dsn, read))
    for r in found:
        if args.json:
            print(json.dumps({"seq": r.seq, "at": r.at.isoformat(), "event": r.event,
                              "outcome": r.outcome, "actor_kind": r.actor_kind,
                              "actor_id": r.actor_id, "subject_kind": r.subject_kind,
                              "subject_id": r.subject_id, "client_ip": r.client_ip,
                              "request_id": r.request_id, "details": dict(r.details)},
                             sort_keys=True))
            continue
        details = " ".join(f"{k}={json.dumps(v)}" for k, v in sorted(r.details.items()))
        print(f"{r.seq} {r.at.astimezone(dt.UTC):%Y-%m-%d %H:%M:%S}Z {r.event} {r.outcome} "
              f"actor={r.actor_kind}:{r.actor_id or '-'} "
              f"subject={r.subject_kind or '-'}:{r.subject_id or '-'}"
              + (f" address={r.client_ip}" if r.client_ip else "")
              + (f" {details}" if details else ""))
    if not found:
        print("no audit rows match", file=sys.stderr)
    return 0


def _new_password(login: str) -> str:
    """``LIGHTBOX_ADMIN_PASSWORD`` if set, else asked twice on the terminal without echo."""
    value = os.environ.get("LIGHTBOX_ADMIN_PASSWORD")
    if value:
        return value
    if not sys.stdin.isatty():
        raise CommandError("no terminal to ask for the password: set LIGHTBOX_ADMIN_PASSWORD")
    first = getpass.getpass(f"Password for {login}: ")
    if first != getpass.getpass(f"Password for {login} (again): "):
        raise CommandError("the two entries differ")
    return first


def _admin_create(args: argparse.Namespace, settings: Settings) -> int:
    password = _new_password(args.login)
    check_password(password, login=args.login, min_length=settings.password_min_length)
    password_hash = Passwords(settings.argon2_profile).hash_sync(password)

    async def create(conn: asyncpg.Connection) -> str:
        async with conn.transaction():
            admin_id = await create_admin(conn, args.login, password_hash)
            await audit.append(conn, "admin.created", subject_kind="admin",
                               subject_id=admin_id, actor_kind="cli",
                               details={"login": args.login})
        return admin_id

    with _database(settings) as dsn:
        admin_id = asyncio.run(_on(dsn, create))
    print(f"administrator {args.login} created ({admin_id})")
    return 0


async def _active_admin(conn: asyncpg.Connection, login: str) -> AdminRecord:
    """The administrator with this login, locked until the transaction ends."""
    admin = await get_admin_by_login(conn, login, for_update=True)
    if admin is None:
        raise CommandError(f"there is no administrator {login}: `lightbox-server admin list` "
                           "names them")
    if admin.disabled:
        raise CommandError(f"administrator {login} was removed on {_when(admin.disabled_at)}; "
                           "a removed administrator stays removed (create another login)")
    return admin


def _when(ts: float | None) -> str:  # as every date on IT's screens (docs/USER_GUIDE.md)
    return "-" if ts is None else time.strftime("%Y-%m-%d %H:%M", time.localtime(ts))


def _admin_password(args: argparse.Namespace, settings: Settings) -> int:
    """A new password for an administrator; the admin tokens issued before it are refused
    from then on (server/authn.py checks each against the account's ``password_set_at``)."""
    password = _new_password(args.login)
    check_password(password, login=args.login, min_length=settings.password_min_length)
    password_hash = Passwords(settings.argon2_profile).hash_sync(password)

    async def change(conn: asyncpg.Connection) -> tuple[str, int]:
        async with conn.transaction():
            admin = await _active_admin(conn, args.login)
            await set_admin_password(conn, admin.admin_id, password_hash)
            lifted = await forget_admin_failures(conn, args.login)
            await audit.append(conn, "admin.password_set", subject_kind="admin",
                               subject_id=admin.admin_id, actor_kind="cli",
                               details={"login": args.login, "lockouts_cleared": lifted})
        return admin.admin_id, lifted

    with _database(settings) as dsn:
        admin_id, lifted = asyncio.run(_on(dsn, change))
    lock = f"; {lifted} login lock(s) lifted" if lifted else ""
    print(f"administrator {args.login} has a new password ({admin_id}){lock}; the admin "
          "tokens issued before it are refused")
    return 0


def _admin_remove(args: argparse.Namespace, settings: Settings) -> int:
    """Disable an administrator: its row stays (audit rows name its id), it cannot log in,
    and its admin tokens are refused at their next request (server/authn.py)."""
    async def remove(conn: asyncpg.Connection) -> tuple[str, int]:
        async with conn.transaction():
            admin = await _active_admin(conn, args.login)
            left = await disable_admin(conn, admin.admin_id)
            await audit.append(conn, "admin.removed", subject_kind="admin",
                               subject_id=admin.admin_id, actor_kind="cli",
                               details={"login": args.login})
        return admin.admin_id, left

    with _database(settings) as dsn:
        admin_id, left = asyncio.run(_on(dsn, remove))
    print(f"administrator {args.login} removed ({admin_id}); {left} active administrator(s) "
          "left")
    return 0


def _admin_list(args: argparse.Namespace, settings: Settings) -> int:
    with _database(settings) as dsn:
        found: list[AdminRecord] = asyncio.run(_on(dsn, list_admins))
    for a in found:
        state = f"removed {_when(a.disabled_at)}" if a.disabled else "active"
        print(f"{a.login} {state}")
    if not found:
        print("no administrator: `lightbox-server admin create --login LOGIN` makes one",
              file=sys.stderr)
    return 0


def _org_trust(args: argparse.Namespace, settings: Settings) -> int:
    try:
        incoming = read_trusted_orgs(Path(args.pubfile))
    except FileNotFoundError as exc:
        raise CommandError(f"no such file: {args.pubfile}") from exc
    target = settings.trusted_orgs_path
    current = load_trusted_orgs(target) if target.exists() else {}
    for org_id, key in incoming.items():
        if org_id in current and current[org_id] != key and not args.replace:
            raise CommandError(f"{target} already trusts another key for {org_id} "
                               f"({key_id(current[org_id])}); pass --replace to change it")
    changed = any(current.get(org_id) != key for org_id, key in incoming.items())
    if changed:
        write_trusted_orgs(target, {**current, **incoming})
    for org_id, key in incoming.items():
        already = "" if current.get(org_id) != key else "already "
        print(f"{already}trusted {org_id} (fingerprint {key_id(key)}) in {target.resolve()}")
    # The relay reads the file when it starts; an unchanged file needs no restart.
    print("the relay reads this file when it starts: restart it if it is running" if changed else
          "nothing changed: no restart needed")
    return 0


def _scim_token(args: argparse.Namespace, settings: Settings) -> int:
    """Bearer tokens of one organisation's directory (docs/OPERATIONS.md)."""
    org_id = args.org
    issuing = args.action in {"issue", "rotate"}
    trusted = load_trusted_orgs(settings.trusted_orgs_path) if issuing else {}
    if issuing and org_id not in trusted:
        # Name the trusted ones first: a typo of one is likelier than a new organisation,
        # and `org trust` of a typo would trust a name no certificate carries.
        known = ", ".join(sorted(trusted)) or "none"
        raise CommandError(f"{org_id} is not a trusted organisation (trusted in "
                           f"{settings.trusted_orgs_path}: {known}); for a new organisation, "
                           "run `lightbox-server org trust ORG.pub.json` first")

    async def work(conn: asyncpg.Connection) -> tuple[str | None, int, list[Any]]:
        now = time.time()
        async with conn.transaction():
            token, revoked = None, 0
            if args.action in {"issue", "rotate"}:
                token_id, token = await directory.issue_token(conn, org_id, now=now)
                if args.action == "rotate":
                    revoked = await directory.revoke_tokens(conn, org_id, now=now,
                                                            keep=token_id)
            elif args.action == "revoke":
                revoked = await directory.revoke_tokens(conn, org_id, now=now)
            if args.action != "list":
                await audit.append(conn, f"scim.token_{args.action}", subject_kind="org",
                                   subject_id=org_id, actor_kind="cli",
                                   details={"revoked": revoked})
        return token, revoked, await directory.list_tokens(conn, org_id)

    with _database(settings) as dsn:
        token, revoked, tokens = asyncio.run(_on(dsn, work))
    if args.action == "list":
        for t in tokens:
            state = "live" if t.revoked_at is None else f"revoked {_when(t.revoked_at)}"
            print(f"{t.token_id} created {_when(t.created_at)} {state}")
        if not tokens:
            print(f"no SCIM token for {org_id}: `lightbox-server scim token issue --org "
                  f"{org_id}` makes one")
        return 0
    if revoked:
        print(f"revoked {revoked} token(s) of {org_id}", file=sys.stderr)
    if token is not None:
        print(f"SCIM bearer token for {org_id} (shown once; give it to the directory):",
              file=sys.stderr)
        print(token)
    return 0


def add_commands(sub: Any) -> None:
    """The relay-host subcommands, on ``lightbox-server``'s subparsers."""
    db = sub.add_parser("db", help="database schema (relay host)").add_subparsers(
        dest="cmd", required=True)
    up = db.add_parser("upgrade", help="apply migrations, forward only (default: to head)")
    up.add_argument("revision", nargs="?", default="head")
    up.set_defaults(func=_db_upgrade)
    take = db.add_parser("backup", help="the database, token-key and trusted-orgs.json into a "
                                        "new folder (the relay running or not)")
    take.add_argument("dir", metavar="DIR", help="a folder that does not exist yet, or an "
                      "empty one (made with mode 0700)")
    take.set_defaults(func=_db_backup)
    back = db.add_parser("restore", help="a backup into a relay that has no database yet")
    back.add_argument("dir", metavar="DIR", help="the folder `db backup` wrote")
    back.set_defaults(func=_db_restore)

    adm = sub.add_parser("admin", help="IT administrator accounts (relay host)"
                         ).add_subparsers(dest="cmd", required=True)
    create = adm.add_parser("create", help="create an administrator (password: prompt or "
                                           "LIGHTBOX_ADMIN_PASSWORD)")
    create.add_argument("--login", required=True)
    create.set_defaults(func=_admin_create)
    password = adm.add_parser("password", help="set a new password (prompt or "
                                               "LIGHTBOX_ADMIN_PASSWORD); lifts its login lock")
    password.add_argument("--login", required=True)
    password.set_defaults(func=_admin_password)
    remove = adm.add_parser("remove", help="disable an administrator (never the last active "
                                           "one); its admin tokens stop working")
    remove.add_argument("--login", required=True)
    remove.set_defaults(func=_admin_remove)
    adm.add_parser("list", help="logins, active or removed").set_defaults(func=_admin_list)

    org = sub.add_parser("org", help="trusted organisations (relay host)").add_subparsers(
        dest="cmd", required=True)
    trust = org.add_parser("trust", help="trust an organisation's public key")
    trust.add_argument("pubfile", metavar="FILE",
                       help="the <org_id>.pub.json written by `lightbox-admin org init`")
    trust.add_argument("--replace", action="store_true",
                       help="replace a different key already trusted for the organisation")
    trust.set_defaults(func=_org_trust)

    au = sub.add_parser("audit", help="audit trail (relay host)").add_subparsers(
        dest="cmd", required=True)
    verify = au.add_parser("verify", help="check the hash chain; exit 1 naming the first bad row")
    verify.add_argument("--head", nargs="+", metavar="SEQ HASH",
                        help="a head `audit head` printed earlier and kept elsewhere: the chain "
                        "must still pass through it (a chain rewritten whole does not)")
    verify.set_defaults(func=_audit_verify)
    au.add_parser("head", help="print the chain head (sequence and hash) to anchor elsewhere"
                  ).set_defaults(func=_audit_head)
    show = au.add_parser("show", help="print rows, oldest first (e.g. --event "
                                      "auth.refresh_reused: sessions ended as stolen)")
    show.add_argument("--event", help="only events starting with this (auth., auth.refresh_reused)")
    show.add_argument("--subject", help="only rows about this subject: its id (a device, user, "
                      "image...), or KIND:ID as rows print it")
    show.add_argument("--after", type=int, default=0, metavar="SEQ",
                      help="only rows after this sequence number (page on from the last shown)")
    show.add_argument("--limit", type=int, default=100, help="at most this many rows (100)")
    show.add_argument("--json", action="store_true", help="one JSON object per line")
    show.set_defaults(func=_audit_show)

    scim = sub.add_parser("scim", help="hospital directory over SCIM 2.0 (relay host)"
                          ).add_subparsers(dest="cmd", required=True)
    tok = scim.add_parser("token", help="bearer tokens of an organisation's directory")
    tok.add_argument("action", choices=["issue", "rotate", "revoke", "list"],
                     help="issue another token, rotate (new one, the others revoked), "
                          "revoke all, or list them")
    tok.add_argument("--org", required=True, help="the organisation id")
    tok.set_defaults(func=_scim_token)


def run(args: argparse.Namespace) -> int:
    """Run the parsed subcommand; every failure is one line on stderr, never a traceback."""
    try:
        return int(args.func(args, load_settings()))
    except (CommandError, backups.BackupError, EmbeddedError, SettingsError, TrustError) as exc:
        print(f"lightbox-server: {exc}", file=sys.stderr)
    except (ProtocolError, RelayError) as exc:  # the password policy; an existing login
        print(f"lightbox-server: {exc.code.value}: {_detail(exc)}", file=sys.stderr)
    except (OSError, asyncpg.PostgresError) as exc:
        print(f"lightbox-server: {exc}", file=sys.stderr)
    except KeyboardInterrupt:
        print("lightbox-server: interrupted", file=sys.stderr)
    return 2


def _detail(exc: ProtocolError | RelayError) -> str:
    if isinstance(exc, RelayError):
        return exc.detail or exc.code.value
    return str(exc)
