"""The "done when": an intern pages ``role:orthopaedics-oncall`` with an urgent consult,
nobody acknowledges, the relay re-notifies, then releases the held copy to the backup at the
deadline; the backup acknowledges and the sender has seen the whole ladder. The same across a
relay restart in the middle of the escalation. Real relay, real Postgres, simulated minutes
(the on-call clock is injected; tokens and proofs keep real time)."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

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
from tests.helpers import eventually, running_relay, seconds
from tests.identity_world import World, identity_world
from tests.relay_world import Peer, connect, opened, peer, seal
from tests.reseal import answer_reseal

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
    r = await world.http.put(f"/v1/admin/oncall/{ORG}/{ROLE}", headers=world.admin_headers(),
                             json={"routine_seconds": 3600, "urgent_seconds": 1800})
    assert r.status_code == 200, r.text
    change = int(clock()) + 600
    r = await world.http.post(
        f"/v1/admin/oncall/{ORG}/{ROLE}/shifts", headers=world.admin_headers(),
        json={"shifts": [
            {"starts_at": change - 8 * 3600, "ends_at": change, "ladder": ["primary", "backup"]},
            {"starts_at": change, "ends_at": change + 8 * 3600, "ladder": ["night"]}]})
    assert [x["ok"] for x in r.json()["results"]] == [True, True]
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


async def _two_shifts_with_a_one_minute_ladder(world: World, clock: SimClock,
                                               night: str) -> int:
    """USER_GUIDE's tester's rota: urgent deadline one minute, a day ladder of two, a night
    ladder of one from ``change`` (returned, ten minutes from now)."""
    r = await world.http.put(f"/v1/admin/oncall/{ORG}/{ROLE}", headers=world.admin_headers(),
                             json={"routine_seconds": 3600, "urgent_seconds": 60})
    assert r.status_code == 200, r.text
    change = int(clock()) + 600
    r = await world.http.post(
        f"/v1/admin/oncall/{ORG}/{ROLE}/shifts", headers=world.admin_headers(),
        json={"shifts": [
            {"starts_at": change - 8 * 3600, "ends_at": change, "ladder": ["primary", "backup"]},
            {"starts_at": change, "ends_at": change + 8 * 3600, "ladder": [night]}]})
    assert [x["ok"] for x in r.json()["results"]] == [True, True], r.text
    return change


async def _use_up_the_ladder(world: World, clock: SimClock) -> None:
    """Renotify the primary, release to the backup, renotify the backup, and at its deadline
    the ladder is used up: exhausted."""
    for _ in range(4):
        clock.advance(30)
    conn = await world.db()
    try:
        await eventually(lambda: conn.fetchval("SELECT state = 'exhausted' FROM escalations"))
    finally:
        await conn.close()


async def test_a_consult_whose_ladder_was_used_up_goes_to_the_incoming_shift_and_escalates_there(
        world: World, clock: SimClock, cast: dict[str, Peer]) -> None:
    """The tester's scenario: every step done before the shift ends, nobody acknowledged. At
    the change the incoming primary is notified, a reseal is requested for their devices (the
    outgoing backup, no longer on call, may answer it), and the escalation restarts on the
    incoming ladder."""
    intern, primary, backup = cast["intern"], cast["primary"], cast["backup"]
    night = await peer(world, "night", roles=("orthopaedist",))
    change = await _two_shifts_with_a_one_minute_ladder(world, clock, "night")
    tid = await role_thread(world, intern)
    sealed = seal(intern, tid, [primary, backup], b"open tib fracture, bed 9",
                  priority=Priority.URGENT)
    s, bk, nt = (await connect(world, intern), await connect(world, backup),
                 await connect(world, night))
    try:
        await s.send(sealed)
        await _use_up_the_ladder(world, clock)
        released = await next_of(bk, Deliver)
        await bk.ack([released.delivery_id])
        clock.now = change  # the day shift ends, the consult unacknowledged
        hand = await next_of(nt, EscalationNotice)
        assert (hand.kind, hand.user_id) == (EscalationKind.HANDOVER, night.user_id)
        rr = await next_of(bk, ResealRequest)
        assert rr.message_id == sealed.header.message_id and rr.devices == [night.device_id]
        # The outgoing backup's device answers (it was refused not_thread_member before).
        r = await world.call(backup.device, "GET", f"/v1/threads/{tid}/recipients")
        assert r.status_code == 200, r.text
        again = answer_reseal(rr, sealed.header, b"open tib fracture, bed 9",
                              sender=backup.device.keys, sender_user_id=backup.user_id,
                              recipients=[_bundle(p) for p in (intern, primary, night)])
        await bk.send(again)
        got = await next_of(nt, Deliver)
        assert opened(night, backup, got.message) == b"open tib fracture, bed 9"
        clock.advance(30)  # the incoming shift is reminded in turn
        n = await next_of(nt, EscalationNotice)
        assert (n.kind, n.level, n.user_id) == (EscalationKind.RENOTIFY, 0, night.user_id)
    finally:
        for sock in (s, bk, nt):
            await sock.close()
    conn = await world.db()
    try:
        row = await conn.fetchrow("SELECT state, ladder::text[] AS ladder FROM escalations")
        assert (row["state"], row["ladder"]) == ("open", [night.user_id])
        assert await conn.fetchval("SELECT count(*) FROM reseal_requests WHERE done_at IS NULL"
                                   ) == 0
        assert await conn.fetchval(
            "SELECT count(*) FROM audit_log WHERE event = 'oncall.handover'") == 1
    finally:
        await conn.close()


async def test_a_consult_acknowledged_after_its_ladder_was_used_up_is_not_handed_over(
        world: World, clock: SimClock, cast: dict[str, Peer]) -> None:
    intern, primary, backup = cast["intern"], cast["primary"], cast["backup"]
    night = await peer(world, "night", roles=("orthopaedist",))
    change = await _two_shifts_with_a_one_minute_ladder(world, clock, "night")
    tid = await role_thread(world, intern)
    sealed = seal(intern, tid, [primary, backup], b"bed 11", priority=Priority.URGENT)
    s, bk, nt = (await connect(world, intern), await connect(world, backup),
                 await connect(world, night))
    try:
        await s.send(sealed)
        await _use_up_the_ladder(world, clock)
        got = await next_of(bk, Deliver)
        await bk.send_frame(receipt(backup, got, ReceiptKind.ACKNOWLEDGED))
        assert (await next_of(s, ReceiptNotice)).user_id == backup.user_id
        clock.now = change
        await nothing_of(nt, EscalationNotice)
        await nothing_of(s, ResealRequest)
    finally:
        for sock in (s, bk, nt):
            await sock.close()
    conn = await world.db()
    try:
        assert await conn.fetchval("SELECT state FROM escalations") == "acknowledged"
        assert await conn.fetchval("SELECT count(*) FROM reseal_requests") == 0
    finally:
        await conn.close()


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
