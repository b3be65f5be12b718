"""The relay ends the phone's session while the app is open: the phone signs in again by itself
and sends what waits, with no loop of refused refreshes (USER_GUIDE "Interns: the phone app").

The relay's refresh tokens and access tokens last seconds here (LIGHTBOX_REFRESH_TOKEN_TTL,
LIGHTBOX_ACCESS_TOKEN_TTL), and the relay is stopped for longer than that: the phone, unlocked
during the outage with a consult written there, finds its refresh token refused (401
`token_expired`) when the relay is back. A refused refresh token is never offered again
(docs/SECURITY.md "Refresh"): the phone logs in with the passphrase it was unlocked with and its
device key, as at unlock, and the consult goes, without the intern doing anything. The requests
the relay got from the phone meanwhile are counted in the browser: a handful, not one a second.
The relay refusing that sign-in too (its password is no longer the phone's passphrase): the
app says so once, in words, locks, and the consult stays kept. Real relay, stopped and started
again on its port; real Chromium."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from argon2 import PasswordHasher

from clients.sdk.client import MessageEvent
from tests.helpers import make_settings, running_relay, seconds
from tests.identity_world import World
from tests.phone.phone_world import (
    PASSPHRASE,
    SHOTS,
    beyond_refused,
    enrolled_phone,
    fetch_value,
    relay_stopped,
    vault_names,
)

TTL = 12  # seconds: the relay's access and refresh tokens
RELAY = {"access_token_ttl": TTL, "refresh_token_ttl": TTL, "refresh_reuse_grace": 1}
SUBJECT = "Wrist, bay 6"
TEXT = "Fell on outstretched hand, snuffbox tender, first film normal. Scaphoid views?"
SENT = "Sent: the relay stored it."
ENDED = ("Your session with the relay ended, and the app could not sign in again by itself: "
         "unlock to sign in again. Nothing is lost: what waits to be sent goes once you are "
         "signed in.")


@pytest.fixture
def phone_settings() -> dict[str, Any]:
    return {"autolock_seconds": 600, **RELAY}


def relay_back(world: World, tmp_path: Path, origin: str
               ) -> contextlib.AbstractAsyncContextManager[Any]:
    """The stopped relay started again where it was, with the same short token lives."""
    settings = make_settings(trusted_orgs_file=tmp_path / "trusted-orgs.json",
                             port=int(world.relay.base_url.rsplit(":", 1)[1]),
                             phone_origins=origin, **RELAY)
    return running_relay(world.dsn, settings)


class Requests:
    """The phone's requests to the relay's session routes, as Chromium sends them (the worker's
    included), counted from when :meth:`count` is called."""

    def __init__(self, page: Any) -> None:
        self.seen: list[str] = []
        self.counting = False
        page.context.on("request", self._request)

    def _request(self, request: Any) -> None:
        if self.counting and "/v1/auth/" in request.url:
            self.seen.append(f"{request.method} {request.url.split('/v1/auth/', 1)[1]}")

    def count(self) -> None:
        self.seen.clear()
        self.counting = True

    def of(self, prefix: str) -> int:
        return sum(1 for s in self.seen if s.startswith(prefix))


@contextlib.asynccontextmanager
async def kept_past_the_session(world: World, tmp_path: Path, origin: str
                                ) -> AsyncIterator[tuple[Any, Any, Any, list[str], Requests]]:
    """The intern's phone enrolled; the relay stopped; the app locked and unlocked while it is
    down, a consult written there and kept; then waited until every token the relay issued
    before it stopped has expired. Yields the intern, the specialist's events, the page, its
    problems and the request counter (counting from now)."""
    async with enrolled_phone(world, tmp_path, origin) as (intern, _s, events, page, problems):
        requests = Requests(page)
        await relay_stopped(world, page)
        stopped = time.monotonic()
        await page.tap("#lock")
        await page.fill("#passphrase", PASSPHRASE)
        await page.tap("#unlock")
        await page.locator("#screen-home").wait_for()
        await page.fill("#subject", SUBJECT)
        await page.fill("#text", TEXT)
        await page.tap("#send")
        consult = page.locator(".thread", has_text=SUBJECT)
        await consult.locator(".message.mine .meta", has_text="sending").wait_for()
        await asyncio.sleep(max(0.0, TTL + 3 - (time.monotonic() - stopped)))
        requests.count()
        yield intern, events, page, problems, requests


async def test_a_session_expired_in_an_outage_signs_in_again_and_sends_what_waits(
        phone: tuple[World, str], tmp_path: Path) -> None:
    world, origin = phone
    async with kept_past_the_session(world, tmp_path, origin) as (
            _intern, events, page, problems, requests), relay_back(world, tmp_path, origin):
        status = page.locator("#send-status")
        await status.filter(has_text=SENT).wait_for(timeout=seconds(60) * 1000)
        async with asyncio.timeout(seconds(30)):
            while True:
                got = await events.get()
                if isinstance(got, MessageEvent) and TEXT in got.body.text:
                    break
        consult = page.locator(".thread", has_text=SUBJECT)
        await consult.locator(".message.mine .meta", has_text="· sent").wait_for()
        await page.locator("#conn", has_text="connected").wait_for()
        seen = list(requests.seen)
        # The refused refresh token offered once (or twice, a request racing the websocket),
        # then a login: never one a second, and no single sign-on look-up for an
        # organisation that has none.
        assert requests.of("POST refresh") <= 3, seen
        assert 1 <= requests.of("POST login") <= 2, seen
        assert requests.of("GET sso/") == 0, seen
        assert [n for n in await vault_names(page) if n.startswith("outbox:")] == []
        assert await fetch_value(world, "SELECT count(*) FROM messages") == 1
        SHOTS.mkdir(parents=True, exist_ok=True)
        await page.screenshot(path=str(SHOTS / "60-session-expired-signed-in-again.png"),
                              full_page=True)
        assert beyond_refused(problems) == [] or all(
            "401" in p for p in beyond_refused(problems)), problems


async def test_a_session_the_relay_will_not_renew_is_said_once_and_the_consult_kept(
        phone: tuple[World, str], tmp_path: Path) -> None:
    world, origin = phone
    async with kept_past_the_session(world, tmp_path, origin) as (
            intern, _events, page, _problems, requests):
        # Meanwhile the account got another password at the relay: the phone's passphrase no
        # longer signs it in there (it still opens the vault).
        other = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1).hash(
            "another passphrase, not the phone's")
        await world.execute("UPDATE users SET password_hash = $1 WHERE user_id = $2", other,
                            uuid.UUID(intern.user_id))
        async with relay_back(world, tmp_path, origin):
            await page.locator("#screen-unlock").wait_for()
            await page.locator("#unlock-why", has_text=ENDED).wait_for()
            assert await page.inner_text("#conn") == "locked"
            SHOTS.mkdir(parents=True, exist_ok=True)
            await page.screenshot(path=str(SHOTS / "61-session-ended-unlock-to-sign-in.png"),
                                  full_page=True)
            await page.wait_for_timeout(3000)
            seen = list(requests.seen)
            assert requests.of("POST refresh") <= 3, seen
            assert requests.of("POST login") <= 2, seen
            assert requests.of("GET sso/") <= 1, seen
            # The consult waits in the vault, sealed, and nothing of it is on the relay.
            assert len([n for n in await vault_names(page) if n.startswith("outbox:")]) == 1
            assert await fetch_value(world, "SELECT count(*) FROM messages") == 0
