"""The outbox survives the app being killed: a consult sealed and kept in the vault, whose
``send`` frame never reached the relay (the connection swallowed it) when the app was closed,
is sent again from the vault after the next unlock, the very bytes, and stored once
(PROTOCOL §3.5 "Outbox"). Between the phone and the relay: a TCP proxy that can stop passing
what the phone writes on its websocket connections."""

from __future__ import annotations

import asyncio
from pathlib import Path

from clients.phone.serve import PhoneConfig
from clients.sdk.client import MessageEvent
from tests.helpers import seconds
from tests.identity_world import identity_world
from tests.phone.phone_world import (
    PASSPHRASE,
    RelayProxy,
    bound_socket,
    enrol_by_code,
    listening_specialist,
    next_event,
    phone_page,
    provisioned_intern,
    running_phone,
)


async def test_a_consult_kept_in_the_outbox_is_sent_after_the_app_is_killed(
        db_dsn: str, tmp_path: Path) -> None:
    sock, port = bound_socket()
    async with identity_world(db_dsn, tmp_path,
                              phone_origins=f"http://127.0.0.1:{port}") as world:
        proxy = RelayProxy(int(world.relay.base_url.rsplit(":", 1)[1]))
        async with proxy.running() as relay_via_proxy, running_phone(
                PhoneConfig(relay_via_proxy, kdf="cheap", autolock_seconds=600), sock) as origin:
            intern = await provisioned_intern(world)
            specialist, events = await listening_specialist(world, tmp_path)
            try:
                async with phone_page() as (page, problems):
                    await enrol_by_code(page, origin, intern.code)
                    proxy.swallow = True
                    await page.fill("#text", "Pulseless foot after a fall, please call.")
                    await page.tap("#send")
                    async with asyncio.timeout(seconds(20)):
                        while not proxy.swallowed:  # the send frame went nowhere
                            await asyncio.sleep(0.05)
                    await page.close()  # the app is killed while its consult waits
                    proxy.swallow = False

                    again = await page.context.new_page()
                    await again.goto(origin)
                    await again.fill("#passphrase", PASSPHRASE)
                    await again.tap("#unlock")
                    received = await next_event(events, MessageEvent,
                                                lambda e: "Pulseless foot" in e.body.text)
                    await again.locator(".message.mine .meta", has_text="sent").wait_for()
                    assert problems == []
            finally:
                specialist.client.unsubscribe(events)
                await specialist.client.close()
            conn = await world.db()
            try:
                stored = await conn.fetchval("SELECT count(*) FROM messages")
            finally:
                await conn.close()
            assert stored == 1 and received.message.sender_user_id == intern.user_id
