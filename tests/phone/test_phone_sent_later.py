"""A message of the intern's that waited on the phone (the relay stopped) and went more than a
minute after it was written shows, once sent, the time in its signed header, the time every
other participant and `lightbox watch` show, and when it was written: "written 07:12, sent
07:13" (USER_GUIDE "Interns: the phone app", Times; the desktop says the same). For a reply, a
new consult and a photo consult; the consults are listed by that sent time. And a reply kept
there says why in one sentence, the same under the form and under the message. Real relay,
stopped and started again on its port; real Chromium."""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from clients.sdk.client import MessageEvent
from clients.sdk.timefmt import format_time
from tests.helpers import seconds
from tests.identity_world import World
from tests.phone.phone_world import (
    SHOTS,
    enrolled_phone,
    film,
    photo_consult,
    relay_back,
    relay_stopped,
    sent_from_phone,
    still_video,
)

PHONE_ZONE = ZoneInfo("Europe/London")  # phone_page's timezone_id
FIRST = "Hot swollen knee, afebrile. Aspirate here or in clinic?"
REPLY = "Also: on warfarin, INR 2.4."
CONSULT = "Elbow, bay 2: supracondylar, radial pulse present. Reduce tonight?"
PHOTO = "Ankle film, query Weber B."
# Kept for a reply while the phone is not connected: said once, the same under the reply form
# and under the message in its consult.
REPLY_KEPT = ("Not sent yet: this phone is not connected to the relay. It is kept on this phone "
              "and sent by itself as soon as the relay takes it; it shows as sent then.")


@pytest.fixture
def phone_settings() -> dict[str, Any]:
    return {"autolock_seconds": 600}


def at(t: float) -> str:
    return format_time(t, tz=PHONE_ZONE)


async def arrived(events: asyncio.Queue[Any], texts: set[str]) -> dict[str, Any]:
    """The specialist's MessageEvent of each of ``texts``, by text."""
    got: dict[str, Any] = {}
    async with asyncio.timeout(seconds(90)):
        while set(got) != texts:
            e = await events.get()
            if isinstance(e, MessageEvent):
                for t in texts:
                    if t in e.body.text:
                        got[t] = e
    return got


async def kept_reply(page: Any, consult: Any) -> Any:
    """The reply written in ``consult`` and sent while the relay is stopped, kept: its message
    on the consult's screen (marked sending)."""
    await consult.locator(".open").tap()
    await page.locator("#screen-thread").wait_for()
    await page.fill("#reply-text", REPLY)
    await page.tap("#reply-send")
    await page.locator("#thread-status", has_text="Not sent yet").wait_for()
    mine = page.locator("#thread-messages .message.mine", has_text=REPLY)
    await mine.locator(".meta", has_text="sending").wait_for()
    return mine


async def test_a_kept_reply_says_why_in_one_sentence(
        phone: tuple[World, str], tmp_path: Path) -> None:
    """Under the reply form and under the reply in its consult, the same sentence: it said "the
    relay could not be reached" under the message and "this phone is not connected to the
    relay" under the form."""
    world, origin = phone
    async with enrolled_phone(world, tmp_path, origin) as (_i, _s, events, page, _problems):
        await sent_from_phone(page, events, FIRST)
        await relay_stopped(world, page)
        mine = await kept_reply(page, page.locator("#threads .thread", has_text=FIRST))
        assert await page.inner_text("#thread-status") == REPLY_KEPT
        assert await mine.locator(".meta.kept").inner_text() == REPLY_KEPT
        SHOTS.mkdir(parents=True, exist_ok=True)
        await page.screenshot(path=str(SHOTS / "77-reply-kept-one-sentence.png"), full_page=True)


async def test_messages_sent_minutes_after_they_were_written_say_both_times(
        phone: tuple[World, str], tmp_path: Path) -> None:
    world, origin = phone
    video = still_video(tmp_path / "film.y4m", film(1280, 960), size=(1280, 960))
    async with enrolled_phone(world, tmp_path, origin, video=video) as (
            _i, _specialist, events, page, problems):
        first = await sent_from_phone(page, events, FIRST)
        # Sent at once: its header's time only.
        knee = page.locator("#threads .thread", has_text=FIRST)
        assert (await knee.locator(".message.mine .meta").inner_text()).startswith(
            f"You · {at(first.message.header_sent_at)} · sent")

        await relay_stopped(world, page)
        written_from = time.time()
        # A reply in the first consult, kept.
        await kept_reply(page, knee)
        await page.tap("#thread-back")
        # A new consult, and a photo consult, kept too.
        await page.fill("#text", CONSULT)
        await page.tap("#send")
        await page.locator("#send-status", has_text="Not sent yet").wait_for()
        await photo_consult(page, text=PHOTO)
        await page.locator("#photo-status", has_text="Not sent yet").wait_for()
        written_to = time.time()
        # Still shown at the time each was written while it waits.
        for text in (REPLY, CONSULT, PHOTO):
            waiting = page.locator(".message.mine", has_text=text)
            meta = await waiting.locator(".meta").first.inner_text()
            assert meta.endswith(" · sending") and "written" not in meta, meta
        # More than a minute after the last was written (what is asserted below; the header's
        # time is in whole seconds): counted from the first, writing three took over two
        # seconds on a loaded machine and the last went 59.99 s after it was written.
        await asyncio.sleep(written_to + 62 - time.time())

        async with relay_back(world, tmp_path, origin):
            got = await arrived(events, {REPLY, CONSULT, PHOTO})
            for text in (REPLY, CONSULT, PHOTO):
                message = page.locator("#threads .message.mine", has_text=text)
                await message.locator(".meta", has_text="· sent").wait_for(
                    timeout=seconds(60) * 1000)
                meta = await message.locator(".meta").first.inner_text()
                header = got[text].message.header_sent_at
                assert header - written_to > 60
                # The header's time, the specialist's, and when it was written.
                found = re.fullmatch(r"You · written (.+?), sent (.+?) · sent( · .+)?", meta)
                assert found, meta
                assert found[2] == at(header), (meta, at(header))
                assert found[1] in {at(written_from), at(written_to)}, meta
            # The consults listed by when their last message was sent (every participant's
            # time), newest first.
            listed = [got[t].message.header_sent_at for t in (REPLY, CONSULT, PHOTO)]
            order = [await page.locator("#threads .thread").nth(i).inner_text()
                     for i in range(3)]
            by_list = [next(h for t, h in zip((REPLY, CONSULT, PHOTO), listed, strict=True)
                            if t in o) for o in order]
            assert by_list == sorted(by_list, reverse=True), (order, listed)
            await page.screenshot(path=str(SHOTS / "78-sent-later-written-and-sent.png"),
                                  full_page=True)
        assert [p for p in problems if "net::ERR_CONNECTION_REFUSED" not in p
                and "WebSocket connection to" not in p] == []
