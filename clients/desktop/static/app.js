// Lightbox desktop page. Talks only to the local client process (same origin); every
// state-changing request carries the per-launch CSRF token. No inline code (strict CSP).
"use strict";

const csrf = document.querySelector('meta[name="csrf"]').content;
const $ = (id) => document.getElementById(id);
let current = null;        // the thread the clinician asked for last (its page may be loading)
let shown = null;          // the thread whose page is on screen (its reply box is its draft)
let drafts = new Map();    // thread id -> the reply being written in it, kept while another is open
let opening = 0;           // openThread's calls, counted: only the latest one's answer is shown
let listing = 0;           // loadInbox's calls, counted likewise
let threads = [];          // inbox entries
let events = null;
let guard = null;          // the text guard's warning on the reply being written:
                           // {thread, text (in the box), sent (the text checked), data (the 409)}
let ackFailures = new Map();  // message id -> why this computer did not take its "I'm on it"
let notices = new Map();   // notice id -> a problem the client reported, shown until dismissed

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k.startsWith("data-")) node.setAttribute(k, v);
    else node[k] = v;
  }
  for (const c of children) if (c !== null && c !== undefined) node.append(c);
  return node;
}

async function api(path, body) {
  const opts = body === undefined ? {} : {
    method: "POST", headers: {"Content-Type": "application/json", "X-CSRF-Token": csrf},
    body: JSON.stringify(body)};
  let r;
  try {
    r = await fetch(path, opts);
  } catch (err) {
    showGone();  // no answer at all: this launch of the desktop app has ended
    throw Object.assign(new Error(GONE), {shown: true});
  }
  const data = await r.json().catch(() => ({}));
  if (r.status === 423) { showLocked(); throw Object.assign(new Error("locked"), {shown: true}); }
  if (!r.ok) throw Object.assign(new Error(data.error || ("HTTP " + r.status)), {status: r.status, data});
  return data;
}

// The one way a time is written for people (the twin of clients/sdk/timefmt.py): "2026-12-03 14:05",
// an ISO-like date and a 24-hour time in this computer's zone, spelt out here so that the
// browser's locale never changes it.
function when(ts) {
  const d = new Date(ts * 1000);
  const two = (n) => String(n).padStart(2, "0");
  return d.getFullYear() + "-" + two(d.getMonth() + 1) + "-" + two(d.getDate()) + " " +
         two(d.getHours()) + ":" + two(d.getMinutes());
}

// When a message was sent: its signed header's time, the one every participant's screen shows
// (`lightbox watch` too). A reply kept while the relay was out of reach and sent later also
// says when it was written (docs/USER_GUIDE.md, "Times").
function sentWhen(m) {
  return m.written_at ? "written " + when(m.written_at) + ", sent " + when(m.sent_at) : when(m.sent_at);
}

// A failure api() has already shown (the unlock screen, or the sentence below) needs nothing more
// from the handler that made the request; any other failure stays an uncaught error.
window.addEventListener("unhandledrejection", (e) => { if (e.reason?.shown) e.preventDefault(); });

// Each launch of the desktop app serves its page at a new address: once it has ended (closed or
// restarted; its vault locked as it ended), this tab can never reach it again. The tab then
// forgets what it showed, as the vault did: no consult or image stays on screen or in the page.
const GONE = "Lightbox has closed: open it again.";
function showGone() {
  if (events) { events.close(); }  // no reconnecting to an address nothing serves
  forget();
  $("unlock").hidden = true; $("gone").hidden = false;
  $("conn").textContent = GONE;
  $("conn").classList.add("down");
}

// The vault locked (or the app ended): the page drops every consult and image it was showing,
// not merely hides them; unlocking loads the inbox again.
function forget() {
  closeViewer();
  $("inbox").replaceChildren();
  $("thread").replaceChildren(el("p", {class: "empty"}, "Choose a consult."));
  current = null; shown = null; threads = []; guard = null; drafts = new Map();
  ackFailures = new Map();
  opening++; listing++;  // an answer still on its way is for a page no longer shown
  clearTimeout(refreshTimer);  // nor does a refresh asked for before it run after it
  $("app").hidden = true; $("lock").hidden = true;
  $("ended-banner").hidden = true; $("ended-banner").textContent = "";
  $("try-again").hidden = true;
  $("app").classList.remove("ended");
  notices = new Map(); $("notice").hidden = true; $("notice-text").replaceChildren();
  $("who").textContent = ""; $("conn").textContent = "";
  $("conn").classList.remove("down");
}

// --- unlock ---------------------------------------------------------------------------------

// ``reason``: why it locked, when the page should say so (the user logged out on this
// computer in a terminal); cleared by the next unlock.
function showLocked(reason) {
  if (!$("ended").hidden) return;  // erased: there is nothing to unlock (showEnded)
  forget();
  $("unlock-reason").textContent = reason || "";
  $("unlock-reason").hidden = !reason;
  $("gone").hidden = true; $("unlock").hidden = false;
  $("password").focus();
}

// The relay ended this computer's access ({ended, message} from the desktop app): erased by
// IT's wipe order, nothing of it stays on the page and there is nothing to unlock; revoked or
// suspended, the consults on screen stay (as on the phone) but the header never says
// "connected" again and the sentence says why nothing more comes.
function showEnded(ending) {
  $("conn").classList.add("down");
  if (ending.ended === "wiped") {
    if (events) { events.close(); events = null; }
    forget();
    $("unlock").hidden = true; $("gone").hidden = true; $("ended").hidden = false;
    $("ended-text").textContent = ending.message;
    $("conn").textContent = "wiped";
    return;
  }
  $("conn").textContent = ending.ended;
  if ($("app").hidden) {  // refused at unlock: the vault stays locked
    $("unlock-error").textContent = ending.message;
    return;
  }
  $("ended-banner").textContent = ending.message;
  $("ended-banner").hidden = false;
  // Suspended (IT may resume the account) or stopped: unlocking again signs in afresh.
  $("try-again").hidden = !TRIED_AGAIN.includes(ending.ended);
  $("app").classList.add("ended");  // nothing to send from: no reply box, no "I'm on it"
}

