"""The desktop page shows, under a consult, that nobody is on call for its role and when the
next shift starts (the relay's ``no_shift`` step, docs/PROTOCOL.md §16.4), at once and at each
reminder, and that no shift is on the rota yet when the relay names none. Real Chromium, real
desktop client; the steps come as the relay's notices."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from clients.sdk.timefmt import format_time
from protocol.frames import EscalationKind, EscalationNotice
from tests.clients import test_desktop
from tests.clients.test_desktop import (
    browser_page,
    desktop_team,
    unlock_page,
    urgent_consult_open,
)
from tests.identity_world import World
from tests.orthanc import OrthancServer

pytestmark = test_desktop.DESKTOP_WORLD  # the same relay as the desktop's own tests


async def test_the_page_says_nobody_is_on_call_and_when_the_next_shift_starts(
        world: World, tmp_path: Path, orthanc: OrthancServer) -> None:
    async with desktop_team(world, tmp_path, orthanc) as team, \
            browser_page() as (page, problems):
        await unlock_page(page, team.desktop)
        thread, sent, _ = await urgent_consult_open(page, team, "Knee, hot and swollen",
                                                    "Knee in a gap")
        client = team.desktop.client
        assert client is not None
        at = int(dt.datetime.now(dt.UTC).timestamp())
        starts = at + 3600
        for step, nxt in ((1, None), (2, starts)):
            await client.notices.handle(EscalationNotice(
                thread_id=thread.thread_id, message_id=sent.message_id, step=step, level=0,
                user_id=team.intern.user_id, at=at + step, kind=EscalationKind.NO_SHIFT,
                next_shift_at=nxt))
        lines = page.locator(".message .escalation li")
        await lines.nth(1).wait_for()
        texts = await lines.all_inner_texts()
        assert texts[0].startswith(
            "No one is on call for the role now; no later shift is on the rota yet: it goes to "
            "the next shift IT adds (step 1, "), texts
        assert texts[1].startswith(
            "Still no one on call for the role: reminded; it goes to the next shift when that "
            f"starts at {format_time(starts)} (step 2, "), texts
    assert not problems, problems
