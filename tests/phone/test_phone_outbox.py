"""The outbox survives the app being killed: a consult sealed and kept in the vault, whose
``send`` frame never reached the relay (the connection swallowed it) when the app was closed,
is sent again from the vault after the next unlock, the very bytes, and stored once
(PROTOCOL §3.5 "Outbox"); a consult kept while the phone was offline goes when it reconnects,
and the line that said "not sent yet" then says it was sent; a photo whose resend is refused
for good (its consent withdrawn meanwhile) is erased with its consult and the refusal told in
words. Between the phone and the relay: a TCP proxy that can stop passing what the phone writes
on its websocket connections, or cut them."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from clients.sdk.client import MessageEvent
from tests.helpers import page_problems, seconds
from tests.phone.phone_world import (
    PASSPHRASE,
    SHOTS,
    consent_of,
    enrol_by_code,
    enrolled_phone,
    film,
    intern_and_specialist,
    next_event,
    phone_page,
    photo_from_phone,
    photo_records,
    proxied_phone_world,
    still_video,
    stored_under,
)


async def test_a_consult_kept_in_the_outbox_is_sent_after_the_app_is_killed(
        db_dsn: str, tmp_path: Path) -> None:
    async with proxied_phone_world(db_dsn, tmp_path) as (world, origin, proxy):
        async with intern_and_specialist(world, tmp_path) as (intern, _specialist, events), \
                phone_page() as (page, problems):
            await enrol_by_code(page, origin, intern.code)
            proxy.swallow = True
            await page.fill("#text", "Pulseless foot after a fall, please call.")
            await page.tap("#send")
            async with asyncio.timeout(seconds(20)):
                while not proxy.swallowed:  # the send frame went nowhere
                    await asyncio.sleep(0.05)
            await page.close()  # the app is killed while its consult waits
            proxy.swallow = False

            again = await page.context.new_page()
            await again.goto(origin)
            await again.fill("#passphrase", PASSPHRASE)
            await again.tap("#unlock")
            received = await next_event(events, MessageEvent,
                                        lambda e: "Pulseless foot" in e.body.text)
            await again.locator(".message.mine .meta", has_text="sent").wait_for()
            assert problems == []
        conn = await world.db()
        try:
            stored = await conn.fetchval("SELECT count(*) FROM messages")
        finally:
            await conn.close()
        assert stored == 1 and received.message.sender_user_id == intern.user_id


async def test_a_consult_kept_while_the_phone_was_offline_is_said_sent_once_it_goes(
        db_dsn: str, tmp_path: Path) -> None:
    async with proxied_phone_world(db_dsn, tmp_path) as (world, origin, proxy), \
            enrolled_phone(world, tmp_path, origin) as (_intern, _s, events, page, problems):
        proxy.websockets_down()
        await page.locator("#conn", has_text="offline").wait_for()
        await page.fill("#text", "Pulseless foot after a fall, please call.")
        await page.tap("#send")
        status = page.locator("#send-status")
        await status.filter(has_text="Not sent yet").wait_for()
        assert await status.inner_text() == (
            "Not sent yet: this phone is not connected to the relay. It is kept on this phone "
            "and sent by itself as soon as the relay takes it; it shows as sent then.")
        SHOTS.mkdir(parents=True, exist_ok=True)
        await page.screenshot(path=str(SHOTS / "28-consult-kept-offline.png"), full_page=True)
        proxy.websockets_up()
        await next_event(events, MessageEvent, lambda e: "Pulseless foot" in e.body.text)
        # The line that said "not sent yet" says it went, as the consult does.
        await status.filter(has_text="Sent: the relay stored it.").wait_for()
        await page.locator(".message.mine .meta", has_text="sent").wait_for()
        await page.screenshot(path=str(SHOTS / "29-consult-kept-then-sent.png"), full_page=True)
        # Chromium logs the refused websocket upgrades itself; nothing else.
        assert [p for p in problems if "WebSocket connection to" not in p] == []


async def test_a_photo_in_the_outbox_refused_for_good_when_resent_is_erased_and_told_in_words(
        db_dsn: str, tmp_path: Path) -> None:
    video = still_video(tmp_path / "film.y4m", film(1280, 960), size=(1280, 960))
    async with proxied_phone_world(db_dsn, tmp_path) as (world, origin, proxy), \
            intern_and_specialist(world, tmp_path) as (intern, _s, _e), \
            phone_page(video=video) as (page, _problems):
        await enrol_by_code(page, origin, intern.code)
        # The photo is uploaded and sealed; its send frame goes nowhere; the app is killed.
        proxy.swallow = True
        sending = asyncio.ensure_future(photo_from_phone(page, text="Query scaphoid."))
        async with asyncio.timeout(seconds(30)):
            while not proxy.swallowed:
                await asyncio.sleep(0.05)
        sending.cancel()
        with contextlib.suppress(BaseException):
            await sending
        await page.close()
        proxy.swallow = False
        # The patient withdraws consent meanwhile: the resend is refused for good.
        consent_id = await consent_of(world, intern.user_id)
        r = await world.http.post(f"/v1/admin/consents/{consent_id}/revoke",
                                  headers=world.admin_headers(),
                                  json={"reason": "the patient asked"})
        assert r.status_code == 200, r.text
        again = await page.context.new_page()
        problems = page_problems(again)
        await again.goto(origin)
        await again.fill("#passphrase", PASSPHRASE)
        await again.tap("#unlock")
        said = again.locator("#send-status", has_text="The patient withdrew consent")
        await said.wait_for()
        assert await said.inner_text() == (
            "The patient withdrew consent, so the relay refused the photo: it was not sent. "
            "Do not send it again unless the patient gives consent again and it is recorded.")
        # Neither the photo nor a consult "sending" stays on the phone.
        assert await photo_records(again) == []
        assert await stored_under(world, consent_id) == 0
        assert problems == []
