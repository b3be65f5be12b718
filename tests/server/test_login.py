"""Login, refresh, logout and lockout through a real relay (server/login.py)."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from server import audit
from tests.helpers import running_relay
from tests.identity_world import ADMIN_PASSWORD, PASSWORD, World, identity_world
from tests.server.test_http_edge import assert_problem

GRACE = 10  # LIGHTBOX_REFRESH_REUSE_GRACE's default
WRONG = "not the password at all, surely"


@pytest.fixture
async def world(db_dsn: str, tmp_path: Path) -> AsyncIterator[World]:
    async with identity_world(db_dsn, tmp_path, lockout_account_failures=3,
                              lockout_address_failures=50) as w:
        yield w


async def _events(world: World, prefix: str) -> list[tuple[str, str]]:
    conn = await world.db()
    try:
        return [(r.event, r.outcome) for r in await audit.rows(conn, event_prefix=prefix)]
    finally:
        await conn.close()


async def test_two_relay_processes_racing_one_refresh_both_answer_the_same_working_pair(
        world: World) -> None:
    """Two processes of one device present the same refresh token at once, each to another
    relay worker (they share only Postgres): both get the one new pair, and it works."""
    device = await world.onboard(world.org.user("amy.ortho"))
    body = {"refresh_token": device.refresh_token}
    async with running_relay(world.dsn, world.relay.relay.settings) as other, \
            httpx.AsyncClient(base_url=other.base_url) as second:
        a, b = await asyncio.gather(world.http.post("/v1/auth/refresh", json=body),
                                    second.post("/v1/auth/refresh", json=body))
    assert (a.status_code, b.status_code) == (200, 200), (a.text, b.text)
    assert a.json() == b.json()  # the same new pair, not a third one
    assert a.json()["refresh_token"] != device.refresh_token
    device.access_token = a.json()["access_token"]
    assert (await world.call(device, "GET", "/v1/keys/count")).status_code == 200
    r = await world.http.post("/v1/auth/refresh",
                              json={"refresh_token": a.json()["refresh_token"]})
    assert r.status_code == 200, r.text
    assert await _events(world, "auth.refresh") == [("auth.refresh", "ok"),
                                                    ("auth.refresh_repeat", "ok"),
                                                    ("auth.refresh", "ok")]


async def test_a_repeat_within_the_grace_after_the_new_token_was_used_is_reuse(
        world: World) -> None:
    device = await world.onboard(world.org.user("amy.ortho"))
    first = device.refresh_token
    r = await world.http.post("/v1/auth/refresh", json={"refresh_token": first})
    second = r.json()["refresh_token"]
    assert (await world.http.post("/v1/auth/refresh",
                                  json={"refresh_token": second})).status_code == 200
    # The family moved on: whoever presents the first token now holds a copy.
    assert_problem(await world.http.post("/v1/auth/refresh", json={"refresh_token": first}),
                   401, "refresh_reused")
    assert ("auth.refresh_reused", "denied") in await _events(world, "auth.refresh")


async def test_a_repeat_within_the_grace_rechecks_the_user_and_the_device(
        world: World) -> None:
    amy = world.org.user("amy.ortho")
    device = await world.onboard(amy)
    first = device.refresh_token
    assert (await world.http.post("/v1/auth/refresh",
                                  json={"refresh_token": first})).status_code == 200
    conn = await world.db()
    try:
        await conn.execute("UPDATE users SET licence_expires_at = now() - interval '1 day' "
                           "WHERE user_id = $1", uuid.UUID(amy.user_id))
    finally:
        await conn.close()
    assert_problem(await world.http.post("/v1/auth/refresh", json={"refresh_token": first}),
                   403, "licence_expired")
    # A revocation ends the family: the repeat hands out nothing.
    assert (await world.revoke(world.org, 1, devices=(device.device_id,))).status_code == 200
    assert_problem(await world.http.post("/v1/auth/refresh", json={"refresh_token": first}),
                   401, "refresh_reused")


async def test_login_returns_a_bound_token_pair_and_is_audited(world: World) -> None:
    user = world.org.user("amy.ortho")
    device = await world.onboard(user)
    r = await world.call(device, "GET", "/v1/keys/count")
    assert r.status_code == 200, r.text
    assert r.json() == {"remaining": 5, "low_water": 20, "target": 100}
    conn = await world.db()
    try:
        events = [row.event for row in await audit.rows(conn)]
        assert (await audit.verify(conn)).ok
    finally:
        await conn.close()
    for event in ("admin.login", "admin.user_provision", "enrol.complete", "auth.login"):
        assert event in events


async def test_wrong_password_and_unknown_login_get_the_same_code(world: World) -> None:
    device = await world.onboard(world.org.user("amy.ortho"))
    assert_problem(await world.login_response(device, password="wrong password here"),
                   401, "invalid_credentials")
    assert_problem(await world.login_response(device, login="nobody.here"),
                   401, "invalid_credentials")


async def test_lockout_after_repeated_failures_with_retry_after(world: World) -> None:
    device = await world.onboard(world.org.user("amy.ortho"))
    for _ in range(3):
        assert_problem(await world.login_response(device, password="not the password"),
                       401, "invalid_credentials")
    r = await world.login_response(device)  # even the right password is refused now
    body = assert_problem(r, 429, "account_locked")
    assert 1 <= float(body["retry_after"]) <= 30  # type: ignore[arg-type]
    assert int(r.headers["retry-after"]) >= 1
    conn = await world.db()
    try:
        events = [(row.event, row.outcome) for row in await audit.rows(conn)]
    finally:
        await conn.close()
    assert ("auth.lockout", "denied") in events
    assert ("auth.login", "denied") in events


async def test_unknown_logins_are_counted_towards_lockout_too(world: World) -> None:
    device = await world.onboard(world.org.user("amy.ortho"))
    for _ in range(3):
        assert_problem(await world.login_response(device, login="ghost.user"),
                       401, "invalid_credentials")
    assert_problem(await world.login_response(device, login="ghost.user"), 429, "account_locked")


def _answer(r: httpx.Response) -> tuple[int, bytes, dict[str, str]]:
    """The status, the problem document's bytes and the headers, without what differs per
    request (its id, the date)."""
    request_id = r.json()["request_id"]
    assert request_id == r.headers["x-request-id"]
    headers = {k: v for k, v in r.headers.items() if k not in {"x-request-id", "date"}}
    return r.status_code, r.content.replace(request_id.encode(), b"<request id>"), headers


async def test_login_signed_by_another_device_key_is_refused_as_a_wrong_password(
        world: World) -> None:
    """Without a signature by a device of the account, a right password gets the very answer
    a wrong one gets: whoever has a clinician's password but not her device cannot tell that
    the password is right (docs/SECURITY.md "Login"; OWASP ASVS 5.0 V6.3.3)."""
    user = world.org.user("amy.ortho")
    device = await world.onboard(user)
    other = user.device()  # a key never enrolled: a thief's, or a profile restored wrongly
    right = await world.login_response(device, signer=other.keys)
    wrong = await world.login_response(device, password=WRONG, signer=other.keys)
    body = assert_problem(right, 401, "invalid_credentials")
    assert body["detail"] == "login, password or device key is wrong"
    assert _answer(right) == _answer(wrong)
    # ... and the answer an unknown login gets.
    assert _answer(right) == _answer(await world.login_response(device, login="nobody.here"))


async def test_a_right_password_without_the_device_counts_as_a_failed_login(
        world: World) -> None:
    """Right or wrong, a password without the device's signature is charged to the counters
    of server/throttle.py: the lockout engages after LIGHTBOX_LOCKOUT_ACCOUNT_FAILURES of them
    (3 here), whichever they were, and the holder's own device still logs in."""
    user = world.org.user("amy.ortho")
    device = await world.onboard(user)
    thief = user.device().keys
    for password in (PASSWORD, WRONG, PASSWORD):
        assert_problem(await world.login_response(device, password=password, signer=thief),
                       401, "invalid_credentials")
    assert_problem(await world.login_response(device, signer=thief), 429, "account_locked")
    await world.login(device)  # the holder's attempts have counters of their own


