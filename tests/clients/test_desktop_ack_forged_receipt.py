"""A relay that claims the specialist acknowledged a consult on one of her devices must show
its proof (docs/PROTOCOL.md §8, §16.6): the desktop believes a receipt of the relay's list only
when the device's signed statement says it (``LightboxClient.verified_receipts``). Here the
relay's row turns her device's real ``delivered`` receipt into an ``acknowledged`` one (what a
dishonest or broken relay could do to hide *I'm on it*): the desktop still offers *I'm on it*,
and says nothing of an acknowledgement elsewhere."""

from __future__ import annotations

import uuid
from pathlib import Path

from protocol.model import Priority
from tests.clients.test_desktop import ORTHO, browser_page, desktop_team, unlock_page
from tests.helpers import eventually, seconds
from tests.identity_world import World
from tests.orthanc import OrthancServer


async def test_a_receipt_the_relay_relabelled_does_not_hide_im_on_it(
        world: World, tmp_path: Path, orthanc: OrthancServer) -> None:
    async with desktop_team(world, tmp_path, orthanc) as team, \
            browser_page() as (page, problems):
        await unlock_page(page, team.desktop)
        thread = await team.intern.client.create_thread(roles=[ORTHO], priority=Priority.URGENT)
        sent = await team.intern.client.send_text(thread.thread_id, "Bay 4: hip pain",
                                                  subject="Bay 4 hip")
        await page.locator(".thread-item", has_text="Bay 4 hip").wait_for()
        conn = await world.db()
        try:
            async def delivered() -> int:
                return int(await conn.fetchval(
                    "SELECT count(*) FROM receipts WHERE message_id = $1 AND user_id = $2 "
                    "AND kind = 'delivered'", uuid.UUID(sent.message_id),
                    uuid.UUID(team.specialist.user_id)))
            await eventually(delivered, timeout=seconds(15))
            # The relay's row says "acknowledged"; the statement is her device's "delivered".
            await conn.execute(
                "INSERT INTO receipts (message_id, thread_id, device_id, user_id, kind, at, "
                "statement, stored_at) SELECT message_id, thread_id, device_id, user_id, "
                "'acknowledged', at, statement, stored_at FROM receipts WHERE message_id = $1 "
                "AND user_id = $2 AND kind = 'delivered'", uuid.UUID(sent.message_id),
                uuid.UUID(team.specialist.user_id))
        finally:
            await conn.close()

        await page.locator(".thread-item", has_text="Bay 4 hip").click()
        consult = page.locator(f'.message[data-message-id="{sent.message_id}"]')
        await consult.wait_for()
        await consult.locator(".ack-button").wait_for()
        assert "another of your devices" not in await consult.inner_text()
        assert problems == []
