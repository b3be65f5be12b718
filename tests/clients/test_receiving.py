"""clients/sdk/receiving.py against a real relay: the vault's record of the deliveries it holds
is the one replay memory. A delivery handed to the client a second time (after a crash before
its acknowledgement, or replayed) is recognised by ``open_message``'s replay check over that
record: stored once, told once, and not mistaken for an undecryptable message (its one-time
prekey is gone by then)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

from clients.sdk.client import ClientEvent, MessageEvent, StatusEvent
from protocol.frames import Deliver
from tests.clinician_world import enrol_clinician
from tests.helpers import seconds
from tests.identity_world import World

ORTHO = "orthopaedics_oncall"


async def test_a_delivery_handed_over_twice_is_stored_once_and_not_reported_as_an_error(
        world: World, tmp_path: Path) -> None:
    intern = await enrol_clinician(world, tmp_path, "intern")
    ortho = await enrol_clinician(world, tmp_path, "ortho", roles=(ORTHO,))
    handed: list[Deliver] = []
    receive: Callable[[Deliver], Awaitable[None]] = ortho.client.receiver.on_deliver

    async def recording(frame: Deliver) -> None:
        handed.append(frame)
        await receive(frame)

    ortho.client.receiver.on_deliver = recording  # type: ignore[method-assign]
    events = ortho.client.subscribe()
    for c in (intern, ortho):
        await c.client.start(wait_connected=seconds(10))
    try:
        thread = await intern.client.create_thread(roles=[ORTHO])
        sent = await intern.client.send_text(thread.thread_id, "Scaphoid view, please")
        async with asyncio.timeout(seconds(10)):
            while not isinstance(await events.get(), MessageEvent):
                pass
        assert [f.message.header.message_id for f in handed] == [sent.message_id]

        await ortho.client.receiver.on_deliver(handed[0])  # the connection's filter bypassed

        again = _drain(events)
        assert not [e for e in again if isinstance(e, MessageEvent)]
        assert not [e for e in again if isinstance(e, StatusEvent) and e.state == "error"]
        assert [m.message_id for m in ortho.vault.messages(thread.thread_id)] == \
            [sent.message_id]
    finally:
        for c in (intern, ortho):
            await c.client.close()
            c.vault.lock()


def _drain(queue: asyncio.Queue[ClientEvent]) -> list[ClientEvent]:
    out = []
    while not queue.empty():
        out.append(queue.get_nowait())
    return out