// Connection states the event stream has told (a count): /api/state's answer, read on another
// connection, may have been made before the latest of them and arrive after it; it must not
// put "reconnecting..." back over a "connected" the stream has said since.
let connTold = 0;
async function start() {
  const told = connTold;
  const state = await api("/api/state");
  if (state.ended?.ended === "wiped") { showEnded(state.ended); return; }
  if (!state.unlocked) { showLocked(); return; }
  $("unlock").hidden = true; $("app").hidden = false; $("lock").hidden = false;
  $("who").textContent = state.display_name + " (" + state.roles.join(", ") + ")";
  if (connTold === told) setConn(state.connected, state.replaced);
  if (state.ended) showEnded(state.ended);
  for (const n of state.notices || []) showNotice(n);
  listen();
  await loadInbox();
}

// What this computer's client could not do with something the relay brought (a message it
// could not open or whose sender does not verify, dropped; a refused notice): said, with when,
// so that nothing is lost in silence (docs/HAZARD_LOG.md HAZ-10); every one stays, a line
// each, until dismissed (four messages dropped are four lines, never only the last). A drop
// the organisation's own act explains (a revoked device, a suspended account) says what to do
// itself; IT is not asked about what IT did.
const ORGANISATION_ACTS = ["certificate_revoked", "user_suspended"];
function showNotice(notice) {
  if (!notice?.detail) return;
  notices.set(notice.id, notice);  // by id: told by /api/state and the event stream alike
  drawNotices();
}
function drawNotices() {
  if (!notices.size) { $("notice").hidden = true; $("notice-text").replaceChildren(); return; }
  const lines = [...notices.values()].map((n) => {
    const sentence = n.detail.charAt(0).toUpperCase() + n.detail.slice(1);
    const open = n.thread_id ? el("button", {type: "button", class: "notice-open"}, "Open its consult") : null;
    open?.addEventListener("click", () => openThread(n.thread_id, true));
    return el("li", {class: "notice-line", "data-notice-id": n.id},
      el("span", {class: "notice-sentence"}, when(n.at) + ": " + sentence +
        (ORGANISATION_ACTS.includes(n.code) ? "." : ". Tell IT if it happens again.")), open);
  });
  $("notice-text").replaceChildren(...lines);
  $("notice-dismiss").textContent = notices.size > 1 ? "Dismiss all " + notices.size : "Dismiss";
  $("notice").hidden = false;
}
$("notice-dismiss").addEventListener("click", async () => {
  // Only the lines on screen: one that arrives meanwhile stays until it has been seen.
  const ids = [...notices.keys()];
  notices = new Map();
  $("notice").hidden = true; $("notice-text").replaceChildren();
  await api("/api/notice/dismiss", {ids});
});

// A message of a consult that the client dropped because its sender's device was revoked or
// their account suspended (the consult's ``dropped``): said in the list and in the consult,
// with who and when, so the specialist asks them what it said.
function droppedLine(d) {
  const from = d.sender ? " from " + d.sender : "";
  const why = d.because === "suspended" ? "their account was suspended"
    : "their device was revoked";
  return "A" + (d.urgent ? "n urgent" : "") + " message of this consult" + from + ", sent " +
    when(d.sent_at) + ", was dropped because " + why + ": ask " +
    (d.sender ? "them" : "its sender") + " what it said.";
}

// A consult whose dropped messages were dismissed and of which nothing else is on this computer.
const LEFT_INBOX = "Its dropped messages are dismissed and nothing else of this consult is on " +
  "this computer, so it has left the inbox. It comes back if anything more of it arrives.";
// A consult made before this computer was linked, with nothing of it here (the desktop's
// before_link): its messages were sealed for her devices of that time and never come.
const BEFORE_LINK = "This consult's messages were sent before this computer was linked to " +
  "your account: they were sealed for your devices of that time, so they cannot be read here. " +
  "Read them on another of your devices. A new message in this consult reaches this computer.";

// Not connected because another Lightbox command of this device has the relay for now (the
// relay keeps one connection per device): no loss, and the client connects again once that
// command is done, so it says so rather than "reconnecting...".
function setConn(up, replaced) {
  if (!$("ended-banner").hidden) return;  // the relay ended this computer's access: it says so
  $("conn").textContent = up ? "connected"
    : replaced ? "paused: another Lightbox command is using the connection" : "reconnecting...";
  $("conn").classList.toggle("down", !up && !replaced);
}

$("unlock-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  $("unlock-error").textContent = "";
  try {
    await api("/api/unlock", {password: $("password").value});
    $("password").value = "";
    await start();
  } catch (err) {
    if (err.data?.ended) { $("password").value = ""; showEnded(err.data.ended); }
    else $("unlock-error").textContent = err.message;
  }
});

// "Try again" (the relay suspended the account, or the connection stopped): the vault locks
// and the unlock signs in again with the password, once IT has resumed the account.
const TRIED_AGAIN = ["suspended", "stopped"];
const TRY_AGAIN = "Enter your password to try again: Lightbox signs in to the relay afresh. " +
  "If your account is still suspended, it says so.";
$("try-again").addEventListener("click", async () => {
  showLocked(TRY_AGAIN); await api("/api/lock", {});
});

// The page forgets first, then tells the desktop: a refresh due meanwhile must not ask a
// vault that is locking (it was answered 423, an error in the console).
$("lock").addEventListener("click", async () => { showLocked(); await api("/api/lock", {}); });

// --- live updates ---------------------------------------------------------------------------

let refreshTimer = null;
function refreshSoon() {
  clearTimeout(refreshTimer);
  refreshTimer = setTimeout(async () => {
    if ($("app").hidden) return;  // locked or closed: nothing to refresh
    await loadInbox();
    if (current) await openThread(current, looking());
  }, 100);
}