async def test_a_login_without_the_device_is_audited_with_what_failed_never_the_password(
        world: World) -> None:
    """The audit trail keeps the precise reason (a right password without the device is worth
    an auditor's attention: the password is known to someone), never the password."""
    user = world.org.user("amy.ortho")
    device = await world.onboard(user)
    thief = user.device().keys
    await world.login_response(device, signer=thief)
    await world.login_response(device, password=WRONG, signer=thief)
    await world.login_response(device, password=WRONG)
    conn = await world.db()
    try:
        assert (await audit.verify(conn)).ok
        rows = [r for r in await audit.rows(conn, event_prefix="auth.login")
                if str(r.subject_id) == user.user_id and r.outcome == "denied"]
    finally:
        await conn.close()
    assert [r.details for r in rows] == [
        {"reason": "invalid_credentials", "failed": "device_signature"},
        {"reason": "invalid_credentials", "failed": "password,device_signature"},
        {"reason": "invalid_credentials", "failed": "password"}]
    assert not any(PASSWORD in json.dumps(r.details) or WRONG in json.dumps(r.details)
                   for r in rows)


async def test_a_login_signed_by_a_revoked_device_is_told_so_only_with_the_right_password(
        world: World) -> None:
    """Only the holder of the revoked device's key (its owner, or a thief) signs with it; a
    wrong password gets the wrong password's answer, counted (docs/SECURITY.md "Login")."""
    device = await world.onboard(world.org.user("amy.ortho"))
    assert (await world.revoke(world.org, 1, devices=(device.device_id,))).status_code == 200
    assert_problem(await world.login_response(device, password=WRONG), 401,
                   "invalid_credentials")
    assert_problem(await world.login_response(device), 403, "device_revoked")


