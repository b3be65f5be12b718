"""A consult handed over at a shift change by two devices at once is one consult to the
incoming clinician (docs/PROTOCOL.md §16.4; HAZ-02 C16 of docs/HAZARD_LOG.md): two holders
that are not its author answer one reseal request when their waits end together, and the
night doctor holds two copies. Both stay in his vault, but ``lightbox inbox`` shows the consult
once, ``lightbox threads`` counts it once unread, and his one "I'm on it" acknowledges both
copies: the escalation stops and both resealers' devices are told. Real relay, real SDK
clients, real ``lightbox`` processes, simulated on-call minutes."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import pytest

from clients.sdk import notices
from clients.sdk.events import ReceiptEvent
from clients.sdk.vault import VaultMessage
from protocol.model import Priority
from protocol.oncall import normalise_role
from tests.clients.test_client import _next_message
from tests.clients.test_watch_beside_commands import Watch
from tests.clients.test_watch_escalation import ORTHO, ROLE, rota
from tests.clinician_world import Clinician, enrol_clinician, lightbox_process, use_cli_profiles
from tests.clinician_world import run_cli as lightbox
from tests.helpers import eventually, seconds
from tests.identity_world import PASSWORD, World
from tests.server.test_escalation import SimClock
from tests.server.test_escalation import clock as clock  # simulated on-call minutes
from tests.server.test_escalation import world as world  # a relay on that clock

TEXT = "Displaced distal radius?"


def copies_from(holder: Clinician, thread_id: str, other: Clinician) -> list[VaultMessage]:
    return [m for m in holder.vault.messages(thread_id)
            if m.sender_device_id == other.client.device_id]


async def acknowledged(events: asyncio.Queue[Any], message_ids: set[str]) -> ReceiptEvent:
    while True:
        event = await events.get()
        if (isinstance(event, ReceiptEvent) and event.kind == "acknowledged"
                and event.message_id in message_ids):
            return event


async def test_a_consult_handed_over_by_two_devices_is_listed_counted_and_acknowledged_once(
        world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clock: SimClock) -> None:
    # The two holders' waits end together (docs/PROTOCOL.md §16.4): neither sees the other's
    # copy in time, so both seal one.
    monkeypatch.setattr(notices, "RESEAL_WAIT", (1.0, 1.0))
    home = use_cli_profiles(monkeypatch, tmp_path)
    intern = await enrol_clinician(world, tmp_path, "intern", display_name="Dr Ada Intern")
    bob = await enrol_clinician(world, tmp_path, "bob", roles=(ORTHO,),
                                display_name="Dr Bob Primary")
    carol = await enrol_clinician(world, tmp_path, "carol", roles=(ORTHO,),
                                  display_name="Dr Carol Backup")
    dan = await enrol_clinician(world, tmp_path, "dan", roles=(ORTHO,),
                                display_name="Dr Dan Night", vault_dir=home / "dan")
    dan.vault.lock()  # his `lightbox` commands open it
    await rota(world, clock)  # Bob, then Carol his backup; Dan's night shift in an hour
    holders = (intern, bob, carol)
    for c in holders:
        await c.client.start(wait_connected=seconds(10))
    watch = Watch(await lightbox_process("--profile", "dan", "watch", "--timeout",
                                         str(seconds(120))))
    try:
        await watch.until("-- connected to the relay")
        bob_events, carol_events = bob.client.subscribe(), carol.client.subscribe()
        thread = await intern.client.create_thread(roles=[normalise_role(ROLE)],
                                                   priority=Priority.URGENT)
        tid = thread.thread_id
        await intern.client.send_text(tid, TEXT, subject="Wrist, bed 4",
                                      priority=Priority.URGENT)
        await asyncio.wait_for(_next_message(bob_events), seconds(15))
        clock.advance(300)  # the urgent deadline: the consult is passed to Carol
        await asyncio.wait_for(_next_message(carol_events), seconds(15))
        await intern.client.close()  # the author's device is offline at the shift change
        clock.advance(3600)  # Bob's shift ends: Dan's starts, Bob's and Carol's devices reseal

        async def both_sealed() -> bool:
            return bool(copies_from(bob, tid, carol) and copies_from(carol, tid, bob))

        await eventually(both_sealed, timeout=30)
        # the copies each sealed, by message id, as the other holder received them
        copies = {m.message_id: sealer for holder, sealer in ((bob, carol), (carol, bob))
                  for m in copies_from(holder, tid, sealer)}
        assert sorted(c.user_id for c in copies.values()) == sorted([bob.user_id,
                                                                     carol.user_id])

        rc, out, err = await lightbox("--profile", "dan", "inbox")
        assert rc == 0, out + err
        assert out.count(TEXT) == 1, out  # one consult, shown once
        (shown,) = re.findall(r"lightbox ack (\S+)", out)
        hidden = next(m for m in copies if m != shown)
        also = "Dr Bob Primary" if copies[hidden] is bob else "Dr Carol Backup"
        assert f"    also handed over by {also}'s device: the same consult, shown once" \
            in out.splitlines(), out
        assert out.splitlines()[-1] == "1 unread message", out
        # Dan's `watch` shows the consult as it arrives, and the second copy in one line.
        await watch.until(f'    consult "Wrist, bed 4": also handed over by {also}\'s device: '
                          "the same consult, shown once")
        assert len([line for line in watch.lines if TEXT in line]) == 1, watch.lines
        rc, out, err = await lightbox("--profile", "dan", "threads")
        assert rc == 0, out + err
        assert re.search(rf"{tid}  Wrist, bed 4  .*  1 unread$", out, re.M), out

        rc, out, err = await lightbox("--profile", "dan", "ack", shown)
        assert rc == 0, out + err
        # Each copy's sealer is told: the shown one's and the hidden one's.
        for who, events in ((bob, bob_events), (carol, carol_events)):
            mine = {m for m, sealer in copies.items() if sealer is who}
            told = await asyncio.wait_for(acknowledged(events, mine), seconds(15))
            assert told.user_id == dan.user_id
        # ... and the consult's escalation stops.
        answer = await bob.client.relay.thread_escalations(tid)
        assert [(e.state, e.acknowledged_by) for e in answer.escalations] == [
            ("acknowledged", dan.user_id)], answer

        # Both copies stay on Dan's device (each was delivered, each acknowledged); the SDK
        # lists the consult once, the other copy with it.
        dan.vault.unlock(PASSWORD)
        assert {m.message_id for m in dan.vault.messages(tid)} == set(copies)
        (view,) = dan.client.thread_messages(tid)
        assert view.message.message_id == shown and view.acknowledged_by_me
        assert [m.message_id for m in view.copies] == [hidden]
        assert dan.client.unread(tid) == 0
    finally:
        err = await watch.stop()
        assert "Traceback" not in err, err
        for c in holders:
            await c.client.close()