// A message that arrives in the consult on screen is read (and its sender's device told
// "read") only while someone can be looking at it: the page shown and its window in front. A
// desktop left on a consult behind other windows, or minimised, must not tell the intern that
// the specialist read an urgent message nobody saw (docs/HAZARD_LOG.md HAZ-02); the consult is
// read when its window comes back to the front.
function looking() {
  return document.visibilityState === "visible" && document.hasFocus();
}

async function backInFront() {
  if ($("app").hidden || !current || !looking()) return;
  if (threads.some((t) => t.thread_id === current && t.unread)) await openThread(current, true);
}
window.addEventListener("focus", backInFront);
document.addEventListener("visibilitychange", backInFront);

function listen() {
  if (events) return;
  events = new EventSource("/api/events");
  // The stream broke: if the app itself no longer answers, say so (api() does) instead of
  // "reconnecting..." for ever; if its vault locked meanwhile (the app stopping locks it
  // first), show the unlock screen; otherwise the stream reconnects by itself.
  events.addEventListener("error", () => {
    api("/api/state").then((s) => {
      if (s.ended?.ended === "wiped") showEnded(s.ended);
      else if (!s.unlocked) showLocked();
    }).catch(() => {});
  });
  for (const kind of ["message", "image", "receipt", "escalation", "filed", "withdrawn", "outbox",
                      "acknowledgement", "dropped", "not_received"]) {
    events.addEventListener(kind, refreshSoon);
  }
  events.addEventListener("expired", (e) => { dropImage(JSON.parse(e.data).attachment_id); refreshSoon(); });
  events.addEventListener("status", (e) => {
    const s = JSON.parse(e.data);
    if (s.state === "locked") {
      // the lock this page asked for (Lock, Try again): its unlock screen is already shown
      if (s.reason || $("unlock").hidden) showLocked(s.reason);
      return;
    }
    if (s.state === "ended") { showEnded(s); return; }
    if (s.state === "error") { showNotice(s); return; }
    if (s.state === "connected" || s.state === "disconnected") {
      connTold++;
      setConn(s.state === "connected", s.replaced);
    }
  });
}

// ``acked``: acknowledged since (here or on another device of hers): a reminder before it
// no longer reads as if nobody had.
function escalationLine(e, steps, acked) {
  // no_shift: nobody on call for the role (a gap in the rota, PROTOCOL.md §16.4)
  const next = e.next_shift_at == null
    ? "no later shift is on the rota yet: it goes to the next shift IT adds"
    : "it goes to the next shift when that starts at " + when(e.next_shift_at);
  const what = {renotify: (acked ? "Before you acknowledged it: reminded "
                                 : "No acknowledgement yet: reminded ") + e.name,
                released: "Not acknowledged in time: passed to " + e.name,
                handover: "Shift change: handed over to " + e.name,
                // a reminder of the wait when the step before said the same (else said anew)
                no_shift: (steps.some((x) => x.kind === "no_shift" && x.step === e.step - 1)
                           ? "Still no one on call for the role: reminded; "
                                      : "No one is on call for the role now; ") + next}[e.kind] || e.kind;
  return what + " (step " + e.step + ", " + when(e.at) + ")";
}

// --- inbox ----------------------------------------------------------------------------------

// Put `wanted` in `parent`, in order, keeping every child already there that `wanted` draws the
// same (the same `key`, and isEqualNode: the same elements, attributes and text). The inbox is
// listed again on every event; when that replaced every element, a click whose button went down
// on a consult before the new list and came up after it opened nothing (the browser sends the
// click only where both happened, and the first element was gone). The same as the phone app's
// (clients/phone/src/app/main.ts redraw). Kept elements keep their listeners: their markup is
// the same, so is the consult they open.
//
// With `depth` above 0, a child of the same key that changed inside (a consult a message or a
// receipt reached while the mouse button was down on it) is kept too, its attributes made the
// wanted ones and its own children put in it the same way, `depth` levels down: the inbox keeps
// its row and the consult's button (depth 2), whose only listener opens the consult by its id,
// the row's key; what changed inside the button (its unread count, its last line) is drawn anew.
function redraw(parent, wanted, key, depth = 0) {
  const had = new Map();
  const children = [...parent.children];
  keysOf(children, key).forEach((k, i) => {
    if (k !== undefined) had.set(k, children[i]);
  });
  const keys = keysOf(wanted, key);
  const next = wanted.map((w, i) => {
    const old = keys[i] === undefined ? undefined : had.get(keys[i]);
    if (!old) return w;
    had.delete(keys[i]);  // one element kept for one wanted, never twice
    if (old.isEqualNode(w)) return old;
    if (depth > 0 && onlyElements(old) && onlyElements(w) && old.tagName === w.tagName) {
      for (const name of old.getAttributeNames()) if (!w.hasAttribute(name)) old.removeAttribute(name);
      for (const name of w.getAttributeNames()) old.setAttribute(name, w.getAttribute(name));
      redraw(old, [...w.children], partKey, depth - 1);
      return old;
    }
    return w;
  });
  // The ones not kept go first, so that a kept one never moves (taken out and put back).
  const kept = new Set(next);
  for (const child of [...parent.children]) if (!kept.has(child)) child.remove();
  next.forEach((w, i) => {
    if (parent.children[i] !== w) parent.insertBefore(w, parent.children[i] || null);
  });
}

// `key` of each element, the second and later of one key told apart by their count.
function keysOf(els, key) {
  const seen = new Map();
  return els.map((e) => {
    const k = key(e);
    if (k === undefined) return undefined;
    const n = seen.get(k) || 0;
    seen.set(k, n + 1);
    return n ? k + "#" + n : k;
  });
}

// A part of a row: by its consult's id, else its id, else its tag and class.
function partKey(e) {
  return e.dataset.threadId || e.id || e.tagName + "." + e.className;
}

// No text of its own between its elements (a row or a button of parts; not a line of text).
function onlyElements(e) {
  return [...e.childNodes].every((n) => n.nodeType === Node.ELEMENT_NODE || !n.textContent.trim());
}

