"""What ``lightbox watch`` and ``lightbox inbox`` print, against a real relay: a colleague's
receipt is said once per person, however many of their devices signed one (each device that
holds a message signs its own, docs/PROTOCOL.md §16.6); and the inbox lists unread messages
urgent first, then in the order they were written, across threads."""

from __future__ import annotations

import re
from pathlib import Path

from clients.sdk.client import LightboxClient
from protocol.model import Priority
from tests.clients.test_unread_own_devices import link_desktop
from tests.clinician_world import Clinician, cli_world, enrol_clinician
from tests.clinician_world import run_cli as lightbox
from tests.helpers import seconds
from tests.identity_world import PASSWORD, World

world = cli_world  # the relay and the CLI's environment (tests/clinician_world.py)

ORTHO = "orthopaedics_oncall"


async def _ada_and_bea(world: World, tmp_path: Path, *, cli: str
                       ) -> tuple[Clinician, Clinician]:
    """Dr Ada Intern and Dr Bea Ortho; the one named ``cli`` with a CLI profile of her login."""
    ada, bea = [await enrol_clinician(world, tmp_path, login, roles=roles, display_name=name,
                                      vault_dir=tmp_path / "home" / login if login == cli
                                      else None)
                for login, name, roles in (("ada", "Dr Ada Intern", ("intern",)),
                                           ("bea", "Dr Bea Ortho", (ORTHO,)))]
    return ada, bea


async def test_watch_says_each_receipt_once_per_person_not_per_device(
        world: World, tmp_path: Path) -> None:
    ada, phone = await _ada_and_bea(world, tmp_path, cli="ada")
    desktop = await link_desktop(world, phone, tmp_path / "bea-desktop")
    await ada.client.start(wait_connected=seconds(10))
    try:
        thread = await ada.client.create_thread(users=[phone.user_id])
        sent = await ada.client.send_text(thread.thread_id, "Wrist film, bed 4: fracture?")
    finally:
        await ada.client.close()
    ada.vault.lock()  # `lightbox watch` opens it with the password
    # Both of Bea's devices receive it (a signed "delivered" each) and read it ("read" each);
    # closing sends what they kept (LightboxClient.close).
    # (link_desktop closed the phone's first client: a new one on its vault)
    phone_client = LightboxClient(phone.vault, phone.vault, password=PASSWORD)
    for bea in (phone_client, desktop):
        await bea.start(wait_connected=seconds(10))
        try:
            await bea.wait_synced(seconds(15))
            assert await bea.mark_read(thread.thread_id) == 1
        finally:
            await bea.close()

    rc, out, err = await lightbox("--profile", "ada", "watch", "--timeout", str(seconds(8)))
    assert rc == 0, out + err
    for kind in ("delivered", "read"):
        said = re.findall(rf"^    Dr Bea Ortho: {kind} \({sent.message_id[:8]}\)$", out,
                          re.MULTILINE)
        assert len(said) == 1, out


async def test_inbox_lists_urgent_first_then_in_the_order_written_across_threads(
        world: World, tmp_path: Path) -> None:
    ada, bea = await _ada_and_bea(world, tmp_path, cli="bea")
    bea.vault.lock()  # `lightbox inbox` opens it with the password
    await ada.client.start(wait_connected=seconds(10))
    try:
        first = (await ada.client.create_thread(users=[bea.user_id])).thread_id
        second = (await ada.client.create_thread(users=[bea.user_id])).thread_id
        urgent = (await ada.client.create_thread(users=[bea.user_id],
                                                 priority=Priority.URGENT)).thread_id
        # The first thread has the newest activity, so the relay lists it first.
        for thread_id, text in ((first, "one: wrist"), (second, "two: ankle"),
                                (first, "three: wrist again"), (urgent, "four: hip, urgent")):
            await ada.client.send_text(thread_id, text)
    finally:
        await ada.client.close()

    rc, out, err = await lightbox("--profile", "bea", "inbox")
    assert rc == 0, out + err
    shown = re.findall(r"^(?:URGENT )?\[[^]]+\] Dr Ada Intern in \S+: (.*)$", out, re.MULTILINE)
    assert shown == ["four: hip, urgent", "one: wrist", "two: ankle", "three: wrist again"], out
    assert "4 unread messages\n" in out, out
