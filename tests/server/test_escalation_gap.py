"""A new consult to an on-call role while no shift of it covers the moment (a gap in the rota,
docs/HAZARD_LOG.md HAZ-02): it reaches the role's certificate holders, and its escalation waits
for the role's next shift, as a deferred handover does (docs/PROTOCOL.md §16.4). The sender and
everyone it reached are told at once (``no_shift``, with when the next shift starts) and again
every deadline; an acknowledgement ends it; when the shift starts its primary is handed the
consult by the devices holding it. Real relay, real Postgres, simulated minutes."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

from clients.sdk.socket import RelaySocket
from protocol.frames import (
    Deliver,
    EscalationKind,
    EscalationNotice,
    QueueEmpty,
    ReceiptNotice,
    ResealRequest,
)
from protocol.model import Priority
from protocol.statements import ReceiptKind
from tests.helpers import seconds
from tests.identity_world import World
from tests.relay_world import Peer, connect, opened, peer, seal
from tests.reseal import answer_reseal
from tests.server.test_escalation import (
    ORG,
    ROLE,
    SimClock,
    _bundle,
    add_shifts,
    escalating_on_the_ladder_of,
    next_of,
    nothing_of,
    notice_at,
    receipt,
    role_thread,
)
from tests.server.test_escalation import cast as cast  # the intern, the ladder, offrota
from tests.server.test_escalation import clock as clock  # simulated on-call minutes
from tests.server.test_escalation import world as world  # a relay on that clock

TEXT = b"hot swollen knee, bed 12"


async def define_role(world: World, role: str = ROLE) -> None:
    """The role with a one-minute urgent deadline and a one-hour routine one, and no shift."""
    r = await world.http.put(f"/v1/admin/oncall/{ORG}/{role}", headers=world.admin_headers(),
                             json={"urgent_seconds": 60, "routine_seconds": 3600})
    assert r.status_code == 200, r.text


async def audited(world: World, event: str) -> list[dict[str, Any]]:
    conn = await world.db()
    try:
        rows = await conn.fetch("SELECT details::text AS d FROM audit_log WHERE event = $1 "
                                "ORDER BY seq", event)
    finally:
        await conn.close()
    return [json.loads(r["d"]) for r in rows]


@contextlib.asynccontextmanager
async def sockets(world: World, *people: Peer) -> AsyncIterator[list[RelaySocket]]:
    """Each person's connection, its backlog read."""
    socks = [await connect(world, p) for p in people]
    try:
        for s in socks:
            await next_of(s, QueueEmpty)
        yield socks
    finally:
        for s in socks:
            await s.close()


async def send_in_gap(world: World, cast: dict[str, Peer], intern_sock: RelaySocket, *,
                      priority: Priority = Priority.URGENT) -> tuple[str, Any]:
    """The intern pages the role in a gap: the relay names the certificate holder (offrota),
    not the orthopaedists, and the consult is sealed for them."""
    intern = cast["intern"]
    tid = await role_thread(world, intern)
    r = await world.call(intern.device, "GET", f"/v1/threads/{tid}/recipients")
    assert r.status_code == 200, r.text
    assert len(r.json()["users"]) == 2  # the intern and offrota
    sealed = seal(intern, tid, [cast["offrota"]], TEXT, priority=priority)
    await intern_sock.send(sealed)
    return tid, sealed


async def both(sock: RelaySocket) -> tuple[Deliver, EscalationNotice]:
    """The consult and the first escalation notice, in whichever order they come."""
    got: dict[type, Any] = {}
    while len(got) < 2:
        frame = await sock.next_event(seconds(10))
        if isinstance(frame, (Deliver, EscalationNotice)):
            got.setdefault(type(frame), frame)
    return got[Deliver], got[EscalationNotice]


async def night_shift_in_an_hour(world: World, clock: SimClock) -> tuple[Peer, int]:
    """The role with no shift now, and on its rota a night shift ("night") starting in an hour:
    the night registrar and that start."""
    night = await peer(world, "night", roles=("orthopaedist",))
    await define_role(world)
    starts = int(clock()) + 3600
    await add_shifts(world, (starts, starts + 8 * 3600, ["night"]))
    return night, starts