async function loadInbox() {
  const ticket = ++listing;
  const data = await api("/api/threads");
  if (ticket !== listing) return;  // a later call's answer is the newer list (as in openThread)
  threads = data.threads;
  const list = $("inbox");
  // Someone moving through the inbox with j/k keeps their place when it is listed again.
  const focused = document.activeElement?.classList.contains("thread-item")
    ? document.activeElement.dataset.threadId : null;
  const items = [];
  for (const t of threads) {
    const item = el("button", {type: "button", class: "thread-item" + (t.urgent ? " urgent" : "") +
                               (t.thread_id === current ? " selected" : ""),
                               "data-thread-id": t.thread_id},
      t.unread ? el("span", {class: "badge", title: "unread"}, String(t.unread)) : null,
      t.urgent ? el("span", {class: "urgent-flag"}, "URGENT ") : null,
      el("strong", {}, t.subject),
      t.dropped.length ? el("div", {class: "dropped-flag"}, t.dropped.length === 1
        ? "1 message dropped: ask its sender" : t.dropped.length + " messages dropped: ask their sender") : null,
      el("div", {class: "meta"}, (t.last_from ? t.last_from + ", " : "") + when(t.last_at) +
         (t.has_image ? " - image" : "") + (t.acknowledged ? " - acknowledged" : "") +
         // "I'm on it" said on her phone or with `lightbox ack`, as the opened consult says it
         (t.acknowledged_elsewhere ? " on another of your devices" : "") +
         (t.acknowledgement_waiting ? ", not sent yet" : "")));
    item.addEventListener("click", () => openThread(t.thread_id, true));
    items.push(el("li", {"data-thread-id": t.thread_id}, item));
  }
  if (!threads.length) items.push(el("li", {class: "empty"}, "No consults yet."));
  redraw(list, items, (li) => li.dataset.threadId, 2);
  if (focused) [...list.querySelectorAll(".thread-item")].find((b) => b.dataset.threadId === focused)?.focus();
}

// --- a thread -------------------------------------------------------------------------------

function consentBlock(c) {
  if (!c) return null;
  const who = [...c.roles.map((r) => "role " + r), ...c.users, ...c.orgs.map((o) => "organisation " + o)];
  // A withdrawn consent is never shown as agreed: what it was is kept, struck through.
  const decision = c.withdrawn_at
    ? el("strong", {class: "withdrawn-at", "data-withdrawn-at": String(c.withdrawn_at)},
         "Consent: withdrawn " + when(c.withdrawn_at))
    : el("strong", {}, "Consent: " + c.decision);
  return el("div", {class: "consent" + (c.withdrawn_at ? " withdrawn" : "")},
    decision, (c.withdrawn_at ? " (was " + c.decision + ")" : "") +
    " for " + c.purposes.join(", ").replaceAll("_", " "),
    el("div", {}, "May see it: " + (who.length ? who.join(", ") : "the thread") +
       (c.external ? " (external allowed)" : " (this organisation only)")),
    el("div", {class: "meta"}, "valid until " + when(c.expires_at) + ", form " + c.form_version),
    // The patient's copy (issue 10 item 2), rendered by the local client; same origin.
    el("a", {href: c.pdf_url, target: "_blank", rel: "noopener noreferrer", class: "consent-pdf"},
       "Patient's consent form (PDF)"));
}

function recordBlock(r) {
  if (!r) return null;
  return el("div", {class: "record"},
    el("strong", {}, "Patient: "), r.patient_name + " - " + r.patient_id +
    (r.birth_date ? ", born " + r.birth_date : "") + (r.sex ? ", " + r.sex : "") +
    (r.region ? " - " + r.region : "") + (r.accession ? " - accession " + r.accession : ""));
}

// A photo of a film or monitor is not the study itself (CLINICAL_SAFETY.md): plain text, no PACS
// call. The line offers the original study only when there is one to open below it (a link, or
// its study UID); otherwise it says why there is none and what to do (docs/USER_GUIDE.md,
// "Not of diagnostic quality"), in one plain line, never a call to action with nothing to click.
// The receipt's original_search (docs/PROTOCOL.md) says whether the gateway's search found none
// or could not be made; a receipt from an older gateway does not, so that line names both.
const FILM = "Photo of a film/monitor \u2014 not of diagnostic quality; ";
const NOT_DIAGNOSTIC = FILM + "view the original study in PACS";
const ORIGINAL_BY_UID = FILM + "open the original study in PACS by its study UID below";
const NOT_LOOKED_UP = FILM + "its original study has not been looked up yet: the record gateway " +
  "looks for it in PACS when it files this photo";
const NONE_FOUND = FILM + "the record gateway found no original study in PACS for this " +
  "patient around this date: look in the PACS by the patient's ID and the date, and tell the " +
  "record gateway's operator if the study is there";
const SEARCH_FAILED = FILM + "the record gateway could not search PACS for the original study " +
  "(its operator can see why in its log): look in the PACS by the patient's ID and the date";
const NO_ORIGINAL = FILM + "the record gateway found no original study in PACS, or could not " +
  "search it: look in the PACS by the patient's ID and the date, and tell the record " +
  "gateway's operator if the study is there";

function notDiagnosticText(m) {
  if (!(m.record && m.record.not_diagnostic)) return "";
  const originals = m.images.flatMap((i) => (i.study ? i.study.originals : []));
  if (originals.some((o) => o.url)) return NOT_DIAGNOSTIC;
  if (originals.length) return ORIGINAL_BY_UID;
  const searched = m.images.length > 0 && m.images.every((i) => i.study);
  if (!searched) return NOT_LOOKED_UP;
  const how = m.images.map((i) => i.study.search);
  if (how.includes("failed")) return SEARCH_FAILED;
  return how.every((h) => h === "none") ? NONE_FOUND : NO_ORIGINAL;
}

function notDiagnostic(m) {
  const text = notDiagnosticText(m);
  return text ? el("p", {class: "not-diagnostic", role: "note"}, text) : null;
}


