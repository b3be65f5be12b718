"""The "done when": an intern pages ``role:orthopaedics-oncall`` with an urgent consult,
nobody acknowledges, the relay re-notifies, then releases the held copy to the backup at the
deadline; the backup acknowledges and the sender has seen the whole ladder. The same across a
relay restart in the middle of the escalation. At a shift change the consult is handed to the
incoming shift; with none, the handover waits for the role's next shift (one the rota gains
later too) while the outgoing ladder is reminded. Real relay, real Postgres, simulated minutes
(the on-call clock is injected; tokens and proofs keep real time)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import json
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from clients.sdk.socket import RelaySocket, SendRefused
from protocol import envelope
from protocol.certs import verify_chain
from protocol.frames import (
    Deliver,
    Error,
    EscalationKind,
    EscalationNotice,
    Frame,
    QueueEmpty,
    Receipt,
    ReceiptNotice,
    ResealRequest,
)
from protocol.model import Priority
from protocol.statements import ReceiptKind, ReceiptStatement, issue_receipt_statement
from server.store import escalations
from tests.helpers import eventually, running_relay, seconds
from tests.identity_world import World, identity_world
from tests.relay_world import Peer, connect, opened, peer, seal
from tests.reseal import answer_reseal
from tests.server.test_plans import generic_plan

ROLE = "role:orthopaedics-oncall"
ORG = "st-elsewhere"


class SimClock:
    """Simulated Unix time for rotas and escalations: moves only when told."""

    def __init__(self) -> None:
        self.now = float(int(time.time()))

    def __call__(self) -> float:
        return self.now

    def advance(self, s: float) -> None:
        self.now += s


@pytest.fixture
def clock() -> SimClock:
    return SimClock()


@pytest.fixture
async def world(db_dsn: str, tmp_path: Path, clock: SimClock) -> AsyncIterator[World]:
    async with identity_world(db_dsn, tmp_path, oncall_clock=clock,
                              oncall_sweep_interval=0.05) as w:
        yield w


async def define_rota(world: World, clock: SimClock, ladder: list[str], *,
                      hours: float = 8) -> None:
    r = await world.http.put(f"/v1/admin/oncall/{ORG}/{ROLE}", headers=world.admin_headers(),
                             json={"display_name": "Orthopaedics on call"})
    assert r.status_code == 200, r.text
    start = int(clock()) - 3600
    r = await world.http.post(
        f"/v1/admin/oncall/{ORG}/{ROLE}/shifts", headers=world.admin_headers(),
        json={"shifts": [{"starts_at": start, "ends_at": int(clock() + hours * 3600),
                          "ladder": ladder}]})
    assert r.status_code == 200, r.text
    assert all(x["ok"] for x in r.json()["results"]), r.text


async def next_of(sock: RelaySocket, kind: type, timeout: float = 10.0) -> Any:
    while True:
        frame = await sock.next_event(seconds(timeout))
        if isinstance(frame, kind):
            return frame


async def nothing_of(sock: RelaySocket, kind: type, wait: float = 0.6) -> None:
    """No frame of ``kind`` arrives within ``wait`` seconds."""
    try:
        while True:
            frame: Frame = await sock.next_event(wait)
            assert not isinstance(frame, kind), frame
    except TimeoutError:
        return


def receipt(p: Peer, d: Deliver, kind: ReceiptKind) -> Receipt:
    h = d.message.header
    st = issue_receipt_statement(ReceiptStatement(
        v=1, device_id=p.device_id, message_id=h.message_id, thread_id=h.thread_id, kind=kind,
        at=int(time.time())), p.device.keys.signing)
    return Receipt(req_id=uuid.uuid4().hex, statement=st)


async def role_thread(world: World, intern: Peer) -> str:
    tid = str(uuid.uuid4())
    r = await world.call(intern.device, "POST", "/v1/threads", json={
        "thread_id": tid, "roles": [ROLE], "priority": "urgent"})
    assert r.status_code == 201, r.text
    assert r.json()["roles"] == ["orthopaedics_oncall"]
    return tid


@pytest.fixture
async def cast(world: World) -> dict[str, Peer]:
    """An intern, a ladder of three orthopaedists, and a certificate holder of the role who is
    not on tonight's rota (the rota, not the certificate, decides who a role reaches)."""
    people = {"intern": await peer(world, "intern", roles=("intern",))}
    for login in ("primary", "backup", "consultant"):
        people[login] = await peer(world, login, roles=("orthopaedist",))
    people["offrota"] = await peer(world, "offrota", roles=("orthopaedics_oncall",))
    return people


async def page(world: World, cast: dict[str, Peer]) -> tuple[str, Any]:
    """The intern pages the role: sealed for exactly the ladder the relay names."""
    intern = cast["intern"]
    tid = await role_thread(world, intern)
    r = await world.call(intern.device, "GET", f"/v1/threads/{tid}/recipients")
    assert r.status_code == 200, r.text
    assert len(r.json()["users"]) == 4  # the intern and the three on the ladder
    ladder = [cast["primary"], cast["backup"], cast["consultant"]]
    sealed = seal(intern, tid, ladder, b"displaced supracondylar fracture, please review",
                  priority=Priority.URGENT)
    return tid, sealed


