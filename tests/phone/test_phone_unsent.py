"""A text consult the relay refused for good stays on the phone marked *not sent*, its refusal
first; under it the intern can remove it from the phone (asked first, in the app's own words,
never window.confirm; deleted from the vault, so a reload does not bring it back) or edit it
and send it again (back in the compose form, the refused copy removed once the new one is
sent; a refused reply likewise in its consult's reply box). A kept photo refused once the
relay was back is removed with its photo. A message the relay stored offers neither, and the
worker refuses to remove one in words, as it does a stale tap on one already gone. Real relay,
real Chromium, the specialist's real SDK client; the refusal is the relay's size limit
(``message_too_large``), or for the photo its consent (teaching only)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from clients.sdk.client import MessageEvent
from tests.helpers import seconds
from tests.identity_world import World
from tests.phone.phone_world import (
    ORTHO,
    PASSPHRASE,
    SHOTS,
    axe_violations,
    beyond_refused,
    enrolled_phone,
    next_event,
    relay_back,
    sent_from_phone,
    vault_names,
)
from tests.phone.test_phone_relay_down import NOT_FOR_DIRECT_CARE, PHOTO_SUBJECT, photo_kept
from tests.phone.test_phone_send_refused import stored_from

pytestmark = pytest.mark.parametrize("phone_settings", [{"autolock_seconds": 600,
                                                         "max_message_bytes": 4096}])

TOO_LONG = ("Not sent: the consult is too long for the relay, which refuses it as it is. "
            "Shorten it, or split it in two, and send it again.")
REMOVED = "The refused message was removed from this phone."
AGAIN_REPLY = ("Correct the reply below, then tap Send reply. Once it is sent, the copy the relay "
               "refused is removed from this phone.")
AGAIN_CONSULT = ("Correct the consult below, then tap Send. Once it is sent, the copy the "
                 "relay refused is removed from this phone.")
GONE = "This message is no longer on this phone: nothing was removed."
NOT_REFUSED = ("This message is no longer marked not sent (the relay stored it, or it is being "
               "sent), so it stays on this phone.")
LONG = "Open fracture of the tibia, wound photographed. " * 100

# In the worker: the page's request `op` with `args`, handed to the worker's own message
# handler as the page's postMessage is (a tap the page would make), and the worker's answer to
# it, taken before it reaches the page.
ASK_WORKER = """async ([op, args]) => {
  const id = -4242;
  const answer = new Promise((ok) => {
    const post = self.postMessage;
    self.postMessage = function (message, ...rest) {
      if (message && message.id === id) { self.postMessage = post; ok(message); return; }
      return post.call(this, message, ...rest);
    };
  });
  self.dispatchEvent(new MessageEvent("message", { data: { id, op, args } }));
  return await answer;
}"""


async def ask_worker(page: Any, op: str, **args: Any) -> dict[str, Any]:
    """The app's worker's answer to ``op`` (``{"ok": ..., "result"|"error": ...}``)."""
    (worker,) = page.workers
    answer: dict[str, Any] = await worker.evaluate(ASK_WORKER, [op, args])
    return answer


async def refused_consult(page: Any, *, subject: str = "") -> Any:
    """A consult over the relay's size limit sent from the home screen: the message shown not
    sent, its refusal first."""
    if subject:
        await page.fill("#subject", subject)
    await page.fill("#text", LONG)
    await page.tap("#send")
    await page.locator("#send-status", has_text="Not sent").wait_for()
    mine = page.locator("#threads .message.mine")
    await mine.locator(".not-sent").wait_for()
    # Under its date, the refusal: before the text and before what it offers.
    assert await mine.evaluate("(e) => [...e.children].map((c) => c.className)") == [
        "meta", "meta not-sent", "text", "row unsent-actions"]
    assert await mine.locator(".not-sent").inner_text() == TOO_LONG
    return mine


async def edited_again(page: Any, message: Any, where: str, said: str) -> None:
    """*Edit and send again* under the refused ``message``: the panel over the compose form
    (``where``: consult) or the reply box (reply) says its refusal, then ``said``."""
    await message.locator(".edit-again").tap()
    await page.locator(f"#again-{where}").wait_for()
    assert await page.locator(f"#again-{where}-note p").all_inner_texts() == [TOO_LONG, said]


async def unlocked_again(page: Any) -> None:
    await page.reload()
    await page.locator("#passphrase").fill(PASSPHRASE)
    await page.tap("#unlock")
    await page.locator("#screen-home").wait_for()
    await page.locator("#conn", has_text="connected").wait_for()


def threads_of(names: list[str]) -> list[str]:
    return [n for n in names if n.startswith("thread:")]


async def test_a_refused_consult_removed_from_the_phone_is_gone_after_a_reload(
        phone: tuple[World, str], tmp_path: Path) -> None:
    world, origin = phone
    async with enrolled_phone(world, tmp_path, origin) as (_i, _s, _e, page, problems):
        dialogs: list[str] = []
        page.on("dialog", lambda d: dialogs.append(d.message))
        mine = await refused_consult(page, subject="Tibia after a fall")
        (thread,) = threads_of(await vault_names(page))
        refused = {"thread_id": thread.removeprefix("thread:"),
                    "message_id": await mine.get_attribute("data-message")}
        await mine.locator(".remove-unsent").tap()
        ask = mine.locator(".remove-confirm")
        await ask.wait_for()
        assert await ask.locator("p").inner_text() == (
            "Remove it from this phone? The relay refused it, so nobody received it. This "
            "cannot be undone.")
        assert await page.evaluate("() => document.activeElement.textContent") == "Remove it"
        SHOTS.mkdir(parents=True, exist_ok=True)
        await page.screenshot(path=str(SHOTS / "unsent-1-remove-asked.png"), full_page=True)
        assert await axe_violations(page) == []
        # Kept: asked again next time, nothing removed.
        await ask.locator(".remove-no").tap()
        await mine.locator(".remove-confirm").wait_for(state="detached")
        assert await page.evaluate("() => document.activeElement.textContent") == (
            "Remove from this phone")
        assert thread in await vault_names(page)
        await mine.locator(".remove-unsent").tap()
        await mine.locator(".remove-yes").tap()
        await page.locator("#notice", has_text=REMOVED).wait_for()
        assert await page.locator("#send-status").inner_text() == ""  # it spoke of what is gone
        assert await page.locator("#threads li").count() == 0
        assert await page.is_visible("#no-threads")
        assert threads_of(await vault_names(page)) == []
        await page.screenshot(path=str(SHOTS / "unsent-2-removed.png"), full_page=True)

        await unlocked_again(page)
        assert await page.locator("#threads li").count() == 0
        assert await page.is_visible("#no-threads")
        assert threads_of(await vault_names(page)) == []
        # A stale tap on it (the page before the reload had drawn it) removes nothing more.
        answer = await ask_worker(page, "removeUnsent", **refused)
        assert answer["ok"] is False and answer["error"]["message"] == GONE
        assert dialogs == []
        assert problems == []


async def test_a_refused_consult_edited_and_sent_again_reaches_the_specialist(
        phone: tuple[World, str], tmp_path: Path) -> None:
    world, origin = phone
    async with enrolled_phone(world, tmp_path, origin) as (intern, _s, events, page, problems):
        mine = await refused_consult(page, subject="Tibia after a fall")
        await page.select_option("#priority", "routine")
        await page.fill("#subject", "")
        await page.fill("#text", "")
        # Back in the compose form as it was written, the refusal said first above it.
        await edited_again(page, mine, "consult", AGAIN_CONSULT)
        assert await page.input_value("#role") == ORTHO
        assert await page.input_value("#priority") == "urgent"
        assert await page.input_value("#subject") == "Tibia after a fall"
        assert await page.input_value("#text") == LONG
        assert await page.evaluate("() => document.activeElement.id") == "text"
        SHOTS.mkdir(parents=True, exist_ok=True)
        await page.screenshot(path=str(SHOTS / "unsent-3-edit-again.png"))
        assert await axe_violations(page) == []
        # Until the new one is sent, the refused copy stays.
        assert len(threads_of(await vault_names(page))) == 1
        got = await sent_from_phone(page, events,
                                    "Open fracture of the tibia, wound photographed.")
        assert got.body.subject == "Tibia after a fall"
        assert got.message.priority == "urgent"
        await page.locator("#send-status", has_text="Sent: the relay stored it.").wait_for()
        await page.locator("#threads .message.mine .meta", has_text="sent").wait_for()
        # The refused copy is gone: one consult, the one sent.
        assert await page.locator("#threads .message.mine").count() == 1
        assert await page.locator("#threads .not-sent").count() == 0
        assert await page.is_hidden("#again-consult")
        assert await page.input_value("#text") == ""
        assert len(threads_of(await vault_names(page))) == 1
        assert await stored_from(world, intern.user_id) == 1
        await page.screenshot(path=str(SHOTS / "unsent-4-sent-again.png"), full_page=True)
        await unlocked_again(page)
        await page.locator("#threads .message.mine .meta", has_text="sent").wait_for()
        assert await page.locator("#threads .message.mine").count() == 1
        assert problems == []


async def test_a_refused_reply_edited_in_its_consult_and_sent_again_replaces_it(
        phone: tuple[World, str], tmp_path: Path) -> None:
    world, origin = phone
    async with enrolled_phone(world, tmp_path, origin) as (_i, _s, events, page, problems):
        await sent_from_phone(page, events, "Query scaphoid fracture, please review.")
        await page.locator("#threads .message.mine .meta", has_text="sent").wait_for()
        await page.tap("#threads .open")
        await page.fill("#reply-text", LONG)
        await page.tap("#reply-send")
        refused = page.locator("#thread-messages .message.mine", has=page.locator(".not-sent"))
        await refused.wait_for()
        assert await refused.locator(".not-sent").inner_text() == TOO_LONG
        await page.fill("#reply-text", "")
        await edited_again(page, refused, "reply", AGAIN_REPLY)
        assert await page.input_value("#reply-text") == LONG
        SHOTS.mkdir(parents=True, exist_ok=True)
        await page.screenshot(path=str(SHOTS / "unsent-5-reply-again.png"), full_page=True)
        await page.fill("#reply-text", "Neurovascularly intact; can you see him tonight?")
        await page.tap("#reply-send")
        await next_event(events, MessageEvent, lambda e: "can you see him" in e.body.text)
        await page.locator("#thread-status", has_text="Reply sent: the relay stored it.").wait_for()
        assert await page.locator("#thread-messages .not-sent").count() == 0
        assert await page.locator("#thread-messages .message.mine").count() == 2
        assert await page.is_hidden("#again-reply")
        assert problems == []


async def test_a_kept_photo_refused_and_removed_goes_from_the_phone_with_its_photo(
        phone: tuple[World, str], tmp_path: Path) -> None:
    """A photo kept while the relay was down, refused once it was back (its consent names
    teaching only): removed, its sealed copy is erased from the vault with its message."""
    world, origin = phone
    async with photo_kept(phone, tmp_path, teaching_only=True) as (_i, _s, _e, page, problems):
        async with relay_back(world, tmp_path, origin):
            consult = page.locator("#threads .thread", has_text=PHOTO_SUBJECT)
            await consult.locator(".meta.not-sent", has_text=NOT_FOR_DIRECT_CARE).wait_for(
                timeout=seconds(60) * 1000)
            assert [n for n in await vault_names(page) if n.startswith("photo:")] != []
            await consult.locator(".remove-unsent").tap()
            assert await consult.locator(".remove-confirm p").inner_text() == (
                "Remove it and its photo from this phone? The relay refused it, so nobody "
                "received it. This cannot be undone.")
            await consult.locator(".remove-yes").tap()
            await page.locator("#notice", has_text=REMOVED).wait_for()
            assert await page.locator("#threads li").count() == 0
            assert [n for n in await vault_names(page)
                    if n.split(":")[0] in ("photo", "thread", "image", "outbox")] == []
            await unlocked_again(page)
            assert await page.is_visible("#no-threads")
        assert beyond_refused(problems) == []


async def test_a_sent_message_offers_no_remove_and_the_worker_refuses_to_remove_it(
        phone: tuple[World, str], tmp_path: Path) -> None:
    world, origin = phone
    async with enrolled_phone(world, tmp_path, origin) as (_i, _s, events, page, problems):
        got = await sent_from_phone(page, events, "Query scaphoid fracture, please review.")
        sent = page.locator("#threads .message.mine")
        await sent.locator(".meta", has_text="sent").wait_for()
        assert await sent.locator(".remove-unsent").count() == 0
        assert await sent.locator(".edit-again").count() == 0
        ids = {"thread_id": got.message.thread_id, "message_id": got.message.message_id}
        # The worker, asked as a tap would (one drawn before the relay stored it), refuses both.
        for op in ("removeUnsent", "unsentAgain"):
            answer = await ask_worker(page, op, **ids)
            assert answer["ok"] is False, answer
            assert answer["error"]["message"] == NOT_REFUSED
        await unlocked_again(page)
        await sent.locator(".meta", has_text="sent").wait_for()
        assert await sent.locator(".text").inner_text() == "Query scaphoid fracture, please review."
        assert f"thread:{got.message.thread_id}" in await vault_names(page)
        assert problems == []