function originalsBlock(m, img) {
  // For a photo of a film or monitor, the original imaging studies the record
  // gateway found in PACS (its filing receipt, newest first; http(s) URLs only, checked by the
  // server). Nothing before the receipt: the search happens when the photo is filed.
  if (!(m.record && m.record.not_diagnostic) || !img.study) return null;
  const originals = img.study.originals;
  if (!originals.length) return null;  // said by notDiagnostic, with no offer of a link
  return el("ul", {class: "originals"}, ...originals.map((o) => {
    const about = [o.modalities.join("/"), o.date || ""  /* YYYY-MM-DD, as when() writes dates */, o.description].filter(Boolean);
    const words = "View the original study" + (about.length ? " (" + about.join(", ") + ")" : "");
    return el("li", {}, o.url
      ? el("a", {href: o.url, target: "_blank", rel: "noopener noreferrer", class: "original-study",
                 "data-study-uid": o.study_uid}, words)
      : el("span", {class: "original-study", "data-study-uid": o.study_uid},
           words.replace("View the original study", "Original study in PACS") + ": " + o.study_uid));
  }));
}

function studyBlock(img) {
  // From the gateway's filing receipt: the study UID, and its retrieve URL when the PACS gave
  // one (http(s) only, checked by the server). The desktop itself never contacts the PACS.
  const s = img.study;
  if (!s) return null;
  const ref = s.retrieve_url
    ? el("a", {href: s.retrieve_url, target: "_blank", rel: "noopener noreferrer"}, s.study_uid)
    : el("span", {}, s.study_uid);
  // The receipt's study is the one the gateway filed this photo into (the consult's study), not
  // the modality's original imaging study: say so rather than call it the original.
  return el("div", {class: "pacs-study", "data-study-uid": s.study_uid},
    "Filed in PACS as study ", ref, " (this photo; not the original imaging study)");
}

// An expiry order was applied (docs/PROTOCOL.md §15): nothing of the image stays on the page,
// not its thumbnail, not the viewer's pixels; the server answers 410 for it from now on.
function dropImage(aid) {
  if (!aid) return;
  for (const node of document.querySelectorAll("[data-attachment-id]")) {
    if (node.dataset.attachmentId === aid) {
      node.replaceWith(el("div", {class: "expired", "data-attachment-id": aid}, "Image deleted from this device"));
    }
  }
  if (view.aid === aid || view.pending === aid) closeViewer();
}

function copyExpiry(img) {
  if (!img.expires_at) return "";
  return img.expires_at * 1000 > Date.now() ? "; this copy expires " + when(img.expires_at)
                                            : "; this copy is being deleted";
}

// What the sender's text recognition found burned into the image (kinds only, never the text).
const IDENTIFIER_KINDS = {name: "name", date_of_birth: "date of birth", identifier: "record number",
                          date: "date", age: "age", institution: "institution"};

function identifiersBlock(img) {
  const kinds = img.burned_in_identifiers || [];
  if (!kinds.length) return null;
  return el("p", {class: "burned-in", role: "note", "data-identifiers-for": img.attachment_id},
    "This image shows patient identifiers: " + kinds.map((k) => IDENTIFIER_KINDS[k] || k).join(", "));
}

// A shredded image: deleted from this computer, or (``never_here``) expired before it reached
// it, so never shown here; the same words as `lightbox inbox` (clients/clinician/reading.py).
function expiredLine(img) {
  const where = img.record_ref ? " - in the record: " + img.record_ref : "";
  if (!img.never_here) return "Image deleted from this device" + where;
  return img.record_ref
    ? "Image filed to the patient's record before it reached this device, so never shown here" + where
    : "Image expired before it reached this device, so never shown here";
}

function imageBlock(m, img) {
  const filing = img.filed_at ? el("div", {class: "filing"}, "Filed in the record" +
      (img.record_ref ? " (" + img.record_ref + ")" : "") + copyExpiry(img)) : null;
  if (img.state === "shredded") {
    return el("div", {},
      el("div", {class: "expired", "data-attachment-id": img.attachment_id}, expiredLine(img)),
      originalsBlock(m, img), studyBlock(img));
  }
  if (img.state !== "stored") {
    return el("div", {class: "meta image-state"}, "Image " + img.state + (img.reason ? ": " + img.reason : ""));
  }
  const button = el("button", {type: "button", class: "thumb", "data-attachment-id": img.attachment_id,
                               title: "Open the image (zoom, contrast)"},
    el("img", {src: "/api/images/" + img.attachment_id, alt: "Image " + (img.width || "") + "x" + (img.height || "")}));
  button.addEventListener("click", () => openViewer(img.attachment_id, notDiagnosticText(m)));
  return el("div", {}, identifiersBlock(img), button, notDiagnostic(m), originalsBlock(m, img), filing,
            studyBlock(img));
}

// A consult handed over at a shift change (docs/PROTOCOL.md §16.4): the line above names its
// author and time; this says it was sealed again, by whose device, and whether this computer
// could check the author and time (against the original it holds, or the author's own device).
function handoverLine(h) {
  if (!h) return null;
  if (h.contradicted) {
    return el("div", {class: "warning handover", role: "note"}, "Handed over at the shift change by " +
      h.resealed_by + "'s device on " + when(h.resealed_at) + (h.misclaimed === false
        ? ": its content does NOT match the original on this computer"
        : ": the author and time it claims do NOT match the original on this computer" +
          (h.altered ? ", nor does its content" : "")));
  }
  if (!h.confirmed) {
    return el("div", {class: "meta handover"}, "As handed over by " + h.resealed_by + " at the shift change on " +
      when(h.resealed_at) + ": the author and time are their device's word");
  }
  return el("div", {class: "meta handover"}, "Handed over at the shift change on " + when(h.resealed_at) +
    (h.by_author ? "" : " (resealed by " + h.resealed_by + "'s device)"));
}

