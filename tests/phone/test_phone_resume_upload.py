"""An upload cut by closing the app resumes, when the app is opened and unlocked again, from
the offset the relay holds (PROTOCOL §12 "Resuming"), not from zero: the photo's ciphertext
and its job were kept in the vault before the first byte left. The specialist's real SDK client
then opens the photo, consent-checked. When the resumed upload cannot be finished, the intern is
told in words what happened and what to do, never the relay's bare code: the patient withdrew
consent meanwhile (not sent, not to be sent again without new consent, erased from the phone);
the part already sent was damaged (refused for good: dropped, not retried at every
connection); the relay cannot be reached (the photo is kept and sent by itself at the next
connection). An upload the relay swept while the app was closed is uploaded again from the
start and sent. Real relay (small chunks), real Chromium; the network to the relay is held
still mid-upload, then the page is closed."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest

from clients.sdk.client import ImageEvent, MessageEvent
from server.attachments import AttachmentLimits, AttachmentService
from server.blobs import PostgresBlobStore
from server.db import Database
from tests.helpers import page_problems
from tests.identity_world import World
from tests.phone.phone_world import (
    PASSPHRASE,
    SHOTS,
    axe_violations,
    consent_of,
    enrol_by_code,
    enrolled_phone,
    film,
    intern_and_specialist,
    next_event,
    phone_page,
    photo_consult,
    photo_from_phone,
    photo_records,
    still_video,
    stored_under,
    vault_names,
)

CHUNK = 16 * 1024
TEXT = "Query scaphoid fracture, film attached."
CUT_OFF = "The photo upload that was cut off when the app closed"
CUT_BY_CONNECTION = "The photo upload that was cut off when the connection to the relay was lost"


@pytest.fixture
def phone_settings() -> dict[str, Any]:
    return {"autolock_seconds": 600, "attachment_chunk_bytes": CHUNK}


def offset_of(url: str) -> int:
    return int(parse_qs(urlparse(url).query)["offset"][0])


@dataclasses.dataclass
class CutOff:
    """The world after the app was closed mid-upload: the phone's next page (not yet opened),
    its problems, the intern and the specialist's events."""

    world: World
    origin: str
    page: Any
    problems: list[str]
    intern_id: str
    events: asyncio.Queue[Any]
    specialist: Any


@contextlib.asynccontextmanager
async def cut_off_upload(phone: tuple[World, str], tmp_path: Path) -> AsyncIterator[CutOff]:
    """The intern's phone, enrolled, sends a photo of the film; the network to the relay is
    held still after three chunks and the app is closed."""
    world, origin = phone
    video = still_video(tmp_path / "film.y4m", film(1280, 960), size=(1280, 960))
    async with intern_and_specialist(world, tmp_path) as (intern, specialist, events), \
            phone_page(video=video) as (page, _problems):
        await enrol_by_code(page, origin, intern.code)
        context = page.context
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
        sending = asyncio.ensure_future(photo_from_phone(page, text=TEXT))
        await held.wait()
        sending.cancel()
        with contextlib.suppress(BaseException):
            await sending
        await page.close()  # the app is killed mid-upload
        await context.unroute_all(behavior="ignoreErrors")
        page = await context.new_page()
        yield CutOff(world, origin, page, page_problems(page), intern.user_id, events,
                     specialist)


async def open_and_unlock(page: Any, origin: str) -> None:
    await page.goto(origin)
    await page.fill("#passphrase", PASSPHRASE)
    await page.tap("#unlock")


async def test_an_upload_cut_by_closing_the_app_resumes_from_the_relays_offset(
        phone: tuple[World, str], tmp_path: Path) -> None:
    async with cut_off_upload(phone, tmp_path) as cut:
        page = cut.page
        offsets: list[int] = []
        page.on("request", lambda r: offsets.append(offset_of(r.url))
                if r.method == "PUT" and "/upload?offset=" in r.url else None)
        await open_and_unlock(page, cut.origin)
        await page.locator("#photo-status", has_text=f"{CUT_OFF} is finished: photo sent."
                           ).wait_for()
        # From where the relay stood (at least the three chunks it had), never from zero.
        assert offsets and offsets[0] >= 3 * CHUNK and 0 not in offsets, offsets
        message = await next_event(cut.events, MessageEvent, lambda e: "scaphoid" in e.body.text)
        (descriptor,) = message.body.attachments
        stored = await next_event(cut.events, ImageEvent,
                                  lambda e: e.attachment_id == descriptor.attachment_id)
        assert stored.status == "stored", stored
        assert await page.locator(".message.mine img").count() == 1
        assert hashlib.sha256(cut.specialist.client.image(descriptor.attachment_id)).digest() \
            == descriptor.sha256
        assert cut.problems == []


