"""Who is slowed down after failed logins and wrong enrolment codes (server/throttle.py), through
a real relay behind a trusted proxy on loopback, so that each request names its client address
in X-Forwarded-For (documentation ranges, RFC 5737), with the relay's clock injected.

The scheme (docs/SECURITY.md "Lockout"): a hard lock per (account, address) pair; a bounded,
progressive delay per account; a throttle per address that never slows a login signed by the
account's own enrolled device; wrong enrolment codes slow their address, never a right code.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from tests.identity_world import PASSWORD, Device, World, identity_world
from tests.server.test_http_edge import assert_problem

PAIR = 3      # LIGHTBOX_LOCKOUT_ACCOUNT_FAILURES: per (account, address) pair
ADDRESS = 4   # LIGHTBOX_LOCKOUT_ADDRESS_FAILURES
BASE, MAX = 30, 3600          # the hard lock
DELAY_BASE, DELAY_MAX = 2, 16  # the account's delay

VICTIM, ATTACKER, NAT = "192.0.2.7", "198.51.100.66", "203.0.113.10"


def at(address: str) -> dict[str, str]:
    """What the trusted proxy appends for a client at ``address``."""
    return {"x-forwarded-for": address}


@pytest.fixture
async def world(db_dsn: str, tmp_path: Path) -> AsyncIterator[World]:
    async with identity_world(db_dsn, tmp_path, trusted_proxy_hops=1,
                              trusted_proxies="127.0.0.1/32,::1",
                              lockout_account_failures=PAIR, lockout_address_failures=ADDRESS,
                              lockout_base_seconds=BASE, lockout_max_seconds=MAX,
                              login_delay_base_seconds=DELAY_BASE,
                              login_delay_max_seconds=DELAY_MAX) as w:
        yield w


def locked(r: httpx.Response) -> float:
    """The seconds an ``account_locked`` answer asks to wait (body and header agree)."""
    body = assert_problem(r, 429, "account_locked")
    wait = float(body["retry_after"])  # type: ignore[arg-type]
    assert int(r.headers["retry-after"]) >= int(wait)
    return wait


async def guess(world: World, victim: Device, address: str, *, by: Device) -> httpx.Response:
    """A wrong password for ``victim``'s login, signed by ``by`` (not the victim's device
    unless ``by`` is it)."""
    return await world.login_response(victim, login=victim.user.login, signer=by.keys,
                                      password="wrong guess of a password", headers=at(address))


async def test_a_correct_login_from_the_address_of_anothers_failed_logins_succeeds(
        world: World) -> None:
    """Behind one hospital NAT: someone fails on amy's account until both the pair and the
    address are over their thresholds; ben, at the same address, logs in with his device."""
    amy = await world.onboard(world.org.user("amy.ortho"))
    ben = await world.onboard(world.org.user("ben.cardio"))
    mallory = await world.onboard(world.org.user("mallory.derm"))
    for _ in range(PAIR):
        assert_problem(await guess(world, amy, NAT, by=mallory), 401, "invalid_credentials")
    for n in range(ADDRESS - PAIR):
        assert_problem(await world.login_response(mallory, login=f"ghost.{n}",
                                                  headers=at(NAT)), 401, "invalid_credentials")
    locked(await guess(world, amy, NAT, by=mallory))
    locked(await world.login_response(mallory, login="ghost.x", headers=at(NAT)))
    r = await world.login_response(ben, headers=at(NAT))
    assert r.status_code == 200, r.text
    # amy herself, with her own device, at the same address: the third party's failures are
    # not hers.
    r = await world.login_response(amy, headers=at(NAT))
    assert r.status_code == 200, r.text


async def test_a_spray_from_one_address_is_throttled_but_its_neighbours_log_in(
        world: World) -> None:
    amy = await world.onboard(world.org.user("amy.ortho"))
    ben = await world.onboard(world.org.user("ben.cardio"))
    for n in range(ADDRESS):
        assert_problem(await world.login_response(amy, login=f"victim.{n}",
                                                  password="spray password 1",
                                                  headers=at(NAT)),
                       401, "invalid_credentials")
    # The next guess is not even evaluated: ben's *right* password, without ben's device,
    # tells the sprayer nothing.
    first = locked(await world.login_response(amy, login=ben.user.login, headers=at(NAT)))
    assert first == pytest.approx(BASE, abs=2)
    # Progressive: the next failure once the wait is over doubles it.
    world.clock.advance(first)
    assert_problem(await world.login_response(amy, login="victim.x", password="spray 2",
                                              headers=at(NAT)), 401, "invalid_credentials")
    second = locked(await world.login_response(amy, login="victim.y", headers=at(NAT)))
    assert second == pytest.approx(2 * BASE, abs=2)
    # Clinicians behind the same address log in with their devices meanwhile.
    for device in (amy, ben):
        r = await world.login_response(device, headers=at(NAT))
        assert r.status_code == 200, r.text
    # Another address is not throttled at all.
    assert_problem(await world.login_response(amy, login="victim.z", password="spray 3",
                                              headers=at(VICTIM)), 401, "invalid_credentials")


async def test_an_attacker_from_another_address_cannot_lock_the_victim_out(
        world: World) -> None:
    """Without amy's device, however many guesses from however many addresses."""
    amy = await world.onboard(world.org.user("amy.ortho"))
    mallory = await world.onboard(world.org.user("mallory.derm"))
    for n in range(3 * PAIR):
        r = await guess(world, amy, f"198.51.100.{n + 1}", by=mallory)
        assert r.status_code in (401, 429), r.text
    for _ in range(2 * PAIR):
        r = await guess(world, amy, ATTACKER, by=mallory)
        assert r.status_code in (401, 429), r.text
    locked(await guess(world, amy, ATTACKER, by=mallory))  # the attacker is held back
    r = await world.login_response(amy, headers=at(VICTIM))
    assert r.status_code == 200, r.text


