"""Break-glass on the relay (server/breakglass.py, docs/PROTOCOL.md §17): an emergency message
without a consent reaches only credentialed clinicians of the sender's organisation, for direct
care; it is marked for its recipients, audited without its reason, queued for the privacy
office, limited per clinician per day, and reminded in its thread until the sender files a
consent or why none was possible."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from clients.sdk.socket import SendRefused
from protocol.frames import Deliver
from protocol.model import EmergencyCategory, Purpose
from server import audit
from tests.filing_world import next_of
from tests.identity_world import World, identity_world
from tests.relay_world import Peer, connect, peer, seal, thread

UNCONSCIOUS = EmergencyCategory.UNCONSCIOUS
# The sealed reason: the relay must never hold these words.
REASON = b"Doe^Jane MRN123 found unconscious, no next of kin reachable"


@pytest.fixture
async def world(db_dsn: str, tmp_path: Path) -> AsyncIterator[World]:
    async with identity_world(db_dsn, tmp_path, orgs=("st-elsewhere", "county-general"),
                              break_glass_daily_limit=2) as w:
        yield w


async def _send(world: World, sender: Peer, tid: str, to: list[Peer], **kw: Any) -> Any:
    sock = await connect(world, sender)
    try:
        return await sock.send(seal(sender, tid, to, REASON, **kw))
    finally:
        await sock.close()


async def _refused(world: World, sender: Peer, tid: str, to: list[Peer], **kw: Any
                   ) -> SendRefused:
    with pytest.raises(SendRefused) as err:
        await _send(world, sender, tid, to, **kw)
    return err.value


async def _admin(world: World, method: str, path: str, **kw: Any) -> Any:
    return await world.http.request(method, path, headers=world.admin_headers(), **kw)


async def _count(world: World, table: str) -> int:
    conn = await world.db()
    try:
        return int(await conn.fetchval(f"SELECT count(*) FROM {table}"))
    finally:
        await conn.close()


async def test_an_emergency_message_reaches_a_colleague_marked_audited_and_queued(
        world: World) -> None:
    alice, carol = await peer(world, "alice"), await peer(world, "carol")
    tid = await thread(world, alice, carol)
    accepted = await _send(world, alice, tid, [carol], emergency=UNCONSCIOUS)
    assert accepted.thread_seq == 1

    c = await connect(world, carol)
    try:
        delivered = await next_of(c, Deliver)
    finally:
        await c.close()
    assert delivered.message.header.emergency is UNCONSCIOUS  # every copy is marked

    r = await _admin(world, "GET", "/v1/admin/break-glass")
    assert r.status_code == 200, r.text
    [case] = r.json()["cases"]
    assert case["category"] == "unconscious" and case["status"] == "open"
    assert case["sender_login"] == "alice" and case["recipients"] == 1
    assert case["follow_up"] is None and case["thread_id"] == tid

    for who in (alice, carol):  # the reminder, in the thread, for every participant
        threads = (await world.call(who.device, "GET", "/v1/threads")).json()["threads"]
        assert [t["break_glass_pending"] for t in threads] == [1]

    conn = await world.db()
    try:
        rows = await audit.rows(conn, limit=10_000)
        trail = json.dumps([dict(r.details) for r in rows])
    finally:
        await conn.close()
    [declared] = [r for r in rows if r.event == "message.break_glass"]
    assert declared.subject_id == case["case_id"]
    assert declared.details["category"] == "unconscious"
    assert "Doe" not in trail and "MRN123" not in trail and "unconscious, no" not in trail


async def test_emergency_outside_direct_care_external_or_with_a_consent_is_refused(
        world: World) -> None:
    alice, carol = await peer(world, "alice"), await peer(world, "carol")
    tid = await thread(world, alice, carol)
    for kw in ({"purpose": Purpose.TEACHING}, {"purpose": Purpose.EXTERNAL_CONSULT},
               {"external": True}, {"consent_id": str(uuid.uuid4())}):
        refused = await _refused(world, alice, tid, [carol], emergency=UNCONSCIOUS, **kw)
        assert refused.code == "break_glass_not_allowed", kw
    assert await _count(world, "messages") == 0
    assert await _count(world, "break_glass_cases") == 0
    conn = await world.db()
    try:
        events = [r.event for r in await audit.rows(conn, limit=10_000)]
    finally:
        await conn.close()
    assert events.count("message.break_glass_refused") == 4


async def test_emergency_to_another_organisation_or_an_unlicensed_colleague_is_refused(
        world: World) -> None:
    alice, carol = await peer(world, "alice"), await peer(world, "carol")
    outsider = world.orgs["county-general"].user("bob")
    (result,) = await world.provision(outsider)
    assert result["ok"], result
    bob = await peer(world, "bob", user=outsider)
    tid = await thread(world, alice, bob)
    refused = await _refused(world, alice, tid, [bob], emergency=UNCONSCIOUS)
    assert refused.code == "break_glass_not_allowed"
    assert "sender's organisation" in refused.detail

    tid2 = await thread(world, alice, carol)
    await world.execute("UPDATE users SET licence_expires_at = now() - interval '1 day' "
                        "WHERE user_id = $1", uuid.UUID(carol.user_id))
    refused = await _refused(world, alice, tid2, [carol], emergency=UNCONSCIOUS)
    assert refused.code == "break_glass_not_allowed"
    assert await _count(world, "messages") == 0


async def test_the_daily_limit_refuses_the_next_emergency_with_break_glass_limit(
        world: World) -> None:
    alice, carol = await peer(world, "alice"), await peer(world, "carol")
    tid = await thread(world, alice, carol)
    for _ in range(2):
        await _send(world, alice, tid, [carol], emergency=EmergencyCategory.TIME_CRITICAL)
    refused = await _refused(world, alice, tid, [carol], emergency=UNCONSCIOUS)
    assert refused.code == "break_glass_limit"
    assert refused.retry_after is not None and 23 * 3600 < refused.retry_after <= 24 * 3600
    assert await _count(world, "break_glass_cases") == 2
    # Another clinician has a limit of their own; an ordinary message is not limited.
    await _send(world, carol, tid, [alice], emergency=UNCONSCIOUS)
    await _send(world, alice, tid, [carol])
    # A day later the window has moved on.
    await world.execute("UPDATE break_glass_cases SET declared_at = declared_at - "
                        "interval '25 hours'")
    await _send(world, alice, tid, [carol], emergency=UNCONSCIOUS)


async def test_with_the_limit_at_zero_break_glass_is_off(db_dsn: str, tmp_path: Path) -> None:
    async with identity_world(db_dsn, tmp_path, break_glass_daily_limit=0) as world:
        alice, carol = await peer(world, "alice"), await peer(world, "carol")
        tid = await thread(world, alice, carol)
        refused = await _refused(world, alice, tid, [carol], emergency=UNCONSCIOUS)
        assert refused.code == "break_glass_not_allowed"
        assert "turned off" in refused.detail


async def test_a_follow_up_clears_the_reminder_and_bad_follow_ups_get_their_codes(
        world: World) -> None:
    alice, carol = await peer(world, "alice"), await peer(world, "carol")
    tid = await thread(world, alice, carol)
    await _send(world, alice, tid, [carol], emergency=EmergencyCategory.LACKS_CAPACITY)
    [case] = (await world.call(alice.device, "GET", "/v1/break-glass")).json()["cases"]
    assert (await world.call(carol.device, "GET", "/v1/break-glass")).json()["cases"] == []
    path = f"/v1/break-glass/{case['case_id']}/follow-up"

    r = await world.call(carol.device, "POST", path, json={"no_consent": "patient_died"})
    assert (r.status_code, r.json()["code"]) == (404, "not_found")  # not carol's case
    r = await world.call(alice.device, "POST", path, json={
        "no_consent": "other", "consent_id": str(uuid.uuid4())})
    assert (r.status_code, r.json()["code"]) == (422, "validation_failed")
    r = await world.call(alice.device, "POST", path, json={})
    assert (r.status_code, r.json()["code"]) == (422, "validation_failed")
    r = await world.call(alice.device, "POST", path, json={"no_consent": "he was rude"})
    assert (r.status_code, r.json()["code"]) == (422, "validation_failed")
    r = await world.call(alice.device, "POST", path, json={"consent_id": str(uuid.uuid4())})
    assert (r.status_code, r.json()["code"]) == (404, "not_found")  # never registered
    r = await world.call(alice.device, "POST", "/v1/break-glass/not-a-case/follow-up",
                         json={"no_consent": "other"})
    assert (r.status_code, r.json()["code"]) == (404, "not_found")
    r = await world.http.post(path, json={"no_consent": "other"})
    assert r.status_code == 401

    r = await world.call(alice.device, "POST", path,
                         json={"no_consent": "no_capacity_no_representative"})
    assert r.status_code == 200, r.text
    assert r.json()["follow_up"] == "no_consent"
    assert r.json()["follow_up_detail"] == "no_capacity_no_representative"
    r = await world.call(alice.device, "POST", path, json={"no_consent": "other"})
    assert (r.status_code, r.json()["code"]) == (409, "conflict")
    assert (await world.call(alice.device, "GET", "/v1/break-glass")).json()["cases"] == []
    threads = (await world.call(carol.device, "GET", "/v1/threads")).json()["threads"]
    assert [t["break_glass_pending"] for t in threads] == [0]


async def test_the_privacy_office_lists_shows_closes_and_reports(world: World) -> None:
    alice, carol = await peer(world, "alice"), await peer(world, "carol")
    tid = await thread(world, alice, carol)
    await _send(world, alice, tid, [carol], emergency=UNCONSCIOUS)
    await _send(world, alice, tid, [carol], emergency=EmergencyCategory.TIME_CRITICAL)
    await _send(world, carol, tid, [alice], emergency=UNCONSCIOUS)
    cases = (await _admin(world, "GET", "/v1/admin/break-glass")).json()["cases"]
    assert [c["sender_login"] for c in cases] == ["alice", "alice", "carol"]
    first = cases[0]["case_id"]

    r = await _admin(world, "GET", f"/v1/admin/break-glass/{first}")
    assert r.status_code == 200 and r.json()["category"] == "unconscious"
    r = await _admin(world, "POST", f"/v1/admin/break-glass/{first}/close",
                     json={"outcome": "inappropriate", "note": "consent could have been asked"})
    assert r.status_code == 200, r.text
    assert (r.json()["status"], r.json()["outcome"], r.json()["closed_by"]) == (
        "closed", "inappropriate", "it-admin")
    r = await _admin(world, "POST", f"/v1/admin/break-glass/{first}/close",
                     json={"outcome": "appropriate"})
    assert (r.status_code, r.json()["code"]) == (409, "conflict")
    r = await _admin(world, "POST", f"/v1/admin/break-glass/{cases[1]['case_id']}/close",
                     json={"outcome": "fine"})
    assert (r.status_code, r.json()["code"]) == (422, "validation_failed")

    open_ids = [c["case_id"] for c in
                (await _admin(world, "GET", "/v1/admin/break-glass")).json()["cases"]]
    assert first not in open_ids and len(open_ids) == 2
    closed = (await _admin(world, "GET", "/v1/admin/break-glass?status=closed")).json()
    assert [c["case_id"] for c in closed["cases"]] == [first]

    report = (await _admin(world, "GET", "/v1/admin/break-glass/report")).json()
    assert (report["total"], report["open"], report["closed"],
            report["awaiting_follow_up"]) == (3, 2, 1, 3)
    assert report["by_category"] == {"time_critical": 1, "unconscious": 2}
    assert report["by_outcome"] == {"inappropriate": 1}
    assert [(u["login"], u["cases"], u["inappropriate"]) for u in report["by_clinician"]] == [
        ("alice", 2, 1), ("carol", 1, 0)]
    empty = (await _admin(world, "GET", "/v1/admin/break-glass/report?since=1&until=2")).json()
    assert empty["total"] == 0 and empty["by_clinician"] == []

    for bad in ("?status=maybe", "?since=yesterday", "?since=20&until=10"):
        r = await _admin(world, "GET", "/v1/admin/break-glass" + bad)
        assert (r.status_code, r.json()["code"]) == (422, "validation_failed"), bad
    for missing in (str(uuid.uuid4()), "not-a-uuid"):
        r = await _admin(world, "GET", f"/v1/admin/break-glass/{missing}")
        assert (r.status_code, r.json()["code"]) == (404, "not_found")
    r = await world.http.get("/v1/admin/break-glass")
    assert r.status_code == 401
    r = await world.http.get("/v1/admin/break-glass",
                             headers={"Authorization": "Bearer " + alice.token})
    assert r.status_code == 401
    conn = await world.db()
    try:
        events = [r.event for r in await audit.rows(conn, limit=10_000)]
    finally:
        await conn.close()
    assert events.count("break_glass.closed") == 1


async def test_emergencies_sent_at_once_never_pass_the_limit_together(world: World) -> None:
    """Sends queued together are checked in one batch: the batch's own count is the limit's
    too (and relay processes serialise a sender's emergencies with an advisory lock)."""
    alice, carol = await peer(world, "alice"), await peer(world, "carol")
    tid = await thread(world, alice, carol)
    sock = await connect(world, alice)
    try:
        results = await asyncio.gather(
            *(sock.send(seal(alice, tid, [carol], REASON, emergency=UNCONSCIOUS))
              for _ in range(4)), return_exceptions=True)
    finally:
        await sock.close()
    refused = [r for r in results if isinstance(r, SendRefused)]
    assert len(results) - len(refused) == 2
    assert [r.code for r in refused] == ["break_glass_limit"] * 2
    assert await _count(world, "break_glass_cases") == 2
