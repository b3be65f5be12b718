"""An upload cut by closing the app resumes, when the app is opened and unlocked again, from
the offset the relay holds (PROTOCOL §12 "Resuming"), not from zero: the photo's ciphertext
and its job were kept in the vault before the first byte left. The specialist's real SDK client
then opens the photo, consent-checked. Real relay (small chunks), real Chromium; the network
to the relay is held still mid-upload, then the page is closed."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest

from clients.sdk.client import ImageEvent, MessageEvent
from tests.identity_world import World
from tests.phone.phone_world import (
    PASSPHRASE,
    enrol_by_code,
    film,
    intern_and_specialist,
    next_event,
    phone_page,
    photo_from_phone,
    still_video,
)

CHUNK = 16 * 1024


@pytest.fixture
def phone_settings() -> dict[str, Any]:
    return {"autolock_seconds": 600, "attachment_chunk_bytes": CHUNK}


def offset_of(url: str) -> int:
    return int(parse_qs(urlparse(url).query)["offset"][0])


async def test_an_upload_cut_by_closing_the_app_resumes_from_the_relays_offset(
        phone: tuple[World, str], tmp_path: Path) -> None:
    world, origin = phone
    video = still_video(tmp_path / "film.y4m", film(1280, 960), size=(1280, 960))
    async with intern_and_specialist(world, tmp_path) as (intern, specialist, events), \
            phone_page(video=video) as (page, problems):
        context = page.context
        await enrol_by_code(page, origin, intern.code)
        held = asyncio.Event()
        never = asyncio.Event()

        async def hold_after_three_chunks(route: Any) -> None:
            if offset_of(route.request.url) < 3 * CHUNK:
                await route.continue_()
                return
            held.set()  # this chunk never reaches the relay: the app is closed meanwhile
            with contextlib.suppress(Exception):
                await never.wait()

        await context.route("**/v1/attachments/*/upload?offset=*", hold_after_three_chunks)
        sending = asyncio.ensure_future(
            photo_from_phone(page, text="Query scaphoid fracture, film attached."))
        await held.wait()
        sending.cancel()
        with contextlib.suppress(BaseException):
            await sending
        await page.close()  # the app is killed mid-upload
        await context.unroute_all(behavior="ignoreErrors")

        offsets: list[int] = []
        page = await context.new_page()
        page.on("request", lambda r: offsets.append(offset_of(r.url))
                if r.method == "PUT" and "/upload?offset=" in r.url else None)
        await page.goto(origin)
        await page.fill("#passphrase", PASSPHRASE)
        await page.tap("#unlock")
        await page.locator("#photo-status", has_text="The photo upload that was cut off when "
                           "the app closed is finished: photo sent.").wait_for()
        # From where the relay stood (at least the three chunks it had), never from zero.
        assert offsets and offsets[0] >= 3 * CHUNK and 0 not in offsets, offsets
        message = await next_event(events, MessageEvent, lambda e: "scaphoid" in e.body.text)
        (descriptor,) = message.body.attachments
        stored = await next_event(events, ImageEvent,
                                  lambda e: e.attachment_id == descriptor.attachment_id)
        assert stored.status == "stored", stored
        assert await page.locator(".message.mine img").count() == 1
        assert hashlib.sha256(specialist.client.image(descriptor.attachment_id)).digest() == \
            descriptor.sha256
        assert problems == []
