"""A record gateway left idle past its refresh token's lifetime (docs/SECURITY.md "Refresh",
``LIGHTBOX_REFRESH_TOKEN_TTL``), against a real relay and a real Orthanc: the next image comes
and the gateway's first request finds its access token and its refresh token both expired. It
logs in again by itself, with its password and its device key (docs/PROTOCOL.md §11
``/v1/auth/login``), says so in one log line, and files the image at once, long before the
relay would close its connection as too slow (``LIGHTBOX_WS_ACK_TIMEOUT``, 4009). A gateway
that cannot log in again says so in one line naming what to do, and stops at once rather
than holding the delivery until that close."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import msgspec
import pytest

from clients.gateway.app import LOGGED_IN_AGAIN, RecordGateway
from clients.sdk import imaging
from clients.sdk.failures import describe
from protocol.model import Priority
from tests.clients.test_filing_journey import ORTHO, record, send_for_filing
from tests.clinician_world import Clinician, enrol_clinician
from tests.consent_world import count, xray_png
from tests.filing_world import enrol_gateway, orthanc_gateway
from tests.helpers import running_relay, seconds
from tests.identity_world import World
from tests.orthanc import OrthancServer

# A short refresh lifetime, as the walk of docs/USER_GUIDE.md ran it (the default is 30 days);
# an acknowledgement timeout shorter than the default 120 s, so that a gateway which waits for
# it fails in 30 s; attachments in 64 KiB chunks, as the image journeys need.
pytestmark = pytest.mark.world(attachment_chunk_bytes=64 * 1024, refresh_token_ttl=90,
                               ws_ack_timeout=seconds(30))

# What lightbox-gateway says of a session it cannot renew (clients/gateway/cli.py).
HINT = "enrol the gateway again, or give its password"


@contextlib.asynccontextmanager
async def gateway_at_work(world: World, tmp_path: Path, orthanc: OrthancServer, *,
                          password: bool = True, requests_to: str | None = None
                          ) -> AsyncIterator[tuple[Clinician, Clinician, RecordGateway]]:
    """An intern (started), a specialist (enrolled) and a started gateway on the relay's
    clock, so that moving it (:func:`idle`) is the gateway sitting idle. ``requests_to``: the
    address of another relay process (on the same database) for the gateway's requests, its
    connection staying with the world's relay."""
    intern = await enrol_clinician(world, tmp_path, "intern")
    ortho = await enrol_clinician(world, tmp_path, "ortho", roles=(ORTHO,))
    gateway = await enrol_gateway(world, tmp_path)
    if not password:  # logged in once, as by a program that held the password
        with_password, pacs = orthanc_gateway(gateway, orthanc)
        await with_password.session.ensure_login()
        await with_password.relay.aclose()
        await pacs.aclose()
    if requests_to is not None:
        gateway.vault.save(msgspec.structs.replace(gateway.vault.state, server_url=requests_to))
    gw, pacs = orthanc_gateway(gateway, orthanc, clock=world.clock, password=password,
                               ws_url=world.relay.ws_url + "/v1/ws")
    try:
        await gw.start()
        await intern.client.start(wait_connected=seconds(10))
        yield intern, ortho, gw
    finally:
        await gw.stop()
        await pacs.aclose()
        await intern.client.close()
        for c in (intern, ortho):
            c.vault.lock()


def idle(world: World) -> Callable[..., Awaitable[None]]:
    """``send_for_filing``'s last step before the intern's send (everything it asks the relay
    is done by then, at real time): the relay's clock moves past the access and refresh
    tokens' lifetimes, as if the gateway had sat idle that long."""
    async def advance(*_: object) -> None:
        settings = world.relay.relay.settings
        world.clock.advance(settings.refresh_token_ttl + settings.access_token_ttl + 1)
    return advance