async function openThread(id, markRead) {
  current = id;
  const ticket = ++opening;
  const t = await api("/api/threads/" + id);
  // Answers may come back in any order: a refresh of the consult that was open can be answered
  // after the clinician clicked another one. Only the latest call's answer is shown, never an
  // earlier one over it (a page showing one patient's consult under another's click is a
  // wrong-patient hazard, docs/HAZARD_LOG.md HAZ-14).
  if (ticket !== opening) return;
  const article = $("thread");
  const header = el("h2", {}, (t.priority === "urgent" ? "URGENT - " : "") +
    t.subject);
  const list = el("div", {id: "messages"});
  // Record data of two patients in one consult: said over everything else in it.
  if (t.patients_warning) list.append(el("p", {class: "warning patients-warning", role: "alert"}, t.patients_warning));
  for (const d of t.dropped) list.append(el("p", {class: "dropped", role: "alert"}, droppedLine(d)));
  if (t.dropped.length) {
    // Kept on this computer, through restarts, until the specialist dismisses the lines shown
    // here (their problem lines above go with them).
    const ids = t.dropped.map((d) => d.id);
    const dismiss = el("button", {type: "button", id: "dropped-dismiss"},
      ids.length > 1 ? "Dismiss all " + ids.length : "Dismiss");
    dismiss.addEventListener("click", async () => {
      const answer = await api("/api/threads/" + id + "/dropped/dismiss", {ids});
      for (const i of ids) notices.delete(i);
      drawNotices();
      if (answer.left_inbox && current === id) {
        // Nothing of it is left on this computer: it leaves the inbox, and the page says so
        // rather than show an empty consult.
        current = null; shown = null;
        $("thread").replaceChildren(el("p", {class: "empty", id: "thread-left"}, LEFT_INBOX));
      }
      refreshSoon();
    });
    list.append(el("p", {class: "dropped-actions"}, dismiss));
  }
  for (const m of t.messages) {
    // Only a consult for this user (m.acknowledgeable: the thread's opening message from its
    // maker, never a reply to one's own consult, a note or the record gateway's; one rule with
    // `lightbox ack`, clients/sdk/acking.py), and so "a" acknowledges the consult itself. Once
    // per consult: the server marks one message of its opening run, and gives it the consult's
    // state whichever of them it was said to (clients/desktop/views.py one_acknowledgement).
    // Not yet sent (the relay out of reach): said by ackLine instead, never "You acknowledged".
    // Also when said on another device of hers (her phone): the relay's escalation says so.
    const acked = m.acknowledgeable && m.acknowledged_by_me && !m.acknowledgement_waiting
      ? el("span", {class: "ack-state"}, "You acknowledged this consult" +
           (m.acknowledged_elsewhere ? " (on another of your devices)" : "")) : null;
    let ack = null;
    if (m.acknowledgeable && !m.acknowledged_by_me) {
      ack = el("button", {type: "button", class: "ack-button", "data-message-id": m.message_id}, "I'm on it (a)");
      ack.addEventListener("click", () => acknowledge(m.message_id));
    }
    const receipts = m.mine && m.receipts.length ? el("div", {class: "meta receipts"},
      m.receipts.map((r) => r.name + ": " + r.kind).join("; ")) : null;
    // On-call escalation (issue 9): each step the relay told this device about, in order.
    const escalation = m.escalations.length ? el("ol", {class: "escalation"},
      ...m.escalations.map((e) => el("li", {}, escalationLine(e, m.escalations,
                                                              m.acknowledged_by_me)))) : null;
    // To the sender: each person who never received its image (docs/PROTOCOL.md §15).
    const notReceived = (m.not_received || []).map((line) =>
      el("p", {class: "warning not-received", role: "alert"}, line));
    list.append(el("div", {class: "message" + (m.mine ? " mine" : ""), "data-message-id": m.message_id},
      el("div", {class: "meta"}, m.sender + " - " + sentWhen(m) + (m.priority === "urgent" ? " - URGENT" : "")),
      handoverLine(m.handover),
      m.text ? el("p", {class: "text"}, m.text) : (m.note ? el("p", {class: "meta note"}, m.note) : null),
      m.quality_warnings.length ? el("div", {class: "warning"}, "Sent despite: " + m.quality_warnings.join(", ").replaceAll("_", " ")) : null,
      m.emergency ? el("div", {class: "warning break-glass", role: "note"}, "BREAK-GLASS (" +
        m.emergency.replaceAll("_", " ") + "): sent without consent in an emergency: " +
        (m.emergency_reason || "no reason given")) : null,
      recordBlock(m.record), ...m.images.map((img) => imageBlock(m, img)), consentBlock(m.consent),
      ack, acked, m.acknowledgeable ? ackLine(m) : null, receipts, escalation, ...notReceived));
  }
  for (const p of t.pending || []) {
    list.append(el("div", {class: "message mine pending", "data-message-id": p.message_id},
      el("div", {class: "meta"}, "you - " + when(p.created_at) +
         " - not sent yet: kept on this computer, it goes as soon as the relay can be reached"),
      el("p", {class: "text"}, p.text)));
  }
  if (!t.messages.length && !(t.pending || []).length) {
    // A consult the relay lists before any message of it reached this computer: the first
    // is on its way. Or its messages were dropped (said above), or dropped and dismissed.
    // Never an empty page, and never "not reached" for a message that did and was dropped.
    list.append(el("p", {class: "meta", id: "thread-empty"},
      t.dropped.length ? "No other message of this consult is on this computer."
        : t.emptied ? LEFT_INBOX
        // Sealed for her devices of that time: they never come here (PROTOCOL.md §6).
        : t.before_link ? BEFORE_LINK
        : "No message of this consult has reached this computer yet."));
  }
  const form = el("form", {id: "reply"},
    el("label", {htmlFor: "reply-text"}, "Reply (r)"),
    el("textarea", {id: "reply-text", required: true}),
    el("div", {id: "text-guard", role: "alert"}),
    el("button", {type: "submit", id: "reply-send"}, "Send reply"),
    el("p", {id: "reply-status", class: "meta", role: "status"}));
  form.addEventListener("submit", sendReply);
  // A reply being written stays with its consult: kept while another is open, never carried
  // into the next patient's consult, and still there when the page is refreshed.
  const box = $("reply-text");
  if (shown && box) drafts.set(shown, box.value);
  // Drawn again while the specialist types in it (a message arrived): the new box takes the
  // focus and the caret, so no keystroke falls through to a shortcut ("a" would acknowledge).
  const caret = shown === id && box && document.activeElement === box
    ? [box.selectionStart, box.selectionEnd, box.selectionDirection] : null;
  if (shown !== id) closeViewer();  // nor does an image of the consult left open over this one
  article.replaceChildren(header, list, form);
  shown = id;
  $("reply-text").value = drafts.get(id) || "";
  if (caret) { $("reply-text").focus(); $("reply-text").setSelectionRange(...caret); }
  // Changing the text answers the warning: the next send checks the new text.
  $("reply-text").addEventListener("input", () => { guard = null; showGuard(); });
  showGuard();
  for (const item of document.querySelectorAll(".thread-item")) {
    item.classList.toggle("selected", item.dataset.threadId === id);
  }
  if (markRead && t.messages.some((m) => !m.mine && !m.read)) {
    await api("/api/threads/" + id + "/read", {});
    loadInbox();
  }
}

