"""On-call rotas from IT's workstation (docs/PROTOCOL.md §16): ``lightbox-admin rota add``,
``import``, ``show`` and ``remove``; the shifts of a role posted to the relay, each refusal
reported per row.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from collections.abc import Awaitable, Sequence
from pathlib import Path
from typing import Any, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from clients.admin import csvio, rotaio
from clients.admin import ops as adminops
from clients.admin.common import CommandError, admin_relay
from clients.admin.session import (
    load_session,
)
from clients.sdk.errors import RelayRequestError
from clients.sdk.failures import run_async
from clients.sdk.http import RelayHTTP
from clients.sdk.timefmt import format_time
from clients.sdk.wording import counted
from protocol import api
from protocol.errors import ErrorCode

__all__ = [
    "describe_removal",
    "post_shifts",
    "role_unknown",
    "rota_add",
    "rota_import",
    "rota_parsers",
    "rota_remove",
    "rota_report",
    "rota_role",
    "rota_show",
    "when_arg",
]


T = TypeVar("T")


def when_arg(text: str, tz: str) -> int:
    try:
        t = dt.datetime.fromisoformat(text)
    except ValueError as exc:
        raise CommandError(f"{text!r}: not an ISO 8601 date-time ({exc})") from exc
    if t.tzinfo is None:
        try:
            t = t.replace(tzinfo=ZoneInfo(tz))
        except (ZoneInfoNotFoundError, ValueError):
            raise CommandError(f"unknown time zone {tz!r}: write an IANA name such as "
                               "Europe/London") from None
    return int(t.timestamp())


def rota_report(stored: int, failures: Sequence[rotaio.RotaRowError], *,
                numbered: bool = True) -> int:
    """Each refusal, by the line of the file as a person counts it (rotaio), or with no line
    for a single shift given on the command line (``numbered`` False)."""
    for f in sorted(failures, key=lambda f: f.line):
        who = f" ({f.what})" if f.what else ""
        where = f"line {f.line}" if numbered else "shift refused"
        print(f"{where}{who}: {f.reason}", file=sys.stderr)
    print(f"{counted(stored, 'shift')} stored, {len(failures)} refused")
    return 1 if failures else 0


def rota_role(args: argparse.Namespace) -> int:
    session = load_session()

    async def go() -> Any:
        async with admin_relay(session) as relay:
            return await relay.set_oncall_role(args.org, args.role, api.OncallRoleSet(
                display_name=args.name or "", urgent_seconds=int(args.urgent_minutes * 60),
                routine_seconds=int(args.routine_minutes * 60)))

    info = run_async(go)
    print(f"role {info.role} of {info.org_id}: acknowledge urgent within "
          f"{info.urgent_seconds // 60} min, routine within {info.routine_seconds // 60} min")
    return 0


def post_shifts(args: argparse.Namespace, rows: list[rotaio.ShiftRow],
                 failures: list[rotaio.RotaRowError], *, numbered: bool = True) -> int:
    session = load_session()

    async def go() -> tuple[list[str], list[rotaio.RotaRowError]]:
        async with admin_relay(session) as relay:
            return await of_role(relay, args, adminops.import_shifts(
                relay, org_id=args.org, role=args.role, rows=rows))

    stored, refused = run_async(go) if rows else ([], [])
    return rota_report(len(stored), failures + refused, numbered=numbered)


def rota_add(args: argparse.Namespace) -> int:
    ladder = [p.strip() for p in args.ladder.replace(",", ";").split(";") if p.strip()]
    row = rotaio.ShiftRow(1, when_arg(args.start, args.tz), when_arg(args.end, args.tz),
                          tuple(ladder))
    return post_shifts(args, [row], [], numbered=False)


def rota_import(args: argparse.Namespace) -> int:
    path = Path(args.file)
    with path.open("rb") as f:
        data = f.read(csvio.MAX_CSV_BYTES + 1)
    rows, failures = rotaio.parse_rota(path.name, data, tz=args.tz)
    return post_shifts(args, rows, failures)


def role_unknown(org_id: str, role: str, roles: Sequence[api.OncallRoleInfo]) -> str:
    """The relay answers role_unknown both for a role its organisation lacks and for an
    organisation it has no roles of (often a typo of the id): say which, from its role list."""
    of_org = sorted(r.role for r in roles if r.org_id == org_id)
    if of_org:
        return (f"{ErrorCode.ROLE_UNKNOWN.value}: {org_id} has no on-call role {role} "
                f"(its roles: {', '.join(of_org)}); `lightbox-admin rota role {role} "
                f"--org {org_id}` defines it")
    orgs = ", ".join(sorted({r.org_id for r in roles})) or "none"
    return (f"{ErrorCode.ROLE_UNKNOWN.value}: {org_id} has no on-call roles at all: check the "
            f"organisation id (organisations with on-call roles: {orgs})")


async def of_role(relay: RelayHTTP, args: argparse.Namespace, work: Awaitable[T]) -> T:
    """``work``, a request about ``args.role`` of ``args.org``; its ``role_unknown`` said as
    :func:`role_unknown` says it (every rota command: show, add, import, remove)."""
    try:
        return await work
    except RelayRequestError as exc:
        if exc.code != ErrorCode.ROLE_UNKNOWN.value:
            raise
        roles = (await relay.oncall_roles()).roles
        raise CommandError(role_unknown(args.org, args.role, roles)) from exc


def rota_show(args: argparse.Namespace) -> int:
    session = load_session()

    async def go() -> api.ShiftList:
        async with admin_relay(session) as relay:
            return await of_role(relay, args, relay.shifts(args.org, args.role,
                                                           current=not args.all))

    def fmt(ts: int) -> str:
        return format_time(ts, tz=ZoneInfo(args.tz))

    shifts = run_async(go).shifts
    if not shifts:  # said, not an empty screen: a role nobody covers is a gap (HAZ-02 C14)
        print(f"no shifts of {args.role} {'at all' if args.all else 'now or to come'}: "
              f"consults to it wait for a shift (lightbox-admin rota add {args.role} ...)")
    for s in shifts:
        ladder = " > ".join(m.display_name or m.user_id for m in s.ladder)
        print(f"{s.shift_id}  {fmt(s.starts_at)} - {fmt(s.ends_at)}  {ladder}")
    return 0


def describe_removal(args: argparse.Namespace, removed: api.ShiftRemoved | None) -> str:
    """What IT is told when a shift is removed: what becomes of its unacknowledged consults
    (handed over at once: docs/OPERATIONS.md "On-call rotas"). Counts and times only."""
    done = f"shift {args.shift_id} removed"
    if removed is None or removed.handovers == 0:
        return done
    n = removed.handovers
    on_it = f"{counted(n, 'unacknowledged consult')} on it"
    if removed.covered_now:
        return f"{done}: {on_it} {'is' if n == 1 else 'are'} handed over to the shift covering now"
    waits = f"{on_it} {'waits' if n == 1 else 'wait'} for the next shift"
    if removed.next_shift_at is None:
        return (f"{done}: {waits}, and no later shift is on the rota: add one "
                f"(lightbox-admin rota add {args.role} --org {args.org} ...); "
                "their senders are told")
    at = format_time(removed.next_shift_at, tz=ZoneInfo(args.tz))
    return f"{done}: {waits}, at {at} (none covers now): their senders are told"


def rota_remove(args: argparse.Namespace) -> int:
    session = load_session()

    async def go() -> api.ShiftRemoved | None:
        async with admin_relay(session) as relay:
            return await of_role(relay, args, adminops.remove_shift(
                relay, org_id=args.org, role=args.role, shift_id=args.shift_id))

    print(describe_removal(args, run_async(go)))
    return 0


def rota_parsers(sub: Any) -> None:
    rota = sub.add_parser("rota", help="on-call roles and rotas").add_subparsers(
        dest="cmd", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("role", help="e.g. orthopaedics-oncall (same as orthopaedics_oncall)")
        p.add_argument("--org", required=True, help="organisation id")
        p.add_argument("--tz", default="UTC", help="time zone of times without an offset")

    role = rota.add_parser("role", help="define a role and its acknowledgement deadlines")
    common(role)
    role.add_argument("--name", help="display name")
    role.add_argument("--urgent-minutes", type=float, default=5)
    role.add_argument("--routine-minutes", type=float, default=30)
    role.set_defaults(func=rota_role)
    add = rota.add_parser("add", help="add one shift")
    common(add)
    add.add_argument("--start", required=True, help="ISO 8601, e.g. 2026-12-01T20:00")
    add.add_argument("--end", required=True)
    add.add_argument("--ladder", required=True,
                     help="logins, primary first then backups, separated by ';'")
    add.set_defaults(func=rota_add)
    imp = rota.add_parser("import", help="add shifts from a CSV or iCalendar (.ics) file")
    common(imp)
    imp.add_argument("file")
    imp.set_defaults(func=rota_import)
    show = rota.add_parser("show", help="the role's shifts not yet ended")
    common(show)
    show.add_argument("--all", action="store_true", help="past shifts too")
    show.set_defaults(func=rota_show)
    rm = rota.add_parser("remove", help="remove a shift")
    common(rm)
    rm.add_argument("shift_id")
    rm.set_defaults(func=rota_remove)
