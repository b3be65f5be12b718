/**
 * The page: screens, camera and QR scanning (jsQR), auto-lock. It holds no key: every
 * cryptographic step and every call to the relay happens in the worker (worker.ts).
 */
import jsQR from "jsqr";
import { when } from "./timefmt.js";
import type { MessageView, ThreadRecord } from "./views.js";

interface Config {
  relay: string;
  kdf: "interactive" | "cheap";
  autolock_seconds: number;
}
const $ = <T extends HTMLElement = HTMLElement>(id: string): T => document.getElementById(id) as T;
const SCREENS = ["loading", "enrol", "confirm", "passphrase", "unlock", "elsewhere", "home", "thread", "capture", "review", "consent"];

function show(name: string): void {
  for (const s of SCREENS) $(`screen-${s}`).hidden = s !== name;
  $("lock").hidden = ["loading", "enrol", "confirm", "passphrase", "unlock", "elsewhere"].includes(name);
  const heading = $(`screen-${name}`).querySelector("h1");
  if (heading) {
    heading.setAttribute("tabindex", "-1");
    heading.focus();
  }
  document.body.dataset["screen"] = name;
}

// --- the worker --------------------------------------------------------------------------------

const worker = new Worker("worker.js", { type: "module" });
let nextId = 1;
const calls = new Map<number, { resolve: (v: any) => void; reject: (e: any) => void }>();

class AppError extends Error {
  constructor(
    readonly code: string,
    message: string,
    /** The patient's decision was registered at the relay before this failure (sendImage). */
    readonly recorded = false,
  ) {
    super(message);
  }
}

function call<T = any>(op: string, args: unknown = {}): Promise<T> {
  const id = nextId++;
  worker.postMessage({ id, op, args });
  return new Promise<T>((resolve, reject) => calls.set(id, { resolve, reject }));
}

worker.onmessage = (m: MessageEvent) => {
  const data = m.data as { id?: number; ok?: boolean; result?: unknown; error?: { code: string; message: string; recorded?: boolean }; event?: string; [k: string]: unknown };
  if (data.event) return onEvent(data);
  const c = calls.get(data.id!);
  if (!c) return;
  calls.delete(data.id!);
  if (data.ok) c.resolve(data.result);
  else c.reject(new AppError(data.error!.code, data.error!.message, data.error!.recorded === true));
};

function onEvent(data: Record<string, unknown>): void {
  switch (data["event"]) {
    case "connection":
      if (data["state"] === "replaced") {
        void replaced();
        return;
      }
      // "connection trouble": the websocket is up, but the relay's other requests (photos,
      // colleagues' keys, sign-in) do not get through; the status lines say what waits.
      $("conn").textContent = data["state"] === "connected" ? "connected"
        : data["state"] === "partial" ? "connection trouble" : "offline";
      // A lost connection that came back: its sentence said the app reconnects by itself.
      if (data["state"] === "connected" && $("send-status").dataset["connection"]) {
        sayKept("send-status", "", null);
        delete $("send-status").dataset["connection"];
      }
      return;
    case "signin":
      needSignIn(data["signon"] === true);
      return;
    case "held":
      // The account is in a state only IT can change (suspended, licence expired) while the app
      // is open (worker.ts heardHold): said once, in the banner, until the phone is connected
      // again after IT changed it.
      if (typeof data["state"] === "string") {
        $("conn").textContent = data["state"];
        $("banner").textContent = String(data["message"] ?? "");
        $("banner").dataset["held"] = $("banner").textContent;
        $("banner").hidden = false;
      } else {
        clearHeld();
      }
      return;
    case "session_ended":
      // The relay ended the session and the worker could not sign in again by itself: it has
      // locked; the unlock screen says why, once (worker.ts sessionEnded).
      void lock().then(() => {
        $("unlock-why").textContent = String(data["message"] ?? "");
      });
      return;
    case "message": {
      // While the app is open: announced to screen readers, and in the title when not looked at.
      const m = data["message"] as MessageView;
      $("notice").textContent = `New message from ${m.from_name}: ${m.subject ?? m.text.slice(0, 60)}`;
      $("notice").dataset["thread"] = m.thread_id;
      fadeLater($("notice"), NOTICE_SHOWN_MS);
      if (!document.hasFocus()) document.title = `(new) Lightbox`;
      void renderThreads();
      return;
    }
    case "sent":
    case "unsent":
      settleKept(String(data["message_id"]), data["event"] === "sent" ? null : String(data["refusal"] ?? ""));
      void renderThreads();
      return;
    case "escalation":
    case "copy":
    case "filed":
    case "not_received":
    case "receipt":
      void renderThreads();
      return;
    case "revoked":
      // Already wiped: the banner says so, and the enrol screen is the one offer.
      if ($("conn").textContent === "wiped") return;
      $("conn").textContent = "revoked";
      $("banner").textContent = "This phone has been revoked by IT: it can no longer send or receive consults. Ask IT if you did not expect this.";
      $("banner").hidden = false;
      offerEnrolAgain();
      return;
    case "progress": {
      const bar = $<HTMLProgressElement>("upload");
      bar.max = Number(data["total"]) || 1;
      bar.value = Number(data["done"]) || 0;
      const pct = Math.round((100 * bar.value) / bar.max);
      if (data["stage"] === "resuming") sayKept("photo-status", `Resuming the photo upload at ${pct}%…`, null);
      $("consent-status").textContent = data["stage"] === "encrypting" ? "Encrypting the photo…"
        : data["stage"] === "retrying" ? `The connection dropped at ${pct}%: resuming the upload…` : `Uploading: ${pct}%`;
      return;
    }
    case "expired":
    case "image":
    case "withdrawn":
      void renderThreads();
      return;
    case "wiped":
      $("banner").textContent = `This phone was revoked by your organisation on ${when(Number(data["revoked_at"]))}; its Lightbox data has been erased.`;
      $("banner").hidden = false;
      dropThreads();
      $("conn").textContent = "wiped";
      dropPhoto();
      stopCamera();
      // One way to enrol again (the enrol screen), its form empty: never the old code, nor the
      // offer made when the phone was revoked, which the wipe has done already.
      document.getElementById("reenrol")?.remove();
      unlockOffered(true);
      clearEnrolForms();
      show("enrol");
      return;
    case "resumed": {
      // In words, from the worker (relay.ts resumedSentence): never the relay's bare code; on the
      // line that said the photo was kept (a consult's, for a photo added to it), else the photo's.
      const id = String(data["message_id"] ?? "");
      const line = (["thread-status", "send-status"] as const).find((l) => id && $(l).dataset["kept"] === id) ?? "photo-status";
      sayKept(line, String(data["message"] ?? ""), data["kept"] ? id : null, PHOTO_SENT_LINE);
      void renderThreads();
      return;
    }
    case "dropped":
      $("notice").textContent = droppedSentence(data);
      return;
    case "problem":
      sayKept("send-status", String(data["message"] ?? ""), null);
      if (data["connection"]) $("send-status").dataset["connection"] = "lost";
      else delete $("send-status").dataset["connection"];
      return;
  }
}

// --- a phone revoked without the wipe order, enrolled again (USER_GUIDE "A lost phone") ----------

/** The offer to enrol this revoked phone again with a new code from IT, under the banner: it
 * says plainly what is erased first, and erases only once the intern confirms. Unlocking is
 * offered no more: the relay refuses this phone for good. */
function offerEnrolAgain(): void {
  let panel = document.getElementById("reenrol");
  if (!panel) {
    panel = document.createElement("section");
    panel.id = "reenrol";
    panel.className = "panel reenrol";
    panel.setAttribute("aria-labelledby", "reenrol-title");
    const el = <K extends keyof HTMLElementTagNameMap>(tag: K, props: Partial<HTMLElementTagNameMap[K]>): HTMLElementTagNameMap[K] =>
      Object.assign(document.createElement(tag), props);
    const start = el("button", { id: "reenrol-start", type: "button", className: "primary", textContent: "Enrol this phone again" });
    const confirm = el("div", { id: "reenrol-confirm", hidden: true });
    const erase = el("button", { id: "reenrol-erase", type: "button", className: "primary", textContent: "Erase and enrol again" });
    const cancel = el("button", { id: "reenrol-cancel", type: "button", textContent: "Cancel" });
    const row = el("div", { className: "row" });
    row.append(erase, cancel);
    confirm.append(
      el("p", { id: "reenrol-warning", textContent: "This erases everything Lightbox holds on this phone: its revoked keys, your consults and photos, and any consult not sent yet. It cannot be undone. What you sent is still with its recipients." }),
      row,
    );
    panel.append(
      el("h2", { id: "reenrol-title", textContent: "Enrol this phone again" }),
      el("p", { textContent: "If IT has given you a new enrolment code, you can enrol this phone again with it." }),
      start, confirm, el("p", { id: "reenrol-error", className: "error" }),
    );
    panel.querySelector("#reenrol-error")!.setAttribute("role", "alert");
    start.addEventListener("click", () => {
      start.hidden = true;
      confirm.hidden = false;
      erase.focus();
    });
    cancel.addEventListener("click", () => {
      confirm.hidden = true;
      start.hidden = false;
      start.focus();
    });
    erase.addEventListener("click", () => void enrolAgain());
    document.querySelector("main")!.prepend(panel);
  }
  panel.hidden = false;
  unlockOffered(false);
}

/** The enrolment code and the passphrases typed on this phone, and what was said of them,
 * gone: after an enrolment, and after a wipe or an erase the next enrolment starts afresh. */
function clearEnrolForms(): void {
  for (const id of ["code", "new-pass", "new-pass2", "passphrase"]) $<HTMLInputElement>(id).value = "";
  for (const id of ["enrol-error", "pass-error", "confirm-error"]) $(id).textContent = "";
}

