"""Two things at once on the phone. The worker handles what the relay sends and what the page
asks concurrently, and the page draws the list of consults from the worker's answers, which
may come back in another order than they were asked for. Each test holds one step back
deterministically, from the outside, through the DevTools protocol (nothing of it is in the
app's bundle): a read of the vault in the worker (the IndexedDB request's answer is kept from
the code that asked for it until the test lets it through), or a list answer on its way to the
page (kept by a script the test puts in the page before the app's). Real relay, real Chromium."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from clients.sdk.client import ReceiptEvent
from tests.clinician_world import Clinician
from tests.helpers import eventually
from tests.identity_world import World
from tests.phone.phone_world import (
    PASSPHRASE,
    enrol_by_code,
    intern_and_specialist,
    next_event,
    phone_page,
    sent_from_phone,
)

# In the worker: the next read of the vault record `key` answers only once `release()` is
# called (the IndexedDB request itself runs at once, so what it reads is what was stored then);
# the request is the app's own, through idb, only its success listener waits.
HOLD_READ = """(key) => {
  const get = IDBObjectStore.prototype.get;
  const hold = { release: null };
  self.heldRead = hold;
  IDBObjectStore.prototype.get = function (query) {
    const request = get.call(this, query);
    if (query !== key) return request;
    IDBObjectStore.prototype.get = get;
    const gate = new Promise((ok) => { hold.release = ok; });
    const listen = request.addEventListener;
    request.addEventListener = function (type, listener, options) {
      const run = type === "success" ? (ev) => void gate.then(() => listener.call(request, ev))
        : listener;
      return listen.call(request, type, run, options);
    };
    return request;
  };
}"""

# In the worker: the page's request to mark a consult read, handed to the worker's own message
# handler as the page's postMessage is, then the held read let through; in one task, so the
# mark-read has asked for the record (or waits its turn) before the held change goes on.
MARK_READ_THEN_RELEASE = """(threadId) => {
  self.dispatchEvent(new MessageEvent("message",
    { data: { id: -1, op: "markRead", args: { thread_id: threadId } } }));
  self.heldRead.release();
}"""

# In the page, before the app's script: the worker's answer to the next request for the list
# of consults that includes a message with the text `listAnswers.text` is kept from the app
# until `listAnswers.held()` hands it over; `handled` says the app is done with it (drawn, or
# not), set in a task after the handler, so after every promise the handler settled.
HOLD_LIST_ANSWER = """(() => {
  const answers = { asked: new Set(), text: null, held: null, handled: false };
  Object.defineProperty(globalThis, "listAnswers", { value: answers });
  const post = Worker.prototype.postMessage;
  Worker.prototype.postMessage = function (message, ...rest) {
    if (message && message.op === "threads") answers.asked.add(message.id);
    return post.call(this, message, ...rest);
  };
  const onmessage = Object.getOwnPropertyDescriptor(Worker.prototype, "onmessage");
  Object.defineProperty(Worker.prototype, "onmessage", { ...onmessage, set(handler) {
    onmessage.set.call(this, (m) => {
      const list = answers.asked.delete(m.data.id) ? m.data.result : null;
      if (answers.text !== null && Array.isArray(list)
          && list.some((t) => t.messages.some((x) => x.text === answers.text))) {
        answers.text = null;
        answers.held = () => {
          handler.call(this, m);
          setTimeout(() => { answers.handled = true; });
        };
        return;
      }
      handler.call(this, m);
    });
  } });
})();"""


@pytest.fixture
def phone_settings() -> dict[str, Any]:
    return {"autolock_seconds": 600}


def the_worker(page: Any) -> Any:
    """The app's worker (the engine: the vault, the websocket), as Playwright reaches it."""
    (worker,) = page.workers
    return worker


async def receipts(events: asyncio.Queue[Any], wanted: set[tuple[str, str]]) -> None:
    """Wait for the receipts ``wanted`` ((message id, kind) each), in whatever order they come."""
    wanted = set(wanted)
    while wanted:
        got = await next_event(events, ReceiptEvent, lambda e: (e.message_id, e.kind) in wanted)
        wanted.discard((got.message_id, got.kind))


