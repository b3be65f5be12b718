"""The desktop's inbox row of a consult handed over at a shift change says when the consult was
sent, as its message does (docs/PROTOCOL.md §16.4; clients/sdk/handover.py ``Authorship``), not
when it was resealed: real relay, real SDK clients, the desktop's own JSON.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from protocol.frames import ResealRequest
from tests.clients import test_desktop
from tests.clients.test_desktop import desktop_http, desktop_team
from tests.helpers import eventually
from tests.identity_world import World
from tests.orthanc import OrthancServer

pytestmark = test_desktop.DESKTOP_WORLD  # the same relay as the desktop's own tests


async def test_the_inbox_row_of_a_handed_over_consult_shows_when_it_was_sent(
        world: World, tmp_path: Path, orthanc: OrthancServer) -> None:
    async with desktop_team(world, tmp_path, orthanc) as team, \
            desktop_http(team.desktop) as http:
        intern, desktop = team.intern, team.desktop
        thread = await intern.client.create_thread(users=[team.specialist.user_id])
        original = await intern.client.send_text(thread.thread_id, "Scaphoid tenderness?",
                                                 subject="Bed 2 wrist")
        messages: list[dict[str, Any]] = []

        async def holds(n: int) -> bool:
            nonlocal messages
            await http.get("/api/threads")  # the inbox read, as the page does first
            r = await http.get(f"/api/threads/{thread.thread_id}")
            messages = r.json()["messages"] if r.status_code == 200 else []
            return len(messages) == n

        await eventually(lambda: holds(1), timeout=30)
        sent_at = messages[0]["sent_at"]
        # The shift changes a quarter of an hour later: the intern's device reseals the consult
        # for the desktop (the relay's reseal_request).
        later = time.time() + 900
        intern.client.sender._clock = lambda: later  # the moment of the reseal
        assert desktop.client is not None
        await intern.client.notices.on_frame(ResealRequest(
            thread_id=thread.thread_id, message_id=original.message_id,
            devices=[desktop.client.device_id], deadline=int(later) + 600))

        async def copied() -> bool:
            assert desktop.client is not None
            return len(desktop.client.vault.messages(thread.thread_id)) == 2 and await holds(1)

        await eventually(copied, timeout=30)
        # the copy is kept, and listed with the original it copies, once (§16.4)
        assert messages[0]["sent_at"] == sent_at  # the message says when it was sent

        [row] = [t for t in (await http.get("/api/threads")).json()["threads"]
                 if t["thread_id"] == thread.thread_id]
        assert (row["last_at"], row["last_from"]) == (sent_at, "Dr Ada Intern"), row
