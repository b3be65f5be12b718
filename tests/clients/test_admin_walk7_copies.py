"""``lightbox-admin copies`` says what the relay's audit proves, as IT runs it against a real
relay (docs/USER_GUIDE.md, "Expiry"; docs/PROTOCOL.md §15 "Where every copy went"): an id
with no image behind it is said so with exit status 1 (never an empty answer and 0), a
malformed id has its own sentence; and a desktop linked but never started, ordered to expire an
image it never downloaded, reads "never received" and holds no copy, since from the order on the
relay refuses it the image: the summary says copies remain only while one may."""

from __future__ import annotations

import dataclasses
import uuid
from pathlib import Path

import pytest

from clients.sdk.client import ImageEvent, LightboxClient
from tests.clients.test_cli_failures import _env, run
from tests.clients.test_filing_journey import ORTHO, next_event
from tests.clients.test_never_received import expire, online, send_and_file
from tests.clients.test_unread_own_devices import link_desktop
from tests.clinician_world import enrol_clinician
from tests.consent_world import count
from tests.filing_world import admin_copies
from tests.helpers import eventually
from tests.identity_world import PASSWORD, World
from tests.orthanc import OrthancServer

# Attachments in 64 KiB chunks, as the image and filing journeys need.
pytestmark = pytest.mark.world(attachment_chunk_bytes=64 * 1024)

NOBODY = "00000000-0000-0000-0000-000000000000"


async def test_an_id_with_no_image_behind_it_is_said_so_and_a_malformed_one_too(
        world: World, tmp_path: Path) -> None:
    env = _env(tmp_path, world)
    cases = [
        (("--thread", NOBODY), 1,
         f"error: not_found: no consult with id {NOBODY} holds a shared image\n"),
        (("--attachment", NOBODY), 1, f"error: not_found: no shared image with id {NOBODY}\n"),
        (("--thread", NOBODY, "--json"), 1,
         f"error: not_found: no consult with id {NOBODY} holds a shared image\n"),
        (("--thread", "wrist-bed-4"), 2,
         "error: 'wrist-bed-4' is not a consult id: a consult id is a UUID, as `lightbox "
         "send` prints it: in thread ID, or its first 8 characters or more, as `lightbox "
         "inbox` and `watch` print it\n"),
        (("--thread", "0000000"), 2,  # 7 characters: too short to name one consult
         "error: '0000000' is not a consult id: a consult id is a UUID, as `lightbox "
         "send` prints it: in thread ID, or its first 8 characters or more, as `lightbox "
         "inbox` and `watch` print it\n"),
        (("--thread", "00000000"), 1,
         "error: not_found: no consult with id starting 00000000 holds a shared image\n"),
        (("--attachment", "cd4b2045"), 2,
         "error: 'cd4b2045' is not a shared image id: a shared image id is a UUID, as the "
         "gateway's log names it: filed attachment ID\n"),
    ]
    for argv, status, sentence in cases:
        assert await run("lightbox-admin", "copies", *argv, env=env) == (status, "", sentence)


async def test_a_linked_desktop_that_never_started_never_received_the_image_and_holds_no_copy(
        world: World, tmp_path: Path, orthanc: OrthancServer,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    intern = await enrol_clinician(world, tmp_path, "intern")
    phone = await enrol_clinician(world, tmp_path, "ortho", roles=(ORTHO,))
    desktop = await link_desktop(world, phone, tmp_path / "ortho-desktop")
    await desktop.close()  # linked, never started
    phone = dataclasses.replace(phone, client=LightboxClient(  # link_desktop closed its own
        phone.vault, phone.vault, password=PASSWORD, backoff_base=0.05, backoff_max=0.5))
    home = tmp_path / "admin-home"
    async with online(world, tmp_path, orthanc, intern, phone):
        phone_events = phone.client.subscribe()
        thread_id, _, aid, filed = await send_and_file(intern, [phone.user_id], 34)
        await next_event(phone_events, ImageEvent,
                         lambda e: e.attachment_id == aid and e.status == "stored")
        # Filed, not expired yet: the intern's and the phone's copies are held.
        rc, text = await admin_copies(world, home, monkeypatch, capsys, "--thread", thread_id)
        assert rc == 0, text
        assert text.splitlines()[-1] == "  copies remain on 2 devices", text
        # The consult's short id, as a clinician reads it out from their screen: the same.
        assert await admin_copies(world, home, monkeypatch, capsys, "--thread",
                                  thread_id[:8]) == (rc, text)
        # Another consult whose id starts the same: the short id no longer names one.
        other = thread_id[:9] + ("0" if thread_id[9] != "0" else "1") + "0" * 3 + "-" + \
            "0" * 4 + "-" + "0" * 4 + "-" + "0" * 12
        await world.execute("INSERT INTO threads (thread_id, org_id, created_by, priority, "
                            "created_at) SELECT $1, org_id, created_by, priority, created_at "
                            "FROM threads WHERE thread_id = $2", uuid.UUID(other),
                            uuid.UUID(thread_id))
        assert await run("lightbox-admin", "copies", "--thread", thread_id[:8],
                         env=_env(tmp_path, world)) == (
            2, "", f"error: validation_failed: more than one consult id starts with "
                   f"{thread_id[:8]}: give more of it\n")
        assert await admin_copies(world, home, monkeypatch, capsys, "--thread",
                                  thread_id[:10]) == (rc, text)

        await expire(world, filed)  # the order goes to every device; only the desktop's waits

        async def only_the_desktop_unconfirmed() -> bool:
            return await count(world, "SELECT count(*) FROM expiry_orders WHERE "
                               "attachment_id = $1 AND confirmed_at IS NULL",
                               uuid.UUID(aid)) == 1
        await eventually(only_the_desktop_unconfirmed, timeout=30)

    rc, text = await admin_copies(world, home, monkeypatch, capsys, "--thread", thread_id)
    assert rc == 0, text
    lines = text.splitlines()
    (line,) = [line for line in lines if line.startswith(f"  {desktop.device_id}")]
    assert line.split()[2] == "-"  # received: never
    assert line.endswith("  never received; expiry ordered, not confirmed"), text
    assert lines[-1] == ("  no copy remains: 1 device never received the image (expiry order "
                         "not confirmed yet)")
