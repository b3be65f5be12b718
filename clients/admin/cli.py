"""``lightbox-admin``: hospital IT's tool, on IT's workstation.

It talks to the relay over HTTP only (the admin API, after ``login``); ``org init`` (the
organisation key ceremony) needs no relay at all. ``sign-pending`` signs the users the
hospital directory created over SCIM and renews the certificates it or the IdP asked to change
(clients/admin/directory.py). What acts on the relay
host itself (the schema, administrators, trusted organisations, the audit trail) is the
server's own command,
``lightbox-server db|admin|org trust|audit`` (server/manage.py); the old spellings here answer
with one line naming it. Commands that need the organisation key (``org init``, ``user
add``/``import``/``reissue``/``suspend``/``resume``/``renew-licence``, ``device revoke``) read
it from the sealed keyfile.

Secrets come from no-echo prompts or, for scripts, LIGHTBOX_ORG_PASSPHRASE and
LIGHTBOX_ADMIN_PASSWORD; the keyfile from ``--keyfile`` or LIGHTBOX_ORG_KEYFILE.
``rota`` (``role``, ``add``, ``import``, ``show``, ``remove``) manages on-call rotas through
the admin API after ``login``; imports take CSV or iCalendar files (clients/admin/rotaio.py).
Exit status: 0 success, 1 some of the work failed (per-row reports), 2 nothing was done.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from clients.admin import breakglass as adminbreakglass
from clients.admin import consent as adminconsent
from clients.admin import csvio, handout, keptlists
from clients.admin import directory as admindirectory
from clients.admin import ops as adminops
from clients.admin.common import CommandError, admin_relay
from clients.admin.orgkey import (
    OrgKeyError,
    create_org_keyfile,
    fingerprint,
    open_org_keyfile,
)
from clients.admin.rota import (
    rota_parsers,
)
from clients.admin.session import (
    AdminSession,
    SessionError,
    load_session,
    save_session,
    session_path,
)
from clients.sdk.errors import RelayRequestError
from clients.sdk.failures import run_async, run_command
from clients.sdk.http import RelayHTTP
from clients.sdk.prompts import PromptError, read_secret
from clients.sdk.timefmt import format_date, format_time
from clients.sdk.wording import counted
from protocol import api, certs
from protocol.canonical import b64url_encode, peek_compact
from protocol.errors import ErrorCode, ProtocolError
from protocol.keys import OrganisationKey

__all__ = ["build_parser", "main"]


# --- organisation key ------------------------------------------------------------------------


def _keyfile(args: argparse.Namespace) -> Path:
    path = args.keyfile or os.environ.get("LIGHTBOX_ORG_KEYFILE")
    if not path:
        raise CommandError("no organisation keyfile: pass --keyfile or set LIGHTBOX_ORG_KEYFILE")
    return Path(path)


def _org_key(args: argparse.Namespace) -> tuple[str, OrganisationKey]:
    passphrase = read_secret("LIGHTBOX_ORG_PASSPHRASE", "Organisation key passphrase")
    return open_org_keyfile(_keyfile(args), passphrase)


def _org_init(args: argparse.Namespace) -> int:
    path = _keyfile(args)
    passphrase = read_secret("LIGHTBOX_ORG_PASSPHRASE", "New organisation key passphrase",
                             confirm=True)
    if len(passphrase) < 12:
        raise CommandError("the passphrase must be at least 12 characters long")
    key = create_org_keyfile(path, args.org_id, passphrase)
    print(f"organisation {args.org_id}: key created in {path} (keep it offline, 0600)")
    print(f"public key:  {b64url_encode(key.public)}")
    print(f"fingerprint: {fingerprint(key.public)}")
    print(f"relay file:  {path.parent / (args.org_id + '.pub.json')} "
          "(copy it to the relay host and run `lightbox-server org trust` there)")
    return 0


def _login(args: argparse.Namespace) -> int:
    password = read_secret("LIGHTBOX_ADMIN_PASSWORD", f"Password for {args.login}")

    async def go() -> AdminSession:
        async with RelayHTTP(args.server) as relay:
            token = await relay.admin_login(args.login, password)
        return AdminSession(server=args.server.rstrip("/"), token=token.token,
                            expires_at=token.expires_at, login=args.login)

    session = run_async(go)
    path = save_session(session)
    until = format_time(session.expires_at)
    print(f"logged in to {session.server} as {args.login} until {until} (session in {path})")
    return 0


# --- users -----------------------------------------------------------------------------------


def _phone_app(nothing_done: str) -> str:
    """``LIGHTBOX_PHONE_APP``, checked before any code is made: a code is shown only once, so
    a handout naming an address a phone cannot open would waste it."""
    try:
        return handout.phone_app_address()
    except handout.HandoutError as exc:
        raise CommandError(f"{exc}; {nothing_done}") from None


def _handouts(report: adminops.ImportReport, session: AdminSession, org_key: OrganisationKey,
              args: argparse.Namespace, phone_app: str) -> int:
    """Each provisioned user's handout on the terminal, and with ``--handout-dir`` as
    ``<login>.pdf`` and ``<login>.png`` (admin/handout.py); returns how many files failed."""
    failed = 0
    for p in report.provisioned:
        sheet = handout.Handout(name=p.row.name, login=p.row.login, server=session.server,
                                code=p.code, expires_at=p.request.enrolment_expires_at,
                                org_fingerprint=fingerprint(org_key.public),
                                gateway=p.row.service,
                                phone_app=phone_app)
        handout.print_handout(sys.stdout, sheet, qr=not args.no_qr)
        if args.handout_dir:
            try:
                files = handout.save_handout(Path(args.handout_dir), sheet)
            except handout.HandoutError as exc:
                print(f"{p.row.login}: {exc}; give them the code above", file=sys.stderr)
                failed += 1
            else:
                print(f"  handout: {files.pdf} (print), {files.png} (screen)")
    return failed


def _report_failures(failures: Sequence[csvio.RowError], *, numbered: bool = True) -> None:
    """Each refused row on stderr: by its CSV line and login, or (``user add``, one user on
    the command line, no line to name) by its login."""
    for f in failures:
        if numbered:
            where = f"line {f.line}" + (f" ({f.login})" if f.login else "")
        else:
            where = f.login
        print(f"{where}: {f.reason}", file=sys.stderr)


async def _relay_accepts_phone_app(relay: RelayHTTP, phone_app: str, nothing_done: str) -> None:
    """Before any code is made: a relay that does not let browsers call it from the phone
    app's address (LIGHTBOX_PHONE_ORIGINS, docs/OPERATIONS.md) would leave every phone
    enrolled from these handouts saying that the relay cannot be reached."""
    if not phone_app:
        return
    origin = handout.web_origin(phone_app)
    if not await relay.accepts_browser_origin(origin):
        raise CommandError(
            f"the relay does not accept the phone app's address {origin}: add it to "
            f"LIGHTBOX_PHONE_ORIGINS on the relay and restart the relay, or phones could not "
            f"reach it from the app the handouts name; {nothing_done}")


def _prepare_handout_dir(args: argparse.Namespace, nothing_done: str) -> None:
    """Check ``--handout-dir`` before any code is made: a code is shown only once."""
    if args.handout_dir:
        try:
            handout.prepare_directory(Path(args.handout_dir))
        except handout.HandoutError as exc:
            raise CommandError(f"{exc}; {nothing_done}") from None


def _provision(args: argparse.Namespace, rows: list[csvio.UserRow],
               failures: list[csvio.RowError], *, numbered: bool = True) -> int:
    phone_app = _phone_app("nobody was provisioned")
    session = load_session()
    org_id, org_key = _org_key(args)
    _prepare_handout_dir(args, "nobody was provisioned")

    async def go() -> adminops.ImportReport:
        async with admin_relay(session) as relay:
            await _relay_accepts_phone_app(relay, phone_app, "nobody was provisioned")
            return await adminops.provision_rows(
                relay, rows, org_id=org_id, org_key=org_key, now=int(time.time()),
                code_valid_hours=args.code_valid_hours)

    report = run_async(go) if rows else adminops.ImportReport([], [])
    unwritten = _handouts(report, session, org_key, args, phone_app)
    failures = sorted(failures + report.failed, key=lambda f: f.line)
    _report_failures(failures, numbered=numbered)
    print(f"{len(report.provisioned)} provisioned, {len(failures)} failed")
    return 1 if failures or unwritten else 0


def _user_add(args: argparse.Namespace) -> int:
    try:
        row = csvio.validate_user(
            line=0, name=args.name, login=args.login, roles=args.roles,
            specialty=args.specialty, department=args.department,
            licence_type=args.licence_type, licence_number=args.licence_number,
            jurisdiction=args.jurisdiction, licence_expires=args.licence_expires,
            now=int(time.time()), service=args.service)
    except ValueError as exc:
        raise CommandError(_in_option_words(str(exc))) from exc
    return _provision(args, [row], [], numbered=False)


# The licence's CSV columns as `user add` spells them, each with an example value (the
# licence type is free text: MD as in docs/USER_GUIDE.md).
LICENCE_OPTIONS = (("licence_type", "--licence-type", "MD"),
                   ("licence_number", "--licence-number", "GMC-7023456"),
                   ("jurisdiction", "--jurisdiction", "UK"),
                   ("licence_expires", "--licence-expires", "2030-06-30"))


def _in_option_words(reason: str) -> str:
    """A reason :func:`csvio.validate_user` gives in its CSV column's name, said in the
    option's: ``licence_type is empty`` is ``--licence-type is required (...)``."""
    for column, option, example in LICENCE_OPTIONS:
        if reason == f"{column} is empty":
            return f"{option} is required (for example {option} {example})"
        if reason.startswith(f"{column} "):
            return option + reason[len(column):]
    return reason


