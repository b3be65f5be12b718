"""``Lightbox-Proof`` cannot be replayed (server/authn.py, docs/PROTOCOL.md §11): the proof
covers the method, the target with its query, the body, the time and a nonce, and the relay
accepts each nonce once, across relay processes (server/store/proofs.py)."""

from __future__ import annotations

import datetime as dt
import json
import uuid

import asyncpg
import httpx
import pytest

from server.store import proofs, threads
from tests.helpers import running_relay
from tests.identity_world import Device, World
from tests.server.test_http_edge import assert_problem


async def _three(world: World) -> tuple[Device, str, str, str]:
    """Amy (whose request is captured), a thread of hers with Ben, and Cat's user id."""
    amy = await world.onboard(world.org.user("amy.ortho"))
    ben = await world.onboard(world.org.user("ben.ortho"))
    cat = await world.onboard(world.org.user("cat.ortho"))
    thread_id = str(uuid.uuid4())
    r = await world.call(amy, "POST", "/v1/threads", json={"thread_id": thread_id})
    assert r.status_code == 201, r.text
    return amy, thread_id, ben.user.user_id, cat.user.user_id


async def _participants(world: World, thread_id: str) -> set[str]:
    conn: asyncpg.Connection = await world.db()
    try:
        at = dt.datetime.fromtimestamp(world.clock(), dt.UTC)  # the relay's clock
        return set(await threads.participants(conn, thread_id, at))
    finally:
        await conn.close()


def _resend(world: World, captured: httpx.Request, body: bytes) -> httpx.Request:
    """The captured request's headers (its proof) on the same URL with ``body``."""
    headers = {k: v for k, v in captured.headers.items() if k.lower() != "content-length"}
    return world.http.build_request(captured.method, captured.url, headers=headers,
                                    content=body)


async def test_a_captured_request_replayed_with_the_same_body_is_proof_replayed(
        world: World) -> None:
    amy, thread_id, ben, cat = await _three(world)
    captured = world.signed(amy, "POST", f"/v1/threads/{thread_id}/participants",
                            json={"users": [ben]})
    assert (await world.http.send(captured)).status_code == 204
    # Ben leaves; the attacker replays the captured request to bring him back.
    r = await world.call(amy, "DELETE", f"/v1/threads/{thread_id}/participants/{ben}")
    assert r.status_code == 204, r.text
    replay = _resend(world, captured, captured.content)
    assert_problem(await world.http.send(replay), 401, "proof_replayed")
    assert ben not in await _participants(world, thread_id)
    assert cat not in await _participants(world, thread_id)


async def test_a_captured_proof_with_another_body_is_refused_and_changes_nothing(
        world: World) -> None:
    amy, thread_id, ben, cat = await _three(world)
    captured = world.signed(amy, "POST", f"/v1/threads/{thread_id}/participants",
                            json={"users": [ben]})
    forged = _resend(world, captured, json.dumps({"users": [cat]}).encode())
    assert_problem(await world.http.send(forged), 401, "token_device_mismatch")
    assert cat not in await _participants(world, thread_id)
    # The genuine request still goes through: the forged one did not burn its nonce.
    assert (await world.http.send(captured)).status_code == 204


async def test_a_captured_proof_with_another_query_is_refused(world: World) -> None:
    amy = await world.onboard(world.org.user("amy.ortho"))
    captured = world.signed(amy, "GET", "/v1/directory", params={"q": "amy"})
    forged = world.http.build_request("GET", "/v1/directory", params={"q": "ben"},
                                      headers=captured.headers)
    assert_problem(await world.http.send(forged), 401, "token_device_mismatch")
    dropped = world.http.build_request("GET", "/v1/directory", headers=captured.headers)
    assert_problem(await world.http.send(dropped), 401, "token_device_mismatch")
    assert (await world.http.send(captured)).status_code == 200


async def test_a_proof_replayed_to_another_relay_process_is_proof_replayed(
        world: World) -> None:
    amy = await world.onboard(world.org.user("amy.ortho"))
    captured = world.signed(amy, "GET", "/v1/keys/count")
    assert (await world.http.send(captured)).status_code == 200
    # A second relay on the same database, as a second worker or host would be.
    async with running_relay(world.dsn, world.relay.relay.settings) as other, \
            httpx.AsyncClient(base_url=other.base_url) as c:
        r = await c.get("/v1/keys/count", headers=dict(captured.headers))
    assert_problem(r, 401, "proof_replayed")


@pytest.mark.parametrize("header", [
    "",  # none
    "1767225600.c2lnbmF0dXJl",  # the old two-part form
    "1767225600.AAAA.AAAA",  # nonce and signature of the wrong length
    "soon.AAAAAAAAAAAAAAAAAAAAAA." + "A" * 86,  # not a timestamp
    "1.2.3.4",  # too many parts
])
async def test_a_malformed_proof_is_token_device_mismatch(world: World, header: str) -> None:
    amy = await world.onboard(world.org.user("amy.ortho"))
    assert amy.access_token
    headers = {"authorization": f"Bearer {amy.access_token}"}
    if header:
        headers["lightbox-proof"] = header
    assert_problem(await world.http.get("/v1/keys/count", headers=headers), 401,
                   "token_device_mismatch")


async def test_a_proof_for_an_empty_body_does_not_cover_a_body(world: World) -> None:
    amy = await world.onboard(world.org.user("amy.ortho"))
    assert amy.access_token
    headers = amy.proof("POST", "/v1/attachments", amy.access_token)  # signed over b""
    r = await world.http.post("/v1/attachments", headers=headers, json={"size": 10})
    assert_problem(r, 401, "token_device_mismatch")


async def test_expired_nonces_are_purged_as_new_ones_arrive(world: World) -> None:
    device_id = str(uuid.uuid4())
    conn: asyncpg.Connection = await world.db()
    try:
        assert await proofs.remember(conn, device_id, b"\x01" * 16, expires_at=100, now=50)
        assert not await proofs.remember(conn, device_id, b"\x01" * 16, expires_at=100, now=60)
        # Another device may use the same nonce value.
        assert await proofs.remember(conn, str(uuid.uuid4()), b"\x01" * 16, expires_at=100,
                                     now=60)
        assert await proofs.remember(conn, device_id, b"\x02" * 16, expires_at=300, now=200)
        left = {bytes(r["nonce"]) for r in await conn.fetch(
            "SELECT nonce FROM proof_nonces WHERE device_id = $1", device_id)}
    finally:
        await conn.close()
    assert left == {b"\x02" * 16}
