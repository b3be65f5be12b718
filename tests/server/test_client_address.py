"""Whose address is it: X-Forwarded-For is believed only as LIGHTBOX_TRUSTED_PROXY_HOPS and
LIGHTBOX_TRUSTED_PROXIES say (server/middleware.py), for lockouts, rate limits and the audit
trail alike, through the real uvicorn configuration the relay runs with (server/runner.py)."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from server import audit
from server.middleware import client_address
from tests.identity_world import PASSWORD, Device, World, identity_world
from tests.server.test_http_edge import assert_problem

_counter = itertools.count(1)


def forged() -> dict[str, str]:
    """A different made-up client address on every call (documentation ranges, RFC 5737)."""
    n = next(_counter)
    return {"x-forwarded-for": f"203.0.113.{n % 250 + 1}, 198.51.100.{n % 250 + 1}"}


async def login_from(world: World, device: Device, headers: dict[str, str], *,
                     login: str | None = None, password: str = PASSWORD) -> httpx.Response:
    return await world.login_response(device, headers=headers, login=login, password=password)


async def audited_addresses(world: World, event: str) -> set[str | None]:
    conn = await world.db()
    try:
        return {row.client_ip for row in await audit.rows(conn) if row.event == event}
    finally:
        await conn.close()


@pytest.fixture
async def direct(db_dsn: str, tmp_path: Path) -> AsyncIterator[World]:
    """The default: no proxy trusted (LIGHTBOX_TRUSTED_PROXY_HOPS=0)."""
    async with identity_world(db_dsn, tmp_path, lockout_account_failures=50,
                              lockout_address_failures=5) as w:
        yield w


async def test_rotating_forwarded_for_does_not_escape_the_enrolment_code_lockout(
        direct: World) -> None:
    for _ in range(5):
        token = direct.org.user("x.y").token_b64
        assert_problem(await direct.http.post("/v1/enrol/fetch", headers=forged(),
                                              json={"enrolment_token": token}),
                       400, "enrolment_code_invalid")
    # The socket's address is throttled, whatever the next request claims to be (a right code
    # is never held back: tests/server/test_throttle.py).
    r = await direct.http.post("/v1/enrol/fetch", headers=forged(),
                               json={"enrolment_token": direct.org.user("x.z").token_b64})
    assert_problem(r, 429, "rate_limited")
    # The audit trail names the socket's address, never a forged one.
    assert await audited_addresses(direct, "enrol.fetch") == {"127.0.0.1"}


async def test_a_password_spray_with_rotating_forwarded_for_is_locked_out(
        direct: World) -> None:
    device = await direct.onboard(direct.org.user("amy.ortho"))
    for n in range(5):
        assert_problem(await login_from(direct, device, forged(), login=f"victim.{n}",
                                        password="spray password 1"),
                       401, "invalid_credentials")
    # The sprayer's address is locked, whatever it claims to be next.
    assert_problem(await login_from(direct, device, forged(), login="victim.9",
                                    password="spray password 1"), 429, "account_locked")
    assert await audited_addresses(direct, "auth.login") == {"127.0.0.1"}


async def test_a_locked_address_does_not_get_in_by_adding_forwarded_for(direct: World) -> None:
    device = await direct.onboard(direct.org.user("amy.ortho"))
    for n in range(5):
        assert_problem(await login_from(direct, device, {}, login=f"ghost.{n}"),
                       401, "invalid_credentials")
    assert_problem(await login_from(direct, device, forged(), login="ghost.9"),
                   429, "account_locked")


@pytest.fixture
async def behind_proxy(db_dsn: str, tmp_path: Path) -> AsyncIterator[World]:
    """One trusted reverse proxy on loopback, as behind nginx on the relay host."""
    async with identity_world(db_dsn, tmp_path, lockout_account_failures=50,
                              lockout_address_failures=3, trusted_proxy_hops=1,
                              trusted_proxies="127.0.0.1/32,::1") as w:
        yield w


async def test_behind_a_trusted_proxy_the_address_it_adds_is_the_clients(
        behind_proxy: World) -> None:
    device = await behind_proxy.onboard(behind_proxy.org.user("amy.ortho"))
    # The client claims 10.66.0.1; the proxy appends the address it saw: that one counts.
    headers = {"x-forwarded-for": "10.66.0.1, 192.0.2.7"}
    for n in range(3):
        assert_problem(await login_from(behind_proxy, device, headers, login=f"ghost.{n}"),
                       401, "invalid_credentials")
    assert_problem(await login_from(behind_proxy, device, headers, login="ghost.9"),
                   429, "account_locked")
    # Another client behind the same proxy is not locked out by that one.
    r = await login_from(behind_proxy, device, {"x-forwarded-for": "192.0.2.8"})
    assert r.status_code == 200, r.text
    assert {"192.0.2.7", "192.0.2.8"} <= await audited_addresses(behind_proxy, "auth.login")
    assert "10.66.0.1" not in await audited_addresses(behind_proxy, "auth.login")


async def test_forwarded_for_from_a_peer_that_is_not_a_trusted_proxy_is_ignored(
        db_dsn: str, tmp_path: Path) -> None:
    async with identity_world(db_dsn, tmp_path, lockout_account_failures=50,
                              lockout_address_failures=3, trusted_proxy_hops=1,
                              trusted_proxies="192.0.2.250") as w:
        device = await w.onboard(w.org.user("amy.ortho"))
        for n in range(3):
            assert_problem(await login_from(w, device, forged(), login=f"ghost.{n}"),
                           401, "invalid_credentials")
        assert_problem(await login_from(w, device, forged(), login="ghost.9"),
                       429, "account_locked")
        assert await audited_addresses(w, "auth.login") == {"127.0.0.1"}


def scope(peer: str, *xff: str) -> dict[str, Any]:
    return {"client": (peer, 5000),
            "headers": [(b"x-forwarded-for", v.encode()) for v in xff]}


PROXIES = ("127.0.0.0/8", "::1/128")


@pytest.mark.parametrize(("hops", "proxies", "sc", "expected"), [
    (0, PROXIES, scope("127.0.0.1", "192.0.2.1"), "127.0.0.1"),
    (1, PROXIES, scope("127.0.0.1", "192.0.2.1"), "192.0.2.1"),
    (1, PROXIES, scope("127.0.0.1", "10.0.0.9, 192.0.2.1"), "192.0.2.1"),
    # Two header fields are one list, in order (RFC 9110 §5.3).
    (1, PROXIES, scope("127.0.0.1", "10.0.0.9", "192.0.2.1"), "192.0.2.1"),
    (2, PROXIES, scope("127.0.0.1", "192.0.2.1, 10.1.1.1"), "192.0.2.1"),
    # Fewer entries than trusted hops: the request did not pass every proxy; use the peer.
    (2, PROXIES, scope("127.0.0.1", "192.0.2.1"), "127.0.0.1"),
    # Not an address: ignored.
    (1, PROXIES, scope("127.0.0.1", "evil<script>"), "127.0.0.1"),
    (1, PROXIES, scope("127.0.0.1", "   "), "127.0.0.1"),
    # The peer is not a trusted proxy: its header is the client's own claim.
    (1, ("192.0.2.250/32",), scope("127.0.0.1", "192.0.2.1"), "127.0.0.1"),
    (1, PROXIES, scope("::1", "2001:db8::5"), "2001:db8::5"),
])
def test_client_address_believes_only_trusted_hops(hops: int, proxies: tuple[str, ...],
                                                   sc: dict[str, Any], expected: str) -> None:
    from server.settings import parse_proxies
    assert client_address(sc, hops, parse_proxies(",".join(proxies))) == expected


def test_an_unparseable_trusted_proxies_setting_is_refused() -> None:
    from server.settings import SettingsError, load_settings
    with pytest.raises(SettingsError, match="LIGHTBOX_TRUSTED_PROXIES"):
        load_settings({"LIGHTBOX_TRUSTED_PROXIES": "10.0.0.0/8, not-an-address"})

