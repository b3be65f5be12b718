"""A photo added to a consult where the relay cannot be reached (the x-ray room without signal)
is kept as a new photo consult is: encrypted in the vault with the patient's consent signed on
the phone, shown *sending* in the consult with the same words, and sent by itself once the relay
is back. Its consent names who was in the consult when the phone last asked the relay (the
consult's screen asks each time it opens), and the consent screen says so; before anything is
sent the phone asks again, and if someone joined or left meanwhile nothing is sent or
registered: the consult says why, and *Send the photo again* opens the consent screen with the
people in it now, for the patient's decision anew. A consult whose people the phone never
learned keeps nothing and says so. A consult only kept or refused on the phone offers no reply
(nothing of it is on the relay), and a consult without a subject is named as the CLI and the
desktop name it. Real relay, stopped and started again on its port; real Chromium with a fake
camera; the specialist's real SDK client."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from clients.sdk.client import ImageEvent, MessageEvent
from tests.helpers import eventually, seconds
from tests.identity_world import World
from tests.phone import phone_world as pw

SUBJECT = "Wrist, bay 6"
TEXT = "Fell on outstretched hand, snuffbox tender. Scaphoid views?"
ADDED = "Scaphoid view, as asked."
PHOTO_SENT = "Photo sent: the relay stored it."
LAST_CHECKED = (
    f"Who may see it: everyone in this consult when this phone last checked (the on-call team "
    f"of {pw.ORTHO}), and the patient's record. The relay cannot be reached to check it now: if "
    "someone has joined or left by the time the photo can be sent, it is not sent, and you are "
    "asked to record the patient's decision again.")
PEOPLE_CHANGED = (
    "Not sent: the people in this consult changed since the patient agreed to share the photo "
    "with them. Tap Send the photo again to show the patient who may see it now and record "
    "their decision again.")
NOT_KNOWN = (
    "The relay cannot be reached, and this phone does not know yet who is in this consult, so "
    "the photo was not sent, and the app cannot keep it: it stays on this screen until you send "
    "it or the app locks. Send it again once the bar at the top says connected.")


@pytest.fixture
def phone_settings() -> dict[str, Any]:
    return {"autolock_seconds": 600}


@dataclass
class Consult:
    """The intern's consult, sent, and what the test drives: her page and its problems, the
    specialist, his events, the consult as he received it and as the phone lists it."""

    world: World
    origin: str
    page: Any
    problems: list[str]
    specialist: Any
    events: asyncio.Queue[Any]
    received: Any
    listed: Any


@contextlib.asynccontextmanager
async def consult_sent(phone: tuple[World, str], tmp_path: Path, *, subject: str = SUBJECT,
                       rota: bool = False) -> AsyncIterator[Consult]:
    """The intern's phone, enrolled (its fake camera on a film), sends a text consult to the
    orthopaedic role (``rota``: the role has a rota whose ladder is the specialist, so he is in
    the consult once he acknowledges it); the specialist receives it."""
    world, origin = phone
    video = pw.still_video(tmp_path / "film.y4m", pw.film(1280, 960), size=(1280, 960))
    async with pw.enrolled_phone(world, tmp_path, origin, video=video) as (
            _intern, specialist, events, page, problems):
        if rota:
            await pw.on_call_rota(world, ["ortho"])
        await page.fill("#subject", subject)
        await page.fill("#text", TEXT)
        await page.tap("#send")
        received = await pw.next_event(events, MessageEvent, lambda e: TEXT in e.body.text)
        listed = page.locator(".thread", has_text=TEXT)
        await listed.locator(".message.mine .meta", has_text="· sent").wait_for()
        yield Consult(world, origin, page, problems, specialist, events, received, listed)


async def open_consult(c: Consult) -> None:
    """The consult on its own screen, once the phone has asked the relay who is in it."""
    async with c.page.expect_response(
            lambda r: r.url.endswith("/v1/threads") and r.request.method == "GET"):
        await c.listed.locator(".open").tap()
    await c.page.locator("#screen-thread").wait_for()


async def consented(page: Any) -> None:
    """The consent screen of the photo being added, filled in for the patient."""
    await page.fill("#patient-name", "Doe^Jane")
    await page.fill("#patient-id", "MRN123")
    await page.fill("#img-text", ADDED)


@contextlib.asynccontextmanager
async def added_while_down(phone: tuple[World, str], tmp_path: Path, *, rota: bool = False
                           ) -> AsyncIterator[Consult]:
    """:func:`consult_sent`, opened on its screen; the relay stops; a photo is added to the
    consult, the consent screen naming who was in it when the phone last asked (screenshot
    54), and the phone keeps it."""
    async with consult_sent(phone, tmp_path, rota=rota) as c:
        await open_consult(c)
        await pw.relay_stopped(c.world, c.page)
        await pw.photo_with_consent(c.page, start="#thread-photo")
        who = c.page.locator("#consent-who", has_text="when this phone last checked")
        await who.wait_for()
        assert await who.inner_text() == LAST_CHECKED
        await consented(c.page)
        pw.SHOTS.mkdir(parents=True, exist_ok=True)
        await c.page.screenshot(path=str(pw.SHOTS / "54-photo-added-consent-relay-down.png"),
                                full_page=True)
        assert await pw.axe_violations(c.page) == []
        await c.page.tap("#consent-send")
        await c.page.locator("#thread-status", has_text="Not sent yet").wait_for()
        yield c


async def photo_arrived(c: Consult) -> bytes:
    """The added photo at the specialist's device, opened and consent-checked by his client."""
    got = await pw.next_event(c.events, MessageEvent, lambda e: ADDED in e.body.text)
    assert got.message.thread_id == c.received.message.thread_id
    (descriptor,) = got.body.attachments
    stored = await pw.next_event(c.events, ImageEvent,
                              lambda e: e.attachment_id == descriptor.attachment_id)
    assert stored.status == "stored", stored
    jpeg: bytes = c.specialist.client.image(descriptor.attachment_id)
    assert hashlib.sha256(jpeg).digest() == descriptor.sha256
    return jpeg