def _sign_pending(args: argparse.Namespace) -> int:
    """Sign the directory's pending users (clients/admin/directory.py); a handout each."""
    phone_app = _phone_app("nobody was signed")
    session = load_session()
    org_id, org_key = _org_key(args)
    _prepare_handout_dir(args, "nobody was signed")

    async def go() -> admindirectory.SignRun:
        async with admin_relay(session) as relay:
            await _relay_accepts_phone_app(relay, phone_app, "nobody was signed")
            return await admindirectory.sign_pending(
                relay, org_id=org_id, org_key=org_key, now=int(time.time()),
                code_valid_hours=args.code_valid_hours)

    run = run_async(go)
    report = run.report
    unwritten = _handouts(report, session, org_key, args, phone_app)
    for f in report.failed:
        print(f"{f.login}: {f.reason}", file=sys.stderr)
    for login in run.renewed:
        print(f"{login}: certificate renewed")
    print(f"{len(report.provisioned)} signed, "
          + (f"{len(run.renewed)} renewed, " if run.renewed else "")
          + f"{len(report.failed)} failed"
          + (f", {run.others} of other organisations left for their IT" if run.others else ""))
    return 1 if report.failed or unwritten else 0


def _user_import(args: argparse.Namespace) -> int:
    path = Path(args.file)
    with path.open("rb") as f:
        data = f.read(csvio.MAX_CSV_BYTES + 1)
    rows, failures = csvio.parse_users_csv(data, now=int(time.time()))
    return _provision(args, rows, failures)


