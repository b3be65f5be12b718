"""``lightbox-admin breakglass``: the privacy office's review queue of emergency messages sent
without a consent (docs/PROTOCOL.md §17), through IT's tool over HTTP with the admin session.

    lightbox-admin breakglass list [--status open|closed|all] [--json]
    lightbox-admin breakglass show CASE
    lightbox-admin breakglass close CASE --outcome appropriate|inappropriate|referred
                                         [--note TEXT]
    lightbox-admin breakglass report [--since YYYY-MM-DD] [--until YYYY-MM-DD] [--json]

A case holds no patient data: the clinician's reason is sealed in the message (read it in the
thread or the record when a review needs it). The note given on closing is audited on the
relay: no patient details in it.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import msgspec

from clients.admin.session import load_session
from clients.sdk.errors import FlowError, RelayRequestError
from clients.sdk.http import RelayHTTP
from clients.sdk.timefmt import format_time
from clients.sdk.wording import counted
from protocol import api
from protocol.errors import ErrorCode

__all__ = ["format_case", "register"]

T = TypeVar("T")


def _run(call: Callable[[RelayHTTP], Awaitable[T]], case_id: str | None = None) -> T:
    session = load_session()

    async def go() -> T:
        async with RelayHTTP(session.server, admin_token=session.token) as relay:
            try:
                return await call(relay)
            except RelayRequestError as exc:
                if exc.code == ErrorCode.NOT_FOUND.value and case_id is not None:
                    raise FlowError(f"the relay holds no break-glass case {case_id}",
                                    code=ErrorCode.NOT_FOUND.value) from None
                raise
    return asyncio.run(go())


def _when(ts: int | None) -> str:
    return "-" if ts is None else format_time(ts)


def _day(value: str | None, flag: str) -> int | None:
    if value is None:
        return None
    try:
        day = dt.date.fromisoformat(value)
    except ValueError:
        raise FlowError(f"{flag} takes a date as YYYY-MM-DD, not {value!r}",
                        code=ErrorCode.VALIDATION_FAILED.value) from None
    return int(dt.datetime.combine(day, dt.time(), dt.UTC).timestamp())


def _follow_up(c: api.BreakGlassCase) -> str:
    if c.follow_up is None:
        return "awaiting the consent or why none was possible"
    what = "consent sought afterwards" if c.follow_up == "consent" else "no consent possible"
    return f"{what} ({c.follow_up_detail}), {_when(c.followed_up_at)}"


def format_case(c: api.BreakGlassCase) -> str:
    """A case as the privacy office reads it."""
    review = (f"closed {_when(c.closed_at)} by {c.closed_by}: {c.outcome}"
              + (f" ({c.note})" if c.note else "") if c.status == "closed" else "open")
    return "\n".join([
        f"case {c.case_id}",
        f"  declared   {_when(c.declared_at)} by {c.sender_name} ({c.sender_login}), "
        f"{c.category.replace('_', ' ')}",
        f"  message    {c.message_id} in thread {c.thread_id}: {c.recipients} recipient(s), "
        f"{c.attachments} image(s)",
        f"  follow-up  {_follow_up(c)}",
        f"  review     {review}",
    ])


def _list(args: argparse.Namespace) -> int:
    listing = _run(lambda relay: relay.admin_break_glass(status=args.status))
    if args.json:
        print(json.dumps(msgspec.to_builtins(listing), indent=2))
        return 0
    for c in listing.cases:
        print(f"{c.case_id}  [{_when(c.declared_at)}] {c.sender_login}  "
              f"{c.category.replace('_', ' ')}  {c.status}"
              + ("" if c.follow_up else "  (no follow-up yet)"))
    status = "" if args.status == "all" else args.status + " "
    print(counted(len(listing.cases), f"{status}break-glass case"))
    return 0


def _show(args: argparse.Namespace) -> int:
    print(format_case(_run(lambda relay: relay.admin_break_glass_case(args.case), args.case)))
    return 0


def _close(args: argparse.Namespace) -> int:
    body = api.BreakGlassClose(outcome=args.outcome, note=(args.note or "").strip())
    case = _run(lambda relay: relay.admin_close_break_glass(args.case, body), args.case)
    print(format_case(case))
    return 0


def _report(args: argparse.Namespace) -> int:
    since, until = _day(args.since, "--since"), _day(args.until, "--until")
    r = _run(lambda relay: relay.admin_break_glass_report(since=since, until=until))
    if args.json:
        print(json.dumps(msgspec.to_builtins(r), indent=2))
        return 0
    print(f"break-glass from {_when(r.since)} to {_when(r.until)}: {counted(r.total, 'case')}, "
          f"{r.open} open, {r.closed} closed, {r.awaiting_follow_up} awaiting follow-up")
    for name, counts in (("by category", r.by_category), ("by outcome", r.by_outcome)):
        if counts:
            print(f"  {name}: " + ", ".join(f"{k.replace('_', ' ')} {v}"
                                            for k, v in counts.items()))
    for u in r.by_clinician:
        print(f"  {u.display_name} ({u.login}): {counted(u.cases, 'case')}, {u.awaiting_follow_up} "
              f"awaiting follow-up, {u.inappropriate} found inappropriate")
    return 0


def register(sub: Any) -> None:
    """Add ``breakglass`` to ``lightbox-admin``'s subparsers (clients/admin/cli.py)."""
    bg = sub.add_parser("breakglass", help="the privacy office: emergency messages sent "
                                           "without consent (review queue, report)"
                        ).add_subparsers(dest="cmd", required=True)
    ls = bg.add_parser("list", help="the review queue, oldest first")
    ls.add_argument("--status", choices=["open", "closed", "all"], default="open")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=_list)
    sh = bg.add_parser("show", help="one case")
    sh.add_argument("case", metavar="CASE")
    sh.set_defaults(func=_show)
    cl = bg.add_parser("close", help="close a case after review")
    cl.add_argument("case", metavar="CASE")
    cl.add_argument("--outcome", required=True, choices=list(api.BREAK_GLASS_OUTCOMES))
    cl.add_argument("--note", metavar="TEXT", help="for the audit log (no patient details)")
    cl.set_defaults(func=_close)
    rp = bg.add_parser("report", help="use of break-glass over a period (default: 30 days)")
    rp.add_argument("--since", metavar="YYYY-MM-DD")
    rp.add_argument("--until", metavar="YYYY-MM-DD", help="up to the start of that day")
    rp.add_argument("--json", action="store_true")
    rp.set_defaults(func=_report)
