"""Your own replies never count as unread (docs/USER_GUIDE.md "Everyday commands"), whichever of
your devices sent them: Bea answers a consult from her desktop, and her phone's `lightbox inbox`
and `lightbox threads` count only the intern's messages, against a real relay."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from clients.sdk import identity
from clients.sdk.client import LightboxClient
from clients.sdk.http import RelayHTTP
from clients.sdk.keystore import KeyStore
from clients.sdk.profile import open_profile
from protocol.keys import CHEAP_PROFILE
from protocol.model import DeviceKind
from tests.clinician_world import Clinician, enrol_clinician, use_cli_profiles
from tests.clinician_world import run_cli as lightbox
from tests.helpers import seconds
from tests.identity_world import PASSWORD, World, identity_world

ORTHO = "orthopaedics_oncall"


@pytest.fixture
async def world(db_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                ) -> AsyncIterator[World]:
    use_cli_profiles(monkeypatch, tmp_path)
    async with identity_world(db_dsn, tmp_path) as w:
        yield w



async def link_desktop(world: World, phone: Clinician, directory: Path) -> LightboxClient:
    """Bea links her desktop from her phone, as `lightbox link` does: a second device of the
    same user (its own key store and vault)."""
    async with RelayHTTP(world.relay.base_url) as anonymous:
        pending = await identity.offer_link(anonymous, DeviceKind.DESKTOP)
        await phone.client.ensure_login()
        try:
            await identity.approve_link(phone.client.relay, phone.vault,  # type: ignore[arg-type]
                                        pending.code)
        finally:
            await phone.client.relay.aclose()
        result = await identity.wait_for_link(anonymous, pending, interval=0.05)
        await identity.finish_link(anonymous, KeyStore(directory), pending, result, PASSWORD,
                                   one_time=10, kdf=CHEAP_PROFILE)
    device = open_profile(directory, PASSWORD)
    return device.client(backoff_base=0.05, backoff_max=0.5)


async def test_replies_sent_from_your_other_device_are_never_unread(
        world: World, tmp_path: Path) -> None:
    home = tmp_path / "home"
    ada = await enrol_clinician(world, tmp_path, "ada", display_name="Dr Ada Intern")
    phone = await enrol_clinician(world, tmp_path, "bea", roles=(ORTHO,),
                                  display_name="Dr Bea Ortho", vault_dir=home / "bea-phone")
    desktop = await link_desktop(world, phone, tmp_path / "bea-desktop")
    phone.vault.lock()  # the CLI opens it with the password
    await ada.client.start(wait_connected=seconds(10))
    await desktop.start(wait_connected=seconds(10))
    try:
        thread = await ada.client.create_thread(roles=[ORTHO])
        await ada.client.send_text(thread.thread_id, "Is this a scaphoid fracture?",
                                   subject="Wrist, bed 9")
        await ada.client.send_text(thread.thread_id, "Tender in the snuffbox too.")
        await desktop.wait_synced(seconds(15))
        # Bea answers from her desktop, twice.
        await desktop.send_text(thread.thread_id, "Coming down.")
        await desktop.send_text(thread.thread_id, "Splint it meanwhile.")
        assert desktop.unread(thread.thread_id) == 2
    finally:
        await desktop.close()
        await ada.client.close()

    rc, threads_out, err = await lightbox("--profile", "bea-phone", "threads")
    assert rc == 0, err
    assert re.search(r" 2 unread$", threads_out, re.MULTILINE), threads_out
    rc, inbox_out, err = await lightbox("--profile", "bea-phone", "inbox")
    assert rc == 0, err
    assert "2 unread messages\n" in inbox_out, inbox_out
    assert "you in " not in inbox_out, inbox_out
    assert "Coming down." not in inbox_out and "Splint it" not in inbox_out, inbox_out
    # Marking the thread read sends no read receipt to herself, and leaves nothing unread.
    rc, _, err = await lightbox("--profile", "bea-phone", "inbox", "--mark-read")
    assert rc == 0, err
    rc, threads_out, _ = await lightbox("--profile", "bea-phone", "threads")
    assert re.search(r" 0 unread$", threads_out, re.MULTILINE), threads_out
