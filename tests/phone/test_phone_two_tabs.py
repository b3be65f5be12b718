"""The phone app opened a second time on the same origin (a second tab on a ward PC, or the
home-screen icon tapped while a tab is still open: USER_GUIDE "Interns: the phone app"). The
tabs share one vault, one device key and one rotating session; two unlocked at once each held
a connection as this device, the relay closed the older (4003 `session_replaced`,
docs/PROTOCOL.md §3), and each reconnected and replaced the other every second or two, with a
refresh each time (measured before the fix: 14 refreshes and 15 connections per tab in 30 s,
the header of each flipping between *connected* and *offline* every second).

Now one tab at a time holds the keys (a Web Lock, docs/SECURITY.md "On the phone"): the second
says that Lightbox is open in another tab or window and asks nothing of the relay; *Use
Lightbox here* locks the first (its keys forgotten, its unlock screen says why) before the
second unlocks; the relay sees one session at a time and never a refresh token presented
twice (no `auth.refresh_reused` in its audit). Two pages of one browser context, a short
access-token lifetime so that the holder refreshes while the other waits. Real relay, real
Chromium."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from tests.identity_world import World
from tests.phone.phone_world import (
    PASSPHRASE,
    SHOTS,
    enrolled_phone,
    fetch_value,
    sent_from_phone,
)

HUNG = 12  # seconds the first tab's page is stuck in the last test
TTL = 8  # seconds: the relay's access tokens, so that the tab in use refreshes meanwhile
ELSEWHERE = ("Lightbox is open in another tab or window. Use it there, or use it here (the "
             "other one will lock).")
TAKEN = ("Lightbox was opened in another tab or window, so it locked here and forgot its keys. "
         "Use it there, or unlock to use it here (the other one will lock).")


@pytest.fixture
def phone_settings() -> dict[str, Any]:
    return {"autolock_seconds": 600, "access_token_ttl": TTL, "refresh_reuse_grace": 1}


class Traffic:
    """One page's requests to the relay, its worker's included, and its websockets."""

    def __init__(self, page: Any, relay: str) -> None:
        self.relay = relay
        self.ws_relay = "ws" + relay.removeprefix("http")
        self.seen: list[str] = []
        page.on("request", lambda r: self._add(f"{r.method} {r.url}"))
        page.on("websocket", lambda w: self._add(f"WS {w.url}"))

    def _add(self, said: str) -> None:
        if self.relay in said or self.ws_relay in said:
            self.seen.append(said.replace(self.relay, "").replace(self.ws_relay, ""))

    def of(self, said: str) -> int:
        return sum(1 for s in self.seen if s.startswith(said))


async def audited_since(world: World, seq: int) -> list[str]:
    """The relay's audit events after ``seq``, in order."""
    conn = await world.db()
    try:
        return [r["event"] for r in await conn.fetch(
            "SELECT event FROM audit_log WHERE seq > $1 ORDER BY seq", seq)]
    finally:
        await conn.close()


async def watch(pages: dict[str, Any], secs: float) -> list[tuple[str, ...]]:
    """Each page's header (the connection's state), once a second for ``secs``."""
    states = []
    end = time.monotonic() + secs
    while time.monotonic() < end:
        states.append(tuple([await p.inner_text("#conn") for p in pages.values()]))
        await next(iter(pages.values())).wait_for_timeout(1000)
    return states