async function sendReply(e) {
  e.preventDefault();
  const text = $("reply-text").value.trim();
  if (text) await postReply(text, false);
}

async function postReply(text, confirmed) {
  // The reply goes to the consult whose reply box it was written in, the one on screen, even
  // if another was clicked meanwhile and is still loading.
  const thread = shown;
  const here = () => shown === thread;  // still on screen when the answer comes back
  $("reply-status").textContent = "sending...";
  try {
    const answer = await api("/api/threads/" + thread + "/reply", confirmed ? {text, confirmed} : {text});
    // Sent, or kept on this computer to go once the relay is reachable (answer.kept): either
    // way it is no longer a draft, so that it is not sent twice.
    if (guard?.thread === thread) guard = null;
    drafts.delete(thread);
    if (here()) $("reply-text").value = "";
    if (current === thread) await openThread(thread, false);
    if (here()) $("reply-status").textContent = answer.kept ? answer.detail : "sent";
  } catch (err) {
    if (!here()) return;  // its draft is kept; opening the consult again shows it
    if (err.data?.error === "text_guard") {
      guard = {thread, text: $("reply-text").value, sent: text, data: err.data};
      showGuard();
      $("reply-status").textContent = "not sent: check the wording";
    } else {
      $("reply-status").textContent = err.message;
    }
  }
}

const GUARD_KINDS = {exact_age: "an exact age", date_of_birth: "a date of birth",
                     mrn: "a record number", date_of_service: "a date of service"};

function showGuard() {
  // Issue 10 item 5: the reply leaves direct care (its purpose) and its text may identify the
  // patient. The clinician decides: take the suggested wording, or send it as written.
  const box = $("text-guard");
  if (!box) return;
  const g = guard && guard.thread === shown && guard.text === $("reply-text").value ? guard : null;
  box.hidden = !g;
  if (!g) { box.replaceChildren(); return; }
  // Only exact ages have a mechanical rewrite (age ranges); other findings are the clinician's
  // to reword, so without one there is no suggested wording to use.
  const rewritten = g.data.suggestion !== g.sent;
  let use = null;
  if (rewritten) {
    use = el("button", {type: "button", id: "guard-use"}, "Use suggested wording");
    use.addEventListener("click", () => {
      $("reply-text").value = g.data.suggestion;
      guard = null; showGuard();
      $("reply-text").focus();
    });
  }
  const send = el("button", {type: "button", id: "guard-send"}, "Send anyway");
  send.addEventListener("click", () => postReply(g.sent, true));
  box.replaceChildren(
    el("strong", {}, "This reply is for " + g.data.purpose.replaceAll("_", " ") +
       ": it may identify the patient. Use an age range, and leave out dates and record numbers."),
    el("ul", {}, ...g.data.findings.map((f) => el("li", {class: "finding", "data-kind": f.kind},
      (GUARD_KINDS[f.kind] || f.kind) + ": \u201c" + f.text + "\u201d \u2014 " + f.suggestion))),
    rewritten ? el("p", {class: "suggestion"}, "Suggested: " + g.data.suggestion) : null,
    el("div", {class: "guard-actions"}, use, send));
}

// What became of "I'm on it" beyond "You acknowledged this", under the message: not sent yet
// (the relay out of reach: it goes by itself), refused by the relay (the server's sentence), or
// not taken by this computer (ackFailures). The button stays whenever it is not acknowledged.
function ackLine(m) {
  const failed = ackFailures.get(m.message_id);
  const text = failed || m.acknowledgement_note;
  if (!text) return null;
  const waiting = !failed && m.acknowledgement_waiting;
  return el("p", {class: waiting ? "ack-waiting" : "ack-problem", role: waiting ? "status" : "alert",
                  "data-ack-for": m.message_id}, text);
}

async function acknowledge(messageId) {
  ackFailures.delete(messageId);
  try {
    // 200 once the relay answered (kept, or refused: said under the message from the client's
    // record); 202 kept (not sent yet) or unanswered (the connection was taken before the
    // relay answered): said under the message too, until the relay's answer replaces it.
    await api("/api/messages/" + messageId + "/ack", {});
  } catch (err) {
    if (err.shown) throw err;  // the unlock screen or "Lightbox has closed" says it already
    // Refused here (4xx/5xx): nothing went to the sender, who must not be left believing it.
    ackFailures.set(messageId, "Not acknowledged: " + (err.data?.error ||
      "this computer could not record it (HTTP " + err.status + ")") +
      ". The sender has not been told you are on it: try again.");
  }
  await openThread(current, false);
  await loadInbox();
}

// --- image viewer: zoom, pan, window/level ----------------------------------------------------

const view = {aid: null, pending: null, base: null, lut: null, scale: 1, x: 0, y: 0, drag: null, off: null};
// openViewer's calls and the viewer's closings, counted: an image still loading when the viewer
// was closed (the vault locked, the image expired, another consult opened) is never shown.
let viewing = 0;