def said(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The gateway's log lines so far."""
    return [r.getMessage() for r in caplog.records if r.name == "lightbox.gateway"]


async def test_a_gateway_idle_past_its_refresh_lifetime_logs_in_again_and_files_at_once(
        world: World, tmp_path: Path, orthanc: OrthancServer,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="lightbox.gateway")
    deadline = world.relay.relay.settings.ws_ack_timeout  # then the relay closes 4009
    prepared = imaging.prepare_image(xray_png(320, 240, seed=11))
    async with gateway_at_work(world, tmp_path, orthanc) as (intern, ortho, gw):
        assert gw.connection is not None
        reconnects = gw.connection.reconnects
        thread = await intern.client.create_thread(users=[ortho.user_id],
                                                   priority=Priority.URGENT)
        aid, _ = await send_for_filing(intern, thread.thread_id, prepared.image, record(),
                                       before_send=idle(world))
        loop = asyncio.get_running_loop()
        sent = loop.time()
        async with asyncio.timeout(deadline):  # filed before the relay's too_slow close
            while not (gw.filed and await count(world, "SELECT count(*) FROM filings") == 1):
                assert not gw.connection.stopped.done(), said(caplog)
                await asyncio.sleep(0.1)
        assert loop.time() - sent < deadline
        assert gw.filed[0].attachment_id == aid and not gw.failed
        # On the connection it had: never closed as too slow, nothing delivered again.
        assert gw.connection.reconnects == reconnects
    lines = said(caplog)
    assert lines.count(LOGGED_IN_AGAIN) == 1, lines
    assert not [s for s in lines if "interrupted" in s or "connection lost" in s], lines


async def test_a_gateway_that_cannot_log_in_again_says_what_to_do_and_stops_at_once(
        world: World, tmp_path: Path, orthanc: OrthancServer,
        caplog: pytest.LogCaptureFixture) -> None:
    deadline = world.relay.relay.settings.ws_ack_timeout
    prepared = imaging.prepare_image(xray_png(320, 240, seed=12))
    async with gateway_at_work(world, tmp_path, orthanc, password=False) as (intern, ortho, gw):
        assert gw.connection is not None
        reconnects = gw.connection.reconnects
        thread = await intern.client.create_thread(users=[ortho.user_id])
        _, header = await send_for_filing(intern, thread.thread_id, prepared.image, record(),
                                          before_send=idle(world))
        async with asyncio.timeout(deadline):  # not held until the relay's too_slow close
            stopped = await gw.connection.stopped
        assert not stopped.stopped_here
        assert gw.connection.reconnects == reconnects  # on the connection the message came on
        assert describe(stopped, login_hint=HINT) == \
            f"error: your session has ended (token_expired): {HINT}"
        assert not gw.filed
        assert await count(world, "SELECT count(*) FROM filings") == 0
    lines = said(caplog)
    assert lines.count(
        f"filing of message {header.message_id} interrupted: the relay ended the gateway's "
        "session (token_expired); the gateway stops (the relay keeps the message): start it "
        "again with its password (LIGHTBOX_PASSWORD), and if the relay refuses that, enrol "
        "it afresh (docs/USER_GUIDE.md, \"The record gateway\" §4)") == 1, lines


class RequestsRelay:
    """A second relay process on the world's database (as behind a load balancer) that the
    gateway's requests go to, its connection staying with the world's relay: stopped, and
    started again on the same port."""

    def __init__(self, world: World, stack: contextlib.AsyncExitStack, port: int) -> None:
        self.world, self.stack, self.port = world, stack, port

    async def stop(self) -> None:
        await self.stack.aclose()

    def again(self) -> contextlib.AbstractAsyncContextManager[object]:
        settings = self.world.relay.relay.settings
        return running_relay(self.world.dsn, dataclasses.replace(settings, port=self.port),
                             clock=self.world.clock)


@contextlib.asynccontextmanager
async def gateway_requesting_elsewhere(world: World, tmp_path: Path, orthanc: OrthancServer
                                       ) -> AsyncIterator[tuple[Clinician, Clinician,
                                                                RecordGateway, RequestsRelay]]:
    """:func:`gateway_at_work`, its requests to a :class:`RequestsRelay`."""
    async with contextlib.AsyncExitStack() as stack:
        other = await stack.enter_async_context(
            running_relay(world.dsn, world.relay.relay.settings, clock=world.clock))
        requests = RequestsRelay(world, stack, int(other.base_url.rsplit(":", 1)[1]))
        async with gateway_at_work(world, tmp_path, orthanc, requests_to=other.base_url) as (
                intern, ortho, gw):
            yield intern, ortho, gw, requests


def retrying(message_id: str) -> str:
    """The gateway's line for a filing it tries again, the relay out of reach."""
    return (rf"filing of message {message_id} interrupted: the relay could not be reached "
            r"\(no connection could be made\); trying again in \d+\.\d s")


async def filed(world: World, gw: RecordGateway) -> None:
    """Until the gateway filed an image and the relay recorded it."""
    while not (gw.filed and await count(world, "SELECT count(*) FROM filings")):
        await asyncio.sleep(0.1)


async def test_a_filing_interrupted_by_a_relay_out_of_reach_is_tried_again_at_once(
        world: World, tmp_path: Path, orthanc: OrthancServer,
        caplog: pytest.LogCaptureFixture) -> None:
    """The gateway's requests go to a second relay process, which stops as the image comes and
    starts again on the same port a few attempts later: the filing goes on at once, on the
    connection the message came on, never waiting for the relay's too_slow close."""
    deadline = world.relay.relay.settings.ws_ack_timeout
    prepared = imaging.prepare_image(xray_png(320, 240, seed=13))
    async with gateway_requesting_elsewhere(world, tmp_path, orthanc) as (
            intern, ortho, gw, requests):
        await requests.stop()  # the gateway's requests reach no relay
        assert gw.connection is not None
        reconnects = gw.connection.reconnects
        thread = await intern.client.create_thread(users=[ortho.user_id])
        _, header = await send_for_filing(intern, thread.thread_id, prepared.image, record())
        loop = asyncio.get_running_loop()
        sent = loop.time()
        async with asyncio.timeout(deadline):
            while sum(bool(re.fullmatch(retrying(header.message_id), line))
                      for line in said(caplog)) < 2:
                await asyncio.sleep(0.05)
            async with requests.again():
                await filed(world, gw)
        assert loop.time() - sent < deadline
        assert gw.connection.reconnects == reconnects  # never closed as too slow
        assert not gw.failed
    lines = said(caplog)
    assert all(re.fullmatch(retrying(header.message_id), line)
               for line in lines if "interrupted" in line), lines


async def test_an_image_the_relay_could_not_hand_over_for_a_moment_is_filed_not_lost(
        world: World, tmp_path: Path, orthanc: OrthancServer,
        caplog: pytest.LogCaptureFixture) -> None:
    """The relay goes out of reach just as the gateway fetches the image (after the PACS,
    down until then, answered its searches): the fetch is tried again like any filing, the
    image is filed once the relay is back, and the sender is never told it was not saved. The
    message opens again for the new try: its one-time prekey is kept until the filing is done
    (docs/PROTOCOL.md §5.5)."""
    caplog.set_level(logging.INFO, logger="lightbox.gateway")
    deadline = world.relay.relay.settings.ws_ack_timeout
    prepared = imaging.prepare_image(xray_png(320, 240, seed=14))
    async with gateway_requesting_elsewhere(world, tmp_path, orthanc) as (
            intern, ortho, gw, requests):
        thread = await intern.client.create_thread(users=[ortho.user_id])
        orthanc.stop()
        try:
            _, header = await send_for_filing(intern, thread.thread_id, prepared.image,
                                              record())
            async with asyncio.timeout(deadline):  # the gateway waits for the PACS
                while not any(s.startswith("PACS unavailable") for s in said(caplog)):
                    await asyncio.sleep(0.05)
            await requests.stop()  # the image's fetch will find no relay
        finally:
            await asyncio.to_thread(orthanc.start)
        async with asyncio.timeout(deadline):
            while not any(re.fullmatch(retrying(header.message_id), line)
                          for line in said(caplog)):
                assert not gw.failed, said(caplog)
                await asyncio.sleep(0.05)
            async with requests.again():
                await filed(world, gw)
        assert not gw.failed
        assert gw.filed[0].message_id == header.message_id
