"""``lightbox watch`` under a reply of the user's own: the receipts of the other participants
only, never the "delivered" her own other device signs of it (docs/USER_GUIDE.md "Follow
it"; the desktop lists the same, tests/clients/test_desktop_walk8_lines.py), against a real
relay and real CLI runs.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from clients.sdk.client import MessageEvent
from tests.clients.test_desktop import wait_for_event
from tests.clients.test_unread_own_devices import link_desktop
from tests.clients.test_watch_beside_commands import Watch
from tests.clinician_world import enrol_clinician, lightbox_process, use_cli_profiles
from tests.clinician_world import run_cli as lightbox
from tests.helpers import seconds
from tests.identity_world import World

ORTHO = "orthopaedics_oncall"
REPLY = "Splint it; fracture clinic tomorrow."


async def test_watch_lists_the_intern_s_receipts_of_her_reply_and_not_her_other_device_s(
        world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = use_cli_profiles(monkeypatch, tmp_path)
    ada = await enrol_clinician(world, tmp_path, "ada", display_name="Dr Ada Intern",
                                vault_dir=home / "ada")
    bea = await enrol_clinician(world, tmp_path, "bea", roles=(ORTHO,),
                                display_name="Dr Bea Ortho", vault_dir=home / "bea")
    desktop = await link_desktop(world, bea, tmp_path / "bea-desktop")  # her other device
    bea.vault.lock()  # the CLI opens it with the password
    ada_events = ada.client.subscribe()
    await ada.client.start(wait_connected=seconds(10))
    await desktop.start(wait_connected=seconds(10))
    watch = Watch(await lightbox_process("--profile", "bea", "watch",
                                         "--timeout", str(seconds(120))))
    try:
        thread = await ada.client.create_thread(roles=[ORTHO])
        await ada.client.send_text(thread.thread_id, "Bed 3: scaphoid?", subject="Bed 3 wrist")
        await watch.until("Bed 3: scaphoid?")
        rc, out, err = await lightbox("--profile", "bea", "send", "--thread", thread.thread_id,
                                      REPLY)
        assert rc == 0, err
        message_id = out.split("sent: message ", 1)[1].split()[0]
        await wait_for_event(ada_events, MessageEvent, lambda e: e.body.text == REPLY)

        async with asyncio.timeout(seconds(30)):
            while not desktop.thread_messages(thread.thread_id)[-1].body.text == REPLY:
                await asyncio.sleep(0.1)
        await ada.client.mark_read(thread.thread_id)
        await watch.until(f"Dr Ada Intern: read ({message_id[:8]})", timeout=60)
    finally:
        err = await watch.stop()
        await desktop.close()
        await ada.client.close()
    assert "Traceback" not in err, err
    receipts = [line for line in watch.lines if f"({message_id[:8]})" in line]
    assert f"    Dr Ada Intern: delivered ({message_id[:8]})" in receipts, watch.lines
    assert not [line for line in receipts if "Dr Bea Ortho" in line or "you" in line], \
        watch.lines