async def test_urgent_consult_climbs_the_ladder_and_the_sender_sees_every_step(
        world: World, clock: SimClock, cast: dict[str, Peer]) -> None:
    intern, primary, backup = cast["intern"], cast["primary"], cast["backup"]
    await define_rota(world, clock, ["primary", "backup", "consultant"])
    r = await world.call(intern.device, "GET", "/v1/oncall/orthopaedics-oncall")
    assert r.status_code == 200, r.text
    assert [m["user_id"] for m in r.json()["shift"]["ladder"]] == [
        primary.user_id, backup.user_id, cast["consultant"].user_id]
    tid, sealed = await page(world, cast)
    socks = {k: await connect(world, cast[k]) for k in ("intern", "primary", "backup")}
    try:
        for s in socks.values():
            await next_of(s, QueueEmpty)
        acc = await socks["intern"].send(sealed)
        assert acc.thread_id == tid
        d = await next_of(socks["primary"], Deliver)
        assert d.priority is Priority.URGENT
        await nothing_of(socks["backup"], Deliver)  # held

        clock.advance(150)  # half the 5-minute deadline: the primary is paged again
        n1 = await next_of(socks["intern"], EscalationNotice)
        assert (n1.kind, n1.step, n1.level, n1.user_id) == (
            EscalationKind.RENOTIFY, 1, 0, primary.user_id)
        assert (await next_of(socks["primary"], EscalationNotice)).step == 1
        await nothing_of(socks["backup"], Deliver)

        clock.advance(150)  # the deadline: released to the backup
        n2 = await next_of(socks["intern"], EscalationNotice)
        assert (n2.kind, n2.step, n2.level, n2.user_id) == (
            EscalationKind.RELEASED, 2, 1, backup.user_id)
        got = await next_of(socks["backup"], Deliver)
        assert opened(backup, intern, got.message) == (
            b"displaced supracondylar fracture, please review")
        await socks["backup"].ack([got.delivery_id])
        await socks["backup"].send_frame(receipt(backup, got, ReceiptKind.ACKNOWLEDGED))
        ack = await next_of(socks["intern"], ReceiptNotice)
        assert (ack.kind, ack.user_id) == (ReceiptKind.ACKNOWLEDGED, backup.user_id)

        clock.advance(900)  # acknowledged: no more steps
        await nothing_of(socks["intern"], EscalationNotice)
    finally:
        for s in socks.values():
            await s.close()
    r = await world.call(intern.device, "GET", f"/v1/threads/{tid}/escalations")
    assert r.status_code == 200, r.text
    (esc,) = r.json()["escalations"]
    assert esc["state"] == "acknowledged" and esc["acknowledged_by"] == backup.user_id
    assert [(s["kind"], s["user_id"]) for s in esc["steps"]] == [
        ("renotify", primary.user_id), ("released", backup.user_id)]
    assert esc["steps"][1]["at"] - esc["steps"][0]["at"] == 150
    r = await world.call(intern.device, "GET", f"/v1/threads/{tid}/receipts")
    kinds = {(x["user_id"], x["kind"]) for x in r.json()["receipts"]}
    assert (backup.user_id, "acknowledged") in kinds


async def test_escalation_continues_on_time_across_a_relay_restart(
        db_dsn: str, tmp_path: Path, clock: SimClock) -> None:
    async with identity_world(db_dsn, tmp_path, oncall_clock=clock,
                              oncall_sweep_interval=0.05) as world:
        people = {"intern": await peer(world, "intern", roles=("intern",))}
        for login in ("primary", "backup", "consultant"):
            people[login] = await peer(world, login, roles=("orthopaedist",))
        people["offrota"] = await peer(world, "offrota", roles=("orthopaedics_oncall",))
        await define_rota(world, clock, ["primary", "backup", "consultant"])
        tid, sealed = await page(world, people)
        sender = await connect(world, people["intern"])
        try:
            await sender.send(sealed)
            clock.advance(150)
            n1 = await next_of(sender, EscalationNotice)
            assert n1.kind is EscalationKind.RENOTIFY
        finally:
            await sender.close()
        settings, admin, orgs = world.relay.relay.settings, world.admin_token, world.orgs
    # The relay is down; the deadline passes meanwhile.
    clock.advance(150)
    async with running_relay(db_dsn, settings, oncall_clock=clock) as relay, \
            httpx.AsyncClient(base_url=relay.base_url) as c:
        world2 = World(relay=relay, http=c, dsn=db_dsn, orgs=orgs, admin_token=admin)
        backup = people["backup"]
        b = await connect(world2, backup)
        s = await connect(world2, people["intern"])
        try:
            got = await next_of(b, Deliver)
            assert got.message.header.message_id == sealed.header.message_id
            n2 = await next_of(s, EscalationNotice)
            if n2 == n1:
                # Durable notices are at-least-once: the renotify may come again if the first
                # connection closed before the relay recorded it as sent. Only that one may.
                n2 = await next_of(s, EscalationNotice)
            assert (n2.kind, n2.level, n2.user_id) == (EscalationKind.RELEASED, 1,
                                                       backup.user_id)
            await b.send_frame(receipt(backup, got, ReceiptKind.ACKNOWLEDGED))
            assert (await next_of(s, ReceiptNotice)).kind is ReceiptKind.ACKNOWLEDGED
        finally:
            await b.close()
            await s.close()
        r = await world2.call(people["intern"].device, "GET", f"/v1/threads/{tid}/escalations")
        (esc,) = r.json()["escalations"]
        assert esc["state"] == "acknowledged"
        assert [x["kind"] for x in esc["steps"]] == ["renotify", "released"]


