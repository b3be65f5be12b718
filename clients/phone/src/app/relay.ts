/**
 * The thin HTTP shell over the relay's API (docs/PROTOCOL.md §11): JSON bodies, RFC 9457
 * problem documents turned into RelayError(code), and on every device request the access token
 * and a fresh `Lightbox-Proof` (proof.ts) over the exact method, target and body.
 */
import { utf8 } from "../protocol/bytes.js";
import { b64urlDecode, b64urlEncode } from "../protocol/canonical.js";
import { makeProof } from "../protocol/proof.js";
import * as s from "../protocol/sodium.js";

export class RelayError extends Error {
  constructor(
    readonly code: string,
    readonly status: number,
    readonly detail: string,
    /** The problem document's `title`: the code's meaning in words (docs/SECURITY.md). */
    readonly title: string = "",
  ) {
    super(`${code}: ${detail}`);
  }
}

/** A relay refusal as the person holding the phone reads it: what to do where the app knows,
 * else the relay's own words for the code (the problem's title), never the bare code. */
export function refusalSentence(err: RelayError): string {
  switch (err.code) {
    case "relay_unavailable":
      return "The relay cannot be reached. Check the network; nothing is lost.";
    case "origin_refused":
      return "The relay does not accept this app's address: tell IT (LIGHTBOX_PHONE_ORIGINS on the relay). Nothing is lost.";
    case "relay_answer_invalid":
      return "The relay's answer contradicted itself (a refusal marked as a success), so the app did not act on it. Try again; tell IT if it happens again.";
    case "enrolment_code_invalid":
      // As the CLI and the handout say it (clients/clinician/cli.py CODE_INVALID): a reissued
      // code replaces the older handout's at once (docs/USER_GUIDE.md "7. Handouts").
      return "The relay does not know that enrolment code: check it against the handout. If IT has given you a newer handout since, only the newest one's code works: ask IT for the newest handout.";
    case "enrolment_code_used":
      return "This enrolment code has already been used: ask IT for a new one to enrol this phone.";
    case "enrolment_code_expired":
      return "This enrolment code has expired: ask IT for a new one.";
    case "password_too_weak":
      return `Choose another passphrase: ${err.detail}.`;
    case "invalid_credentials":
      return "That passphrase is not right. Try again.";
    case "sso_required":
      return "Your hospital signs you in with your hospital account, not a Lightbox password.";
    case "device_revoked":
      return "This phone has been revoked by IT: it can no longer send or receive.";
    case "user_suspended":
      return "Your account is suspended by your organisation: ask IT.";
    case "licence_expired":
      return "Your licence, as registered with your hospital, has expired: ask IT or medical staffing to renew it.";
    case "role_unknown":
      return "There is no such on-call role.";
    case "consent_revoked":
      return "The patient withdrew consent, so the relay refused the photo: it was not sent. Do not send it again unless the patient gives consent again and it is recorded.";
    case "consent_expired":
      return "The patient's consent has expired, so the relay refused the photo: it was not sent. Ask the patient for consent again before sending a photo.";
    default:
      return err.title ? `The relay refused this. ${err.title}` : "The relay refused this. Try again; tell IT if it happens again.";
  }
}

/** Websocket refusals of a sealed message that a resend may change (clients/sdk/socket.py
 * is_retryable; docs/PROTOCOL.md §3.5 "Outbox"): the message stays in the outbox. Any other
 * code is a refusal for good, but for `device_set_mismatch`, after which the message is sealed
 * again once for the thread's current devices. */
const SEND_PASSING = ["rate_limited", "queue_full", "internal_error", "not_ready"];

export function sendPasses(code: string): boolean {
  return SEND_PASSING.includes(code);
}

/** Whether an HTTP failure leaves a pending send worth trying again as it is, by the SDK's
 * rule (clients/sdk/sending.py deliver): the relay unreachable (status 0), failing or busy
 * (5xx), timing out (408), rate limiting (429), or a session to renew first (401). Beyond the
 * SDK's rule, an account state IT must change (accountHold: suspended, licence expired): IT
 * may change it, and what waits on the phone then goes as it is (worker.ts heardHold). Any
 * other refusal (a 4xx) will be the same on every retry: the send is dropped and the user
 * told. */
export function httpPasses(err: RelayError): boolean {
  return err.status === 0 || err.status >= 500 || [401, 408, 429].includes(err.status) || accountHold(err.code) !== null;
}

