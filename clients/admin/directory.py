"""``lightbox-admin sign-pending``: sign the certificates of the users the hospital directory
(SCIM 2.0) asked for, on IT's workstation, with the organisation key.

The directory can only ask: each user it creates waits on the relay until this runs. For each
pending user of IT's organisation the tool checks what the directory states as it checks a CSV
row (a role, a licence: clients/admin/csvio.py), makes the identity key, signs the
certificate (login, display name, the roles its groups map to, licence), seals the
enrolment package under a fresh code exactly as ``user import`` does
(clients/admin/provisioning.py), and posts it with the version it read; a user the directory
changed meanwhile is refused and waits for the next run. Run it from a queue (a timer on IT's
workstation, docs/USER_GUIDE.md): the organisation key never leaves the workstation.

It also renews the certificates the directory or the IdP asked to change (a rename, a role
the IdP's group claim now grants): the relay's copy, checked to carry the organisation's
signature, re-signed with the name and roles asked and nothing else changed.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from clients.admin.csvio import RowError, validate_user
from clients.admin.ops import ImportReport, our_certificate
from clients.admin.provisioning import provision_user, renew_certificate
from clients.sdk.errors import FlowError, RelayRequestError
from clients.sdk.http import RelayHTTP
from protocol.directory import PendingRenewal, RenewPending, SignPending
from protocol.keys import OrganisationKey, PassphraseProfile

__all__ = ["SignRun", "sign_pending"]


@dataclasses.dataclass
class SignRun:
    report: ImportReport  # users signed (with their codes) and every refusal
    renewed: list[str]  # logins whose certificates were renewed
    others: int  # queue entries of other organisations (their IT signs them)


async def sign_pending(relay: RelayHTTP, *, org_id: str, org_key: OrganisationKey, now: int,
                       code_valid_hours: int, kdf: PassphraseProfile | None = None) -> SignRun:
    """Sign every pending user of ``org_id`` and renew every certificate asked of it."""
    report = ImportReport([], [])
    run = SignRun(report, [], 0)
    queue = await relay.directory_pending()
    for renewal in queue.renewals:
        if renewal.org_id != org_id:
            run.others += 1
            continue
        try:
            await relay.renew_pending(renewal.user_id, RenewPending(
                version=renewal.version,
                user_certificate=_renewed(renewal, org_id=org_id, org_key=org_key, now=now)))
        except (RelayRequestError, FlowError, ValueError) as exc:
            report.failed.append(RowError(0, renewal.login, _reason(exc)))
        else:
            run.renewed.append(renewal.login)
    for entry in queue.users:
        if entry.org_id != org_id:
            run.others += 1
            continue
        try:
            row = validate_user(
                line=0, name=entry.display_name, login=entry.login, roles=entry.roles,
                specialty=entry.specialty, department=entry.department,
                licence_type=entry.licence_type, licence_number=entry.licence_number,
                jurisdiction=entry.jurisdiction, licence_expires=entry.licence_expires,
                now=now)
        except ValueError as exc:
            # Nothing is signed for a user the directory describes incompletely (no role, no
            # licence): IT fixes the directory and the next run signs them.
            report.failed.append(RowError(0, entry.login, f"not signed: {exc}"))
            continue
        made = provision_user(row, org_id=org_id, org_key=org_key, now=now,
                              code_valid_hours=code_valid_hours, kdf=kdf)
        try:
            await relay.sign_pending(entry.directory_id,
                                     SignPending(version=entry.version, user=made.request))
        except RelayRequestError as exc:
            report.failed.append(RowError(0, entry.login, _reason(exc)))
        else:
            report.provisioned.append(made)
    return run


def _renewed(renewal: PendingRenewal, *, org_id: str, org_key: OrganisationKey,
             now: int) -> str:
    """The relay's copy of the certificate, checked to be ours, re-signed with what the
    renewal asks (a user left with no role is not signed: IT decides, as for a CSV row)."""
    current = our_certificate(renewal.user_certificate, user_id=renewal.user_id,
                              org_id=org_id, org_key=org_key)
    changes: dict[str, Any] = {}
    if renewal.display_name is not None:
        changes["display_name"] = renewal.display_name
    if renewal.roles is not None:
        if not renewal.roles:
            raise ValueError("not renewed: no role left (suspend the user, or grant a role)")
        changes["roles"] = renewal.roles
    return renew_certificate(current, org_key=org_key, now=now, **changes)


def _reason(exc: Exception) -> str:
    if isinstance(exc, RelayRequestError):
        return exc.code + (f": {exc.detail}" if exc.detail else "")
    if isinstance(exc, FlowError) and exc.code:
        return f"{exc.code}: {exc}"
    return str(exc)
