"""clients/sdk/connection.py, the SDK's lasting websocket connection, against a real relay
(``world``, devices from tests/relay_world.py): an outbox that holds messages until the relay
accepts them, deliveries acknowledged only once stored (a deferred one comes again, one
stored already is acknowledged without being handled twice), and the ways a connection
ends (the token provider says it is over, no token can be had, ``stop()``), each telling
every waiting sender; a connection replaced by a newer one of its device makes way for it,
longer each time in a row, and comes back once it is gone. Waits are for events, with the
suite's time unit."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from clients.sdk.connection import Connection, ConnectionStopped, DeferDelivery, EventHandler
from clients.sdk.errors import FlowError
from clients.sdk.socket import SendRefused
from protocol.errors import CloseCode
from protocol.frames import Deliver, EscalationKind, EscalationNotice, Frame, encode_frame
from server import events
from server.store import messages
from tests.consent_world import count
from tests.helpers import eventually, seconds
from tests.identity_world import World
from tests.relay_world import Peer, peer, seal, send_while_offline, thread

Handler = Callable[[Deliver], Awaitable[None]]


def _token(p: Peer) -> Callable[[], Awaitable[str]]:
    async def token() -> str:
        return p.token
    return token


class Opened:
    """The connections a test opened, stopped at its end."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.all: list[Connection] = []

    def __call__(self, p: Peer, on_message: Handler | None = None,
                 token: Callable[[], Awaitable[str]] | None = None, *,
                 replaced_wait: float = 0.0, on_event: EventHandler | None = None
                 ) -> Connection:
        async def ignore(_: Deliver) -> None:
            return None
        c = Connection(self.world.relay.ws_url + "/v1/ws", device_id=p.device_id,
                       access_token=token or _token(p), sign=p.device.keys.sign,
                       on_message=on_message or ignore, on_event=on_event,
                       backoff_base=0.01, backoff_max=0.05, replaced_wait=replaced_wait)
        self.all.append(c)
        return c


@pytest.fixture
async def opened(world: World) -> AsyncIterator[Opened]:
    o = Opened(world)
    yield o
    for c in o.all:
        await c.stop()


@pytest.fixture
async def ab(world: World) -> tuple[Peer, Peer, str]:
    a, b = await peer(world, "alice"), await peer(world, "bob")
    return a, b, await thread(world, a, b)


async def _within(awaitable: Awaitable[object]) -> object:
    return await asyncio.wait_for(awaitable, seconds(10))


async def test_a_message_sent_before_connecting_is_sent_once_connected(
        ab: tuple[Peer, Peer, str], opened: Opened) -> None:
    a, b, tid = ab
    got: asyncio.Queue[Deliver] = asyncio.Queue()
    receiving = opened(b, got.put)
    await receiving.start()
    sending = opened(a)
    message = seal(a, tid, [b], b"hello")
    pending = asyncio.create_task(sending.send(message))
    await sending.start()
    accepted = await _within(pending)
    assert getattr(accepted, "message_id", None) == message.header.message_id
    delivered = await _within(got.get())
    assert isinstance(delivered, Deliver)
    assert delivered.message.header.message_id == message.header.message_id


@pytest.mark.parametrize("refusal", [DeferDelivery(), OSError(28, "No space left on device")],
                         ids=["deferred", "disk_full"])
async def test_a_delivery_its_handler_could_not_store_is_not_acknowledged_and_comes_again(
        world: World, ab: tuple[Peer, Peer, str], opened: Opened, refusal: Exception,
        caplog: pytest.LogCaptureFixture) -> None:
    """Deferred (the vault is locked), or an error the handler did not expect (the device's
    disk full, a bug): not stored, so not acknowledged. The connection does not end; it
    reconnects, and the delivery comes again. An unexpected error is logged by its type."""
    a, b, tid = ab
    await send_while_offline(world, a, b, tid, b"later")
    seen: list[str] = []
    stored: asyncio.Queue[str] = asyncio.Queue()

    async def store_on_second_try(frame: Deliver) -> None:
        seen.append(frame.delivery_id)
        if len(seen) == 1:
            raise refusal
        await stored.put(frame.message.header.message_id)

    c = opened(b, store_on_second_try)
    with caplog.at_level("WARNING", logger="lightbox.sdk"):
        await c.start()
        await _within(stored.get())
    assert len(seen) == 2 and seen[0] == seen[1]
    assert not c.stopped.done() and c.reconnects >= 1
    failed = [getattr(r, "error_type", None) for r in caplog.records
              if r.getMessage().startswith("connection failed")]
    assert failed == ([] if isinstance(refusal, DeferDelivery) else ["OSError"])


