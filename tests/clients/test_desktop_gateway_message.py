"""The record gateway's messages in a consult get no "I'm on it" on the desktop: its receipt
would go to the gateway, not to the consult's sender (clients/desktop/views.py
``from_gateway``). Real relay, real SDK clients, the desktop's own JSON."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.clients import test_desktop
from tests.clients.test_desktop import desktop_http, desktop_team
from tests.filing_world import enrol_gateway
from tests.helpers import eventually, seconds
from tests.identity_world import World
from tests.orthanc import OrthancServer

pytestmark = test_desktop.DESKTOP_WORLD  # the same relay as the desktop's own tests


async def test_the_gateways_message_is_marked_and_its_acknowledgement_refused(
        world: World, tmp_path: Path, orthanc: OrthancServer) -> None:
    async with desktop_team(world, tmp_path, orthanc) as team, \
            desktop_http(team.desktop) as http:
        gateway = await enrol_gateway(world, tmp_path, "gateway-b")  # its own SDK client
        await gateway.client.start(wait_connected=seconds(10))
        try:
            thread = await gateway.client.create_thread(users=[team.specialist.user_id])
            said = await gateway.client.send_text(thread.thread_id, "Not filed again.")
        finally:
            await gateway.client.close()
        messages: list[dict[str, Any]] = []

        async def shown() -> bool:
            nonlocal messages
            await http.get("/api/threads")
            r = await http.get(f"/api/threads/{thread.thread_id}")
            messages = r.json()["messages"] if r.status_code == 200 else []
            return len(messages) == 1

        await eventually(shown, timeout=30)
        assert (messages[0]["kind"], messages[0]["from_gateway"]) == ("text", True)
        r = await http.post(f"/api/messages/{said.message_id}/ack")
        assert r.status_code == 400, r.text
        assert "the record gateway's message answers a consult" in r.text
