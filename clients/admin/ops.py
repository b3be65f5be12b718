"""IT operations through the relay's admin API (PROTOCOL §11), for ``lightbox-admin``.

Each function takes a logged-in :class:`RelayHTTP` and, where something must be signed, the
unsealed organisation key; the signing itself is in :mod:`clients.admin.provisioning`.
Revocation lists are read back from the relay and verified under our own key before the next
one is built on them, so a relay cannot make IT's tool drop an entry by serving a forged list.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable
from urllib.parse import quote

import msgspec

from clients.admin.csvio import RowError, UserRow
from clients.admin.provisioning import (
    Provisioned,
    next_revocation_list,
    provision_user,
    reissue_user,
    renew_licence,
)
from clients.admin.rotaio import RotaRowError, ShiftRow
from clients.sdk.errors import FlowError, RelayRequestError
from clients.sdk.http import RelayHTTP
from clients.sdk.identity import org_revocation_lists
from clients.sdk.timefmt import format_time
from clients.sdk.wording import counted
from protocol import api, certs
from protocol.canonical import LABEL_USER_CERTIFICATE, open_compact
from protocol.errors import ErrorCode, ProtocolError
from protocol.filing import CopiesList, CopiesReport, CopyInfo
from protocol.keys import OrganisationKey, PassphraseProfile

__all__ = [
    "COPY_WORDS",
    "ImportReport",
    "apply_revocations",
    "copies",
    "current_revocation_list",
    "describe_enrolment",
    "find_device",
    "format_copies",
    "import_shifts",
    "our_certificate",
    "provision_rows",
    "reissue_enrolment",
    "remove_shift",
    "renew_user_licence",
    "resolve_user",
]

_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


@dataclasses.dataclass
class ImportReport:
    provisioned: list[Provisioned]
    failed: list[RowError]


async def provision_rows(
    relay: RelayHTTP, rows: Iterable[UserRow], *, org_id: str, org_key: OrganisationKey,
    now: int, code_valid_hours: int, kdf: PassphraseProfile | None = None,
) -> ImportReport:
    """Sign and post users in batches; the relay's verdict per user lands in the report."""
    report = ImportReport([], [])
    made = [provision_user(r, org_id=org_id, org_key=org_key, now=now,
                           code_valid_hours=code_valid_hours, kdf=kdf) for r in rows]
    for i in range(0, len(made), api.MAX_BATCH_USERS):
        batch = made[i:i + api.MAX_BATCH_USERS]
        results = await relay.provision_users(
            api.ProvisionUsers(users=[p.request for p in batch]))
        by_index = {r.index: r for r in results}
        for j, p in enumerate(batch):
            result = by_index.get(j)
            if result is None:
                report.failed.append(RowError(p.row.line, p.row.login, "no answer from the relay"))
            elif not result.ok:
                reason = result.code or "refused"
                if result.detail:
                    reason += f": {result.detail}"
                report.failed.append(RowError(p.row.line, p.row.login, reason))
            elif result.user_id not in (None, p.user_id):
                report.failed.append(RowError(p.row.line, p.row.login,
                                              "the relay stored another user id"))
            else:
                report.provisioned.append(p)
    return report


async def resolve_user(relay: RelayHTTP, who: str) -> api.UserSummary:
    """A user by id or exact login."""
    if _UUID.match(who):
        return (await relay.get_user(who)).user
    matches = [u for u in (await relay.list_users(q=who)).users if u.login == who]
    if not matches:
        raise FlowError(f"no user with login {who!r}", code=ErrorCode.NOT_FOUND.value)
    return matches[0]


