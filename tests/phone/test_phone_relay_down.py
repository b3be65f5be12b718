"""A consult written while the relay is down (its process stopped, as by SIGTERM) is kept: the
phone cannot make its thread or fetch its recipients' keys to seal it, so it keeps the consult
as written in the vault (sealed at rest like every record), shows it in its thread marked
*sending* with the *Not sent yet* line, and seals and sends it by itself once the relay is
back, once (one message id), also after the app was closed and unlocked again while the relay
was still down; a refusal for good then is shown as any refusal is (USER_GUIDE "Interns: the
phone app", step 4). A photo consult photographed and consented there is kept the same way,
encrypted, with the patient's signed consent (a photo added to a consult:
test_phone_added_photo_offline.py). A consult only kept or refused offers no reply: nothing
of it is on the relay. Real relay, stopped and started again on its port; real Chromium."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from clients.sdk.client import ImageEvent, MessageEvent
from tests.helpers import seconds
from tests.identity_world import User, World
from tests.phone.phone_world import (
    PASSPHRASE,
    PHOTO_KEPT_NOTE,
    SHOTS,
    axe_violations,
    beyond_refused,
    enrolled_phone,
    fetch_value,
    film,
    idb_records,
    next_event,
    photo_consult,
    photo_records,
    photo_shown_kept,
    relay_back,
    relay_stopped,
    still_video,
    vault_names,
)

SUBJECT = "Wrist, bay 6"
TEXT = "Fell on outstretched hand, snuffbox tender, first film normal. Scaphoid views?"
KEPT = ("Not sent yet: this phone is not connected to the relay. It is kept on this phone and "
        "sent by itself as soon as the relay takes it; it shows as sent then.")
KEPT_NOTE = KEPT  # under the consult in its thread: the same sentence as under the form


@pytest.fixture
def phone_settings() -> dict[str, Any]:
    return {"autolock_seconds": 600}


async def reopened_while_down(page: Any, origin: str, subject: str, note: str, shot: str, *,
                              script: str | None = None) -> tuple[Any, Any]:
    """The app closed (killed) with a consult kept, opened and unlocked while the relay is still
    down (``script``: run in every page of the app from then on): the consult is there, marked
    sending with ``note`` (screenshot ``shot``). Returns the new page and the consult."""
    context = page.context
    if script is not None:
        await context.add_init_script(script)
    await page.close()
    again = await context.new_page()
    await again.goto(origin)
    await again.fill("#passphrase", PASSPHRASE)
    await again.tap("#unlock")
    consult = again.locator(".thread", has_text=subject)
    await consult.locator(".message.mine .meta", has_text="sending").wait_for()
    assert await consult.locator(".meta.kept").inner_text() == note
    assert await again.text_content("#conn") == "offline"
    await again.screenshot(path=str(SHOTS / f"{shot}.png"), full_page=True)
    return again, consult


async def unlocked_again(page: Any) -> None:
    """Locked and unlocked again, connected, a moment for anything kept to go (none should)."""
    await page.tap("#lock")
    await page.fill("#passphrase", PASSPHRASE)
    await page.tap("#unlock")
    await page.locator("#conn", has_text="connected").wait_for()
    await page.wait_for_timeout(1000)


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
        # Nothing of it is on the relay yet: nothing to reply to, nor to add a photo to.
        assert await consult.locator(".open").count() == 0
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
            assert await consult.locator(".open").inner_text() == "Reply or add a photo"
            got = await arrived(events)
            assert got.body.subject == SUBJECT
            assert await stored(world) == 1
            assert [n for n in await vault_names(page) if n.startswith("outbox:")] == []
            await page.screenshot(path=str(SHOTS / "35-consult-kept-relay-back-sent.png"),
                                  full_page=True)
        assert beyond_refused(problems) == []


async def test_a_consult_kept_while_the_relay_is_down_goes_after_the_app_is_reopened(
        phone: tuple[World, str], tmp_path: Path) -> None:
    """Closed with the consult kept, opened and unlocked while the relay is still down: the
    consult is there, sending; the relay comes back and it goes by itself, stored once."""
    world, origin = phone
    async with enrolled_phone(world, tmp_path, origin) as (_i, _s, events, page, _problems):
        await relay_stopped(world, page)
        await write_consult(page)
        await page.locator("#send-status", has_text="Not sent yet").wait_for()
        again, consult = await reopened_while_down(page, origin, SUBJECT, KEPT_NOTE,
                                                   "36-consult-kept-reopened-relay-down")

        async with relay_back(world, tmp_path, origin):
            await consult.locator(".message.mine .meta", has_text="· sent").wait_for(
                timeout=seconds(60) * 1000)
            await again.locator("#conn", has_text="connected").wait_for()
            got = await arrived(events)
            assert got.body.subject == SUBJECT
            # Once: a second unlock sends nothing more.
            await unlocked_again(again)
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
            assert await consult.locator(".open").count() == 0  # never on the relay
            assert [n for n in await vault_names(page) if n.startswith("outbox:")] == []
            assert await stored(world) == 0
            await page.screenshot(path=str(SHOTS / "37-consult-kept-then-refused.png"),
                                  full_page=True)


PHOTO_SUBJECT = "Wrist film, bay 6"
PHOTO_TEXT = "Query scaphoid fracture, film attached."
NOT_FOR_DIRECT_CARE = (
    "Not sent: the patient's consent does not name direct care, which a consult is for. If the "
    "patient agrees to it, tick Direct care and record their decision again.")
# Every photo the page shows is made a blob first: kept here, to read the bytes the phone holds.
BLOBS = "(() => { const made = URL.createObjectURL; window.__blobs = [];" \
        " URL.createObjectURL = (b) => { window.__blobs.push(b); return made.call(URL, b); }; })()"


@contextlib.asynccontextmanager
async def photo_kept(phone: tuple[World, str], tmp_path: Path, *, teaching_only: bool = False
                     ) -> AsyncIterator[tuple[User, Any, asyncio.Queue[Any], Any, list[str]]]:
    """The intern's phone, enrolled; the relay stops; a photo consult is photographed,
    consented and sent from the phone, which keeps it: yields the intern, the specialist, his
    events, the page and its problems."""
    world, origin = phone
    video = still_video(tmp_path / "film.y4m", film(1280, 960), size=(1280, 960))
    async with enrolled_phone(world, tmp_path, origin, video=video) as (
            intern, specialist, events, page, problems):
        await relay_stopped(world, page)
        await photo_consult(page, text=PHOTO_TEXT, subject=PHOTO_SUBJECT,
                            teaching_only=teaching_only)
        await page.locator("#photo-status", has_text="Not sent yet").wait_for()
        yield intern, specialist, events, page, problems


async def attachments(world: World) -> int:
    count: int = await fetch_value(world, "SELECT count(*) FROM attachments")
    return count


async def photo_arrived(specialist: Any, events: asyncio.Queue[Any]) -> bytes:
    """The photo consult at the specialist's device, its image stored and opened (his client
    checks it against its consent): the image's bytes."""
    async with asyncio.timeout(seconds(60)):
        while True:
            got = await events.get()
            if isinstance(got, MessageEvent) and PHOTO_TEXT in got.body.text:
                break
    assert got.body.subject == PHOTO_SUBJECT
    (descriptor,) = got.body.attachments
    stored = await next_event(events, ImageEvent,
                              lambda e: e.attachment_id == descriptor.attachment_id)
    assert stored.status == "stored", stored
    jpeg: bytes = specialist.client.image(descriptor.attachment_id)
    assert jpeg[:2] == b"\xff\xd8" and hashlib.sha256(jpeg).digest() == descriptor.sha256
    return jpeg