async def test_acknowledgement_by_someone_off_the_ladder_is_refused_not_on_ladder(
        world: World, clock: SimClock, cast: dict[str, Peer]) -> None:
    intern, primary = cast["intern"], cast["primary"]
    nurse = await peer(world, "nurse", roles=("nurse",))
    await define_rota(world, clock, ["primary", "backup"])
    tid = await role_thread(world, intern)
    r = await world.call(intern.device, "POST", f"/v1/threads/{tid}/participants",
                         json={"users": [nurse.user_id]})
    assert r.status_code == 204, r.text
    sealed = seal(intern, tid, [primary, cast["backup"], nurse], b"consult",
                  priority=Priority.URGENT)
    s, n = await connect(world, intern), await connect(world, nurse)
    try:
        await s.send(sealed)
        d = await next_of(n, Deliver)
        await n.send_frame(receipt(nurse, d, ReceiptKind.ACKNOWLEDGED))
        err = await next_of(n, Error)
        assert err.code.value == "not_on_ladder"
        # A plain read receipt from the nurse is fine, and the consult keeps escalating.
        await n.send_frame(receipt(nurse, d, ReceiptKind.READ))
        assert (await next_of(s, ReceiptNotice)).kind is ReceiptKind.READ
        clock.advance(150)
        assert (await next_of(s, EscalationNotice)).kind is EscalationKind.RENOTIFY
    finally:
        await s.close()
        await n.close()


async def test_the_consults_maker_acknowledging_a_reply_once_it_is_over_is_refused_forbidden(
        world: World, clock: SimClock, cast: dict[str, Peer]) -> None:
    """The primary acknowledges the intern's consult (its escalation is over: nothing left to
    check the ladder against) and replies; the intern's "acknowledgement" of that reply, in
    the consult she made, is refused (``forbidden``) and nothing is kept or told: the relay
    cannot see which message is the consult, but it sees who made the thread
    (server/receipts.py, docs/PROTOCOL.md §16.3)."""
    intern, primary, backup = cast["intern"], cast["primary"], cast["backup"]
    await define_rota(world, clock, ["primary", "backup"])
    tid = await role_thread(world, intern)
    s, p = await connect(world, intern), await connect(world, primary)
    try:
        await s.send(seal(intern, tid, [primary, backup], b"consult", priority=Priority.URGENT))
        await p.send_frame(receipt(primary, await next_of(p, Deliver), ReceiptKind.ACKNOWLEDGED))
        assert (await next_of(s, ReceiptNotice)).kind is ReceiptKind.ACKNOWLEDGED
        reply = seal(primary, tid, [intern, backup], b"coming", priority=Priority.URGENT)
        await p.send(reply)
        d = await next_of(s, Deliver)
        assert d.message.header.message_id == reply.header.message_id
        await s.send_frame(receipt(intern, d, ReceiptKind.ACKNOWLEDGED))
        err = await next_of(s, Error)
        assert err.code.value == "forbidden"
        await nothing_of(p, ReceiptNotice)
        conn = await asyncpg.connect(world.dsn)
        try:
            assert await conn.fetchval(
                "SELECT count(*) FROM receipts WHERE message_id = $1 AND kind = "
                "'acknowledged'", uuid.UUID(reply.header.message_id)) == 0
        finally:
            await conn.close()
        # Her read receipt of it is taken as ever.
        await s.send_frame(receipt(intern, d, ReceiptKind.READ))
        assert (await next_of(p, ReceiptNotice)).kind is ReceiptKind.READ
    finally:
        await s.close()
        await p.close()


async def test_role_reaches_the_ladder_not_every_certificate_holder(
        world: World, clock: SimClock, cast: dict[str, Peer]) -> None:
    intern = cast["intern"]
    await define_rota(world, clock, ["primary", "backup", "consultant"])
    tid = await role_thread(world, intern)
    sealed = seal(intern, tid, [cast["primary"], cast["backup"], cast["consultant"],
                                cast["offrota"]], b"x", priority=Priority.URGENT)
    s = await connect(world, intern)
    try:
        with pytest.raises(SendRefused) as err:
            await s.send(sealed)
        assert err.value.code == "device_set_mismatch"
        assert cast["offrota"].device_id in (err.value.extra or [])
    finally:
        await s.close()


async def test_shift_change_hands_an_unacknowledged_consult_to_the_incoming_clinician(
        world: World, clock: SimClock, cast: dict[str, Peer]) -> None:
    intern, primary, backup = cast["intern"], cast["primary"], cast["backup"]
    night = await peer(world, "night", roles=("orthopaedist",))
    await day_shift_ending(world, clock, night_from=0, urgent_seconds=1800)
    tid = await role_thread(world, intern)
    sealed = seal(intern, tid, [primary, backup], b"please see bed 4",
                  priority=Priority.URGENT)
    s, nt = await connect(world, intern), await connect(world, night)
    try:
        await s.send(sealed)
        clock.advance(600)  # the day shift ends with the consult unacknowledged
        rr = await next_of(s, ResealRequest)
        assert rr.message_id == sealed.header.message_id and rr.devices == [night.device_id]
        hand = await next_of(s, EscalationNotice)
        assert (hand.kind, hand.user_id) == (EscalationKind.HANDOVER, night.user_id)
        assert (await next_of(nt, EscalationNotice)).kind is EscalationKind.HANDOVER
        # The sender's client answers: the content sealed again for the thread's current
        # participants, i.e. the incoming clinician.
        r = await world.call(intern.device, "GET", f"/v1/threads/{tid}/recipients")
        # The intern, the night registrar, and the day primary the consult reached: asked to
        # seal it again too, they keep the thread.
        assert len(r.json()["users"]) == 3
        again = answer_reseal(rr, sealed.header, b"please see bed 4",
                              sender=intern.device.keys,
                              recipients=[_bundle(night), _bundle(primary)])
        await s.send(again)
        got = await next_of(nt, Deliver)
        assert opened(night, intern, got.message) == b"please see bed 4"
        await nt.send_frame(receipt(night, got, ReceiptKind.ACKNOWLEDGED))
        assert (await next_of(s, ReceiptNotice)).user_id == night.user_id
    finally:
        await s.close()
        await nt.close()
    conn = await world.db()
    try:
        assert await conn.fetchval("SELECT count(*) FROM reseal_requests WHERE done_at IS NULL"
                                   ) == 0
        assert await conn.fetchval("SELECT state FROM escalations") == "acknowledged"
    finally:
        await conn.close()


