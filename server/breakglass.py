"""Break-glass on the relay (docs/PROTOCOL.md §17): an emergency message sent without a
consent, when none can be asked for (an unconscious patient, no representative).

The guidance's anchor: images for direct care inside the institution's secure systems need no
separate consent; everything else does. So a message whose header declares ``emergency`` (a
category; the clinician's own words are sealed in the body) replaces the consent check of
server/consents.py with this one, inside the send transaction, before anything is stored:

1. it is for direct care, not flagged external, and names no consent;
2. the sender is an active clinician (not a service account) with a valid licence;
3. every recipient device belongs to an active, licensed clinician of the **sender's**
   organisation; the organisation's record gateways (admitted by the filing hook) may receive
   it to file it for direct care;
4. the sender has sent fewer than ``LIGHTBOX_BREAK_GLASS_DAILY_LIMIT`` such messages in the
   24 hours before now (relay clock), counting the ones of the same batch.

Refusals: ``break_glass_not_allowed`` (1-3) and ``break_glass_limit`` (4, with retry_after:
when the oldest case of the window leaves it); each refusal is audited
(``message.break_glass_refused``). A message that passes is stored with a case
(server/store/breakglass.py): audited as ``message.break_glass`` (category and counts, never
the reason), put on the privacy office's review queue, and counted in its thread's
``break_glass_pending`` (the reminder every participant's client shows) until the sender files
a follow-up: a consent registered afterwards (any decision: a refusal is an answer too), or
the category of reason why none was possible, its words sealed in the thread.

The privacy office (IT's tool, admin-authenticated) lists, shows, closes (with an outcome and a
note, audited) and reports on the cases.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import time
from collections.abc import Callable, Sequence
from typing import Any

import asyncpg

from protocol.api import BreakGlassCase
from protocol.errors import ErrorCode
from protocol.model import MessageHeader, Purpose
from server import audit
from server.authn import AdminPrincipal, Principal
from server.db import Database
from server.errors import Conflict, Forbidden, InvalidInput, LimitError, NotFound
from server.store import breakglass, consents

__all__ = ["WINDOW", "BreakGlassService", "Report", "Use"]

WINDOW = dt.timedelta(hours=24)
_NOT_ALLOWED = ErrorCode.BREAK_GLASS_NOT_ALLOWED


@dataclasses.dataclass(frozen=True)
class Use:
    user_id: str
    login: str
    display_name: str
    cases: int = 0
    awaiting_follow_up: int = 0
    inappropriate: int = 0


@dataclasses.dataclass(frozen=True)
class Report:
    since: dt.datetime
    until: dt.datetime
    cases: list[BreakGlassCase]

    def count(self, pred: Callable[[BreakGlassCase], bool]) -> int:
        return sum(1 for c in self.cases if pred(c))

    def by(self, key: Callable[[BreakGlassCase], str | None]) -> dict[str, int]:
        out: dict[str, int] = {}
        for c in self.cases:
            k = key(c)
            if k is not None:
                out[k] = out.get(k, 0) + 1
        return dict(sorted(out.items()))

    def by_clinician(self) -> list[Use]:
        uses: dict[str, Use] = {}
        for c in self.cases:
            u = uses.get(c.sender_user_id) or Use(c.sender_user_id, c.sender_login,
                                                  c.sender_name)
            uses[c.sender_user_id] = dataclasses.replace(
                u, cases=u.cases + 1,
                awaiting_follow_up=u.awaiting_follow_up + (c.follow_up is None),
                inappropriate=u.inappropriate + (c.outcome == "inappropriate"))
        return sorted(uses.values(), key=lambda u: (-u.cases, u.login))


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class BreakGlassService:
    def __init__(self, db: Database, *, daily_limit: int,
                 clock: Callable[[], float] = time.time) -> None:
        self.db, self.daily_limit, self.clock = db, daily_limit, clock

    def now(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self.clock(), dt.UTC)

    # -- the send path (called by server/sends.py inside its transaction) ---------------------

    @staticmethod
    async def lock(conn: asyncpg.Connection, headers: Sequence[MessageHeader]) -> None:
        """Serialise each emergency sender's sends across relay processes (the limit)."""
        await breakglass.lock_senders(
            conn, [h.sender_user_id for h in headers if h.emergency is not None])

    async def check(self, conn: asyncpg.Connection, header: MessageHeader, *, org_id: str,
                    gateways: frozenset[str], counted: dict[str, int],
                    now: dt.datetime) -> int:
        """Checks 1-4 of the module docstring; ``counted`` holds this batch's accepted
        emergency messages per sender and is incremented when this one passes. Returns the
        number of recipient users (record gateways not counted)."""
        try:
            return await self._check(conn, header, org_id=org_id, gateways=gateways,
                              counted=counted, now=now)
        except (Forbidden, LimitError) as refused:
            await audit.append(conn, "message.break_glass_refused", outcome="refused",
                               subject_kind="thread", subject_id=header.thread_id, details={
                                   "code": refused.code.value,
                                   "category": str(header.emergency),
                                   "sender_device_id": header.sender_device_id})
            raise

    async def _check(self, conn: asyncpg.Connection, h: MessageHeader, *, org_id: str,
                     gateways: frozenset[str], counted: dict[str, int],
                     now: dt.datetime) -> int:
        if self.daily_limit == 0:
            raise Forbidden(_NOT_ALLOWED, "break-glass is turned off on this relay")
        if h.purpose is not Purpose.DIRECT_CARE or h.external:
            raise Forbidden(_NOT_ALLOWED, "an emergency message without consent is for direct "
                            "care inside the organisation only")
        if h.consent_id is not None:
            raise Forbidden(_NOT_ALLOWED, "an emergency message names no consent: send it "
                            "under the consent instead")
        owners = {o.device_id: o for o in await breakglass.device_owners(
            conn, [h.sender_device_id, *h.recipient_devices])}
        sender = owners.get(h.sender_device_id)
        if sender is None or not self._credentialed(sender, org_id, now):
            raise Forbidden(_NOT_ALLOWED, "only a clinician with a valid licence may declare "
                            "an emergency")
        outside = sorted(d for d in h.recipient_devices if d not in gateways and (
            d not in owners or not self._credentialed(owners[d], sender.org_id, now)))
        if outside:
            raise Forbidden(_NOT_ALLOWED, "an emergency message goes only to credentialed "
                            "clinicians of the sender's organisation",
                            extra={"devices": outside})
        window_start = now - WINDOW
        used = await breakglass.count_since(conn, sender.user_id, window_start) + \
            counted.get(sender.user_id, 0)
        if used >= self.daily_limit:
            oldest = await breakglass.oldest_since(conn, sender.user_id, window_start)
            retry = (oldest + WINDOW - now).total_seconds() if oldest else \
                WINDOW.total_seconds()
            raise LimitError(ErrorCode.BREAK_GLASS_LIMIT,
                             f"{self.daily_limit} emergency messages without consent in 24 "
                             "hours is the limit; ask the patient or their representative, or "
                             "the privacy office", retry_after=max(1.0, retry))
        counted[sender.user_id] = counted.get(sender.user_id, 0) + 1
        return len({owners[d].user_id for d in h.recipient_devices if d not in gateways})

    @staticmethod
    def _credentialed(owner: breakglass.Owner, org_id: str, now: dt.datetime) -> bool:
        return (owner.account_kind == "clinician" and owner.status == "active"
                and owner.org_id == org_id
                and (owner.licence_expires_at is None or owner.licence_expires_at > now))

    async def record(self, conn: asyncpg.Connection,
                     stored: Sequence[tuple[MessageHeader, str, int]],
                     now: dt.datetime) -> None:
        """A case per stored emergency message (header, organisation, recipient users), with
        its audit row; in the send transaction."""
        cases = [breakglass.NewCase(
            message_id=h.message_id, thread_id=h.thread_id, org_id=org,
            sender_user_id=h.sender_user_id, sender_device_id=h.sender_device_id,
            category=str(h.emergency), recipients=users, attachments=len(h.attachment_ids))
            for h, org, users in stored if h.emergency is not None]
        if not cases:
            return
        ids = await breakglass.insert(conn, cases, now)
        for case_id, c in zip(ids, cases, strict=True):
            await audit.append(conn, "message.break_glass", subject_kind="break_glass",
                               subject_id=case_id, details={
                                   "message_id": c.message_id, "thread_id": c.thread_id,
                                   "sender_user_id": c.sender_user_id,
                                   "sender_device_id": c.sender_device_id,
                                   "category": c.category, "recipients": c.recipients,
                                   "attachments": c.attachments})

    # -- the sender's follow-up ---------------------------------------------------------------

    async def pending(self, me: Principal) -> list[BreakGlassCase]:
        async with self.db.pool.acquire() as conn:
            return await breakglass.pending_of_sender(conn, me.user_id)

    async def follow_up(self, me: Principal, case_id: str, *, consent_id: str | None,
                        no_consent: str | None) -> BreakGlassCase:
        """The sender files the consent sought afterwards, or why none was possible. A case of
        someone else, or an unknown id: not_found; filed before: conflict."""
        if (consent_id is None) == (no_consent is None):
            raise InvalidInput(ErrorCode.VALIDATION_FAILED,
                               "give either consent_id or no_consent, not both")
        async with self.db.pool.acquire() as conn, conn.transaction():
            case = await breakglass.get(conn, case_id, lock=True)
            if case is None or case.sender_user_id != me.user_id:
                raise NotFound(ErrorCode.NOT_FOUND, "no such break-glass case")
            if case.follow_up is not None:
                raise Conflict(ErrorCode.CONFLICT, "this case's follow-up was already filed")
            detail: str
            if consent_id is not None:
                record = await consents.get(conn, consent_id)
                if record is None or record.org_id != case.org_id:
                    raise NotFound(ErrorCode.NOT_FOUND, "no such consent: register it first "
                                   "(POST /v1/consents)")
                detail = record.decision
            else:
                assert no_consent is not None
                detail = no_consent
            now = self.now()
            await breakglass.record_follow_up(
                conn, case.case_id, kind="consent" if consent_id else "no_consent",
                consent_id=consent_id, detail=detail, now=now)
            await audit.append(conn, "break_glass.followed_up", subject_kind="break_glass",
                               subject_id=case.case_id, details={
                                   "by": me.user_id, "consent_id": consent_id,
                                   "detail": detail})
            updated = await breakglass.get(conn, case.case_id)
        assert updated is not None
        return updated

    # -- the privacy office ---------------------------------------------------------------------

    async def list(self, *, status: str | None, since: dt.datetime, until: dt.datetime,
                   limit: int = 500) -> list[BreakGlassCase]:
        async with self.db.pool.acquire() as conn:
            return await breakglass.list_cases(conn, status=status, since=since, until=until,
                                               limit=limit)

    async def show(self, case_id: str) -> BreakGlassCase:
        async with self.db.pool.acquire() as conn:
            case = await breakglass.get(conn, case_id)
        if case is None:
            raise NotFound(ErrorCode.NOT_FOUND, "no such break-glass case")
        return case

    async def close(self, admin: AdminPrincipal, case_id: str, *, outcome: str,
                    note: str) -> BreakGlassCase:
        async with self.db.pool.acquire() as conn, conn.transaction():
            case = await breakglass.get(conn, case_id, lock=True)
            if case is None:
                raise NotFound(ErrorCode.NOT_FOUND, "no such break-glass case")
            if case.status == "closed":
                raise Conflict(ErrorCode.CONFLICT, f"the case was closed before "
                               f"({case.outcome})")
            await breakglass.close(conn, case.case_id, outcome=outcome, note=note,
                                   closed_by=admin.login, now=self.now())
            details: dict[str, Any] = {"by": admin.admin_id, "outcome": outcome,
                                       "note": note or None,
                                       "follow_up": case.follow_up}
            await audit.append(conn, "break_glass.closed", subject_kind="break_glass",
                               subject_id=case.case_id, details=details)
            updated = await breakglass.get(conn, case.case_id)
        assert updated is not None
        return updated

    async def report(self, *, since: dt.datetime, until: dt.datetime) -> Report:
        async with self.db.pool.acquire() as conn:
            cases = await breakglass.list_cases(conn, status=None, since=since, until=until,
                                                limit=100_000)
        return Report(since, until, cases)
