"""The outbox survives the app being killed: a consult sealed and kept in the vault, whose
``send`` frame never reached the relay (the connection swallowed it) when the app was closed,
is sent again from the vault after the next unlock, the very bytes, and stored once
(PROTOCOL §3.5 "Outbox"). Between the phone and the relay: a TCP proxy that can stop passing
what the phone writes on its websocket connections."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from clients.phone.serve import PhoneConfig
from clients.sdk.client import MessageEvent
from tests.helpers import seconds
from tests.identity_world import identity_world
from tests.phone.phone_world import (
    PASSPHRASE,
    bound_socket,
    enrol_by_code,
    listening_specialist,
    next_event,
    phone_page,
    provisioned_intern,
    running_phone,
)


class SwallowingProxy:
    """Forwards TCP to the relay; while ``swallow`` is set, bytes the phone writes on a
    websocket connection go nowhere (a connection that silently stopped delivering)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.swallow = False
        self.swallowed = 0
        self._server: asyncio.Server | None = None

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[str]:
        self._server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            self._server.close()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.port)
        websocket = False

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter,
                       from_phone: bool) -> None:
            nonlocal websocket
            with contextlib.suppress(ConnectionError):
                while data := await src.read(65536):
                    if from_phone and b"upgrade: websocket" in data.lower():
                        websocket = True
                    elif from_phone and websocket and self.swallow:
                        self.swallowed += len(data)
                        continue
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer, True), pipe(up_reader, writer, False))


async def test_a_consult_kept_in_the_outbox_is_sent_after_the_app_is_killed(
        db_dsn: str, tmp_path: Path) -> None:
    sock, port = bound_socket()
    async with identity_world(db_dsn, tmp_path,
                              phone_origins=f"http://127.0.0.1:{port}") as world:
        proxy = SwallowingProxy(int(world.relay.base_url.rsplit(":", 1)[1]))
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