async def test_a_second_tab_says_the_app_is_open_elsewhere_and_takes_over_only_when_asked(
        phone: tuple[World, str], tmp_path: Path) -> None:
    world, origin = phone
    async with enrolled_phone(world, tmp_path, origin) as (_intern, specialist, events, first,
                                                           problems):
        consult = await sent_from_phone(first, events, "Query scaphoid fracture.")
        audit_from = await fetch_value(world, "SELECT max(seq) FROM audit_log")
        used = Traffic(first, world.relay.base_url)

        # The app opened again, in a second tab: it says so, and leaves the relay alone.
        second = await first.context.new_page()
        waiting = Traffic(second, world.relay.base_url)
        await second.goto(origin)
        await second.locator("#screen-elsewhere").wait_for()
        assert await second.inner_text("#elsewhere-why") == ELSEWHERE
        assert await second.locator("#take-over").inner_text() == "Use Lightbox here"
        # Longer than an access token lives, and a consult sent from the first tab then: it
        # refreshes its session and stays connected.
        states = await watch({"first": first, "second": second}, TTL + 1)
        await sent_from_phone(first, events, "Weight bearing?")
        states += await watch({"first": first, "second": second}, 3)
        assert set(states) == {("connected", "open elsewhere")}, states
        assert waiting.seen == [], waiting.seen
        assert used.of("POST /v1/auth/refresh") >= 1, used.seen
        assert used.of("WS ") == 0, used.seen  # never replaced, never reconnected
        SHOTS.mkdir(parents=True, exist_ok=True)
        await second.screenshot(path=str(SHOTS / "74-open-in-another-tab.png"), full_page=True)

        # Used here instead: the first tab locks, says why, and lets go before this one
        # unlocks.
        await second.tap("#take-over")
        await second.locator("#screen-unlock").wait_for()
        await first.locator("#unlock-why", has_text=TAKEN).wait_for()
        assert await first.inner_text("#conn") == "locked"
        assert await first.locator("#screen-unlock").is_visible()
        used.seen.clear()
        await second.fill("#passphrase", PASSPHRASE)
        await second.tap("#unlock")
        await second.locator("#conn", has_text="connected").wait_for()
        await second.locator(".thread", has_text="Query scaphoid fracture").wait_for()
        await specialist.client.send_text(consult.message.thread_id, "Looking now.")
        await second.locator(".message.theirs", has_text="Looking now.").wait_for()
        states = await watch({"first": first, "second": second}, 2 * TTL)
        assert set(states) == {("locked", "connected")}, states
        assert used.seen == [], used.seen  # the locked tab asks nothing of the relay
        await first.screenshot(path=str(SHOTS / "75-locked-another-tab-took-over.png"),
                               full_page=True)
        await second.screenshot(path=str(SHOTS / "76-used-in-the-second-tab.png"),
                                full_page=True)

        # And back: unlocking the first tab again takes over in turn.
        await first.fill("#passphrase", PASSPHRASE)
        await first.tap("#unlock")
        await first.locator("#conn", has_text="connected").wait_for()
        await second.locator("#unlock-why", has_text=TAKEN).wait_for()
        got = await sent_from_phone(first, events, "Also: snuffbox tender.")
        assert got.body.text == "Also: snuffbox tender."

        audited = await audited_since(world, audit_from)
        assert "auth.refresh_reused" not in audited, audited
        assert audited.count("auth.login") == 2, audited  # one per unlock, one at a time
        assert problems == [], problems


async def test_a_hung_tab_is_taken_over_after_five_seconds_and_locks_once_it_runs_again(
        phone: tuple[World, str], tmp_path: Path) -> None:
    """The tab that holds the keys does not answer (its page is stuck in a long script):
    *Use Lightbox here* waits five seconds for it, then takes the Web Lock from it anyway
    (clients/phone/src/app/main.ts ``takeOver``, TAKE_OVER_WAIT_MS). Once the stuck tab runs
    again it locks at once and says why, and never takes the connection or the session back:
    the second tab stays connected, and the relay sees no refresh token presented twice."""
    world, origin = phone
    async with enrolled_phone(world, tmp_path, origin) as (_intern, specialist, events, first,
                                                           problems):
        consult = await sent_from_phone(first, events, "Query scaphoid fracture.")
        audit_from = await fetch_value(world, "SELECT max(seq) FROM audit_log")
        second = await first.context.new_page()
        await second.goto(origin)
        await second.locator("#screen-elsewhere").wait_for()

        # The first tab's page stuck for HUNG seconds: it cannot answer the second.
        stuck = asyncio.ensure_future(first.evaluate(
            "(ms) => { const end = Date.now() + ms; while (Date.now() < end) {} }", HUNG * 1000))
        await asyncio.sleep(0.5)
        asked = time.monotonic()
        await second.tap("#take-over")
        await second.locator("#screen-unlock").wait_for()
        waited = time.monotonic() - asked
        assert 4.5 <= waited < HUNG, waited  # it waited for an answer, then took over
        await second.fill("#passphrase", PASSPHRASE)
        await second.tap("#unlock")
        await second.locator("#conn", has_text="connected").wait_for()

        # The first tab runs again: it locks and says why, and the second keeps the relay.
        await stuck
        await first.locator("#unlock-why", has_text=TAKEN).wait_for()
        states = await watch({"first": first, "second": second}, TTL + 2)
        assert set(states) == {("locked", "connected")}, states
        await specialist.client.send_text(consult.message.thread_id, "Looking now.")
        await second.locator(".message.theirs", has_text="Looking now.").wait_for()
        await first.screenshot(path=str(SHOTS / "79-hung-tab-taken-over.png"), full_page=True)

        audited = await audited_since(world, audit_from)
        assert "auth.refresh_reused" not in audited, audited
        assert audited.count("auth.login") == 1, audited  # the second tab's unlock
        assert problems == [], problems
