"""Rotas over the admin API and ``GET /v1/oncall/{role}``, rota files imported through IT's
tool code with per-row reports, every bad input with its code, urgent-first delivery order
across threads (never within one), and the per-recipient receipt listing."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest

from clients.admin import ops as adminops
from clients.admin import rotaio
from clients.admin.csvio import CsvError
from clients.sdk.http import RelayHTTP
from protocol.frames import Deliver, QueueEmpty, Receipt
from protocol.model import Priority
from protocol.statements import ReceiptKind, ReceiptStatement, issue_receipt_statement
from tests.helpers import seconds
from tests.identity_world import World
from tests.relay_world import Peer, connect, peer, seal, thread

ORG = "st-elsewhere"
H = 3600


async def put_role(world: World, role: str = "orthopaedics-oncall", **body: Any) -> Any:
    return await world.http.put(f"/v1/admin/oncall/{ORG}/{role}",
                                headers=world.admin_headers(), json=body)


async def post_shifts(world: World, shifts: list[dict[str, Any]],
                      role: str = "orthopaedics_oncall") -> Any:
    return await world.http.post(f"/v1/admin/oncall/{ORG}/{role}/shifts",
                                 headers=world.admin_headers(), json={"shifts": shifts})


@pytest.fixture
async def team(world: World) -> dict[str, Peer]:
    return {login: await peer(world, login, roles=("orthopaedist",))
            for login in ("ana", "ben", "cem")}


async def test_who_is_on_call_now_and_at_a_given_time(world: World,
                                                      team: dict[str, Peer]) -> None:
    assert (await put_role(world, urgent_seconds=240)).status_code == 200
    now = int(time.time())
    r = await post_shifts(world, [
        {"starts_at": now - H, "ends_at": now + H, "ladder": ["ana", team["ben"].user_id]},
        {"starts_at": now + H, "ends_at": now + 9 * H, "ladder": ["cem", "ana"]}])
    assert [x["ok"] for x in r.json()["results"]] == [True, True], r.text
    me = team["ana"].device
    r = await world.call(me, "GET", "/v1/oncall/role:orthopaedics-oncall")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["role"] == "orthopaedics_oncall" and body["urgent_seconds"] == 240
    assert [m["user_id"] for m in body["shift"]["ladder"]] == [team["ana"].user_id,
                                                              team["ben"].user_id]
    r = await world.call(me, "GET", f"/v1/oncall/orthopaedics_oncall?at={now + 2 * H}")
    assert [m["level"] for m in r.json()["shift"]["ladder"]] == [0, 1]
    assert r.json()["shift"]["ladder"][0]["user_id"] == team["cem"].user_id
    r = await world.call(me, "GET", f"/v1/oncall/orthopaedics_oncall?at={now + 20 * H}")
    assert r.json()["shift"] is None


async def test_unknown_role_is_role_unknown(world: World, team: dict[str, Peer]) -> None:
    r = await world.call(team["ana"].device, "GET", "/v1/oncall/cardiology-oncall")
    assert (r.status_code, r.json()["code"]) == (404, "role_unknown")
    r = await post_shifts(world, [{"starts_at": 1, "ends_at": 2, "ladder": ["ana"]}],
                          role="cardiology_oncall")
    assert (r.status_code, r.json()["code"]) == (404, "role_unknown")
    r = await world.call(team["ana"].device, "GET", "/v1/oncall/9-not-a-role")
    assert r.json()["code"] == "role_unknown"


async def test_bad_shifts_get_their_codes_and_good_rows_are_kept(
        world: World, team: dict[str, Peer]) -> None:
    assert (await put_role(world)).status_code == 200
    now = int(time.time())
    r = await post_shifts(world, [
        {"starts_at": now, "ends_at": now + 8 * H, "ladder": ["ana", "ben"], "line": 2},
        {"starts_at": now + 4 * H, "ends_at": now + 12 * H, "ladder": ["cem"], "line": 3},
        {"starts_at": now + 8 * H, "ends_at": now + 16 * H, "ladder": [], "line": 4},
        {"starts_at": now + 8 * H, "ends_at": now + 16 * H, "ladder": ["nobody"], "line": 5},
        {"starts_at": now + 20 * H, "ends_at": now + 18 * H, "ladder": ["ana"], "line": 6},
        {"starts_at": now + 8 * H, "ends_at": now + 16 * H, "ladder": ["cem", "ben"],
         "line": 7}])
    assert r.status_code == 200, r.text
    got = [(x["line"], x["ok"], x.get("code")) for x in r.json()["results"]]
    assert got == [(2, True, None), (3, False, "shift_overlap"), (4, False, "shift_empty"),
                   (5, False, "rota_invalid"), (6, False, "rota_invalid"), (7, True, None)]
    r = await world.http.get(f"/v1/admin/oncall/{ORG}/orthopaedics_oncall/shifts",
                             headers=world.admin_headers())
    assert len(r.json()["shifts"]) == 2


async def test_role_deadlines_are_validated(world: World) -> None:
    r = await put_role(world, urgent_seconds=3600, routine_seconds=600)
    assert r.json()["code"] == "rota_invalid"
    r = await put_role(world, urgent_seconds=1)
    assert r.json()["code"] == "validation_failed"
    r = await world.http.put(f"/v1/admin/oncall/{ORG}/x-oncall", json={})
    assert r.status_code == 401


async def test_times_past_the_year_9999_and_u0000_in_names_are_refused_not_a_500(
        world: World) -> None:
    """Found by schemathesis: both reached Python's datetime or Postgres and answered 500."""
    r = await put_role(world, role="orthopaedics_oncall", display_name="Ortho",
                       urgent_seconds=300, routine_seconds=3600)
    assert r.status_code == 200, r.text
    r = await post_shifts(world, [{"starts_at": 0, "ends_at": 9_007_199_254_740_990,
                                   "ladder": []}])
    assert r.status_code == 422, r.text
    assert r.json()["code"] == "validation_failed"
    r = await put_role(world, display_name="Ortho\u0000", urgent_seconds=300,
                       routine_seconds=3600)
    assert r.status_code == 422, r.text
    assert r.json()["code"] == "validation_failed"


