"""clients/sdk/hub.py: every subscriber and callback hears each event, a failing application
callback does not stop the others, background tasks are cancelled on close, and a client that
is not started says so (``not_ready``) rather than failing later."""

from __future__ import annotations

import asyncio

import pytest

from clients.sdk.errors import FlowError
from clients.sdk.events import ClientEvent, StatusEvent
from clients.sdk.hub import Hub
from protocol.errors import ErrorCode


async def test_every_listener_hears_an_event_even_when_a_callback_fails() -> None:
    hub = Hub()
    queue = hub.subscribe()
    heard: list[ClientEvent] = []

    def broken(event: ClientEvent) -> None:
        raise RuntimeError("application bug")

    async def kept(event: ClientEvent) -> None:
        heard.append(event)

    hub.on_event(broken)
    hub.on_event(kept)
    event = StatusEvent("connected")
    await hub.emit(event)
    assert queue.get_nowait() is event and heard == [event]
    hub.unsubscribe(queue)
    await hub.emit(StatusEvent("disconnected"))
    assert queue.empty() and len(heard) == 2


async def test_background_tasks_are_cancelled_when_the_client_closes() -> None:
    hub = Hub()
    started = asyncio.Event()

    async def forever() -> None:
        started.set()
        await asyncio.Event().wait()

    task = hub.spawn(forever(), "forever")
    await started.wait()
    await hub.cancel_tasks()
    assert task.cancelled()


async def test_a_hub_not_started_refuses_with_not_ready() -> None:
    hub = Hub()
    with pytest.raises(FlowError) as refused:
        hub.connected()
    assert refused.value.code == ErrorCode.NOT_READY.value
    hub.queue_frame(object())  # type: ignore[arg-type]  # kept until a connection sends it
    assert not hub.outgoing_sent.is_set()
