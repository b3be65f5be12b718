"""The phone's websocket as the browser makes it: Chromium offers permessage-deflate (RFC 7692)
on every websocket, and the relay declines it (server/runner.py says why), so the phone's
frames travel uncompressed both ways (RFC 6455 §9.1)."""

from __future__ import annotations

import asyncio
from typing import Any

from tests.helpers import seconds
from tests.identity_world import World
from tests.phone.phone_world import phone_page

OPEN = """url => new Promise((resolve, reject) => {
  const ws = new WebSocket(url);
  ws.onopen = () => { resolve(ws.extensions); ws.close(); };
  ws.onerror = () => reject(new Error("the websocket did not open"));
})"""


async def test_the_browser_offers_compression_and_the_relay_declines_it(
        phone: tuple[World, str]) -> None:
    world, origin = phone
    async with phone_page() as (page, _):
        await page.goto(origin)
        # What Chromium itself puts in the upgrade request, seen through its DevTools protocol.
        cdp = await page.context.new_cdp_session(page)
        offered: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        cdp.on("Network.webSocketWillSendHandshakeRequest",
               lambda ev: offered.put_nowait(ev["request"]["headers"]))
        answered: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        cdp.on("Network.webSocketHandshakeResponseReceived",
               lambda ev: answered.put_nowait(ev["response"]["headers"]))
        await cdp.send("Network.enable")
        # From the app's own origin, which the relay lets call it (its connect-src).
        extensions = await page.evaluate(OPEN, world.relay.ws_url + "/v1/ws")
        request = await asyncio.wait_for(offered.get(), seconds(10))
        response = await asyncio.wait_for(answered.get(), seconds(10))
    headers = {k.lower(): v for k, v in request.items()}
    assert "permessage-deflate" in headers.get("sec-websocket-extensions", "")
    assert not any(k.lower() == "sec-websocket-extensions" for k in response)
    assert extensions == ""  # the WebSocket's own account: no extension in use
