"""Transient lines on the phone go away (USER_GUIDE "Interns: the phone app"): "Sent: the
relay stored it." after two minutes, the notice of a new message once its consult is opened,
or after five minutes. The page's clock is Playwright's (time runs, and is moved on); the relay,
the specialist's SDK client and the worker run in real time."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.identity_world import World
from tests.phone.phone_world import (
    enrol_by_code,
    intern_and_specialist,
    phone_page,
    sent_from_phone,
)

NOTICE = "New message from Dr Bo Ortho: "


@pytest.fixture
def phone_settings() -> dict[str, Any]:
    return {"autolock_seconds": 3600}  # the moved clock never locks the app


async def test_sent_lines_and_new_message_notices_go_away(
        phone: tuple[World, str], tmp_path: Path) -> None:
    world, origin = phone
    async with intern_and_specialist(world, tmp_path) as (intern, specialist, events), \
            phone_page() as (page, problems):
        await page.clock.install()
        await enrol_by_code(page, origin, intern.code)
        consult = await sent_from_phone(page, events, "Hot swollen knee, bed 12.")
        status = page.locator("#send-status")
        await status.filter(has_text="Sent: the relay stored it.").wait_for()
        await page.clock.run_for(110_000)
        assert await status.inner_text() == "Sent: the relay stored it."
        await page.clock.run_for(15_000)
        assert await status.text_content() == ""

        # A reply: its notice goes once its consult is opened.
        thread = consult.message.thread_id
        await specialist.client.send_text(thread, "Aspirate it, then call me.")
        notice = page.locator("#notice")
        await notice.filter(has_text=NOTICE + "Aspirate").wait_for()
        await page.locator("#threads .thread", has_text="Aspirate").locator(".open").tap()
        await page.locator("#screen-thread").wait_for()
        assert await notice.text_content() == ""
        await page.tap("#thread-back")

        # Another, not opened: its notice goes after five minutes.
        await specialist.client.send_text(thread, "Also: bloods.")
        await notice.filter(has_text=NOTICE + "Also").wait_for()
        await page.clock.run_for(290_000)
        assert (await notice.inner_text()).startswith(NOTICE)
        await page.clock.run_for(15_000)
        assert await notice.text_content() == ""
        assert problems == []