async def add_shifts(world: World, *shifts: tuple[int, int, list[str]]) -> None:
    """Add these shifts (start, end, ladder of logins) to the role's rota, as IT does
    (``lightbox-admin rota add``, a rota import): every one is stored."""
    r = await world.http.post(
        f"/v1/admin/oncall/{ORG}/{ROLE}/shifts", headers=world.admin_headers(),
        json={"shifts": [{"starts_at": a, "ends_at": b, "ladder": ladder}
                         for a, b, ladder in shifts]})
    assert r.status_code == 200, r.text
    assert [x["ok"] for x in r.json()["results"]] == [True] * len(shifts), r.text


async def day_shift_ending(world: World, clock: SimClock, *, night_from: int | None,
                           urgent_seconds: int = 60) -> int:
    """USER_GUIDE's tester's rota: an urgent deadline of ``urgent_seconds`` (a minute unless
    told), a day ladder of two (primary, backup) until ``change`` (returned, ten minutes from
    now), then, unless ``night_from`` is None, an eight-hour night shift of one ("night")
    starting ``night_from`` seconds after the change."""
    r = await world.http.put(f"/v1/admin/oncall/{ORG}/{ROLE}", headers=world.admin_headers(),
                             json={"routine_seconds": 3600, "urgent_seconds": urgent_seconds})
    assert r.status_code == 200, r.text
    change = int(clock()) + 600
    day = (change - 8 * 3600, change, ["primary", "backup"])
    if night_from is None:
        await add_shifts(world, day)
    else:
        night = change + night_from
        await add_shifts(world, day, (night, night + 8 * 3600, ["night"]))
    return change


async def _use_up_the_ladder(world: World, clock: SimClock) -> None:
    """Renotify the primary, release to the backup, renotify the backup, and at its deadline
    the ladder is used up: exhausted (steps 1 to 4)."""
    for _ in range(4):
        clock.advance(30)
    conn = await world.db()
    try:
        await eventually(lambda: conn.fetchval("SELECT state = 'exhausted' FROM escalations"))
    finally:
        await conn.close()


@dataclasses.dataclass(frozen=True)
class UsedUp:
    """An urgent consult from the intern whose day ladder was used up, and the sockets of the
    intern, the backup and the night registrar."""

    tid: str
    sealed: Any
    released: Deliver  # the backup's copy, released to them on the way up
    intern: RelaySocket
    backup: RelaySocket
    night: RelaySocket


@contextlib.asynccontextmanager
async def consult_past_its_ladder(world: World, clock: SimClock, cast: dict[str, Peer],
                                  night: Peer, text: bytes) -> AsyncIterator[UsedUp]:
    """The intern pages the role (day shift of ``day_shift_ending`` with its one-minute
    deadline), nobody acknowledges, and every step is taken before the shift ends."""
    intern = cast["intern"]
    tid = await role_thread(world, intern)
    sealed = seal(intern, tid, [cast["primary"], cast["backup"]], text,
                  priority=Priority.URGENT)
    socks = (await connect(world, intern), await connect(world, cast["backup"]),
             await connect(world, night))
    try:
        await socks[0].send(sealed)
        await _use_up_the_ladder(world, clock)
        yield UsedUp(tid, sealed, await next_of(socks[1], Deliver), *socks)
    finally:
        for sock in socks:
            await sock.close()


async def notice_at(sock: RelaySocket, step: int) -> EscalationNotice:
    """The escalation notice of ``step``, those before it skipped."""
    while True:
        n: EscalationNotice = await next_of(sock, EscalationNotice)
        if n.step >= step:
            assert n.step == step, n
            return n


async def test_a_consult_whose_ladder_was_used_up_goes_to_the_incoming_shift_and_escalates_there(
        world: World, clock: SimClock, cast: dict[str, Peer]) -> None:
    """The tester's scenario: every step done before the shift ends, nobody acknowledged. At
    the change the incoming primary is notified, a reseal is requested for their devices (the
    outgoing backup, no longer on call, may answer it), and the escalation restarts on the
    incoming ladder."""
    intern, primary, backup = cast["intern"], cast["primary"], cast["backup"]
    night = await peer(world, "night", roles=("orthopaedist",))
    change = await day_shift_ending(world, clock, night_from=0)
    async with consult_past_its_ladder(world, clock, cast, night,
                                       b"open tib fracture, bed 9") as c:
        await c.backup.ack([c.released.delivery_id])
        clock.now = change  # the day shift ends, the consult unacknowledged
        hand = await next_of(c.night, EscalationNotice)
        assert (hand.kind, hand.user_id) == (EscalationKind.HANDOVER, night.user_id)
        rr = await next_of(c.backup, ResealRequest)
        assert rr.message_id == c.sealed.header.message_id and rr.devices == [night.device_id]
        # The outgoing backup's device answers (it was refused not_thread_member before).
        r = await world.call(backup.device, "GET", f"/v1/threads/{c.tid}/recipients")
        assert r.status_code == 200, r.text
        again = answer_reseal(rr, c.sealed.header, b"open tib fracture, bed 9",
                              sender=backup.device.keys, sender_user_id=backup.user_id,
                              recipients=[_bundle(p) for p in (intern, primary, night)])
        await c.backup.send(again)
        got = await next_of(c.night, Deliver)
        assert opened(night, backup, got.message) == b"open tib fracture, bed 9"
        clock.advance(30)  # the incoming shift is reminded in turn
        n = await next_of(c.night, EscalationNotice)
        assert (n.kind, n.level, n.user_id) == (EscalationKind.RENOTIFY, 0, night.user_id)
    await escalating_on_the_ladder_of(world, night)
    conn = await world.db()
    try:
        assert await conn.fetchval("SELECT count(*) FROM reseal_requests WHERE done_at IS NULL"
                                   ) == 0
    finally:
        await conn.close()


