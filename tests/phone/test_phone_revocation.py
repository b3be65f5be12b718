"""The phone checks the organisation's revocation list as the Python SDK does
(clients/sdk/trust.py; PROTOCOL §4.5, §4.6): a message from a device revoked while it waited
at the relay is not shown, and the phone says who sent it, when, and in which consult (by its
subject, else by the start of its id as the CLI's line), so the reader can ask them what it
said; a relay that still offers a revoked device gets nothing sealed to
it; a relay that serves an older list than the phone holds is refused (rollback). The lying
relay is the real relay with its database edited, as a compromised relay host could. A reply
whose sender cannot be checked because the relay cannot be reached is told in words (never as
the relay's code) and shown once the next connection brings it again."""

from __future__ import annotations

import re
import time
import uuid
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from clients.sdk.timefmt import format_time
from protocol.model import Priority
from tests.identity_world import World
from tests.phone.phone_world import (
    PASSPHRASE,
    SHOTS,
    enrol_by_code,
    enrolled_phone,
    intern_and_specialist,
    phone_page,
    sent_from_phone,
)


def when(ts: float) -> str:
    """A time as the phone writes it, in its page's zone (phone_world.phone_page)."""
    return format_time(ts, tz=ZoneInfo("Europe/London"))


@pytest.fixture
def phone_settings() -> dict[str, Any]:
    return {"autolock_seconds": 600}


async def relay_edits(world: World, sql: str, *args: object) -> None:
    conn = await world.db()
    try:
        await conn.execute(sql, *args)
    finally:
        await conn.close()


async def unlock(page: Any) -> None:
    await page.tap("#lock")
    await page.locator("#screen-unlock").wait_for()
    await page.fill("#passphrase", PASSPHRASE)
    await page.tap("#unlock")
    await page.locator("#conn", has_text="connected").wait_for()


async def urgent_while_locked(world: World, page: Any, specialist: Any, thread_id: str,
                              text: str, **revocation: Any) -> set[str]:
    """With the phone locked, the specialist sends ``text`` urgent, then IT's list revokes
    ``revocation`` (devices or users), then the phone is unlocked. The times the phone may say
    the message reached the relay."""
    await page.tap("#lock")
    await page.locator("#screen-unlock").wait_for()
    sent_from = time.time()
    await specialist.client.send_text(thread_id, text, priority=Priority.URGENT)
    sent_by = time.time()
    r = await world.revoke(world.org, 1, **revocation)
    assert r.status_code == 200, r.text
    await page.fill("#passphrase", PASSPHRASE)
    await page.tap("#unlock")
    return {when(sent_from), when(sent_by)}


async def notice_time(page: Any, sentence: str) -> str:
    """The notice once it reads ``sentence`` (a pattern whose one group is a time): the time."""
    notice = page.locator("#notice", has_text=" was not shown")
    await notice.wait_for()
    said = re.fullmatch(sentence, await notice.inner_text())
    assert said, await notice.inner_text()
    return said.group(1)


async def test_a_message_from_a_device_revoked_while_it_was_queued_is_not_shown(
        phone: tuple[World, str], tmp_path: Path) -> None:
    world, origin = phone
    async with enrolled_phone(world, tmp_path, origin) as (_intern, specialist, events, page,
                                                           problems):
        consult = await sent_from_phone(page, events, "Query scaphoid fracture.")
        sent = await urgent_while_locked(
            world, page, specialist, consult.message.thread_id, "Sent before revocation.",
            devices=(specialist.client.store.state.device_id,))
        # The consult has no subject: named by the start of its id, as `lightbox` names it.
        consult_id = consult.message.thread_id[:8]
        assert await notice_time(page, rf"An urgent message in consult {consult_id} from Dr Bo "
                                       r"Ortho, sent (.+) from a device your organisation "
                                       r"revoked, was not shown: ask them what it said\.") in sent
        assert await page.locator(".message.theirs").count() == 0
        await page.screenshot(path=str(SHOTS / "33-message-from-revoked-device.png"),
                              full_page=True)
        # Dropped and acknowledged: it does not come back with the next connection.
        await page.evaluate("() => { document.getElementById('notice').textContent = ''; }")
        await unlock(page)
        await page.locator(".message.mine").wait_for()
        assert await page.text_content("#notice") == ""
        assert problems == []


