"""``lightbox-admin consent``: the privacy office's path to a patient's consents, through IT's
tool (docs/USER_GUIDE.md "Withdrawing a consent: the privacy office").

    lightbox-admin consent find --patient-id MRN [--issuer ISSUER] [--fhir-url URL]
    lightbox-admin consent show CONSENT_ID
    lightbox-admin consent withdraw CONSENT_ID --reason TEXT [--yes]

The relay never sees a patient id (it travels only in sealed bodies), so ``find`` searches the
*record*: the FHIR R4 Consents the record gateway files, each naming the patient by the id from
the sealed record data (clients/gateway/records.py ``patient_id_system``; the ``:identifier`` search
modifier, FHIR R4 search.html#modifiers). It reads the FHIR server's URL and credentials as the
gateway does (clients/gateway/fhir.py ``FhirSettings.from_env``: ``LIGHTBOX_FHIR_TOKEN_FILE``, or
``LIGHTBOX_FHIR_USERNAME`` and ``LIGHTBOX_FHIR_PASSWORD_FILE``). With an admin session it also
shows each consent's status at the relay.

``show`` and ``withdraw`` use the relay's admin API after ``lightbox-admin login``
(``GET /v1/admin/consents/{id}``, ``POST /v1/admin/consents/{id}/revoke``; docs/PROTOCOL.md
§13): a consent token is signed by the clinician who captured it, so a withdrawal is the
relay's revocation record, which the relay enforces on every later send and download and
tells devices of (withdrawn notices to senders, expiry orders to every copy's device).
The reason is audited on the relay: no patient details in it.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import re
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from clients.admin.session import SessionError, load_session
from clients.sdk.errors import FlowError, RelayRequestError
from clients.sdk.http import RelayHTTP
from clients.sdk.timefmt import format_time
from clients.sdk.wording import counted
from protocol import api
from protocol.errors import ErrorCode

__all__ = ["format_withdrawal", "register"]

T = TypeVar("T")
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_CONSENT_URN = re.compile(r"^urn:uuid:([0-9a-f-]{36})$")


def _run(factory: Callable[[], Awaitable[T]]) -> T:
    async def runner() -> T:
        return await factory()
    return asyncio.run(runner())


def _local(ts: int | None) -> str:
    return "-" if ts is None else format_time(ts)


def _captured(value: object) -> str:
    """A FHIR ``dateTime`` (protocol/consent.py writes the consent's capture time) written as
    every time a person reads (clients/sdk/timefmt.py); as the record has it when it is not
    a date and time with a zone (a bare date, a partial one)."""
    if not isinstance(value, str):
        return "-"
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        return value
    return value if parsed.tzinfo is None else format_time(parsed.timestamp())


def _consent_id(value: str) -> str:
    consent_id = value.strip().lower()
    if not _UUID.match(consent_id):
        raise FlowError(f"{value!r} is not a consent id (the consent "
                        "reference on the patient's copy, e.g. 6f1c2a44-5a8e-4f0b-9d53-"
                        "1c2e3f4a5b6c)", code=ErrorCode.VALIDATION_FAILED.value)
    return consent_id


def _relay() -> RelayHTTP:
    session = load_session()
    return RelayHTTP(session.server, admin_token=session.token)


async def _admin_call(consent_id: str, call: Callable[[RelayHTTP], Awaitable[T]]) -> T:
    async with _relay() as relay:
        try:
            return await call(relay)
        except RelayRequestError as exc:
            if exc.code == ErrorCode.NOT_FOUND.value:
                raise FlowError(f"the relay holds no consent {consent_id}",
                                code=ErrorCode.NOT_FOUND.value) from None
            raise


# --- find ------------------------------------------------------------------------------------


def _fhir_consent_id(resource: dict[str, Any]) -> str | None:
    for ident in resource.get("identifier") or []:
        if isinstance(ident, dict) and (m := _CONSENT_URN.match(str(ident.get("value", "")))):
            return m.group(1)
    return None


def _purposes(resource: dict[str, Any]) -> str:
    provision = resource.get("provision")
    codes = [p.get("code") for p in (provision.get("purpose") or [])
             if isinstance(p, dict) and str(p.get("system", "")).endswith("/purpose")] \
        if isinstance(provision, dict) else []
    return ", ".join(str(c) for c in codes) or "-"


def _find(args: argparse.Namespace) -> int:
    # Imported here, for this command alone: the record gateway's modules bring pydicom and
    # Pillow, a fifth of a second at every start of lightbox-admin otherwise.
    from clients.gateway.fhir import FhirClient, FhirError, FhirSettings
    from clients.gateway.records import patient_id_system

    try:
        settings = FhirSettings.from_env(url=args.fhir_url or None)
    except ValueError as exc:
        raise FlowError(f"the FHIR server: {exc} (give --fhir-url URL; credentials as the "
                        "record gateway reads them)", code="fhir_settings") from None
    system = patient_id_system(args.issuer) if args.issuer else None

    async def go() -> list[dict[str, Any]]:
        async with FhirClient(settings) as fhir:
            return await fhir.find_patient_consents(args.patient_id, system=system)

    try:
        found = _run(go)
    except FhirError as exc:
        raise FlowError(f"the FHIR server: {exc}", code="fhir_unavailable") from None
    statuses: dict[str, api.ConsentWithdrawal] = {}
    try:
        load_session()
        logged_in = True
    except SessionError:
        logged_in = False
    if logged_in and found:
        async def status() -> None:
            async with _relay() as relay:
                for resource in found:
                    consent_id = _fhir_consent_id(resource)
                    if consent_id is None:
                        continue
                    try:
                        statuses[consent_id] = await relay.admin_consent(consent_id)
                    except RelayRequestError:
                        continue
        _run(status)
    for resource in found:
        consent_id = _fhir_consent_id(resource) or "(no Lightbox consent id)"
        filed = "agreed" if resource.get("status") == "active" else "refused"
        line = (f"{consent_id}  {filed} for {_purposes(resource)}, captured "
                f"{_captured(resource.get('dateTime'))}")
        if (w := statuses.get(consent_id)) is not None:
            c = w.consent
            line += (f"; relay: withdrawn {_local(c.revoked_at)}" if c.revoked_at is not None
                     else f"; relay: {c.status}") + f"; by {w.issuer_name} ({w.issuer_login})"
        print(line)
    print(f"{counted(len(found), 'consent')} filed for patient {args.patient_id} in the record"
          + ("" if logged_in else
             " (log in with `lightbox-admin login` to see each one's status at the relay)"))
    return 0


# --- show and withdraw -------------------------------------------------------------------------


def format_withdrawal(w: api.ConsentWithdrawal) -> list[str]:
    """What the privacy office reads about a consent: who captured it, its status, who
    withdrew it and why, what was withdrawn and which copies are confirmed destroyed."""
    c = w.consent
    lines = [f"consent {c.consent_id}",
             f"  captured by {w.issuer_name} ({w.issuer_login}), registered "
             f"{_local(c.registered_at)}: {w.decision} for {', '.join(w.purposes)}"]
    if c.revoked_at is not None:
        lines.append(f"  status: WITHDRAWN {_local(c.revoked_at)} by {w.revoked_by or '?'}")
        lines.append(f"  reason: {w.reason or '(none given)'}")
    else:
        lines.append(f"  status: {c.status}")
    withdrawn = len(w.withdrawn_message_ids)
    lines.append(f"  messages sent under it: {w.messages}; withdrawn before delivery: "
                 f"{withdrawn}")
    lines.extend(f"    withdrawn message {m}" for m in w.withdrawn_message_ids)
    lines.append(f"  copies of its images: {len(w.copies)}")
    for copy in w.copies:
        if copy.device_kind == "gateway":
            state = "a record gateway: it files the image and keeps no copy"
        elif copy.ordered_at is None:
            state = "no expiry order"
        else:
            state = (f"ordered to expire {_local(copy.ordered_at)} ({copy.reason}), "
                     + (f"confirmed destroyed {_local(copy.confirmed_at)}"
                        if copy.confirmed_at is not None else "NOT YET CONFIRMED"))
        lines.append(f"    image {copy.attachment_id} on {copy.display_name} ({copy.login})'s "
                     f"{copy.device_kind} {copy.device_id}: {state}")
    if c.revoked_at is not None:
        pending = sum(copy.confirmed_at is None and copy.device_kind != "gateway"
                      for copy in w.copies)
        lines.append("  every copy confirmed destroyed" if not pending else
                     f"  {counted(pending, 'copy', 'copies')} not yet confirmed destroyed (each "
                     "device confirms "
                     "when it next connects)")
    return lines


def _show(args: argparse.Namespace) -> int:
    consent_id = _consent_id(args.consent_id)
    w = _run(lambda: _admin_call(consent_id, lambda relay: relay.admin_consent(consent_id)))
    for line in format_withdrawal(w):
        print(line)
    return 0


def _withdraw(args: argparse.Namespace) -> int:
    consent_id = _consent_id(args.consent_id)
    reason = args.reason.strip()
    if not reason:
        raise FlowError("say why the consent is withdrawn with --reason "
                        "TEXT (no patient details: it is kept in the relay's audit log)",
                        code=ErrorCode.VALIDATION_FAILED.value)
    interactive = sys.stdin.isatty() and not args.yes
    if not interactive and not args.yes:
        raise FlowError("withdrawing a consent cannot be undone: pass --yes "
                        "to confirm", code=ErrorCode.VALIDATION_FAILED.value)

    async def go() -> api.ConsentRevoked:
        w = await _admin_call(consent_id, lambda relay: relay.admin_consent(consent_id))
        if w.consent.revoked_at is not None:
            raise FlowError(f"consent {consent_id} was already withdrawn "
                            f"{_local(w.consent.revoked_at)} by {w.revoked_by}",
                            code=ErrorCode.CONSENT_REVOKED.value)
        print(f"consent {consent_id}: captured by {w.issuer_name} ({w.issuer_login}), "
              f"{w.decision} for {', '.join(w.purposes)}; {w.messages} messages sent under it")
        question = ("Withdraw it? Undelivered messages are withdrawn and every copy of its "
                    "images is deleted (yes/no): ")
        if interactive and (await asyncio.to_thread(input, question)).strip().lower() \
                not in {"y", "yes"}:
            raise FlowError("nothing withdrawn", code="cancelled")
        return await _admin_call(consent_id,
                                 lambda relay: relay.admin_revoke_consent(consent_id, reason))

    result = _run(go)
    if result.already:
        raise FlowError(f"consent {consent_id} was already withdrawn "
                        f"{_local(result.revoked_at)}", code=ErrorCode.CONSENT_REVOKED.value)
    print(f"withdrawn: consent {consent_id} at {_local(result.revoked_at)}")
    print(f"messages withdrawn before delivery: {result.withdrawn_messages}")
    print(f"copies ordered to expire: {result.expiry_orders} (see `lightbox-admin consent show "
          f"{consent_id}` for each device's confirmation)")
    return 0


def register(sub: Any) -> None:
    """Add ``consent`` to ``lightbox-admin``'s subparsers (clients/admin/cli.py build_parser)."""
    import os

    cs = sub.add_parser("consent", help="the privacy office: find, show and withdraw a "
                                        "patient's consents").add_subparsers(dest="cmd",
                                                                             required=True)
    fd = cs.add_parser("find", help="a patient's consents, from the record's FHIR server")
    fd.add_argument("--patient-id", required=True, metavar="MRN")
    fd.add_argument("--issuer", metavar="ISSUER", help="who assigned the id (as the record "
                    "gateway's --issuer); default: any")
    fd.add_argument("--fhir-url", default=os.environ.get("LIGHTBOX_FHIR_URL", ""),
                    metavar="URL", help="the FHIR R4 base (default $LIGHTBOX_FHIR_URL)")
    fd.set_defaults(func=_find)
    sh = cs.add_parser("show", help="a consent: status, what was withdrawn, every copy")
    sh.add_argument("consent_id", metavar="CONSENT_ID")
    sh.set_defaults(func=_show)
    wd = cs.add_parser("withdraw", help="withdraw a consent (the patient asked the privacy "
                                        "office)")
    wd.add_argument("consent_id", metavar="CONSENT_ID")
    wd.add_argument("--reason", required=True, metavar="TEXT",
                    help="why, for the audit log (no patient details)")
    wd.add_argument("--yes", action="store_true", help="no confirmation prompt (scripts)")
    wd.set_defaults(func=_withdraw)
