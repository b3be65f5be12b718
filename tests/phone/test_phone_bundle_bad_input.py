"""A relay that sends the phone bundles it may not send (docs/PROTOCOL.md §3.6): a bundle on a
connection that did not select ``lightbox.bundle``, a bundle before ``ready``, and a bad frame
inside a bundle. The phone closes with 4000, as the Python SDK does (clients/sdk/socket.py),
handling the frames before a bad one and none after it, then reconnects. The misbehaving relay
is the real one behind a proxy that rewrites what it writes (tests/phone/hostile_relay.py);
the phone is the built app in Chromium."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from protocol.frames import Bundle, Deliver, Frame, Ping, Pong, Ready, decode_frame, encode_frame
from tests.helpers import eventually
from tests.identity_world import World
from tests.phone.hostile_relay import FrameProxy, bundle_of, hostile_phone_world
from tests.phone.phone_world import (
    PASSPHRASE,
    enrol_by_code,
    intern_and_specialist,
    phone_page,
    provisioned_intern,
    sent_from_phone,
)

BUNDLE = "lightbox.bundle"
BEFORE, AFTER = b"\x01" * 8, b"\x02" * 8  # the nonces of the pings around a bad frame


@pytest.fixture
async def hostile(db_dsn: str, tmp_path: Path) -> AsyncIterator[tuple[World, str, FrameProxy]]:
    async with hostile_phone_world(db_dsn, tmp_path) as found:
        yield found


def ping(nonce: bytes) -> bytes:
    return encode_frame(Ping(nonce=nonce))


def pongs(frames: list[Frame]) -> list[bytes]:
    return [f.nonce for f in frames if isinstance(f, Pong)]


def tags(frames: list[Frame]) -> list[str]:
    return [str(type(f).__struct_config__.tag) for f in frames]


async def closed(proxy: FrameProxy, connection: int) -> tuple[int, str]:
    async def probe() -> bool:
        return connection in proxy.closes
    await eventually(probe, timeout=20)
    return proxy.closes[connection]


async def connected_again(page: Any, proxy: FrameProxy, connection: int) -> None:
    """The phone reconnected by itself after ``connection`` (the next one is ready)."""
    async def probe() -> bool:
        return len(proxy.offered) > connection + 1 and (
            await page.locator("#conn").inner_text() == "connected")
    await eventually(probe, timeout=20)


async def test_a_bundle_on_a_connection_without_the_subprotocol_closes_4000_unhandled(
        hostile: tuple[World, str, FrameProxy]) -> None:
    world, origin, proxy = hostile
    # A relay that selects nothing (as one of a release before bundles would): the browser
    # fails a websocket whose server selects none of the subprotocols asked for, so once the
    # relay has answered over HTTP and refused such an attempt, the phone tries once without
    # asking, and is served one frame per message. Then, after ``ready``, a bundle comes all
    # the same.
    proxy.pass_subprotocol = False
    proxy.tamper = lambda data, frame: (
        [data, bundle_of(ping(BEFORE))] if isinstance(frame, Ready) else None)
    intern = await provisioned_intern(world)
    async with phone_page() as (page, problems):
        await enrol_by_code(page, origin, intern.code)
        plain = proxy.offered.index([])
        assert plain >= 1 and proxy.offered[:plain] == [[BUNDLE]] * plain
        assert proxy.selected[:plain + 1] == [None] * (plain + 1)
        assert await closed(proxy, plain) == (4000, "unexpected_frame")
        assert proxy.tampered == [plain]
        assert pongs(proxy.sent(plain)) == []  # none of its frames was handled
        await connected_again(page, proxy, plain)
        assert proxy.offered[plain + 1] == [BUNDLE]  # the next connection asks again
        assert problems == []


async def test_a_bundle_before_ready_closes_4000_unhandled(
        hostile: tuple[World, str, FrameProxy]) -> None:
    world, origin, proxy = hostile
    # The relay selected bundles, but ``ready`` always travels alone: here it comes bundled.
    proxy.tamper = lambda data, frame: (
        [bundle_of(data, ping(BEFORE))] if isinstance(frame, Ready) else None)
    intern = await provisioned_intern(world)
    async with phone_page() as (page, problems):
        await enrol_by_code(page, origin, intern.code)
        assert await closed(proxy, 0) == (4000, "unexpected_frame")
        assert proxy.offered[0] == [BUNDLE] and proxy.selected[0] == BUNDLE
        assert proxy.tampered == [0]
        # Neither the bundled ready nor the ping was handled: nothing but the handshake left.
        assert tags(proxy.sent(0)) == ["hello", "auth"]
        await connected_again(page, proxy, 0)
        assert proxy.selected[1] == BUNDLE
        assert problems == []


BAD_ENTRIES = {
    "malformed_frame": b"\xc1",  # never valid MessagePack
    "unexpected_frame": bundle_of(ping(b"\x03")),  # a bundle inside a bundle
    "field_too_large": msgspec.msgpack.encode({"t": "ping", "nonce": b"\x04" * 33}),
}


@pytest.mark.parametrize("code", sorted(BAD_ENTRIES))
async def test_a_bad_frame_inside_a_bundle_closes_4000_after_the_frames_before_it(
        hostile: tuple[World, str, FrameProxy], tmp_path: Path, code: str) -> None:
    world, origin, proxy = hostile
    async with intern_and_specialist(world, tmp_path) as (intern, specialist, events), \
            phone_page() as (page, problems):
        await enrol_by_code(page, origin, intern.code)
        consult = await sent_from_phone(page, events, "Query scaphoid fracture.")
        await page.tap("#lock")
        await page.locator("#screen-unlock").wait_for()
        await specialist.client.send_text(consult.message.thread_id, "Splint, clinic tomorrow.")
        connection = len(proxy.offered)  # the one the unlock opens

        def bad_after_delivery(data: bytes, frame: Frame) -> list[bytes] | None:
            held = frame.frames if isinstance(frame, Bundle) else [data]
            if not any(isinstance(decode_frame(entry), Deliver) for entry in held):
                return None
            # What the relay wrote, a ping, the bad frame, and a ping that must stay unheard.
            return [bundle_of(*held, ping(BEFORE), BAD_ENTRIES[code], ping(AFTER))]

        proxy.tamper = bad_after_delivery
        await page.fill("#passphrase", PASSPHRASE)
        await page.tap("#unlock")
        assert await closed(proxy, connection) == (4000, code)
        assert proxy.tampered == [connection] and proxy.selected[connection] == BUNDLE
        # The frames before the bad one were handled (the ping answered, the reply shown),
        # none after it.
        assert pongs(proxy.sent(connection)) == [BEFORE]
        await page.locator(".message.theirs", has_text="Splint, clinic tomorrow").wait_for()
        # The reply's acknowledgement went nowhere: the next connection brings it again, and
        # the phone keeps it once.
        await connected_again(page, proxy, connection)
        await eventually(lambda: _acked(proxy, connection + 1), timeout=20)
        assert await page.locator(".message.theirs").count() == 1
        assert problems == []


async def _acked(proxy: FrameProxy, connection: int) -> bool:
    return "ack" in tags(proxy.sent(connection))