async def consents(world: World) -> list[list[list[str]]]:
    """Every consent the relay registered: whom it names ([users, roles]), oldest first."""
    named = await pw.fetch_value(
        world, "SELECT coalesce(json_agg(json_build_array(recipient_users, recipient_roles)"
        " ORDER BY registered_at), '[]')::text FROM consents")
    found: list[list[list[str]]] = json.loads(named)
    return found


async def counted(world: World, table: str) -> int:
    count: int = await pw.fetch_value(world, f"SELECT count(*) FROM {table}")
    return count


def kept_records(names: list[str]) -> list[str]:
    return [n for n in names if n.split(":")[0] in ("outbox", "upload", "photo")]


async def test_a_photo_added_to_a_consult_while_the_relay_is_down_is_kept_then_sent_once(
        phone: tuple[World, str], tmp_path: Path) -> None:
    async with added_while_down(phone, tmp_path) as c:
        page = c.page
        # Said as for a new photo consult, on the consult's screen, where the intern is back.
        status = page.locator("#thread-status")
        added = page.locator("#thread-messages .message.mine", has_text=ADDED)
        await pw.photo_shown_kept(page, status, "#screen-thread", added)
        await added.locator("img").wait_for()
        assert len([n for n in await pw.vault_names(page) if n.startswith("outbox:")]) == 1
        await page.screenshot(path=str(pw.SHOTS / "55-photo-added-kept-relay-down.png"),
                              full_page=True)
        assert await pw.axe_violations(page) == []

        async with pw.relay_back(c.world, tmp_path, c.origin):
            await status.filter(has_text=PHOTO_SENT).wait_for(timeout=seconds(60) * 1000)
            assert await status.inner_text() == PHOTO_SENT
            await added.locator(".meta", has_text="· sent").wait_for()
            assert await added.locator(".meta.kept").count() == 0
            await photo_arrived(c)
            # Its consent names who was in the consult, as the screen said: the role alone.
            assert await consents(c.world) == [[[], [pw.ORTHO]]]
            # Once: the consult and the photo, one upload.
            assert await counted(c.world, "messages") == 2
            assert await counted(c.world, "attachments") == 1
            assert kept_records(await pw.vault_names(page)) == []
            await page.screenshot(
                path=str(pw.SHOTS / "56-photo-added-kept-relay-back-sent.png"), full_page=True)
        assert pw.beyond_refused(c.problems) == []