async def test_a_consult_acknowledged_after_its_ladder_was_used_up_is_not_handed_over(
        world: World, clock: SimClock, cast: dict[str, Peer]) -> None:
    backup = cast["backup"]
    night = await peer(world, "night", roles=("orthopaedist",))
    change = await day_shift_ending(world, clock, night_from=0)
    async with consult_past_its_ladder(world, clock, cast, night, b"bed 11") as c:
        await c.backup.send_frame(receipt(backup, c.released, ReceiptKind.ACKNOWLEDGED))
        assert (await next_of(c.intern, ReceiptNotice)).user_id == backup.user_id
        clock.now = change
        await nothing_of(c.night, EscalationNotice)
        await nothing_of(c.intern, ResealRequest)
    conn = await world.db()
    try:
        assert await conn.fetchval("SELECT state FROM escalations") == "acknowledged"
        assert await conn.fetchval("SELECT count(*) FROM reseal_requests") == 0
    finally:
        await conn.close()


async def deferrals(world: World) -> list[dict[str, Any]]:
    """The details of the ``oncall.handover_deferred`` audit entries, oldest first."""
    conn = await world.db()
    try:
        rows = await conn.fetch("SELECT details::text AS d FROM audit_log "
                                "WHERE event = 'oncall.handover_deferred' ORDER BY seq")
    finally:
        await conn.close()
    return [json.loads(r["d"]) for r in rows]


async def handed_to(world: World, c: UsedUp, night: Peer) -> None:
    """The night registrar is handed the consult: notified, a reseal requested from the
    devices holding it for theirs, and the escalation restarted on their ladder."""
    hand = await next_of(c.night, EscalationNotice)
    assert (hand.kind, hand.level, hand.user_id) == (EscalationKind.HANDOVER, 0, night.user_id)
    rr = await next_of(c.intern, ResealRequest)
    assert rr.message_id == c.sealed.header.message_id and rr.devices == [night.device_id]
    await escalating_on_the_ladder_of(world, night)


async def escalating_on_the_ladder_of(world: World, night: Peer) -> None:
    """The consult was handed over once, to the night shift, and escalates on its ladder."""
    conn = await world.db()
    try:
        row = await conn.fetchrow(
            "SELECT state, ladder::text[] AS ladder, shift_id IS NOT NULL AS on_shift "
            "FROM escalations")
        assert dict(row) == {"state": "open", "ladder": [night.user_id], "on_shift": True}
        assert await conn.fetchval(
            "SELECT count(*) FROM audit_log WHERE event = 'oncall.handover'") == 1
    finally:
        await conn.close()


async def test_with_no_incoming_shift_the_consult_waits_for_the_next_reminding_the_outgoing_ladder(
        world: World, clock: SimClock, cast: dict[str, Peer]) -> None:
    """The day shift ends with nobody on call until the night shift an hour later: the
    handover is deferred (audited), the sender and the outgoing ladder are told nobody is on
    call until the night shift starts (``no_shift``, as a consult sent into a gap), the
    ladder, used up, is reminded at once and every deadline (it does not go silent), and when
    the night shift starts the consult is handed to it and escalates there."""
    intern, backup = cast["intern"], cast["backup"]
    night = await peer(world, "night", roles=("orthopaedist",))
    change = await day_shift_ending(world, clock, night_from=3600)
    async with consult_past_its_ladder(world, clock, cast, night, b"bed 3") as c:
        clock.now = change
        # Step 5: nobody on call, the night shift's start named, to the sender and the whole
        # used-up ladder; step 6, at once, the ladder reminded; then every deadline (a minute).
        for sock in (c.intern, c.backup):
            n = await notice_at(sock, 5)
            assert (n.kind, n.level, n.user_id, n.next_shift_at) == (
                EscalationKind.NO_SHIFT, 0, intern.user_id, change + 3600)
        n = await notice_at(c.backup, 6)
        assert (n.kind, n.level, n.user_id) == (EscalationKind.RENOTIFY, 1, backup.user_id)
        assert (await notice_at(c.intern, 6)).kind is EscalationKind.RENOTIFY
        assert await deferrals(world) == [
            {"role": "orthopaedics_oncall", "state": "exhausted", "until": change + 3600}]
        clock.advance(60)
        assert (await notice_at(c.backup, 7)).kind is EscalationKind.RENOTIFY
        await nothing_of(c.night, EscalationNotice)
        clock.now = change + 3600  # the night shift starts
        await handed_to(world, c, night)
        clock.advance(30)  # and escalates there
        n = await next_of(c.night, EscalationNotice)
        assert (n.kind, n.level, n.user_id) == (EscalationKind.RENOTIFY, 0, night.user_id)