def told_no_shift(n: EscalationNotice, step: int, sender: Peer, until: int | None) -> None:
    assert (n.kind, n.step, n.user_id, n.next_shift_at) == (
        EscalationKind.NO_SHIFT, step, sender.user_id, until), n


async def test_a_consult_in_a_gap_waits_for_a_shift_added_later_and_is_handed_to_it(
        world: World, clock: SimClock, cast: dict[str, Peer]) -> None:
    """No shift on the rota at all: the sender and the certificate holder it reached are told
    at once that nobody is on call and no shift is on the rota, and reminded every deadline
    (once, not once per deadline missed). IT adds a night shift: the next reminder names its
    start, nobody else is asked before it starts, and when it starts its primary is handed the
    consult (a reseal asked of the devices holding it) and the escalation climbs its ladder."""
    intern, offrota = cast["intern"], cast["offrota"]
    night = await peer(world, "night", roles=("orthopaedist",))
    await define_role(world)
    async with sockets(world, intern, offrota, night) as (s, off, nt):
        tid, sealed = await send_in_gap(world, cast, s)
        told_no_shift(await next_of(s, EscalationNotice), 1, intern, None)
        got, n = await both(off)
        assert opened(offrota, intern, got.message) == TEXT
        told_no_shift(n, 1, intern, None)
        assert await audited(world, "oncall.consult_deferred") == [
            {"role": "orthopaedics_oncall", "reached": 1, "until": None}]
        clock.advance(60)
        told_no_shift(await notice_at(off, 2), 2, intern, None)
        clock.advance(600)  # reminders missed meanwhile come once
        told_no_shift(await notice_at(s, 3), 3, intern, None)
        await nothing_of(s, EscalationNotice)
        starts = int(clock()) + 3600
        await add_shifts(world, (starts, starts + 8 * 3600, ["night"]))
        assert (await audited(world, "oncall.shifts_added"))[-1]["deferred_handovers"] == 1
        clock.advance(60)
        told_no_shift(await notice_at(s, 4), 4, intern, starts)
        await nothing_of(nt, EscalationNotice)  # not before it starts
        clock.now = starts
        hand = await next_of(nt, EscalationNotice)
        assert (hand.kind, hand.level, hand.user_id) == (
            EscalationKind.HANDOVER, 0, night.user_id)
        rr = await next_of(s, ResealRequest)
        assert rr.message_id == sealed.header.message_id and rr.devices == [night.device_id]
        assert (await next_of(off, ResealRequest)).devices == [night.device_id]
        await escalating_on_the_ladder_of(world, night)
        await s.send(answer_reseal(rr, sealed.header, TEXT, sender=intern.device.keys,
                                   recipients=[_bundle(night), _bundle(offrota)]))
        assert opened(night, intern, (await next_of(nt, Deliver)).message) == TEXT
        clock.advance(30)  # the night primary is reminded in turn
        n = await next_of(nt, EscalationNotice)
        assert (n.kind, n.level, n.user_id) == (EscalationKind.RENOTIFY, 0, night.user_id)
    r = await world.call(intern.device, "GET", f"/v1/threads/{tid}/escalations")
    (esc,) = r.json()["escalations"]
    assert [(x["kind"], x["next_shift_at"]) for x in esc["steps"]] == [
        ("no_shift", None), ("no_shift", None), ("no_shift", None), ("no_shift", starts),
        ("handover", None), ("renotify", None)]


