"""On-call routing and escalation (PROTOCOL.md §16; docs/PROTOCOL.md §15).

**Rotas.** IT defines a role per organisation (its acknowledgement deadlines: urgent 5 min,
routine 30 min by default) and its shifts, each with a ladder: primary first, then backups in
escalation order. Shifts of a role never overlap. A batch of shifts is stored row by row: good
rows are kept, each bad row gets its code (``shift_overlap``, ``shift_empty``,
``rota_invalid``).

**Role addressing.** A thread naming a role reaches the ladder of the role's shift covering the
moment (server/store/threads.py), so the sender's client seals a consult for every ladder
member's devices. Once a batch is stored (:meth:`OncallService.after_store`, inside the send
transaction) the relay *holds* the backups' deliveries (``deliveries.held``) and opens an
escalation timer for a consult from outside the ladder. A later message in the thread rides
along: it is held for whoever is still held.

**Escalation.** The sweeper (:meth:`OncallService.run`, one per relay process) takes due timers
with ``FOR UPDATE SKIP LOCKED`` and applies :func:`protocol.oncall.advance`: renotify at half
the deadline, release the held copy to the next level at the deadline, and so on. Every step
is an ``escalation_notice`` queued durably for the sender's devices and the devices of those
the consult has reached, and a row of ``escalation_events``. The next due time is computed
from the previous *scheduled* one, so a relay that was down catches up step by step. An
``acknowledged`` receipt from a ladder member closes the thread's open escalations (anyone
else: ``not_on_ladder``), makes the acknowledger a member of the thread (they keep it after
their shift), and drops copies still held.

**Handover.** When the shift of an unacknowledged escalation ends, open or exhausted (a
ladder used up is nobody's acknowledgement), the incoming shift's ladder takes over and the
escalation restarts on it: the relay cannot re-encrypt, so it queues a ``reseal_request`` to
the devices that hold the content (the sender's, and those it reached, whose users keep the
thread as members so that they may answer), durable until one of them sends the content again
to the thread (clients/sdk/notices.py), and announces the ``handover``. With no incoming shift
the handover is *deferred* (docs/PROTOCOL.md §16.4): the escalation stays with the outgoing
ladder, belonging to no shift, and is handed over when the role's next shift starts, whether
the rota had that shift then or gets it later (:meth:`OncallService.add_shifts` brings the
handover forward). Meanwhile it does not go silent: the sender and those it reached are told
at once with a ``no_shift`` step naming when the next shift starts (as for a consult in a gap,
below), an open one keeps escalating, and once its ladder is used up everyone it reached is
reminded at once and again every deadline.

**A consult in a gap.** A new consult to the role while no shift covers the moment (or the
covering shift's ladder reaches nobody) reaches the role's certificate holders, if any
(``role_reach``). It opens an escalation deferred from the start, as a handover is: belonging to
no shift, its ladder those holders (all reached at once, so nothing is held), its handover due
when the role's next shift starts (also one added later). Its first step, at once, and its
reminders every deadline are ``no_shift`` notices to the sender and those holders, naming when
the next shift starts. Any holder's acknowledgement ends it; at the shift's start the devices
holding the consult (the sender's, the holders') are asked to seal it for the new ladder.

All times come from the injected clock (``clock``: Unix seconds), never from the database.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import asyncpg

from protocol import api
from protocol.errors import ErrorCode
from protocol.frames import EscalationKind, EscalationNotice, ResealRequest, encode_frame
from protocol.oncall import advance, first_due, normalise_role
from protocol.statements import ReceiptKind, ReceiptStatement
from server import audit, events
from server.db import Database
from server.errors import Forbidden, InvalidInput, RelayError
from server.store import devices, escalations, oncall, receipts
from server.store.messages import NewMessage, add_notices

__all__ = ["OncallService", "role_param"]

log = logging.getLogger("lightbox.oncall")
NOTICE_ESCALATION = "escalation_notice"
NOTICE_RESEAL = "reseal_request"


def role_param(value: str) -> str:
    """A role from a path or a file, normalised (``role:orthopaedics-oncall`` works)."""
    try:
        return normalise_role(value)
    except ValueError as exc:
        raise InvalidInput(ErrorCode.ROLE_UNKNOWN, str(exc)) from exc


def _ts(t: dt.datetime | None) -> int | None:
    return None if t is None else int(t.timestamp())


@dataclasses.dataclass(frozen=True)
class _RoleNow:
    """A thread role's shift now, or (``shift_id`` None) a gap: ``ladder`` is then everyone
    the role reaches (its certificate holders) and ``ends_at`` the next shift's start."""

    thread_id: str
    org_id: str
    role: str
    shift_id: str | None
    ladder: tuple[str, ...]
    ends_at: dt.datetime | None
    urgent_seconds: int
    routine_seconds: int

    def deadline(self, priority: str) -> int:
        return self.urgent_seconds if priority == "urgent" else self.routine_seconds


