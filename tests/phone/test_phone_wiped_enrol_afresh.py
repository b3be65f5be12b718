"""After a wipe order obeyed with the app open, the enrol screen starts afresh: the banner says
the phone was revoked and erased, the enrolment code field is empty (never the previous code),
and it is the one way to enrol shown (not also the offer made to a phone revoked without the
wipe order). Real relay, real Chromium."""

from __future__ import annotations

from tests.identity_world import World
from tests.phone.phone_world import enrol_by_code, phone_page, provisioned_intern


async def test_a_wiped_phone_shows_one_empty_enrol_form(phone: tuple[World, str]) -> None:
    world, origin = phone
    intern = await provisioned_intern(world)
    async with phone_page() as (page, problems):
        await enrol_by_code(page, origin, intern.code)
        r = await world.revoke(intern.org, 1, devices=(await world.device_of(intern.user_id),),
                               wipe=True)
        assert r.status_code == 200, r.text
        await page.locator("#banner", has_text="its Lightbox data has been erased").wait_for()
        await page.locator("#screen-enrol").wait_for()
        await page.wait_for_timeout(1000)  # anything the relay says after the wipe, said
        assert await page.locator("#reenrol:visible").count() == 0
        assert await page.locator("h1:visible, h2:visible").all_inner_texts() == [
            "Enrol this phone"]
        assert await page.input_value("#code") == ""
        assert await page.text_content("#conn") == "wiped"
        assert problems == []
