"""A consult written while the relay is down (its process stopped, as by SIGTERM) is kept: the
phone cannot make its thread or fetch its recipients' keys to seal it, so it keeps the consult
as written in the vault (sealed at rest like every record), shows it in its thread marked
*sending* with the *Not sent yet* line, and seals and sends it by itself once the relay is
back, once (one message id), also after the app was closed and unlocked again while the relay
was still down; a refusal for good then is shown as any refusal is (USER_GUIDE "Interns: the
phone app", step 4). A photo the relay cannot take before its upload starts is not kept, and
the app says so (never "nothing is lost"). Real relay, stopped and started again on its port;
real Chromium."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import pytest

from clients.sdk.client import MessageEvent
from tests.helpers import make_settings, running_relay, seconds
from tests.identity_world import World
from tests.phone.phone_world import (
    PASSPHRASE,
    SHOTS,
    enrol_by_code,
    enrolled_phone,
    fetch_value,
    film,
    idb_records,
    intern_and_specialist,
    phone_page,
    photo_records,
    photo_with_consent,
    still_video,
    vault_names,
)

SUBJECT = "Wrist, bay 6"
TEXT = "Fell on outstretched hand, snuffbox tender, first film normal. Scaphoid views?"
KEPT = ("Not sent yet: this phone is not connected to the relay. It is kept on this phone and "
        "sent by itself as soon as the relay takes it; it shows as sent then.")
KEPT_NOTE = ("Not sent yet: the relay could not be reached. It is kept on this phone and sent "
             "by itself as soon as the relay takes it; it shows as sent then.")


@pytest.fixture
def phone_settings() -> dict[str, Any]:
    return {"autolock_seconds": 600}


async def relay_stopped(world: World, page: Any) -> None:
    """The relay's process stops (gracefully, as on SIGTERM); the phone says it is offline."""
    await asyncio.to_thread(world.relay.stop)  # off this loop: its clients answer the close
    await page.locator("#conn", has_text="offline").wait_for()


def relay_back(world: World, tmp_path: Path, origin: str
               ) -> contextlib.AbstractAsyncContextManager[Any]:
    """The stopped relay started again where it was, for the same phone origin."""
    settings = make_settings(trusted_orgs_file=tmp_path / "trusted-orgs.json",
                             port=int(world.relay.base_url.rsplit(":", 1)[1]),
                             phone_origins=origin)
    return running_relay(world.dsn, settings)


async def write_consult(page: Any, *, role: str | None = None) -> None:
    if role is not None:
        await page.fill("#role", role)
    await page.fill("#subject", SUBJECT)
    await page.fill("#text", TEXT)
    await page.tap("#send")


async def stored(world: World) -> int:
    count: int = await fetch_value(world, "SELECT count(*) FROM messages")
    return count


async def arrived(events: asyncio.Queue[Any]) -> Any:
    """The specialist's MessageEvent of the consult (his client reconnects with backoff)."""
    async with asyncio.timeout(seconds(60)):
        while True:
            got = await events.get()
            if isinstance(got, MessageEvent) and TEXT in got.body.text:
                return got


async def test_a_consult_written_while_the_relay_is_down_is_kept_then_sent_once(
        phone: tuple[World, str], tmp_path: Path) -> None:
    world, origin = phone
    async with enrolled_phone(world, tmp_path, origin) as (_i, _s, events, page, problems):
        await relay_stopped(world, page)
        await write_consult(page)
        status = page.locator("#send-status")
        await status.filter(has_text="Not sent yet").wait_for()
        assert await status.inner_text() == KEPT
        # In its thread, marked sending, with why; the form is emptied (the consult is kept).
        consult = page.locator(".thread", has_text=SUBJECT)
        await consult.locator(".message.mine .meta", has_text="sending").wait_for()
        assert await consult.locator(".meta.kept").inner_text() == KEPT_NOTE
        assert await page.input_value("#text") == ""
        # Kept in the vault, sealed at rest like everything else.
        assert len([n for n in await vault_names(page) if n.startswith("outbox:")]) == 1
        assert not any(TEXT.encode() in r or SUBJECT.encode() in r
                       for r in await idb_records(page))
        SHOTS.mkdir(parents=True, exist_ok=True)
        await page.screenshot(path=str(SHOTS / "34-consult-kept-relay-down.png"), full_page=True)

        async with relay_back(world, tmp_path, origin):
            await status.filter(has_text="Sent: the relay stored it.").wait_for(
                timeout=seconds(60) * 1000)
            await consult.locator(".message.mine .meta", has_text="· sent").wait_for()
            assert await consult.locator(".meta.kept").count() == 0
            got = await arrived(events)
            assert got.body.subject == SUBJECT
            assert await stored(world) == 1
            assert [n for n in await vault_names(page) if n.startswith("outbox:")] == []
            await page.screenshot(path=str(SHOTS / "35-consult-kept-relay-back-sent.png"),
                                  full_page=True)
        # Chromium logs the refused connections itself; nothing else.
        assert [p for p in problems if "net::ERR_CONNECTION_REFUSED" not in p
                and "WebSocket connection to" not in p] == []