async def test_a_handover_deferred_with_no_later_shift_is_taken_by_a_shift_added_afterwards(
        world: World, clock: SimClock, cast: dict[str, Peer]) -> None:
    """The rota has no shift after the day's: the handover is deferred with no date, and the
    outgoing ladder keeps being reminded. IT then adds a night shift starting in an hour: the
    consult waits for it (nobody else is asked) and is handed to it when it starts."""
    night = await peer(world, "night", roles=("orthopaedist",))
    change = await day_shift_ending(world, clock, night_from=None)
    async with consult_past_its_ladder(world, clock, cast, night, b"bed 7") as c:
        clock.now = change
        n = await notice_at(c.backup, 5)  # nobody on call, and no next shift to name
        assert (n.kind, n.next_shift_at) == (EscalationKind.NO_SHIFT, None)
        assert (await notice_at(c.backup, 6)).kind is EscalationKind.RENOTIFY
        assert await deferrals(world) == [
            {"role": "orthopaedics_oncall", "state": "exhausted", "until": None}]
        clock.advance(600)  # reminders missed meanwhile come once, not ten times
        assert (await notice_at(c.backup, 7)).kind is EscalationKind.RENOTIFY
        await nothing_of(c.backup, EscalationNotice)
        starts = int(clock()) + 3600
        await add_shifts(world, (starts, starts + 8 * 3600, ["night"]))
        await nothing_of(c.night, EscalationNotice)  # not before it starts
        clock.now = starts
        await handed_to(world, c, night)


def _bundle(p: Peer) -> envelope.RecipientBundle:
    vd = verify_chain(p.device.user.cert, p.device.cert,
                      trusted_orgs={p.device.user.org.org_id: p.device.user.org.key.public},
                      at=int(time.time()), revocations=None)
    return envelope.RecipientBundle.from_tokens(vd, p.spk_token)


async def test_a_long_gap_is_caught_up_step_by_step_and_the_ladder_ends_exhausted(
        world: World, clock: SimClock, cast: dict[str, Peer]) -> None:
    """Each step is taken once, on its scheduled time, even when the clock jumps far ahead
    (a relay that was down); at the top of the ladder the escalation stops."""
    await define_rota(world, clock, ["primary", "backup", "consultant"])
    _, sealed = await page(world, cast)
    s = await connect(world, cast["intern"])
    try:
        await s.send(sealed)
    finally:
        await s.close()
    clock.advance(10_000)
    conn = await world.db()
    try:
        # The sweeper takes the steps on its own; the last one exhausts the escalation.
        await eventually(lambda: conn.fetchval(
            "SELECT state = 'exhausted' FROM escalations"))
        steps = await conn.fetch("SELECT step, kind FROM escalation_events ORDER BY step")
        assert [r["kind"] for r in steps] == ["renotify", "released", "renotify", "released",
                                              "renotify", "renotify"]
        assert await conn.fetchval("SELECT state FROM escalations") == "exhausted"
    finally:
        await conn.close()


async def test_the_sweep_and_a_rota_write_read_the_escalations_by_their_indexes(
        db_dsn: str) -> None:
    """The timer sweep (deferred reminders included) and the rota write that brings deferred
    handovers forward can each read its partial index (alembic 0022, 0023) rather than the
    whole table, acknowledged rows and all: each statement repeats its index's predicate. As
    tests/server/test_plans.py does, planned generically on tables analysed while empty, with
    sequential scans off (on an empty table one is cheaper, and would hide a predicate the
    index does not match)."""
    conn = await asyncpg.connect(db_dsn, statement_cache_size=0)  # generic_plan deallocates
    try:
        await conn.execute("ANALYZE")
        await conn.execute("SET plan_cache_mode = force_generic_plan")
        await conn.execute("SET enable_seqscan = off")
        at = "'2026-12-06 08:00:00+00'"
        plans = {
            "escalations_due": await generic_plan(
                conn, escalations._claim_sql("due_at"), f"{at}, 100"),
            "escalations_handover": await generic_plan(
                conn, escalations._claim_sql("shift_ends_at"), f"{at}, 100"),
            "escalations_deferred": await generic_plan(
                conn, escalations._WAKE_DEFERRED, f"'{ORG}', 'orthopaedics_oncall', {at}")}
    finally:
        await conn.close()
    for index, plan in plans.items():
        assert "Seq Scan" not in plan and f"using {index} on escalations" in plan, plan


async def test_a_ladder_member_whose_devices_were_all_revoked_is_passed_over(
        world: World, clock: SimClock, cast: dict[str, Peer]) -> None:
    """The backup's only device is revoked after the consult was sent: at the deadline the
    escalation goes to the consultant, the next one who can receive it, at once; the sender
    never reads "passed to" someone nothing can reach (audited ``oncall.skipped``)."""
    backup, consultant = cast["backup"], cast["consultant"]
    await define_rota(world, clock, ["primary", "backup", "consultant"])
    tid, sealed = await page(world, cast)
    socks = {k: await connect(world, cast[k]) for k in ("intern", "primary", "consultant")}
    try:
        for s in socks.values():
            await next_of(s, QueueEmpty)
        await socks["intern"].send(sealed)
        await next_of(socks["primary"], Deliver)
        r = await world.revoke(world.org, 1, devices=(backup.device_id,))
        assert r.status_code == 200, r.text

        clock.advance(150)
        assert (await next_of(socks["intern"], EscalationNotice)).kind is EscalationKind.RENOTIFY
        clock.advance(150)  # the deadline: the backup has no device, the consultant is next
        n2 = await next_of(socks["intern"], EscalationNotice)
        assert (n2.kind, n2.step, n2.level, n2.user_id) == (
            EscalationKind.RELEASED, 2, 2, consultant.user_id)
        got = await next_of(socks["consultant"], Deliver)
        assert got.message.header.thread_id == tid
    finally:
        for s in socks.values():
            await s.close()
    conn = await world.db()
    try:
        skipped = await conn.fetchval(
            "SELECT count(*) FROM audit_log WHERE event = 'oncall.skipped' AND subject_id = $1",
            sealed.header.message_id)
    finally:
        await conn.close()
    assert skipped == 1


