""""I'm on it" across the specialist's own devices, in a real Chromium against a real relay
(docs/USER_GUIDE.md "Specialists"): Bea acknowledges a consult on another device of hers (her
phone, `lightbox ack`) and answers it there; her desktop then says "You acknowledged this
consult" under it instead of offering *I'm on it* again (that receipt goes to the consult's
sender, never to her desktop: the relay's escalation state says who acknowledged it), and
offers no *I'm on it* under her own reply; asked to acknowledge her own reply anyway (as a
script would), it refuses as `lightbox ack` does.

Screenshots go to test-artefacts/desktop-ack-own-devices/.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace

from clients.sdk.client import LightboxClient
from clients.sdk.profile import open_profile
from protocol.model import Priority
from tests.clients.test_desktop import (
    ORTHO,
    browser_page,
    desktop_http,
    desktop_team,
    unlock_page,
)
from tests.clients.test_unread_own_devices import link_desktop
from tests.helpers import ROOT, seconds
from tests.identity_world import PASSWORD, World
from tests.orthanc import OrthancServer

SHOTS = ROOT / "test-artefacts" / "desktop-ack-own-devices"


async def phone_linked_from_the_desktops_profile(world: World, tmp_path: Path,
                                                 folder: str) -> LightboxClient:
    """A second device of the desktop's user (tests/clients/test_desktop.py ``desktop_team``,
    profile ``specialist-profile``), linked from that profile, as `lightbox link` does; the
    profile is locked again before the desktop unlocks it."""
    opened = open_profile(tmp_path / "specialist-profile", PASSWORD)
    phone = await link_desktop(world, SimpleNamespace(  # type: ignore[arg-type]
        client=opened.client(), vault=opened.vault), tmp_path / folder)
    opened.vault.lock()
    return phone


async def test_an_acknowledgement_and_a_reply_from_her_other_device_show_as_hers(
        world: World, tmp_path: Path, orthanc: OrthancServer) -> None:
    shutil.rmtree(SHOTS, ignore_errors=True)
    SHOTS.mkdir(parents=True)
    async with desktop_team(world, tmp_path, orthanc) as team, \
            browser_page() as (page, problems):
        # Bea links her phone from the desktop's profile, before she unlocks the desktop.
        phone = await phone_linked_from_the_desktops_profile(world, tmp_path, "bea-phone")
        await phone.start(wait_connected=seconds(10))
        try:
            await unlock_page(page, team.desktop)
            thread = await team.intern.client.create_thread(roles=[ORTHO],
                                                            priority=Priority.URGENT)
            sent = await team.intern.client.send_text(thread.thread_id, "Bay 2: open tib fib",
                                                      subject="Bay 2 tib fib")
            await page.locator(".thread-item", has_text="Bay 2 tib fib").wait_for()
            await phone.wait_synced(seconds(15))
            assert await phone.acknowledge(sent.message_id, wait=seconds(10))
            reply = await phone.send_text(thread.thread_id, "Coming down now.")
        finally:
            await phone.close()

        await page.locator(".thread-item", has_text="Bay 2 tib fib").click()
        consult = page.locator(f'.message[data-message-id="{sent.message_id}"]')
        own = page.locator(f'.message[data-message-id="{reply.message_id}"]')
        await own.wait_for()
        assert await consult.locator(".ack-state").inner_text() == (
            "You acknowledged this consult (on another of your devices)")
        assert await page.locator(".ack-button").count() == 0  # nor under her own reply
        await page.screenshot(path=SHOTS / "01-acknowledged-and-answered-on-her-phone.png")

        async with desktop_http(team.desktop) as http:  # as a script would
            r = await http.post(f"/api/messages/{reply.message_id}/ack", json={})
        assert (r.status_code, r.json()["error"]) == (
            400, f"message {reply.message_id} is yours: only a consult a colleague sent you "
                 "can be acknowledged")
        assert problems == []
