"""The desktop client beside a ``lightbox`` command of its own profile, in a real Chromium
against a real relay (docs/USER_GUIDE.md "Specialists: the desktop client"): the relay keeps one
connection per device (docs/PROTOCOL.md §3.5), so the command takes the desktop's. The header
then says the connection is in use by another Lightbox command, never "reconnecting..." (no
loss), the command goes through, and the desktop is connected again by itself once it is done,
listing the consult the command received for the device meanwhile.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from clients.desktop.app import DesktopServer
from clients.sdk.client import MessageEvent
from protocol.model import DeviceKind
from tests.clients.test_desktop import DESKTOP_WORLD, browser_page, unlock_page
from tests.clinician_world import enrol_clinician, use_cli_profiles
from tests.clinician_world import run_cli as lightbox
from tests.helpers import seconds
from tests.identity_world import World

pytestmark = DESKTOP_WORLD

ORTHO = "orthopaedics_oncall"
PAUSED = "paused: another Lightbox command is using the connection"

# Every text the header's connection state takes, as the page shows it.
RECORD_CONN = """() => {
  window.connSeen = [document.getElementById("conn").textContent];
  new MutationObserver(() => window.connSeen.push(document.getElementById("conn").textContent))
    .observe(document.getElementById("conn"), {childList: true, characterData: true,
                                                subtree: true});
}"""


async def test_a_command_of_the_desktops_profile_pauses_it_without_reconnecting_and_it_comes_back(
        world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = use_cli_profiles(monkeypatch, tmp_path)
    intern = await enrol_clinician(world, tmp_path, "intern", display_name="Dr Ada Intern")
    ortho = await enrol_clinician(world, tmp_path, "ortho", roles=(ORTHO,),
                                  display_name="Dr Bo Ortho", vault_dir=home / "ortho",
                                  kind=DeviceKind.DESKTOP)
    ortho.vault.lock()  # the desktop opens it with the password
    desktop = DesktopServer(home / "ortho",
                            client_options={"backoff_base": 0.05, "backoff_max": 0.5})
    await desktop.start()
    try:
        await intern.client.start(wait_connected=seconds(10))
        thread = await intern.client.create_thread(users=[ortho.user_id])
        async with browser_page() as (page, problems):
            await unlock_page(page, desktop)
            await page.evaluate(RECORD_CONN)
            client = desktop.client
            assert client is not None
            events = client.subscribe()
            # `lightbox send` on the desktop's profile, while a colleague's consult arrives.
            command = asyncio.ensure_future(lightbox(
                "--profile", "ortho", "send", "--thread", thread.thread_id, "On my way"))
            await page.locator("#conn", has_text=PAUSED).wait_for()
            consult = await intern.client.send_text(thread.thread_id, "Bed 7: wrist film?")
            rc, out, err = await command
            assert rc == 0 and "sent: message" in out, err
            await page.locator("#conn", has_text="connected").wait_for(
                timeout=seconds(30) * 1000)
            async with asyncio.timeout(seconds(20)):
                while not (isinstance(event := await events.get(), MessageEvent)
                           and event.message.message_id == consult.message_id):
                    pass
            await page.locator(".thread-item").first.click()
            await page.locator(f'.message[data-message-id="{consult.message_id}"]').wait_for()
            seen = await page.evaluate("window.connSeen")
            assert problems == [], problems
    finally:
        await intern.client.close()
        intern.vault.lock()
        await desktop.stop()
    assert PAUSED in seen, seen
    assert not [text for text in seen if "reconnecting" in text], seen
    assert seen[-1] == "connected", seen