class AdminDevice(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Answer of ``GET /v1/admin/devices/{device_id}`` (server/routes/admin.py)."""

    device: api.DeviceSummary
    user_id: str
    login: str
    org_id: str


async def find_device(relay: RelayHTTP, device_id: str) -> AdminDevice | None:
    """The device with this id and whose it is, or None when no device has it."""
    try:
        r = await relay._send("GET", f"/v1/admin/devices/{device_id}",
                              headers=relay._admin_headers())
        return relay._decode(r, AdminDevice)
    except RelayRequestError as exc:
        if exc.code == ErrorCode.NOT_FOUND.value:
            return None
        raise


async def current_revocation_list(
    relay: RelayHTTP, org_id: str, org_public_key: bytes
) -> certs.RevocationList | None:
    """Our organisation's newest list at the relay, verified under our key (None if none)."""
    for token in await org_revocation_lists(relay, org_id):
        try:
            return certs.verify_revocation_list(token, trusted_orgs={org_id: org_public_key})
        except ProtocolError as exc:
            raise FlowError("the relay serves a revocation list for our organisation that our "
                            "key did not sign", code=exc.code.value) from exc
    return None


async def apply_revocations(
    relay: RelayHTTP, *, org_id: str, org_key: OrganisationKey, now: int,
    add: Iterable[certs.RevocationEntry] = (), remove_users: Iterable[str] = (),
) -> tuple[certs.RevocationList | None, bool]:
    """Fetch and verify the current list, sign the next one, post it. Returns the list in
    force and whether it changed (suspending a suspended user posts nothing)."""
    add, remove_users = list(add), list(remove_users)
    current = await current_revocation_list(relay, org_id, org_key.public)
    held = {(e.subject, e.id) for e in current.entries} if current else set()
    if all((e.subject, e.id) in held for e in add) and not any(
            (certs.RevocationSubject.USER, u) in held for u in remove_users):
        return current, False
    nxt = next_revocation_list(current, org_id=org_id, now=now, add=add,
                               remove_users=remove_users)
    await relay.upload_revocations(certs.issue_revocation_list(nxt, org_key))
    return nxt, True


def our_certificate(token: str, *, user_id: str, org_id: str,
                    org_key: OrganisationKey) -> certs.UserCertificate:
    """The user's current certificate as the relay serves it, checked to carry our
    organisation's signature and to name this user and organisation."""
    try:
        current = open_compact(LABEL_USER_CERTIFICATE, token,
                               certs.UserCertificate, org_key.public,
                               max_length=certs.MAX_CERTIFICATE_LENGTH)
    except ProtocolError as exc:
        raise FlowError("the relay's copy of this user's certificate is not signed by our "
                        "organisation key", code=ErrorCode.CERTIFICATE_INVALID.value) from exc
    if current.user_id != user_id or current.org_id != org_id:
        raise FlowError("the relay served another user's certificate",
                        code=ErrorCode.CERTIFICATE_INVALID.value)
    return current


async def renew_user_licence(
    relay: RelayHTTP, user_id: str, *, org_id: str, org_key: OrganisationKey,
    expires_at: int, now: int,
) -> api.UserSummary:
    """Re-sign the user's certificate (same identity key) with a new licence expiry. The
    current certificate comes from the relay and must carry our organisation's signature."""
    detail = await relay.get_user(user_id)
    current = our_certificate(detail.user_certificate, user_id=user_id, org_id=org_id,
                              org_key=org_key)
    try:
        token = renew_licence(current, org_key=org_key, expires_at=expires_at, now=now)
    except ValueError as exc:
        raise FlowError(str(exc), code=ErrorCode.VALIDATION_FAILED.value) from exc
    return await relay.renew_certificate(user_id, token)


_ENROLLED = ("has a device still active, so a new enrolment code would not help: they link "
             "a new one from it (`lightbox link`), and a lost one is revoked "
             "(`lightbox-admin device revoke`)")


_SUSPENDED = "{login} is suspended: resume them first (`lightbox-admin user resume`)"


async def reissue_enrolment(
    relay: RelayHTTP, user: api.UserSummary, *, org_id: str, org_key: OrganisationKey,
    now: int, code_valid_hours: int, kdf: PassphraseProfile | None = None,
) -> Provisioned:
    """A new enrolment code (and identity key and certificate) for a user still ``pending``,
    or one whose every device was revoked (a lost only phone); the relay drops the old code.
    The returned request carries the expiry the relay stored."""
    if user.status == "suspended":
        raise FlowError(_SUSPENDED.format(login=user.login),
                        code=ErrorCode.USER_SUSPENDED.value)
    detail = await relay.get_user(user.user_id)
    if any(d.status == "active" for d in detail.devices):
        raise FlowError(f"{user.login} {_ENROLLED}",
                        code=ErrorCode.USER_ALREADY_ENROLLED.value)
    current = our_certificate(detail.user_certificate, user_id=user.user_id, org_id=org_id,
                              org_key=org_key)
    made = reissue_user(current, user.login, org_key=org_key, now=now,
                        code_valid_hours=code_valid_hours, kdf=kdf)
    body = api.EnrolmentReissue(
        user_certificate=made.certificate,
        enrolment_token_hash=made.request.enrolment_token_hash,
        sealed_identity=made.request.sealed_identity,
        enrolment_expires_at=made.request.enrolment_expires_at)
    try:
        answer = await relay.reissue_enrolment(user.user_id, body)
    except RelayRequestError as exc:  # enrolled or suspended meanwhile
        if exc.code == ErrorCode.USER_ALREADY_ENROLLED.value:
            raise FlowError(f"{user.login} {_ENROLLED}", code=exc.code) from exc
        if exc.code == ErrorCode.USER_SUSPENDED.value:
            raise FlowError(_SUSPENDED.format(login=user.login), code=exc.code) from exc
        raise
    return dataclasses.replace(made, request=msgspec.structs.replace(
        made.request, enrolment_expires_at=answer.enrolment_expires_at))


async def import_shifts(relay: RelayHTTP, *, org_id: str, role: str,
                        rows: Iterable[ShiftRow]) -> tuple[list[str], list[RotaRowError]]:
    """Post shifts in batches; returns the stored shift ids and the rows the relay refused
    (``shift_overlap``, ``shift_empty``, ``rota_invalid`` for unknown users...), by line."""
    stored: list[str] = []
    failed: list[RotaRowError] = []
    todo = list(rows)
    for i in range(0, len(todo), api.MAX_SHIFTS):
        batch = todo[i:i + api.MAX_SHIFTS]
        answer = await relay.add_shifts(org_id, role, api.ShiftsUpload(shifts=[
            api.ShiftIn(starts_at=r.starts_at, ends_at=r.ends_at, ladder=list(r.ladder),
                        line=r.line) for r in batch]))
        by_index = {r.index: r for r in answer.results}
        for j, row in enumerate(batch):
            res = by_index.get(j)
            if res is None:
                failed.append(RotaRowError(row.line, row.ladder[0], "no answer from the relay"))
            elif not res.ok:
                reason = (res.code or "refused") + (f": {res.detail}" if res.detail else "")
                failed.append(RotaRowError(row.line, row.ladder[0], reason))
            elif res.shift_id:
                stored.append(res.shift_id)
    return stored, failed


async def remove_shift(relay: RelayHTTP, *, org_id: str, role: str, shift_id: str
                       ) -> api.ShiftRemoved | None:
    """Remove a shift and learn what becomes of its unacknowledged consults: asked for with
    ``Prefer: return=representation`` (docs/PROTOCOL.md §16.4); None from a relay that
    answers 204 regardless."""
    r = await relay._send(
        "DELETE", f"{relay._oncall_path(org_id, role)}/shifts/{quote(shift_id, safe='')}",
        headers={**relay._admin_headers(), "Prefer": "return=representation"})
    if r.status_code == 204:
        return None
    return relay._decode(r, api.ShiftRemoved)


async def copies(relay: RelayHTTP, *, attachment_id: str | None = None,
                 thread_id: str | None = None) -> CopiesList:
    """Where every copy of an image (or of a thread's images) went, from the relay's audit
    trail (``GET /v1/admin/copies``, docs/PROTOCOL.md §15)."""
    params = {k: v for k, v in {"attachment_id": attachment_id,
                                "thread_id": thread_id}.items() if v}
    r = await relay._send("GET", "/v1/admin/copies", params=params,
                          headers=relay._admin_headers())
    return relay._decode(r, CopiesList)


def describe_enrolment(detail: api.UserDetail) -> str:
    """The state of the user's latest enrolment code for ``user show``: when a pending code
    expires (clients/sdk/timefmt.py), and for a user who never enrolled whose code expired, how to
    issue a new one."""
    state, until = detail.enrolment, detail.enrolment_expires_at
    if until is None or state not in ("pending", "expired"):
        return state
    if state == "pending":
        return f"pending, valid until {format_time(until)}"
    text = f"expired {format_time(until)}"
    if detail.user.status == "pending":
        text += f" (issue a new one: lightbox-admin user reissue {detail.user.login})"
    return text


COPY_WORDS = {
    "destroyed": "destroyed",
    "never_received": "never received (refused after the order)",
    "fetched_after_confirmation": "MAY BE HELD: downloaded after its confirmation",
    "ordered": "expiry ordered, not confirmed",
    "held": "held",
    "not_received": "not downloaded yet",
    "gateway": "gateway (keeps none)",
}
"""How ``lightbox-admin copies`` words each copy status (server/expiry.py COPY_STATUSES)."""

# An order to a device that never downloaded the image: from the moment it is issued the relay
# refuses that device the image (docs/PROTOCOL.md §15), so the device holds no copy and never
# will; only its confirmation is still to come.
ORDERED_NEVER_RECEIVED = "never received; expiry ordered, not confirmed"


def _copy_words(c: CopyInfo) -> str:
    if c.status == "ordered" and c.received_at is None:
        return ORDERED_NEVER_RECEIVED
    return COPY_WORDS.get(c.status, c.status)


def _may_hold(c: CopyInfo) -> bool:
    """Whether this device may hold the image now: it downloaded it (or sent it) and has not
    confirmed destroying it, or downloaded it after confirming."""
    return (c.status in ("held", "fetched_after_confirmation")
            or (c.status == "ordered" and c.received_at is not None))


def _copies_summary(r: CopiesReport) -> str:
    """The last line of an image's block: whether a copy may remain anywhere."""
    if r.all_destroyed:
        return "every copy confirmed destroyed"
    devices = [c for c in r.copies if c.role != "gateway"]
    if holding := [c for c in devices if _may_hold(c)]:
        return f"copies remain on {counted(len(holding), 'device')}"
    if waiting := [c for c in devices if c.status == "not_received"]:
        return (f"no copy held now; {counted(len(waiting), 'device')} may still download "
                "the image")
    if unconfirmed := [c for c in devices if c.status == "ordered"]:
        return (f"no copy remains: {counted(len(unconfirmed), 'device')} never received the "
                "image (expiry order not confirmed yet)")
    return "no device copy recorded"


def format_copies(listing: CopiesList) -> list[str]:
    """Human-readable lines, one block per image (times as clients/sdk/timefmt.py writes them)."""

    def t(value: int | None) -> str:
        return "-" if value is None else format_time(value)

    lines: list[str] = []
    for r in listing.attachments:
        state = ("filed" if r.filed_at is not None else
                 "NOT FILED (hard limit)" if r.not_filed_at is not None else "not filed yet")
        lines.append(f"attachment {r.attachment_id}  thread {r.thread_id or '-'}  {state}")
        if r.filed_at is not None:
            lines.append(f"  filed {t(r.filed_at)} by gateway {r.gateway_device_id}  "
                         f"statement {r.filing_statement_id}  receipt sha256 {r.receipt_sha256}")
        lines.append(f"  relay ciphertext deleted {t(r.ciphertext_deleted_at)}")
        lines.append(f"  {'device':<36}  {'role':<9}  {'received':<16}  {'expire order':<16}  "
                     f"{'reason':<15}  {'confirmed destroyed':<19}  copy")
        for c in r.copies:
            lines.append(f"  {c.device_id:<36}  {c.role:<9}  {t(c.received_at):<16}  "
                         f"{t(c.order_issued_at):<16}  {c.order_reason or '-':<15}  "
                         f"{t(c.confirmed_at):<19}  {_copy_words(c)}")
        lines.append(f"  {_copies_summary(r)}")
    return lines
