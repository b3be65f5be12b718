"""A session the relay ends while the device is connected (a logout, docs/PROTOCOL.md §3.5 "A
session that ends closes its connections": 4001 ``token_invalid`` on the open connection) ends
the SDK's connection at once, told as :class:`SessionEnded` like a refused handshake, without
a reconnect whose handshake the relay could only refuse. Real relay; the handshakes it refused
are counted from its own metrics (``lightbox_ws_rejections_total``)."""

from __future__ import annotations

from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from clients.sdk.errors import SessionEnded
from protocol.errors import ErrorCode
from tests.clients.test_client_stopped import next_status
from tests.clinician_world import enrol_clinician
from tests.helpers import seconds
from tests.identity_world import World


async def refused_handshakes(world: World) -> float:
    """Websocket handshakes the relay refused with ``token_invalid``, from its /metrics."""
    text = (await world.http.get("/metrics")).text
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
               if s.name == "lightbox_ws_rejections_total"
               and s.labels.get("code") == ErrorCode.TOKEN_INVALID.value)


async def test_a_session_ended_while_connected_stops_the_client_without_reconnecting(
        world: World, tmp_path: Path) -> None:
    intern = await enrol_clinician(world, tmp_path, "intern")
    client = intern.client
    events = client.subscribe()
    await client.start(wait_connected=seconds(10))
    try:
        await next_status(events, "connected")
        session = intern.vault.state.session
        assert session is not None
        before = await refused_handshakes(world)
        r = await world.http.post("/v1/auth/logout",
                                  json={"refresh_token": session.refresh_token})
        assert r.status_code == 204, r.text
        stopped = await next_status(events, "stopped")
        assert stopped.detail.endswith("token_invalid)"), stopped.detail
        connection = client.connection
        assert connection is not None and connection.stopped.done()
        ended = connection.stopped.result()
        assert isinstance(ended.__cause__, SessionEnded), repr(ended.__cause__)
        assert ended.__cause__.code == ErrorCode.TOKEN_INVALID.value
        # Stopped on the close itself: no handshake was tried and refused after it.
        assert await refused_handshakes(world) == before
        assert connection.reconnects == 0
    finally:
        await client.close(drain=0)
