"""A consult whose sender no longer verifies is dropped, and the client says which case it was:
a device the organisation's signed revocation list revokes is named as revoked
(``certificate_revoked``), not as a sender that "does not verify", so a clinician reading the
problem line knows that IT revoked it, not that someone forged it; and it says who sent it,
whether it was urgent and when it reached the relay, so the reader can ask the sender what it
said (docs/HAZARD_LOG.md HAZ-10). Real relay; the sender's device is revoked while its consult
waits at the relay for the recipient, who is offline."""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path

import pytest

from clients.sdk.client import ClientEvent, LightboxClient, MessageEvent, StatusEvent
from clients.sdk.timefmt import format_time
from protocol.model import Priority
from tests.clients.test_client import ORTHO
from tests.clinician_world import enrol_clinician
from tests.helpers import seconds
from tests.identity_world import PASSWORD, World


async def _problems(events: asyncio.Queue[ClientEvent], until: float) -> list[ClientEvent]:
    """The error statuses and messages heard for ``until`` seconds."""
    heard: list[ClientEvent] = []
    loop = asyncio.get_running_loop()
    end = loop.time() + until
    while (left := end - loop.time()) > 0:
        try:
            event = await asyncio.wait_for(events.get(), left)
        except TimeoutError:
            break
        if isinstance(event, MessageEvent) or (
                isinstance(event, StatusEvent) and event.state == "error"):
            heard.append(event)
    return heard


@pytest.mark.parametrize(("priority", "what"), [(Priority.ROUTINE, "A message"),
                                               (Priority.URGENT, "An urgent message")])
async def test_a_consult_from_a_device_revoked_while_it_waited_is_dropped_naming_its_sender(
        world: World, tmp_path: Path, priority: Priority, what: str) -> None:
    intern = await enrol_clinician(world, tmp_path, "intern", display_name="Dr Ada Intern")
    ortho = await enrol_clinician(world, tmp_path, "ortho", roles=(ORTHO,))
    await intern.client.start(wait_connected=seconds(10))
    try:
        thread = await intern.client.create_thread(roles=[ORTHO], priority=priority)
        before = time.time()
        await intern.client.send_text(thread.thread_id, "Sent before revocation")
        after = time.time()
    finally:
        await intern.client.close(drain=0)
    r = await world.revoke(world.org, 1, devices=(await world.device_of(intern.user_id),))
    assert r.status_code == 200, r.text

    events = ortho.client.subscribe()
    await ortho.client.start(wait_connected=seconds(10))
    try:
        heard = await _problems(events, seconds(5))
    finally:
        await ortho.client.close(drain=0)
    assert [type(e) for e in heard] == [StatusEvent], heard
    assert isinstance(heard[0], StatusEvent) and heard[0].state == "error"
    assert heard[0].code == "certificate_revoked"  # the desktop words its advice by it
    # ... and marks the consult by the delivery the event carries (clients/desktop/app.py)
    assert heard[0].dropped is not None
    assert heard[0].dropped.message.header.thread_id == thread.thread_id
    said = re.fullmatch(what.lower() + r" from Dr Ada Intern, sent (.+) from a device your "
                        r"organisation revoked, was dropped: ask them what it said "
                        r"\(certificate_revoked\)", heard[0].detail)
    assert said, heard[0].detail
    # when it reached the relay (as the relay stamped it), in the reader's own format
    assert said.group(1) in {format_time(before), format_time(after)}
    assert ortho.client.thread_messages(thread.thread_id) == []


@pytest.mark.parametrize("known", [False, True], ids=["never-seen", "seen-before"])
async def test_a_consult_from_a_colleague_suspended_while_it_waited_is_dropped_and_said(
        world: World, tmp_path: Path, known: bool) -> None:
    """The directory no longer names a suspended colleague: a reader who holds their name
    (from an earlier message) is told it, one who never did is told of a suspended sender;
    either way whether it was urgent and when, instead of an "unknown or revoked device"."""
    intern = await enrol_clinician(world, tmp_path, "intern", display_name="Dr Ada Intern")
    ortho = await enrol_clinician(world, tmp_path, "ortho", roles=(ORTHO,))
    await intern.client.start(wait_connected=seconds(10))
    try:
        thread = await intern.client.create_thread(roles=[ORTHO], priority=Priority.URGENT)
        if known:  # the specialist has read a message of hers before
            events = ortho.client.subscribe()
            await ortho.client.start(wait_connected=seconds(10))
            try:
                await intern.client.send_text(thread.thread_id, "Earlier consult")
                async with asyncio.timeout(seconds(10)):
                    while not isinstance(await events.get(), MessageEvent):
                        pass
            finally:
                await ortho.client.close(drain=0)
        before = time.time()
        await intern.client.send_text(thread.thread_id, "Sent before suspension")
        after = time.time()
    finally:
        await intern.client.close(drain=0)
    r = await world.revoke(world.org, 1, users=(intern.user_id,))
    assert r.status_code == 200, r.text

    # The specialist's program started afresh on the same vault (the names it learnt kept there).
    reader = LightboxClient(ortho.vault, ortho.vault, password=PASSWORD, backoff_base=0.05,
                            backoff_max=0.5)
    events = reader.subscribe()
    await reader.start(wait_connected=seconds(10))
    try:
        heard = await _problems(events, seconds(5))
        texts = [m.body.text for m in reader.thread_messages(thread.thread_id)]
    finally:
        await reader.close(drain=0)
    assert [type(e) for e in heard] == [StatusEvent], heard
    assert isinstance(heard[0], StatusEvent) and heard[0].state == "error"
    assert heard[0].code == "user_suspended"
    assert heard[0].dropped is not None
    assert heard[0].dropped.message.header.thread_id == thread.thread_id
    said = re.fullmatch(
        r"an urgent message from Dr Ada Intern, sent (.+), was dropped: your organisation has "
        r"suspended their account \(user_suspended\)" if known else
        r"an urgent message sent (.+) was dropped: your organisation has suspended its "
        r"sender's account \(user_suspended\)", heard[0].detail)
    assert said, heard[0].detail
    assert said.group(1) in {format_time(before), format_time(after)}
    assert texts == (["Earlier consult"] if known else [])