/** The unlock screen's heading and form, offered or not (not while the phone is revoked). */
function unlockOffered(offered: boolean): void {
  $("screen-unlock").querySelector("h1")!.hidden = !offered;
  $("unlock-form").hidden = !offered;
  $("unlock-error").textContent = "";
}

async function enrolAgain(): Promise<void> {
  const done = await busy($<HTMLButtonElement>("reenrol-erase"), $("reenrol-error"), () => call("forgetRevoked"));
  if (!done) return;
  stopCamera();
  dropPhoto();
  dropThreads();
  $("reenrol").remove();
  unlockOffered(true);
  clearEnrolForms();
  $("conn").textContent = "not enrolled";
  $("banner").textContent = "This phone's revoked Lightbox keys and data have been erased. Enrol it with the new code IT gave you.";
  $("banner").hidden = false;
  show("enrol");
}

/** The banner's sentence for an account IT holds gone (connected again, or the app locked: the
 * worker forgets it, and unlocking says it if it still holds). */
function clearHeld(): void {
  const said = $("banner").dataset["held"];
  if (said === undefined) return;
  delete $("banner").dataset["held"];
  // Only while it still says that: a revocation said since stays.
  if ($("banner").textContent !== said) return;
  $("banner").hidden = true;
  $("banner").textContent = "";
}

// A message the worker dropped because its sender no longer verifies (worker.ts onDeliver):
// one from a device the organisation revoked, or from a colleague it suspended, names its
// sender when known, whether it was urgent and when it reached the relay, so the reader can
// ask them what it said (docs/HAZARD_LOG.md HAZ-10), and in which consult (worker.ts names it:
// by its subject, else by the start of its id, as the CLI's line does).
function droppedSentence(data: Record<string, unknown>): string {
  const revoked = data["code"] === "certificate_revoked";
  const where = typeof data["consult"] === "string" ? ` in ${data["consult"]}` : "";
  if (!revoked && data["code"] !== "user_suspended") {
    return `A message${where} was not shown: its sender's certificate does not verify. Tell IT if this happens again.`;
  }
  const what = `${data["urgent"] ? "An urgent message" : "A message"}${where}`;
  const at = typeof data["received_at"] === "number" ? ` sent ${when(data["received_at"])}` : "";
  const sender = typeof data["sender"] === "string" ? data["sender"] : null;
  if (revoked) {
    return sender
      ? `${what} from ${sender},${at} from a device your organisation revoked, was not shown: ask them what it said.`
      : `${what}${at} from a device your organisation revoked was not shown.`;
  }
  return sender
    ? `${what} from ${sender},${at}, was not shown: your organisation has suspended their account.`
    : `${what}${at} was not shown: your organisation has suspended its sender's account.`;
}

// A status line that said a consult, reply or photo was kept ("Not sent yet: ... sent by
// itself") names it (data-kept, its message id) until the outbox settles it: then the line says
// it was sent (data-sent), or why it was not, instead of a "not sent yet" that is no longer true.
type StatusLine = "send-status" | "photo-status" | "thread-status";
const SENT_LINE = "Sent: the relay stored it.";
const PHOTO_SENT_LINE = "Photo sent: the relay stored it.";
const REPLY_SENT_LINE = "Reply sent: the relay stored it.";

/** How long a transient line stays (USER_GUIDE "Interns: the phone app"): that a consult,
 * reply or photo was sent, and the notice of a new message (which also goes once its consult
 * is opened). A refusal, a consult kept to send later, and a warning stay until settled. */
const SENT_SHOWN_MS = 2 * 60_000;
const NOTICE_SHOWN_MS = 5 * 60_000;
const fading = new Map<string, ReturnType<typeof setTimeout>>();

/** `el`'s line emptied after `ms`, if it still says what it says now. */
function fadeLater(el: HTMLElement, ms: number): void {
  clearTimeout(fading.get(el.id));
  const said = el.textContent;
  fading.set(el.id, setTimeout(() => {
    fading.delete(el.id);
    if (el.textContent === said && !el.dataset["kept"]) el.textContent = "";
  }, ms));
}

function sayKept(id: StatusLine, text: string, messageId: string | null, sent = id === "photo-status" ? PHOTO_SENT_LINE : SENT_LINE): void {
  $(id).textContent = text;
  if (!messageId && [SENT_LINE, PHOTO_SENT_LINE, REPLY_SENT_LINE].includes(text)) fadeLater($(id), SENT_SHOWN_MS);
  if (messageId) {
    $(id).dataset["kept"] = messageId;
    $(id).dataset["sent"] = sent;
  } else {
    delete $(id).dataset["kept"];
    delete $(id).dataset["sent"];
  }
}

function settleKept(messageId: string, refusal: string | null): void {
  for (const id of ["send-status", "photo-status", "thread-status"] as const) {
    if ($(id).dataset["kept"] !== messageId) continue;
    sayKept(id, refusal ?? $(id).dataset["sent"] ?? SENT_LINE, null);
  }
}

async function busy<T>(button: HTMLButtonElement, errorEl: HTMLElement, fn: () => Promise<T>): Promise<T | undefined> {
  button.disabled = true;
  errorEl.textContent = "";
  delete errorEl.dataset["connection"]; // what it says next is this action's outcome
  delete errorEl.dataset["kept"];
  try {
    return await fn();
  } catch (err) {
    errorEl.textContent = err instanceof AppError ? err.message : "Something went wrong on the phone.";
    return undefined;
  } finally {
    button.disabled = false;
  }
}

// --- enrolment -----------------------------------------------------------------------------------

let handoutServer: string | undefined;
/** The organisation of the enrolment under way signs in with its identity provider. */
let enrolSso = false;

/** `lightbox://enrol?server=<url>&code=<code>` (clients/admin/handout.py enrol_uri), or null. */
function parseHandout(text: string): { server: string; code: string } | null {
  let url: URL;
  try {
    url = new URL(text);
  } catch {
    return null;
  }
  if (url.protocol !== "lightbox:" || (url.hostname !== "enrol" && url.pathname.replace(/^\/+/, "") !== "enrol")) return null;
  const server = url.searchParams.get("server");
  const code = url.searchParams.get("code");
  return server && code ? { server, code } : null;
}

async function enrolNext(): Promise<void> {
  const info = await busy($<HTMLButtonElement>("enrol-next"), $("enrol-error"), () =>
    call<{ display_name: string; login: string; org_id: string; fingerprint: string; sso: boolean }>("enrolStart", { code: $<HTMLInputElement>("code").value, server: handoutServer }),
  );
  if (!info) return;
  enrolSso = info.sso;
  showEnrolSso();
  note("pass-why").textContent = "";
  $("who").textContent = info.display_name;
  $("who-login").textContent = info.login;
  $("who-org").textContent = info.org_id;
  $("fingerprint").textContent = info.fingerprint;
  $("confirm-error").textContent = "";
  show("confirm");
}

/** The passphrase screen for the enrolment under way: a relay password, or the IdP's sign-in. */
function showEnrolSso(): void {
  $("pass-sso").hidden = !enrolSso;
  $("pass-password").hidden = enrolSso;
  $("enrol-finish").textContent = enrolSso ? "Sign in with your hospital account and enrol" : "Enrol";
}

/**
 * Why the app now signs in at the hospital's IdP (docs/SECURITY.md "No password beside the
 * IdP"): `pass-why` on the passphrase screen, under its explanation; `signin-why` in the
 * sign-in panel, first. A notice line, which takes no space while empty.
 */
function note(id: "pass-why" | "signin-why"): HTMLElement {
  const found = document.getElementById(id);
  if (found) return found;
  const p = Object.assign(document.createElement("p"), { id, className: "notice" });
  p.setAttribute("role", "status");
  if (id === "pass-why") $("pass-sso").after(p);
  else $("signin-panel").prepend(p);
  return p;
}

let scanning: MediaStream | null = null;

async function startScan(): Promise<void> {
  $("enrol-error").textContent = "";
  try {
    scanning = await navigator.mediaDevices.getUserMedia({ video: { facingMode: "environment" }, audio: false });
  } catch {
    $("enrol-error").textContent = "The camera is not available to Lightbox: type the code from the handout instead.";
    return;
  }
  const video = $<HTMLVideoElement>("camera");
  video.srcObject = scanning;
  $("scanner").hidden = false;
  await video.play().catch(() => undefined);
  const canvas = document.createElement("canvas");
  const ctx = canvas.getContext("2d", { willReadFrequently: true })!;
  const tick = (): void => {
    if (!scanning) return;
    if (video.videoWidth) {
      canvas.width = video.videoWidth;
      canvas.height = video.videoHeight;
      ctx.drawImage(video, 0, 0);
      const found = jsQR(ctx.getImageData(0, 0, canvas.width, canvas.height).data, canvas.width, canvas.height);
      if (found) {
        const handout = parseHandout(found.data);
        if (!handout) {
          $("scan-status").textContent = "This QR code is not a Lightbox enrolment handout.";
        } else {
          stopScan();
          handoutServer = handout.server;
          $<HTMLInputElement>("code").value = handout.code;
          void enrolNext();
          return;
        }
      }
    }
    requestAnimationFrame(tick);
  };
  requestAnimationFrame(tick);
}

function stopScan(): void {
  scanning?.getTracks().forEach((t) => t.stop());
  scanning = null;
  $<HTMLVideoElement>("camera").srcObject = null;
  $("scanner").hidden = true;
}