async function openViewer(aid, note) {
  const ticket = ++viewing;
  view.pending = aid;
  const r = await fetch("/api/images/" + aid, {cache: "no-store"});
  if (ticket !== viewing) { r.body?.cancel(); return; }
  if (!r.ok) { view.pending = null; return; }
  const bitmap = await createImageBitmap(await r.blob());
  if (ticket !== viewing) { bitmap.close(); return; }
  view.pending = null;
  view.aid = aid;
  const off = document.createElement("canvas");
  off.width = bitmap.width; off.height = bitmap.height;
  const ctx = off.getContext("2d");
  ctx.drawImage(bitmap, 0, 0);
  bitmap.close();
  view.base = ctx.getImageData(0, 0, off.width, off.height);
  view.off = off;
  $("viewer-note").textContent = note;  // what the page says beside the image, if anything
  $("viewer-note").hidden = !note;
  $("viewer").hidden = false;
  resetView();
  $("canvas").focus();
}

function resetView() {
  $("contrast").value = 255; $("brightness").value = 128;
  view.scale = 1; view.x = 0; view.y = 0;
  applyWindow(); draw();
}

function applyWindow() {
  // Window/level as radiologists expect: map [level - window/2, level + window/2] to 0..255.
  if (!view.base) return;
  const w = Number($("contrast").value), l = Number($("brightness").value);
  const lo = l - w / 2, lut = new Uint8ClampedArray(256);
  for (let v = 0; v < 256; v++) lut[v] = ((v - lo) / w) * 255;
  const src = view.base.data, out = new ImageData(view.base.width, view.base.height), d = out.data;
  for (let i = 0; i < src.length; i += 4) {
    d[i] = lut[src[i]]; d[i + 1] = lut[src[i + 1]]; d[i + 2] = lut[src[i + 2]]; d[i + 3] = 255;
  }
  view.off.getContext("2d").putImageData(out, 0, 0);
  $("canvas").dataset.window = String(w);
  $("canvas").dataset.level = String(l);
}

function draw() {
  if (!view.off) return;
  const c = $("canvas");
  c.width = c.clientWidth || 800; c.height = c.clientHeight || 600;
  const ctx = c.getContext("2d");
  ctx.fillStyle = "#000"; ctx.fillRect(0, 0, c.width, c.height);
  const fit = Math.min(c.width / view.off.width, c.height / view.off.height);
  const s = fit * view.scale;
  const w = view.off.width * s, h = view.off.height * s;
  ctx.imageSmoothingEnabled = view.scale < 2;
  ctx.drawImage(view.off, (c.width - w) / 2 + view.x, (c.height - h) / 2 + view.y, w, h);
  c.dataset.scale = view.scale.toFixed(2);
}

function zoom(f) { view.scale = Math.min(16, Math.max(0.25, view.scale * f)); draw(); }
function closeViewer() {
  viewing++;
  $("viewer").hidden = true;
  view.aid = null; view.pending = null; view.base = null; view.off = null;
  const c = $("canvas");
  c.getContext("2d").clearRect(0, 0, c.width, c.height);
}

$("contrast").addEventListener("input", () => { applyWindow(); draw(); });
$("brightness").addEventListener("input", () => { applyWindow(); draw(); });
$("zoom-in").addEventListener("click", () => zoom(1.25));
$("zoom-out").addEventListener("click", () => zoom(0.8));
$("reset").addEventListener("click", resetView);
$("close-viewer").addEventListener("click", closeViewer);
$("canvas").addEventListener("wheel", (e) => { e.preventDefault(); zoom(e.deltaY < 0 ? 1.1 : 0.9); });
$("canvas").addEventListener("pointerdown", (e) => { view.drag = [e.clientX - view.x, e.clientY - view.y]; });
window.addEventListener("pointerup", () => { view.drag = null; });
$("canvas").addEventListener("pointermove", (e) => {
  if (!view.drag) return;
  view.x = e.clientX - view.drag[0]; view.y = e.clientY - view.drag[1]; draw();
});
window.addEventListener("resize", () => { if (view.base) draw(); });

function nudge(id, delta) {
  const input = $(id);
  input.value = Math.min(Number(input.max), Math.max(Number(input.min), Number(input.value) + delta));
  applyWindow(); draw();
}

// --- keyboard -------------------------------------------------------------------------------

document.addEventListener("keydown", (e) => {
  const typing = ["INPUT", "TEXTAREA"].includes(document.activeElement?.tagName) &&
                 document.activeElement.type !== "range";
  if (!$("viewer").hidden) {
    const keys = {"+": () => zoom(1.25), "=": () => zoom(1.25), "-": () => zoom(0.8), "0": resetView,
      "Escape": closeViewer, "ArrowLeft": () => { view.x += 40; draw(); },
      "ArrowRight": () => { view.x -= 40; draw(); }, "ArrowUp": () => { view.y += 40; draw(); },
      "ArrowDown": () => { view.y -= 40; draw(); }, "[": () => nudge("contrast", -10),
      "]": () => nudge("contrast", 10), ",": () => nudge("brightness", -10),
      ".": () => nudge("brightness", 10)};
    if (keys[e.key] && (document.activeElement === $("canvas") || !typing)) {
      e.preventDefault(); keys[e.key]();
    }
    return;
  }
  if (typing || $("app").hidden) return;
  const items = [...document.querySelectorAll(".thread-item")];
  const at = items.indexOf(document.activeElement);
  if (e.key === "j" || e.key === "k") {
    e.preventDefault();
    const next = items[Math.max(0, Math.min(items.length - 1, at + (e.key === "j" ? 1 : -1)))];
    next?.focus();
  } else if (e.key === "r" && current) {
    e.preventDefault(); $("reply-text").focus();
  } else if (e.key === "a" && current) {
    const button = [...document.querySelectorAll(".ack-button")].pop();
    if (button) { e.preventDefault(); button.click(); }
  }
});

start().catch((err) => { $("thread").textContent = err.message; });
