"""clients/sdk/socket.py, one authenticated websocket to a real relay (``world``): a refusal
at the handshake is SocketClosed with the relay's close code, each send's answer reaches the
send that asked (accepted, or SendRefused with the relay's code and device lists), other
frames go to the event queue, and a closed socket fails what is waiting and what comes
next. Which refusals are worth retrying as they are is a fixed list."""

from __future__ import annotations

import asyncio

import pytest

from clients.sdk.socket import RelaySocket, SendRefused, SocketClosed, is_retryable
from protocol.errors import CloseCode, ErrorCode
from protocol.frames import Accepted, Deliver
from tests.filing_world import next_of
from tests.helpers import seconds
from tests.identity_world import World
from tests.relay_world import Peer, connect, peer, seal, thread
from tests.server.test_ws import sockets


@pytest.fixture
async def ab(world: World) -> tuple[Peer, Peer, str]:
    a, b = await peer(world, "alice"), await peer(world, "bob")
    return a, b, await thread(world, a, b)


async def test_a_token_the_relay_refuses_is_socket_closed_with_its_code(
        world: World, ab: tuple[Peer, Peer, str]) -> None:
    a, _, _ = ab
    with pytest.raises(SocketClosed) as err:
        await RelaySocket.connect(world.relay.ws_url + "/v1/ws", access_token="not-a-token",
                                  device_id=a.device_id, sign=a.device.keys.sign)
    assert err.value.code == CloseCode.AUTH_FAILED


async def test_an_accepted_send_answers_the_send_that_asked(
        world: World, ab: tuple[Peer, Peer, str]) -> None:
    a, b, tid = ab
    async with sockets(world, a) as (sock,):
        assert sock.device_id == a.device_id
        one, two = seal(a, tid, [b], b"one"), seal(a, tid, [b], b"two")
        first, second = await asyncio.gather(sock.send(one, req_id="r1"),
                                             sock.send(two, req_id="r2"))
        assert (first.req_id, first.message_id) == ("r1", one.header.message_id)
        assert (second.req_id, second.message_id) == ("r2", two.header.message_id)
        while not sock.events.empty():  # answers are not events
            assert not isinstance(sock.events.get_nowait(), Accepted)


async def test_a_refused_send_carries_the_relay_s_code_and_device_lists(
        world: World, ab: tuple[Peer, Peer, str]) -> None:
    a, b, _ = ab
    c = await peer(world, "carol")
    tid = await thread(world, a, b, c)
    async with sockets(world, a) as (sock,):
        with pytest.raises(SendRefused) as err:
            await sock.send(seal(a, tid, [b]))  # carol's device left out
        assert err.value.code == ErrorCode.DEVICE_SET_MISMATCH.value
        assert err.value.missing == [c.device_id]
        assert str(err.value).startswith("device_set_mismatch: ")
        assert not is_retryable(err.value.code)


async def test_a_delivery_is_an_event_of_the_receiving_socket(
        world: World, ab: tuple[Peer, Peer, str]) -> None:
    a, b, tid = ab
    async with sockets(world, a, b) as (sender, receiver):
        message = seal(a, tid, [b], b"for bob")
        await sender.send(message)
        frame = await next_of(receiver, Deliver)
        assert frame.message.header.message_id == message.header.message_id


async def test_a_closed_socket_refuses_what_comes_next(
        world: World, ab: tuple[Peer, Peer, str]) -> None:
    a, b, tid = ab
    sock = await connect(world, a)
    await sock.close()
    assert (await asyncio.wait_for(sock.closed, seconds(10)))[0] == 1000
    with pytest.raises(SocketClosed):
        await sock.send(seal(a, tid, [b]))


async def test_the_same_device_connecting_again_closes_the_first_socket_and_its_sends(
        world: World, ab: tuple[Peer, Peer, str]) -> None:
    a, _, _ = ab
    first = await connect(world, a)
    second = await connect(world, a)
    try:
        code, _ = await asyncio.wait_for(first.closed, seconds(10))
        assert code == CloseCode.SESSION_REPLACED
    finally:
        await first.close()
        await second.close()


@pytest.mark.parametrize(("code", "retry"), [
    ("rate_limited", True), ("queue_full", True), ("internal_error", True), ("not_ready", True),
    ("device_set_mismatch", False), ("forbidden", False), ("consent_purpose", False),
])
def test_only_passing_refusals_are_retried_as_they_are(code: str, retry: bool) -> None:
    assert is_retryable(code) is retry