async def test_a_rota_primary_without_an_active_device_is_left_out_of_the_ladder(
        world: World, clock: SimClock, cast: dict[str, Peer]) -> None:
    """The primary's only device was revoked before the consult: the ladder starts at the
    backup, who receives it at once (nothing held for a deadline spent on nobody) and is the
    one the first reminder names."""
    intern, primary, backup = cast["intern"], cast["primary"], cast["backup"]
    await define_rota(world, clock, ["primary", "backup", "consultant"])
    r = await world.revoke(world.org, 1, devices=(primary.device_id,))
    assert r.status_code == 200, r.text
    tid = await role_thread(world, intern)
    sealed = seal(intern, tid, [backup, cast["consultant"]], b"please review",
                  priority=Priority.URGENT)
    socks = {k: await connect(world, cast[k]) for k in ("intern", "backup")}
    try:
        for s in socks.values():
            await next_of(s, QueueEmpty)
        await socks["intern"].send(sealed)
        assert (await next_of(socks["backup"], Deliver)).message.header.thread_id == tid
        clock.advance(150)
        n1 = await next_of(socks["intern"], EscalationNotice)
        assert (n1.kind, n1.level, n1.user_id) == (EscalationKind.RENOTIFY, 0, backup.user_id)
    finally:
        for s in socks.values():
            await s.close()


async def test_a_consult_whose_shift_it_removed_is_handed_to_the_shift_covering_it_then(
        world: World, clock: SimClock, cast: dict[str, Peer]) -> None:
    """IT removes the shift an unacknowledged consult belongs to: its handover falls due at
    once rather than at the removed shift's end; with no other shift covering, it is deferred,
    and the shift IT puts in its place is handed the consult when it is added."""
    intern, primary, backup = cast["intern"], cast["primary"], cast["backup"]
    night = await peer(world, "night", roles=("orthopaedist",))
    await define_rota(world, clock, ["primary", "backup", "consultant"])
    r = await world.http.get(f"/v1/admin/oncall/{ORG}/{ROLE}/shifts",
                             headers=world.admin_headers())
    assert r.status_code == 200, r.text
    (shift,) = r.json()["shifts"]
    tid = await role_thread(world, intern)
    sealed = seal(intern, tid, [primary, backup, cast["consultant"]], b"please see bed 4",
                  priority=Priority.URGENT)
    s = await connect(world, intern)
    try:
        await next_of(s, QueueEmpty)
        await s.send(sealed)
        r = await world.http.delete(f"/v1/admin/oncall/{ORG}/{ROLE}/shifts/{shift['shift_id']}",
                                    headers=world.admin_headers())
        assert r.status_code == 204, r.text
        await add_shifts(world, (int(clock()), int(clock()) + 8 * 3600, ["night"]))
        hand = await next_of(s, EscalationNotice)
        if hand.kind is EscalationKind.NO_SHIFT:  # the sweep deferred it before the shift came
            hand = await next_of(s, EscalationNotice)
        assert (hand.kind, hand.user_id) == (EscalationKind.HANDOVER, night.user_id)
    finally:
        await s.close()


async def remove_shift_asking_what_becomes_of_it(world: World, shift_id: str
                                                 ) -> dict[str, Any]:
    """IT's ``lightbox-admin rota remove``: the shift removed, and the relay's account of its
    unacknowledged consults, asked for (``Prefer: return=representation``)."""
    r = await world.http.delete(f"/v1/admin/oncall/{ORG}/{ROLE}/shifts/{shift_id}",
                                headers={**world.admin_headers(),
                                         "Prefer": "return=representation"})
    assert r.status_code == 200, r.text
    assert r.headers["preference-applied"] == "return=representation"
    answer: dict[str, Any] = r.json()
    return answer


async def test_removing_the_running_shift_tells_it_and_the_sender_the_consult_waits_for_the_next(
        world: World, clock: SimClock, cast: dict[str, Peer]) -> None:
    """IT removes the running shift while a consult on it is unacknowledged and the rota's
    next shift starts in an hour: IT is answered one consult deferred to that start (no shift
    covers now), and the intern who sent it, with the primary it reached, get a ``no_shift``
    step naming that start, the consult's first step, before its escalation goes on."""
    intern, primary = cast["intern"], cast["primary"]
    night = await peer(world, "night", roles=("orthopaedist",))
    change = await day_shift_ending(world, clock, night_from=3600)
    r = await world.http.get(f"/v1/admin/oncall/{ORG}/{ROLE}/shifts",
                             headers=world.admin_headers())
    assert r.status_code == 200, r.text
    day = next(x["shift_id"] for x in r.json()["shifts"] if x["ends_at"] == change)
    tid = await role_thread(world, intern)
    sealed = seal(intern, tid, [primary, cast["backup"]], b"please see bed 4",
                  priority=Priority.URGENT)
    socks = (await connect(world, intern), await connect(world, primary),
             await connect(world, night))
    conn = await world.db()
    try:
        await next_of(socks[0], QueueEmpty)
        await socks[0].send(sealed)
        await next_of(socks[1], Deliver)
        assert await remove_shift_asking_what_becomes_of_it(world, day) == {
            "shift_id": day, "handovers": 1, "covered_now": False,
            "next_shift_at": change + 3600}
        for sock in socks[:2]:
            n = await next_of(sock, EscalationNotice)
            assert (n.kind, n.step, n.user_id, n.next_shift_at) == (
                EscalationKind.NO_SHIFT, 1, intern.user_id, change + 3600)
        await nothing_of(socks[2], EscalationNotice)  # the night shift has not started
        clock.advance(30)  # the open escalation keeps its timer: the primary is reminded
        n = await next_of(socks[0], EscalationNotice)
        assert (n.kind, n.step, n.user_id) == (EscalationKind.RENOTIFY, 2, primary.user_id)
        steps = await conn.fetch("SELECT step, kind, next_shift_at FROM escalation_events "
                                 "ORDER BY step")
        assert [(x["step"], x["kind"], x["next_shift_at"]) for x in steps] == [
            (1, "no_shift", dt.datetime.fromtimestamp(change + 3600, dt.UTC)),
            (2, "renotify", None)]
    finally:
        await conn.close()
        for sock in socks:
            await sock.close()


