"""The on-call escalation steps the relay holds are shown by a desktop that was closed when they
came (docs/PROTOCOL.md §16: ``GET /v1/threads/{id}/escalations``), in a real Chromium against
a real relay: the intern sends a consult to the orthopaedic on-call role while nobody is on
call (a gap in IT's rota: the relay's ``no_shift`` step, §16.4) and the specialist's desktop is
closed; the step's notice was written to the desktop's connection as it was quit (the relay
removes a notice once written to a socket, server/store/messages.py), so it never reached the
desktop. Started again, the desktop asks the relay and shows the step under the consult.

Screenshots go to test-artefacts/desktop-escalation-restart/.
"""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

from clients.sdk.timefmt import format_time
from protocol.model import Priority
from tests.clients import test_desktop
from tests.clients.test_desktop import ORTHO, browser_page, desktop_team, unlock_page
from tests.clients.test_desktop_acknowledge import on_call_tonight
from tests.consent_world import count
from tests.helpers import ROOT
from tests.identity_world import World
from tests.orthanc import OrthancServer

SHOTS = ROOT / "test-artefacts" / "desktop-escalation-restart"

pytestmark = test_desktop.DESKTOP_WORLD  # the same relay as the desktop's own tests


async def test_a_step_that_came_while_the_desktop_was_closed_is_shown_once_it_starts(
        world: World, tmp_path: Path, orthanc: OrthancServer) -> None:
    shutil.rmtree(SHOTS, ignore_errors=True)
    SHOTS.mkdir(parents=True)
    async with desktop_team(world, tmp_path, orthanc) as team, \
            browser_page() as (page, problems):
        desktop_device = uuid.UUID(await world.device_of(team.specialist.user_id))
        await on_call_tonight(world, "ortho", starts_in=3600)  # nobody on call for an hour
        # The desktop is closed (its vault locked, not connected) when the consult is sent.
        thread = await team.intern.client.create_thread(roles=[ORTHO], priority=Priority.URGENT)
        sent = await team.intern.client.send_text(thread.thread_id, "Bay 4: hot swollen knee",
                                                  subject="Bay 4 knee")
        held = await team.intern.client.relay.thread_escalations(thread.thread_id)
        [step] = [s for e in held.escalations for s in e.steps]
        assert step.kind == "no_shift" and step.next_shift_at is not None
        # Its notice written to the desktop's socket as it was quit: the relay removed it.
        queued = ("SELECT count(*) FROM device_notices WHERE device_id = $1 "
                  "AND kind = 'escalation_notice'")
        assert await count(world, queued, desktop_device) == 1
        await world.execute("DELETE FROM device_notices WHERE device_id = $1 "
                            "AND kind = 'escalation_notice'", desktop_device)

        await unlock_page(page, team.desktop)  # started again
        await page.locator(".thread-item", has_text="Bay 4 knee").click()
        line = page.locator(f'.message[data-message-id="{sent.message_id}"] .escalation li')
        await line.wait_for()
        assert await line.inner_text() == (
            "No one is on call for the role now; it goes to the next shift when that starts "
            f"at {format_time(step.next_shift_at)} (step 1, {format_time(step.at)})")
        await page.screenshot(path=SHOTS / "01-step-shown-after-a-restart.png")
        # Noted in the vault like a step heard live: once, also for the next start.
        client = team.desktop.client
        assert client is not None
        assert [(s.kind, s.step) for s in client.escalation_steps(sent.message_id)] == [
            ("no_shift", 1)]
        await page.reload()
        await page.locator(".thread-item", has_text="Bay 4 knee").click()
        await line.wait_for()
        assert await line.count() == 1
        assert not problems, problems