def _date(ts: int | None) -> str:
    """A moment's date as people read it (clients/sdk/timefmt.py); licences have their own
    reading, :func:`clients.admin.csvio.licence_through`."""
    return "" if ts is None else format_date(ts)


USER_COLUMNS = ["user_id", "login", "name", "roles", "specialty", "department", "status",
                "licence_expires", "devices"]


def user_rows(users: Sequence[api.UserSummary]) -> tuple[list[str], list[list[Any]]]:
    """``user list``'s columns and rows; the licence as the day it is valid through."""
    return USER_COLUMNS, [
        [u.user_id, u.login, u.display_name, ";".join(u.roles), u.specialty or "",
         u.department or "", u.status, csvio.licence_through(u.licence_expires_at), u.devices]
        for u in users]


def _user_list(args: argparse.Namespace) -> int:
    session = load_session()

    async def go() -> Any:
        async with admin_relay(session) as relay:
            return await relay.list_users(q=args.query, status=args.status)

    header, rows = user_rows(run_async(go).users)
    if args.csv:
        sys.stdout.write(csvio.to_csv(header, rows))
        return 0
    for r in rows:
        print(f"{r[1]:<20} {r[6]:<9} {r[8]!s:>2} dev  {r[2]}  [{r[3]}] {r[4]}  "
              f"licence {r[7] or '-'}  {r[0]}")
    print(counted(len(rows), "user"))
    return 0


