"""``lightbox ack`` of a consult's original after a shift replacement handed it over, with
``lightbox watch`` running on the same device (docs/USER_GUIDE.md "Specialists: the desktop
client", ``lightbox ack``; docs/PROTOCOL.md §3.5 "Receipts", §16.3, §16.4).

Bea was on call when Ada's consult came; IT replaced her shift with Dan's, so the consult was
handed over to him and Ada's device sealed a copy of it, which Bea holds too. Her "I'm on it"
on the original is refused as her acknowledgement of the copy is (``not_on_ladder``): the relay
checks the original against the escalation's ladder, which is Dan's now.

What made one such ``ack`` end "not confirmed" was the connection it went on: the relay keeps
one connection per device and answers a refused receipt on the connection it came on (a kept
one with nothing). When her watch took the connection back while the relay was still checking
the receipt, the refusal went nowhere, and ``ack`` waited in vain for a receipt the relay never
kept. Here the relay is held on that check by a lock on the table it reads (as a busy database
holds it), while watch takes the connection; ``ack`` now sends the acknowledgement again on the
connection it gets back, and says exactly what the relay did with it. Real relay, real rota,
real ``lightbox watch`` processes, simulated on-call minutes.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from clients.clinician.reading import _acknowledge
from clients.clinician.shell import command_client
from clients.sdk.errors import FlowError
from clients.sdk.profile import open_profile
from protocol.model import Priority
from protocol.oncall import normalise_role
from tests.clients.test_watch_beside_commands import Watch
from tests.clients.test_watch_escalation import ORG, ORTHO, ROLE
from tests.clinician_world import enrol_clinician, lightbox_process, use_cli_profiles
from tests.helpers import eventually, seconds
from tests.identity_world import PASSWORD, World
from tests.server.test_escalation import SimClock
from tests.server.test_escalation import clock as clock  # simulated on-call minutes
from tests.server.test_escalation import world as world  # a relay on that clock

SUBJECT = "Wrist, bed 4"


async def _shift(world: World, starts_at: float, ends_at: float, ladder: list[str]) -> str:
    r = await world.http.post(
        f"/v1/admin/oncall/{ORG}/{ROLE}/shifts", headers=world.admin_headers(),
        json={"shifts": [{"starts_at": int(starts_at), "ends_at": int(ends_at),
                          "ladder": ladder}]})
    assert r.status_code == 200 and r.json()["results"][0]["ok"], r.text
    return str(r.json()["results"][0]["shift_id"])


def _refused(thread_id: str) -> str:
    return (f'consult "{SUBJECT}" is not acknowledged: only someone on its on-call ladder can '
            "acknowledge it, and you are not on it, so its escalation goes on; to tell Dr Ada "
            f"Intern anything, reply (lightbox send --thread {thread_id} TEXT)")


async def test_an_ack_of_the_handed_over_original_whose_connection_watch_took_is_still_answered(
        world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clock: SimClock) -> None:
    home = use_cli_profiles(monkeypatch, tmp_path)
    intern = await enrol_clinician(world, tmp_path, "intern", display_name="Dr Ada Intern")
    bea = await enrol_clinician(world, tmp_path, "bea", roles=(ORTHO,),
                                display_name="Dr Bea Bone", vault_dir=home / "bea")
    bea.vault.lock()
    await enrol_clinician(world, tmp_path, "dan", roles=(ORTHO,), display_name="Dr Dan Night")
    r = await world.http.put(f"/v1/admin/oncall/{ORG}/{ROLE}", headers=world.admin_headers(),
                             json={"display_name": "Orthopaedics on call"})
    assert r.status_code == 200, r.text
    now = clock()
    day = await _shift(world, now - 3600, now + 3600, ["bea"])
    await intern.client.start(wait_connected=seconds(10))
    watch = Watch(await lightbox_process("--profile", "bea", "watch", "--timeout",
                                         str(seconds(120))))
    again: Watch | None = None
    db = await world.db()
    try:
        await watch.until("-- connected to the relay")
        thread = await intern.client.create_thread(roles=[normalise_role(ROLE)],
                                                   priority=Priority.URGENT)
        tid = thread.thread_id
        original = await intern.client.send_text(tid, "Displaced distal radius?",
                                                 subject=SUBJECT, priority=Priority.URGENT)
        await watch.until("Displaced distal radius?")
        # IT replaces Bea's shift by Dan's: the consult is handed over to him, and Ada's
        # device seals a copy, which reaches Bea too (she keeps the thread as a member).
        r = await world.http.delete(f"/v1/admin/oncall/{ORG}/{ROLE}/shifts/{day}",
                                    headers=world.admin_headers())
        assert r.status_code == 204, r.text
        await _shift(world, now - 60, now + 3600, ["dan"])
        await watch.until("also handed over by Dr Ada Intern's device")
        await watch.stop()  # the watch that was running; another is started below

        device = await asyncio.to_thread(open_profile, home / "bea", PASSWORD)
        (copy,) = [m for m in device.vault.messages(tid) if m.message_id !=
                   original.message_id]
        watch = Watch(await lightbox_process("--profile", "bea", "watch", "--timeout",
                                             str(seconds(120))))
        await watch.until("-- connected to the relay")
        client = command_client(device)  # `lightbox ack`, which takes the connection
        await client.start()
        try:
            await client.wait_synced(seconds(30))
            # Her acknowledgement of the copy is refused, and said so.
            with pytest.raises(FlowError) as refused:
                await _acknowledge(client, copy.message_id)
            assert (refused.value.code, str(refused.value)) == ("not_on_ladder",
                                                                _refused(tid))

            async def original_refused() -> bool:  # acknowledged with its copy, refused too
                view = client.view(device.vault.message(original.message_id))
                return bool(view.acknowledgement_refused)

            await eventually(original_refused, timeout=30)

            # Now the original, while the relay's check of it is held up, and her watch (a
            # new one: it connects at once) takes the connection meanwhile.
            connection = client.connection
            assert connection is not None
            held = db.transaction()
            await held.start()
            await db.execute("LOCK TABLE messages IN ACCESS EXCLUSIVE MODE")
            acking = asyncio.ensure_future(_acknowledge(client, original.message_id))

            async def written() -> bool:  # the receipt went, on the command's connection
                view = client.view(device.vault.message(original.message_id))
                return view.acknowledged_by_me and not view.acknowledgement_waiting

            await eventually(written, timeout=30)
            replaced = connection.reconnects
            again = Watch(await lightbox_process("--profile", "bea", "watch", "--timeout",
                                                 str(seconds(120))))

            async def taken() -> bool:
                return connection.reconnects > replaced

            await eventually(taken, timeout=30)
            await held.rollback()  # the relay checks the receipt now, and refuses it
            with pytest.raises(FlowError) as refused:
                await asyncio.wait_for(acking, seconds(60))
            assert (refused.value.code, str(refused.value)) == ("not_on_ladder",
                                                                _refused(tid))
        finally:
            await client.close()
    finally:
        await db.close()
        for w in (watch, again):
            if w is not None:
                err = await w.stop()
                assert "Traceback" not in err, err
        await intern.client.close()