async function enrolFinish(): Promise<void> {
  const a = $<HTMLInputElement>("new-pass").value;
  const b = $<HTMLInputElement>("new-pass2").value;
  if (a !== b) {
    $("pass-error").textContent = "The two passphrases differ: type the same one twice.";
    return;
  }
  // The enrolled phone is unlocked in this tab from now on (holdTab).
  if (!(await holdTab("ifAvailable"))) {
    showElsewhere();
    return;
  }
  let signsOn: string | null = null;
  const me = enrolSso
    ? await viaIdp($<HTMLButtonElement>("enrol-finish"), $("pass-error"), { passphrase: a }, (sso) => call<Me>("enrolFinish", { passphrase: a, sso }))
    : await busy($<HTMLButtonElement>("enrol-finish"), $("pass-error"), () => call<Me>("enrolFinish", { passphrase: a }).catch((err: unknown) => {
      if (!(err instanceof AppError && err.code === "sso_required")) throw err;
      signsOn = err.message;
      return undefined;
    }));
  if (signsOn !== null) {
    // The organisation turned single sign-on on since the code was read (docs/SECURITY.md "No
    // password beside the IdP"): the same screen, code and passphrase enrol at the IdP.
    enrolSso = true;
    showEnrolSso();
    note("pass-why").textContent = signsOn;
    return;
  }
  if (!me) return;
  clearEnrolForms();
  // Enrolled (again): what the banner said of the phone's earlier keys no longer holds.
  $("banner").hidden = true;
  await home(me);
}

// --- single sign-on (sso.ts, sso-callback.ts) -------------------------------------------------------

interface Me {
  display_name: string;
  login: string;
  signin?: boolean;
  /** The relay refused this phone's password: its organisation signs on now (needSignIn). */
  signon?: boolean;
  /** The relay refused this phone as revoked: nothing is shown, the worker only listens for a
   * wipe order (the "revoked" and "wiped" events say what happened). */
  revoked?: boolean;
}

let ssoChannel: BroadcastChannel | null = null;

/** Sign in at the organisation's IdP in a window of its own (this page, and the worker with
 * the enrolment or the open vault, stay as they are), then `finish` with the IdP's answer,
 * which sso-callback.html passes back over a same-origin BroadcastChannel; the worker checks
 * its `state`. A new attempt replaces one still waiting (the user closed the window). */
async function viaIdp<T>(button: HTMLButtonElement, errorEl: HTMLElement, start: { passphrase?: string }, finish: (answer: unknown) => Promise<T>): Promise<T | undefined> {
  errorEl.textContent = "";
  // Opened at once, in the tap's user activation, and sent to the IdP when the request is made.
  const popup = window.open("about:blank", "lightbox-sso");
  if (!popup) {
    errorEl.textContent = "The sign-in window was blocked: allow pop-up windows for Lightbox, then try again.";
    return undefined;
  }
  ssoChannel?.close();
  const channel = new BroadcastChannel("lightbox-sso");
  ssoChannel = channel;
  const answer = new Promise<unknown>((resolve) => {
    channel.onmessage = (m: MessageEvent) => resolve(m.data);
  });
  $("sso-status").textContent = "Sign in with your hospital account in the window that opened…";
  try {
    const started = await busy(button, errorEl, () => call<{ url: string }>("ssoStart", { origin: location.origin, ...start }));
    if (!started) {
      popup.close();
      return undefined;
    }
    popup.location.href = started.url;
    const got = await answer;
    return await busy(button, errorEl, () => finish(got));
  } finally {
    channel.close();
    if (ssoChannel === channel) ssoChannel = null;
    $("sso-status").textContent = "";
  }
}

/** Offer the sign-in at the IdP; `signon`: this phone signed in with a password until the
 * relay refused it, its organisation signing on now (worker.ts signOnFromNowOn), said first. */
function needSignIn(signon = false): void {
  $("conn").textContent = "signed out";
  if (signon) note("signin-why").textContent = "Your hospital now signs you in with your hospital account instead of a Lightbox password; your passphrase still unlocks Lightbox on this phone.";
  $("signin-panel").hidden = false;
}

async function signIn(): Promise<void> {
  const done = await viaIdp($<HTMLButtonElement>("sso-signin"), $("signin-error"), {}, async (sso) => {
    await call("ssoLogin", { sso });
    return true;
  });
  if (!done) return;
  $("signin-panel").hidden = true;
  note("signin-why").textContent = "";
}

// --- unlock, lock, auto-lock ------------------------------------------------------------------------

async function unlock(): Promise<void> {
  const field = $<HTMLInputElement>("passphrase");
  // One tab at a time (holdTab): another one unlocked meanwhile is said, and this one stays
  // locked; one that took over from this tab, which says so, gives way (the other one locks).
  if (!(await holdTab("ifAvailable"))) {
    if (!lostToOther) {
      showElsewhere();
      return;
    }
    await takeOver();
  }
  const me = await busy($<HTMLButtonElement>("unlock"), $("unlock-error"), () => call<Me>("unlock", { passphrase: field.value }));
  if (!me) {
    letGo?.(); // still locked: another tab may unlock
    return;
  }
  field.value = "";
  $("unlock-why").textContent = "";
  if (me.revoked) return;
  await home(me);
}

async function lock(): Promise<void> {
  stopCamera();
  dropPhoto();
  ssoChannel?.close(); // a sign-in still waiting is abandoned (the worker forgets its request)
  ssoChannel = null;
  $("sso-status").textContent = "";
  // An outcome already said ("Sent: the relay stored it.") is not said again to whoever
  // unlocks next; a line about a consult still kept stays until it is sent (settleKept).
  for (const id of ["send-status", "photo-status", "thread-status"] as const) {
    if (!$(id).dataset["kept"]) sayKept(id, "", null);
  }
  dropThreads();
  clearHeld();
  await call("lock");
  $("conn").textContent = "locked";
  show("unlock");
  // The keys forgotten: another tab may unlock now (holdTab).
  letGo?.();
}

// --- one tab at a time ----------------------------------------------------------------------------

/*
 * Tabs and windows of the app on this origin share one vault, one device key and one session
 * (docs/SECURITY.md "On the phone"): two unlocked at once would each hold a connection as this
 * device, and the relay closes the older one (4003 `session_replaced`, docs/PROTOCOL.md §3),
 * so each reconnects and replaces the other every second or two, each refreshing its tokens.
 * So only one tab holds the keys at a time: the one holding the Web Lock TAB_LOCK (W3C Web
 * Locks), from unlock (or enrolment) until it locks. Another tab says so and offers to take
 * over: it asks the holder, over a BroadcastChannel, to lock (its worker forgets its keys and
 * closes its connection) and let go; if the holder does not answer (a frozen tab), it takes
 * the lock anyway (`steal`), and the holder locks as soon as it runs again.
 */
const TAB_LOCK = "lightbox-phone-app";
const TAKE_OVER_WAIT_MS = 5000;
const TAKEN_SENTENCE = "Lightbox was opened in another tab or window, so it locked here and forgot its keys. Use it there, or unlock to use it here (the other one will lock).";
const tabs = typeof BroadcastChannel === "function" ? new BroadcastChannel("lightbox-phone-tabs") : null;
// Lets go of TAB_LOCK, while this tab holds it.
let letGo: (() => void) | null = null;
// This tab locked because another one took over (its unlock screen says so): unlocking here
// takes over in turn.
let lostToOther = false;
// Waits, on the "open elsewhere" screen, for the holder to let go by itself (it locked, or
// closed).
let waitingFree: AbortController | null = null;

/** Hold TAB_LOCK: at once if no other tab does (`ifAvailable`), once the holder lets go
 * (`wait`, until `signal`), or taken from it (`steal`). Whether this tab holds it. A browser
 * without Web Locks: one tab as before. */
function holdTab(mode: "ifAvailable" | "wait" | "steal", signal?: AbortSignal): Promise<boolean> {
  if (letGo || !("locks" in navigator)) return Promise.resolve(true);
  const options: LockOptions = mode === "ifAvailable" ? { ifAvailable: true } : mode === "steal" ? { steal: true } : { signal };
  return new Promise<boolean>((granted, failed) => {
    navigator.locks.request(TAB_LOCK, options, (held) => {
      if (!held) {
        granted(false);
        return undefined;
      }
      return new Promise<void>((release) => {
        letGo = () => {
          letGo = null;
          release();
        };
        granted(true);
        tabs?.postMessage({ t: "active" });
      });
    }).catch((err: unknown) => {
      // Taken from this tab without its answer (steal): it locks now.
      if (letGo && err instanceof DOMException && err.name === "AbortError") {
        letGo = null;
        void takenOver();
        return;
      }
      failed(err);
    });
  });
}

/** Whether another tab holds TAB_LOCK (is unlocked) now. */
async function heldElsewhere(): Promise<boolean> {
  if (letGo || !("locks" in navigator)) return false;
  const state = await navigator.locks.query();
  return (state.held ?? []).some((l) => l.name === TAB_LOCK);
}

/** Another tab took over: this one locks, says why, and lets go. */
async function takenOver(): Promise<void> {
  lostToOther = true;
  await lock();
  $("unlock-why").textContent = TAKEN_SENTENCE;
}

/** The relay replaced this tab's connection by a newer one of this device (worker.ts
 * `connect`): another tab took over, and this one locks, as when asked (the take-over took the
 * lock from it while it could not answer: its page was stuck or frozen). A tab that still
 * holds TAB_LOCK (or a browser without Web Locks) connects again. Decided a second later, so
 * that a lock taken from this tab meanwhile is known here by then (holdTab's AbortError). */
async function replaced(): Promise<void> {
  await new Promise((done) => setTimeout(done, 1000));
  if (!UNLOCKED.includes(document.body.dataset["screen"] ?? "")) return; // locked meanwhile
  if ("locks" in navigator && !letGo) {
    await takenOver();
    return;
  }
  await call("reconnect");
}

/** The "open elsewhere" screen; back to the unlock screen by itself once the holder lets go. */
function showElsewhere(): void {
  $("conn").textContent = "open elsewhere";
  show("elsewhere");
  if (!("locks" in navigator) || waitingFree) return;
  const waiting = new AbortController();
  waitingFree = waiting;
  navigator.locks.request(TAB_LOCK, { signal: waiting.signal }, () => undefined).then(() => {
    if (waitingFree !== waiting) return;
    waitingFree = null;
    if (document.body.dataset["screen"] !== "elsewhere") return;
    $("conn").textContent = "locked";
    show("unlock");
  }, () => undefined);
}

