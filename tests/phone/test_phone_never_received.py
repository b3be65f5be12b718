"""The phone tells its sender when the specialist never received the photo (docs/PROTOCOL.md §15
"Never received"): the specialist's only device never connects; the real record gateway files
the photo into a real Orthanc; after the grace period the relay orders every copy destroyed and
tells the phone, which says who never received it, that it is in the patient's record and
where, in the words `lightbox watch` and the desktop use."""

from __future__ import annotations

from pathlib import Path

from tests.helpers import eventually, seconds
from tests.identity_world import World
from tests.orthanc import OrthancServer
from tests.phone.phone_world import (
    ORTHO,
    film,
    phone_page,
    provisioned_intern,
    still_video,
    xray_sent_for_filing,
)

# The filing test's settings (filed copies expire 3 s after filing, swept often) and gateway.
from tests.phone.test_phone_filing import phone_settings, record_gateway  # noqa: F401


async def test_the_phone_tells_its_sender_the_specialist_never_received_the_photo(
        phone: tuple[World, str], tmp_path: Path, orthanc: OrthancServer) -> None:
    world, origin = phone
    intern = await provisioned_intern(world)
    # The on-call specialist is enrolled, and their only device never connects.
    await world.onboard(world.org.user("ortho", roles=(ORTHO,), display_name="Dr Ortho"))
    async with record_gateway(world, tmp_path, orthanc) as gw, \
            phone_page(video=still_video(tmp_path / "film.y4m", film(960, 720),
                                         size=(960, 720))) as (page, problems):
        await xray_sent_for_filing(page, origin, intern.code)
        await page.locator(".filed", has_text="Filed in the patient's record").wait_for()

        async def gateway_done() -> bool:  # the gateway notes it once its work is done
            return len(gw.filed) == 1
        await eventually(gateway_done, timeout=20)
        (receipt,) = gw.filed
        # A warning as prominent as the app's others, not a message's small grey details.
        told = page.locator(".message.mine .not-received.warning[role=alert]")
        await told.wait_for(timeout=seconds(30) * 1000)
        line = await told.inner_text()
        assert line.startswith("Dr Ortho never received the image of "), line
        assert line.endswith(" on any device before its copies expired: it was filed to the "
                             f"patient's record ({receipt.record_ref}). Phone or page them."), line
        assert await told.count() == 1
        assert await told.evaluate("(e) => getComputedStyle(e).fontSize") == "17px"
        assert problems == []