async def test_a_consult_sent_while_it_writes_a_shift_into_the_gap_goes_to_that_shift(
        world: World, clock: SimClock, cast: dict[str, Peer]) -> None:
    """IT fills the gap (a shift covering now) while a consult to the role is being stored: the
    consult, sealed for whom the role reached before the write, must not wait for a next shift
    that never comes. The write's wake of deferred handovers runs before the consult's wait is
    committed and cannot see it; the store waits for the write and reads the rota again, and
    the shift it added is handed the consult. The write is held open here, as IT's request
    would hold it, while the consult is stored."""
    intern = cast["intern"]
    night = await peer(world, "night", roles=("orthopaedist",))
    await define_role(world)
    writer = await world.db()
    async with sockets(world, intern, night) as (s, nt):
        tx = writer.transaction()
        await tx.start()
        try:
            await writer.execute("SELECT 1 FROM oncall_roles WHERE org_id = $1 AND role = $2 "
                                 "FOR UPDATE", ORG, "orthopaedics_oncall")
            now = dt.datetime.fromtimestamp(clock(), dt.UTC)
            await writer.execute(
                "INSERT INTO oncall_shifts (shift_id, org_id, role, starts_at, ends_at, ladder, "
                "created_at) VALUES ($1, $2, 'orthopaedics_oncall', $3, $4, $5::uuid[], $3)",
                uuid.uuid4(), ORG, now - dt.timedelta(minutes=1), now + dt.timedelta(hours=8),
                [night.user_id])
            sent = asyncio.ensure_future(send_in_gap(world, cast, s))
            await asyncio.sleep(seconds(0.5))
        finally:
            await tx.commit()
            await writer.close()
        await sent
        hand = await next_of(nt, EscalationNotice)
        assert (hand.kind, hand.level, hand.user_id) == (
            EscalationKind.HANDOVER, 0, night.user_id)


async def test_a_consult_in_a_gap_names_the_next_shift_on_the_rota_and_goes_to_it(
        world: World, clock: SimClock, cast: dict[str, Peer]) -> None:
    """The rota already has the night shift, starting in an hour: the first step names its
    start, and at its start the consult is handed to it."""
    intern, offrota = cast["intern"], cast["offrota"]
    night, starts = await night_shift_in_an_hour(world, clock)
    async with sockets(world, intern, offrota, night) as (s, off, nt):
        _, sealed = await send_in_gap(world, cast, s)
        told_no_shift(await next_of(s, EscalationNotice), 1, intern, starts)
        told_no_shift(await next_of(off, EscalationNotice), 1, intern, starts)
        assert await audited(world, "oncall.no_shift") == [
            {"role": "orthopaedics_oncall", "step": 1, "level": 0, "user": intern.user_id,
             "until": starts}]
        clock.now = starts
        assert (await next_of(nt, EscalationNotice)).kind is EscalationKind.HANDOVER
        rr = await next_of(s, ResealRequest)
        assert rr.message_id == sealed.header.message_id and rr.devices == [night.device_id]
    await escalating_on_the_ladder_of(world, night)


async def test_an_acknowledgement_in_the_gap_ends_the_wait(
        world: World, clock: SimClock, cast: dict[str, Peer]) -> None:
    """The certificate holder it reached acknowledges: no more reminders, and the next shift
    is not handed it."""
    intern, offrota = cast["intern"], cast["offrota"]
    night, starts = await night_shift_in_an_hour(world, clock)
    async with sockets(world, intern, offrota, night) as (s, off, nt):
        await send_in_gap(world, cast, s)
        got, _ = await both(off)
        await notice_at(s, 1)
        await off.send_frame(receipt(offrota, got, ReceiptKind.ACKNOWLEDGED))
        ack = await next_of(s, ReceiptNotice)
        assert (ack.kind, ack.user_id) == (ReceiptKind.ACKNOWLEDGED, offrota.user_id)
        clock.advance(120)
        await nothing_of(s, EscalationNotice)
        clock.now = starts
        await nothing_of(nt, EscalationNotice)
        await nothing_of(s, ResealRequest)
    conn = await world.db()
    try:
        row = await conn.fetchrow("SELECT state, acknowledged_by::text AS by FROM escalations")
        assert dict(row) == {"state": "acknowledged", "by": offrota.user_id}
        assert await conn.fetchval("SELECT count(*) FROM reseal_requests") == 0
    finally:
        await conn.close()
    assert [d["by"] for d in await audited(world, "oncall.acknowledged")] == [offrota.user_id]