async def test_a_photo_added_while_the_relay_is_down_to_a_consult_someone_joined_asks_again(
        phone: tuple[World, str], tmp_path: Path) -> None:
    """The specialist takes the consult on (he is in it from then on) while the phone, closed,
    still keeps the photo consented for the role alone. Unlocked again with the relay back, the
    phone sends nothing and registers nothing: the photo says the people changed, and *Send the
    photo again* shows the patient who may see it now; recorded anew, it is sent, its consent
    naming him too."""
    async with added_while_down(phone, tmp_path, rota=True) as c:
        context = c.page.context
        await c.page.close()  # the phone is put away with the photo kept
        async with pw.relay_back(c.world, tmp_path, c.origin):
            await c.specialist.client.acknowledge(c.received.message.message_id)
            ortho = await pw.fetch_value(c.world,
                                         "SELECT user_id FROM users WHERE login = 'ortho'")

            async def joined() -> bool:
                return bool(await pw.fetch_value(
                    c.world, "SELECT count(*) FROM thread_members WHERE thread_id = $1 AND "
                    "user_id = $2 AND removed_at IS NULL",
                    uuid.UUID(c.received.message.thread_id), ortho))
            assert await eventually(joined, timeout=30)

            page = await context.new_page()
            await page.goto(c.origin)
            await page.fill("#passphrase", pw.PASSPHRASE)
            await page.tap("#unlock")
            listed = page.locator(".thread", has_text=TEXT)
            added = listed.locator(".message.mine", has_text=ADDED)
            refused = added.locator(".meta.not-sent")  # "not sent yet" is no refusal
            await refused.wait_for(timeout=seconds(60) * 1000)
            assert await refused.inner_text() == PEOPLE_CHANGED
            await added.locator("img").wait_for()
            assert await consents(c.world) == []
            assert await counted(c.world, "attachments") == 0
            assert await counted(c.world, "messages") == 1
            await page.screenshot(path=str(pw.SHOTS / "57-photo-added-people-changed.png"),
                                  full_page=True)
            assert await pw.axe_violations(page) == []

            await added.locator("button.send-again").tap()
            await page.locator("#screen-consent").wait_for()
            assert await page.inner_text("#consent-target") == \
                f"This photo is added to the consult “{SUBJECT}”."
            who = page.locator("#consent-who")
            await who.locator("strong", has_text="Dr Bo Ortho").wait_for()
            assert await who.inner_text() == (
                f"Who may see it: everyone in this consult (the on-call team of {pw.ORTHO}, "
                "Dr Bo Ortho), and the patient's record.")
            # A new decision, for the people in it now: the statements are read again.
            button = page.locator("#consent-send")
            assert await button.inner_text() == "Record the decision and send"
            assert not await page.is_checked("#st-permanence")
            assert await page.input_value("#img-text") == ADDED
            assert await page.input_value("#patient-id") == "MRN123"
            await page.check("#st-permanence")
            await page.check("#st-no-effect")
            await page.screenshot(path=str(pw.SHOTS / "58-photo-added-ask-again.png"),
                                  full_page=True)
            await button.tap()
            await page.locator("#photo-status", has_text=PHOTO_SENT).wait_for()
            await photo_arrived(c)
            assert await consents(c.world) == [[[str(ortho)], [pw.ORTHO]]]
            # The refused copy is gone with its record: the consult holds the photo once, sent.
            await added.locator(".meta", has_text="· sent").wait_for()
            assert await added.count() == 1 and await listed.locator(".meta.not-sent").count() == 0
            assert kept_records(await pw.vault_names(page)) == []


async def test_a_photo_added_to_a_consult_whose_people_the_phone_never_learned_is_not_kept(
        phone: tuple[World, str], tmp_path: Path) -> None:
    """The relay stops before the consult's screen was ever opened: the phone cannot tell the
    patient who may see the photo, so it keeps nothing, and the consent screen says so (never
    "nothing is lost")."""
    async with consult_sent(phone, tmp_path) as c:
        page = c.page
        await pw.relay_stopped(c.world, page)
        await c.listed.locator(".open").tap()
        await page.locator("#screen-thread").wait_for()
        await pw.photo_with_consent(page, start="#thread-photo")
        assert await page.inner_text("#consent-who") == \
            "Who may see it: everyone in this consult, and the patient's record."
        await consented(page)
        await page.tap("#consent-send")
        error = page.locator("#consent-error", has_text="The relay cannot be reached")
        await error.wait_for()
        assert await error.inner_text() == NOT_KNOWN
        assert await page.is_visible("#screen-consent")
        assert not [n for n in await pw.vault_names(page)
                    if n.split(":")[0] in ("outbox", "upload", "photo", "image")]
        await page.screenshot(path=str(pw.SHOTS / "42-photo-relay-down-not-kept.png"),
                              full_page=True)
        assert pw.beyond_refused(c.problems) == []


async def test_a_consult_without_a_subject_is_named_as_the_cli_and_the_desktop_name_it(
        phone: tuple[World, str], tmp_path: Path) -> None:
    async with consult_sent(phone, tmp_path, subject="") as c:
        assert await c.listed.locator("h3").inner_text() == \
            f"(no subject yet) · {pw.ORTHO} · Urgent"
        await open_consult(c)
        assert await c.page.inner_text("#thread-title") == "(no subject yet)"
        await c.page.screenshot(path=str(pw.SHOTS / "59-consult-no-subject.png"),
                                full_page=True)
        assert c.problems == []