async def test_a_stolen_device_guessing_from_many_addresses_only_delays_the_account(
        world: World) -> None:
    """The thief holds amy's device but not her password and moves between addresses, so no
    pair reaches its lock: the account's delay grows, capped at LIGHTBOX_LOGIN_DELAY_MAX_SECONDS,
    and amy gets in once the wait her answer names is over."""
    amy = await world.onboard(world.org.user("amy.ortho"))
    waits = []
    for n in range(8):
        r = await guess(world, amy, f"198.51.100.{n + 1}", by=amy)
        if r.status_code == 429:
            waits.append(locked(r))
            world.clock.advance(waits[-1])
            r = await guess(world, amy, f"198.51.100.{n + 1}", by=amy)
        assert_problem(r, 401, "invalid_credentials")
    wait = locked(await world.login_response(amy, headers=at(VICTIM)))
    waits.append(wait)
    assert waits[0] == pytest.approx(DELAY_BASE, abs=1)
    assert max(waits) <= DELAY_MAX
    assert waits[-1] == pytest.approx(DELAY_MAX, abs=1)  # it grew to the cap and stays there
    world.clock.advance(wait)
    r = await world.login_response(amy, headers=at(VICTIM))
    assert r.status_code == 200, r.text


async def test_failures_of_one_pair_lock_that_pair_hard_and_delay_the_account_briefly(
        world: World) -> None:
    amy = await world.onboard(world.org.user("amy.ortho"))
    for _ in range(PAIR):
        assert_problem(await guess(world, amy, ATTACKER, by=amy), 401, "invalid_credentials")
    # The pair is locked for LIGHTBOX_LOCKOUT_BASE_SECONDS, even with the right password.
    assert locked(await world.login_response(amy, headers=at(ATTACKER))) == \
        pytest.approx(BASE, abs=2)
    # From elsewhere only the account's short delay applies.
    wait = locked(await world.login_response(amy, headers=at(VICTIM)))
    assert wait <= DELAY_BASE
    world.clock.advance(wait)
    r = await world.login_response(amy, headers=at(VICTIM))
    assert r.status_code == 200, r.text
    # The pair stays locked until its own time is up, and a success elsewhere does not lift it.
    locked(await world.login_response(amy, headers=at(ATTACKER)))
    world.clock.advance(BASE)
    r = await world.login_response(amy, headers=at(ATTACKER))
    assert r.status_code == 200, r.text


