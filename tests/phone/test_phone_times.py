"""Every time the phone shows is in the house format, `YYYY-MM-DD HH:MM` in the phone's zone
(clients/sdk/timefmt.py), the same string the CLI and the desktop write for the same moment;
never the browser locale's "3 Dec, 12:13". The phone here is in Europe/London, the relay's
machine in whatever zone it is: the string is computed for the phone's zone."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from clients.sdk.timefmt import format_time
from tests.identity_world import World
from tests.phone.phone_world import (
    enrolled_phone,
    sent_from_phone,
)

PHONE_ZONE = ZoneInfo("Europe/London")  # phone_page's timezone_id


@pytest.fixture
def phone_settings() -> dict[str, Any]:
    return {"autolock_seconds": 600}


async def test_message_times_on_the_phone_are_in_the_house_format(
        phone: tuple[World, str], tmp_path: Path) -> None:
    world, origin = phone
    async with enrolled_phone(world, tmp_path, origin) as (_intern, specialist, events, page,
                                                           problems):
        consult = await sent_from_phone(page, events, "Query scaphoid fracture.")
        mine = await page.locator(".message.mine .meta").first.text_content() or ""
        assert f"You · {format_time(consult.message.sent_at, tz=PHONE_ZONE)} · " in mine, mine
        sent = await specialist.client.send_text(consult.message.thread_id,
                                                 "Splint, clinic tomorrow.")
        # The phone shows the signed header's time, as every recipient holds it; the sender's
        # own vault row keeps when it wrote the message, which may fall in the next minute.
        reply = specialist.vault.message(sent.message_id)
        theirs = page.locator(".message.theirs .meta")
        await theirs.wait_for()
        assert await theirs.text_content() == (
            f"Dr Bo Ortho · {format_time(reply.header_sent_at, tz=PHONE_ZONE)}")
        for meta in await page.locator(".meta").all_text_contents():
            assert not re.search(r"\b\d{1,2} [A-Z][a-z]{2},", meta), meta
        assert problems == []
