"""clients/sdk/threads.py, the threads as the relay lists them, against a real relay: kept in
the vault, so that a client started while the relay is out of reach lists the consults it holds
(the desktop's offline unlock, tests/clients/test_desktop_offline.py), and the relay's answer
is the list whenever it gives one."""

from __future__ import annotations

from pathlib import Path

import msgspec

from clients.sdk.client import LightboxClient
from protocol import api
from tests.clinician_world import enrol_clinician
from tests.identity_world import PASSWORD, World


async def test_the_threads_as_last_listed_are_kept_for_the_next_start(
        world: World, tmp_path: Path) -> None:
    intern = await enrol_clinician(world, tmp_path, "intern")
    ortho = await enrol_clinician(world, tmp_path, "ortho")
    try:
        await intern.client.ensure_login()
        made = await intern.client.create_thread(users=[ortho.user_id])
        listed = await intern.client.threads()
        assert [t.thread_id for t in listed] == [made.thread_id]
    finally:
        await intern.client.relay.aclose()
    # The next start, before it has asked the relay anything.
    again = LightboxClient(intern.vault, intern.vault, password=PASSWORD)
    try:
        assert again.cached_threads() == listed
    finally:
        await again.relay.aclose()


async def test_a_thread_the_relay_no_longer_lists_is_forgotten_here_and_in_the_vault(
        world: World, tmp_path: Path) -> None:
    intern = await enrol_clinician(world, tmp_path, "intern")
    ortho = await enrol_clinician(world, tmp_path, "ortho")
    gone = api.ThreadInfo(thread_id="0b9c3c66-3f3a-4c1e-9a51-6a3f0f1b2c3d", priority="routine",
                          created_by=intern.user_id, created_at=1, last_seq=1, unread=0,
                          members=[intern.user_id], roles=[])
    # Listed by the relay once (an earlier run), no longer: the user was taken off it.
    intern.vault.put_note("thread", gone.thread_id, msgspec.msgpack.encode(gone))
    try:
        kept = LightboxClient(intern.vault, intern.vault, password=PASSWORD)
        assert [t.thread_id for t in kept.cached_threads()] == [gone.thread_id]
        await kept.ensure_login()
        made = await kept.create_thread(users=[ortho.user_id])
        await kept.threads()
        assert [t.thread_id for t in kept.cached_threads()] == [made.thread_id]
        assert list(intern.vault.notes("thread")) == [made.thread_id]
        await kept.relay.aclose()
    finally:
        await intern.client.relay.aclose()