/**
 * The states of an account that only IT can change, and that the relay says as 403 to every
 * request of the user and as 4005 when it closes the connection (docs/PROTOCOL.md §3,
 * docs/SECURITY.md's error table): IT suspended the user, or the licence registered with the
 * hospital has expired. The phone says each once, in its banner, and waits for IT
 * (worker.ts heardHold): `state`, the connection bar's word; `sentence`, the banner's (what
 * the CLI and the desktop say for the code, clients/sdk/failures.py and
 * clients/desktop/app.py, what the phone does meanwhile, and that what waits is kept);
 * `kept`, what a consult sent meanwhile says under it.
 */
const HOLDS = {
  user_suspended: {
    state: "suspended",
    sentence: "Your account is suspended by your organisation: ask IT. Until IT resumes it, this phone cannot send or receive consults. Nothing is lost: what waits to be sent stays on this phone and goes by itself once your account is resumed.",
    kept: "Not sent yet: your account is suspended by your organisation. It is kept on this phone and sent by itself once IT resumes your account; it shows as sent then. If it is urgent, phone or page the on-call team.",
  },
  licence_expired: {
    state: "licence expired",
    sentence: "Your licence, as registered with your hospital, has expired: ask IT or medical staffing to renew it. Until it is renewed, this phone cannot send or receive consults. Nothing is lost: what waits to be sent stays on this phone and goes by itself once your licence is renewed.",
    kept: "Not sent yet: your licence, as registered with your hospital, has expired. It is kept on this phone and sent by itself once IT or medical staffing renews it; it shows as sent then. If it is urgent, phone or page the on-call team.",
  },
} as const;

export type AccountHold = keyof typeof HOLDS;

/** The account state IT must change that a relay's code says, else null. */
export function accountHold(code: string | undefined): AccountHold | null {
  return code !== undefined && Object.hasOwn(HOLDS, code) ? (code as AccountHold) : null;
}

/** What the phone says once, in its banner, while IT holds the account (`hold`). */
export function holdSentence(hold: AccountHold): string {
  return HOLDS[hold].sentence;
}

/** The connection bar's word while IT holds the account (`hold`). */
export function holdState(hold: AccountHold): string {
  return HOLDS[hold].state;
}

/** A refusal for good (not httpPasses) in words: the relay's reason, never "try again" for
 * what it will refuse again as it is. */
export function finalRefusalSentence(err: RelayError): string {
  const said = refusalSentence(err);
  return said === refusalSentence(new RelayError("", err.status, ""))
    ? "The relay refused it, and would refuse it again as it is. Tell IT if this happens again." : said;
}

/** A consult (or photo) the relay refused for good, in words: not sent, why, and what to do;
 * never "try again" for what the relay will refuse again as it is. */
export function notSentSentence(code: string, detail = ""): string {
  switch (code) {
    case "message_too_large":
      return "Not sent: the consult is too long for the relay, which refuses it as it is. Shorten it, or split it in two, and send it again.";
    case "device_set_mismatch":
      return "Not sent: the on-call team's phones changed while it was being sent, twice. Send it again.";
    case "thread_not_found":
    case "not_thread_member":
      return "Not sent: this phone is no longer part of that conversation. Start a new consult to send it.";
    case "role_unknown":
      return "Not sent: there is no such on-call role. Check the role and send it again.";
    case "consent_purpose":
      return "Not sent: the patient's consent does not name direct care, which a consult is for. If the patient agrees to it, tick Direct care and record their decision again.";
    case "consent_recipient_out_of_scope":
      return "Not sent: the patient's consent does not name everyone the photo would reach. Record the patient's decision again for everyone now in the consult.";
    case "consent_revoked":
    case "consent_expired":
    case "device_revoked":
    case "user_suspended":
      return refusalSentence(new RelayError(code, 0, detail));
  }
  return "Not sent: the relay refused it, and would refuse it again as it is. Tell IT if this happens again; call the on-call team if it is urgent.";
}

/** A consult kept on the phone because the relay could not take it now (`code`: its passing
 * refusal; null: no connection; "unreachable": connected, but the relay's other requests, which
 * sealing needs, do not get through; an accountHold code: IT suspended the account, or the
 * licence expired, which IT may change), in words: it goes by itself, nothing to do. */
export function keptSentence(code: string | null): string {
  const hold = accountHold(code ?? undefined);
  if (hold) return HOLDS[hold].kept;
  const why = code === "rate_limited" ? "this phone sent too many messages in a short time"
    : code === "queue_full" ? "the recipients' queue at the relay is full"
    : code === null ? "this phone is not connected to the relay"
    : code === "unreachable" ? "this phone cannot reach the relay just now"
    : "the relay could not store it just now";
  return `Not sent yet: ${why}. It is kept on this phone and sent by itself as soon as the relay takes it; it shows as sent then.`;
}