/** Use the app in this tab: the tab that holds it locks (asked, else after TAKE_OVER_WAIT_MS
 * taken from it), and this one shows the unlock screen, holding TAB_LOCK. */
async function takeOver(): Promise<void> {
  waitingFree?.abort();
  waitingFree = null;
  tabs?.postMessage({ t: "take-over" });
  const timer = new AbortController();
  const stop = setTimeout(() => timer.abort(), TAKE_OVER_WAIT_MS);
  const asked = await holdTab("wait", timer.signal).catch(() => false);
  clearTimeout(stop);
  if (!asked) await holdTab("steal");
  lostToOther = false;
  $("unlock-why").textContent = "";
  $("unlock-error").textContent = "";
  $("conn").textContent = "locked";
  show("unlock");
}

tabs?.addEventListener("message", (m: MessageEvent) => {
  const t = (m.data as { t?: unknown } | null)?.t;
  // Asked to let go: lock (the keys forgotten, the connection closed), then let go.
  if (t === "take-over" && letGo) void takenOver();
  // Another tab unlocked: this one's unlock screen says so instead (unless it already says
  // that another tab took over from it).
  if (t === "active" && !letGo && !lostToOther && document.body.dataset["screen"] === "unlock") showElsewhere();
});

let idle: ReturnType<typeof setTimeout> | null = null;
let autolockMs = 120_000;

const UNLOCKED = ["home", "thread", "capture", "review", "consent"];

function activity(): void {
  if (!UNLOCKED.includes(document.body.dataset["screen"] ?? "")) return;
  if (idle) clearTimeout(idle);
  idle = setTimeout(() => void lock(), autolockMs);
}

// --- home: compose and threads ----------------------------------------------------------------------

/** The header's word for the connection before the worker has said anything of it (its
 * events, handled before the answer that shows the home screen, are left as they are). */
const NOT_YET_CONNECTED = ["starting", "not enrolled", "locked"];

async function home(me: Me): Promise<void> {
  // Whose phone this is, never "signed in": the relay session may not be open (signed out,
  // offline), and the header says which.
  $("me").textContent = `This phone is ${me.display_name}'s (${me.login}).`;
  if (NOT_YET_CONNECTED.includes($("conn").textContent ?? "")) $("conn").textContent = "connecting…";
  $("signin-panel").hidden = true;
  note("signin-why").textContent = "";
  show("home");
  if (me.signin) needSignIn(me.signon === true);
  activity();
  await renderThreads();
}

/** A thread's priority in the words of the compose form's choice. */
const PRIORITY: Record<string, string> = { urgent: "Urgent", routine: "Routine" };

/**
 * The object URLs of the photos shown in the threads: one per photo, reused by every render of
 * the list, and revoked once the photo is no longer shown (erased on the relay's order,
 * withdrawn) or the app locks. A decrypted photo then stays in the page no longer than on the
 * screen, and a shift's renders do not pile up copies of it in memory.
 */
const photoUrls = new Map<string, string>();

function showPhoto(img: HTMLImageElement, aid: string): void {
  const known = photoUrls.get(aid);
  if (known) {
    img.src = known;
    return;
  }
  void call<Uint8Array | null>("image", { attachment_id: aid }).then((bytes) => {
    // A later render (or the lock) replaced this element meanwhile: it shows what is current.
    if (!bytes || !img.isConnected) return;
    let url = photoUrls.get(aid);
    if (!url) {
      url = URL.createObjectURL(new Blob([bytes as BlobPart], { type: "image/jpeg" }));
      photoUrls.set(aid, url);
    }
    img.src = url;
  });
}

/** Revoke the photos' object URLs, but those of the photos in `shown`. */
function forgetPhotos(shown: Set<string> = new Set()): void {
  for (const [aid, url] of photoUrls) {
    if (shown.has(aid)) continue;
    URL.revokeObjectURL(url);
    photoUrls.delete(aid);
  }
}

/**
 * renderThreads's calls, counted: only the latest one's answer is drawn. Every event asks for
 * the list again without waiting for the one asked for before, and the worker answers them
 * concurrently: an earlier request answered after a later one is an older list, which would
 * take a reply just shown off the screen (the desktop page's inbox does the same).
 */
let listing = 0;

/** The consults off the page (the app locks, the phone is wiped), and any list still on its
 * way from the worker is for a page no longer shown. */
function dropThreads(): void {
  listing++;
  $("threads").replaceChildren();
  closeThread(false);
  $<HTMLTextAreaElement>("reply-text").value = ""; // a reply being written is of a consult too
  sayKept("thread-status", "", null);
  removing = null;
  stopAgain("reply", false);
  stopAgain("consult", false);
  forgetPhotos();
}

async function renderThreads(): Promise<ThreadRecord[] | null> {
  const ticket = ++listing;
  let list: ThreadRecord[];
  try {
    list = await call<ThreadRecord[]>("threads");
  } catch {
    return null;
  }
  if (ticket !== listing) return null; // a later call's answer is the newer list
  $("no-threads").hidden = list.length > 0;
  redraw($("threads"),
    list.map((t) => {
      const li = document.createElement("li");
      li.className = "thread";
      li.dataset["thread"] = t.thread_id;
      const h = document.createElement("h3");
      h.id = `thread-h-${t.thread_id}`;
      h.textContent = `${consultTitle(t)}${t.role ? ` · ${t.role}` : ""} · ${PRIORITY[t.priority] ?? t.priority}`;
      li.append(h, ...listed(t).map((m) => messageElement(m, t)));
      if (!t.record && onTheRelay(t)) {
        // The consult on a screen of its own, to answer it or add a photo to it (the lateral
        // view the specialist asked for) in the same thread. One only kept or refused here is
        // not on the relay: nothing to answer; what it offers is under its message (it goes by
        // itself, or *Send the photo again*).
        const open = document.createElement("button");
        open.type = "button";
        open.className = "open";
        open.textContent = "Reply or add a photo";
        open.setAttribute("aria-describedby", h.id);
        open.addEventListener("click", () => void showThread(t.thread_id));
        li.append(open);
      }
      return li;
    }),
    (el) => el.dataset["thread"],
    1,
  );
  drawOpenThread(list);
  forgetPhotos(new Set(list.flatMap((t) => t.messages.filter((m) => m.image_state === "held" && m.attachment_id).map((m) => m.attachment_id!))));
  // What is on the screen of a visible app has been seen (every consult on the home screen,
  // the open one on its own): signed `read` receipts go to the senders (the worker signs
  // them; PROTOCOL §16.6).
  const screen = document.body.dataset["screen"];
  if ((screen === "home" || screen === "thread") && document.visibilityState === "visible") {
    for (const t of list) {
      if (screen === "thread" && t.thread_id !== openThread) continue;
      if (t.messages.some((m) => !m.mine && m.read === false)) void call("markRead", { thread_id: t.thread_id }).catch(() => undefined);
    }
  }
  return list;
}

/** A `no_shift` step (PROTOCOL §16.4): nobody is on call for the consult's role, and when the
 * next shift, which will be handed it, starts; the same words as `lightbox watch` and the desktop. */
function noShift(s: { step: number; next_shift_at?: number | null }, steps: { kind: string; step: number }[]): string {
  const next = s.next_shift_at == null
    ? "no later shift is on the rota yet: it goes to the next shift IT adds"
    : `it goes to the next shift when that starts at ${when(s.next_shift_at)}`;
  // A reminder of the wait when the step before said the same; the first of a wait (a consult
  // sent in a gap, or a handover deferred after other steps) says it anew.
  const still = steps.some((x) => x.kind === "no_shift" && x.step === s.step - 1);
  return still ? `Still no one on call for the role: reminded; ${next}` : `No one is on call for the role now; ${next}`;
}

/** Under a consult nobody is on call for: what to do if it cannot wait. */
const GAP_ADVICE = "If it cannot wait, phone or page the department.";

/** To the sender, a person who never received the photo: the same words as `lightbox watch`
 * and the desktop (clients/sdk/events.py NotReceivedEvent.sentence). */
function notReceivedLine(n: { name: string; consult: string; reason: string; record_ref: string | null }): string {
  const where = n.reason === "filed"
    ? `it was filed to the patient's record${n.record_ref ? ` (${n.record_ref})` : ""}`
    : "it was NOT filed to the patient's record";
  return `${n.name} never received the image of ${n.consult} on any device before its copies expired: ${where}. Phone or page them.`;
}

/** One message of consult `t`, with what is known of it: its receipts, why it is not sent
 * (and, for one of ours, what can be done about it), its escalation steps, withdrawal,
 * filing, and its photo. */