async def test_a_photo_consult_finished_while_the_relay_is_down_is_kept_then_sent_once(
        phone: tuple[World, str], tmp_path: Path) -> None:
    world, origin = phone
    async with photo_kept(phone, tmp_path) as (_i, specialist, events, page, problems):
        status = page.locator("#photo-status")
        # Back on the consults, in its thread, marked sending, with why.
        consult = page.locator(".thread", has_text=PHOTO_SUBJECT)
        await photo_shown_kept(page, status, "#screen-home", consult.locator(".message.mine"))
        # Kept in the vault (one outbox record, the photo in it), sealed at rest.
        kept = [n for n in await vault_names(page) if n.startswith("outbox:")]
        assert len(kept) == 1 and await photo_records(page) == sorted(
            [*kept, *[n for n in await vault_names(page) if n.startswith("thread:")]])
        while_kept = await idb_records(page)
        assert max(len(r) for r in while_kept) > 50_000  # the photo is there, encrypted
        assert not any(PHOTO_TEXT.encode() in r or PHOTO_SUBJECT.encode() in r or b"MRN123" in r
                       for r in while_kept)
        SHOTS.mkdir(parents=True, exist_ok=True)
        await page.screenshot(path=str(SHOTS / "49-photo-kept-relay-down.png"), full_page=True)
        assert await axe_violations(page) == []

        async with relay_back(world, tmp_path, origin):
            await status.filter(has_text="Photo sent: the relay stored it.").wait_for(
                timeout=seconds(60) * 1000)
            await consult.locator(".message.mine .meta", has_text="· sent").wait_for()
            assert await consult.locator(".meta.kept").count() == 0
            await consult.locator(".message.mine img").wait_for()
            jpeg = await photo_arrived(specialist, events)
            # Never in clear on the phone while it was kept.
            assert not any(jpeg[200:264] in r or jpeg[-64:] in r for r in while_kept)
            # Once: one message, one upload.
            assert await stored(world) == 1 and await attachments(world) == 1
            names = await vault_names(page)
            assert not [n for n in names if n.split(":")[0] in ("outbox", "upload", "photo")]
            await page.screenshot(path=str(SHOTS / "50-photo-kept-relay-back-sent.png"),
                                  full_page=True)
        assert beyond_refused(problems) == []