/** A fatal error the relay sent before closing the connection (docs/PROTOCOL.md §3), in
 * words: never its raw detail. The app reconnects by itself unless this phone was revoked. */
export function connectionLostSentence(code: string): string {
  switch (code) {
    case "device_revoked":
    case "user_suspended":
      return refusalSentence(new RelayError(code, 0, ""));
    case "licence_expired":
      return refusalSentence(new RelayError(code, 0, ""));
    case "unsupported_version":
      return "The relay ended the connection: it no longer speaks this version of the app. Reload the app; tell IT if it happens again.";
    case "token_expired":
      return "The connection to the relay reached its time limit and was closed; the app reconnects by itself. Nothing is lost.";
  }
  return "The connection to the relay was lost; the app reconnects by itself. Nothing is lost; tell IT if it keeps happening.";
}

/** How a photo upload that was cut off, and resumed at the next connection (worker.ts
 * resumeUploads), ended, in words: `refusal` is the failure as the person reads it
 * (refusalSentence or the app's own sentence); `kept`, whether the app still holds the photo and
 * tries again by itself the next time it connects. `cut`: what cut it off while the app stayed
 * open (the connection was lost, or the relay did not take it); absent, the app closed. Never
 * the bare code. */
export type Resumed = ({ ok: true } | { ok: false; code: string; kept: boolean; refusal: string }) & { cut?: "connection" | "relay" };

export function resumedSentence(r: Resumed): string {
  const CUT_OFF = `The photo upload that was cut off ${r.cut === "connection" ? "when the connection to the relay was lost"
    : r.cut === "relay" ? "when the relay did not take it" : "when the app closed"}`;
  if (r.ok) return `${CUT_OFF} is finished: photo sent.`;
  switch (r.code) {
    case "consent_revoked":
      // Withdrawn consent forbids the photo itself: taking it again would be the hazard.
      return `${CUT_OFF} was stopped: the patient withdrew consent. The photo was not sent, and it is gone from this phone. Do not take or send it again unless the patient gives consent again and it is recorded.`;
    case "upload_not_found":
    case "attachment_expired":
      return `${CUT_OFF} could not be finished: the relay no longer holds the part already sent. The photo was not sent, and it is gone from this phone: take it again if it is still needed.`;
    case "hash_mismatch":
      return `${CUT_OFF} could not be finished: the part already sent was damaged on its way to the relay. The photo was not sent, and it is gone from this phone: take it again if it is still needed.`;
  }
  const said = r.refusal.replace(/^(\S)/, (c) => c.toLowerCase());
  return r.kept
    ? `${CUT_OFF} is not finished yet: ${said} The app keeps the photo and sends it by itself the next time it connects to the relay, at the latest when you next unlock the app.`
    : `${CUT_OFF} could not be finished: ${said} The photo was not sent, and it is gone from this phone.`;
}

export interface TokenPair {
  access_token: string;
  expires_at: number;
  refresh_token: string;
  refresh_expires_at: number;
  user_id: string;
  device_id: string;
}

export const LABEL_LOGIN = "lightbox/v1/login";
export const LABEL_ENROLMENT_TOKEN = "lightbox/v1/enrolment-token";

export function enrolmentToken(normalisedCode: string): Uint8Array {
  return s.sha256(utf8(`${LABEL_ENROLMENT_TOKEN}\0${normalisedCode}`));
}

/** The device's signature over the login input (docs/PROTOCOL.md §11, protocol/api.py
 * login_signing_input): label, nonce, login, device id. */
function loginSignature(deviceSeed: Uint8Array, nonceB64: string, login: string, deviceId: string): string {
  const nonce = b64urlDecode(nonceB64, { maxLength: 64 });
  const input = new Uint8Array([...utf8(LABEL_LOGIN), 0, ...nonce, ...utf8(login), 0, ...utf8(deviceId)]);
  return b64urlEncode(s.ed25519Sign(deviceSeed, input));
}

/** What the relay answered, as clients/sdk/answers.py reads it: the JSON body of a success;
 * a problem document (RFC 9457) under an error status as RelayError(code). A problem document
 * under a success status, which the relay never sends (server/problems.py pairs every code with
 * an error status), is `relay_answer_invalid` naming the code it carries: never taken for the
 * answer (a TokenPair made of a problem's fields, say). */