def _user_show(args: argparse.Namespace) -> int:
    session = load_session()

    async def go() -> Any:
        async with admin_relay(session) as relay:
            user = await adminops.resolve_user(relay, args.user)
            return await relay.get_user(user.user_id)

    detail = run_async(go)
    u = detail.user
    cert = peek_compact(detail.user_certificate, certs.UserCertificate,
                        max_length=certs.MAX_CERTIFICATE_LENGTH)
    print(f"login:        {u.login}")
    print(f"name:         {u.display_name}")
    print(f"user id:      {u.user_id}  (organisation {u.org_id})")
    print(f"status:       {u.status}; enrolment code: {adminops.describe_enrolment(detail)}")
    print(f"roles:        {', '.join(u.roles)}")
    print(f"specialty:    {u.specialty or '-'}; department: {u.department or '-'}")
    if cert.licence is not None:
        lic = cert.licence
        print(f"licence:      {lic.type} {lic.number} ({lic.jurisdiction}), "
              f"valid through {csvio.licence_through(lic.expires_at)}")
    print(f"certificate:  serial {cert.serial}, valid {_date(cert.not_before)} to "
          f"{_date(cert.not_after)}, identity key {fingerprint(cert.identity_key)}")
    for d in detail.devices:
        print(f"device:       {d.device_id} {d.kind.value:<8} {d.status:<8} "
              f"enrolled {_date(d.created_at)} last seen {_date(d.last_seen_at) or '-'}")
    return 0


Change = tuple[list[certs.RevocationEntry], list[str]]


class _AlreadySo(Exception):
    """Nothing to sign or upload: the message says why (exit status 0)."""


def _revoke(args: argparse.Namespace, describe: str,
            build: Callable[[RelayHTTP, str], Awaitable[Change]],
            unchanged: Callable[[], None] = lambda: None) -> int:
    """Sign and apply the revocation list ``build`` (given the relay and our organisation id)
    changes; ``unchanged`` is called when it changes nothing (it may raise CommandError to say
    why that is not what was asked). ``build`` may raise CommandError or _AlreadySo: then
    nothing is signed."""
    session = load_session()
    org_id, org_key = _org_key(args)

    async def go() -> tuple[certs.RevocationList | None, bool]:
        async with admin_relay(session) as relay:
            add, remove = await build(relay, org_id)
            return await adminops.apply_revocations(
                relay, org_id=org_id, org_key=org_key, now=int(time.time()), add=add,
                remove_users=remove)

    try:
        applied, changed = run_async(go)
    except _AlreadySo as done:
        print(done)
        return 0
    if not changed:
        unchanged()
        print(f"{describe}: already so; nothing to change")
    elif applied is not None:
        print(f"{describe}: revocation list {applied.number} signed and applied "
              f"({counted(len(applied.entries), 'entry', 'entries')})")
    return 0


def _user_suspend(args: argparse.Namespace) -> int:
    async def build(relay: RelayHTTP, org_id: str) -> Change:
        user = await adminops.resolve_user(relay, args.user)
        entry = certs.RevocationEntry(subject=certs.RevocationSubject.USER, id=user.user_id,
                                      revoked_at=int(time.time()), reason=args.reason,
                                      wipe=False)
        return [entry], []

    return _revoke(args, f"{args.user} suspended", build)


def _user_resume(args: argparse.Namespace) -> int:
    found: list[api.UserSummary] = []

    async def build(relay: RelayHTTP, org_id: str) -> Change:
        user = await adminops.resolve_user(relay, args.user)
        found.append(user)
        return [], [user.user_id]

    def unchanged() -> None:
        # Not in our list, yet suspended: the hospital directory did it (SCIM `active: false`,
        # or the user deleted there), and only the directory can undo it.
        if found and found[0].status == "suspended":
            raise CommandError(
                f"{args.user} is suspended by the hospital directory, not by a revocation of "
                "yours: make them active there (a user deleted there keeps their login "
                "suspended for good); nothing was changed")

    return _revoke(args, f"{args.user} resumed", build, unchanged)