CSV = """start,end,primary,backups
2030-01-01T08:00,2030-01-01T20:00,ana,ben;cem
2030-01-01T20:00,yesterday,ben,ana
2030-01-01T20:00,2030-01-02T08:00,ghost,ana
2030-01-02T08:00,2030-01-02T20:00,,
2030-01-01T20:00+00:00,2030-01-02T08:00+00:00,cem,ana
"""

ICS = """BEGIN:VCALENDAR
VERSION:2.0
PRODID:-//rota//EN
BEGIN:VEVENT
UID:day-1
DTSTAMP:20291201T000000Z
DTSTART:20300103T080000Z
DTEND:20300103T200000Z
ATTENDEE;CN=ben:mailto:b@example.org
ATTENDEE;ROLE=CHAIR:mailto:ana@example.org
END:VEVENT
BEGIN:VEVENT
UID:allday
DTSTAMP:20291201T000000Z
DTSTART;VALUE=DATE:20300104
DTEND;VALUE=DATE:20300105
ATTENDEE;CN=ana:mailto:a@example.org
END:VEVENT
BEGIN:VEVENT
UID:night-1
DTSTAMP:20291201T000000Z
DTSTART:20300103T200000Z
DURATION:PT12H
ATTENDEE;CN=cem:mailto:c@example.org
END:VEVENT
END:VCALENDAR
"""


async def test_csv_and_ics_rota_imports_report_each_bad_row_and_keep_the_good(
        world: World, team: dict[str, Peer]) -> None:
    assert (await put_role(world)).status_code == 200
    rows, bad = rotaio.parse_rota("rota.csv", CSV.encode())
    assert [(b.line, "ISO 8601" in b.reason or "nobody" in b.reason) for b in bad] == [
        (3, True), (5, True)]
    async with RelayHTTP(world.relay.base_url, admin_token=world.admin_token) as relay:
        stored, refused = await adminops.import_shifts(relay, org_id=ORG,
                                                       role="orthopaedics-oncall", rows=rows)
        assert len(stored) == 2
        assert [(f.line, f.what, f.reason.split(":")[0]) for f in refused] == [
            (4, "ghost", "rota_invalid")]
        ics_rows, ics_bad = rotaio.parse_rota("rota.ics", ICS.encode())
        assert [(b.line, b.what) for b in ics_bad] == [(2, "allday")]
        assert ics_rows[0].ladder == ("ana", "ben")  # ROLE=CHAIR first
        assert ics_rows[1].ends_at - ics_rows[1].starts_at == 12 * H
        stored, refused = await adminops.import_shifts(relay, org_id=ORG,
                                                       role="orthopaedics_oncall",
                                                       rows=ics_rows)
        assert len(stored) == 2 and refused == []
        shifts = await relay.shifts(ORG, "orthopaedics_oncall")
    assert len(shifts.shifts) == 4