async def status_shown(page: Any, name: str, cut: str = CUT_OFF) -> str:
    """The photo status line once the resumed upload's outcome is on it (said of an upload
    ``cut`` off; screenshot ``name``, axe-core checked): never the relay's bare code, never a
    code in brackets."""
    status = page.locator("#photo-status", has_text=cut)
    await status.wait_for()
    SHOTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)
    assert await axe_violations(page) == []
    text: str = await status.inner_text()
    assert "_" not in text and "(" not in text, text
    return text


async def test_a_cut_off_upload_whose_consent_was_withdrawn_is_not_sent_and_says_so_in_words(
        phone: tuple[World, str], tmp_path: Path) -> None:
    async with cut_off_upload(phone, tmp_path) as cut:
        consent_id = await consent_of(cut.world, cut.intern_id)
        r = await cut.world.http.post(f"/v1/admin/consents/{consent_id}/revoke",
                                      headers=cut.world.admin_headers(),
                                      json={"reason": "the patient asked"})
        assert r.status_code == 200, r.text
        assert r.json()["withdrawn_messages"] == 0  # nothing was sent under it yet
        await open_and_unlock(cut.page, cut.origin)
        text = await status_shown(cut.page, "19-resumed-consent-withdrawn")
        assert text == (
            f"{CUT_OFF} was stopped: the patient withdrew consent. The photo was not sent, and "
            "it is gone from this phone. Do not take or send it again unless the patient gives "
            "consent again and it is recorded.")
        assert await stored_under(cut.world, consent_id) == 0
        # No job, no photo, no consult left "sending".
        assert await photo_records(cut.page) == []
        assert cut.problems == []


async def test_a_cut_off_upload_the_relay_swept_is_uploaded_again_from_the_start_and_sent(
        phone: tuple[World, str], db_dsn: str, tmp_path: Path) -> None:
    async with cut_off_upload(phone, tmp_path) as cut:
        # The app stayed closed past the relay's time for unfinished uploads: its sweep (the
        # relay's own code, on the relay's database) deletes the part already sent.
        db = Database(db_dsn, min_size=1, max_size=2)
        await db.open()
        try:
            s = cut.world.relay.relay.settings
            ttl = s.attachment_unreferenced_ttl
            sweeper = AttachmentService(db=db, blobs=PostgresBlobStore(db), limits=AttachmentLimits(
                max_bytes=s.attachment_max_bytes, chunk_bytes=CHUNK,
                quota_bytes=s.attachment_quota_bytes, unreferenced_ttl=ttl, janitor_interval=60))
            later = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=ttl + 60)
            (swept,) = await sweeper.sweep(now=later)
        finally:
            await db.close()
        page = cut.page
        puts: list[str] = []
        page.on("request", lambda r: puts.append(r.url)
                if r.method == "PUT" and "/upload?offset=" in r.url else None)
        await open_and_unlock(page, cut.origin)
        text = await status_shown(page, "20-resumed-upload-again")
        assert text == f"{CUT_OFF} is finished: photo sent."
        # A new upload, from the first byte, of the ciphertext the app kept.
        assert puts and offset_of(puts[0]) == 0 and str(swept) not in puts[0], puts
        message = await next_event(cut.events, MessageEvent, lambda e: "scaphoid" in e.body.text)
        (descriptor,) = message.body.attachments
        assert descriptor.attachment_id != str(swept)
        stored = await next_event(cut.events, ImageEvent,
                                  lambda e: e.attachment_id == descriptor.attachment_id)
        assert stored.status == "stored", stored
        assert hashlib.sha256(cut.specialist.client.image(descriptor.attachment_id)).digest() \
            == descriptor.sha256
        # The job is gone with the upload it finished: nothing resumes it again.
        assert [n for n in await vault_names(page) if n.startswith("upload:")] == []
        assert cut.problems == []