async def test_a_message_from_a_colleague_suspended_while_it_was_queued_names_them(
        phone: tuple[World, str], tmp_path: Path) -> None:
    """The directory no longer names a suspended colleague; the phone names them from the
    consult's earlier message of theirs, and says the account was suspended, and the consult
    by its subject, as the phone lists it."""
    world, origin = phone
    async with enrolled_phone(world, tmp_path, origin) as (_intern, specialist, events, page,
                                                           problems):
        await page.fill("#subject", "Wrist, bay 6")
        consult = await sent_from_phone(page, events, "Query scaphoid fracture.")
        await specialist.client.send_text(consult.message.thread_id, "Looking now.")
        await page.locator(".message.theirs", has_text="Looking now.").wait_for()
        sent = await urgent_while_locked(
            world, page, specialist, consult.message.thread_id, "Sent before suspension.",
            users=(specialist.user_id,))
        assert await notice_time(page, r"An urgent message in consult \"Wrist, bay 6\" from Dr "
                                       r"Bo Ortho, sent (.+), was not shown: your organisation "
                                       r"has suspended their account\.") in sent
        await page.screenshot(path=str(SHOTS / "26-message-from-suspended-colleague.png"),
                              full_page=True)
        assert await page.locator(".message.theirs", has_text="Sent before suspension").count() == 0
        assert problems == []


async def test_a_relay_offering_a_revoked_device_gets_nothing_sealed_to_it(
        phone: tuple[World, str], tmp_path: Path) -> None:
    world, origin = phone
    async with intern_and_specialist(world, tmp_path) as (intern, specialist, _), \
            phone_page() as (page, problems):
        device = specialist.client.store.state.device_id
        r = await world.revoke(world.org, 1, devices=(device,))
        assert r.status_code == 200, r.text
        # The relay lies: the revoked device is offered again as active (its prekeys with it).
        await relay_edits(world, "UPDATE devices SET status = 'active', revoked_at = NULL "
                                 "WHERE device_id = $1", uuid.UUID(device))
        await enrol_by_code(page, origin, intern.code)
        await page.fill("#text", "Query scaphoid fracture.")
        await page.tap("#send")
        await page.locator("#send-status", has_text="The relay offered a certificate your "
                           "organisation has revoked: nothing was sent").wait_for()
        assert await page.locator(".message.mine").count() == 0
        assert problems == []


async def test_a_relay_serving_an_older_revocation_list_than_the_phone_holds_is_refused(
        phone: tuple[World, str], tmp_path: Path) -> None:
    world, origin = phone
    async with intern_and_specialist(world, tmp_path) as (intern, _, events), \
            phone_page() as (page, problems):
        other = world.org.user("gone", roles=("intern",))
        r = await world.revoke(world.org, 2, users=(other.user_id,))
        assert r.status_code == 200, r.text
        await enrol_by_code(page, origin, intern.code)
        await sent_from_phone(page, events, "First consult.")  # list 2 is now the phone's
        # The relay rolls back to list 1, which revokes nobody.
        await relay_edits(world, "UPDATE revocation_lists SET number = 1, list = $1 "
                                 "WHERE org_id = $2", world.org.revocation_list(1),
                          world.org.org_id)
        await unlock(page)
        await page.fill("#text", "Second consult.")
        await page.tap("#send")
        await page.locator("#send-status", has_text="The relay served an out-of-date or "
                           "forged revocation list").wait_for()
        assert await page.locator(".message.mine").count() == 1
        assert problems == []


async def test_a_reply_whose_sender_cannot_be_checked_yet_is_told_in_words_and_comes_again(
        phone: tuple[World, str], tmp_path: Path) -> None:
    world, origin = phone
    async with enrolled_phone(world, tmp_path, origin) as (_intern, specialist, events, page,
                                                           problems):
        consult = await sent_from_phone(page, events, "Query scaphoid fracture.")
        # The specialist's certificates cannot be fetched: the reply cannot be checked yet.
        ortho = specialist.client.store.state.user_id
        await page.context.route(f"**/v1/users/{ortho}/devices",
                                 lambda route: route.abort("internetdisconnected"))
        await specialist.client.send_text(consult.message.thread_id, "Splint, clinic tomorrow.")
        status = page.locator("#send-status", has_text="The relay cannot be reached")
        await status.wait_for()
        assert await status.inner_text() == \
            "The relay cannot be reached. Check the network; nothing is lost."
        assert await page.locator(".message.theirs").count() == 0
        # Not acknowledged: the next connection brings it again, and it is shown.
        await page.context.unroute_all(behavior="ignoreErrors")
        await unlock(page)
        await page.locator(".message.theirs", has_text="Splint, clinic tomorrow.").wait_for()
        # The browser's own report of each refused request is all the console has.
        assert [p for p in problems if "net::ERR_INTERNET_DISCONNECTED" not in p] == []
