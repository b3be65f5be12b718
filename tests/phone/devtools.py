"""What Chromium itself sees of the phone's websocket, which the app opens in its Web Worker.

The page's own DevTools session (``context.new_cdp_session(page)``) reports nothing of a
worker's network, and Playwright's CDP sessions cannot speak to a worker's target. So
:func:`devtools_phone_page` opens the phone-sized page of :func:`phone_world.phone_page` in a
Chromium that also listens for the DevTools protocol on a loopback port, and a second client
of ours on that port attaches to every worker of the page (``Target.setAutoAttach``, flat
sessions) and records, through each worker's ``Network`` domain, the websocket upgrade
request and answer headers and every message Chromium received (``webSocketFrameReceived``).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import pytest
import websockets

from tests.browser import MISSING
from tests.helpers import page_problems, seconds
from tests.phone.phone_world import ARGS, CHROMIUM, PHONE_VIEWPORT

__all__ = ["WorkerSockets", "carried", "devtools_phone_page"]


@dataclass
class WorkerSockets:
    """The websockets of the page's workers as Chromium reports them, in order."""

    requests: list[dict[str, str]] = field(default_factory=list)
    """Each upgrade request's headers (names lower-cased)."""
    answers: list[dict[str, str]] = field(default_factory=list)
    """Each upgrade answer's headers (names lower-cased)."""
    received: list[bytes] = field(default_factory=list)
    """The payload of every binary websocket message received, on any of them."""


def carried(message: bytes) -> tuple[bool, list[str]]:
    """Whether one websocket message is a ``bundle``, and the frame types it carries: ``[t]``
    for a frame alone, its entries' types for a bundle (read with plain MessagePack, not with
    the strict codec under test)."""
    decoded = msgspec.msgpack.decode(message)
    if decoded.get("t") == "bundle":
        return True, [str(msgspec.msgpack.decode(entry)["t"]) for entry in decoded["frames"]]
    return False, [str(decoded["t"])]


class _Devtools:
    """A minimal DevTools protocol client (flat sessions) on the browser's endpoint."""

    def __init__(self, ws: Any, sockets: WorkerSockets) -> None:
        self._ws = ws
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.sockets = sockets

    async def call(self, method: str, params: dict[str, Any] | None = None,
                   session: str | None = None) -> dict[str, Any]:
        msg_id = next(self._ids)
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[msg_id] = fut
        message: dict[str, Any] = {"id": msg_id, "method": method, "params": params or {}}
        if session is not None:
            message["sessionId"] = session
        await self._ws.send(json.dumps(message))
        answer = await asyncio.wait_for(fut, seconds(10))
        assert "error" not in answer, (method, answer)
        result: dict[str, Any] = answer.get("result", {})
        return result

    async def read(self) -> None:
        async for raw in self._ws:
            message = json.loads(raw)
            if "id" in message:
                fut = self._waiting.pop(message["id"], None)
                if fut is not None and not fut.done():
                    fut.set_result(message)
                continue
            method, params = message.get("method"), message.get("params", {})
            if method == "Target.attachedToTarget":
                # Every worker of the page as it starts (and the ones already running): its
                # network is recorded from here on. Not awaited here: the answers come
                # through this very loop.
                child = params["sessionId"]
                asyncio.get_running_loop().create_task(self._watch(
                    child, params["targetInfo"]["type"], params.get("waitingForDebugger")))
            elif method == "Network.webSocketWillSendHandshakeRequest":
                self.sockets.requests.append(
                    {k.lower(): v for k, v in params["request"]["headers"].items()})
            elif method == "Network.webSocketHandshakeResponseReceived":
                self.sockets.answers.append(
                    {k.lower(): v for k, v in params["response"]["headers"].items()})
            elif method == "Network.webSocketFrameReceived":
                frame = params["response"]
                if frame["opcode"] == 2:
                    self.sockets.received.append(base64.b64decode(frame["payloadData"]))

    async def _watch(self, session: str, kind: str, waiting: bool | None) -> None:
        with contextlib.suppress(Exception):  # a target that went away meanwhile
            if kind == "worker":
                await self.call("Network.enable", {}, session)
            if waiting:
                await self.call("Runtime.runIfWaitingForDebugger", {}, session)


@contextlib.asynccontextmanager
async def devtools_phone_page(tmp: Path) -> AsyncIterator[tuple[Any, list[str], WorkerSockets]]:
    """A phone-sized page as :func:`phone_world.phone_page` makes it (touch, mobile, the same
    user agent, locale and time zone), whose workers' websockets are recorded; yields the page,
    the console and page errors it reports, and the record."""
    if not os.path.exists(CHROMIUM):
        pytest.fail(MISSING, pytrace=False)
    from playwright.async_api import async_playwright
    profile = tmp / "chromium-profile"
    sockets = WorkerSockets()
    async with async_playwright() as pw:
        context = await pw.chromium.launch_persistent_context(
            str(profile), executable_path=CHROMIUM, headless=True,
            args=[*ARGS, "--remote-debugging-port=0"],  # loopback only; the port is in the profile
            viewport=PHONE_VIEWPORT, device_scale_factor=2, is_mobile=True, has_touch=True,
            locale="en-GB", timezone_id="Europe/London",
            user_agent="Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 "
                       "(KHTML, like Gecko) Chrome/120.0 Mobile Safari/537.36",
            permissions=["camera"])
        reader: asyncio.Task[None] | None = None
        try:
            page = context.pages[0] if context.pages else await context.new_page()
            page.set_default_timeout(seconds(30) * 1000)
            problems = page_problems(page)
            port, path = (profile / "DevToolsActivePort").read_text().split("\n")[:2]
            async with websockets.connect(f"ws://127.0.0.1:{port}{path}", max_size=None,
                                          compression=None) as ws:
                devtools = _Devtools(ws, sockets)
                reader = asyncio.create_task(devtools.read())
                targets = await devtools.call("Target.getTargets")
                (target,) = [t for t in targets["targetInfos"] if t["type"] == "page"]
                attached = await devtools.call("Target.attachToTarget",
                                               {"targetId": target["targetId"], "flatten": True})
                await devtools.call("Target.setAutoAttach",
                                    {"autoAttach": True, "waitForDebuggerOnStart": True,
                                     "flatten": True}, attached["sessionId"])
                yield page, problems, sockets
        finally:
            if reader is not None:
                reader.cancel()
                with contextlib.suppress(BaseException):
                    await reader
            await context.close()