def test_rota_files_refused_whole_with_their_code() -> None:
    with pytest.raises(CsvError) as err:
        rotaio.parse_rota("r.csv", b"when,who\n1,2\n")
    assert err.value.code.value == "csv_invalid"
    with pytest.raises(CsvError) as err:
        rotaio.parse_rota("r.ics", b"this is not a calendar")
    assert err.value.code.value == "rota_invalid"
    with pytest.raises(CsvError) as err:
        rotaio.parse_rota("r.csv", b"x" * (2 * 1024 * 1024))
    assert err.value.code.value == "csv_too_large"


# --- priority and receipts ------------------------------------------------------------------


async def test_urgent_overtakes_routine_across_threads_but_never_within_one(
        world: World) -> None:
    alice, bob = await peer(world, "alice"), await peer(world, "bob")
    t1, t2, t3 = [await thread(world, alice, bob) for _ in range(3)]
    sent = []
    a = await connect(world, alice)
    try:
        for tid, prio in ((t1, Priority.ROUTINE), (t2, Priority.ROUTINE),
                          (t2, Priority.URGENT), (t3, Priority.URGENT)):
            m = seal(alice, tid, [bob], b"m", priority=prio)
            await a.send(m)
            sent.append(m.header.message_id)
    finally:
        await a.close()
    b = await connect(world, bob)
    try:
        order: list[tuple[str, Priority]] = []
        while len(order) < 4:
            f = await b.next_event(seconds(10))
            if isinstance(f, Deliver):
                order.append((f.message.header.message_id, f.priority))
    finally:
        await b.close()
    r1, r2, u2, u3 = sent
    # t2's routine message goes first, carried by the urgent one behind it; then the urgent
    # ones; t1's routine message, queued first, comes last.
    assert [m for m, _ in order] == [r2, u2, u3, r1]


async def test_receipts_are_listed_per_message_and_recipient_device(world: World) -> None:
    alice, bob, carol = [await peer(world, n) for n in ("alice", "bob", "carol")]
    tid = await thread(world, alice, bob, carol)
    a, b, c = [await connect(world, p) for p in (alice, bob, carol)]
    try:
        for s in (b, c):
            while not isinstance(await s.next_event(seconds(10)), QueueEmpty):
                pass
        m = seal(alice, tid, [bob, carol], b"hi")
        await a.send(m)
        for p, s, kinds in ((bob, b, (ReceiptKind.DELIVERED, ReceiptKind.READ)),
                            (carol, c, (ReceiptKind.DELIVERED,))):
            while not isinstance(await s.next_event(seconds(10)), Deliver):
                pass
            for k in kinds:
                st = issue_receipt_statement(ReceiptStatement(
                    v=1, device_id=p.device_id, message_id=m.header.message_id, thread_id=tid,
                    kind=k, at=int(time.time())), p.device.keys.signing)
                await s.send_frame(Receipt(statement=st))
        deadline = time.monotonic() + seconds(10)
        while True:
            r = await world.call(alice.device, "GET",
                                 f"/v1/threads/{tid}/receipts?message_id={m.header.message_id}")
            got = {(x["device_id"], x["kind"]) for x in r.json()["receipts"]}
            if len(got) == 3 or time.monotonic() > deadline:
                break
        assert got == {(bob.device_id, "delivered"), (bob.device_id, "read"),
                       (carol.device_id, "delivered")}
        outsider = await peer(world, "dave")
        r = await world.call(outsider.device, "GET", f"/v1/threads/{tid}/receipts")
        assert r.json()["code"] == "not_thread_member"
        r = await world.call(alice.device, "GET", f"/v1/threads/{uuid.uuid4()}/receipts")
        assert r.json()["code"] == "thread_not_found"
    finally:
        for s in (a, b, c):
            await s.close()