def _device_revoke(args: argparse.Namespace) -> int:
    try:  # a typo, before the organisation key is read or anything is signed
        args.device_id = str(uuid.UUID(args.device_id))
    except ValueError:
        raise CommandError(f"{args.device_id!r} is not a device id: a device id is a UUID, as "
                           "`lightbox-admin user show LOGIN` lists it; nothing was revoked"
                           ) from None

    async def build(relay: RelayHTTP, org_id: str) -> Change:
        # A mistyped id must not be reported as revoked while the lost device stays active
        # (docs/USER_GUIDE.md, "A lost phone"): it must be a device of our organisation.
        found = await adminops.find_device(relay, args.device_id)
        if found is None or found.org_id != org_id:
            raise CommandError(f"no device with id {args.device_id} in organisation {org_id}: "
                               "check the id with `lightbox-admin user show LOGIN`; nothing "
                               "was revoked")
        if found.device.status != "active":
            raise _AlreadySo(f"device {args.device_id} ({found.login}) is revoked already; "
                             "nothing was changed")
        entry = certs.RevocationEntry(subject=certs.RevocationSubject.DEVICE, id=args.device_id,
                                      revoked_at=int(time.time()), reason=args.reason,
                                      wipe=args.wipe)
        return [entry], []

    what = f"device {args.device_id} revoked" + (" (wipe ordered)" if args.wipe else "")
    return _revoke(args, what, build)


def _user_renew(args: argparse.Namespace) -> int:
    session = load_session()
    try:
        expires_at = csvio.parse_date(args.expires)
    except ValueError as exc:
        raise CommandError(str(exc)) from exc
    org_id, org_key = _org_key(args)

    async def go() -> Any:
        async with admin_relay(session) as relay:
            user = await adminops.resolve_user(relay, args.user)
            return await adminops.renew_user_licence(relay, user.user_id, org_id=org_id,
                                                     org_key=org_key, expires_at=expires_at,
                                                     now=int(time.time()))

    summary = run_async(go)
    print(f"{summary.login}: licence renewed through {args.expires}; new certificate issued")
    return 0


def _user_reissue(args: argparse.Namespace) -> int:
    """A new enrolment code and handout for a user who has not enrolled, or whose every
    device was revoked; the old code stops working, and a new identity key replaces the old
    one (clients/admin/ops.py :func:`~clients.admin.ops.reissue_enrolment`)."""
    if args.code_valid_hours < 1:
        raise CommandError("--code-valid-hours must be at least 1")
    phone_app = _phone_app("no new code was issued")
    session = load_session()
    org_id, org_key = _org_key(args)
    _prepare_handout_dir(args, "no new code was issued")

    async def go() -> tuple[Any, bool]:
        async with admin_relay(session) as relay:
            await _relay_accepts_phone_app(relay, phone_app, "no new code was issued")
            user = await adminops.resolve_user(relay, args.user)
            made = await adminops.reissue_enrolment(
                relay, user, org_id=org_id, org_key=org_key, now=int(time.time()),
                code_valid_hours=args.code_valid_hours)
            return made, user.status != "pending"

    made, enrolled_before = run_async(go)
    unwritten = _handouts(adminops.ImportReport([made], []), session, org_key, args,
                          phone_app)
    if enrolled_before:  # every device revoked: re-keyed
        print(f"{made.row.login}: new enrolment code issued, with a new identity key: the "
              "revoked devices' key no longer certifies anything; they enrol a new device "
              "with this code")
    else:
        print(f"{made.row.login}: new enrolment code issued; the previous code no longer works")
    return 1 if unwritten else 0


# --- parser ----------------------------------------------------------------------------------


def _provision_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--keyfile", help="organisation keyfile (default: $LIGHTBOX_ORG_KEYFILE)")
    p.add_argument("--handout-dir", help="also write each user's handout here: <login>.pdf "
                   "to print, <login>.png for screens (mode 0600)")
    p.add_argument("--no-qr", action="store_true", help="no QR codes in the terminal")
    p.add_argument("--code-valid-hours", type=int, default=72,
                   help="enrolment code validity (default 72; the relay may cap it)")