class OncallService:
    def __init__(self, *, db: Database, clock: Callable[[], float] = time.time,
                 sweep_interval: float = 5.0, sweep_batch: int = 100) -> None:
        self.db, self.clock = db, clock
        self.sweep_interval, self.sweep_batch = sweep_interval, sweep_batch
        self._kick = asyncio.Event()

    def at(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self.clock(), dt.UTC)

    # -- rotas ---------------------------------------------------------------------------------

    async def set_role(self, org_id: str, role: str, body: api.OncallRoleSet) -> oncall.Role:
        role = role_param(role)
        if body.urgent_seconds > body.routine_seconds:
            raise InvalidInput(ErrorCode.ROTA_INVALID,
                               "the urgent deadline must not exceed the routine one")
        async with self.db.pool.acquire() as conn, conn.transaction():
            stored = await oncall.set_role(
                conn, org_id=org_id, role=role, display_name=body.display_name,
                urgent_seconds=body.urgent_seconds, routine_seconds=body.routine_seconds,
                now=self.at())
            await audit.append(conn, "oncall.role_set", subject_kind="oncall_role",
                               subject_id=f"{org_id}/{role}", details={
                                   "urgent_seconds": body.urgent_seconds,
                                   "routine_seconds": body.routine_seconds})
        return stored

    async def add_shifts(self, org_id: str, role: str, shifts: Sequence[api.ShiftIn]
                         ) -> list[api.ShiftResult]:
        """Store each shift in its own savepoint: good rows are kept, bad ones reported."""
        role = role_param(role)
        results: list[api.ShiftResult] = []
        now = self.at()
        woken = 0
        async with self.db.pool.acquire() as conn, conn.transaction():
            await oncall.get_role(conn, org_id, role, lock=True)  # ROLE_UNKNOWN for the batch
            for i, s in enumerate(shifts):
                try:
                    async with conn.transaction():
                        found, unknown, suspended = await oncall.resolve_users(
                            conn, org_id, s.ladder)
                        if unknown or suspended:
                            raise InvalidInput(ErrorCode.ROTA_INVALID, "; ".join(
                                f"{what}: " + ", ".join(u[:64] for u in who[:5])
                                for what, who in (("unknown users", unknown),
                                                  ("suspended users", suspended)) if who))
                        shift = await oncall.add_shift(
                            conn, org_id=org_id, role=role,
                            starts_at=dt.datetime.fromtimestamp(s.starts_at, dt.UTC),
                            ends_at=dt.datetime.fromtimestamp(s.ends_at, dt.UTC),
                            ladder=found, now=now)
                        if shift.ends_at > now:
                            # A handover deferred for want of a shift of the role is taken
                            # when this one starts (docs/PROTOCOL.md §16.4).
                            woken += await escalations.wake_deferred(
                                conn, org_id, role, shift.starts_at)
                except RelayError as err:
                    results.append(api.ShiftResult(index=i, line=s.line, ok=False,
                                                   code=err.code.value, detail=err.detail))
                    continue
                results.append(api.ShiftResult(index=i, line=s.line, ok=True,
                                               shift_id=shift.shift_id))
            await audit.append(conn, "oncall.shifts_added", subject_kind="oncall_role",
                               subject_id=f"{org_id}/{role}", details={
                                   "added": sum(r.ok for r in results),
                                   "refused": sum(not r.ok for r in results),
                                   "deferred_handovers": woken})
        self.kick()  # also for a handover the sweep passed over while this was written
        return results

    async def delete_shift(self, org_id: str, role: str, shift_id: str) -> api.ShiftRemoved:
        """Remove a shift; what becomes of its unacknowledged consults, for IT to be told."""
        role = role_param(role)
        now = self.at()
        async with self.db.pool.acquire() as conn, conn.transaction():
            await oncall.get_role(conn, org_id, role, lock=True)  # as add_shifts: _handover
            await oncall.delete_shift(conn, org_id, role, shift_id)
            # Its unacknowledged consults would wait for the removed shift's end before any
            # handover: it falls due now instead, to the shift covering the moment, or deferred
            # to the role's next one (docs/PROTOCOL.md §16.4).
            moved = await escalations.handover_now(conn, shift_id, now)
            await audit.append(conn, "oncall.shift_deleted", subject_kind="oncall_role",
                               subject_id=f"{org_id}/{role}", details={
                                   "shift_id": shift_id, "handovers": moved})
            # Decided as the sweep's _handover will, from the rota as this write leaves it
            # (the role's row stays locked until it commits).
            covered = moved > 0 and await self._incoming(conn, org_id, role, now) is not None
            nxt = (None if covered or not moved
                   else await oncall.next_start(conn, org_id, role, now))
        self.kick()  # also for a handover the sweep passed over while this was written
        return api.ShiftRemoved(shift_id=shift_id, handovers=moved, covered_now=covered,
                                next_shift_at=_ts(nxt))

    async def shift_info(self, conn: asyncpg.Connection, shift: oncall.Shift) -> api.ShiftInfo:
        rows = await conn.fetch(
            "SELECT user_id::text AS u, display_name FROM users WHERE user_id = ANY($1::uuid[])",
            list(shift.ladder))
        names = {r["u"]: r["display_name"] for r in rows}
        return api.ShiftInfo(
            shift_id=shift.shift_id, role=shift.role, starts_at=int(shift.starts_at.timestamp()),
            ends_at=int(shift.ends_at.timestamp()),
            ladder=[api.LadderMember(level=i, user_id=u, display_name=names.get(u, ""))
                    for i, u in enumerate(shift.ladder)])

    async def who(self, org_id: str, role: str, at: int | None) -> api.OnCall:
        """Who is on call for the role at ``at`` (default: now). ROLE_UNKNOWN otherwise."""
        role = role_param(role)
        when = self.at() if at is None else dt.datetime.fromtimestamp(at, dt.UTC)
        async with self.db.pool.acquire() as conn:
            r = await oncall.get_role(conn, org_id, role)
            shift = await oncall.on_call(conn, org_id, role, when)
            info = None if shift is None else await self.shift_info(conn, shift)
        return api.OnCall(role=role, org_id=org_id, at=int(when.timestamp()),
                          urgent_seconds=r.urgent_seconds, routine_seconds=r.routine_seconds,
                          shift=info)

    # -- the send path (SendPipeline's Routing) -------------------------------------------------

    async def _roles_now(self, conn: asyncpg.Connection, thread_ids: Sequence[str],
                         at: dt.datetime) -> dict[str, list[_RoleNow]]:
        """Each thread on-call role's shift covering ``at``, its ladder in order cut to those
        ``role_reach`` reaches: the same people the sender sealed for (server/store/threads.py);
        or the gap: no such shift (or its ladder reaches nobody), whom the role reaches
        instead (its certificate holders, by user id) and when its next shift starts."""
        rows = await conn.fetch(
            "SELECT r.thread_id::text AS thread_id, t.org_id, r.role, s.shift_id::text AS sid, "
            "CASE WHEN s.shift_id IS NULL THEN "
            "  ARRAY(SELECT x.user_id FROM role_reach(t.org_id, r.role, $2) AS x "
            "        ORDER BY x.user_id)::text[] "
            "ELSE ARRAY(SELECT x.l FROM unnest(s.ladder) WITH ORDINALITY AS x(l, n) "
            "      WHERE x.l IN (SELECT user_id FROM role_reach(t.org_id, r.role, $2)) "
            "        AND EXISTS (SELECT 1 FROM devices v WHERE v.user_id = x.l "
            "                    AND v.status = 'active') "
            "      ORDER BY x.n)::text[] END AS ladder, s.ends_at, o.urgent_seconds, "
            "o.routine_seconds "
            "FROM thread_roles r JOIN threads t ON t.thread_id = r.thread_id "
            "JOIN oncall_roles o ON o.org_id = t.org_id AND o.role = r.role "
            "LEFT JOIN oncall_shifts s ON s.org_id = t.org_id AND s.role = r.role "
            "AND s.starts_at <= $2 AND $2 < s.ends_at "
            "WHERE r.thread_id = ANY($1::uuid[]) AND r.removed_at IS NULL ORDER BY r.role",
            list(thread_ids), at)
        out: dict[str, list[_RoleNow]] = {}
        for r in rows:
            if r["sid"] is not None and r["ladder"]:
                rn = _RoleNow(r["thread_id"], r["org_id"], r["role"], r["sid"],
                              tuple(r["ladder"]), r["ends_at"], r["urgent_seconds"],
                              r["routine_seconds"])
            else:  # a gap: a shift whose ladder reaches nobody reaches nobody else either
                rn = _RoleNow(r["thread_id"], r["org_id"], r["role"], None,
                              tuple(r["ladder"]) if r["sid"] is None else (),
                              await oncall.next_start(conn, r["org_id"], r["role"], at),
                              r["urgent_seconds"], r["routine_seconds"])
            out.setdefault(r["thread_id"], []).append(rn)
        return out

    async def after_store(self, conn: Any, stored: list[tuple[NewMessage, int]],
                          at: dt.datetime) -> None:
        """Hold backups' deliveries and open escalations for a stored batch (module docstring).
        Runs inside the send transaction, after the deliveries were inserted."""
        tids = sorted({m.thread_id for m, _ in stored})
        await self._reseals_answered(conn, stored, tids, at)
        roles = await self._roles_now(conn, tids, at)
        if not roles:
            return
        member_rows = await conn.fetch(
            "SELECT thread_id::text AS t, user_id::text AS u FROM thread_members "
            "WHERE thread_id = ANY($1::uuid[]) AND removed_at IS NULL", sorted(roles))
        members: dict[str, set[str]] = {}
        for r in member_rows:
            members.setdefault(r["t"], set()).add(r["u"])
        open_now = await escalations.open_in_threads(conn, sorted(roles))
        waiting: set[tuple[str, str]] | None = None
        for m, pk in stored:
            for rn in roles.get(m.thread_id, []):
                if rn.shift_id is None:
                    if waiting is None:
                        waiting = await escalations.unacknowledged_roles(conn, sorted(roles))
                    if (m.thread_id, rn.role) not in waiting and m.sender_user_id not in rn.ladder:
                        waiting.add((m.thread_id, rn.role))
                        await self._wait_for_shift(conn, m, pk, rn, at)
                    continue
                current = open_now.get(m.thread_id, [])
                on_ladder = m.sender_user_id in rn.ladder
                if not on_ladder and not current:
                    deadline = rn.deadline(m.priority)
                    created = await escalations.create(
                        conn, message_pk=pk, message_id=m.message_id, thread_id=m.thread_id,
                        sender_user_id=m.sender_user_id, org_id=rn.org_id, role=rn.role,
                        shift_id=rn.shift_id, ladder=rn.ladder, deadline=deadline,
                        due_at=at + dt.timedelta(seconds=first_due(deadline)),
                        shift_ends_at=rn.ends_at, now=at)
                    held = set(rn.ladder[1:])
                    if created is not None:
                        open_now.setdefault(m.thread_id, []).append(created)
                else:
                    held = escalations.held_users(current)
                held -= members.get(m.thread_id, set()) | {m.sender_user_id}
                if held:
                    await conn.execute(
                        "UPDATE deliveries SET held = true WHERE message_pk = $1 AND device_id "
                        "IN (SELECT device_id FROM devices WHERE user_id = ANY($2::uuid[]))",
                        pk, sorted(held))

    async def _wait_for_shift(self, conn: Any, m: NewMessage, pk: int, rn: _RoleNow,
                              at: dt.datetime) -> None:
        """A consult from someone the role does not reach, sent while nobody is on call for it
        (a gap in the rota): its escalation waits for the role's next shift, as a deferred
        handover does, and the sender and those it reached are told at once (module
        docstring). Nothing is held: everyone the role reaches now received it.

        A rota write of the role under way is waited for first and the rota read again: the
        write's wake of deferred handovers (add_shifts) cannot see this consult before it
        commits, so a shift it adds must be found here. One that covers the moment takes the
        consult at the next sweep, as a deferred handover whose shift has started."""
        await oncall.share_role(conn, rn.org_id, rn.role)
        again = next((x for x in (await self._roles_now(conn, [m.thread_id], at)).get(
            m.thread_id, []) if x.role == rn.role), rn)
        until = at if again.shift_id is not None else again.ends_at
        deadline = rn.deadline(m.priority)
        created = await escalations.create(
            conn, message_pk=pk, message_id=m.message_id, thread_id=m.thread_id,
            sender_user_id=m.sender_user_id, org_id=rn.org_id, role=rn.role, shift_id=None,
            ladder=rn.ladder, deadline=deadline, due_at=at + dt.timedelta(seconds=deadline),
            shift_ends_at=until, now=at, level=max(0, len(rn.ladder) - 1),
            phase="waiting", state="exhausted")
        if created is None or again.shift_id is not None:
            return
        await escalations.save(conn, dataclasses.replace(created, step=1))
        woken = sorted(await self._announce(
            conn, created, EscalationKind.NO_SHIFT, 1, 0, m.sender_user_id, rn.ladder, at,
            next_shift_at=until))
        await audit.append(conn, "oncall.consult_deferred", subject_kind="message",
                           subject_id=m.message_id, details={
                               "role": rn.role, "reached": len(rn.ladder),
                               "until": _ts(until)})
        for i in range(0, len(woken), 180):
            await events.publish(conn, "deliver", device_ids=woken[i:i + 180])

    async def _reseals_answered(self, conn: Any, stored: list[tuple[NewMessage, int]],
                                tids: list[str], at: dt.datetime) -> None:
        """A holder that sends to a thread with a pending reseal request has sealed the content
        for the thread's current participants: the request is answered."""
        for esc_id, tid, _, holders in await escalations.pending_reseals(conn, tids):
            if any(m.thread_id == tid and m.sender_device_id in holders for m, _ in stored):
                await escalations.reseal_done(conn, esc_id, at)

    # -- receipts (ReceiptService's check, server/receipts.py) ---------------------------------

    async def on_receipt(self, conn: Any, body: ReceiptStatement, *, user_id: str,
                         statement: str) -> None:
        """Check an acknowledgement against the ladder (``not_on_ladder``), keep the receipt,
        and close the thread's open escalations. Runs in the receipt's transaction."""
        now = self.at()
        if body.kind is ReceiptKind.ACKNOWLEDGED:
            mine = await escalations.for_message(conn, body.thread_id, body.message_id)
            current = (await escalations.open_in_threads(conn, [body.thread_id])
                       ).get(body.thread_id, [])
            ladders = [e.ladder for e in current] + ([mine.ladder] if mine else [])
            if ladders and not any(user_id in ladder for ladder in ladders):
                raise Forbidden(ErrorCode.NOT_ON_LADDER,
                                "only someone on the consult's on-call ladder can acknowledge it")
        await receipts.store(conn, receipts.StoredReceipt(
            body.message_id, body.device_id, user_id, body.kind.value,
            dt.datetime.fromtimestamp(body.at, dt.UTC), statement),
            thread_id=body.thread_id, now=now)
        if body.kind is not ReceiptKind.ACKNOWLEDGED:
            return
        closed = await escalations.acknowledge(conn, body.thread_id, user_id, now)
        if not closed:
            return
        # The acknowledger keeps the consult after their shift ends.
        await conn.execute(
            "INSERT INTO thread_members (thread_id, user_id, added_at, added_by) "
            "VALUES ($1, $2, $3, NULL) ON CONFLICT (thread_id, user_id) "
            "DO UPDATE SET removed_at = NULL", body.thread_id, user_id, now)
        still_open = (await escalations.open_in_threads(conn, [body.thread_id])
                      ).get(body.thread_id)
        if not still_open:  # nobody needs the held copies any more
            await conn.execute(
                "DELETE FROM deliveries d USING messages m WHERE d.message_pk = m.message_pk "
                "AND m.thread_id = $1 AND d.held", body.thread_id)
        for e in closed:
            await audit.append(conn, "oncall.acknowledged", subject_kind="message",
                               subject_id=e.message_id, details={
                                   "role": e.role, "by": user_id, "level": e.level,
                                   "steps": e.step})

    # -- the sweeper ---------------------------------------------------------------------------

    def kick(self) -> None:
        """Sweep now (tests that move the clock; a relay does not need it)."""
        self._kick.set()

    async def run(self) -> None:
        """Sweep forever, every ``sweep_interval`` seconds (or when kicked)."""
        while True:
            try:
                await self.sweep()
            except Exception as exc:  # a failed sweep is retried; the timers are in Postgres
                log.error("escalation sweep failed", exc_info=exc)
            self._kick.clear()
            try:
                async with asyncio.timeout(self.sweep_interval):
                    await self._kick.wait()
            except TimeoutError:
                pass

    async def sweep(self) -> int:
        """Take every step that is due (catching up several per escalation if the relay was
        down); returns how many steps were taken."""
        total = 0
        while True:
            n = await self._sweep_batch()
            total += n
            if n == 0:
                return total

    async def _sweep_batch(self) -> int:
        now = self.at()
        taken = 0
        async with self.db.pool.acquire() as conn, conn.transaction():
            woken: set[str] = set()
            handled: set[str] = set()
            for e in await escalations.claim_handovers(conn, now, limit=self.sweep_batch):
                handled.add(e.escalation_id)
                handed = await self._handover(conn, e, now)
                if handed is None:
                    continue  # its role's rota is being written: the writer kicks the sweep
                woken |= handed
                taken += 1
            for e in await escalations.claim_due(conn, now, limit=self.sweep_batch):
                if e.escalation_id in handled:
                    continue
                woken |= await self._step(conn, e, now)
                taken += 1
            ids = sorted(woken)
            for i in range(0, len(ids), 180):
                await events.publish(conn, "deliver", device_ids=ids[i:i + 180])
        return taken

    async def _announce(self, conn: Any, e: escalations.Escalation, kind: EscalationKind,
                        step: int, level: int, user_id: str, audience: Sequence[str],
                        now: dt.datetime, *, next_shift_at: dt.datetime | None = None
                        ) -> set[str]:
        """Record the step and queue its notice for the sender's devices and the audience's
        (everyone the consult has reached). ``next_shift_at``: a ``no_shift`` step's."""
        await escalations.add_event(conn, e.escalation_id, escalations.Event(
            step, kind.value, level, user_id, now, next_shift_at))
        targets = await devices.active_device_ids(conn, [e.sender_user_id, *audience])
        frame = encode_frame(EscalationNotice(
            thread_id=e.thread_id, message_id=e.message_id, step=step, level=level,
            user_id=user_id, at=int(now.timestamp()), kind=kind,
            next_shift_at=_ts(next_shift_at)))
        await add_notices(conn, targets, NOTICE_ESCALATION, frame,
                          dedupe_key=f"escalation:{e.escalation_id}:{step}", now=now)
        details: dict[str, Any] = {"role": e.role, "step": step, "level": level,
                                   "user": user_id}
        if kind is EscalationKind.NO_SHIFT:
            details["until"] = _ts(next_shift_at)
        await audit.append(conn, f"oncall.{kind.value}", subject_kind="message",
                           subject_id=e.message_id, details=details)
        return set(targets)

    async def _remind_waiting(self, conn: Any, e: escalations.Escalation, now: dt.datetime
                              ) -> set[str]:
        """A consult sent in a gap is still waiting for a shift: the sender and those it
        reached are told so again, with the next shift's start as the rota has it now (a shift
        added since is named), every deadline. One missed while the relay was down is not
        repeated: the next is a deadline from now."""
        assert e.due_at is not None
        due = e.due_at + dt.timedelta(seconds=e.deadline)
        if due <= now:
            due = now + dt.timedelta(seconds=e.deadline)
        step = e.step + 1
        await escalations.save(conn, dataclasses.replace(e, step=step, due_at=due))
        return await self._announce(conn, e, EscalationKind.NO_SHIFT, step, 0,
                                    e.sender_user_id, e.ladder, now,
                                    next_shift_at=e.shift_ends_at)

    async def _step(self, conn: Any, e: escalations.Escalation, now: dt.datetime) -> set[str]:
        if e.phase == "waiting":
            return await self._remind_waiting(conn, e, now)
        t = advance(level=e.level, phase=e.phase, ladder_size=len(e.ladder), deadline=e.deadline)
        step = e.step + 1
        woken: set[str] = set()
        # A ladder member none of whose devices is active any more (revoked since the consult
        # was sent) cannot receive it: the escalation passes over them to the next one at
        # once, rather than spend a deadline on nobody (audited ``oncall.skipped``).
        while (t.kind is EscalationKind.RELEASED
               and not await devices.users_with_active_devices(conn, [e.ladder[t.level]])):
            await audit.append(conn, "oncall.skipped", subject_kind="message",
                               subject_id=e.message_id, details={
                                   "role": e.role, "level": t.level,
                                   "user": e.ladder[t.level], "why": "no_active_device"})
            t = advance(level=t.level, phase="release", ladder_size=len(e.ladder),
                        deadline=e.deadline)
        if t.kind is EscalationKind.RELEASED:
            woken |= set(await escalations.release_held(conn, e.thread_id, [e.ladder[t.level]]))
        assert e.due_at is not None
        due = None if t.next_due_in is None else e.due_at + dt.timedelta(seconds=t.next_due_in)
        if t.exhausted and e.shift_id is None:
            # Its handover is deferred: nobody is on call for the role, so the ladder used up
            # is reminded every deadline until a shift takes the consult or someone
            # acknowledges it (docs/PROTOCOL.md §16.4). A reminder missed while the relay was
            # down is not repeated: the next is a deadline from now.
            due = e.due_at + dt.timedelta(seconds=e.deadline)
            if due <= now:
                due = now + dt.timedelta(seconds=e.deadline)
        await escalations.save(conn, dataclasses.replace(
            e, level=t.next_level, phase=t.next_phase, step=step, due_at=due,
            state="exhausted" if t.exhausted else "open"))
        woken |= await self._announce(conn, e, t.kind, step, t.level, e.ladder[t.level],
                                      e.ladder[:t.level + 1], now)
        return woken

    async def _handover(self, conn: Any, e: escalations.Escalation, now: dt.datetime
                        ) -> set[str] | None:
        """The shift of an unacknowledged escalation ended, open or exhausted (its ladder used
        up is nobody's acknowledgement): hand it to the incoming ladder and restart it there.
        With nobody coming in the handover is deferred (module docstring). None, with nothing
        done, while a rota write of the role is under way: deciding from the rota it is
        changing, a deferral could miss the shift it adds, whose wake (add_shifts) would then
        find nothing deferred yet."""
        if not await oncall.share_role_unless_written(conn, e.org_id, e.role):
            return None
        incoming = (await self._roles_for(conn, e, now))
        if incoming is None:
            # It belongs to no shift now (a shift added later finds it: add_shifts) and its
            # handover falls due when the next shift known starts. An open escalation keeps
            # its timer; a used-up ladder is reminded at once, then every deadline (_step).
            # The sender and those it reached are told at once that nobody is on call for the
            # role, and when the next shift starts (if any): the ``no_shift`` step a consult
            # sent into a gap gets (_wait_for_shift), numbered in the same sequence.
            nxt = await oncall.next_start(conn, e.org_id, e.role, now)
            step = e.step + 1
            deferred = dataclasses.replace(
                e, shift_id=None, shift_ends_at=nxt, step=step,
                due_at=now if e.due_at is None else e.due_at)
            await escalations.save(conn, deferred)
            await audit.append(conn, "oncall.handover_deferred", subject_kind="message",
                               subject_id=e.message_id, details={
                                   "role": e.role, "state": e.state,
                                   "until": _ts(nxt)})
            return await self._announce(conn, deferred, EscalationKind.NO_SHIFT, step, 0,
                                        e.sender_user_id, e.ladder[:e.level + 1], now,
                                        next_shift_at=nxt)
        shift_id, ladder, ends_at = incoming
        reached = list(e.ladder[:e.level + 1])
        recipients = set(await conn.fetchval(
            "SELECT recipients::text[] FROM messages WHERE message_pk = $1", e.message_pk) or [])
        # Held copies of people no longer on call are dropped; the new primary's is released.
        await conn.execute(
            "DELETE FROM deliveries d USING messages m, devices v "
            "WHERE d.message_pk = m.message_pk AND m.thread_id = $1 AND d.held "
            "AND v.device_id = d.device_id AND NOT (v.user_id = ANY($2::uuid[]))",
            e.thread_id, list(ladder))
        woken = set(await escalations.release_held(conn, e.thread_id, [ladder[0]]))
        new_devices = [d for d in await devices.active_device_ids(conn, ladder)
                       if d not in recipients]
        holders = await conn.fetch(
            "SELECT v.device_id::text AS d FROM devices v WHERE v.status = 'active' AND ("
            "v.user_id = $1 OR (v.user_id = ANY($2::uuid[]) AND v.device_id = ANY($3::uuid[])))",
            e.sender_user_id, reached, sorted(recipients))
        holder_ids = sorted(r["d"] for r in holders)
        if new_devices and holder_ids:
            # The outgoing clinicians the consult reached are asked to seal it again, so they
            # must be able to send to the thread once the role no longer reaches them: they
            # keep it as members, as an acknowledger does (an explicit removal stands).
            await conn.execute(
                "INSERT INTO thread_members (thread_id, user_id, added_at, added_by) "
                "SELECT $1, v.user_id, $3, NULL FROM devices v "
                "WHERE v.device_id = ANY($2::uuid[]) AND v.user_id <> $4::uuid "
                "GROUP BY v.user_id ON CONFLICT (thread_id, user_id) DO NOTHING",
                e.thread_id, holder_ids, now, e.sender_user_id)
            deadline = now + dt.timedelta(seconds=e.deadline)
            await escalations.request_reseal(
                conn, escalation_id=e.escalation_id, thread_id=e.thread_id,
                devices=new_devices, holders=holder_ids, now=now, deadline=deadline)
            frame = encode_frame(ResealRequest(
                thread_id=e.thread_id, message_id=e.message_id, devices=new_devices[:256],
                deadline=int(deadline.timestamp())))
            await add_notices(conn, holder_ids, NOTICE_RESEAL, frame,
                              dedupe_key=f"reseal:{e.escalation_id}", now=now)
            woken |= set(holder_ids)
        step = e.step + 1
        moved = dataclasses.replace(
            e, ladder=tuple(ladder), level=0, phase="renotify", step=step, shift_id=shift_id,
            shift_ends_at=ends_at, due_at=now + dt.timedelta(seconds=first_due(e.deadline)),
            state="open")
        await escalations.save(conn, moved)
        woken |= await self._announce(conn, moved, EscalationKind.HANDOVER, step, 0, ladder[0],
                                      [*reached, *ladder], now)
        return woken

    async def _roles_for(self, conn: Any, e: escalations.Escalation, now: dt.datetime
                         ) -> tuple[str, list[str], dt.datetime] | None:
        """The incoming shift and its ladder in order, cut to those ``role_reach`` reaches."""
        return await self._incoming(conn, e.org_id, e.role, now)

    async def _incoming(self, conn: Any, org_id: str, role: str, now: dt.datetime
                        ) -> tuple[str, list[str], dt.datetime] | None:
        """The role's shift covering ``now`` and its ladder as :meth:`_roles_for` cuts it;
        None if there is none or its ladder reaches nobody."""
        shift = await oncall.on_call(conn, org_id, role, now)
        if shift is None:
            return None
        rows = await conn.fetch("SELECT user_id::text AS u FROM role_reach($1, $2, $3)",
                                org_id, role, now)
        active = {r["u"] for r in rows}
        # Only those with a device to receive it (every device of one revoked since the rota
        # was written reaches nobody): as at the send, _roles_now.
        with_devices = await devices.users_with_active_devices(
            conn, [u for u in shift.ladder if u in active])
        ladder = [u for u in shift.ladder if u in with_devices]
        if not ladder:
            return None
        return shift.shift_id, ladder, shift.ends_at
