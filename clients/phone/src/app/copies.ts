/** One consult handed over in several copies, listed once (PROTOCOL.md §16.4; HAZ-02 C16 of
 * docs/HAZARD_LOG.md). Kept apart from the worker so that Node can run it
 * (tests/phone/test_phone_copy_shown.py). */
import type { HandoverOf } from "../protocol/body.js";
import type { MessageView, ThreadRecord } from "./views.js";

/** Two holders can both hand one consult over (PROTOCOL.md §16.4): every copy is kept (each
 * gets its receipts), but the consult is listed once. A copy of the original held, or of a
 * copy held (same `handover_of` message id), with the same subject, text and photo and not
 * contradicting the original, is marked `copy_of` the one shown: the original, else the copy
 * its author's own device sealed, else the first in the thread's order (clients/sdk/handover.py
 * does the same). */
export function oneCopyShown(view: MessageView, claim: HandoverOf, thread: ThreadRecord): void {
  view.handover_of_id = claim.message_id;
  if (view.handover?.contradicted) return; // shown on its own, with its warning
  const shown = thread.messages.find((m) => !m.copy_of && m.message_id !== view.message_id
    && (m.message_id === claim.message_id || m.handover_of_id === claim.message_id)
    && !m.handover?.contradicted && m.text === view.text && (m.subject ?? null) === (view.subject ?? null)
    && (m.attachment_id ?? null) === (view.attachment_id ?? null));
  if (!shown) return;
  const byAuthor = (m: MessageView) => m.handover?.by_author === true && m.handover.confirmed;
  // "The first" is the first in the thread's order, not the first decrypted: copies arriving
  // together are opened side by side and may finish in either order.
  const earlier = (a: MessageView, b: MessageView) =>
    a.thread_seq === undefined || b.thread_seq === undefined || a.thread_seq < b.thread_seq;
  if (shown.message_id === claim.message_id || byAuthor(shown) || (!byAuthor(view) && earlier(shown, view))) {
    view.copy_of = shown.message_id;
    return;
  }
  for (const m of thread.messages) if (m === shown || m.copy_of === shown.message_id) m.copy_of = view.message_id;
}