async def test_a_nonce_is_single_use(world: World) -> None:
    from protocol.api import login_signing_input
    from protocol.canonical import b64url_decode, b64url_encode

    device = await world.onboard(world.org.user("amy.ortho"))
    nonce = (await world.http.post("/v1/auth/challenge")).json()["nonce"]
    sig = device.keys.sign(login_signing_input(b64url_decode(nonce), device.user.login,
                                               device.device_id))
    body = {"login": device.user.login, "password": PASSWORD, "device_id": device.device_id,
            "nonce": nonce, "signature": b64url_encode(sig)}
    assert (await world.http.post("/v1/auth/login", json=body)).status_code == 200
    assert_problem(await world.http.post("/v1/auth/login", json=body), 401, "challenge_failed")


async def test_suspended_user_and_expired_licence_cannot_log_in(world: World) -> None:
    amy = world.org.user("amy.ortho")
    device = await world.onboard(amy)
    assert (await world.revoke(world.org, 1, users=(amy.user_id,))).status_code == 200
    assert_problem(await world.login_response(device), 403, "user_suspended")
    assert (await world.revoke(world.org, 2)).status_code == 200  # resumed
    await world.login(device)
    await world.execute("UPDATE users SET licence_expires_at = now() - interval '1 day' "
                        "WHERE user_id = $1", uuid.UUID(amy.user_id))
    assert_problem(await world.login_response(device), 403, "licence_expired")
    assert_problem(await world.call(device, "GET", "/v1/keys/count"), 403, "licence_expired")


async def test_refresh_rotates_and_reuse_revokes_the_whole_family(world: World) -> None:
    device = await world.onboard(world.org.user("amy.ortho"))
    first = device.refresh_token
    r = await world.http.post("/v1/auth/refresh", json={"refresh_token": first})
    assert r.status_code == 200, r.text
    newest = r.json()["refresh_token"]
    device.access_token = r.json()["access_token"]
    assert newest != first
    assert (await world.call(device, "GET", "/v1/keys/count")).status_code == 200
    world.clock.advance(GRACE + 1)  # past the grace for one device's own racing requests
    assert_problem(await world.http.post("/v1/auth/refresh", json={"refresh_token": first}),
                   401, "refresh_reused")
    # The family is gone: the newest refresh token and the access token stop working too.
    assert_problem(await world.http.post("/v1/auth/refresh", json={"refresh_token": newest}),
                   401, "token_invalid")
    assert_problem(await world.call(device, "GET", "/v1/keys/count"), 401, "token_invalid")
    conn = await world.db()
    try:
        assert [r.outcome for r in await audit.rows(conn, event_prefix="auth.refresh_reused")] \
            == ["denied"]
    finally:
        await conn.close()


async def test_logout_ends_the_session(world: World) -> None:
    device = await world.onboard(world.org.user("amy.ortho"))
    r = await world.http.post("/v1/auth/logout", json={"refresh_token": device.refresh_token})
    assert r.status_code == 204
    assert_problem(await world.http.post("/v1/auth/refresh",
                                         json={"refresh_token": device.refresh_token}),
                   401, "token_invalid")
    assert_problem(await world.call(device, "GET", "/v1/keys/count"), 401, "token_invalid")


async def test_refresh_fails_once_the_device_is_revoked_and_says_why(world: World) -> None:
    """Its refresh tokens were revoked with it; the refusal names the revocation, as a login's
    does (a device told only token_invalid would ask for a new sign-in instead of hearing its
    wipe order)."""
    device = await world.onboard(world.org.user("amy.ortho"))
    assert (await world.revoke(world.org, 1, devices=(device.device_id,))).status_code == 200
    assert_problem(await world.http.post("/v1/auth/refresh",
                                         json={"refresh_token": device.refresh_token}),
                   403, "device_revoked")
    assert_problem(await world.login_response(device), 403, "device_revoked")


async def test_admin_login_wrong_password_is_refused(world: World) -> None:
    r = await world.http.post("/v1/admin/login", json={"login": "it-admin",
                                                       "password": "wrong"})
    assert_problem(r, 401, "invalid_credentials")


async def test_a_disabled_administrator_with_the_right_password_is_refused_as_a_wrong_one(
        world: World) -> None:
    """IT's login has no device factor, and no oracle either: a disabled administrator's right
    password gets a wrong password's answer, and both count towards the lockout (3 here)."""
    wrong = await world.http.post("/v1/admin/login", json={"login": "it-admin",
                                                           "password": WRONG})
    await world.execute("UPDATE admins SET disabled_at = now() WHERE login = 'it-admin'")
    right = {"login": "it-admin", "password": ADMIN_PASSWORD}
    disabled = await world.http.post("/v1/admin/login", json=right)
    assert_problem(disabled, 401, "invalid_credentials")
    assert _answer(disabled) == _answer(wrong)
    assert_problem(await world.http.post("/v1/admin/login", json=right), 401,
                   "invalid_credentials")
    assert_problem(await world.http.post("/v1/admin/login", json=right), 429, "account_locked")