async def test_a_routine_consult_in_a_gap_is_reminded_at_the_routine_deadline(
        world: World, clock: SimClock, cast: dict[str, Peer]) -> None:
    """Routine consults escalate on the role's routine deadline (an hour here, a minute for
    urgent ones): told at once, not reminded at the urgent deadline, reminded at the routine
    one."""
    intern = cast["intern"]
    await define_role(world)
    async with sockets(world, intern) as (s,):
        await send_in_gap(world, cast, s, priority=Priority.ROUTINE)
        told_no_shift(await next_of(s, EscalationNotice), 1, intern, None)
        clock.advance(60)
        await nothing_of(s, EscalationNotice)
        clock.advance(3540)
        told_no_shift(await next_of(s, EscalationNotice), 2, intern, None)
    conn = await world.db()
    try:
        assert await conn.fetchval("SELECT deadline FROM escalations") == 3600
    finally:
        await conn.close()


async def test_a_consult_to_a_role_nobody_holds_waits_for_its_first_shift(
        world: World, clock: SimClock, cast: dict[str, Peer]) -> None:
    """A role no certificate holds and no shift covers reaches nobody (the consult goes to
    the consultant the intern also named, who is not on call for it): the sender alone is told
    nobody is on call and reminded, and a shift added later is handed the consult by the
    sender's device, the only one holding it for the role."""
    intern, consultant = cast["intern"], cast["consultant"]
    role = "role:hand-oncall"
    night = await peer(world, "night", roles=("orthopaedist",))
    await define_role(world, role)
    tid = str(uuid.uuid4())
    r = await world.call(intern.device, "POST", "/v1/threads", json={
        "thread_id": tid, "roles": [role], "users": [consultant.user_id],
        "priority": "urgent"})
    assert r.status_code == 201, r.text
    r = await world.call(intern.device, "GET", f"/v1/threads/{tid}/recipients")
    assert len(r.json()["users"]) == 2  # the intern and the consultant: the role, nobody
    sealed = seal(intern, tid, [consultant], TEXT, priority=Priority.URGENT)
    async with sockets(world, intern, consultant, night) as (s, c, nt):
        await s.send(sealed)
        told_no_shift(await next_of(s, EscalationNotice), 1, intern, None)
        assert await audited(world, "oncall.consult_deferred") == [
            {"role": "hand_oncall", "reached": 0, "until": None}]
        clock.advance(60)
        told_no_shift(await next_of(s, EscalationNotice), 2, intern, None)
        starts = int(clock()) + 600
        r = await world.http.post(
            f"/v1/admin/oncall/{ORG}/{role}/shifts", headers=world.admin_headers(),
            json={"shifts": [{"starts_at": starts, "ends_at": starts + 3600,
                              "ladder": ["night"]}]})
        assert r.status_code == 200 and r.json()["results"][0]["ok"], r.text
        clock.now = starts
        rr = await next_of(s, ResealRequest)
        assert rr.message_id == sealed.header.message_id and rr.devices == [night.device_id]
        hand = await next_of(nt, EscalationNotice)
        assert (hand.kind, hand.user_id) == (EscalationKind.HANDOVER, night.user_id)
        await s.send(answer_reseal(rr, sealed.header, TEXT, sender=intern.device.keys,
                                   recipients=[_bundle(night), _bundle(consultant)]))
        assert opened(night, intern, (await next_of(nt, Deliver)).message) == TEXT
        await nothing_of(c, EscalationNotice)  # named in the thread, not on call for it


async def test_a_reply_or_a_follow_up_in_the_gap_opens_no_second_wait(
        world: World, clock: SimClock, cast: dict[str, Peer]) -> None:
    """The holder's reply (they are whom the role reaches, as a ladder member's message opens
    no escalation on a shift) and the intern's follow-up while the consult waits open no other
    escalation: one consult waiting, one reminder per deadline."""
    intern, offrota = cast["intern"], cast["offrota"]
    await define_role(world)
    async with sockets(world, intern, offrota) as (s, off):
        tid, _ = await send_in_gap(world, cast, s)
        await notice_at(s, 1)
        await off.send(seal(offrota, tid, [intern], b"on my way", priority=Priority.URGENT))
        await s.send(seal(intern, tid, [offrota], b"now febrile", priority=Priority.URGENT))
        await nothing_of(s, EscalationNotice)
        clock.advance(60)
        await notice_at(s, 2)
        await nothing_of(s, EscalationNotice)
    conn = await world.db()
    try:
        assert await conn.fetchval("SELECT count(*) FROM escalations") == 1
    finally:
        await conn.close()
