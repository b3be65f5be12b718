"""The phone app served from an address the relay does not allow (not in its
LIGHTBOX_PHONE_ORIGINS): the relay answers the browser's CORS preflight 400, which the browser
reports to the app as a network error. The app tells that from a relay out of reach (a
`no-cors` look at the relay's /readyz, which needs no preflight, answers) and says what IT must
do, never "check the network"; with the relay stopped it still says the network. Real relay,
real Chromium (USER_GUIDE "Interns: the phone app")."""

from __future__ import annotations

import asyncio
from pathlib import Path

from clients.phone.serve import PhoneConfig
from tests.identity_world import identity_world
from tests.phone.phone_world import (
    SHOTS,
    bound_socket,
    phone_page,
    provisioned_intern,
    running_phone,
)

REFUSED = ("The relay does not accept this app's address: tell IT (LIGHTBOX_PHONE_ORIGINS on the "
           "relay). Nothing is lost.")
UNREACHABLE = "The relay cannot be reached. Check the network; nothing is lost."


async def test_an_app_on_an_address_the_relay_refuses_says_so_at_enrolment(
        db_dsn: str, tmp_path: Path) -> None:
    sock, _port = bound_socket()
    # The relay allows another phone address, not this app's.
    async with identity_world(db_dsn, tmp_path, phone_origins="http://127.0.0.1:9") as world:
        intern = await provisioned_intern(world)
        config = PhoneConfig(world.relay.base_url, kdf="cheap", autolock_seconds=60)
        async with running_phone(config, sock) as origin, phone_page() as (page, _problems):
            await page.goto(origin)
            await page.fill("#code", intern.code)
            await page.tap("#enrol-next")
            error = page.locator("#enrol-error")
            await error.filter(has_text="The relay").wait_for()
            assert await error.inner_text() == REFUSED
            SHOTS.mkdir(parents=True, exist_ok=True)
            await page.screenshot(path=str(SHOTS / "62-enrol-origin-refused.png"),
                                  full_page=True)

            # The relay stopped: out of reach, which the app says as before.
            await asyncio.to_thread(world.relay.stop)
            await page.tap("#enrol-next")
            await error.filter(has_text=UNREACHABLE).wait_for()
            assert await error.inner_text() == UNREACHABLE
