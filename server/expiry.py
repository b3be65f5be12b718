"""Filing and expiry of every copy (docs/ARCHITECTURE.md §6, PROTOCOL.md §15; docs/PROTOCOL.md §15).

What the relay does, and why it can be trusted to do it without seeing a single image:

* **Sending an image.** When the organisation's policy requires filing, an image shared for a
  filing purpose (direct care, external consult) must name every active record-gateway device
  of the thread's organisation as a recipient (``filing_gateway_missing``, listing them in
  ``missing``). Gateway devices are not thread participants: :meth:`FilingService.admit` lets
  them be recipients, and lets a gateway that received a message in a thread answer into it
  (its sealed filing receipt, or an alert that the PACS refused the image).
* **Filing.** The gateway sends a ``filing`` frame with a statement signed by its device key.
  The relay checks the signature (``verification_failed``), that the device is a gateway of a
  record-gateway service account (``filing_not_gateway``), that the message named carried the
  attachment to that device (``filing_unknown_attachment``), and that the hard limit has not
  passed (``filing_too_late``). A second statement for a filed attachment is a success that
  changes nothing (idempotent). A valid filing is stored with the statement, every device
  holding the image gets a ``filed_notice``, and the lifecycle timer moves to the end of the
  grace period.
* **Timers** live in ``attachment_lifecycle.due_at`` and every relay process sweeps them
  (:meth:`FilingService.sweep`, ``FOR UPDATE SKIP LOCKED``). When the grace period ends, each
  device that may hold the image (the sender included; gateways excepted, they keep nothing)
  gets an ``expire_order`` (reason ``filed``); when the hard limit passes for an image never
  filed, the same with reason ``hard_limit``, which also tells the sender it was not filed,
  and the relay deletes its ciphertext. At either, each person the image was sent to none of
  whose devices downloaded it will never see it (the order comes before the delivery): the
  sender's devices get a ``not_received`` notice naming that person (PROTOCOL.md §15 "Never
  received"), audited ``attachment.not_received``.
* **Confirmations.** A device answers an order with a signed ``expiry_confirm``; the relay
  checks the signature and that the order was issued to that device for that attachment
  (``expiry_unknown_copy``), marks it confirmed and stops resending it. Orders issued on consent
  withdrawal (server/consents.py) are confirmed the same way.
* **Ciphertext.** Once an image is filed and every active recipient device has fetched it or
  confirmed its expiry, the relay deletes its ciphertext (and at the hard limit in any case).
* **Wipe.** A device revoked with wipe that connects again is told to wipe: server/wipes.py.

Every step is audited (``attachment.*``, ``expiry.*``, ``device.wipe_*``), which is what
``lightbox-admin copies`` reads (:meth:`FilingService.copies`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import logging
import time
import uuid
from collections.abc import Callable, Iterable
from collections.abc import Set as AbstractSet
from typing import Any

import asyncpg

from protocol import statements
from protocol.certs import ROLE_RECORD_GATEWAY
from protocol.errors import ErrorCode, VerificationError
from protocol.frames import ExpiryReason, FiledNotice, NotReceived, encode_frame
from protocol.model import MessageHeader, Purpose
from server import audit, events
from server.blobs import BlobStore
from server.copies import CopiesReport, CopyRow, as_datetime, copy_status
from server.db import Database
from server.errors import Forbidden, NotFound, RelayError
from server.store import devices, expiry, filings, messages, users
from server.store.threads import DeviceSet
from server.trust import Trust

__all__ = [
    "FILING_PURPOSES",
    "ExpiryPolicy",
    "FilingService",
    "SweepReport",
]

log = logging.getLogger("lightbox.expiry")

FILING_PURPOSES = frozenset({Purpose.DIRECT_CARE, Purpose.EXTERNAL_CONSULT})
"""Purposes whose images go to the record (the consent policy's ``filing_purposes``)."""


@dataclasses.dataclass(frozen=True)
class ExpiryPolicy:
    grace: int = 900
    hard_limit: int = 72 * 3600
    sweep_interval: float = 30.0
    filing_required: bool = True
    optional_orgs: frozenset[str] = frozenset()

    def requires_filing(self, org_id: str) -> bool:
        return self.filing_required and org_id not in self.optional_orgs


@dataclasses.dataclass(frozen=True)
class SweepReport:
    shared: int = 0
    expired_filed: int = 0
    expired_unfiled: int = 0
    orders: int = 0
    ciphertext_deleted: int = 0


"""What the audit trail proves about one copy: ``destroyed`` (confirmed after it was held),
``never_received`` (confirmed, never downloaded: the device's tombstone refuses it),
``fetched_after_confirmation`` (a download was completed after the confirmation: the copy may
exist), ``ordered`` (order issued, not confirmed), ``held`` / ``not_received`` (no order yet),
``gateway`` (a record gateway keeps nothing)."""


class FilingService:
    def __init__(self, *, db: Database, blobs: BlobStore, trust: Trust, policy: ExpiryPolicy,
                 clock: Callable[[], float] = time.time) -> None:
        self.db, self.blobs, self.trust, self.policy, self.clock = db, blobs, trust, policy, clock

    def now(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self.clock(), dt.UTC)

    # -- the send hook (server/sends.py) -----------------------------------------------------

    async def admit(self, conn: asyncpg.Connection, header: MessageHeader, org_id: str,
                    members: AbstractSet[str], device_set: DeviceSet) -> frozenset[str]:
        """Gateway devices this message may involve beyond the thread's participants (the
        device-set and membership checks leave them out); refuses an image for a filing purpose
        that does not name every gateway of the organisation (``filing_gateway_missing``).

        Runs in the send transaction; costs a query only for images, unknown recipients or a
        sender that is not a participant."""
        named = set(header.recipient_devices)
        outsiders = named - device_set.active - device_set.inactive
        sender_outside = header.sender_user_id not in members
        image = bool(header.attachment_ids)
        if not (image or outsiders or sender_outside):
            return frozenset()
        gateways = await filings.org_gateways(conn, org_id, ROLE_RECORD_GATEWAY)
        exempt = outsiders & gateways
        if sender_outside and header.sender_device_id in gateways and not image and \
                await filings.received_in_thread(conn, header.sender_device_id, header.thread_id):
            exempt.add(header.sender_device_id)
        if image and header.purpose in FILING_PURPOSES and gateways and \
                self.policy.requires_filing(org_id):
            missing = sorted(gateways - named)
            if missing:
                raise RelayError(ErrorCode.FILING_GATEWAY_MISSING,
                                 "this image must also be sent to the record gateway",
                                 extra={"missing": missing})
        return frozenset(exempt)

    # -- filing (websocket ``filing``) -------------------------------------------------------

    async def file(self, *, device_id: str, signing_key: bytes, statement: str) -> FiledNotice:
        """Record a gateway's filing statement; returns the ``filed_notice`` answering it."""
        try:
            body = statements.verify_filing_statement(statement, signing_key,
                                                      device_id=device_id)
        except VerificationError as exc:
            log.info("filing statement refused", extra={"reason": exc.reason})
            raise Forbidden(ErrorCode.VERIFICATION_FAILED,
                            "the filing statement does not verify") from None
        now = self.now()
        woken: list[str] = []
        release = False
        async with self.db.pool.acquire() as conn, conn.transaction():
            if not await self._is_gateway(conn, device_id):
                raise Forbidden(ErrorCode.FILING_NOT_GATEWAY,
                                "only a record gateway device may file")
            if not await filings.was_delivered(conn, attachment_id=body.attachment_id,
                                               message_id=body.message_id,
                                               thread_id=body.thread_id, device_id=device_id):
                raise NotFound(ErrorCode.FILING_UNKNOWN_ATTACHMENT,
                               "this gateway never received that attachment in that message")
            await self._materialise(conn, [body.attachment_id])
            life = await filings.get_lifecycle(conn, body.attachment_id, for_update=True)
            assert life is not None
            held = await filings.get_filing(conn, body.attachment_id)
            if held is not None:  # replayed or duplicate: the first filing stands
                return self._filed_notice(held.attachment_id, held.message_id, held.thread_id,
                                          held.filed_at, life)
            if life.state == "expired" or now >= life.shared_at + dt.timedelta(
                    seconds=self.policy.hard_limit):
                raise RelayError(ErrorCode.FILING_TOO_LATE,
                                 "the image already expired at the hard limit")
            filed_at = dt.datetime.fromtimestamp(body.filed_at, dt.UTC)
            await filings.insert_filing(
                conn, attachment_id=body.attachment_id, statement_id=body.statement_id,
                gateway_device_id=device_id, message_id=body.message_id,
                thread_id=body.thread_id, filed_at=filed_at,
                receipt_sha256=body.receipt_sha256, statement=statement, now=now)
            due = now + dt.timedelta(seconds=self.policy.grace)
            await filings.set_state(conn, body.attachment_id, state="filed", due_at=due,
                                    filed_at=filed_at)
            life = dataclasses.replace(life, state="filed", due_at=due, filed_at=filed_at)
            notice = self._filed_notice(body.attachment_id, body.message_id, body.thread_id,
                                        filed_at, life)
            targets = [h.device_id for h in await filings.holders(conn, body.attachment_id)
                       if h.kind != "gateway" and h.active]
            await messages.add_notices(conn, targets, "filed", encode_frame(notice),
                                       dedupe_key=f"filed:{body.attachment_id}", now=now)
            woken += targets
            await audit.append(conn, "attachment.filed", subject_kind="attachment",
                               subject_id=body.attachment_id, actor_kind="device",
                               actor_id=device_id, details={
                                   "gateway_device_id": device_id,
                                   "statement_id": body.statement_id,
                                   "message_id": body.message_id, "thread_id": body.thread_id,
                                   "filed_at": filed_at.isoformat(),
                                   "receipt_sha256": body.receipt_sha256.hex(),
                                   "expires_at": due.isoformat()})
            release = await self._release(conn, body.attachment_id, now)
            await self._wake(conn, woken)
        if release:
            await self._delete_blob(body.attachment_id)
        return notice

    @staticmethod
    def _filed_notice(attachment_id: str, message_id: str, thread_id: str,
                      filed_at: dt.datetime, life: filings.Lifecycle) -> FiledNotice:
        expires = life.due_at if life.state == "filed" and life.due_at else (
            life.expired_at or filed_at)
        return FiledNotice(attachment_id=attachment_id, message_id=message_id,
                           thread_id=thread_id, filed_at=int(filed_at.timestamp()),
                           expires_at=int(expires.timestamp()))

    async def _is_gateway(self, conn: asyncpg.Connection, device_id: str) -> bool:
        device = await devices.get_device(conn, device_id)
        if device is None or device.kind != "gateway" or device.status != "active":
            return False
        user = await users.get_user(conn, device.user_id)
        return (user is not None and user.status == "active"
                and user.account_kind == "service" and ROLE_RECORD_GATEWAY in user.roles)

    # -- expiry confirmations (websocket ``expiry_confirm``) ---------------------------------

    async def confirm(self, *, device_id: str, signing_key: bytes, statement: str) -> bool:
        """Record a device's signed confirmation that it shredded its copy; returns False when
        it had been confirmed before (idempotent)."""
        try:
            body = statements.verify_expiry_confirmation(statement, signing_key,
                                                         device_id=device_id)
        except VerificationError as exc:
            log.info("expiry confirmation refused", extra={"reason": exc.reason})
            raise Forbidden(ErrorCode.VERIFICATION_FAILED,
                            "the expiry confirmation does not verify") from None
        now = self.now()
        async with self.db.pool.acquire() as conn, conn.transaction():
            order = await filings.get_order(conn, body.order_id, for_update=True)
            if order is None or order.device_id != device_id or \
                    order.attachment_id != body.attachment_id:
                raise NotFound(ErrorCode.EXPIRY_UNKNOWN_COPY,
                               "no expiry order for this copy was issued to this device")
            if order.confirmed_at is not None:
                return False
            await filings.confirm_order(conn, order.order_id, now)
            await audit.append(conn, "expiry.confirmed", subject_kind="attachment",
                               subject_id=order.attachment_id, actor_kind="device",
                               actor_id=device_id, details={
                                   "device_id": device_id, "order_id": order.order_id,
                                   "reason": order.reason,
                                   "shredded_at": dt.datetime.fromtimestamp(
                                       body.shredded_at, dt.UTC).isoformat()})
            release = await self._release(conn, order.attachment_id, now)
        if release:
            await self._delete_blob(order.attachment_id)
        return True

    # -- downloads (server/attachments.py) ---------------------------------------------------

    async def fetched(self, attachment_id: str, device_id: str) -> None:
        """A device downloaded the whole ciphertext: audit its first download, and delete the
        ciphertext if this was the last copy the relay was keeping it for."""
        now = self.now()
        async with self.db.pool.acquire() as conn, conn.transaction():
            if not await filings.mark_fetched(conn, attachment_id, device_id, now):
                return
            await audit.append(conn, "attachment.fetched", subject_kind="attachment",
                               subject_id=attachment_id, details={"device_id": device_id})
            release = await self._release(conn, attachment_id, now)
        if release:
            await self._delete_blob(attachment_id)

    # -- timers ------------------------------------------------------------------------------

    async def _materialise(self, conn: asyncpg.Connection,
                           attachment_ids: list[str] | None = None) -> int:
        new = await filings.materialise(conn, hard_limit=self.policy.hard_limit,
                                        attachment_ids=attachment_ids)
        for life in new:
            await audit.append(conn, "attachment.shared", subject_kind="attachment",
                               subject_id=life.attachment_id, details={
                                   "device_id": life.sender_device_id,
                                   "message_id": life.message_id, "thread_id": life.thread_id,
                                   "shared_at": life.shared_at.isoformat()})
        return len(new)

    async def sweep(self, now: dt.datetime | None = None, *, limit: int = 100) -> SweepReport:
        """Fire every due timer once (safe to run in every relay process at the same time)."""
        now = now or self.now()
        shared = filed = unfiled = orders = deleted = 0
        async with self.db.pool.acquire() as conn:
            async with conn.transaction():
                shared = await self._materialise(conn)
            while True:
                gone: list[str] = []
                async with conn.transaction():
                    due = await filings.claim_due(conn, now=now, limit=limit)
                    woken: set[str] = set()
                    for life in due:
                        hard = life.state == "unfiled"
                        reason = ExpiryReason.HARD_LIMIT if hard else ExpiryReason.FILED
                        issued, targets = await self._expire(conn, life, reason, now)
                        orders += issued
                        woken.update(targets)
                        await filings.set_state(conn, life.attachment_id, state="expired",
                                                due_at=None, expired_at=now)
                        if hard:
                            unfiled += 1
                            await audit.append(
                                conn, "attachment.not_filed", subject_kind="attachment",
                                subject_id=life.attachment_id, details={
                                    "sender_device_id": life.sender_device_id,
                                    "thread_id": life.thread_id, "orders": issued})
                            if await self._mark_deleted(conn, life.attachment_id, now,
                                                        "hard_limit"):
                                gone.append(life.attachment_id)
                        else:
                            filed += 1
                            if await self._release(conn, life.attachment_id, now):
                                gone.append(life.attachment_id)
                    await self._wake(conn, woken)
                for aid in gone:
                    await self._delete_blob(aid)
                deleted += len(gone)
                if len(due) < limit:
                    break
        return SweepReport(shared, filed, unfiled, orders, deleted)

    async def _expire(self, conn: asyncpg.Connection, life: filings.Lifecycle,
                      reason: ExpiryReason, now: dt.datetime) -> tuple[int, list[str]]:
        """Order every device that may hold the image to shred it (gateways keep nothing;
        devices that already confirmed another order for it are done)."""
        done = await filings.confirmed_devices(conn, life.attachment_id)
        held = await filings.holders(conn, life.attachment_id)
        targets = [h.device_id for h in held if h.kind != "gateway" and h.device_id not in done]
        issued = await expiry.issue(
            conn, [expiry.NewOrder(d, life.attachment_id, life.thread_id) for d in targets],
            reason, now=now)
        told = await self._tell_not_received(conn, life, held, reason, now)
        return len(issued), targets + told

    @staticmethod
    async def _tell_not_received(conn: asyncpg.Connection, life: filings.Lifecycle,
                                 held: list[filings.Holder], reason: ExpiryReason,
                                 now: dt.datetime) -> list[str]:
        """Tell the sender's active devices of each person who never received the image
        (PROTOCOL.md §15 "Never received"; CLINICAL_SAFETY.md §7): their copies are ordered
        shredded before any download, so they will not see it. Returns the devices told."""
        named = {r[0] for r in await conn.fetch(  # the thread's members, removed ones too
            "SELECT user_id::text FROM thread_members WHERE thread_id = $1",
            uuid.UUID(life.thread_id))}
        people = filings.never_received(held, named)
        sender = next((h.user_id for h in held if h.sender), None)
        if not people or sender is None:
            return []
        targets = [d.device_id for d in await devices.list_devices(conn, sender,
                                                                   active_only=True)
                   if d.kind != "gateway"]
        for user_id in people:
            frame = encode_frame(NotReceived(
                message_id=life.message_id, thread_id=life.thread_id,
                attachment_id=life.attachment_id, user_id=user_id, reason=reason,
                at=int(now.timestamp())))
            await messages.add_notices(conn, targets, "not_received", frame,
                                       dedupe_key=f"not_received:{life.attachment_id}:{user_id}",
                                       now=now)
            await audit.append(conn, "attachment.not_received", subject_kind="attachment",
                               subject_id=life.attachment_id, details={
                                   "user_id": user_id, "reason": reason.value,
                                   "message_id": life.message_id, "thread_id": life.thread_id,
                                   "told_devices": len(targets)})
        return targets

    async def sweeper(self) -> None:
        """Sweep every ``sweep_interval`` seconds for the relay's lifetime."""
        while True:
            try:
                report = await self.sweep()
                if report.orders or report.ciphertext_deleted:
                    log.info("expiry sweep", extra=dataclasses.asdict(report))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a failed sweep is retried; it must not stop the relay
                log.warning("expiry sweep failed", extra={"error_type": type(exc).__name__})
            await asyncio.sleep(self.policy.sweep_interval)

    # -- ciphertext --------------------------------------------------------------------------

    async def _release(self, conn: asyncpg.Connection, attachment_id: str,
                       now: dt.datetime) -> bool:
        if not await filings.releasable(conn, attachment_id):
            return False
        return await self._mark_deleted(conn, attachment_id, now, "filed_and_fetched")

    async def _mark_deleted(self, conn: asyncpg.Connection, attachment_id: str,
                            now: dt.datetime, why: str) -> bool:
        if not await filings.mark_ciphertext_deleted(conn, attachment_id, now):
            return False
        await audit.append(conn, "attachment.ciphertext_deleted", subject_kind="attachment",
                           subject_id=attachment_id, details={"reason": why})
        return True

    async def _delete_blob(self, attachment_id: str) -> None:
        """After COMMIT: the bytes go (a failure is logged; the row says they should be gone
        and the next sweep of this attachment does not resurrect them)."""
        try:
            await self.blobs.delete(attachment_id)
        except Exception as exc:
            log.warning("ciphertext delete failed", extra={"error_type": type(exc).__name__})

    @staticmethod
    async def _wake(conn: asyncpg.Connection, device_ids: Iterable[str]) -> None:
        ids = sorted(set(device_ids))
        for i in range(0, len(ids), 180):
            await events.publish(conn, "deliver", device_ids=ids[i:i + 180])

    # -- where is every copy (lightbox-admin copies) -----------------------------------------

    async def copies(self, *, attachment_id: str | None = None,
                     thread_id: str | None = None) -> list[CopiesReport]:
        """Every copy of an image (or of each image of a thread), from the audit trail."""
        async with self.db.pool.acquire() as conn:
            async with conn.transaction():
                await self._materialise(conn)
            if thread_id is not None:
                ids = await filings.thread_attachments(conn, thread_id)
            elif attachment_id is not None:
                if await filings.get_lifecycle(conn, attachment_id) is None:
                    raise NotFound(ErrorCode.NOT_FOUND, "no shared image with this id")
                ids = [attachment_id]
            else:
                raise RelayError(ErrorCode.VALIDATION_FAILED, "name an attachment or a thread")
            return [await self._report(conn, a) for a in ids]

    @staticmethod
    async def _report(conn: asyncpg.Connection, attachment_id: str) -> CopiesReport:
        rows = await audit.rows(conn, subject_kind="attachment", subject_id=attachment_id,
                                limit=10_000)
        copies: dict[str, dict[str, Any]] = {}
        report: dict[str, Any] = {"thread_id": None, "shared_at": None, "filed_at": None,
                                  "gateway": None, "statement": None, "receipt": None,
                                  "not_filed": None, "deleted": None}

        def copy(device_id: str, role: str) -> dict[str, Any]:
            c = copies.setdefault(device_id, {"role": role, "received_at": None,
                                              "order_id": None, "reason": None,
                                              "issued_at": None, "confirmed_at": None,
                                              "late_fetch": False})
            if role == "sender":
                c["role"] = role
            return c

        for r in rows:
            d = r.details
            if r.event == "attachment.shared":
                report["thread_id"], report["shared_at"] = d.get("thread_id"), as_datetime(
                    d.get("shared_at"))
                copy(d["device_id"], "sender")["received_at"] = report["shared_at"]
            elif r.event == "attachment.fetched":
                c = copy(d["device_id"], "recipient")
                c["received_at"] = c["received_at"] or r.at
                # After its confirmation (the audit is in order): the copy may exist again.
                c["late_fetch"] = c["late_fetch"] or c["confirmed_at"] is not None
            elif r.event == "attachment.filed":
                report.update(filed_at=as_datetime(d.get("filed_at")), gateway=d.get(
                    "gateway_device_id"), statement=d.get("statement_id"),
                    receipt=d.get("receipt_sha256"))
                report["thread_id"] = report["thread_id"] or d.get("thread_id")
                copy(d["gateway_device_id"], "gateway")["role"] = "gateway"
            elif r.event == "expiry.order_issued":
                c = copy(d["device_id"], "recipient")
                if c["issued_at"] is None or c["confirmed_at"] is not None:
                    c.update(order_id=d.get("order_id"), reason=d.get("reason"),
                             issued_at=r.at, confirmed_at=None)
            elif r.event == "expiry.confirmed":
                c = copy(d["device_id"], "recipient")
                if c["order_id"] in (None, d.get("order_id")):
                    c.update(confirmed_at=r.at, late_fetch=False)
            elif r.event == "attachment.not_filed":
                report["not_filed"] = r.at
            elif r.event == "attachment.ciphertext_deleted":
                report["deleted"] = r.at
        order = {"sender": 0, "recipient": 1, "gateway": 2}
        return CopiesReport(
            attachment_id=attachment_id, thread_id=report["thread_id"],
            shared_at=report["shared_at"], filed_at=report["filed_at"],
            gateway_device_id=report["gateway"], filing_statement_id=report["statement"],
            receipt_sha256=report["receipt"], not_filed_at=report["not_filed"],
            ciphertext_deleted_at=report["deleted"],
            copies=[CopyRow(attachment_id, dev, c["role"], c["received_at"], c["order_id"],
                            c["reason"], c["issued_at"], c["confirmed_at"], copy_status(c))
                    for dev, c in sorted(copies.items(),
                                         key=lambda kv: (order[kv[1]["role"]], kv[0]))])


