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
"""

from __future__ import annotations

from clients.admin.csvio import RowError, validate_user
from clients.admin.ops import ImportReport
from clients.admin.provisioning import provision_user
from clients.sdk.errors import RelayRequestError
from clients.sdk.http import RelayHTTP
from protocol.directory import SignPending
from protocol.keys import OrganisationKey, PassphraseProfile

__all__ = ["sign_pending"]


async def sign_pending(relay: RelayHTTP, *, org_id: str, org_key: OrganisationKey, now: int,
                       code_valid_hours: int, kdf: PassphraseProfile | None = None
                       ) -> tuple[ImportReport, int]:
    """Sign every pending user of ``org_id``: the report (provisioned with their codes, and
    the refusals) and how many pending users belong to other organisations (their IT signs
    them)."""
    report = ImportReport([], [])
    others = 0
    for entry in (await relay.directory_pending()).users:
        if entry.org_id != org_id:
            others += 1
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
            reason = exc.code + (f": {exc.detail}" if exc.detail else "")
            report.failed.append(RowError(0, entry.login, reason))
        else:
            report.provisioned.append(made)
    return report, others