async def test_removing_a_shift_answers_what_becomes_of_its_consults_only_when_asked(
        world: World, clock: SimClock, cast: dict[str, Peer]) -> None:
    """The running shift removed with no later one on the rota: asked, the relay answers its
    unacknowledged consult deferred with no next shift to name; a shift with none (a future
    one) answers none; an admin CLI that does not ask gets 204 and no body, as before."""
    intern = cast["intern"]
    await define_rota(world, clock, ["primary", "backup", "consultant"])
    later = int(clock()) + 9 * 3600
    await add_shifts(world, (later, later + 3600, ["backup"]))
    r = await world.http.get(f"/v1/admin/oncall/{ORG}/{ROLE}/shifts",
                             headers=world.admin_headers())
    assert r.status_code == 200, r.text
    running, future = (x["shift_id"] for x in sorted(r.json()["shifts"],
                                                     key=lambda x: x["starts_at"]))
    tid = await role_thread(world, intern)
    sealed = seal(intern, tid, [cast["primary"], cast["backup"], cast["consultant"]],
                  b"please see bed 4", priority=Priority.URGENT)
    s = await connect(world, intern)
    try:
        await next_of(s, QueueEmpty)
        await s.send(sealed)
        assert await remove_shift_asking_what_becomes_of_it(world, future) == {
            "shift_id": future, "handovers": 0, "covered_now": False, "next_shift_at": None}
        assert await remove_shift_asking_what_becomes_of_it(world, running) == {
            "shift_id": running, "handovers": 1, "covered_now": False, "next_shift_at": None}
        n = await next_of(s, EscalationNotice)
        assert (n.kind, n.step, n.next_shift_at) == (EscalationKind.NO_SHIFT, 1, None)
    finally:
        await s.close()
    await add_shifts(world, (later, later + 3600, ["backup"]))
    r = await world.http.get(f"/v1/admin/oncall/{ORG}/{ROLE}/shifts",
                             headers=world.admin_headers())
    (again,) = r.json()["shifts"]
    r = await world.http.delete(f"/v1/admin/oncall/{ORG}/{ROLE}/shifts/{again['shift_id']}",
                                headers=world.admin_headers())
    assert (r.status_code, r.content) == (204, b"")


async def test_a_handover_falling_due_while_it_writes_the_rota_waits_for_the_shift_it_adds(
        world: World, clock: SimClock, cast: dict[str, Peer]) -> None:
    """A rota write (``add_shifts``: the role's row locked, the shift stored, the deferred
    handovers woken, one transaction) while a consult's handover falls due: the sweep must not
    decide from the rota being changed. Deciding first, it found no shift, deferred the
    handover with no next shift known, and the write's wake, before that deferral committed,
    found nothing to wake: the new shift never got the consult. The write is held open here
    as IT's request would hold it, at the moment the sweep runs."""
    intern, primary, backup = cast["intern"], cast["primary"], cast["backup"]
    night = await peer(world, "night", roles=("orthopaedist",))
    await define_rota(world, clock, ["primary", "backup", "consultant"])
    tid = await role_thread(world, intern)
    sealed = seal(intern, tid, [primary, backup, cast["consultant"]], b"please see bed 4",
                  priority=Priority.URGENT)
    s = await connect(world, intern)
    writer, other = await world.db(), await world.db()
    try:
        await next_of(s, QueueEmpty)
        await s.send(sealed)
        now = dt.datetime.fromtimestamp(clock(), dt.UTC)
        tx = writer.transaction()
        await tx.start()
        await writer.execute("SELECT 1 FROM oncall_roles WHERE org_id = $1 AND role = $2 "
                             "FOR UPDATE", ORG, "orthopaedics_oncall")
        await writer.execute(
            "INSERT INTO oncall_shifts (shift_id, org_id, role, starts_at, ends_at, ladder, "
            "created_at) VALUES ($1, $2, 'orthopaedics_oncall', $3, $4, $5::uuid[], $3)",
            uuid.uuid4(), ORG, now, now + dt.timedelta(hours=8), [night.user_id])
        assert await escalations.wake_deferred(writer, ORG, "orthopaedics_oncall", now) == 0
        # Meanwhile the consult's shift ends early (the rota's other shift is taken out, its
        # handover falls due) and the sweep runs.
        await other.execute("DELETE FROM oncall_shifts WHERE org_id = $1 AND ladder[1] = $2",
                            ORG, uuid.UUID(primary.user_id))
        await other.execute("UPDATE escalations SET shift_ends_at = $1 WHERE message_id = $2",
                            now - dt.timedelta(seconds=1), uuid.UUID(sealed.header.message_id))
        await asyncio.sleep(seconds(0.5))  # ten sweeps
        assert await other.fetchval(
            "SELECT shift_id IS NOT NULL FROM escalations WHERE message_id = $1",
            uuid.UUID(sealed.header.message_id)), "the handover was decided mid-write"
        await tx.commit()
        hand = await next_of(s, EscalationNotice)
        assert (hand.kind, hand.user_id) == (EscalationKind.HANDOVER, night.user_id)
    finally:
        await s.close()
        await writer.close()
        await other.close()
