"""A lost phone is erased by the relay's wipe order, not by the test (docs/PROTOCOL.md §15 "Wipe").

IT revokes the phone with wipe (the organisation-signed revocation list that
``lightbox-admin device revoke DEVICE_ID --wipe`` posts); the phone is the clinician's real
``lightbox`` CLI in its own process, either connected at that moment (``lightbox watch``) or
offline with an expired access token and coming back later (``lightbox inbox``). Its SDK hears
the order from the relay, verifies it, erases the profile (vault and keys) and confirms; the
relay records the wipe as confirmed and orders it no more. A running ``watch`` ends one way
whatever the order finds it doing, also on a poor signal that makes the confirmation, or the
consult it was about to show, late (tests/clients/poor_signal.py).
"""

from __future__ import annotations

import asyncio
import os
import re
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest

from tests.clients import poor_signal
from tests.clients.test_watch_beside_commands import Watch
from tests.clinician_world import (
    enrol_clinician,
    intern_and_specialist,
    lightbox_process,
    use_cli_profiles,
)
from tests.consent_world import count
from tests.helpers import ROOT, seconds
from tests.identity_world import World, identity_world

ORTHO = "orthopaedics_oncall"
# How late the poor signal (tests/clients/poor_signal.py) makes a step: longer than the second
# between two of watch's idle checks, shorter than the 10 s the relay waits for the
# confirmation (LIGHTBOX_WS_AUTH_TIMEOUT). Not scaled: a lateness, not a timeout.
LATE = 3.0
WIPED = re.compile(rb"(?:\A|\n)-- wiped: this device was revoked by your organisation on "
                   rb"\d{4}-\d\d-\d\d \d\d:\d\d \(lost\); its data has been erased\n\Z")


@pytest.fixture
async def world(db_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                ) -> AsyncIterator[World]:
    use_cli_profiles(monkeypatch, tmp_path)
    async with identity_world(db_dsn, tmp_path) as w:
        yield w


async def phone(world: World, tmp_path: Path, *, expired: bool = False) -> str:
    """The specialist's phone: enrolled, logged in (its tokens in the vault), then closed;
    returns its device id. ``expired``: its access token has expired meanwhile (a phone lost
    for a while)."""
    ortho = await enrol_clinician(world, tmp_path, "ortho", roles=(ORTHO,),
                                  vault_dir=tmp_path / "home" / "phone")
    await ortho.client.ensure_login()
    await ortho.client.relay.aclose()
    if expired:
        session = ortho.vault.state.session
        assert session is not None
        ortho.vault.save(msgspec.structs.replace(
            ortho.vault.state, session=msgspec.structs.replace(session, expires_at=0)))
    device_id = ortho.client.device_id
    ortho.vault.lock()
    return device_id


def assert_erased(profile: Path) -> None:
    left = sorted(p.name for p in profile.rglob("*")) if profile.exists() else []
    assert left == [], f"the wiped profile still holds {left}"


async def wipe_audit(world: World, device_id: str) -> list[str]:
    conn = await world.db()
    try:
        rows = await conn.fetch(
            "SELECT event FROM audit_log WHERE subject_id = $1 AND event LIKE 'device.wipe%' "
            "ORDER BY seq", device_id)
        return [r["event"] for r in rows]
    finally:
        await conn.close()


async def wipe_pending(world: World, device_id: str) -> bool:
    return await count(world, "SELECT count(*) FROM devices WHERE device_id = $1 AND "
                       "wipe_pending", uuid.UUID(device_id)) == 1


async def test_a_connected_phone_revoked_with_wipe_is_erased_by_the_relays_order(
        world: World, tmp_path: Path) -> None:
    device_id = await phone(world, tmp_path)
    watch = await lightbox_process("--profile", "phone", "watch", "--timeout", str(seconds(60)))
    try:
        assert watch.stdout is not None
        async with asyncio.timeout(seconds(30)):
            while b"-- connected to the relay" not in await watch.stdout.readline():
                pass
        r = await world.revoke(world.org, 1, devices=(device_id,), wipe=True)
        assert r.status_code == 200, r.text
        out, err = await asyncio.wait_for(watch.communicate(), seconds(60))
    finally:
        if watch.returncode is None:
            watch.kill()
            await watch.wait()
    assert watch.returncode == 0, err.decode()
    assert WIPED.search(out), out + err  # its last line
    assert b"Traceback" not in err
    assert_erased(tmp_path / "home" / "phone")
    assert await wipe_audit(world, device_id) == ["device.wipe_ordered",
                                                  "device.wipe_confirmed"]
    assert not await wipe_pending(world, device_id)