export function readAnswer(status: number, contentType: string, text: string): unknown {
  let json: unknown = undefined;
  try {
    json = text ? JSON.parse(text) : undefined;
  } catch {
    /* not JSON: reported below */
  }
  if (status < 200 || status > 299) {
    const p = (json ?? {}) as { code?: string; detail?: string; title?: string };
    throw new RelayError(p.code ?? "internal_error", status, p.detail ?? `HTTP ${status}`, typeof p.title === "string" ? p.title : "");
  }
  const doc = (json ?? null) as { type?: unknown; code?: unknown; status?: unknown; detail?: unknown } | null;
  const shaped = doc !== null && typeof doc === "object" && typeof doc.type === "string" && typeof doc.code === "string" && typeof doc.status === "number";
  if (doc !== null && typeof doc === "object" && !Array.isArray(doc) && (shaped || contentType.split(";")[0]!.trim().toLowerCase() === "application/problem+json")) {
    let said = typeof doc.code === "string" ? doc.code : "internal_error";
    if (typeof doc.status === "number") said += ` (HTTP ${doc.status} in the document)`;
    if (typeof doc.detail === "string") said += `: ${doc.detail}`;
    throw new RelayError("relay_answer_invalid", status, `the relay answered HTTP ${status} (success) with an error document: ${said}`);
  }
  return json;
}

export class Relay {
  tokens: TokenPair | null = null;
  onTokens: ((tokens: TokenPair) => void) | null = null;
  /** Signs this device in again, the way it signed in at unlock, and sets the new tokens; set
   * by the worker when it holds what that needs (refresh). */
  signInAgain: (() => Promise<void>) | null = null;
  private renewing: Promise<void> | null = null;
  /** Told after every request whether the relay answered it (any status) or could not be
   * reached; the websocket can be up while these fail (worker.ts, the header's state). */
  onReach: ((reached: boolean) => void) | null = null;
  constructor(
    readonly base: string,
    private deviceSeed: Uint8Array | null = null,
  ) {}

  get wsUrl(): string {
    return this.base.replace(/^http/, "ws") + "/v1/ws";
  }

  setDevice(seed: Uint8Array): void {
    this.deviceSeed = seed;
  }

  private async raw(method: string, target: string, body: unknown, device: boolean): Promise<Response> {
    const binary = body instanceof Uint8Array;
    const data = body === undefined ? new Uint8Array(0) : binary ? body : utf8(JSON.stringify(body));
    const headers: Record<string, string> = {};
    if (body !== undefined) headers["content-type"] = binary ? "application/octet-stream" : "application/json";
    if (device) {
      if (!this.tokens || !this.deviceSeed) throw new RelayError("unauthenticated", 401, "not logged in");
      headers["authorization"] = `Bearer ${this.tokens.access_token}`;
      headers["lightbox-proof"] = makeProof(this.deviceSeed, method, target, data, this.tokens.access_token, Math.floor(Date.now() / 1000));
    }
    let answer: Response;
    try {
      answer = await fetch(this.base + target, { method, headers, body: body === undefined ? undefined : (data as BodyInit), cache: "no-store", credentials: "omit" });
    } catch {
      this.onReach?.(false);
      if (await this.refusesOrigin()) throw new RelayError("origin_refused", 0, "the relay refuses this app's origin");
      throw new RelayError("relay_unavailable", 0, "the relay cannot be reached");
    }
    this.onReach?.(true);
    return answer;
  }

  /**
   * Whether a request that failed as a network error failed because the relay refuses this
   * app's origin (not in its LIGHTBOX_PHONE_ORIGINS: it answers the CORS preflight 400, which
   * the browser reports as a network error, WHATWG Fetch "CORS-preflight fetch"), not because
   * it is out of reach. Two GETs of /readyz, neither preflighted: `no-cors` resolves (opaque)
   * if the relay answered at all and rejects when it cannot be reached; `cors` resolves only
   * when the relay allows this origin. Answered, but not allowed: refused. A request cut off
   * on its way while the relay is up and allows this origin stays "cannot be reached". Neither
   * answer is read.
   */
  private async refusesOrigin(): Promise<boolean> {
    const answers = (mode: RequestMode): Promise<boolean> =>
      fetch(this.base + "/readyz", { mode, cache: "no-store", credentials: "omit" }).then(() => true, () => false);
    return (await answers("no-cors")) && !(await answers("cors"));
  }

