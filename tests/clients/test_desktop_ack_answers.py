"""The specialist's "I'm on it" on the desktop, beyond the opened consult (docs/USER_GUIDE.md
"Specialists: the desktop client"), in a real Chromium against a real relay:

* the inbox marks a consult she acknowledged on another of her devices (her phone, `lightbox
  ack`), from the receipts their devices signed (never the relay's word), and only that one;
* a reminder the relay's on-call sweep sent before she acknowledged the consult then reads
  "Before you acknowledged it: reminded you", not "No acknowledgement yet";
* a refusal the relay answered on a connection that `lightbox watch` on the same profile took
  meanwhile is not lost: the desktop sends the receipt again on the connection it gets back,
  as `lightbox ack` does (clients/sdk/acking.py), and the page says what the relay answered.

Screenshots go to test-artefacts/desktop-ack-answers/.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from clients.desktop.views import ACK_UNANSWERED
from clients.sdk.timefmt import format_time
from protocol.model import Priority
from tests.clients import test_desktop as desk
from tests.clients.test_desktop import ORTHO, browser_page, desktop_team, unlock_page
from tests.clients.test_desktop_acknowledge import on_call_tonight
from tests.clients.test_unread_own_devices import link_desktop
from tests.clients.test_watch_beside_commands import Watch
from tests.clinician_world import enrol_clinician, lightbox_process, use_cli_profiles
from tests.helpers import ROOT, eventually, seconds
from tests.identity_world import PASSWORD, World
from tests.orthanc import OrthancServer

SHOTS = ROOT / "test-artefacts" / "desktop-ack-answers"

# The desktop's relay (tests/clients/test_desktop.py), its on-call sweep run often: a reminder
# falls due as soon as the test moves the relay's clock on.
pytestmark = pytest.mark.world(attachment_chunk_bytes=64 * 1024, expiry_grace=3,
                               expiry_sweep_interval=0.5, oncall_sweep_interval=0.1)


async def shot(page: Any, name: str) -> None:
    """A screenshot of the page, over the one of the last run (the tests may run at once, in
    two processes: none empties the folder)."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=SHOTS / name)


async def test_the_inbox_marks_a_consult_acknowledged_on_her_other_device(
        world: World, tmp_path: Path, orthanc: OrthancServer) -> None:
    async with desktop_team(world, tmp_path, orthanc) as team, \
            browser_page() as (page, problems):
        # The specialist links a phone from the desktop's profile, before unlocking the desktop.
        team.specialist.vault.unlock(PASSWORD)
        try:
            phone = await link_desktop(world, team.specialist, tmp_path / "phone")
        finally:
            team.specialist.vault.lock()
        await phone.start(wait_connected=seconds(10))
        try:
            await unlock_page(page, team.desktop)
            intern = team.intern.client
            acked = await intern.create_thread(roles=[ORTHO], priority=Priority.URGENT)
            sent = await intern.send_text(acked.thread_id, "Bay 2: open tib fib",
                                          subject="Bay 2 tib fib")
            await page.locator(".thread-item", has_text="Bay 2 tib fib").wait_for()
            await phone.wait_synced(seconds(15))
            assert await phone.acknowledge(sent.message_id, wait=seconds(10))

            async def kept() -> bool:  # the relay took it before the phone goes offline
                return any(r.kind == "acknowledged" for r in await phone.verified_receipts(
                    acked.thread_id, sent.message_id))

            await eventually(kept, timeout=15)
        finally:
            await phone.close()
        # Her phone's receipt goes to Ada, never to the desktop: the next consult lists the
        # inbox again.
        other = await intern.create_thread(roles=[ORTHO], priority=Priority.URGENT)
        await intern.send_text(other.thread_id, "Bay 5: ankle, swollen", subject="Bay 5 ankle")
        await page.locator(".thread-item", has_text="Bay 5 ankle").wait_for()

        def item(thread_id: str) -> str:
            return f'.thread-item[data-thread-id="{thread_id}"] .meta'

        marked = page.locator(item(acked.thread_id))
        await marked.filter(has_text="acknowledged").wait_for()
        assert (await marked.inner_text()).endswith(
            " - acknowledged on another of your devices")
        assert "acknowledged" not in await page.locator(item(other.thread_id)).inner_text()
        await shot(page, "01-inbox-acknowledged-on-her-phone.png")
        assert problems == []