async def watch_wiped_on_a_poor_signal(world: World, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch, *,
                                       confirm_after: float, names_after: float) -> None:
    """The specialist's ``lightbox watch``, on a poor signal (tests/clients/poor_signal.py),
    has shown a consult, so it is past its start; the intern sends a second one, and IT
    revokes the phone with wipe as it arrives. Watch ends with the "wiped" line, exit status
    0, nothing on stderr; the profile is erased and the wipe confirmed."""
    intern, ortho = await intern_and_specialist(world, tmp_path, monkeypatch, ORTHO)
    device_id = await world.device_of(ortho.user_id)
    names_slow = tmp_path / "names-slow"
    watch = Watch(await asyncio.create_subprocess_exec(
        sys.executable, "-c", poor_signal.SCRIPT, str(confirm_after), str(names_after),
        str(names_slow), "--profile", "ortho", "watch", "--timeout", str(seconds(120)),
        cwd=ROOT, env=dict(os.environ), stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE))
    try:
        await watch.until("-- connected to the relay")
        await intern.client.start(wait_connected=seconds(10))
        await watch.shows_consult(intern, "Bed 4: wrist, before the phone was lost")
        names_slow.touch()
        thread = await intern.client.create_thread(roles=[ORTHO])
        await intern.client.send_text(thread.thread_id, "Bed 6: hip, as the phone is lost")
        r = await world.revoke(world.org, 1, devices=(device_id,), wipe=True)
        assert r.status_code == 200, r.text
        async with asyncio.timeout(seconds(60)):
            await watch.process.wait()
    finally:
        err = await watch.stop()
        await intern.client.close()
    assert watch.process.returncode == 0, (watch.lines, err)
    assert WIPED.search(f"\n{watch.lines[-1]}\n".encode()), (watch.lines, err)
    assert not [line for line in watch.lines if "locked itself" in line], watch.lines
    assert err == "", err
    assert_erased(tmp_path / "home" / "ortho")
    assert await wipe_audit(world, device_id) == ["device.wipe_ordered",
                                                  "device.wipe_confirmed"]


async def test_a_phone_slow_to_confirm_its_wipe_says_wiped_not_locked(
        world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The order locks the vault a moment before the client says "wiped" (it confirms to the
    relay in between). Watch, which looks at its vault every second to lock it when idle,
    met that locked vault: it said "the vault locked itself", failed to unlock the erased
    vault (exit status 1, no "wiped" line), and had it stopped there, the confirmation would
    have gone with the connection."""
    await watch_wiped_on_a_poor_signal(world, tmp_path, monkeypatch,
                                       confirm_after=LATE, names_after=0)


async def test_a_phone_wiped_while_it_shows_a_consult_says_wiped_not_a_failure(
        world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Watch was about to show a consult (looking up its sender's name) when the order erased
    the vault holding it: showing it failed, and watch ended with exit status 1 and the
    failure's sentence instead of its "wiped" line."""
    await watch_wiped_on_a_poor_signal(world, tmp_path, monkeypatch,
                                       confirm_after=0, names_after=LATE)


async def test_a_phone_offline_when_revoked_is_erased_when_it_connects_later(
        world: World, tmp_path: Path) -> None:
    """Revoked while switched off; its access token expired meanwhile. The next command that
    connects hears the order, erases the profile and confirms."""
    device_id = await phone(world, tmp_path, expired=True)
    r = await world.revoke(world.org, 1, devices=(device_id,), wipe=True)
    assert r.status_code == 200, r.text
    assert (tmp_path / "home" / "phone" / "vault.db").exists()
    inbox = await lightbox_process("--profile", "phone", "inbox")
    out, err = await asyncio.wait_for(inbox.communicate(), seconds(60))
    assert b"Traceback" not in err
    assert b"This device was revoked by your organisation on " in out + err, out + err
    assert b"; its data has been erased." in out + err, out + err
    assert_erased(tmp_path / "home" / "phone")
    assert await wipe_audit(world, device_id) == ["device.wipe_ordered",
                                                  "device.wipe_confirmed"]
    assert not await wipe_pending(world, device_id)