async def test_a_reply_that_comes_while_the_consult_is_marked_read_stays_on_the_phone(
        phone: tuple[World, str], tmp_path: Path) -> None:
    """A consult's record is changed by reading it, changing the copy and writing it back, and
    the page's mark-read and the relay's next reply are handled at once. Here the reply's
    change has read the record, and waits, when the page marks the first reply read: the
    mark-read must wait for the reply to be written (worker.ts changingThread), not read the
    record without it and write that back over it, which would erase the reply from the phone
    while the specialist is told it was delivered."""
    world, origin = phone
    async with intern_and_specialist(world, tmp_path) as (intern, specialist, events), \
            phone_page(camera=False) as (page, problems):
        await enrol_by_code(page, origin, intern.code)
        consult = await sent_from_phone(page, events, "Query scaphoid fracture.")
        thread = consult.message.thread_id
        await page.locator(".message.mine .meta", has_text="delivered by Dr Bo Ortho").wait_for()
        # Off the home screen (the camera's), so the first reply stays unread on the phone.
        await page.tap("#capture")
        await page.locator("#capture-error", has_text="camera is not available").wait_for()
        first = await specialist.client.send_text(thread, "Splint, clinic tomorrow.")
        await page.locator(".message.theirs", has_text="Splint, clinic tomorrow").wait_for(
            state="attached")

        # The next read of the consult's record is the second reply's change: nothing else
        # reads it meanwhile (the list is drawn, and the page hears of nothing new before
        # that change is written).
        worker = the_worker(page)
        await worker.evaluate(HOLD_READ, f"thread:{thread}")
        second = await specialist.client.send_text(thread, "Also: elevate the arm.")
        await eventually(lambda: worker.evaluate("() => self.heldRead.release !== null"))
        await worker.evaluate(MARK_READ_THEN_RELEASE, thread)
        # Both changes are written: the second reply stored (its delivered receipt is signed
        # after), the first marked read (its read receipt is signed after).
        await receipts(events, {(second.message_id, "delivered"), (first.message_id, "read")})

        # The consult as the vault has it now: the app locked and unlocked draws it afresh.
        await page.tap("#lock")
        await page.fill("#passphrase", PASSPHRASE)
        await page.tap("#unlock")
        await page.locator(".message.theirs", has_text="Splint, clinic tomorrow").wait_for()
        shown = await page.locator(".thread .message .text").all_inner_texts()
        assert "Also: elevate the arm." in shown, (
            f"the reply that came while the consult was marked read is gone from the phone "
            f"(the consult shows {shown}): the mark-read wrote back a copy read before it")
        assert problems == []


@contextlib.asynccontextmanager
async def first_reply_list_held(world: World, tmp: Path, origin: str
                                ) -> AsyncIterator[tuple[Clinician, str, Any, list[str]]]:
    """The intern's consult sent from the phone and the specialist's first reply stored on
    it, the list of consults asked for on that reply held back on its way to the page; yields
    the specialist, the consult's thread, the page and its problems."""
    async with intern_and_specialist(world, tmp) as (intern, specialist, events), \
            phone_page() as (page, problems):
        await page.add_init_script(HOLD_LIST_ANSWER)
        await enrol_by_code(page, origin, intern.code)
        consult = await sent_from_phone(page, events, "Query scaphoid fracture.")
        await page.evaluate("() => { listAnswers.text = 'Splint, clinic tomorrow.'; }")
        await specialist.client.send_text(consult.message.thread_id, "Splint, clinic tomorrow.")
        await eventually(lambda: page.evaluate("() => listAnswers.held !== null"))
        yield specialist, consult.message.thread_id, page, problems


async def hand_over_held_list(page: Any) -> None:
    """The held list answer handed to the app, once it is done with it."""
    await page.evaluate("() => listAnswers.held()")
    await eventually(lambda: page.evaluate("() => listAnswers.handled"))


async def test_the_list_of_consults_is_not_drawn_over_by_an_older_answer(
        phone: tuple[World, str], tmp_path: Path) -> None:
    """Every event (a reply, a receipt, a sent consult) draws the list again from the worker's
    answer, without waiting for the list asked for before; the answers can come back in
    another order. Here the list asked for on the first reply comes back after the one asked
    for on the second: only the latest request's answer may be drawn (main.ts renderThreads,
    as the desktop page's inbox), or the second reply disappears from the screen."""
    world, origin = phone
    async with first_reply_list_held(world, tmp_path, origin) as (specialist, thread, page,
                                                                  problems):
        await specialist.client.send_text(thread, "Also: elevate the arm.")
        second = page.locator(".message.theirs", has_text="Also: elevate the arm.")
        await second.wait_for()

        await hand_over_held_list(page)  # the older list comes back last
        assert await second.count() == 1, (
            "the list asked for before the second reply, answered after it, was drawn over the "
            "newer one: the second reply disappeared from the screen")
        assert problems == []


async def test_a_list_of_consults_answered_after_the_app_locked_is_not_drawn(
        phone: tuple[World, str], tmp_path: Path) -> None:
    """Locking empties the page of every consult (the worker forgets the vault key): a list
    asked for before the lock and answered after it must not put them back into the locked
    page, where they would stay, hidden but readable, until the next unlock."""
    world, origin = phone
    async with first_reply_list_held(world, tmp_path, origin) as (_specialist, _thread, page,
                                                                  problems):
        await page.tap("#lock")
        await page.locator("#screen-unlock").wait_for()

        await hand_over_held_list(page)
        left = await page.locator("#threads").inner_html()
        assert left == "", f"a locked phone's page holds consults: {left[:200]}"
        assert problems == []