  /** One request; `device`: signed as this device (refreshing an expired token once). A
   * Uint8Array body is sent as application/octet-stream (attachment chunks), anything else as
   * JSON. */
  async call<T>(method: string, target: string, body?: unknown, device = true): Promise<T> {
    let r = await this.raw(method, target, body, device);
    if (device && r.status === 401 && this.tokens) {
      const problem = (await r.clone().json().catch(() => ({}))) as { code?: string };
      // Expired, or its session ended at the relay (token_invalid: a suspension lifted since,
      // the relay's token key replaced): a refresh, or the new sign-in it leads to (refresh).
      if (problem.code === "token_expired" || problem.code === "token_invalid") {
        await this.refresh();
        r = await this.raw(method, target, body, device);
      }
    }
    if (r.status === 204 || r.status === 202) return undefined as T;
    return readAnswer(r.status, r.headers.get("content-type") ?? "", await r.text()) as T;
  }

  /** A device GET of binary content (an attachment's ciphertext); `max` bounds what is read. */
  async bytes(target: string, max: number): Promise<Uint8Array> {
    let r = await this.raw("GET", target, undefined, true);
    if (r.status === 401 && this.tokens) {
      await this.refresh();
      r = await this.raw("GET", target, undefined, true);
    }
    if (!r.ok) {
      const p = (await r.json().catch(() => ({}))) as { code?: string; detail?: string; title?: string };
      throw new RelayError(p.code ?? "internal_error", r.status, p.detail ?? `HTTP ${r.status}`, typeof p.title === "string" ? p.title : "");
    }
    const length = Number(r.headers.get("content-length") ?? "0");
    if (length > max) throw new RelayError("attachment_too_large", r.status, "larger than its descriptor");
    let data: Uint8Array;
    try {
      data = new Uint8Array(await r.arrayBuffer());
    } catch {
      this.onReach?.(false);
      throw new RelayError("relay_unavailable", 0, "the download broke off");
    }
    if (data.length > max) throw new RelayError("attachment_too_large", r.status, "larger than its descriptor");
    return data;
  }

  /**
   * A new session: the refresh token exchanged (it rotates, docs/SECURITY.md "Refresh"), one
   * exchange for all concurrent callers, since the same refresh token presented twice is reuse
   * and ends the session (docs/SECURITY.md "Refresh races"). When the relay refuses it (401:
   * expired, its session ended, reused), the session is over and is never offered again: with
   * `signInAgain` set, the device signs in anew (as clients/sdk/session.py logs in again),
   * else the refusal is the caller's. With no session held, the same.
   */
  async refresh(): Promise<void> {
    this.renewing ??= this.renew().finally(() => {
      this.renewing = null;
    });
    return this.renewing;
  }

  private async renew(): Promise<void> {
    const held = this.tokens;
    if (!held) {
      if (this.signInAgain) return this.signInAgain();
      throw new RelayError("unauthenticated", 401, "not logged in");
    }
    try {
      this.setTokens(await this.call<TokenPair>("POST", "/v1/auth/refresh", { refresh_token: held.refresh_token }, false));
    } catch (err) {
      if (!(err instanceof RelayError && err.status === 401)) throw err;
      if (this.tokens === held) this.tokens = null; // ended: not presented again
      if (!this.signInAgain) throw err;
      await this.signInAgain();
    }
  }

  async login(login: string, password: string, deviceId: string, deviceSeed: Uint8Array): Promise<TokenPair> {
    this.deviceSeed = deviceSeed;
    const challenge = await this.call<{ nonce: string; expires_at: number }>("POST", "/v1/auth/challenge", undefined, false);
    return this.signedIn("/v1/auth/login", { login, password, device_id: deviceId, nonce: challenge.nonce,
      signature: loginSignature(deviceSeed, challenge.nonce, login, deviceId) });
  }

  /** Log in with the IdP's ID token (docs/PROTOCOL.md §11 "Single sign-on"): the device signs
   * the nonce the token carries (the relay's challenge), exactly as for a password. */
  async ssoLogin(orgId: string, idToken: string, nonce: string, login: string, deviceId: string, deviceSeed: Uint8Array): Promise<TokenPair> {
    this.deviceSeed = deviceSeed;
    return this.signedIn("/v1/auth/sso/login", { org_id: orgId, id_token: idToken, device_id: deviceId,
      signature: loginSignature(deviceSeed, nonce, login, deviceId) });
  }

  private async signedIn(target: string, body: Record<string, unknown>): Promise<TokenPair> {
    this.setTokens(await this.call<TokenPair>("POST", target, body, false));
    return this.tokens!;
  }

  /** New tokens, and the `onTokens` hook told (a single sign-on device keeps them in its vault). */
  setTokens(tokens: TokenPair | null): void {
    this.tokens = tokens;
    if (tokens) this.onTokens?.(tokens);
  }
}