async def test_admin_login_failures_from_one_address_do_not_lock_it_from_another(
        world: World) -> None:
    wrong = {"login": "it-admin", "password": "not the admin password"}
    for _ in range(PAIR):
        assert_problem(await world.http.post("/v1/admin/login", json=wrong,
                                             headers=at(ATTACKER)), 401, "invalid_credentials")
    assert locked(await world.http.post("/v1/admin/login", json=wrong, headers=at(ATTACKER))) \
        == pytest.approx(BASE, abs=2)
    right = {"login": "it-admin", "password": "admin passphrase for tests"}
    r = await world.http.post("/v1/admin/login", json=right, headers=at(VICTIM))
    if r.status_code == 429:
        wait = locked(r)
        assert wait <= DELAY_MAX
        world.clock.advance(wait)
        r = await world.http.post("/v1/admin/login", json=right, headers=at(VICTIM))
    assert r.status_code == 200, r.text


async def test_a_right_enrolment_code_gets_through_an_address_throttled_for_wrong_ones(
        world: World) -> None:
    """Someone behind the NAT mistypes (or guesses) codes; a colleague there still enrols.
    A 100-bit code is its own defence against guessing (docs/SECURITY.md "Lockout")."""
    for _ in range(ADDRESS):
        assert_problem(await world.http.post(
            "/v1/enrol/fetch", headers=at(NAT),
            json={"enrolment_token": world.org.user("x.y").token_b64}),
            400, "enrolment_code_invalid")
    wrong = await world.http.post("/v1/enrol/fetch", headers=at(NAT), json={
        "enrolment_token": world.org.user("x.z").token_b64})
    body = assert_problem(wrong, 429, "rate_limited")
    assert float(body["retry_after"]) == pytest.approx(BASE, abs=2)  # type: ignore[arg-type]
    amy = world.org.user("amy.ortho")
    await world.provision(amy)
    r = await world.http.post("/v1/enrol/fetch", headers=at(NAT),
                              json={"enrolment_token": amy.token_b64})
    assert r.status_code == 200, r.text
    device = amy.device()
    r = await world.http.post("/v1/enrol/complete", headers=at(NAT), json={
        "enrolment_token": amy.token_b64, "device_certificate": device.cert,
        "signed_prekey": device.signed_prekey(), "one_time_prekeys": device.one_time(1, 2),
        "password": PASSWORD})
    assert r.status_code == 200, r.text


async def _denials(world: World) -> list[tuple[str, str | None, str | None, str]]:
    """The denied login and lockout rows of the audit: event, subject kind and id, details."""
    return [(r["event"], r["subject_kind"], r["subject_id"], r["details"])
            for r in await world.fetch(
                "SELECT event, subject_kind, subject_id, details::text AS details "
                "FROM audit_log WHERE outcome = 'denied' ORDER BY seq")]


async def test_the_audit_names_the_account_each_failure_and_lock_is_charged_to(
        world: World) -> None:
    """An auditor sees whose account is guessed at and locked, administrator or clinician; a
    login nobody has is never written down (it may be a password typed in the wrong box)."""
    (admin,) = await world.fetch("SELECT admin_id::text FROM admins WHERE login = $1",
                                 "it-admin")
    admin_id = admin["admin_id"]
    wrong = {"login": "it-admin", "password": "not the admin password"}
    for _ in range(PAIR):
        await world.http.post("/v1/admin/login", json=wrong, headers=at(ATTACKER))
    locked(await world.http.post("/v1/admin/login", json=wrong, headers=at(ATTACKER)))
    typed = "winter2026.kettle"  # a password typed into the login box
    assert_problem(await world.http.post("/v1/admin/login",
                                         json={"login": typed, "password": "x"},
                                         headers=at(VICTIM)), 401, "invalid_credentials")
    amy = await world.onboard(world.org.user("amy.ortho"))
    mallory = await world.onboard(world.org.user("mallory.derm"))
    for _ in range(PAIR):
        await guess(world, amy, NAT, by=mallory)
    locked(await guess(world, amy, NAT, by=mallory))

    rows = await _denials(world)
    admin_rows = [r[:3] for r in rows if r[0] == "admin.login" or r[2] == admin_id]
    assert admin_rows == (
        [("admin.login", "admin", admin_id)] * PAIR
        + [("auth.lockout", "admin", admin_id), ("admin.login", "admin", admin_id),
           ("admin.login", None, None)]), rows
    amy_rows = [r[:3] for r in rows if r[0] == "auth.login" or r[2] == amy.user.user_id]
    assert amy_rows == (
        [("auth.login", "user", amy.user.user_id)] * PAIR
        + [("auth.lockout", "user", amy.user.user_id),
           ("auth.login", "user", amy.user.user_id)]), rows
    assert all(typed not in " ".join(map(str, r)) for r in rows), rows