function messageElement(m: MessageView, t: ThreadRecord): HTMLElement {
  const div = document.createElement("div");
  div.className = `message ${m.mine ? "mine" : "theirs"}`;
  div.dataset["message"] = m.message_id;
  const meta = document.createElement("div");
  meta.className = "meta";
  const h = m.handover;
  const from = h && !h.confirmed ? `${m.from_name} (as handed over by ${h.resealed_by})` : m.from_name;
  const at = m.written_at ? `written ${when(m.written_at)}, sent ${when(m.sent_at)}` : when(m.sent_at);
  meta.textContent = `${m.mine ? "You" : from} · ${at}${m.mine ? ` · ${m.status === "not_sent" ? "not sent" : m.status}` : ""}`;
  const best = ["acknowledged", "read", "delivered"].map((k) => (m.receipts ?? []).filter((r) => r.kind === k)).find((rs) => rs.length);
  if (m.mine && best) meta.textContent += ` · ${best[0]!.kind} by ${best.map((r) => r.name).join(", ")}`;
  const text = document.createElement("div");
  text.className = "text";
  text.textContent = m.text;
  div.append(meta);
  if (h) {
    // A consult handed over at a shift change (PROTOCOL.md §16.4): written by its author at
    // the time above, sealed again for this shift by another device.
    const line = document.createElement("div");
    line.className = h.contradicted ? "meta handover warning" : "meta handover";
    line.textContent = h.contradicted
      ? `Handed over at the shift change by ${h.resealed_by}'s device on ${when(h.resealed_at)}: ${h.misclaimed === false
        ? "its content does NOT match the original on this phone"
        : `the author and time it claims do NOT match the original on this phone${h.altered ? ", nor does its content" : ""}`}`
      : !h.confirmed
        ? `As handed over by ${h.resealed_by} at the shift change on ${when(h.resealed_at)}: the author and time are their device's word`
        : `Handed over at the shift change on ${when(h.resealed_at)}${h.by_author ? "" : ` (resealed by ${h.resealed_by}'s device)`}`;
    div.append(line);
  }
  // Other copies of this consult, handed over by other devices too: not listed, said here.
  const others = [...new Set(t.messages.filter((x) => x.copy_of === m.message_id).map((x) => x.handover?.resealed_by ?? x.from_name))];
  if (others.length) {
    const also = document.createElement("div");
    also.className = "meta handover";
    also.textContent = `Also handed over by ${others.map((n) => `${n}'s device`).join(" and ")}: the same consult, shown once`;
    div.append(also);
  }
  if (m.status === "not_sent") {
    // Under its date, above the text: seen first, however long the consult is.
    const line = document.createElement("div");
    line.className = "meta not-sent";
    line.textContent = m.status_note ?? "Not sent: the relay refused it.";
    div.append(line);
  } else if (m.status === "sending" && m.status_note) {
    // Kept on the phone until the relay can be reached: said where it stays shown.
    const line = document.createElement("div");
    line.className = "meta kept";
    line.textContent = m.status_note;
    div.append(line);
  }
  div.append(text);
  for (const n of m.not_received ?? []) {
    const line = document.createElement("div");
    line.className = "meta not-received warning";
    line.setAttribute("role", "alert");
    line.textContent = notReceivedLine(n);
    div.append(line);
  }
  const steps = m.escalation ?? [];
  for (const s of steps) {
    const line = document.createElement("div");
    line.className = "meta escalation";
    const who = s.level === 0 ? `${s.name} (on call)` : `${s.name} (backup ${s.level})`;
    line.textContent = `${when(s.at)} · ${s.kind === "no_shift" ? noShift(s, steps) : s.kind === "renotify" ? `No answer yet: reminded ${who}` : s.kind === "released" ? `No answer in time: passed to ${who}` : `Shift changed: handed over to ${who}`}`;
    // Nobody on call now (the latest step): a warning, with what to do if it cannot wait (the
    // advice of USER_GUIDE "Interns: sending a consult"); a gap that ended stays a plain line.
    if (s.kind === "no_shift" && s === steps[steps.length - 1]) {
      line.classList.add("warning");
      line.setAttribute("role", "alert");
      line.textContent += `. ${GAP_ADVICE}`;
    }
    div.append(line);
  }
  if (m.withdrawn_reason) {
    const line = document.createElement("div");
    line.className = "meta withdrawn";
    line.textContent = m.withdrawn_reason === "consent_revoked"
      ? `Withdrawn on ${when(m.withdrawn_at ?? 0)} before it was delivered: the patient withdrew consent.`
      : `Withdrawn on ${when(m.withdrawn_at ?? 0)} before it was delivered: the sender's access was revoked.`;
    div.append(line);
  }
  if (m.filed) {
    const filed = document.createElement("div");
    filed.className = "meta filed";
    filed.textContent = `Filed in the patient's record${m.filed.study_instance_uid ? ` (study ${m.filed.study_instance_uid})` : ""}` +
      (m.filed.expires_at && m.image_state === "held" ? `; this phone's copy is deleted at ${when(m.filed.expires_at)}.` : ".");
    div.append(filed);
  }
  if (m.attachment_id) {
    if (m.image_state === "held") {
      const img = document.createElement("img");
      img.alt = !m.mine ? `The photo from ${m.from_name}` : m.status === "sent" ? "The photo sent with this consult" : "The photo of this consult, not sent yet";
      img.dataset["attachment"] = m.attachment_id;
      const full = document.createElement("button");
      full.type = "button";
      full.className = "secondary full-screen";
      full.textContent = "Show the photo full screen";
      full.addEventListener("click", () => void img.requestFullscreen?.().catch(() => undefined));
      div.append(img, full);
      showPhoto(img, m.attachment_id);
    } else if (m.image_state === "fetching" || m.image_state === "failed" || m.image_state === "refused" || m.image_state === "withdrawn") {
      const note = document.createElement("div");
      note.className = `meta photo-${m.image_state}`;
      note.textContent = m.image_state === "fetching" ? "Downloading the photo…"
        : m.image_state === "withdrawn" ? "The patient's consent was withdrawn before the photo was downloaded: it is not shown, and it was never kept on this phone."
        : m.image_state === "failed" ? (m.image_note ?? "The photo could not be downloaded yet.")
        : `The photo is not shown: ${m.image_note ?? "it does not match its consent"}.`;
      div.append(note);
    } else {
      const gone = document.createElement("div");
      gone.className = "meta photo-gone";
      gone.textContent = m.withdrawn_at
        ? `The patient's consent was withdrawn on ${when(m.withdrawn_at)}: the photo was erased from this phone (confirmed).`
        : "Photo removed from this phone, as ordered by the relay (confirmed).";
      div.append(gone);
    }
  }
  if (m.status === "not_sent" && m.kept_photo) {
    // A photo kept while the relay could not be reached, then refused once it was back: still
    // on this phone, to send again from the consent screen (as after any refusal there).
    const again = document.createElement("button");
    again.type = "button";
    again.className = "secondary send-again";
    again.textContent = "Send the photo again";
    again.addEventListener("click", () => void sendKeptAgain(m.message_id));
    div.append(again);
  }
  if (m.mine && m.status === "not_sent") div.append(...unsentActions(m, t));
  return div;
}

// --- a message of ours the relay refused: edited and sent again, or removed ---------------------

const REMOVED = "The refused message was removed from this phone.";
const AGAIN_CONSULT = "Correct the consult below, then tap Send. Once it is sent, the copy the relay refused is removed from this phone.";
const AGAIN_REPLY = "Correct the reply below, then tap Send reply. Once it is sent, the copy the relay refused is removed from this phone.";

/** The not-sent message whose removal is being confirmed (its message id), drawn open by every
 * render of the list until the intern answers. */
let removing: string | null = null;

/** The refused message the compose form and the reply box hold again (*Edit and send again*):
 * sent with the new one, which the worker removes once the new one is on this phone. */
type Again = { thread_id: string; message_id: string };
let againConsult: Again | null = null;
let againReply: Again | null = null;

/** Under a not-sent message of ours, after its refusal line and its text: *Edit and send
 * again* for a written one (a photo has *Send the photo again*), and *Remove from this phone*,
 * which asks first, in the page as the app's other erasures do (never window.confirm). */
function unsentActions(m: MessageView, t: ThreadRecord): HTMLElement[] {
  const el = <K extends keyof HTMLElementTagNameMap>(tag: K, props: Partial<HTMLElementTagNameMap[K]>): HTMLElementTagNameMap[K] =>
    Object.assign(document.createElement(tag), props);
  const row = el("div", { className: "row unsent-actions" });
  if (!m.attachment_id && !t.record) {
    const edit = el("button", { type: "button", className: "secondary edit-again", textContent: "Edit and send again" });
    edit.addEventListener("click", () => void editAgain(t.thread_id, m.message_id));
    row.append(edit);
  }
  const remove = el("button", { type: "button", className: "secondary remove-unsent", textContent: "Remove from this phone" });
  remove.addEventListener("click", () => {
    removing = m.message_id;
    void renderThreads().then(() => focusIn(m.message_id, ".remove-yes"));
  });
  row.append(remove);
  if (removing !== m.message_id) return [row];
  remove.hidden = true;
  const ask = el("div", { className: "remove-confirm" });
  const yes = el("button", { type: "button", className: "primary remove-yes", textContent: "Remove it" });
  const no = el("button", { type: "button", className: "remove-no", textContent: "Keep it" });
  yes.addEventListener("click", () => void removeUnsent(t.thread_id, m, yes));
  no.addEventListener("click", () => {
    removing = null;
    void renderThreads().then(() => focusIn(m.message_id, ".remove-unsent"));
  });
  const buttons = el("div", { className: "row" });
  buttons.append(yes, no);
  ask.append(
    el("p", { textContent: `${m.kept_photo ? "Remove it and its photo from this phone?" : "Remove it from this phone?"} The relay refused it, so nobody received it. This cannot be undone.` }),
    buttons,
  );
  return [row, ask];
}

/** Focus a button of a message as drawn on the screen shown now (the list redraws it). */
function focusIn(messageId: string, selector: string): void {
  const screen = document.body.dataset["screen"] === "thread" ? "#thread-messages" : "#threads";
  document.querySelector<HTMLElement>(`${screen} [data-message="${CSS.escape(messageId)}"] ${selector}`)?.focus();
}

/** Where the outcome of an action on the list is said: the open consult's line, else the
 * list's notice. */
function listLine(): HTMLElement {
  return document.body.dataset["screen"] === "thread" ? $("thread-status") : $("notice");
}

async function removeUnsent(threadId: string, m: MessageView, button: HTMLButtonElement): Promise<void> {
  const messageId = m.message_id;
  const line = listLine();
  if (line.id === "thread-status") sayKept("thread-status", "", null);
  const done = await busy(button, line, () => call("removeUnsent", { thread_id: threadId, message_id: messageId }));
  removing = null;
  if (done) {
    // The line that said it was refused, when it was just sent, speaks of what is gone.
    for (const id of ["send-status", "thread-status"] as const) {
      if (!$(id).dataset["kept"] && $(id).textContent === m.status_note) sayKept(id, "", null);
    }
    line.textContent = REMOVED;
    // What the compose form or the reply box held to replace it has nothing left to replace.
    if (againConsult?.message_id === messageId) stopAgain("consult", false);
    if (againReply?.message_id === messageId) stopAgain("reply", false);
  }
  await renderThreads();
}

/** *Edit and send again*: the refused consult back in the compose form (role, priority,
 * subject, text), or a refused reply back in its consult's reply box, the refusal said first
 * above it; the refused copy stays until the new one is sent (or the intern cancels). */
async function editAgain(threadId: string, messageId: string): Promise<void> {
  let again: { reply: boolean; text: string; subject: string; role: string; priority: string; refusal: string | null };
  try {
    again = await call("unsentAgain", { thread_id: threadId, message_id: messageId });
  } catch (err) {
    listLine().textContent = err instanceof AppError ? err.message : "Something went wrong on the phone.";
    await renderThreads();
    return;
  }
  const refusal = again.refusal ?? "Not sent: the relay refused it.";
  if (again.reply) {
    await showThread(threadId);
    if (openThread !== threadId) return;
    againReply = { thread_id: threadId, message_id: messageId };
    sayKept("thread-status", "", null);
    $<HTMLTextAreaElement>("reply-text").value = again.text;
    sayAgain("reply", refusal);
    $("reply-text").focus();
    return;
  }
  closeThread();
  againConsult = { thread_id: threadId, message_id: messageId };
  sayKept("send-status", "", null);
  $<HTMLInputElement>("role").value = again.role;
  $<HTMLSelectElement>("priority").value = again.priority === "urgent" ? "urgent" : "routine";
  $<HTMLInputElement>("subject").value = again.subject;
  $<HTMLTextAreaElement>("text").value = again.text;
  sayAgain("consult", refusal);
  $("compose").scrollIntoView({ block: "start" });
  $("text").focus({ preventScroll: true });
}

/** The panel over the compose form or the reply box: the refusal, then what to do. */
function sayAgain(where: "consult" | "reply", refusal: string): void {
  const why = Object.assign(document.createElement("p"), { className: "not-sent", textContent: refusal });
  const what = Object.assign(document.createElement("p"), { textContent: where === "consult" ? AGAIN_CONSULT : AGAIN_REPLY });
  $(`again-${where}-note`).replaceChildren(why, what);
  $(`again-${where}`).hidden = false;
}

/** The compose form or the reply box no longer replaces a refused copy (`clear`: what it held
 * again is emptied too, as *Cancel* does). */
function stopAgain(where: "consult" | "reply", clear: boolean): void {
  if (where === "consult") againConsult = null;
  else againReply = null;
  $(`again-${where}`).hidden = true;
  $(`again-${where}-note`).replaceChildren();
  if (!clear) return;
  if (where === "consult") {
    $<HTMLTextAreaElement>("text").value = "";
    $<HTMLInputElement>("subject").value = "";
  } else {
    $<HTMLTextAreaElement>("reply-text").value = "";
  }
}

/** After a send that replaced a refused copy: once that copy is gone (the worker removed it),
 * or the send failed with the copy still there, the panel says what now holds. */
function settleAgain(where: "consult" | "reply", list: ThreadRecord[] | null, sent: boolean): void {
  const again = where === "consult" ? againConsult : againReply;
  if (!again || !list) return;
  const still = list.some((t) => t.messages.some((m) => m.message_id === again.message_id && m.status === "not_sent"));
  if (sent || !still) stopAgain(where, false);
}

// --- one consult on its own screen: reply, add a photo -------------------------------------------

/** The consult shown on the thread screen (null: none). */
let openThread: string | null = null;

/** A consult's name: its subject, else the words of the CLI and the desktop
 * (clients/clinician/reading.py, clients/desktop/app.py NO_SUBJECT). */
const NO_SUBJECT = "(no subject yet)";
const consultTitle = (t: ThreadRecord): string => t.subject ?? NO_SUBJECT;

/** The relay holds a message of the consult (one of ours it stored, or one it delivered). */
const onTheRelay = (t: ThreadRecord): boolean => t.messages.some((m) => m.status === "sent" || m.status === "received");

async function showThread(threadId: string): Promise<void> {
  if (openThread !== threadId) {
    // Another consult: what was written or said for the previous one is not carried over.
    $<HTMLTextAreaElement>("reply-text").value = "";
    sayKept("thread-status", "", null);
    stopAgain("reply", false);
  }
  openThread = threadId;
  // Its new message is seen now: the notice of it goes.
  if ($("notice").dataset["thread"] === threadId && $("notice").textContent?.startsWith("New message from ")) $("notice").textContent = "";
  // Who is in it, asked of the relay now, while it can be: a photo added to it later where the
  // relay cannot be reached is consented for them (worker.ts audience).
  void call("audience", { thread_id: threadId }).catch(() => undefined);
  await renderThreads();
  if (openThread === threadId) show("thread");
}

/** The open consult drawn from the list just read; gone from the phone (erased, or its only
 * photo refused), the list is shown instead. */
function drawOpenThread(list: ThreadRecord[]): void {
  if (!openThread) return;
  const t = list.find((x) => x.thread_id === openThread);
  if (!t) {
    closeThread(document.body.dataset["screen"] === "thread");
    return;
  }
  $("thread-title").textContent = consultTitle(t);
  $("thread-about").textContent = [t.role ? `To the on-call team of ${t.role}` : null, PRIORITY[t.priority] ?? t.priority].filter((x) => x).join(" · ");
  redraw($("thread-messages"), listed(t).map((m) => messageElement(m, t)), (el) => el.dataset["message"]);
}

/**
 * Put `wanted` in `parent`, in order, keeping every child already there that `wanted` draws the
 * same (the same `key`, and `isEqualNode`: the same elements, attributes and text). Every event
 * (a receipt, a message in another consult, a photo downloaded) draws the list again; when that
 * replaced every element, a tap whose finger came down on a button before the redraw and up
 * after it was lost (the browser sends the click only to the element the touch began on, and it
 * was gone), and so was the focus. Kept elements keep their listeners, which refer to what they
 * show: their markup is the same, so is what they act on.
 *
 * With `depth` 1, a child of the same key that changed inside (a consult whose photo finished
 * downloading, or which a receipt reached) is kept too, and its own children are put in it the
 * same way, each kept when drawn the same: the consult's *Reply or add a photo* button under a
 * finger stays the element it was while the message above it changes. Only the list's rows are
 * kept so, and they have no listeners of their own.
 */
function redraw(parent: HTMLElement, wanted: HTMLElement[], key: (el: HTMLElement) => string | undefined, depth = 0): void {
  const had = new Map<string, HTMLElement>();
  const children = Array.from(parent.children) as HTMLElement[];
  keysOf(children, key).forEach((k, i) => {
    if (k !== undefined) had.set(k, children[i]!);
  });
  const keys = keysOf(wanted, key);
  const next = wanted.map((el, i) => {
    const k = keys[i];
    const old = k === undefined ? undefined : had.get(k);
    if (!old) return el;
    had.delete(k!); // one element kept for one wanted, never twice
    if (old.isEqualNode(el)) return old;
    if (depth > 0 && onlyElements(old) && onlyElements(el) && old.tagName === el.tagName) {
      for (const name of old.getAttributeNames()) if (!el.hasAttribute(name)) old.removeAttribute(name);
      for (const name of el.getAttributeNames()) old.setAttribute(name, el.getAttribute(name)!);
      redraw(old, Array.from(el.children) as HTMLElement[], partKey, depth - 1);
      return old;
    }
    return el;
  });
  // The ones not kept go first, so that a kept one never moves (taken out and put back).
  const kept = new Set(next);
  for (const child of Array.from(parent.children)) if (!kept.has(child as HTMLElement)) child.remove();
  next.forEach((el, i) => {
    if (parent.children[i] !== el) parent.insertBefore(el, parent.children[i] ?? null);
  });
}

/** `key` of each element, the second and later of one key told apart by their count. */
function keysOf(els: HTMLElement[], key: (el: HTMLElement) => string | undefined): (string | undefined)[] {
  const seen = new Map<string, number>();
  return els.map((el) => {
    const k = key(el);
    if (k === undefined) return undefined;
    const n = seen.get(k) ?? 0;
    seen.set(k, n + 1);
    return n ? `${k}#${n}` : k;
  });
}

/** A part of a row: a message by its id, anything else by its id, or else its tag and class. */
function partKey(el: HTMLElement): string {
  return el.dataset["message"] ?? (el.id || `${el.tagName}.${el.className}`);
}

/** No text of its own between its elements (a row; not a line of text). */
function onlyElements(el: HTMLElement): boolean {
  return Array.from(el.childNodes).every((n) => n.nodeType === Node.ELEMENT_NODE || !n.textContent?.trim());
}

/** A thread's messages as listed: a consult handed over in several copies once (PROTOCOL.md
 * §16.4; the others are `copy_of` the one shown). */
function listed(t: ThreadRecord): MessageView[] {
  return t.messages.filter((m) => !m.copy_of);
}

/** Back to the list of consults (`andShow`: the home screen shown, else left as it is). */
function closeThread(andShow = true): void {
  openThread = null;
  photoFor = null;
  $("thread-messages").replaceChildren();
  if (andShow) show("home");
}

async function sendReply(): Promise<void> {
  const threadId = openThread;
  if (!threadId) return;
  const box = $<HTMLTextAreaElement>("reply-text");
  const again = againReply?.thread_id === threadId ? againReply : null;
  const sent = await busy($<HTMLButtonElement>("reply-send"), $("thread-status"), () =>
    call<{ kept?: string; message_id?: string }>("sendReply", { thread_id: threadId, text: box.value, again }),
  );
  // Refused for good: said in the status line (busy), and the reply is shown as not sent.
  settleAgain("reply", await renderThreads(), sent !== undefined);
  if (!sent || openThread !== threadId) return;
  box.value = "";
  sayKept("thread-status", sent.kept ?? REPLY_SENT_LINE, sent.kept ? sent.message_id ?? null : null, REPLY_SENT_LINE);
}

async function send(): Promise<void> {
  const status = $("send-status");
  const sent = await busy($<HTMLButtonElement>("send"), status, () =>
    call("sendConsult", {
      role: $<HTMLInputElement>("role").value,
      priority: $<HTMLSelectElement>("priority").value,
      subject: $<HTMLInputElement>("subject").value,
      text: $<HTMLTextAreaElement>("text").value,
      again: againConsult,
    }),
  );
  // Refused for good: said in the status line (busy), and the consult is shown as not sent.
  settleAgain("consult", await renderThreads(), sent !== undefined);
  if (!sent) return;
  $<HTMLTextAreaElement>("text").value = "";
  $<HTMLInputElement>("subject").value = "";
  const kept = (sent as { kept?: string; message_id?: string });
  sayKept("send-status", kept.kept ?? SENT_LINE, kept.kept ? kept.message_id ?? null : null);
}

// --- capture, review, consent ----------------------------------------------------------------------

let camera: MediaStream | null = null;
let photo: { jpeg: Uint8Array; width: number; height: number; url: string; warnings: string[] } | null = null;

function stopCamera(): void {
  camera?.getTracks().forEach((t) => t.stop());
  camera = null;
  $<HTMLVideoElement>("viewfinder").srcObject = null;
}

function dropPhoto(): void {
  if (photo) {
    URL.revokeObjectURL(photo.url);
    photo.jpeg.fill(0);
  }
  photo = null;
  $<HTMLImageElement>("photo").removeAttribute("src");
  $<HTMLImageElement>("consent-photo").removeAttribute("src");
}

async function startCapture(): Promise<void> {
  $("capture-error").textContent = "";
  dropPhoto();
  show("capture");
  try {
    camera = await navigator.mediaDevices.getUserMedia({ video: { facingMode: "environment", width: { ideal: 1920 }, height: { ideal: 1440 } }, audio: false });
  } catch {
    $("capture-error").textContent = "The camera is not available to Lightbox: allow the camera for this app in the browser's settings, then try again.";
    return;
  }
  const video = $<HTMLVideoElement>("viewfinder");
  video.srcObject = camera;
  await video.play().catch(() => undefined);
}

/** The frame re-encoded from a canvas: a fresh JPEG of the pixels alone (no EXIF, no location). */
async function take(): Promise<void> {
  const video = $<HTMLVideoElement>("viewfinder");
  if (!camera || !video.videoWidth) {
    $("capture-error").textContent = "The camera has not started yet: wait a moment and try again.";
    return;
  }
  const canvas = document.createElement("canvas");
  canvas.width = video.videoWidth;
  canvas.height = video.videoHeight;
  const ctx = canvas.getContext("2d", { willReadFrequently: true })!;
  ctx.drawImage(video, 0, 0);
  const blob = await new Promise<Blob | null>((ok) => canvas.toBlob(ok, "image/jpeg", 0.92));
  stopCamera();
  if (!blob) {
    $("capture-error").textContent = "The photo could not be made: try again.";
    return;
  }
  const pixels = ctx.getImageData(0, 0, canvas.width, canvas.height);
  canvas.width = canvas.height = 0;
  const warnings = await call<{ issue: string; message: string }[]>("quality", { rgba: pixels.data, width: pixels.width, height: pixels.height });
  photo = { jpeg: new Uint8Array(await blob.arrayBuffer()), width: pixels.width, height: pixels.height, url: URL.createObjectURL(blob), warnings: warnings.map((w) => w.issue) };
  $<HTMLImageElement>("photo").src = photo.url;
  $("hints").replaceChildren(...warnings.map((w) => Object.assign(document.createElement("li"), { textContent: w.message })));
  $("hints-ok").hidden = warnings.length > 0;
  // The consent comes next: nothing is sent from this screen, so its button never says "send".
  $("use-photo").textContent = warnings.length ? "Use it anyway" : "Use this photo";
  show("review");
}

/** The consult the photo being taken goes into (from its screen's "Add a photo to this
 * consult"), or null: it starts a new consult to the compose form's role. */
let photoFor: { thread_id: string; title: string } | null = null;

/** Where the intern came from to take the photo, and goes back to. */
function backFromPhoto(): void {
  show(photoFor && openThread === photoFor.thread_id ? "thread" : "home");
}

/**
 * The consent screen's button says what tapping it does now, from the form as it stands: a
 * refusal is recorded (nothing is sent to anyone but the record); an agreement is recorded and
 * the photo sent. Once the relay registered the decision and then the sending failed (the
 * photo refused, say), the same form sends again with the decision already recorded (the
 * worker's recordedConsent), and the button says so; a changed decision or purpose is a new
 * decision to record.
 */
let recordedForm: string | null = null;

function consentForm(): string {
  return JSON.stringify([$<HTMLInputElement>("refused").checked, ["p-direct", "p-teaching"].map((id) => $<HTMLInputElement>(id).checked)]);
}

function labelConsentSend(): void {
  const refused = $<HTMLInputElement>("refused").checked;
  const again = recordedForm === consentForm();
  $("consent-send").textContent = refused ? (again ? "File the refusal again" : "Record the refusal")
    : again ? "Send the photo again" : "Record the decision and send";
}

/** Who the consent screen named, for a photo added to a consult: the consent names them, and
 * the worker refuses to sign one for anyone else (someone joined meanwhile). */
let shownAudience: { roles: string[]; users: string[] } | null = null;

/** "Who may see it", as the consent will name it: the compose form's on-call role for a new
 * consult; for a photo added to a consult, everyone in it as the relay has it now (its roles
 * and members, by name: the worker's `audience`), and the patient's record. */
function sayWhoMaySee(): void {
  const who = $("consent-who");
  const strong = (text: string, id?: string): HTMLElement => Object.assign(document.createElement("strong"), { textContent: text, ...(id ? { id } : {}) });
  if (!photoFor) {
    who.replaceChildren("Who may see it: the on-call team of ", strong($<HTMLInputElement>("role").value, "consent-role"), ", and the patient's record.");
    return;
  }
  const target = photoFor;
  shownAudience = null;
  who.replaceChildren("Who may see it: everyone in this consult, and the patient's record.");
  void call<{ roles: string[]; users: string[]; names: string[]; checked: boolean }>("audience", { thread_id: target.thread_id }).then((found) => {
    if (photoFor !== target) return; // another photo's screen meanwhile
    shownAudience = { roles: found.roles, users: found.users };
    const parts = [...found.roles.map((r) => `the on-call team of ${r}`), ...found.names];
    const named: (string | HTMLElement)[] = [];
    parts.forEach((p, i) => named.push(...(i ? [", "] : []), strong(p)));
    // Where the relay cannot be reached: who was in it when the phone last asked, said as such,
    // and what happens if that changed before the photo can go.
    who.replaceChildren(...(found.checked
      ? ["Who may see it: everyone in this consult (", ...named, "), and the patient's record."]
      : ["Who may see it: everyone in this consult when this phone last checked (", ...named, "), and the patient's record. ",
        "The relay cannot be reached to check it now: if someone has joined or left by the time the photo can be sent, it is not sent, and you are asked to record the patient's decision again."]));
  }).catch(() => undefined); // said when sending, which asks the relay again
}

/** A photo added to a consult whose patient this phone knows (a photo it sent or received in
 * it): the patient's fields hold that patient and cannot be changed, and say why; a consult
 * whose patient it does not know asks for them (docs/HAZARD_LOG.md HAZ-01). */
function fillKnownPatient(): void {
  const fields = [$<HTMLInputElement>("patient-name"), $<HTMLInputElement>("patient-id")];
  const known = $("patient-known");
  const editable = (): void => {
    for (const f of fields) {
      f.readOnly = false;
      f.removeAttribute("aria-describedby");
    }
    known.hidden = true;
    known.textContent = "";
  };
  editable();
  if (!photoFor) return;
  const target = photoFor;
  void call<{ patient: { name: string; id: string } | null }>("consultPatient", { thread_id: target.thread_id }).then(({ patient }) => {
    if (photoFor !== target || !patient) return;
    fields[0]!.value = patient.name;
    fields[1]!.value = patient.id;
    for (const f of fields) {
      f.readOnly = true;
      f.setAttribute("aria-describedby", "patient-known");
    }
    known.textContent = `This consult is about ${patient.name} (${patient.id}); for another patient, start a new consult.`;
    known.hidden = false;
  }).catch(() => undefined); // the worker checks the patient again when sending
}

function toConsent(): void {
  if (!photo) return;
  fillKnownPatient();
  $<HTMLImageElement>("consent-photo").src = photo.url;
  // Added to a consult: it has a subject already (its first message's), so none is asked.
  $("img-subject-row").hidden = photoFor !== null;
  $("img-text-label").textContent = photoFor ? "Message" : "Consult";
  $("consent-target").hidden = photoFor === null;
  $("consent-target").textContent = photoFor ? `This photo is added to the consult “${photoFor.title}”.` : "";
  sayWhoMaySee();
  $("consent-error").textContent = "";
  $("consent-status").textContent = "";
  $<HTMLProgressElement>("upload").value = 0;
  recordedForm = null; // a new photo: nothing recorded for it yet
  labelConsentSend();
  show("consent");
}

/** The consent screen emptied and the photo dropped: what was decided is used up, and the next
 * patient's form starts as the first did (agreed, direct care), never with this one's answer. */
function clearConsent(): void {
  keptAgain = null;
  for (const id of ["patient-name", "patient-id", "img-subject", "img-text"]) $<HTMLInputElement>(id).value = "";
  for (const id of ["st-permanence", "st-no-effect", "p-teaching"]) $<HTMLInputElement>(id).checked = false;
  for (const id of ["agreed", "p-direct"]) $<HTMLInputElement>(id).checked = true;
  recordedForm = null;
  labelConsentSend();
  dropPhoto();
}

/** The refused kept photo on the consent screen (its message id), sent again from there. */
let keptAgain: string | null = null;

/** *Send the photo again* under a kept photo the relay refused: the consent screen with the
 * photo and the form as recorded; the decision the relay registered is sent again as it is
 * (the button says so), a changed one is recorded anew. */
async function sendKeptAgain(messageId: string): Promise<void> {
  let kept: { jpeg: Uint8Array; width: number; height: number; warnings: string[]; role: string; priority: string; subject: string; text: string;
    record: { patient_name: string; patient_id: string }; purposes: string[]; recorded: boolean; thread_id: string | null; title: string | null };
  try {
    kept = await call("keptPhoto", { message_id: messageId });
  } catch (err) {
    sayKept("send-status", err instanceof AppError ? err.message : "Something went wrong on the phone.", null);
    return;
  }
  clearConsent();
  // A photo added to a consult goes back into it, shown on the consent screen as such, its
  // people asked of the relay again.
  const backTo = kept.thread_id && openThread === kept.thread_id ? kept.thread_id : null;
  closeThread(false);
  openThread = backTo;
  photoFor = kept.thread_id ? { thread_id: kept.thread_id, title: kept.title ?? NO_SUBJECT } : null;
  photo = { jpeg: kept.jpeg, width: kept.width, height: kept.height, warnings: kept.warnings, url: URL.createObjectURL(new Blob([kept.jpeg as BlobPart], { type: "image/jpeg" })) };
  $<HTMLInputElement>("role").value = kept.role;
  $<HTMLSelectElement>("priority").value = kept.priority;
  $<HTMLInputElement>("img-subject").value = kept.subject;
  $<HTMLTextAreaElement>("img-text").value = kept.text;
  $<HTMLInputElement>("patient-name").value = kept.record.patient_name;
  $<HTMLInputElement>("patient-id").value = kept.record.patient_id;
  $<HTMLInputElement>("p-direct").checked = kept.purposes.includes("direct_care");
  $<HTMLInputElement>("p-teaching").checked = kept.purposes.includes("teaching");
  toConsent();
  keptAgain = messageId;
  if (kept.recorded) {
    // The relay registered the decision, for which the patient was shown both statements; one
    // it did not register is recorded anew, with the patient, statements read again.
    for (const id of ["st-permanence", "st-no-effect"]) $<HTMLInputElement>(id).checked = true;
    recordedForm = consentForm();
  }
  labelConsentSend();
}

async function sendPhoto(): Promise<void> {
  if (!photo) return;
  const target = photoFor;
  const form = consentForm();
  delete $("consent-error").dataset["field"]; // what it says next is this attempt's
  const decision = $<HTMLInputElement>("refused").checked ? "refused" : "agreed";
  const purposes = [$<HTMLInputElement>("p-direct"), $<HTMLInputElement>("p-teaching")].filter((c) => c.checked).map((c) => c.value);
  let failed = null as AppError | null;
  const answer = await busy($<HTMLButtonElement>("consent-send"), $("consent-error"), () =>
    call<{ decision?: string; filed?: string; kept?: string; message_id?: string }>("sendImage", {
      jpeg: photo!.jpeg, width: photo!.width, height: photo!.height,
      role: $<HTMLInputElement>("role").value, priority: $<HTMLSelectElement>("priority").value,
      thread_id: target?.thread_id ?? null, audience: target ? shownAudience : null, kept_id: keptAgain,
      subject: target ? "" : $<HTMLInputElement>("img-subject").value,
      text: $<HTMLTextAreaElement>("img-text").value, warnings: photo!.warnings,
      consent: { decision, purposes, permanence: $<HTMLInputElement>("st-permanence").checked, no_effect: $<HTMLInputElement>("st-no-effect").checked },
      record: {
        patient_name: $<HTMLInputElement>("patient-name").value.trim(), patient_id: $<HTMLInputElement>("patient-id").value.trim(),
        issuer_of_patient_id: "", birth_date: null, sex: "", accession_number: "", anatomic_region: "", study_description: "", capture: "film",
      },
    }).catch((err: unknown) => {
      if (err instanceof AppError) failed = err;
      throw err;
    }),
  );
  // A photo added to a consult is said on its screen, when that is where the intern goes back
  // to (not when sent again from the list of consults).
  const line: StatusLine = target && openThread === target.thread_id ? "thread-status" : "photo-status";
  if (!answer && failed?.code === "consent_revoked") {
    // The patient withdrew consent while the photo was on its way: the worker erased its copy;
    // the form, still ticked "agreed", must not offer to send it again under a new consent.
    $("consent-error").textContent = "";
    clearConsent();
    sayKept(line, failed.message, null);
    backFromPhoto();
    await renderThreads();
    return;
  }
  if (!answer) {
    // Refused (the sentence is on screen): no upload is under way any more, and the button
    // now says what tapping it again does.
    $("consent-status").textContent = "";
    $<HTMLProgressElement>("upload").value = 0;
    if (failed?.recorded) recordedForm = form;
    if (failed?.code === "subject_identifies") $("consent-error").dataset["field"] = "img-subject";
    if (failed?.code === "audience_changed") sayWhoMaySee();
    labelConsentSend();
    return;
  }
  clearConsent();
  sayKept(line, answer.decision !== "refused" ? answer.kept ?? PHOTO_SENT_LINE
    : answer.filed === "no_gateway"
      ? "The refusal is recorded at the relay, but your organisation has no record gateway to file it: write it in the patient's notes. The photo was not sent, and it is gone from this phone."
      : "The refusal is recorded and sent to be filed in the patient's record. The photo was not sent, and it is gone from this phone.",
    answer.decision !== "refused" && answer.kept ? answer.message_id ?? null : null, PHOTO_SENT_LINE);
  backFromPhoto();
  await renderThreads();
}

// --- start --------------------------------------------------------------------------------------------

async function start(): Promise<void> {
  const cfg = (await (await fetch("config.json", { cache: "no-store" })).json()) as Config;
  autolockMs = cfg.autolock_seconds * 1000;
  const state = await call<{ enrolled: boolean; unlocked: boolean }>("init", { relay: cfg.relay, kdf: cfg.kdf });
  $("conn").textContent = state.enrolled ? "locked" : "not enrolled";
  if (state.enrolled && (await heldElsewhere())) showElsewhere();
  else show(state.enrolled ? "unlock" : "enrol");
}

$("enrol-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  handoutServer = undefined;
  void enrolNext();
});
$("scan").addEventListener("click", () => void startScan());
$("scan-stop").addEventListener("click", stopScan);
$("fp-match").addEventListener("click", () => show("passphrase"));
$("fp-mismatch").addEventListener("click", () => {
  $("confirm-error").textContent = "Stop here and call IT: the key is not your organisation's. Nothing was saved on this phone.";
});
$("pass-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  void enrolFinish();
});
$("take-over").addEventListener("click", () => void takeOver());
$("unlock-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  void unlock();
});
$("compose").addEventListener("submit", (ev) => {
  ev.preventDefault();
  void send();
});
$("lock").addEventListener("click", () => void lock());
$("sso-signin").addEventListener("click", () => void signIn());
$("capture").addEventListener("click", () => {
  photoFor = null; // a new consult
  void startCapture();
});
$("thread-back").addEventListener("click", () => closeThread());
$("again-consult-cancel").addEventListener("click", () => {
  stopAgain("consult", true);
  $("text").focus();
});
$("again-reply-cancel").addEventListener("click", () => {
  stopAgain("reply", true);
  $("reply-text").focus();
});
$("thread-photo").addEventListener("click", () => {
  const title = $("thread-title").textContent ?? NO_SUBJECT;
  if (openThread) photoFor = { thread_id: openThread, title };
  void startCapture();
});
$("reply-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  void sendReply();
});
$("take").addEventListener("click", () => void take());
$("capture-cancel").addEventListener("click", () => {
  stopCamera();
  backFromPhoto();
});
$("retake").addEventListener("click", () => void startCapture());
$("use-photo").addEventListener("click", toConsent);
$("fullscreen").addEventListener("click", () => void $("consent-photo").requestFullscreen?.().catch(() => undefined));
$("consent-send").addEventListener("click", () => void sendPhoto());
// A refusal to record the decision spoke of the form as it was: once a statement is ticked
// (or unticked) it no longer holds, and is not left on screen beside the ticked boxes.
for (const id of ["st-permanence", "st-no-effect"]) $(id).addEventListener("change", () => {
  $("consent-error").textContent = "";
});
for (const id of ["agreed", "refused", "p-direct", "p-teaching"]) $(id).addEventListener("change", labelConsentSend);
// Likewise the sentence that the subject names the patient, once the subject is changed.
$("img-subject").addEventListener("input", () => {
  if ($("consent-error").dataset["field"] !== "img-subject") return;
  $("consent-error").textContent = "";
  delete $("consent-error").dataset["field"];
});
for (const kind of ["pointerdown", "keydown", "touchstart"]) document.addEventListener(kind, activity, { passive: true });
window.addEventListener("focus", () => {
  document.title = "Lightbox";
});
// Locks when the app goes to the background (another app, the home screen, the screen off).
document.addEventListener("visibilitychange", () => {
  if (document.visibilityState === "hidden" && UNLOCKED.includes(document.body.dataset["screen"] ?? "")) void lock();
});

if ("serviceWorker" in navigator) void navigator.serviceWorker.register("sw.js").catch(() => undefined);
void start().catch(() => {
  $("conn").textContent = "error";
});
