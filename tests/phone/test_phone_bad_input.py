"""Bad input on the phone, each a clear sentence on the screen and nothing saved: a QR code that
is not a handout, the camera refused, a malformed or unknown enrolment code, an organisation
key that does not match the handout; and the app locks itself after inactivity. Also: what
IndexedDB holds after a consult is ciphertext only."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import eventually
from tests.identity_world import World
from tests.phone.phone_world import (
    SHOTS,
    enrol_by_code,
    idb_records,
    lost_overnight,
    phone_page,
    provisioned_intern,
    qr_image,
    still_video,
)

PASSPHRASE = "amber kettle nightshift wrist"


@pytest.fixture
def phone_settings() -> dict[str, Any]:
    return {"autolock_seconds": 10}


async def test_a_qr_code_that_is_not_a_handout_is_named_and_nothing_happens(
        phone: tuple[World, str], tmp_path: Path) -> None:
    _, origin = phone
    video = still_video(tmp_path / "menu.y4m", qr_image("https://canteen.example.org/menu"))
    async with phone_page(video=video) as (page, _):
        await page.goto(origin)
        await page.tap("#scan")
        await page.locator("#scan-status",
                           has_text="This QR code is not a Lightbox enrolment handout").wait_for()
        assert await page.is_visible("#screen-enrol")
        assert await page.input_value("#code") == ""


async def test_a_refused_camera_says_to_type_the_code(phone: tuple[World, str]) -> None:
    _, origin = phone
    async with phone_page(camera=False) as (page, _):
        await page.goto(origin)
        await page.tap("#scan")
        await page.locator("#enrol-error", has_text="The camera is not available to Lightbox: "
                           "type the code from the handout instead").wait_for()
        assert await page.is_hidden("#scanner")


async def test_typed_codes_that_are_malformed_or_unknown_are_refused_in_words(
        phone: tuple[World, str]) -> None:
    world, origin = phone
    intern = await provisioned_intern(world)
    async with phone_page() as (page, problems):
        await page.goto(origin)
        await page.fill("#code", "not a code")
        await page.tap("#enrol-next")
        await page.locator("#enrol-error", has_text="That is not an enrolment code").wait_for()
        await page.fill("#code", "ABCD-EFGH-JKMN-PQRS-TVWX")
        await page.tap("#enrol-next")
        await page.locator("#enrol-error",
                           has_text="The relay does not know that enrolment code").wait_for()
        # With the hint the CLI and the handout give (clients/clinician/cli.py CODE_INVALID).
        assert await page.inner_text("#enrol-error") == (
            "The relay does not know that enrolment code: check it against the handout. If IT "
            "has given you a newer handout since, only the newest one's code works: ask IT for "
            "the newest handout.")
        # The right code, typed in lower case with spaces; a key that does not match stops.
        await page.fill("#code", intern.code.lower().replace("-", " "))
        await page.tap("#enrol-next")
        await page.locator("#screen-confirm").wait_for()
        await page.tap("#fp-mismatch")
        await page.locator("#confirm-error", has_text="Stop here and call IT").wait_for()
        assert await page.is_hidden("#screen-passphrase")
        assert await idb_records(page) == []
        assert problems == []


async def test_a_used_enrolment_code_is_refused_in_words_not_by_its_code(
        phone: tuple[World, str]) -> None:
    world, origin = phone
    intern = await provisioned_intern(world)
    async with phone_page() as (page, _problems):
        await enrol_by_code(page, origin, intern.code)
    async with phone_page() as (page, problems):  # another phone, the same handout
        await page.goto(origin)
        await page.fill("#code", intern.code)
        await page.tap("#enrol-next")
        await page.locator("#enrol-error:not(:empty)").wait_for()
        assert await page.inner_text("#enrol-error") == (
            "This enrolment code has already been used: ask IT for a new one to enrol this "
            "phone.")
        assert await idb_records(page) == []
        assert problems == []


async def test_the_vault_holds_only_ciphertext_and_the_app_locks_itself_when_idle(
        phone: tuple[World, str]) -> None:
    world, origin = phone
    intern = await provisioned_intern(world)
    specialist = world.org.user("ortho", roles=("orthopaedics_oncall",))
    await world.onboard(specialist)
    async with phone_page() as (page, _):
        await enrol_by_code(page, origin, intern.code)
        await page.locator("#screen-home").wait_for()
        await page.fill("#text", "Doe^Jane MRN123 distal radius")
        await page.tap("#send")
        await page.locator("#send-status", has_text="Sent").wait_for()
        records = await idb_records(page)
        assert len(records) >= 3  # the KDF header, the device state, the thread
        blob = b"".join(records)
        for needle in (b"MRN123", b"Doe^Jane", b"distal radius", intern.login.encode(),
                       PASSPHRASE.encode(), intern.identity.public):
            assert needle not in blob, needle
        # Ten seconds without a touch: the app locks and asks for the passphrase.
        await page.locator("#screen-unlock").wait_for(timeout=30_000)
        assert await page.text_content("#conn") == "locked"





@pytest.mark.parametrize("wipe", [False, True])
async def test_a_phone_revoked_while_open_says_so_and_obeys_a_wipe(
        phone: tuple[World, str], wipe: bool) -> None:
    world, origin = phone
    intern = await provisioned_intern(world)
    async with phone_page() as (page, _):
        await enrol_by_code(page, origin, intern.code)
        device_id = await world.device_of(intern.user_id)
        r = await world.revoke(intern.org, 1, devices=(device_id,), wipe=wipe)
        assert r.status_code == 200, r.text
        if not wipe:
            await page.locator("#banner", has_text="This phone has been revoked by IT").wait_for()
            assert await page.text_content("#conn") == "revoked"
            assert await idb_records(page) != []
            return
        # The organisation-signed order verified: the vault is erased, then confirmed.
        await page.locator("#banner", has_text="its Lightbox data has been erased").wait_for()
        # When, in the house format (clients/sdk/timefmt.py), never the browser's locale's.
        assert re.search(r"revoked by your organisation on \d{4}-\d\d-\d\d \d\d:\d\d;",
                         await page.text_content("#banner") or "")
        assert await page.is_visible("#screen-enrol")
        assert await idb_records(page) == []
    await eventually(lambda: count_events(world, "device.wipe_confirmed", device_id),
                     timeout=20)


@pytest.mark.parametrize("wipe", [True, False])
async def test_a_phone_closed_when_revoked_is_wiped_when_next_opened_after_its_token_expired(
        phone: tuple[World, str], wipe: bool) -> None:
    """The lost phone of USER_GUIDE "A lost phone" that was off: IT revokes it while the app
    is closed, and whoever opens it hours later (its access token long expired, its session
    ended by the revocation) and knows the passphrase never sees the consults. Revoked with
    wipe: the vault is erased and the relay records the signed confirmation. Without: the app
    stays on its unlock screen and says the phone is revoked."""
    world, origin = phone
    intern = await provisioned_intern(world)
    async with phone_page() as (page, _):
        await enrol_by_code(page, origin, intern.code)
        await page.locator("#conn", has_text="connected").wait_for()
        found, device_id = await lost_overnight(world, page, origin, intern, wipe=wipe)
        kept = await idb_records(found)
        assert kept != []  # nothing is erased before the relay's order
        await found.fill("#passphrase", PASSPHRASE)
        await found.tap("#unlock")
        if wipe:
            await found.locator("#banner", has_text="its Lightbox data has been erased").wait_for()
            assert await found.is_visible("#screen-enrol")
            assert await found.text_content("#conn") == "wiped"
            assert await idb_records(found) == []
            SHOTS.mkdir(parents=True, exist_ok=True)
            await found.screenshot(path=str(SHOTS / "31-found-phone-wiped.png"), full_page=True)
        else:
            await found.locator("#banner", has_text="This phone has been revoked by IT").wait_for()
            assert await found.text_content("#conn") == "revoked"
            # Still on its unlock screen, which offers to enrol the phone again instead
            # (test_phone_enrol_again.py), never the consults.
            assert await found.get_attribute("body", "data-screen") == "unlock"
            await found.locator("#reenrol").wait_for()
            assert await found.is_hidden("#unlock-form")
            assert await found.is_hidden("#screen-home")
            assert await found.input_value("#passphrase") == ""
            assert await idb_records(found) == kept
            # It does not keep knocking: no reconnection (each would say "offline") after the
            # app's one-second retry.
            await found.wait_for_timeout(2500)
            assert await found.text_content("#conn") == "revoked"
            SHOTS.mkdir(parents=True, exist_ok=True)
            await found.screenshot(path=str(SHOTS / "32-found-phone-revoked.png"), full_page=True)
    if wipe:
        await eventually(lambda: count_events(world, "device.wipe_confirmed", device_id),
                         timeout=20)
    else:
        assert await count_events(world, "device.wipe_ordered", device_id) == 0


async def count_events(world: World, event: str, subject: str) -> int:
    conn = await world.db()
    try:
        found: int = await conn.fetchval(
            "SELECT count(*) FROM audit_log WHERE event = $1 AND subject_id = $2", event, subject)
        return found
    finally:
        await conn.close()