async def test_a_delivery_stored_already_is_acknowledged_without_handling_it_again(
        world: World, ab: tuple[Peer, Peer, str], opened: Opened) -> None:
    a, b, tid = ab
    message = seal(a, tid, [b], b"redelivered")
    sender = opened(a)
    await sender.start()
    await _within(sender.send(message))
    handled: list[str] = []

    async def handle(frame: Deliver) -> None:
        handled.append(frame.message.header.message_id)

    first = opened(b, handle)
    first.dedupe.add(a.device_id, message.header.message_id)  # stored before a crash
    await first.start()
    await _within(first.queue_empty.wait())
    assert handled == []
    await first.stop()

    async def acknowledged() -> bool:
        # The relay records an ack after its frame arrives (server/acks.py, group commit); a
        # connection opened before that may rightly be sent the delivery again (at least once).
        return await count(world, "SELECT count(*) FROM deliveries WHERE device_id = $1",
                           b.device_id) == 0

    assert await eventually(acknowledged)
    again = opened(b, handle)  # acknowledged: the relay does not deliver it again
    await again.start()
    await _within(again.queue_empty.wait())
    assert handled == []


async def test_a_token_provider_that_knows_it_is_over_stops_the_connection(
        ab: tuple[Peer, Peer, str], opened: Opened) -> None:
    a, b, tid = ab

    async def revoked() -> str:
        raise ConnectionStopped(CloseCode.DEVICE_REVOKED, "device_revoked")

    c = opened(a, token=revoked)
    waiting = asyncio.create_task(c.send(seal(a, tid, [b])))
    await c.start()
    stopped = await _within(c.stopped)
    assert isinstance(stopped, ConnectionStopped)
    assert (stopped.code, stopped.reason) == (CloseCode.DEVICE_REVOKED, "device_revoked")
    with pytest.raises(ConnectionStopped):
        await _within(waiting)
    with pytest.raises(ConnectionStopped):  # a send after the end fails at once
        await c.send(seal(a, tid, [b]))


async def test_without_a_token_to_be_had_the_connection_stops_with_its_code(
        ab: tuple[Peer, Peer, str], opened: Opened) -> None:
    a, _, _ = ab

    async def no_password() -> str:
        raise FlowError("log in again with your password", code="unauthenticated")

    c = opened(a, token=no_password)
    await c.start()
    stopped = await _within(c.stopped)
    assert isinstance(stopped, ConnectionStopped)
    assert (stopped.code, stopped.reason) == (None, "unauthenticated")


async def test_stopping_fails_every_waiting_sender(ab: tuple[Peer, Peer, str],
                                                   opened: Opened) -> None:
    a, b, tid = ab
    never = asyncio.Event()

    async def waiting_for_a_token() -> str:
        await never.wait()
        return a.token

    c = opened(a, token=waiting_for_a_token)
    await c.start()
    pending = asyncio.create_task(c.send(seal(a, tid, [b])))
    await asyncio.sleep(0)  # one turn of the loop (not a wait for time): the send joins the outbox
    await c.stop()
    with pytest.raises(ConnectionStopped) as err:
        await _within(pending)
    assert (err.value.code, err.value.reason) == (None, "stopped")


async def test_the_connection_is_not_shown_as_connected_while_a_failing_handler_recycles_it(
        world: World, ab: tuple[Peer, Peer, str], opened: Opened) -> None:
    a, b, tid = ab
    await send_while_offline(world, a, b, tid, b"cannot be stored")
    failures = 0

    async def always_failing(_: Deliver) -> None:
        nonlocal failures
        failures += 1
        raise RuntimeError("vault write failed")

    async def failed_twice() -> bool:
        return failures >= 2

    async def shown_as_down() -> bool:
        return not c.connected.is_set()

    c = opened(b, always_failing)
    await c.start()
    assert await eventually(failed_twice)
    # Between attempts ``connected`` is cleared (it was left set when the loop died).
    assert await eventually(shown_as_down)
    assert not c.stopped.done()


async def test_a_token_provider_that_fails_unexpectedly_is_asked_again(
        ab: tuple[Peer, Peer, str], opened: Opened) -> None:
    a, b, tid = ab
    calls = 0

    async def flaky() -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("keyring unavailable")
        return a.token

    c = opened(a, token=flaky)
    await c.start()
    accepted = await _within(c.send(seal(a, tid, [b], b"after a second try")))
    assert getattr(accepted, "message_id", None) and calls >= 2


@pytest.mark.world(ws_max_frame=64 * 1024)
async def test_a_message_over_the_relays_frame_maximum_is_refused_and_the_next_still_goes(
        ab: tuple[Peer, Peer, str], opened: Opened) -> None:
    """The relay announces its largest frame in ``ready`` (an operator's
    ``LIGHTBOX_WS_MAX_FRAME``, 64 KiB here); a message that cannot fit is refused before it
    leaves, and the outbox goes on with the next one."""
    a, b, tid = ab
    c = opened(a)
    await c.start()
    too_big = asyncio.create_task(c.send(seal(a, tid, [b], b"x" * (100 * 1024))))
    after = asyncio.create_task(c.send(seal(a, tid, [b], b"the next one")))
    with pytest.raises(SendRefused) as refused:
        await _within(too_big)
    assert refused.value.code == "frame_too_large"
    assert getattr(await _within(after), "message_id", None)
    assert not c.stopped.done()


