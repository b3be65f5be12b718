"""``lightbox watch`` on a device that was offline while a consult's image was filed and its
copies expired: the relay sends the expiry order before the consult (docs/PROTOCOL.md §15), so
the image never reaches the device. Watch, once connected at its start, shows each consult
``lightbox inbox`` shows, also one an earlier command stored unread, with its image's line
("... before it reached this device, so never shown here"), never as a text-only consult nor
not at all (docs/HAZARD_LOG.md HAZ-02 C21); the sender's watch on another of their devices
says whom the image never reached under the consult, not above it. Real relay, record
gateway's filing, expiry sweep and ``lightbox`` processes."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from clients.sdk.client import LightboxClient
from tests.clients.test_expiry import ORTHO, _confirmed, _share_and_expire
from tests.clients.test_unread_own_devices import link_desktop
from tests.clients.test_watch_beside_commands import Watch
from tests.clinician_world import Clinician, cli_world, enrol_clinician, lightbox_process
from tests.clinician_world import run_cli as lightbox
from tests.helpers import seconds
from tests.identity_world import PASSWORD, World

world = cli_world  # the relay and the CLI's environment (tests/clinician_world.py)


async def _filed_and_expired(world: World, intern: Clinician, bea: Clinician,
                             **share: Any) -> str:
    """The intern's x-ray to Bea (``share``: as ``_share_and_expire`` takes), filed and its
    copies expired, the intern's confirmed: the attachment id."""
    await intern.client.start(wait_connected=seconds(10))
    try:
        aid, _ = await _share_and_expire(world, intern, bea, **share)
        await _confirmed(world, intern.client.device_id, aid)
    finally:
        await intern.client.close()
    return aid


async def _watch(profile: str, *until: str) -> list[str]:
    """What ``lightbox watch`` on ``profile`` said, up to each of ``until``."""
    watch = Watch(await lightbox_process("--profile", profile, "watch", "--timeout",
                                         str(seconds(60))))
    try:
        for text in until:
            await watch.until(text)
    finally:
        err = await watch.stop()
        assert "Traceback" not in err, err
    return watch.lines


async def test_watch_shows_a_consult_whose_image_expired_before_it_came_with_its_image_line(
        world: World, tmp_path: Path) -> None:
    home = tmp_path / "home"
    intern = await enrol_clinician(world, tmp_path, "intern", display_name="Dr Ada Intern")
    bea = await enrol_clinician(world, tmp_path, "bea", roles=(ORTHO,),
                                display_name="Dr Bea Ortho", vault_dir=home / "bea")
    carl = await enrol_clinician(world, tmp_path, "carl", roles=(ORTHO,),
                                 display_name="Dr Carl Backup", vault_dir=home / "carl")
    bea.vault.lock()
    carl.vault.lock()
    aid = await _filed_and_expired(world, intern, bea, also=(carl,))
    rc, out, err = await lightbox("--profile", "carl", "threads")  # stores it, unread
    assert rc == 0, out + err
    never_here = "before it reached this device, so never shown here"
    for who in ("bea", "carl"):
        lines = await _watch(who, never_here, "    I'm on it: lightbox ack ")
        header = next(i for i, line in enumerate(lines) if "Dr Ada Intern in " in line)
        assert "Wrist AP" in lines[header], lines
        image = lines[header + 1]
        assert image.startswith(f"    image {aid[:8]}: ") and never_here in image, lines
        assert lines[header + 2].startswith("    I'm on it: lightbox ack "), lines
        rc, out, err = await lightbox("--profile", who, "inbox")  # says the same
        assert rc == 0, out + err
        assert image in out.splitlines(), out


async def test_watch_says_never_received_under_the_consult_it_is_about(
        world: World, tmp_path: Path) -> None:
    intern = await enrol_clinician(world, tmp_path, "intern", display_name="Dr Ada Intern")
    bea = await enrol_clinician(world, tmp_path, "bea", roles=(ORTHO,),
                                display_name="Dr Bea Ortho")
    desk = await link_desktop(world, intern, tmp_path / "home" / "intern-desk")
    await desk.close()
    intern = dataclasses.replace(intern, client=LightboxClient(  # link_desktop closed its own
        intern.vault, intern.vault, password=PASSWORD, backoff_base=0.05, backoff_max=0.5))
    await _filed_and_expired(world, intern, bea, other_devices=1)
    lines = await _watch("intern-desk", "Dr Bea Ortho never received the image of ")
    header = next((i for i, line in enumerate(lines) if "] you in " in line), None)
    assert header is not None, lines
    (told,) = [i for i, line in enumerate(lines) if "never received" in line]
    assert told == header + 2 and "it was filed to the patient's record" in lines[told], lines