async def test_a_consult_kept_while_the_relay_is_down_goes_after_the_app_is_reopened(
        phone: tuple[World, str], tmp_path: Path) -> None:
    """Closed with the consult kept, opened and unlocked while the relay is still down: the
    consult is there, sending; the relay comes back and it goes by itself, stored once."""
    world, origin = phone
    async with enrolled_phone(world, tmp_path, origin) as (_i, _s, events, page, _problems):
        await relay_stopped(world, page)
        await write_consult(page)
        await page.locator("#send-status", has_text="Not sent yet").wait_for()
        context = page.context
        await page.close()  # the app is closed (killed) with the consult kept

        again = await context.new_page()
        await again.goto(origin)
        await again.fill("#passphrase", PASSPHRASE)
        await again.tap("#unlock")
        consult = again.locator(".thread", has_text=SUBJECT)
        await consult.locator(".message.mine .meta", has_text="sending").wait_for()
        assert await consult.locator(".meta.kept").inner_text() == KEPT_NOTE
        assert await again.text_content("#conn") == "offline"
        await again.screenshot(path=str(SHOTS / "36-consult-kept-reopened-relay-down.png"),
                               full_page=True)

        async with relay_back(world, tmp_path, origin):
            await consult.locator(".message.mine .meta", has_text="· sent").wait_for(
                timeout=seconds(60) * 1000)
            await again.locator("#conn", has_text="connected").wait_for()
            got = await arrived(events)
            assert got.body.subject == SUBJECT
            # Once: a second unlock sends nothing more.
            await again.tap("#lock")
            await again.fill("#passphrase", PASSPHRASE)
            await again.tap("#unlock")
            await again.locator("#conn", has_text="connected").wait_for()
            await again.wait_for_timeout(1000)
            assert await stored(world) == 1


async def test_a_consult_kept_while_the_relay_is_down_then_refused_is_marked_not_sent(
        phone: tuple[World, str], tmp_path: Path) -> None:
    """Written to a role nobody can receive for: once the relay is back it refuses it for
    good, and the consult says *not sent* with why, as any refused consult."""
    world, origin = phone
    async with enrolled_phone(world, tmp_path, origin) as (_i, _s, _events, page, _problems):
        await relay_stopped(world, page)
        await write_consult(page, role="dermatology_oncall")
        status = page.locator("#send-status")
        await status.filter(has_text="Not sent yet").wait_for()
        async with relay_back(world, tmp_path, origin):
            consult = page.locator(".thread", has_text=SUBJECT)
            await consult.locator(".message.mine .meta", has_text="not sent").wait_for(
                timeout=seconds(60) * 1000)
            said = await consult.locator(".meta.not-sent").inner_text()
            assert said.startswith("Not sent: "), said
            assert "nothing is lost" not in said.lower()
            # The line that said "not sent yet" no longer does.
            assert (await status.inner_text()).startswith("Not sent: ")
            assert await consult.locator(".meta.kept").count() == 0
            assert [n for n in await vault_names(page) if n.startswith("outbox:")] == []
            assert await stored(world) == 0
            await page.screenshot(path=str(SHOTS / "37-consult-kept-then-refused.png"),
                                  full_page=True)


PHOTO_NOT_KEPT = ("The relay cannot be reached, so the photo was not sent, and the app does not "
                  "keep it yet: it stays on this screen until you send it or the app locks. "
                  "Send it again once the bar at the top says connected.")


async def test_a_photo_the_relay_cannot_take_yet_is_not_said_safe(
        phone: tuple[World, str], tmp_path: Path) -> None:
    world, origin = phone
    video = still_video(tmp_path / "film.y4m", film(1280, 960), size=(1280, 960))
    async with intern_and_specialist(world, tmp_path) as (intern, _s, _events), \
            phone_page(video=video) as (page, problems):
        await enrol_by_code(page, origin, intern.code)
        await relay_stopped(world, page)
        await photo_with_consent(page)
        await page.fill("#patient-name", "Doe^Jane")
        await page.fill("#patient-id", "MRN123")
        await page.fill("#img-text", "Query scaphoid.")
        await page.tap("#consent-send")
        error = page.locator("#consent-error", has_text="The relay cannot be reached")
        await error.wait_for()
        assert await error.inner_text() == PHOTO_NOT_KEPT
        assert await page.is_visible("#screen-consent")
        assert await photo_records(page) == []
        await page.screenshot(path=str(SHOTS / "42-photo-relay-down-not-kept.png"),
                              full_page=True)
        async with relay_back(world, tmp_path, origin):
            await page.locator("#conn", has_text="connected").wait_for(
                timeout=seconds(60) * 1000)
            await page.tap("#consent-send")
            await page.locator("#photo-status", has_text="Photo sent").wait_for()
        assert [p for p in problems if "net::ERR_CONNECTION_REFUSED" not in p
                and "WebSocket connection to" not in p] == []