async def test_a_photo_kept_while_the_relay_is_down_goes_after_the_app_is_reopened(
        phone: tuple[World, str], tmp_path: Path) -> None:
    """Closed with the photo kept, opened and unlocked while the relay is still down: the
    consult is there, sending; the relay comes back and it goes by itself, once, the image
    byte for byte the one the phone kept."""
    world, origin = phone
    async with photo_kept(phone, tmp_path) as (_i, specialist, events, page, _problems):
        again, consult = await reopened_while_down(page, origin, PHOTO_SUBJECT, PHOTO_KEPT_NOTE,
                                                   "51-photo-kept-reopened-relay-down",
                                                   script=BLOBS)

        async with relay_back(world, tmp_path, origin):
            await consult.locator(".message.mine .meta", has_text="· sent").wait_for(
                timeout=seconds(60) * 1000)
            await consult.locator(".message.mine img").wait_for()
            jpeg = await photo_arrived(specialist, events)
            shown: list[str] = await again.evaluate(
                "async () => Promise.all(window.__blobs.map(async (b) => {"
                " let s = ''; for (const c of new Uint8Array(await b.arrayBuffer()))"
                " s += String.fromCharCode(c); return btoa(s); }))")
            assert jpeg in [base64.b64decode(b) for b in shown]
            # Once: a second unlock sends nothing more.
            await unlocked_again(again)
            assert await stored(world) == 1 and await attachments(world) == 1


async def test_a_photo_kept_while_the_relay_is_down_then_refused_can_be_sent_again(
        phone: tuple[World, str], tmp_path: Path) -> None:
    """Its consent names teaching only: once back, the relay registers the consent, then
    refuses the consult under it for good. The consult says *not sent* with why, as the
    consent screen does, and the photo stays kept for *Send the photo again*, which opens the
    consent screen with it and the form as recorded; with Direct care ticked (a new decision),
    it is sent. The relay's consent check is the relay's: nothing is sent without it."""
    world, origin = phone
    async with photo_kept(phone, tmp_path, teaching_only=True) as (
            _i, specialist, events, page, problems):
        async with relay_back(world, tmp_path, origin):
            consult = page.locator(".thread", has_text=PHOTO_SUBJECT)
            await consult.locator(".message.mine .meta", has_text="not sent").wait_for(
                timeout=seconds(60) * 1000)
            assert await consult.locator(".meta.not-sent").inner_text() == NOT_FOR_DIRECT_CARE
            assert await page.inner_text("#photo-status") == NOT_FOR_DIRECT_CARE
            assert await page.inner_text("#send-status") == ""  # said once, where it belongs
            # Still on the phone, shown in its consult, to send again.
            await consult.locator(".message.mine img").wait_for()
            assert await stored(world) == 0
            assert len([n for n in await vault_names(page) if n.startswith("photo:")]) == 1
            await page.screenshot(path=str(SHOTS / "52-photo-kept-then-refused.png"),
                                  full_page=True)
            assert await axe_violations(page) == []

            await consult.locator("button.send-again").tap()
            await page.locator("#screen-consent").wait_for()
            button = page.locator("#consent-send")
            assert await button.inner_text() == "Send the photo again"
            assert await page.input_value("#img-subject") == PHOTO_SUBJECT
            assert await page.input_value("#patient-id") == "MRN123"
            assert await page.is_checked("#p-teaching") and not await page.is_checked("#p-direct")
            await page.screenshot(path=str(SHOTS / "53-photo-kept-send-again.png"),
                                  full_page=True)
            await page.check("#p-direct")
            assert await button.inner_text() == "Record the decision and send"
            await button.tap()
            await page.locator("#photo-status", has_text="Photo sent").wait_for()
            await photo_arrived(specialist, events)
            assert await stored(world) == 1
            # The refused one is gone with its record: one consult, sent.
            assert await consult.count() == 1
            assert [n for n in await vault_names(page) if n.startswith("photo:")] == []
        assert beyond_refused(problems) == []


async def test_a_photo_kept_on_a_phone_revoked_with_wipe_is_erased_never_sent(
        phone: tuple[World, str], tmp_path: Path) -> None:
    """The phone is lost with the photo kept and the app closed; IT revokes it with wipe order
    (USER_GUIDE "A lost phone") once the relay is back. Whoever unlocks it next: the vault is
    erased, the kept photo with it, and the photo never reaches the relay."""
    world, origin = phone
    async with photo_kept(phone, tmp_path) as (intern, _s, _events, page, _problems):
        context = page.context
        await page.close()
        async with relay_back(world, tmp_path, origin):
            r = await world.revoke(intern.org, 1, devices=(await world.device_of(intern.user_id),),
                                   wipe=True)
            assert r.status_code == 200, r.text
            found = await context.new_page()
            await found.goto(origin)
            assert len([n for n in await vault_names(found) if n.startswith("outbox:")]) == 1
            await found.fill("#passphrase", PASSPHRASE)
            await found.tap("#unlock")
            await found.locator("#banner", has_text="its Lightbox data has been erased").wait_for()
            assert await idb_records(found) == []
            assert await stored(world) == 0 and await attachments(world) == 0