async def test_an_address_that_is_not_a_websocket_url_stops_the_connection_with_a_reason(
        world: World, ab: tuple[Peer, Peer, str]) -> None:
    a, _, _ = ab

    async def ignore(_: Deliver) -> None:
        return None

    c = Connection(world.relay.base_url + "/v1/ws", device_id=a.device_id,
                   access_token=_token(a), sign=a.device.keys.sign, on_message=ignore,
                   backoff_base=0.01, backoff_max=0.05)
    await c.start()
    try:
        stopped = await _within(c.stopped)
    finally:
        await c.stop()
    assert isinstance(stopped, ConnectionStopped)
    assert "not a websocket URL" in stopped.reason


async def _away_for(c: Connection) -> float:
    """From now (``c`` just lost its connection) until it is connected again, in seconds."""
    loop = asyncio.get_running_loop()
    begun = loop.time()
    await asyncio.wait_for(c.connected.wait(), seconds(20))
    return loop.time() - begun


async def _lost(c: Connection) -> None:
    async with asyncio.timeout(seconds(10)):
        while c.connected.is_set():  # Connection has no event for a drop: looked at often
            await asyncio.sleep(0.005)


async def test_a_connection_replaced_by_another_of_its_device_makes_way_then_comes_back(
        ab: tuple[Peer, Peer, str], opened: Opened) -> None:
    """A long-running program (``replaced_wait``) and a command of the same device (none): the
    command's connection replaces the other (4003, said in ``last_close``); the other stays
    away ``replaced_wait`` seconds, so a command of that length is not cut off; one still
    running then takes the connection straight back (it waits for nobody), and the other
    makes way twice as long; once the command is gone it connects by itself."""
    a, _, _ = ab
    wait = 1.0
    watching = opened(a, replaced_wait=wait)
    await watching.start()
    await _within(watching.connected.wait())
    command = opened(a)
    await command.start()
    await _within(command.connected.wait())
    await _lost(watching)
    assert watching.last_close[0] == CloseCode.SESSION_REPLACED
    first = await _away_for(watching)  # back, while the command still runs...
    assert first >= wait - 0.05, first  # (less the moment it took to see it go)
    await _lost(watching)  # ...which takes it back at once
    assert watching.last_close[0] == CloseCode.SESSION_REPLACED
    assert command.last_close[0] == CloseCode.SESSION_REPLACED
    second = await _away_for(watching)
    assert second >= 2 * wait - 0.05, (first, second)
    await command.stop()
    await _within(watching.connected.wait())
    assert not watching.stopped.done()


async def test_stopping_first_handles_what_the_relay_wrote_before_it_answered_the_close(
        world: World, ab: tuple[Peer, Peer, str], opened: Opened) -> None:
    """The relay deletes a notice once written to the connection (an escalation step here), so
    ``stop()`` closes first and lets the loop take what arrived before the relay's close:
    stopped while a handler is busy with the first of two notices, the second is handled too."""
    a, _, tid = ab
    busy, release = asyncio.Event(), asyncio.Event()
    handled: list[int] = []

    async def on_event(frame: Frame) -> None:
        if isinstance(frame, EscalationNotice):
            if not handled and not busy.is_set():
                busy.set()
                await release.wait()  # the program is told to stop meanwhile
            handled.append(frame.step)

    connection = opened(a, on_event=on_event)
    await connection.start()
    await _within(connection.connected.wait())
    conn = await world.db()
    try:
        now = dt.datetime.now(dt.UTC)
        for step in (1, 2):
            await messages.add_notices(conn, [a.device_id], "escalation_notice", encode_frame(
                EscalationNotice(thread_id=tid, message_id=tid, step=step, level=0,
                                 user_id=a.user_id, at=int(now.timestamp()),
                                 kind=EscalationKind.RENOTIFY)),
                dedupe_key=f"test:{step}", now=now)
        await events.publish(conn, "deliver", device_ids=[a.device_id])
        await _within(busy.wait())

        async def none_kept() -> bool:  # both written: the relay keeps neither
            return await count(world, "SELECT count(*) FROM device_notices WHERE device_id = $1",
                               a.device_id) == 0
        await eventually(none_kept)
    finally:
        await conn.close()
    stopping = asyncio.create_task(connection.stop())
    await asyncio.sleep(seconds(0.2))
    release.set()
    await _within(stopping)
    assert handled == [1, 2]
    assert connection.stopped.done()