def _org_parsers(sub: Any) -> None:
    org = sub.add_parser("org", help="organisation key").add_subparsers(dest="cmd", required=True)
    init = org.add_parser("init", help="create the organisation key (IT workstation)")
    init.add_argument("--org-id", required=True)
    init.add_argument("--keyfile", required=True)
    init.set_defaults(func=_org_init)


def _user_parsers(sub: Any) -> None:
    user = sub.add_parser("user", help="clinicians and service accounts").add_subparsers(
        dest="cmd", required=True)
    add = user.add_parser("add", help="provision one user and print the enrolment handout")
    add.add_argument("--name", required=True)
    add.add_argument("--login", required=True)
    add.add_argument("--roles", required=True, help="semicolon- or comma-separated")
    add.add_argument("--specialty")
    add.add_argument("--department")
    add.add_argument("--licence-type")
    add.add_argument("--licence-number")
    add.add_argument("--jurisdiction")
    add.add_argument("--licence-expires", help="YYYY-MM-DD")
    add.add_argument("--service", action="store_true",
                     help="a service account (e.g. the record gateway, role record_gateway)")
    _provision_options(add)
    add.set_defaults(func=_user_add)
    imp = user.add_parser("import", help="provision users from a CSV file")
    imp.add_argument("file")
    _provision_options(imp)
    imp.set_defaults(func=_user_import)
    ls = user.add_parser("list", help="list users")
    ls.add_argument("--csv", action="store_true", help="CSV export (formula-safe)")
    ls.add_argument("--status", choices=["active", "suspended", "pending"])
    ls.add_argument("--query", "-q")
    ls.set_defaults(func=_user_list)
    show = user.add_parser("show", help="one user, their certificate and devices")
    show.add_argument("user", metavar="LOGIN|ID")
    show.set_defaults(func=_user_show)
    for name, func, help_ in (("suspend", _user_suspend, "suspend (org-signed revocation)"),
                              ("resume", _user_resume, "lift a suspension")):
        p = user.add_parser(name, help=help_)
        p.add_argument("user", metavar="LOGIN|ID")
        p.add_argument("--keyfile")
        p.add_argument("--reason", default=f"{name}ed by IT")
        p.set_defaults(func=func)
    reissue = user.add_parser("reissue", help="a new enrolment code and handout for a user "
                              "who has not enrolled (the old code stops working)")
    reissue.add_argument("user", metavar="LOGIN|ID")
    _provision_options(reissue)
    reissue.set_defaults(func=_user_reissue)
    renew = user.add_parser("renew-licence", help="re-sign the certificate with a new expiry")
    renew.add_argument("user", metavar="LOGIN|ID")
    renew.add_argument("--expires", required=True, help="YYYY-MM-DD")
    renew.add_argument("--keyfile")
    renew.set_defaults(func=_user_renew)


# --- on-call rotas (docs/OPERATIONS.md) --------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lightbox-admin", description="Lightbox IT administration.")
    sub = p.add_subparsers(dest="group", required=True)

    _org_parsers(sub)

    login = sub.add_parser("login", help="log in to the relay's admin API")
    login.add_argument("--server", required=True)
    login.add_argument("--login", required=True)
    login.set_defaults(func=_login)

    _user_parsers(sub)
    sign = sub.add_parser("sign-pending", help="sign the certificates of the users the "
                          "hospital directory (SCIM) created, and print their handouts; "
                          "renew those the directory or the IdP asked to change")
    _provision_options(sign)
    sign.set_defaults(func=_sign_pending)
    rota_parsers(sub)
    cp = sub.add_parser("copies", help="where every copy of an image went (filing, expiry)")
    which = cp.add_mutually_exclusive_group(required=True)
    which.add_argument("--attachment", help="one image's attachment id")
    which.add_argument("--thread", help="every image of a consult thread: its id, or its first "
                       "8 characters or more, as the clinicians' screens print it")
    cp.add_argument("--json", action="store_true", help="print the report as JSON")
    cp.set_defaults(func=_copies)
    dev = sub.add_parser("device", help="devices").add_subparsers(dest="cmd", required=True)
    rv = dev.add_parser("revoke", help="revoke a device (org-signed revocation)")
    rv.add_argument("device_id")
    rv.add_argument("--wipe", action="store_true", help="order the device to erase its data")
    rv.add_argument("--reason", default="revoked by IT")
    rv.add_argument("--keyfile")
    rv.set_defaults(func=_device_revoke)
    adminconsent.register(sub)  # the privacy office's consent commands
    adminbreakglass.register(sub)  # and its break-glass review queue
    keptlists.register(sub)  # copies of the revocation lists, for a restore of the relay
    return p


