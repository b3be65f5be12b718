"""The words of a ``no_shift`` step (docs/PROTOCOL.md §16.4) on the command line: the first of
a wait says it anew ("no one is on call for the role now"), also when it comes after other
steps (a handover deferred because IT removed the running shift); a reminder of the wait,
whose step before said the same, says "still" (clients/clinician/reading.py
``describe_escalation``). A real SDK client and the steps its memory keeps."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

from clients.clinician.reading import describe_escalation
from clients.sdk.events import EscalationEvent
from tests.clinician_world import cli_world, enrol_clinician
from tests.identity_world import World

world = cli_world  # the relay and the CLI's environment (tests/clinician_world.py)


async def test_a_deferred_handover_says_no_one_is_on_call_and_its_reminder_says_still(
        world: World, tmp_path: Path) -> None:
    ada = await enrol_clinician(world, tmp_path, "ada")
    thread, message, now = str(uuid.uuid4()), str(uuid.uuid4()), int(time.time())
    nxt = now + 3600

    def step(n: int, kind: str) -> EscalationEvent:
        return EscalationEvent(thread, message, kind, n, 0, ada.user_id, now + n, nxt)

    said = []
    for s in (step(1, "renotify"), step(2, "no_shift"), step(3, "no_shift")):
        assert ada.client.memory.note_step(s)
        said.append(describe_escalation(ada.client, s))
    assert ": no one is on call for the role now; it goes to the next shift when" in said[1]
    assert ": still no one on call for the role: reminded; it goes to the next" in said[2]