async def test_a_reminder_before_she_acknowledged_says_so_once_she_has(
        world: World, tmp_path: Path, orthanc: OrthancServer) -> None:
    async with desktop_team(world, tmp_path, orthanc) as team, \
            browser_page() as (page, problems):
        await on_call_tonight(world, "ortho")  # Dr Bo Ortho, the desktop's specialist
        await unlock_page(page, team.desktop)
        _, sent, consult = await desk.urgent_consult_open(page, team, "Bed 3: hot swollen knee",
                                                          "Bed 3 knee")
        world.clock.advance(151)  # half the urgent deadline: the relay reminds her
        line = consult.locator(".escalation li")
        await line.filter(has_text="reminded you").wait_for()
        client = team.desktop.client
        assert client is not None
        (step,) = client.escalation_steps(sent.message_id)
        at = format_time(step.at)
        assert await line.inner_text() == f"No acknowledgement yet: reminded you (step 1, {at})"

        await consult.locator(".ack-button").click()
        await consult.locator(".ack-state").wait_for()
        await line.filter(has_text="Before you").wait_for()
        assert await line.inner_text() == (
            f"Before you acknowledged it: reminded you (step 1, {at})")
        await shot(page, "02-reminded-before-she-acknowledged.png")
        assert problems == []


REFUSED = ("Not acknowledged: the relay refused it (not_on_ladder: only someone on the "
           "consult's on-call ladder can acknowledge it). The sender has not been told you are "
           "on it: reply to tell them, or phone them.")


async def test_a_refusal_answered_while_watch_had_the_connection_is_still_said(
        world: World, tmp_path: Path, orthanc: OrthancServer,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """She is reached by name on a consult whose on-call ladder is Cy's, so the relay refuses
    her "I'm on it" (``not_on_ladder``); it is held up on that check (a lock on the table it
    reads, as a busy database holds it) while her `lightbox watch` takes the connection, so
    the refusal goes nowhere. The page says it has no answer yet, then, once the desktop has
    the connection back and has sent the receipt again, the relay's refusal."""
    home = use_cli_profiles(monkeypatch, tmp_path)
    home.mkdir()
    (home / "bo").symlink_to(tmp_path / "specialist-profile")  # `lightbox --profile bo`
    db = await world.db()
    watch: Watch | None = None
    await enrol_clinician(world, tmp_path, "ortho-primary", roles=(ORTHO,),
                          display_name="Dr Cy Primary")
    await on_call_tonight(world, "ortho-primary")  # Cy alone is on the ladder
    try:
        async with desktop_team(world, tmp_path, orthanc) as team, \
                browser_page() as (page, problems):
            await unlock_page(page, team.desktop)
            client = team.desktop.client
            assert client is not None and client.connection is not None
            thread = await team.intern.client.create_thread(
                roles=[ORTHO], users=[team.specialist.user_id], priority=Priority.URGENT)
            sent = await team.intern.client.send_text(
                thread.thread_id, "Bed 7: open tibial fracture, cold foot.",
                subject="Bed 7 tibia")
            await page.locator(".thread-item", has_text="Bed 7 tibia").click()
            consult = page.locator(f'.message[data-message-id="{sent.message_id}"]')

            held = db.transaction()
            await held.start()
            await db.execute("LOCK TABLE messages IN ACCESS EXCLUSIVE MODE")
            try:
                went = client.connection.reconnects
                await consult.locator(".ack-button").click()

                async def written() -> bool:  # the receipt went, on the desktop's connection
                    view = client.view(client.vault.message(sent.message_id))
                    return view.acknowledged_by_me and not view.acknowledgement_waiting

                await eventually(written, timeout=30)
                watch = Watch(await lightbox_process("--profile", "bo", "watch", "--timeout",
                                                     str(seconds(120))))

                async def taken() -> bool:
                    assert client.connection is not None
                    return client.connection.reconnects > went

                await eventually(taken, timeout=30)
                # No answer yet, said so; never "You acknowledged this".
                waiting = consult.locator(".ack-waiting[role=status]")
                await waiting.wait_for()
                assert await waiting.inner_text() == ACK_UNANSWERED
                assert await consult.locator(".ack-state").count() == 0
                await shot(page, "03-no-answer-yet.png")
            finally:
                await held.rollback()  # the relay checks the receipt now, and refuses it

            refused = consult.locator(".ack-problem[role=alert]")
            await refused.wait_for(timeout=seconds(60) * 1000)
            assert await refused.inner_text() == REFUSED
            assert await consult.locator(".ack-state, .ack-waiting").count() == 0
            assert await consult.locator(".ack-button").is_visible()
            assert "acknowledged" not in await page.locator(".thread-item.selected").inner_text()
            await shot(page, "04-refused-after-watch-took-the-connection.png")
            assert problems == []
    finally:
        await db.close()
        if watch is not None:
            err = await watch.stop()
            assert "Traceback" not in err, err