# The start of a consult id as the clinicians' screens print it (`- consult 3f2a9c1e`), which
# is what they read out to IT.
SHORT_CONSULT_ID = re.compile(r"[0-9a-f]{8,31}")


def _copies(args: argparse.Namespace) -> int:
    """Each device that held the image, when it got it, when its expire order went out and
    when it confirmed destroying its copy, with the filing record (from the audit trail)."""
    what, given, shown = (("consult", args.thread, "`lightbox send` prints it: in thread ID, "
                           "or its first 8 characters or more, as `lightbox inbox` and "
                           "`watch` print it")
                          if args.thread else ("shared image", args.attachment,
                                               "the gateway's log names it: filed attachment ID"))
    short = given.strip().lower().replace("-", "")
    if args.thread and SHORT_CONSULT_ID.fullmatch(short):
        the_id = short  # the relay finds the one consult it starts
    else:
        try:
            the_id = str(uuid.UUID(given))
        except ValueError:
            raise CommandError(f"{given!r} is not a {what} id: a {what} id is a UUID, as "
                               f"{shown}") from None
    session = load_session()

    async def go() -> Any:
        async with admin_relay(session) as relay:
            return await adminops.copies(relay, attachment_id=the_id if args.attachment else None,
                                         thread_id=the_id if args.thread else None)

    try:
        listing = run_async(go)
    except RelayRequestError as exc:
        if exc.code != ErrorCode.NOT_FOUND.value:
            raise
        listing = None
    # The relay answers an unknown image with not_found, and a consult with no image shared in
    # it (or none with that id: it cannot tell IT which) with an empty list.
    if listing is None or not listing.attachments:
        holds = "" if args.attachment else " holds a shared image"
        which = (f"id starting {the_id}" if args.thread and SHORT_CONSULT_ID.fullmatch(the_id)
                 else f"id {the_id}")
        print(f"error: {ErrorCode.NOT_FOUND.value}: no {what} with {which}{holds}",
              file=sys.stderr)
        return 1
    if args.json:
        import msgspec

        print(msgspec.json.encode(listing).decode())
    else:
        for line in adminops.format_copies(listing):
            print(line)
    return 0


# The relay host's commands, now `lightbox-server`'s (server/manage.py).
MOVED = (("db",), ("audit",), ("admin",), ("org", "trust"))


def moved(argv: Sequence[str]) -> str | None:
    """The one sentence that answers an old relay-host spelling, or None."""
    for prefix in MOVED:
        if tuple(argv[:len(prefix)]) == prefix:
            words = " ".join(argv[:len(prefix) + (prefix != ("org", "trust"))])
            return (f"`lightbox-admin {words}` is now `lightbox-server {words}`, run on the "
                    "relay host (lightbox-admin talks to the relay over HTTP only)")
    return None


def _own_failure(exc: BaseException) -> str | None:
    if isinstance(exc, csvio.CsvError | CommandError | OrgKeyError | PromptError | SessionError):
        return f"error: {exc}"
    if isinstance(exc, ProtocolError):  # e.g. the password policy
        return f"error: {exc.code.value}: {exc}"
    return None


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    sentence = moved(argv)
    if sentence is not None:
        print(f"error: {sentence}", file=sys.stderr)
        return 2
    args = build_parser().parse_args(argv)
    return run_command("lightbox-admin", lambda: int(args.func(args)), failure=2,
                       known=_own_failure, login_hint="run `lightbox-admin login`",
                       details_dir=session_path().parent)


if __name__ == "__main__":
    sys.exit(main())