async def test_a_cut_off_upload_that_meets_no_relay_is_kept_and_sent_at_the_next_connection(
        phone: tuple[World, str], tmp_path: Path) -> None:
    async with cut_off_upload(phone, tmp_path) as cut:
        page = cut.page
        # The relay's upload cannot be reached (the websocket still can): every try fails.
        await page.context.route("**/v1/attachments/*/upload*",
                                 lambda route: route.abort("internetdisconnected"))
        await open_and_unlock(page, cut.origin)
        text = await status_shown(page, "21-resumed-upload-later")
        assert text == (
            f"{CUT_OFF} is not finished yet: the relay cannot be reached. Check the network; "
            "nothing is lost. The app keeps the photo and sends it by itself the next time it "
            "connects to the relay, at the latest when you next unlock the app.")
        assert [n for n in await vault_names(page) if n.startswith("upload:")] != []
        # The next connection (the app locked and unlocked again) finishes it, as said.
        await page.context.unroute_all(behavior="ignoreErrors")
        await page.tap("#lock")
        await page.fill("#passphrase", PASSPHRASE)
        await page.tap("#unlock")
        await page.locator("#photo-status", has_text=f"{CUT_OFF} is finished: photo sent."
                           ).wait_for()
        await next_event(cut.events, MessageEvent, lambda e: "scaphoid" in e.body.text)
        # The browser's own report of each refused request is all the console has.
        assert [p for p in cut.problems if "net::ERR_INTERNET_DISCONNECTED" not in p] == []


async def test_a_cut_off_upload_refused_for_good_is_dropped_and_says_so_in_words(
        phone: tuple[World, str], tmp_path: Path) -> None:
    async with cut_off_upload(phone, tmp_path) as cut:
        page = cut.page
        # The part already at the relay was damaged meanwhile: the finished upload's SHA-256
        # differs (hash_mismatch, HTTP 422), which no retry of the same bytes changes.
        conn = await cut.world.db()
        try:
            damaged = await conn.execute(
                'UPDATE attachment_chunks SET data = set_byte(data, 0, 255 - get_byte(data, 0)) '
                'WHERE "offset" = 0')
        finally:
            await conn.close()
        assert damaged == "UPDATE 1"
        finalised: list[str] = []
        page.on("request", lambda r: finalised.append(r.url) if r.url.endswith("/finalise")
                else None)
        await open_and_unlock(page, cut.origin)
        text = await status_shown(page, "25-resumed-upload-refused")
        assert text == (
            f"{CUT_OFF} could not be finished: the part already sent was damaged on its way to "
            "the relay. The photo was not sent, and it is gone from this phone: take it again "
            "if it is still needed.")
        # Dropped, not kept to be refused again at every connection.
        assert await photo_records(page) == []
        assert len(finalised) == 1
        await page.tap("#lock")
        await page.fill("#passphrase", PASSPHRASE)
        await page.tap("#unlock")
        await page.locator("#conn", has_text="connected").wait_for()
        assert len(finalised) == 1
        assert await stored_under(cut.world, await consent_of(cut.world, cut.intern_id)) == 0
        assert cut.problems == []


async def test_an_upload_cut_off_while_the_app_stayed_open_is_not_said_cut_by_closing_it(
        phone: tuple[World, str], tmp_path: Path) -> None:
    """The relay's upload cannot be reached while the photo goes (the app open, the websocket
    up): the photo is kept, and finished at the next connection (the app locked and unlocked,
    never closed). The line then says what cut the upload off, never that the app closed."""
    world, origin = phone
    video = still_video(tmp_path / "film.y4m", film(1280, 960), size=(1280, 960))
    async with enrolled_phone(world, tmp_path, origin, video=video) as (
            _intern, _specialist, events, page, problems):
        await page.context.route("**/v1/attachments/*/upload?offset=*",
                                 lambda route: route.abort("internetdisconnected"))
        await photo_consult(page, text=TEXT)
        await page.locator("#photo-status", has_text="Not sent yet").wait_for()
        await page.context.unroute_all(behavior="ignoreErrors")
        await page.tap("#lock")
        await page.fill("#passphrase", PASSPHRASE)
        await page.tap("#unlock")
        text = await status_shown(page, "60-resumed-upload-app-stayed-open", CUT_BY_CONNECTION)
        assert text == f"{CUT_BY_CONNECTION} is finished: photo sent."
        await next_event(events, MessageEvent, lambda e: "scaphoid" in e.body.text)
        assert [p for p in problems if "net::ERR_INTERNET_DISCONNECTED" not in p] == []
