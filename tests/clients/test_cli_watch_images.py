"""``lightbox watch`` says an image's filing and expiry only on a device that holds a message
of its consult: an on-call backup whose copy was held is sent both too, and "deleted from this
device" would be untrue there (clients/clinician/reading.py ``about_a_consult_here``). Real
relay, a real SDK client and its vault."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

from clients.clinician.reading import about_a_consult_here
from clients.sdk.events import ExpiredEvent, FiledEvent, ReceiptEvent
from tests.clinician_world import cli_world, enrol_clinician
from tests.helpers import seconds
from tests.identity_world import World

world = cli_world  # the relay and the CLI's environment (tests/clinician_world.py)


async def test_filing_and_expiry_are_said_only_for_a_consult_this_device_holds(
        world: World, tmp_path: Path) -> None:
    ada = await enrol_clinician(world, tmp_path, "ada")
    eve = await enrol_clinician(world, tmp_path, "eve")
    await ada.client.start(wait_connected=seconds(10))
    try:
        thread = await ada.client.create_thread(users=[eve.user_id])
        await ada.client.send_text(thread.thread_id, "Effusion?")
        aid, now = str(uuid.uuid4()), int(time.time())
        for thread_id, said in ((thread.thread_id, True), (str(uuid.uuid4()), False)):
            assert about_a_consult_here(ada.client, FiledEvent(
                aid, str(uuid.uuid4()), thread_id, now, now + 900, "ACC42")) is said
            assert about_a_consult_here(ada.client, ExpiredEvent(
                aid, thread_id, "ACC42", "filed")) is said
        # anything else is said as before
        assert about_a_consult_here(ada.client, ReceiptEvent(
            str(uuid.uuid4()), eve.user_id, str(uuid.uuid4()), "read", now, "Eve"))
    finally:
        await ada.client.close()
