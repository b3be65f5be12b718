"""A lost phone is erased by the relay's wipe order, not by the test (docs/PROTOCOL.md §15 "Wipe").

IT revokes the phone with wipe (the organisation-signed revocation list that
``lightbox-admin device revoke DEVICE_ID --wipe`` posts); the phone is the clinician's real
``lightbox`` CLI in its own process, either connected at that moment (``lightbox watch``) or
offline with an expired access token and coming back later (``lightbox inbox``). Its SDK hears
the order from the relay, verifies it, erases the profile (vault and keys) and confirms; the
relay records the wipe as confirmed and orders it no more.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest

from tests.clinician_world import enrol_clinician, lightbox_process, use_cli_profiles
from tests.consent_world import count
from tests.helpers import seconds
from tests.identity_world import World, identity_world

ORTHO = "orthopaedics_oncall"


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
    assert b"-- wiped: this device was revoked" in out, out + err
    assert b"Traceback" not in err
    assert_erased(tmp_path / "home" / "phone")
    assert await wipe_audit(world, device_id) == ["device.wipe_ordered",
                                                  "device.wipe_confirmed"]
    assert not await wipe_pending(world, device_id)


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
