"""``lightbox watch`` on a device that was off while an image of its consult was filed to the
patient's record and its copies' expiry time passed (docs/USER_GUIDE.md "Interns: sending a
consult", §4 "Follow it"). Coming back, the relay sends the filing notice and the expiry order
together (docs/PROTOCOL.md §15) and the SDK applies the order before watch says anything: watch
gives one true account of the image, in order, never its copies' expiry as still to come once
it has passed, never "deleted from this device" for an image that never reached it. Real relay
with its own expiry sweep (a short grace), a real record gateway filing into a real Orthanc,
real ``lightbox watch`` processes."""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from pathlib import Path
from typing import cast

import pytest

from clients.clinician.reading import describe
from clients.sdk.client import LightboxClient
from clients.sdk.events import ExpiredEvent, FiledEvent
from clients.sdk.timefmt import format_time
from tests.clients.test_desktop import ORTHO, send_wrist_xray
from tests.clients.test_watch_beside_commands import Watch
from tests.clinician_world import enrol_clinician, lightbox_process, use_cli_profiles
from tests.consent_world import count
from tests.filing_world import enrol_gateway, orthanc_gateway
from tests.helpers import eventually, seconds
from tests.identity_world import World
from tests.orthanc import OrthancServer

# Copies expire two seconds after filing, swept often; attachments in 64 KiB chunks.
pytestmark = pytest.mark.world(attachment_chunk_bytes=64 * 1024, expiry_grace=2,
                               expiry_sweep_interval=0.5)

IMAGE = "a1b2c3d4-0000-4000-8000-000000000001"
THREAD = str(uuid.UUID(int=3))
NO_CLIENT = cast(LightboxClient, None)  # describe() reads only the event


async def _ordered(world: World, aid: str, device_ids: list[str]) -> bool:
    """The relay ordered the image's copy on each of ``device_ids`` destroyed."""
    return await count(world, "SELECT count(*) FROM expiry_orders WHERE attachment_id = $1 "
                       "AND device_id = ANY($2::uuid[])", uuid.UUID(aid),
                       [uuid.UUID(d) for d in device_ids]) == len(device_ids)


async def _watch(profile: str, last: str) -> list[str]:
    """What ``lightbox watch`` on ``profile`` said once it said ``last`` and then had a few
    seconds more to say anything else."""
    watch = Watch(await lightbox_process("--profile", profile, "watch", "--timeout",
                                         str(seconds(90))))
    try:
        await watch.until(last, timeout=60)
        await asyncio.sleep(seconds(3))
    finally:
        err = await watch.stop()
    assert "Traceback" not in err and "never retrieved" not in err, err
    return watch.lines


async def test_watch_back_after_an_image_was_filed_and_expired_says_it_once_in_order(
        world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        orthanc: OrthancServer) -> None:
    home = use_cli_profiles(monkeypatch, tmp_path)
    intern = await enrol_clinician(world, tmp_path, "intern", display_name="Dr Ada Intern",
                                   vault_dir=home / "intern")
    bea = await enrol_clinician(world, tmp_path, "ortho", roles=(ORTHO,),
                                display_name="Dr Bea Ortho", vault_dir=home / "ortho")
    bea.vault.lock()  # off all along
    gateway = await enrol_gateway(world, tmp_path)
    gw, pacs = orthanc_gateway(gateway, orthanc)
    # The intern's phone sends the x-ray, then is off while it is filed and its copies expire.
    await intern.client.start(wait_connected=seconds(10))
    try:
        sent = await send_wrist_xray(intern)
    finally:
        await intern.client.close()
    intern.vault.lock()
    (aid,) = sent.attachment_ids
    devices = [await world.device_of(c.user_id) for c in (intern, bea)]
    try:
        await gw.start()
        await eventually(lambda: _ordered(world, aid, devices), timeout=60)
    finally:
        await gw.stop()
        await pacs.aclose()
    short = aid[:8]

    # The intern's watch: the gateway's receipt, then one line: deleted, and where the record
    # keeps it. Not "copies expire" at a time already past, then "deleted" after it.
    lines = _about(await _watch("intern", "never received the image of "), short)
    filed = re.fullmatch(rf"\[.*\] Gateway in {sent.thread_id[:8]}: image {short} filed in "
                         r"the record \(study (2\.25\.\d+)\)", lines[0])
    assert filed is not None, lines
    study = filed.group(1)
    assert lines[1:] == [f"    image {short} deleted from this device (filed) - in the record: "
                         f"{study}"], lines

    # Bea's watch: the consult with its image's line, the image never having reached her
    # device, then the gateway's receipt; nothing more of the image ("deleted from this
    # device" would be untrue: it never was on it).
    lines = _about(await _watch("ortho", f"Gateway in {sent.thread_id[:8]}: "), short)
    assert lines == [
        f"    image {short}: filed to the patient's record before it reached this device, so "
        f"never shown here - in the record: {study}",
        f"    I'm on it: lightbox ack {sent.message_id}",  # under the consult, not about it
        lines[2]], lines
    assert lines[2].endswith(f"Gateway in {sent.thread_id[:8]}: image {short} filed in the "
                             f"record (study {study})"), lines


def _about(lines: list[str], short: str) -> list[str]:
    """The lines about the image (its short id), and the "I'm on it" hint among them."""
    return [line for line in lines if short in line or "I'm on it" in line]


def test_a_filing_told_after_its_copies_expired_never_says_they_expire_later() -> None:
    """A filing notice that comes after the copies' expiry time, their order still to come: the
    time is said as past."""
    at = int(time.time()) - 600
    line = describe(NO_CLIENT, FiledEvent(IMAGE, str(uuid.uuid4()), THREAD, at - 900, at,
                                          "ACC123"))
    assert line == (f"    image a1b2c3d4 filed in the record as ACC123; copies expired "
                    f"{format_time(at)}: deleted from this device as soon as the relay orders "
                    "it")


def test_a_deletion_names_where_the_record_keeps_the_image() -> None:
    line = describe(NO_CLIENT, ExpiredEvent(IMAGE, THREAD, "ACC123", "filed"))
    assert line == "    image a1b2c3d4 deleted from this device (filed) - in the record: ACC123"

