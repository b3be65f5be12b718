/**
 * The phone's engine, in a Web Worker: every key, every seal and open, the vault, the relay's
 * HTTP API and its websocket live here, so sealing never freezes the page and the page never
 * holds a key. The page (main.ts) sends requests {id, op, args} and gets {id, ok, result|error};
 * the worker also posts events {event, ...} (a message arrived, the connection changed).
 */
import { b64urlDecode as d, b64urlEncode as e, peekCompact } from "../protocol/canonical.js";
import { decodeBody, encodeBody, handoverParts, makeBody, type Body, type HandoverOf } from "../protocol/body.js";
import * as certs from "../protocol/certs.js";
import { ProtocolError } from "../protocol/errors.js";
import * as env from "../protocol/envelope.js";
import { BUNDLE_SUBPROTOCOL, challengeSigningBytes, decodeMessage, encodeFrame, PROTOCOL_VERSION, type Connection, type ServerFrame } from "../protocol/frames.js";
import * as keys from "../protocol/keys.js";
import * as s from "../protocol/sodium.js";
import { Relay, RelayError, accountHold, connectionLostSentence, enrolmentToken, finalRefusalSentence, holdSentence, holdState, httpPasses, keptSentence, notSentSentence, refusalSentence, resumedSentence, sendPasses, type AccountHold, type TokenPair } from "./relay.js";
import { Vault } from "./vault.js";
import { SsoError, finishRequest, ssoConfig, startRequest, type SsoAnswer, type SsoConfig, type SsoRequest } from "./sso.js";
import { DEFAULT_POLICY, keptSignedPrekeys, newestSignedPrekey, rotationDue, type SignedPrekeySecret } from "./prekeys.js";
import type { MessageView, ThreadRecord } from "./views.js";
import { checkQuality } from "./quality.js";
import { learnPatient, otherPatient } from "./patients.js";
import { oneCopyShown } from "./copies.js";
import { NotAJpeg, pixelsOnlyJpeg } from "./jpeg.js";
import { ciphertextSize, decryptAttachment, encryptAttachment, type AttachmentDescriptor } from "../protocol/attachments.js";
import { hex, utf8 } from "../protocol/bytes.js";
import { imageHash, issueConsentToken, peekConsentTokenUnverified, verifyConsentToken, type ConsentClaims } from "../protocol/consent.js";
import type { RecordData } from "../protocol/body.js";
import { issueExpiryConfirmation, issueReceiptStatement, issueWipeConfirmation, verifyReceiptStatement, type ReceiptKind } from "../protocol/statements.js";

const CLIENT = "lightbox-phone";
const CLIENT_VERSION = "0.1.0";
const ONE_TIME_PREKEYS = 20;
const MAX_PREKEY_BATCH = 100; // protocol/api.py
const PREKEY_UPKEEP_MS = 3600_000;
const DEVICE_CERTIFICATE_LIFETIME = 2 * 365 * 86400;

interface Config {
  relay: string;
  kdf: "interactive" | "cheap";
}

/** What the vault keeps about this device (like clients/sdk/keystore.py DeviceState). */
interface DeviceState {
  server: string;
  login: string;
  user_id: string;
  org_id: string;
  org_public_key: Uint8Array;
  display_name: string;
  /** The identity key: this phone is the user's first device, which signs consent tokens
   * (PROTOCOL §7) and would certify a linked device (§4.8). */
  identity_seed: Uint8Array;
  device_id: string;
  device_seed: Uint8Array;
  dh_secret: Uint8Array;
  user_certificate: string;
  device_certificate: string;
  signed_prekeys: SignedPrekeySecret[];
  one_time_prekeys: { id: number; secret: Uint8Array }[];
  /** The next prekey id (ids are never reused); missing in a vault written before top-ups. */
  next_prekey_id?: number;
  /** The newest revocation list of the organisation seen so far (the rollback floor, §4.5). */
  revocation_list?: string | null;
  /** The organisation signs in with its identity provider (sso.ts): the passphrase opens the
   * vault only, and the relay's session, kept here, is renewed until the relay asks for a new
   * sign-in at the IdP. */
  sso?: boolean;
  /** The relay's last session (every device, as clients/sdk/keystore.py keeps it): a single
   * sign-on device renews it at unlock, and a device the relay refuses as revoked offers its
   * access token, expired or not, to hear a wipe order (PROTOCOL §15 "Wipe"). */
  session?: TokenPair | null;
}

interface PendingEnrolment {
  relay: Relay;
  code: string;
  token: Uint8Array;
  userCertificate: string;
  user: certs.UserCertificate;
  bundle: { user_id: string; login: string; org_id: string; org_public_key: string; identity_seed: string };
  /** The organisation's IdP, when it signs in with one (the relay's /v1/auth/sso/{org_id}). */
  sso: SsoConfig | null;
}

let config: Config = { relay: "", kdf: "interactive" };
let vault: Vault | null = null;
let st: DeviceState | null = null;
let relay: Relay | null = null;
let pending: PendingEnrolment | null = null;
let ssoRequest: SsoRequest | null = null;
let socket: WebSocket | null = null;
let reconnect: ReturnType<typeof setTimeout> | null = null;
let heardRevocation = false;
// A password phone's passphrase, its password at the relay (docs/SECURITY.md "On the phone"),
// held while the app is unlocked as the vault key is, and zeroed when it locks: the phone signs
// in again with it and its device key when the relay ends its session (signInAgain).
let signInWith: Uint8Array | null = null;
// Sign-ins again that did not get through since the last connection (retryLater's backoff).
let signInTries = 0;
// The account is in a state only IT can change (relay.ts accountHold: suspended, or the licence
// expired; the relay closed the connection, or refused a request, with that code): the banner
// says so once, and the relay is asked again only now and then, waiting longer each time
// (checkHeldLater), until IT changes it.
let held: AccountHold | null = null;
let heldChecks = 0;
// The relay refused this device as revoked when the app was unlocked: the socket opened with
// the last session only hears a wipe order, and the keys are forgotten once it closes.
let refusedAtUnlock = false;
// The relay refused this phone as revoked since the worker started (kept when the app locks):
// only then may the page have the revoked device's keys and data erased to enrol it again.
let knownRevoked = false;

function revokedHeard(): void {
  knownRevoked = true;
  event("revoked", {});
}
// The header's state: "offline" until the websocket is ready; then "connected", or
// "partial" while the relay's HTTP requests (photos, look-ups, sign-in) cannot reach it
// though the websocket can (a proxy that blocks uploads, a route cut). While they fail, a
// look-up every PROBE_MS finds out when they pass again.
let ready = false;
let httpFailing = false;
let probe: ReturnType<typeof setInterval> | null = null;
const PROBE_MS = 15_000;
let upkeep: ReturnType<typeof setInterval> | null = null;
let revocationSet: certs.RevocationSet | null = null;
let revocationsAt = -Infinity;
const REVOCATIONS_MAX_AGE = 30; // seconds, as clients/sdk/trust.py
const waiting = new Map<string, { resolve: (v: ServerFrame) => void; reject: (e: Error) => void }>();

const post = (msg: unknown): void => (self as unknown as Worker).postMessage(msg);
const event = (name: string, data: Record<string, unknown> = {}): void => post({ event: name, ...data });
const now = (): number => Math.floor(Date.now() / 1000);

const connectionState = (): string => (!ready ? "offline" : httpFailing ? "partial" : "connected");

function reached(ok: boolean): void {
  if (ok === !httpFailing) return;
  httpFailing = !ok;
  if (httpFailing) probe ??= setInterval(() => void maintainPrekeys().catch(() => undefined), PROBE_MS);
  else if (probe) {
    clearInterval(probe);
    probe = null;
  }
  if (ready) event("connection", { state: connectionState() });
}

/** The device's relay client, telling the header whether its requests get through. */
function deviceRelay(server: string, seed: Uint8Array): Relay {
  const r = new Relay(server, seed);
  r.onReach = reached;
  return r;
}

function profile(): keys.PassphraseProfile {
  return config.kdf === "cheap" ? keys.CHEAP_PROFILE : keys.DEFAULT_PROFILE;
}

function pinned(): Record<string, Uint8Array> {
  return { [st!.org_id]: st!.org_public_key };
}

function deviceKeys(): keys.DeviceKeys {
  return { deviceId: st!.device_id, signing: keys.ed25519FromSeed(st!.device_seed), dh: keys.x25519FromSecret(st!.dh_secret) };
}

class UserError extends Error {
  constructor(
    readonly code: string,
    message: string,
  ) {
    super(message);
  }
}

/** The relay refused a sealed message over the websocket: it is out of the outbox, never sent. */
class SendRefused extends UserError {}

/** A failure as the person holding the phone reads it: the app's own sentence, or the relay's
 * refusal in words (refusalSentence), never a bare code; `otherwise`, for anything else. */
function inWords(err: unknown, otherwise = "Something went wrong on the phone; nothing was sent."): string {
  return err instanceof UserError || err instanceof SsoError ? err.message
    : err instanceof RelayError ? refusalSentence(err) : otherwise;
}

// --- enrolment ---------------------------------------------------------------------------------

/** Read the enrolment package with the code; show who and which organisation key it pins. */
async function enrolStart(args: { code: string; server?: string }): Promise<Record<string, unknown>> {
  if (args.server && args.server.replace(/\/+$/, "") !== config.relay) {
    throw new UserError("wrong_relay", `This handout is for another relay (${args.server}); this app talks to ${config.relay}.`);
  }
  let code: string;
  try {
    code = keys.normaliseEnrolmentCode(args.code);
  } catch {
    throw new UserError("enrolment_code_invalid", "That is not an enrolment code: it has 20 letters and digits, in five groups of four.");
  }
  const r = new Relay(config.relay);
  const token = enrolmentToken(code);
  const pkg = await r.call<{ user_certificate: string; sealed_identity: string; expires_at: number }>(
    "POST", "/v1/enrol/fetch", { enrolment_token: e(token) }, false);
  let bundle: PendingEnrolment["bundle"];
  try {
    const opened = keys.openWithPassphrase(d(pkg.sealed_identity), code);
    bundle = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(opened)) as PendingEnrolment["bundle"];
  } catch {
    throw new UserError("enrolment_code_invalid", "The enrolment code does not open the enrolment package: check the code on the handout.");
  }
  const orgKey = d(bundle.org_public_key, { length: 32 });
  let user: certs.UserCertificate;
  try {
    user = certs.verifyUserCertificate(pkg.user_certificate, { [bundle.org_id]: orgKey }, now(), null);
  } catch (err) {
    throw new UserError((err as ProtocolError).code ?? "certificate_invalid", "Your certificate does not verify against the organisation key: stop and call IT.");
  }
  const identity = keys.ed25519FromSeed(d(bundle.identity_seed, { length: 32 }));
  if (user.user_id !== bundle.user_id || user.org_id !== bundle.org_id || user.identity_key !== e(identity.public)) {
    throw new UserError("certificate_invalid", "The certificate does not match the enrolment package: stop and call IT.");
  }
  const sso = await ssoConfig(r, bundle.org_id);
  pending = { relay: r, code, token, userCertificate: pkg.user_certificate, user, bundle, sso };
  return { login: bundle.login, display_name: user.display_name, org_id: user.org_id, fingerprint: keys.keyId(orgKey), sso: sso !== null };
}

function checkNewPassphrase(passphrase: string): void {
  if ([...passphrase].length < 12) throw new UserError("password_too_weak", "The passphrase must be at least 12 characters long.");
}

/** Register this phone as the user's device, then create the vault under the passphrase. An
 * organisation with single sign-on: `sso` is the IdP's answer to the request ssoStart made, and
 * its ID token stands in for a relay password (POST /v1/enrol/complete-sso). */
async function enrolFinish(args: { passphrase: string; sso?: SsoAnswer }): Promise<Record<string, unknown>> {
  if (!pending) throw new UserError("not_ready", "Start again by scanning or typing the enrolment code.");
  checkNewPassphrase(args.passphrase);
  const p = pending;
  const idToken = p.sso ? await ssoIdToken(args.sso) : null;
  const t = now();
  const deviceId = keys.uuid4();
  const dk = keys.generateDeviceKeys(deviceId);
  const identitySeed = d(p.bundle.identity_seed, { length: 32 });
  const deviceCert = certs.issueDeviceCertificate({
    v: 1, device_id: deviceId, user_id: p.user.user_id, org_id: p.user.org_id, kind: "mobile",
    signing_key: e(dk.signing.public), dh_key: e(dk.dh.public), issued_at: t,
    not_after: Math.min(p.user.not_after, t + DEVICE_CERTIFICATE_LIFETIME),
  }, identitySeed);
  const spk = keys.generatePrekey(1);
  const otks = Array.from({ length: ONE_TIME_PREKEYS }, (_, i) => keys.generatePrekey(2 + i));
  const registration = {
    enrolment_token: e(p.token),
    device_certificate: deviceCert,
    signed_prekey: certs.issueSignedPrekey({ device_id: deviceId, prekey_id: 1, public: e(spk.keypair.public), created_at: t }, dk.signing.seed),
    one_time_prekeys: otks.map((o) => certs.issueOneTimePrekey({ device_id: deviceId, prekey_id: o.prekeyId, public: e(o.keypair.public) }, dk.signing.seed)),
  };
  let enrolled: { user_id: string; device_id: string; login: string };
  try {
    enrolled = await p.relay.call<{ user_id: string; device_id: string; login: string }>("POST",
      idToken ? "/v1/enrol/complete-sso" : "/v1/enrol/complete",
      idToken ? { ...registration, org_id: p.user.org_id, id_token: idToken } : { ...registration, password: args.passphrase }, false);
  } catch (err) {
    // The organisation turned single sign-on on since enrolStart asked (docs/SECURITY.md "No
    // password beside the IdP"): the relay refuses the password before using the code, which
    // stays good for the IdP's enrolment. The page offers that, with the same code.
    if (idToken || !(err instanceof RelayError && err.code === "sso_required")) throw err;
    p.sso = await ssoConfig(p.relay, p.user.org_id);
    if (!p.sso) throw err;
    throw new UserError("sso_required", "Your hospital now signs you in with your hospital account instead of a Lightbox password: enrol with it, with the same code and passphrase.");
  }
  if (enrolled.device_id !== deviceId || enrolled.user_id !== p.user.user_id) throw new UserError("certificate_invalid", "The relay confirmed another user or device.");
  await Vault.erase();
  vault = await Vault.create(args.passphrase, profile());
  st = {
    server: config.relay, login: p.bundle.login, user_id: p.user.user_id, org_id: p.user.org_id,
    org_public_key: d(p.bundle.org_public_key, { length: 32 }), display_name: p.user.display_name,
    identity_seed: identitySeed, device_id: deviceId, device_seed: dk.signing.seed, dh_secret: dk.dh.secret,
    user_certificate: p.userCertificate, device_certificate: deviceCert,
    signed_prekeys: [{ id: 1, secret: spk.keypair.secret, created_at: t }],
    one_time_prekeys: otks.map((o) => ({ id: o.prekeyId, secret: o.keypair.secret })),
    next_prekey_id: 2 + ONE_TIME_PREKEYS,
    ...(idToken ? { sso: true, session: null } : {}),
  };
  await vault.put("state", st);
  pending = null;
  // A single sign-on device signs in to the relay at the IdP next (the enrolment's nonce is
  // spent): the page offers it.
  if (!st.sso) signInWith = utf8(args.passphrase);
  const signin = st.sso ? !(await startSsoSession()) : (await startSession(args.passphrase), false);
  return { login: st.login, display_name: st.display_name, signin };
}

// --- single sign-on (sso.ts) -------------------------------------------------------------------

/** A new authorization request, for the enrolment under way or for this device's login; the
 * page opens `url` in the sign-in window. */
async function ssoStart(args: { origin: string; passphrase?: string }): Promise<Record<string, unknown>> {
  ssoRequest = null;
  let r: Relay;
  let cfg: SsoConfig | null;
  if (pending) {
    if (args.passphrase !== undefined) checkNewPassphrase(args.passphrase);
    r = pending.relay;
    cfg = pending.sso;
  } else if (vault && st?.sso && relay) {
    r = relay;
    cfg = await ssoConfig(relay, st.org_id);
  } else {
    throw new UserError("not_ready", "There is nothing to sign in for: unlock the app first.");
  }
  if (!cfg) throw new UserError("forbidden", "Your organisation does not sign in with an identity provider: ask IT.");
  ssoRequest = await startRequest(r, cfg, args.origin);
  return { url: ssoRequest.url };
}

/** The answer checked against the request in flight (which is used up either way), the code
 * exchanged: the ID token. */
async function ssoIdToken(answer: SsoAnswer | undefined): Promise<string> {
  const request = ssoRequest;
  ssoRequest = null;
  if (!request || !answer) throw new UserError("sso_state", "No sign-in is under way here: sign in again.");
  return finishRequest(request, answer);
}

/** Log this single sign-on device in with the IdP's answer; the session is kept in the vault. */
async function ssoLogin(args: { sso: SsoAnswer }): Promise<Record<string, unknown>> {
  if (!st?.sso || !relay) throw new UserError("not_ready", "This phone does not sign in with an identity provider.");
  const request = ssoRequest;
  const idToken = await ssoIdToken(args.sso);
  await relay.ssoLogin(st.org_id, idToken, request!.nonce, st.login, st.device_id, st.device_seed);
  // A socket of the session that ended gives way to one of the new session.
  const old = socket;
  socket = null;
  old?.close(1000, "signed in again");
  connect();
  return {};
}

/** A single sign-on device's relay session from the vault, renewed; false when there is none
 * or the relay wants a new sign-in at the IdP (the page asks for one). */
async function startSsoSession(): Promise<boolean> {
  const state = st!;
  relay = deviceRelay(state.server, state.device_seed);
  keepSession(state);
  if (!state.session) return false;
  relay.tokens = state.session;
  try {
    await relay.refresh();
  } catch (err) {
    if (err instanceof RelayError && err.status === 0) {
      event("connection", { state: "offline" });
      retryConnecting();
      return true;
    }
    if (hearWipe(err)) return false;
    await forgetSession(state);
    return false;
  }
  connect();
  return true;
}

/**
 * The organisation signs on with its IdP since this phone enrolled with a password
 * (docs/SECURITY.md "No password beside the IdP"): the relay refuses the password
 * (`sso_required`) and ends a session begun with one at its next refresh. From now on this
 * phone signs in at the IdP as one enrolled there does; the vault is kept as it is, and the
 * passphrase still opens it.
 */
async function signOnFromNowOn(state: DeviceState): Promise<void> {
  state.sso = true;
  forgetPassphrase();
  await forgetSession(state);
}

/** A password phone's session ended (`token_expired` at refresh): true, and the phone signs on
 * from now on (signOnFromNowOn), when its organisation now signs in with an IdP. */
async function nowSignsOn(state: DeviceState, err: unknown): Promise<boolean> {
  if (state.sso || !relay || !(err instanceof RelayError && err.code === "token_expired")) return false;
  try {
    if (!(await ssoConfig(relay, state.org_id))) return false;
  } catch {
    return false; // not known now: the next attempt asks again
  }
  await signOnFromNowOn(state);
  return true;
}

async function forgetSession(state: DeviceState): Promise<void> {
  state.session = null;
  if (relay) relay.tokens = null;
  if (vault && st === state) await vault.put("state", state);
}

// --- unlock, lock, session ---------------------------------------------------------------------

async function unlock(args: { passphrase: string }): Promise<Record<string, unknown>> {
  try {
    vault = await Vault.unlock(args.passphrase);
  } catch (err) {
    if (err instanceof ProtocolError) throw new UserError("invalid_credentials", "That passphrase is not right. Try again.");
    throw err;
  }
  st = (await vault.get<DeviceState>("state")) ?? null;
  if (!st) throw new UserError("not_ready", "This phone's vault holds no device: enrol again.");
  if (st.sso) {
    const signedIn = await startSsoSession();
    return { login: st.login, display_name: st.display_name, signin: !signedIn && !refusedAtUnlock, revoked: refusedAtUnlock };
  }
  signInWith = utf8(args.passphrase);
  try {
    await startSession(args.passphrase);
  } catch (err) {
    // The passphrase opened the vault; the relay refuses it as a password now: the hospital's
    // sign-in from now on (the page says why).
    if (!(err instanceof RelayError && err.code === "sso_required")) throw err;
    await signOnFromNowOn(st);
    return { login: st.login, display_name: st.display_name, signin: true, signon: true, revoked: false };
  }
  return { login: st.login, display_name: st.display_name, signin: false, revoked: refusedAtUnlock };
}

async function startSession(passphrase: string): Promise<void> {
  relay = deviceRelay(st!.server, st!.device_seed);
  keepSession(st!);
  const r = relay;
  r.signInAgain = () => signInAgain(r);
  try {
    await relay.login(st!.login, passphrase, st!.device_id, st!.device_seed);
  } catch (err) {
    if (err instanceof RelayError && err.status === 0) {
      // The vault is open; the relay is tried again with the session this phone last had
      // (renewed by reconnectNow), so what waits in the outbox goes once it answers.
      event("connection", { state: "offline" });
      if (st!.session) relay.tokens = st!.session;
      retryConnecting();
      return;
    }
    if (hearWipe(err)) return;
    if (err instanceof RelayError && err.code === "device_revoked") {
      // Revoked, and no session kept to hear a wipe order with: nothing is shown.
      lockKeys();
      revokedHeard();
    }
    throw err;
  }
  connect();
}

/** The relay could not be reached at unlock: tried again as after a lost connection (a
 * second on, then after every failed attempt), when a session to renew is kept. */
function retryConnecting(): void {
  if (!(relay?.tokens || relay?.signInAgain) || reconnect) return;
  reconnect = setTimeout(() => void reconnectNow(), 1000);
}

/**
 * The relay refused this phone's refresh token (401: expired, as after an outage longer than
 * LIGHTBOX_REFRESH_TOKEN_TTL; its session ended, by a suspension since lifted or a reuse): that
 * session is over, and only a new login opens another (docs/SECURITY.md "Refresh"; a refused
 * refresh token is never offered again, relay.ts refresh). A password phone signs in again as
 * at unlock, with the passphrase it was unlocked with and its device key (as the SDK does,
 * clients/sdk/session.py), so what waits in the outbox goes without the person. A relay out of
 * reach or busy: the error is the caller's, who tries later. The relay refuses the sign-in:
 * its organisation signs on now (the hospital's sign-in is offered), this phone is revoked
 * (hearWipe), or anything else (sessionEnded: the app says so once and locks).
 */
async function signInAgain(r: Relay): Promise<void> {
  const state = st;
  if (!state || state.sso || !signInWith || relay !== r) throw new RelayError("token_expired", 401, "the session ended");
  try {
    await r.login(state.login, new TextDecoder().decode(signInWith), state.device_id, state.device_seed);
  } catch (err) {
    if (!(err instanceof RelayError) || err.status === 0 || err.status >= 500 || [408, 429].includes(err.status)) throw err;
    if (relay !== r || st !== state) throw err; // locked meanwhile
    // Suspended, or the licence expired: the app stays open, and asks again later (heardHold).
    if (accountHold(err.code)) throw err;
    if (err.code === "sso_required") {
      await signOnFromNowOn(state);
      event("signin", { signon: true });
    } else if (!hearWipe(err)) {
      sessionEnded();
    }
    throw err;
  }
}

/** The relay ended this phone's session and the app cannot open another by itself: said once,
 * in words, and the app locks; what waits in the outbox stays in the vault and goes once the
 * person unlocks and the phone is signed in (nothing is lost). */
function sessionEnded(): void {
  event("session_ended", { message: "Your session with the relay ended, and the app could not sign in again by itself: unlock to sign in again. Nothing is lost: what waits to be sent goes once you are signed in." });
  const ws = socket;
  socket = null;
  ws?.close(1000, "session ended");
  lockKeys();
}

/** No session to connect with (the relay ended it, and signing in again did not get through:
 * the relay out of reach, busy or restarting): tried again later, waiting longer each time,
 * never a sign-in a second while the relay answers. */
function retryLater(): void {
  if (reconnect || !vault) return;
  const wait = Math.min(30_000, 1000 * 2 ** signInTries);
  signInTries += 1;
  reconnect = setTimeout(() => void reconnectNow(), wait);
}

/**
 * The account is in a state only IT can change, `hold` (relay.ts accountHold: IT suspended the
 * user, or the licence registered with the hospital expired), while the app is open
 * (docs/USER_GUIDE.md "Interns: the phone app"): said once, in the banner (relay.ts
 * holdSentence), until the phone is connected again. The relay refuses every request of the
 * user meanwhile (a suspension has also ended the session): what waits in the outbox stays
 * (relay.ts httpPasses), and nothing is asked of the relay but a check now and then
 * (checkHeldLater).
 */
function heardHold(hold: AccountHold): void {
  if (held === hold) return;
  if (held === null) heldChecks = 0;
  held = hold;
  event("held", { state: holdState(hold), message: holdSentence(hold) });
}

// The longest wait between two checks while IT holds the account: a resumed account or a
// renewed licence is back within a minute by itself, and a phone left open for a day of it
// asks the relay 1,440 times at most, not 86,400 (the relay's answer is the same each time).
const HELD_CHECK_MAX_MS = 60_000;

/** While IT holds the account: the relay asked again after 2 s, then 4, 8... up to a minute (a
 * refresh, refused 403 until IT changes it; after a suspension, refused 401 then, as the
 * suspension ended the session, and the phone signs in again with its passphrase:
 * Relay.refresh, signInAgain). A send the intern taps meanwhile asks at once (checkHeldNow). */
function checkHeldLater(): void {
  if (reconnect || !vault) return;
  const wait = Math.min(HELD_CHECK_MAX_MS, 2000 * 2 ** heldChecks);
  heldChecks += 1;
  reconnect = setTimeout(() => void reconnectNow(), wait);
}

/** The relay took a request of this phone while IT held the account (new tokens: a send signed
 * in again; or a send's requests answered): IT has changed it, so connect at once, not at the
 * next check. */
function checkHeldNow(): void {
  if (!held || !reconnect || socket) return;
  clearTimeout(reconnect);
  reconnect = setTimeout(() => {
    reconnect = null;
    connect();
  }, 0);
}

/** Connected again after IT changed the account: the banner goes. */
function notHeld(): void {
  heldChecks = 0;
  if (!held) return;
  held = null;
  event("held", { state: null });
}

/** Each new session kept in the vault (DeviceState.session). New tokens while IT holds the
 * account (the intern's send signed in again: IT resumed it) connect at once (checkHeldNow). */
function keepSession(state: DeviceState): void {
  relay!.onTokens = (tokens) => {
    if (!vault || st !== state) return;
    state.session = tokens;
    void vault.put("state", state);
    checkHeldNow();
  };
}

/**
 * The relay refused this device a session as revoked (a lost phone found and opened, its
 * session ended by the revocation and its token long expired): connect once with the last
 * access token kept, which with the device key's answer to the challenge is how a device
 * revoked with wipe hears its order (PROTOCOL §15 "Wipe"; server/socketauth.py). Nothing is
 * shown meanwhile: the page stays on the unlock screen, says the phone is revoked, and the
 * keys are forgotten when the relay closes without an order. False: not that refusal, or no
 * session was ever kept.
 */
function hearWipe(err: unknown): boolean {
  if (!(err instanceof RelayError) || err.code !== "device_revoked" || !st?.session || !relay) return false;
  relay.tokens = st.session;
  refusedAtUnlock = true;
  revokedHeard();
  connect();
  return true;
}

/**
 * Enrol this phone again, after IT revoked it without a wipe order and issued a new enrolment
 * code (USER_GUIDE "A lost phone"): the revoked device's keys and everything its vault holds
 * are erased, once the page has said so and the intern agreed; the app then enrols as on the
 * first day. Refused unless the relay refused this phone as revoked since the app started.
 */
async function forgetRevoked(): Promise<Record<string, unknown>> {
  if (!knownRevoked) throw new UserError("not_revoked", "This phone is not revoked: unlock it with your passphrase.");
  const ws = socket;
  socket = null;
  ws?.close(1000, "enrolling again");
  lockKeys();
  await Vault.erase();
  knownRevoked = false;
  return {};
}

function lock(): Record<string, unknown> {
  socket?.close(1000, "locked");
  socket = null;
  lockKeys();
  return {};
}

function forgetPassphrase(): void {
  signInWith?.fill(0);
  signInWith = null;
}

/** Forget every key and the vault key; the socket is the caller's. */
function lockKeys(): void {
  if (reconnect) clearTimeout(reconnect);
  reconnect = null;
  if (upkeep) clearInterval(upkeep);
  upkeep = null;
  if (resendTimer) clearTimeout(resendTimer);
  resendTimer = null;
  heardRevocation = false;
  refusedAtUnlock = false;
  forgetPassphrase();
  signInTries = 0;
  held = null;
  heldChecks = 0;
  ready = false;
  httpFailing = false;
  if (probe) clearInterval(probe);
  probe = null;
  vault?.lock();
  vault = null;
  if (st) {
    st.device_seed.fill(0);
    st.dh_secret.fill(0);
    st.identity_seed.fill(0);
  }
  st = null;
  relay = null;
  pending = null;
  ssoRequest = null;
  revocationSet = null;
  revocationsAt = -Infinity;
  recordedConsent = null;
  for (const w of waiting.values()) w.reject(new UserError("locked", "The app locked before the relay answered."));
  waiting.clear();
}

// --- thread records ------------------------------------------------------------------------------

/**
 * A thread's record (`thread:<id>`) is changed by reading it, changing the copy and writing the
 * copy back, and the websocket's frames, the photo downloads and the page's calls are handled
 * concurrently. Two changes to one thread that overlapped would each write back the copy they
 * read, the later undoing the earlier: the gateway's filing receipt (the study) lost under the
 * relay's `filed` notice that came with it, a receipt or an escalation step lost under
 * another. So each change to a thread runs only once the previous one to it is written.
 * A change must not wait on the network: the next change to its thread waits for it.
 */
const threadChanges = new Map<string, Promise<unknown>>();

async function changingThread<T>(threadId: string, change: () => Promise<T>): Promise<T> {
  const before = threadChanges.get(threadId) ?? Promise.resolve();
  const run = before.then(change, change);
  const settled = run.catch(() => undefined);
  threadChanges.set(threadId, settled);
  try {
    return await run;
  } finally {
    if (threadChanges.get(threadId) === settled) threadChanges.delete(threadId);
  }
}

/** Change a thread's record, if this phone has it, under changingThread: `change` edits it and
 * says whether it changed anything (only then is it written back). Whether it was written. */
async function updateThread(threadId: string, change: (thread: ThreadRecord) => boolean): Promise<boolean> {
  return changingThread(threadId, async () => {
    const key = `thread:${threadId}`;
    const thread = await vault!.get<ThreadRecord>(key);
    if (!thread || !change(thread)) return false;
    await vault!.put(key, thread);
    return true;
  });
}

// --- websocket (§3) ----------------------------------------------------------------------------

/** The close code of a connection the relay replaced by a newer one of this device
 * (docs/PROTOCOL.md §3.4, `session_replaced`). */
const SESSION_REPLACED = 4003;

/**
 * Open the websocket. It asks for bundles (PROTOCOL §3.6) unless `askBundles` is false: a relay
 * that selects the subprotocol may put several frames in one websocket message, so a backlog
 * comes in far fewer. A browser fails a websocket whose server selects none of the
 * subprotocols asked for (WHATWG Fetch, "establish a WebSocket connection"), where the Python
 * SDK goes on one frame per message. So an attempt that asked and never opened though the
 * relay had just answered over HTTP (`reachable`: a relay of a release before bundles) is
 * followed by one that does not ask (reconnectNow); every later connection asks again.
 */
function connect(askBundles = true, reachable = false): void {
  if (!relay || !st || !relay.tokens) return;
  const ws = askBundles ? new WebSocket(relay.wsUrl, [BUNDLE_SUBPROTOCOL]) : new WebSocket(relay.wsUrl);
  ws.binaryType = "arraybuffer";
  socket = ws;
  const conn: Connection = { bundles: false, ready: false };
  let opened = false;
  const tokens: TokenPair = relay.tokens;
  ws.onopen = () => {
    opened = true;
    conn.bundles = ws.protocol === BUNDLE_SUBPROTOCOL;
    ws.send(encodeFrame({ t: "hello", versions: [PROTOCOL_VERSION], access_token: tokens.access_token, device_id: st!.device_id, client: CLIENT, client_version: CLIENT_VERSION }));
  };
  ws.onmessage = (m) => onMessage(ws, conn, new Uint8Array(m.data as ArrayBuffer));
  ws.onclose = (c) => {
    const refusedAsking = askBundles && reachable && !opened;
    if (socket !== ws) return;
    socket = null;
    ready = false;
    event("connection", { state: "offline", code: c.code, reason: c.reason });
    if (refusedAtUnlock && c.reason) {
      // Connected only to hear a wipe order, and the relay closed without one (device_revoked,
      // or token_expired for a token it renews no more): nothing more to hear, nothing shown.
      revokedHeard();
      lockKeys();
      return;
    }
    if (c.reason === "device_revoked") {
      revokedHeard();
      // Once more, with the last access token: a device revoked with wipe hears its wipe order
      // there (PROTOCOL §15 "Wipe"); one revoked without is refused again, and stops.
      if (vault && !heardRevocation) {
        heardRevocation = true;
        connect();
      }
      return;
    }
    const hold = accountHold(c.reason);
    if (hold) {
      // Not again a second later (every attempt is refused until IT changes the account).
      heardHold(hold);
      checkHeldLater();
      return;
    }
    if (c.code === SESSION_REPLACED) {
      // A newer connection of this device (PROTOCOL §3.5): on a phone, another tab of the app
      // that took over, perhaps while this tab's page could not answer it (main.ts
      // "one tab at a time"). The page decides: it locks if that tab holds the keys now, else
      // asks for the connection again (the `reconnect` operation). Taking it back by itself
      // would cut the other tab off, and that tab would take it back in turn.
      event("connection", { state: "replaced", code: c.code, reason: c.reason });
      return;
    }
    if (vault) reconnect = setTimeout(() => void reconnectNow(refusedAsking), 1000);
  };
}

/** The page still holds the keys after its connection was replaced (see connect): connect
 * again, as after any lost connection. */
function reconnectAfterReplaced(): Record<string, unknown> {
  if (vault && !socket && !reconnect) reconnect = setTimeout(() => void reconnectNow(), 1000);
  return {};
}

/** Connect again, with a fresh access token when the relay gives one; `refusedAsking`: the
 * last attempt asked for bundles and the relay refused the websocket (see connect). */
async function reconnectNow(refusedAsking = false): Promise<void> {
  reconnect = null;
  if (!vault || !relay || !st) return;
  const r = relay;
  let reachable = false; // the relay answered (not out of reach, not restarting)
  try {
    await r.refresh();
    reachable = true;
  } catch (err) {
    // Locked meanwhile, or already answered (a signInAgain refused: locked, or listening for
    // a wipe order, or offering the hospital's sign-in).
    if (relay !== r || !vault || !st || socket || (err instanceof RelayError && err.code === "sso_required")) return;
    // Still held by IT (or held since the connection was lost: suspended, licence expired):
    // asked again later, never a connection the relay refuses (heardHold).
    const hold = err instanceof RelayError ? accountHold(err.code) : null;
    if (hold) {
      heardHold(hold);
      checkHeldLater();
      return;
    }
    reachable = err instanceof RelayError && err.status > 0 && err.status < 500;
    // The relay ended a single sign-on session (its lifetime is over, or the IdP's user was
    // disabled): only a new sign-in at the IdP opens another.
    if (st.sso && err instanceof RelayError && err.status === 401) {
      await forgetSession(st);
      event("signin", {});
      return;
    }
    // A password session the relay ended because the organisation signs on now.
    if (await nowSignsOn(st, err)) {
      event("signin", { signon: true });
      return;
    }
    if (!r.tokens) {
      // The relay ended the session. A refusal no sign-in here can answer is said once and
      // locks; a sign-in that did not get through is tried again later, never at once.
      if (err instanceof RelayError && err.status === 401 && !r.signInAgain) {
        sessionEnded();
        return;
      }
      retryLater();
      return;
    }
    /* the old token may still do; the relay says otherwise */
  }
  connect(!refusedAsking, reachable);
}

function sendFrame(ws: WebSocket, frame: Parameters<typeof encodeFrame>[0]): void {
  ws.send(encodeFrame(frame));
}

/**
 * One websocket message from the relay: each frame it carries (one, or a bundle's, PROTOCOL
 * §3.6) is handled exactly as if it had come alone, in order, each started as the browser
 * starts a message's handler (none waits for the one before). A bad frame, alone or inside a
 * bundle once the frames before it are handled, or a bundle the phone may not get here (the
 * relay did not select the subprotocol, or it came before `ready`), closes with 4000, the
 * decoder's code as the reason; the phone reconnects.
 */
function onMessage(ws: WebSocket, conn: Connection, data: Uint8Array): void {
  const { frames, error } = decodeMessage(data, conn);
  for (const frame of frames) {
    // A frame before it closed the connection: as the browser hands no message to a closing
    // socket, nothing after it is handled.
    if (ws.readyState !== WebSocket.OPEN) return;
    if (frame.t === "ready") conn.ready = true;
    // In words, never the relay's code or an exception's text; a delivery that failed here is
    // not acknowledged, so the relay brings it again with the next connection.
    void onFrame(ws, frame).catch((err) => event("problem", {
      code: (err as { code?: string }).code ?? "internal_error",
      message: inWords(err, "Something went wrong on the phone with what the relay sent. Tell IT if it happens again."),
    }));
  }
  if (error && ws.readyState === WebSocket.OPEN) ws.close(4000, error.code || "malformed_frame");
}

async function onFrame(ws: WebSocket, frame: ServerFrame): Promise<void> {
  switch (frame.t) {
    case "challenge": {
      const sig = s.ed25519Sign(st!.device_seed, challengeSigningBytes(frame["nonce"] as Uint8Array, relay!.tokens!.access_token));
      sendFrame(ws, { t: "auth", signature: sig });
      return;
    }
    case "ready":
      ready = true;
      signInTries = 0;
      notHeld();
      event("connection", { state: connectionState() });
      upkeep ??= setInterval(() => void maintainPrekeys().catch(() => undefined), PREKEY_UPKEEP_MS);
      void maintainPrekeys().catch(() => undefined); // tried again within the hour
      await sendQueuedReceipts(ws);
      void fetchMissingImages().catch(() => undefined);
      void resumeUploads().catch(() => undefined);
      await resendOutbox(ws);
      return;
    case "deliver":
      await onDeliver(ws, frame);
      return;
    case "accepted":
    case "error": {
      const reqId = frame["req_id"] as string | null;
      const w = reqId ? waiting.get(reqId) : undefined;
      if (w) {
        waiting.delete(reqId!);
        w.resolve(frame);
      } else if (frame.t === "error" && frame["fatal"] && !accountHold(String(frame["code"]))) {
        // In words, never the relay's raw detail ("no pong", "idle"); a suspension or an
        // expired licence is said by the banner, once, when the relay closes (heardHold).
        event("problem", { code: frame["code"], message: connectionLostSentence(String(frame["code"])), connection: true });
      }
      return;
    }
    case "ping":
      sendFrame(ws, { t: "pong", nonce: frame["nonce"] as Uint8Array });
      return;
    case "expire_order":
      await onExpireOrder(ws, frame);
      return;
    case "escalation_notice":
      await onEscalationNotice(frame);
      return;
    case "filed_notice":
      await onFiledNotice(frame);
      return;
    case "receipt_notice":
      await onReceiptNotice(frame);
      return;
    case "wipe_order":
      await onWipeOrder(ws, frame);
      return;
    case "withdrawn":
      await onWithdrawn(frame);
      return;
    case "not_received":
      await onNotReceived(frame);
      return;
    case "revoked":
      revocationsAt = -Infinity; // someone was revoked: the list is fetched before the next check
      return;
    case "keys_low":
      await replenishPrekeys(Number(frame["target"]) - Number(frame["remaining"]));
      return;
    default:
      return; // known frames the phone does not act on yet (PROTOCOL §3.3)
  }
}

/**
 * The organisation's revocation list (PROTOCOL §4.5, as clients/sdk/trust.py): the newest one
 * signed by the pinned organisation key, never older than the one this phone already holds (a
 * relay serving an older list, or another with the same number, is refused: rollback), kept
 * in the vault, fetched again after 30 s or on a `revoked` notice.
 */
async function revocations(): Promise<certs.RevocationSet> {
  if (revocationSet && now() - revocationsAt < REVOCATIONS_MAX_AGE) return revocationSet;
  const held = new certs.RevocationSet();
  if (st!.revocation_list) held.add(certs.verifyRevocationList(st!.revocation_list, pinned()));
  let newest = st!.revocation_list ?? null;
  const served = await relay!.call<{ lists: string[] }>("GET", "/v1/revocations", undefined, false);
  for (const token of served.lists) {
    let org: unknown;
    try {
      org = (peekCompact(token) as Record<string, unknown>)["org_id"];
    } catch {
      continue; // not even a list: another organisation's business at most
    }
    if (org !== st!.org_id) continue;
    try {
      if (held.add(certs.verifyRevocationList(token, pinned()))) newest = token;
    } catch {
      throw new UserError("revocation_rollback", "The relay served an out-of-date or forged revocation list: nothing was sent or shown. Tell IT.");
    }
  }
  if (newest !== (st!.revocation_list ?? null)) {
    st!.revocation_list = newest;
    await vault!.put("state", st);
  }
  revocationSet = held;
  revocationsAt = now();
  return held;
}

/** A chain verified against the pinned key and the current revocation list (§4.6). */
async function chain(userCert: string, deviceCert: string): Promise<certs.VerifiedDevice> {
  const held = await revocations();
  try {
    return certs.verifyChain(userCert, deviceCert, pinned(), now(), held);
  } catch (err) {
    const code = (err as ProtocolError).code ?? "certificate_invalid";
    throw new UserError(code, code === "certificate_revoked"
      ? "The relay offered a certificate your organisation has revoked: nothing was sent to it or shown from it. Tell IT."
      : "A certificate from the relay does not verify: nothing was sent to it or shown from it. Tell IT.");
  }
}

/** A sender's device that no longer verifies: ``sender`` names them when their user
 * certificate still does (only the device was revoked), so the reader can ask what they sent. */
class SenderRefused extends UserError {
  constructor(code: string, message: string, readonly sender: string | null = null) {
    super(code, message);
  }
}

async function senderChain(userId: string, deviceId: string): Promise<certs.VerifiedDevice> {
  const answer = await relay!.call<{ user_certificate: string; devices: { device_certificate: string }[] }>("GET", `/v1/users/${userId}/devices`);
  for (const dev of answer.devices) {
    const vd = await chain(answer.user_certificate, dev.device_certificate);
    if (vd.deviceId === deviceId) return vd;
  }
  if ((await revocations()).entry(st!.org_id, "device", deviceId)) {
    let name: string | null = null;
    try {
      const user = certs.verifyUserCertificate(answer.user_certificate, pinned(), now(), null);
      if (user.user_id === userId) name = user.display_name;
    } catch {
      // a certificate that does not verify names nobody
    }
    throw new SenderRefused("certificate_revoked", "the sender's device is revoked", name);
  }
  throw new UserError("certificate_invalid", "the sender's device is unknown");
}

async function onDeliver(ws: WebSocket, frame: ServerFrame): Promise<void> {
  const sealed = frame["message"] as env.SealedMessage;
  const h = sealed.header;
  const seenKey = `seen:${h.sender_device_id}:${h.message_id}`;
  if (!(await vault!.get(seenKey))) {
    let sender: certs.VerifiedDevice;
    try {
      sender = await senderChain(h.sender_user_id, h.sender_device_id);
    } catch (err) {
      // An unreachable relay: not acknowledged, so delivered again. A sender that does not
      // verify (revoked, unknown, or a list rolled back): dropped, as clients/sdk/receiving.py.
      if (err instanceof RelayError && (err.status === 0 || err.status >= 500)) throw err;
      const code = (err as { code?: string }).code ?? "certificate_invalid";
      const thread = await vault!.get<ThreadRecord>(`thread:${h.thread_id}`);
      // A suspended colleague the directory no longer names: named only if this consult
      // already holds a message of theirs.
      const earlier = code === "user_suspended"
        ? thread?.messages.find((m) => m.from_user_id === h.sender_user_id)?.from_name ?? null
        : null;
      event("dropped", {
        code,
        // Which consult: by its subject, as the phone lists it and names it elsewhere
        // (onNotReceived); one it does not hold, or without a subject, by the start of its id,
        // as the CLI's line (clients/clinician/shell.py problem_line).
        consult: thread?.subject ? `consult "${thread.subject}"` : `consult ${h.thread_id.slice(0, 8)}`,
        sender: err instanceof SenderRefused ? err.sender : earlier,
        urgent: frame["priority"] === "urgent",
        received_at: frame["received_at"],
      });
      sendFrame(ws, { t: "ack", delivery_ids: [frame["delivery_id"] as string] });
      return;
    }
    const store = new keys.MemoryPrekeyStore(
      st!.signed_prekeys.map((p) => ({ prekeyId: p.id, keypair: keys.x25519FromSecret(p.secret) })),
      st!.one_time_prekeys.map((p) => ({ prekeyId: p.id, keypair: keys.x25519FromSecret(p.secret) })),
    );
    const plain = await env.openMessage(sealed, deviceKeys(), store, sender, new env.MemorySeenSet());
    const used = env.wrappedKeyFor(sealed, st!.device_id)?.one_time_prekey_id;
    if (used !== null && used !== undefined) {
      st!.one_time_prekeys = st!.one_time_prekeys.filter((p) => p.id !== used); // forward secrecy (§5.3)
      await vault!.put("state", st);
    }
    const body = decodeBody(plain);
    const content = contentOf(body, h.priority, h.purpose);
    if (body.kind === "text" || body.kind === "subject") await vault!.put(`content:${h.message_id}`, content);
    const view: MessageView = {
      message_id: h.message_id, thread_id: h.thread_id, from_user_id: h.sender_user_id, from_name: sender.user.display_name,
      from_device_id: h.sender_device_id,
      mine: false, text: body.text, subject: body.subject, sent_at: h.sent_at, status: "received",
      thread_seq: frame["thread_seq"] as number, read: false,
    };
    const claim = body.handover_of;
    // A handed-over copy's author by name, from the network, outside the thread's change.
    let authorName: string | null = null;
    if (claim && claim.sender_user_id !== h.sender_user_id) {
      try {
        authorName = await displayName(claim.sender_user_id);
      } catch {
        authorName = null; // named from the consult below, else by a shortened id
      }
    }
    const photo = body.kind === "text" ? body.attachments[0] : undefined;
    // What the original this phone holds carries, to check a handed-over copy's content by.
    const original = claim ? await vault!.get<Content>(`content:${claim.message_id}`) : undefined;
    await changingThread(h.thread_id, async () => {
      const thread = (await vault!.get<ThreadRecord>(`thread:${h.thread_id}`)) ?? { thread_id: h.thread_id, role: null, subject: null, priority: h.priority, messages: [] };
      if (photo) {
        // Kept until the photo is fetched (or refused, or expired): its key is in the descriptor.
        view.attachment_id = photo.attachment_id;
        view.image_state = (await vault!.get(`expired:${photo.attachment_id}`)) ? "expired" : "fetching";
        if (view.image_state === "fetching") {
          await vault!.put(`incoming:${photo.attachment_id}`, {
            descriptor: photo, consent_token: body.consent_token, emergency: h.emergency, thread_id: h.thread_id, message_id: h.message_id,
            sender_user_id: h.sender_user_id, sender_org: sender.orgId, sender_user_certificate: sender.user,
          } satisfies Incoming);
        }
      }
      // The thread's subject is its first message's, as the desktop and `lightbox threads`
      // show it (clients/desktop/app.py threads, clients/clinician/reading.py subject).
      if (body.subject && !thread.subject) thread.subject = body.subject;
      // The consult's patients learnt from a photo received as from one sent (patients.ts).
      if (body.kind === "text") learnPatient(thread, body.record);
      if (claim) {
        handedOver(view, claim, thread, sender.user.display_name, authorName, original, content);
        oneCopyShown(view, claim, thread);
      }
      if (body.kind === "text" || body.kind === "subject") thread.messages.push(view);
      if (body.kind === "consent_filed" && body.consent_filing && sender.user.roles.includes(certs.ROLE_RECORD_GATEWAY) && sender.device.kind === "gateway") {
        const f = body.consent_filing as { message_id?: string; study_instance_uid?: string | null };
        for (const m of thread.messages) {
          if (m.mine && m.message_id === f.message_id) m.filed = { study_instance_uid: f.study_instance_uid ?? null, record_ref: null, expires_at: null };
        }
      }
      if (body.kind === "filing_receipt" && body.filing && sender.user.roles.includes(certs.ROLE_RECORD_GATEWAY)) {
        const f = body.filing as { attachment_id?: string; study_instance_uid?: string; record_ref?: string };
        for (const m of thread.messages) {
          if (m.mine && m.attachment_id === f.attachment_id) {
            m.filed = { study_instance_uid: f.study_instance_uid ?? null, record_ref: f.record_ref ?? null, expires_at: m.filed?.expires_at ?? null };
          }
        }
      }
      await vault!.put(`thread:${h.thread_id}`, thread);
    });
    await vault!.put(seenKey, 1);
    // Stored first, then the signed receipt (clients/sdk/receiving.py; PROTOCOL §8, §16.6).
    await queueReceipt(h.message_id, h.thread_id, "delivered");
    if (photo && view.image_state === "fetching") void fetchImage(photo.attachment_id);
    // Another copy of a consult shown already: no new message to announce, only its line.
    event(view.copy_of ? "copy" : body.kind === "text" || body.kind === "subject" ? "message" : "filed", { message: view });
  }
  sendFrame(ws, { t: "ack", delivery_ids: [frame["delivery_id"] as string] });
}

/**
 * An expiry order (PROTOCOL §15): shred the photo (its vault record) first, then confirm with a
 * signed statement. An order for a photo this phone never held is confirmed all the same.
 */
async function onExpireOrder(ws: WebSocket, frame: ServerFrame): Promise<void> {
  const aid = frame["attachment_id"] as string;
  // A tombstone first, so that no delivery or download arriving later stores it; the key of a
  // photo never fetched goes with its descriptor (clients/sdk/notices.py).
  await vault!.put(`expired:${aid}`, now());
  await vault!.delete(`incoming:${aid}`);
  await vault!.delete(`image:${aid}`);
  await updateThread(frame["thread_id"] as string, (thread) => {
    for (const m of thread.messages) {
      if (m.attachment_id !== aid) continue;
      m.image_state = "expired";
      // A withdrawn consent is remembered with the relay's time and shown (PROTOCOL §13).
      if (frame["reason"] === "consent_revoked") m.withdrawn_at ??= frame["issued_at"] as number;
    }
    return true;
  });
  const statement = issueExpiryConfirmation(
    { v: 1, device_id: st!.device_id, attachment_id: aid, order_id: frame["order_id"] as string, shredded_at: now() },
    st!.device_seed,
  );
  sendFrame(ws, { t: "expiry_confirm", req_id: null, statement });
  event("expired", { attachment_id: aid, reason: frame["reason"] });
}

/** One of our messages was withdrawn before delivery (its consent was revoked, or we were):
 * shown as such; its photo's copies are erased by the expiry orders that follow (§13). */
async function onWithdrawn(frame: ServerFrame): Promise<void> {
  const changed = await updateThread(frame["thread_id"] as string, (thread) => {
    const message = thread.messages.find((m) => m.message_id === frame["message_id"]);
    if (!message || message.withdrawn_at) return false;
    message.withdrawn_at = frame["at"] as number;
    message.withdrawn_reason = frame["reason"] as string;
    return true;
  });
  if (changed) event("withdrawn", { message_id: frame["message_id"] as string });
}

// --- photos other clinicians send (PROTOCOL §6, §7.4; clients/sdk/receiving.py) ------------------

/** What the vault keeps of a received photo until it is fetched: the descriptor (its key). */
interface Incoming {
  descriptor: AttachmentDescriptor;
  consent_token: string | null;
  emergency: string | null;
  thread_id: string;
  message_id: string;
  sender_user_id: string;
  sender_org: string;
  sender_user_certificate: certs.UserCertificate;
}

class ImageRefused extends Error {
  constructor(
    message: string,
    readonly reason: "image_not_named" | "token_invalid" = "token_invalid",
  ) {
    super(message);
  }
}

const fetching = new Set<string>();

/**
 * Download, decrypt (the descriptor's size and SHA-256 checked) and consent-check a photo
 * another clinician sent, then keep it in the vault like the phone's own: the token must
 * verify under its issuer's identity key, be the consent the message named, record an
 * agreement and name this photo's hash (clients/sdk/attachments.py check_image_consent); a
 * mismatch is reported to the relay and the photo is not shown. An emergency photo without
 * consent is kept only from a colleague of this organisation (PROTOCOL §17).
 */
async function fetchImage(aid: string): Promise<void> {
  if (fetching.has(aid) || !vault) return;
  fetching.add(aid);
  try {
    const job = await vault.get<Incoming>(`incoming:${aid}`);
    if (!job) return;
    let state: "held" | "refused" | "failed" | "expired" | "withdrawn" = "held";
    let reason = "";
    try {
      const d = job.descriptor;
      const blob = await relay!.bytes(`/v1/attachments/${aid}`, ciphertextSize(d.size));
      let image: Uint8Array;
      try {
        image = decryptAttachment(blob, d.key, { sha256: d.sha256, size: d.size });
      } catch {
        throw new ImageRefused("the photo does not decrypt or match its description");
      }
      if (job.consent_token === null) {
        if (job.emergency === null) throw new ImageRefused("the photo came without a consent");
        if (job.sender_org !== st!.org_id) throw new ImageRefused("an emergency photo without consent came from another organisation");
      } else {
        await checkImageConsent(image, job);
      }
      if (await vault.get(`expired:${aid}`)) {
        state = "expired"; // its expiry order came while it was downloading
      } else {
        await vault.put(`image:${aid}`, image);
      }
    } catch (err) {
      if (err instanceof ImageRefused) {
        state = "refused";
        reason = err.message;
      } else if (err instanceof RelayError && err.code === "attachment_expired") {
        state = "expired";
      } else if (err instanceof RelayError && err.code === "consent_revoked") {
        // The patient withdrew consent before it was downloaded: never retried; its expiry
        // order, when it comes, is confirmed as for any photo (PROTOCOL §13).
        state = "withdrawn";
      } else {
        state = "failed"; // kept: tried again when the connection is next ready
        reason = "The photo could not be downloaded yet; the app tries again when it reconnects.";
      }
    }
    if (state !== "failed") await vault.delete(`incoming:${aid}`);
    await setImageState(job.thread_id, aid, state, reason);
  } finally {
    fetching.delete(aid);
  }
}

async function checkImageConsent(image: Uint8Array, job: Incoming): Promise<void> {
  let consentId: string;
  try {
    consentId = peekConsentTokenUnverified(job.consent_token!).jti;
  } catch {
    throw new ImageRefused("the consent with the photo is malformed");
  }
  const info = await relay!.call<{ token: string }>("GET", `/v1/consents/${consentId}`);
  try {
    const iss = peekConsentTokenUnverified(info.token).iss;
    const issuer = iss === job.sender_user_id ? job.sender_user_certificate
      : certs.verifyUserCertificate((await relay!.call<{ user_certificate: string }>("GET", `/v1/users/${iss}/devices`)).user_certificate, pinned(), now(), null);
    let claims: ConsentClaims;
    try {
      claims = verifyConsentToken(info.token, d(issuer.identity_key, { length: 32 }), now(), 60);
    } catch {
      throw new ImageRefused("the consent does not verify");
    }
    if (claims.iss !== issuer.user_id || claims.org !== issuer.org_id) throw new ImageRefused("the consent was not issued by its signer");
    if (claims.jti !== consentId) throw new ImageRefused("the message names another consent than this token");
    if (claims.decision !== "agreed") throw new ImageRefused("the patient refused consent for this photo");
    if (!claims.images.includes(imageHash(image))) throw new ImageRefused("the photo is not one the patient was shown and agreed to", "image_not_named");
  } catch (err) {
    if (err instanceof ImageRefused) {
      await relay!.call("POST", `/v1/consents/${consentId}/mismatch`, { message_id: job.message_id, attachment_id: job.descriptor.attachment_id, reason: err.reason }).catch(() => undefined);
    }
    throw err;
  }
}

async function setImageState(threadId: string, aid: string, state: NonNullable<MessageView["image_state"]>, reason = ""): Promise<void> {
  const changed = await updateThread(threadId, (thread) => {
    for (const m of thread.messages) {
      if (m.attachment_id === aid && m.image_state !== "expired") {
        m.image_state = state;
        m.image_note = reason || null;
      }
    }
    return true;
  });
  if (changed) event("image", { attachment_id: aid, state });
}

async function fetchMissingImages(): Promise<void> {
  for (const name of await vault!.names("incoming:")) await fetchImage(name.slice("incoming:".length));
}

/** A user's name, from their certificate verified against the pinned organisation key. */
/** What a consult carries, as a copy handed over at a shift change must keep it (HAZ-02 C20;
 * clients/sdk/handover.py `same_content`): digests of its body but for `handover_of` and the
 * images, and of each image with its flags; its header's priority and purpose. Kept in the
 * vault under `content:<message id>` for each consult sent or received. */
interface Content { rest: string; images: string[]; priority: string; purpose: string }

function contentOf(body: Body, priority: string, purpose: string): Content {
  const parts = handoverParts(body);
  return { rest: hex(s.sha256(parts.rest)), images: parts.images.map((x) => hex(s.sha256(x))), priority, purpose };
}

/** A copy carries the original's content but for what a reseal changes: its `handover_of`, and
 * images the resealing device no longer held (expired there), dropped with their flags. */
function sameContent(original: Content, copy: Content): boolean {
  const kept = original.images.filter((x) => copy.images.includes(x));
  return original.rest === copy.rest && original.priority === copy.priority && original.purpose === copy.purpose
    && kept.length === copy.images.length && kept.every((x, i) => x === copy.images[i]);
}

/** A consult handed over at a shift change (PROTOCOL.md §16.4): shown as its author wrote it,
 * when they did, and told as handed over by whose device. The claim is checked against the
 * original when this phone holds it (same message id), and the copy's content with it (HAZ-02
 * C20: `original`, what the original carries, and `content`, the copy's), else taken as fact
 * only when the author's own device sealed it again (clients/sdk/handover.py does the same). */
function handedOver(view: MessageView, claim: HandoverOf, thread: ThreadRecord, resealer: string, authorName: string | null,
  original: Content | undefined, content: Content): void {
  const held = thread.messages.find((m) => m.message_id === claim.message_id && m.message_id !== view.message_id);
  // (this phone's own copy keeps when it was written, not its signed time: not compared)
  const misclaimed = held !== undefined && !(held.from_user_id === claim.sender_user_id
    && (held.mine ? st!.device_id : held.from_device_id ?? claim.sender_device_id) === claim.sender_device_id && (held.mine || held.sent_at === claim.sent_at));
  // An original kept before this phone kept what it carries: its subject and text, as shown.
  const altered = held !== undefined && (original
    ? !sameContent(original, content) : held.text !== view.text || (held.subject ?? null) !== (view.subject ?? null));
  const confirmed = held
    ? !misclaimed && !altered
    : view.from_user_id === claim.sender_user_id && view.from_device_id === claim.sender_device_id;
  const byAuthor = view.from_user_id === claim.sender_user_id;
  view.handover = { resealed_by: resealer, resealed_at: view.sent_at, confirmed, contradicted: held !== undefined && !confirmed, misclaimed, altered, by_author: byAuthor };
  view.from_name = byAuthor ? resealer : authorName
    ?? thread.messages.find((m) => m.from_user_id === claim.sender_user_id)?.from_name ?? `user ${claim.sender_user_id.slice(0, 8)}`;
  view.from_user_id = claim.sender_user_id;
  view.from_device_id = claim.sender_device_id;
  view.sent_at = claim.sent_at;
}

async function displayName(userId: string): Promise<string> {
  const answer = await relay!.call<{ user_certificate: string }>("GET", `/v1/users/${userId}/devices`);
  return certs.verifyUserCertificate(answer.user_certificate, pinned(), now(), null).display_name;
}

/** A person never received the photo of one of our consults on any device before its copies
 * expired (PROTOCOL §15 "Never received"): kept on the message, told once; named from their
 * verified certificate, the record reference from the gateway's receipt this phone holds. */
async function onNotReceived(frame: ServerFrame): Promise<void> {
  const userId = frame["user_id"] as string;
  let name: string;
  try {
    name = await displayName(userId);
  } catch {
    name = userId.slice(0, 8);
  }
  const changed = await updateThread(frame["thread_id"] as string, (thread) => {
    const message = thread.messages.find((m) => m.message_id === frame["message_id"]);
    if (!message) return false;
    message.not_received ??= [];
    if (message.not_received.some((n) => n.user_id === userId)) return false;
    message.not_received.push({
      user_id: userId, name, consult: thread.subject ? `consult "${thread.subject}"` : "this consult",
      reason: frame["reason"] as string, record_ref: message.filed?.record_ref ?? null, at: frame["at"] as number,
    });
    return true;
  });
  if (changed) event("not_received", { message_id: frame["message_id"] as string });
}

/** An escalation step of one of our consults: who was re-notified, or reached next. */
async function onEscalationNotice(frame: ServerFrame): Promise<void> {
  const ours = (thread: ThreadRecord | undefined) => thread?.messages.find((m) => m.message_id === frame["message_id"]);
  if (!ours(await vault!.get<ThreadRecord>(`thread:${frame["thread_id"] as string}`))) return;
  // The name first, from the network, outside the thread's change (see changingThread).
  let name: string;
  try {
    name = await displayName(frame["user_id"] as string);
  } catch {
    name = "someone on the rota";
  }
  const step = frame["step"] as number;
  const changed = await updateThread(frame["thread_id"] as string, (thread) => {
    const message = ours(thread);
    if (!message) return false;
    message.escalation ??= [];
    if (message.escalation.some((s2) => s2.step === step)) return false;
    const next = frame["next_shift_at"];  // no_shift only (PROTOCOL §16.4): absent when the rota has none
    message.escalation.push({ step, kind: frame["kind"] as "renotify", level: frame["level"] as number, name, at: frame["at"] as number, next_shift_at: typeof next === "number" ? next : null });
    return true;
  });
  if (changed) event("escalation", { message_id: frame["message_id"] as string });
}

/** The relay's word that a photo is in the record: this phone's copy expires at `expires_at`. */
async function onFiledNotice(frame: ServerFrame): Promise<void> {
  const changed = await updateThread(frame["thread_id"] as string, (thread) => {
    for (const m of thread.messages) {
      if (m.attachment_id === frame["attachment_id"]) {
        m.filed = { study_instance_uid: m.filed?.study_instance_uid ?? null, record_ref: (frame["record_ref"] as string | null) ?? m.filed?.record_ref ?? null, expires_at: frame["expires_at"] as number };
      }
    }
    return true;
  });
  if (changed) event("filed", { attachment_id: frame["attachment_id"] });
}

/** A recipient's receipt for one of our messages, shown only once its statement verifies under
 * that device's certified key and names the message (PROTOCOL §16.6). */
async function onReceiptNotice(frame: ServerFrame): Promise<void> {
  let body: ReturnType<typeof verifyReceiptStatement>;
  let name: string;
  try {
    const device = await senderChain(frame["user_id"] as string, frame["device_id"] as string);
    body = verifyReceiptStatement(frame["statement"] as string, device.signingKey, device.deviceId);
    if (body.message_id !== frame["message_id"] || body.kind !== frame["kind"]) throw new UserError("verification_failed", "receipt names another message");
    name = device.user.display_name;
    // The other participants' receipts only: the user's own other devices (a linked desktop)
    // sign "delivered" and "read" of it too, but they are no recipient to tell of (the desktop
    // and `lightbox watch` leave them out too).
    if (device.userId === st!.user_id) return;
  } catch {
    return; // an unverifiable receipt is not shown (and is the relay's to explain)
  }
  const changed = await updateThread(body.thread_id, (thread) => {
    const message = thread.messages.find((m) => m.message_id === body.message_id && m.mine);
    if (!message) return false;
    message.receipts ??= [];
    if (message.receipts.some((r) => r.kind === body.kind && r.name === name)) return false;
    message.receipts.push({ kind: body.kind, name, at: body.at });
    return true;
  });
  if (changed) event("receipt", { message_id: body.message_id, kind: body.kind });
}

/**
 * A wipe order (PROTOCOL §15 "Wipe"), obeyed only when the organisation-signed revocation list
 * it carries verifies under the pinned organisation key and names this device with wipe, in an
 * entry not older than this device's certificate (an old list replayed after a re-enrolment is
 * refused). Then: sign the confirmation (the key's last use), erase the vault, send it.
 */
async function onWipeOrder(ws: WebSocket, frame: ServerFrame): Promise<void> {
  let revokedAt: number;
  try {
    const list = certs.verifyRevocationList(frame["revocation"] as string, pinned());
    const mine = list.entries.find((e2) => e2.subject === "device" && e2.id === st!.device_id && e2.wipe);
    const issued = (certs.verifyDeviceCertificate(st!.device_certificate, certs.verifyUserCertificate(st!.user_certificate, pinned(), list.issued_at, null), list.issued_at, null)).issued_at;
    if (!mine || list.org_id !== st!.org_id || mine.revoked_at < issued) throw new UserError("replayed", "an order this device does not obey");
    revokedAt = mine.revoked_at;
  } catch (err) {
    event("problem", { code: (err as { code?: string }).code ?? "verification_failed", message: "The relay sent a wipe order that does not verify; it was ignored." });
    ws.close(4000, "verification_failed");
    return;
  }
  const statement = issueWipeConfirmation({ v: 1, device_id: st!.device_id, order_id: frame["order_id"] as string, wiped_at: now() }, st!.device_seed);
  socket = null; // the relay closes this connection next: nothing to reconnect to
  lockKeys();
  await Vault.erase();
  ws.send(encodeFrame({ t: "wipe_confirm", statement }));
  event("wiped", { revoked_at: revokedAt });
}

// --- prekey upkeep (PROTOCOL §4.4; clients/sdk/prekeys.py, identity.py) --------------------------

function nextPrekeyId(): number {
  // Enrolment used ids 1..1+ONE_TIME_PREKEYS: an older vault starts after those and its own.
  const known = [...st!.signed_prekeys, ...st!.one_time_prekeys].map((p) => p.id);
  return st!.next_prekey_id ?? Math.max(2 + ONE_TIME_PREKEYS, ...known.map((id) => id + 1));
}

/** The relay's `keys_low`: make `count` one-time prekeys, keep their secrets in the vault
 * first (never a published key without its secret), then upload them in batches. */
async function replenishPrekeys(count: number): Promise<void> {
  if (!Number.isInteger(count) || count <= 0) return;
  const first = nextPrekeyId();
  const made = Array.from({ length: count }, (_, i) => keys.generatePrekey(first + i));
  st!.one_time_prekeys.push(...made.map((p) => ({ id: p.prekeyId, secret: p.keypair.secret })));
  st!.next_prekey_id = first + count;
  await vault!.put("state", st);
  const tokens = made.map((p) => certs.issueOneTimePrekey({ device_id: st!.device_id, prekey_id: p.prekeyId, public: e(p.keypair.public) }, st!.device_seed));
  for (let i = 0; i < tokens.length; i += MAX_PREKEY_BATCH) {
    await relay!.call("POST", "/v1/keys/one-time", { prekeys: tokens.slice(i, i + MAX_PREKEY_BATCH) });
  }
}

/**
 * Rotate the signed prekey when due (saved before it is uploaded), or upload the newest again
 * if the relay serves another (an upload cut short); then delete the secrets of those replaced
 * more than the keep period ago (forward secrecy for messages sealed without a one-time key).
 */
async function maintainPrekeys(t: number = now()): Promise<void> {
  if (!st || !relay) return;
  if (rotationDue(st.signed_prekeys, t, DEFAULT_POLICY)) {
    const id = nextPrekeyId();
    const pk = keys.generatePrekey(id);
    st.signed_prekeys.push({ id, secret: pk.keypair.secret, created_at: t });
    st.next_prekey_id = id + 1;
    await vault!.put("state", st);
    await uploadSignedPrekey(id, pk.keypair.public, t);
  } else {
    const newest = newestSignedPrekey(st.signed_prekeys)!;
    const answer = await relay.call<{ devices: { device_certificate: string; signed_prekey: string | null }[] }>("GET", `/v1/users/${st.user_id}/devices`);
    const field = (token: string | null | undefined, name: string): unknown => {
      try {
        return token ? (peekCompact(token) as Record<string, unknown>)[name] : undefined;
      } catch {
        return undefined; // unreadable: uploaded again
      }
    };
    const served = answer.devices.find((dv) => field(dv.device_certificate, "device_id") === st!.device_id)?.signed_prekey;
    if (field(served, "prekey_id") !== newest.id) {
      await uploadSignedPrekey(newest.id, keys.x25519FromSecret(newest.secret).public, newest.created_at ?? t);
    }
  }
  const kept = keptSignedPrekeys(st.signed_prekeys, t, DEFAULT_POLICY);
  if (kept.length !== st.signed_prekeys.length) {
    for (const p of st.signed_prekeys) if (!kept.includes(p)) p.secret.fill(0);
    st.signed_prekeys = kept;
    await vault!.put("state", st);
  }
}

async function uploadSignedPrekey(id: number, pub: Uint8Array, createdAt: number): Promise<void> {
  const token = certs.issueSignedPrekey({ device_id: st!.device_id, prekey_id: id, public: e(pub), created_at: createdAt }, st!.device_seed);
  await relay!.call("PUT", "/v1/keys/signed-prekey", { signed_prekey: token });
}

// --- receipts this phone signs (PROTOCOL §8, §16.6) -----------------------------------------------

/**
 * Sign a receipt for a message this phone received and send it; kept in the vault until it
 * has left on an open connection (a receipt sent twice is queued once by the relay, §3.5).
 */
async function queueReceipt(messageId: string, threadId: string, kind: ReceiptKind): Promise<void> {
  const statement = issueReceiptStatement({ v: 1, device_id: st!.device_id, message_id: messageId, thread_id: threadId, kind, at: now() }, st!.device_seed);
  const key = `receipt:${messageId}:${kind}`;
  await vault!.put(key, statement);
  const ws = socket;
  if (ws && ws.readyState === WebSocket.OPEN) await sendReceipt(ws, key, statement);
}

async function sendReceipt(ws: WebSocket, key: string, statement: string): Promise<void> {
  sendFrame(ws, { t: "receipt", req_id: null, statement });
  await vault!.delete(key);
}

async function sendQueuedReceipts(ws: WebSocket): Promise<void> {
  for (const key of await vault!.names("receipt:")) {
    const statement = await vault!.get<string>(key);
    if (statement) await sendReceipt(ws, key, statement);
  }
}

/** The intern has seen a thread's messages: each unread one gets a signed `read` receipt, and
 * the relay's unread counter moves to the newest (clients/sdk/receiving.py mark_read). */
async function markRead(args: { thread_id: string }): Promise<{ read: number }> {
  let unread: MessageView[] = [];
  let seq = 0;
  const marked = await updateThread(args.thread_id, (thread) => {
    unread = thread.messages.filter((m) => !m.mine && m.read === false);
    for (const m of unread) m.read = true;
    seq = Math.max(0, ...thread.messages.map((m) => m.thread_seq ?? 0));
    return unread.length > 0;
  });
  if (!marked) return { read: 0 };
  for (const m of unread) await queueReceipt(m.message_id, m.thread_id, "read");
  if (seq) await relay!.call("POST", `/v1/threads/${args.thread_id}/read`, { seq }).catch(() => undefined);
  return { read: unread.length };
}

// --- sending -------------------------------------------------------------------------------------

/** The organisation's record gateways, when its policy requires them on an image (§15). */
async function gatewayDevices(evenIfOptional = false): Promise<Map<string, certs.VerifiedDevice>> {
  const found = new Map<string, certs.VerifiedDevice>();
  const list = await relay!.call<{ users: { user_certificate: string; devices: { device_certificate: string }[] }[]; required: boolean }>("GET", "/v1/filing/gateways");
  if (!list.required && !evenIfOptional) return found;
  for (const u of list.users) {
    for (const dev of u.devices) {
      const vd = await chain(u.user_certificate, dev.device_certificate);
      if (vd.user.account_kind !== "service" || !vd.user.roles.includes(certs.ROLE_RECORD_GATEWAY) || vd.device.kind !== "gateway") {
        throw new UserError("certificate_invalid", "The relay named a record gateway that is not one.");
      }
      found.set(vd.deviceId, vd);
    }
  }
  return found;
}

/** A role nobody in this organisation holds and with no on-call rota (clients/clinician/
 * sending.py check_roles): refused in words, with the closest role of the organisation the
 * directory knows; null for a real role, or when the relay cannot tell now. */
async function unknownRole(role: string): Promise<UserError | null> {
  try {
    await relay!.call("GET", `/v1/oncall/${encodeURIComponent(role)}`);
    return null; // it has a rota
  } catch (err) {
    if (!(err instanceof RelayError && err.code === "role_unknown")) return null;
  }
  // Roles of colleagues whose name shares the role's first word (its last letter left off, so
  // "orthopaedic" finds "orthopaedics").
  const word = role.split("_")[0] ?? "";
  const near = new Set<string>();
  if (word.length >= 2) {
    try {
      const found = await relay!.call<{ users: { org_id: string; roles: string[] }[] }>("GET", `/v1/directory?q=${encodeURIComponent(word.slice(0, Math.max(2, word.length - 1)))}`);
      for (const u of found.users) if (u.org_id === st!.org_id) for (const r of u.roles) near.add(r);
    } catch {
      return null; // cannot tell
    }
  }
  if (near.has(role)) return null; // held, by nobody with a device yet
  const guess = [...near].map((r) => [similarity(role, r), r] as const).filter(([x]) => x >= 0.7).sort((x, y) => y[0] - x[0] || (x[1] < y[1] ? -1 : 1))[0]?.[1];
  return new UserError("role_unknown", `Nobody in your organisation holds the role ${role}${guess ? ` (did you mean ${guess}?)` : ""}: check its spelling. Nothing was sent.`);
}

/** How alike two names are, 0..1: twice their longest common subsequence over their lengths
 * (the measure of difflib's close matches, with its cut-off of 0.7, clients/clinician/sending.py). */
function similarity(a: string, b: string): number {
  const row = new Array<number>(b.length + 1).fill(0);
  for (let i = 1; i <= a.length; i++) {
    let diag = 0;
    for (let j = 1; j <= b.length; j++) {
      const up = row[j]!;
      row[j] = a[i - 1] === b[j - 1] ? diag + 1 : Math.max(row[j]!, row[j - 1]!);
      diag = up;
    }
  }
  return a.length + b.length ? (2 * row[b.length]!) / (a.length + b.length) : 0;
}

async function recipients(threadId: string, extra: Map<string, certs.VerifiedDevice> = new Map(), role: string | null = null): Promise<env.RecipientBundle[]> {
  const answer = await relay!.call<{ users: { user_certificate: string; devices: { device_certificate: string }[] }[] }>("GET", `/v1/threads/${threadId}/recipients`);
  const devices = new Map<string, certs.VerifiedDevice>();
  for (const u of answer.users) {
    for (const dev of u.devices) {
      const vd = await chain(u.user_certificate, dev.device_certificate);
      if (vd.deviceId !== st!.device_id) devices.set(vd.deviceId, vd);
    }
  }
  if (!devices.size) throw (role ? await unknownRole(role) : null) ?? new UserError("device_set_mismatch", "Nobody on call has a device that can receive the consult yet.");
  for (const [id, vd] of extra) devices.set(id, vd);
  const wanted = [...devices.keys()].sort();
  const claimed = await relay!.call<{ keys: { device_id: string; user_certificate: string; device_certificate: string; signed_prekey: string; one_time_prekey: string | null }[] }>(
    "POST", "/v1/keys/claim", { devices: wanted });
  const bundles = new Map<string, env.RecipientBundle>();
  for (const k of claimed.keys) {
    const known = devices.get(k.device_id);
    if (!known) throw new UserError("certificate_invalid", "The relay answered for a device the phone did not ask for.");
    const vd = await chain(k.user_certificate, k.device_certificate);
    if (e(vd.signingKey) !== e(known.signingKey)) throw new UserError("certificate_invalid", "The relay served two certificates for one device.");
    bundles.set(k.device_id, env.bundleFromTokens(vd, k.signed_prekey, k.one_time_prekey));
  }
  if (bundles.size !== wanted.length) throw new UserError("device_set_mismatch", "Some recipient devices have no keys.");
  return wanted.map((id) => bundles.get(id)!);
}

interface OutboxRecord {
  message_id: string;
  thread_id: string;
  sealed: Uint8Array;
  created_at: number;
  /** The body as written, to seal it again for the thread's current devices after a
   * `device_set_mismatch` (missing in a record written before), and whether the record
   * gateways are among its recipients (a photo's). */
  body?: Uint8Array;
  gateways?: boolean;
}

function awaitAnswer(reqId: string): Promise<ServerFrame> {
  return new Promise((resolve, reject) => waiting.set(reqId, { resolve, reject }));
}

/** How a send from the outbox ended, unless refused for good (SendRefused): stored by the
 * relay, or kept in the outbox (`code`: the relay's passing refusal; null: no connection). */
type SendOutcome = { stored: true } | { stored: false; code: string | null };

const inFlight = new Set<string>();
let resendTimer: ReturnType<typeof setTimeout> | null = null;

/**
 * Send a sealed message of the outbox and wait for the relay's answer, by the SDK's rule
 * (clients/sdk/connection.py, sending.py; docs/PROTOCOL.md §3.5 "Outbox"): `accepted` takes it
 * out of the outbox, marked sent; a refusal a resend may change keeps it (sent again after the
 * relay's `retry_after`, or at the next connection); `device_set_mismatch` seals it again once
 * for the thread's current devices, same message id; any other refusal is final: out of the
 * outbox, the message marked not sent with the reason in words, and SendRefused thrown.
 */
async function sendSealed(record: OutboxRecord, resealed = false): Promise<SendOutcome> {
  const ws = socket;
  if (!ws || ws.readyState !== WebSocket.OPEN) return { stored: false, code: null }; // sent on reconnect
  const reqId = record.message_id;
  inFlight.add(reqId);
  let frame: ServerFrame;
  try {
    const answer = awaitAnswer(reqId);
    sendFrame(ws, { t: "send", req_id: reqId, message: env.decodeSealed(record.sealed) });
    frame = await answer;
  } finally {
    inFlight.delete(reqId);
  }
  if (frame.t === "accepted") {
    await vault!.delete(`outbox:${record.message_id}`);
    await markSent(record.thread_id, record.message_id);
    return { stored: true };
  }
  const code = String(frame["code"]);
  if (sendPasses(code)) {
    resendLater(Number(frame["retry_after"]) || 1);
    return { stored: false, code };
  }
  let refusal = notSentSentence(code, String(frame["detail"] ?? ""));
  if (code === "device_set_mismatch" && !resealed && record.body) {
    let again: OutboxRecord | null = null;
    try {
      again = await reseal(record);
    } catch (err) {
      if (err instanceof RelayError && httpPasses(err)) return { stored: false, code: null };
      if (!(err instanceof RelayError || err instanceof UserError)) throw err;
      refusal = `Not sent: ${inWords(err).replace(/^(\S)/, (c) => c.toLowerCase())}`;
    }
    if (again) return sendSealed(again, true);
  }
  await vault!.delete(`outbox:${record.message_id}`);
  const photos = env.decodeSealed(record.sealed).header.attachment_ids;
  if (photos.length) {
    // A photo never sent, and never to be: neither it nor its message stays on this phone (no
    // expiry order will come for a copy the relay never stored), nor the consult it started;
    // a consult it was added to stays, without it.
    for (const aid of photos) await vault!.delete(`image:${aid}`);
    await removeFromThread(record.thread_id, record.message_id);
    event("unsent", { message_id: record.message_id, thread_id: record.thread_id, refusal });
  } else {
    await markNotSent(record.thread_id, record.message_id, refusal);
  }
  throw new SendRefused(code, refusal);
}

/** One of our messages gone from its thread, and the thread with it when it was its only one. */
async function removeFromThread(threadId: string, messageId: string): Promise<void> {
  await changingThread(threadId, async () => {
    const key = `thread:${threadId}`;
    const thread = await vault!.get<ThreadRecord>(key);
    const rest = thread?.messages.filter((m) => m.message_id !== messageId) ?? [];
    if (thread && rest.length) await vault!.put(key, { ...thread, messages: rest });
    else await vault!.delete(key);
  });
  await vault!.delete(`content:${messageId}`);
}

/** The outbox record sealed again for the thread's current devices (someone joined or left
 * meanwhile), same message id, kept before it goes on the wire. */
async function reseal(record: OutboxRecord): Promise<OutboxRecord> {
  const bundles = await recipients(record.thread_id, record.gateways ? await gatewayDevices() : new Map());
  const header: env.MessageHeader = { ...env.decodeSealed(record.sealed).header, recipient_devices: bundles.map((b) => b.device.deviceId), body_size: 0 };
  const sealed = await env.sealMessage(header, record.body!, deviceKeys(), bundles);
  const again: OutboxRecord = { ...record, sealed: env.encodeSealed(sealed) };
  await vault!.put(`outbox:${record.message_id}`, again);
  return again;
}

/** The outbox again after the relay's `retry_after` (seconds), while connected. */
function resendLater(seconds: number): void {
  if (resendTimer) return;
  resendTimer = setTimeout(() => {
    resendTimer = null;
    const ws = socket;
    if (vault && ws && ws.readyState === WebSocket.OPEN) void resendOutbox(ws).catch(() => undefined);
  }, Math.min(Math.max(seconds, 1), 300) * 1000);
}

async function markSent(threadId: string, messageId: string): Promise<void> {
  const changed = await updateThread(threadId, (thread) => {
    for (const m of thread.messages) {
      if (m.message_id !== messageId) continue;
      m.status = "sent";
      delete m.status_note;
    }
    return true;
  });
  if (changed) event("sent", { message_id: messageId, thread_id: threadId });
}

/** A message the relay refused for good: shown as not sent, with why and what to do. */
async function markNotSent(threadId: string, messageId: string, note: string): Promise<void> {
  const changed = await updateThread(threadId, (thread) => {
    for (const m of thread.messages) {
      if (m.message_id === messageId) {
        m.status = "not_sent";
        m.status_note = note;
      }
    }
    return true;
  });
  if (changed) event("unsent", { message_id: messageId, thread_id: threadId, refusal: note });
}

async function resendOutbox(_ws: WebSocket): Promise<void> {
  for (const name of await vault!.names("outbox:")) {
    const record = await vault!.get<OutboxRecord | DraftRecord | PhotoDraft>(name);
    if (!record || inFlight.has(record.message_id)) continue;
    const sending = "photo" in record ? sendPhotoDraft(record) : "draft" in record ? sendDraft(record) : sendSealed(record);
    await sending.catch((err) => {
      // A kept photo refused is said in its thread, and on the photo's line that named it.
      if (!("photo" in record && err instanceof SendRefused)) event("problem", { code: (err as UserError).code, message: inWords(err) });
    });
  }
}

/** The most a subject line holds (PROTOCOL §14 `subject`). */
const SUBJECT_MAX = 200;

/** A consult's subject line as typed: null when empty; too long, a sentence (never the body
 * codec's refusal, which would come only after the photo's upload). */
function subjectLine(typed: string): string | null {
  const subject = typed.trim();
  if ([...subject].length > SUBJECT_MAX) {
    throw new UserError("validation_failed", `A subject is at most ${SUBJECT_MAX} characters: shorten it (the consult's text holds the rest).`);
  }
  return subject || null;
}

/** A thread of this phone written in by hand: a consult, never the record thread (only the
 * record gateways read it, and they file what they are sent, never a reply). */
async function writableThread(threadId: string): Promise<ThreadRecord> {
  const thread = await vault!.get<ThreadRecord>(`thread:${threadId}`);
  if (!thread) throw new UserError("thread_not_found", "This consult is no longer on this phone.");
  if (thread.record) throw new UserError("validation_failed", "Nothing is written in the record thread: start a new consult instead.");
  return thread;
}

async function sendConsult(args: { role: string; text: string; subject: string; priority: "routine" | "urgent"; again?: { thread_id: string; message_id: string } | null }): Promise<Record<string, unknown>> {
  const role = args.role.replace(/^role:/, "").toLowerCase().replace(/-/g, "_");
  if (!/^[a-z][a-z0-9_]{0,63}$/.test(role)) throw new UserError("validation_failed", "A role is a name like orthopaedics_oncall.");
  if (!args.text.trim()) throw new UserError("validation_failed", "Write the consult before sending it.");
  const body = encodeBody(makeBody({ text: args.text, subject: subjectLine(args.subject) }));
  return replacing(args.again, () => sendWritten({
    draft: true, message_id: keys.uuid4(), thread_id: keys.uuid4(), created_at: now(), body,
    role, priority: args.priority, thread_created: false,
  }));
}

/**
 * A reply in one of this phone's consults, as the desktop's reply box sends one
 * (clients/desktop/views.py send_reply, clients/sdk/sending.py send_text): text only, no
 * subject (the thread's first message gave it), the thread's priority, direct care, sealed for
 * the thread's current participants; the outbox's rules as for a new consult.
 */
async function sendReply(args: { thread_id: string; text: string; again?: { thread_id: string; message_id: string } | null }): Promise<Record<string, unknown>> {
  const thread = await writableThread(args.thread_id);
  if (!args.text.trim()) throw new UserError("validation_failed", "Write the reply before sending it.");
  const body = encodeBody(makeBody({ text: args.text, subject: null }));
  return replacing(args.again, () => sendWritten({
    draft: true, message_id: keys.uuid4(), thread_id: thread.thread_id, created_at: now(), body,
    role: thread.role, priority: thread.priority === "urgent" ? "urgent" : "routine", thread_created: true,
  }));
}

/** Seal and send a consult or reply as written, or keep it as written while the relay cannot
 * be reached. */
async function sendWritten(draft: DraftRecord): Promise<Record<string, unknown>> {
  let record: OutboxRecord;
  inFlight.add(draft.message_id);
  try {
    record = await sealDraft(draft, false);
  } catch (err) {
    // The relay cannot be reached (or fails, or is busy) before the consult could be sealed:
    // it is kept as written, in the vault, marked sending, and sealed and sent by itself once
    // the relay answers again (resendOutbox), under the same message id. A refusal for good
    // (an unknown role, say) keeps nothing: the form still holds the consult; nor does a
    // single sign-on session that ended, which the page asks to sign in again for first.
    if (!(err instanceof RelayError && httpPasses(err)) || (st?.sso && SESSION_ENDED.includes(err.code))) throw err;
    const hold = accountHold(err.code);
    if (hold) heardHold(hold);
    // One sentence for why, the same under the form and under the message in its consult.
    const kept = keptSentence(hold ?? (ready ? "unreachable" : null));
    await keepDraft(draft, kept);
    return { thread_id: draft.thread_id, message_id: draft.message_id, kept };
  } finally {
    inFlight.delete(draft.message_id);
  }
  // Sealed: the relay took this phone's requests again, so IT has changed the account.
  checkHeldNow();
  const sent = await sendSealed(record);
  return { thread_id: record.thread_id, message_id: record.message_id, ...(sent.stored ? {} : { kept: keptSentence(sent.code) }) };
}

/** A consult written while the relay could not be reached: kept as written until it can be
 * sealed (its thread made at the relay, its recipients' keys fetched), under `outbox:<id>`. */
interface DraftRecord {
  draft: true;
  message_id: string;
  thread_id: string;
  created_at: number;
  body: Uint8Array;
  /** The on-call role a new consult goes to (null: a reply in a thread without one). */
  role: string | null;
  priority: "routine" | "urgent";
  /** The relay has the thread (made by an earlier try, or a reply's): it is not made again. */
  thread_created: boolean;
}

/** The draft in the vault, and its thread shown with it marked sending (PROTOCOL §3.5), and
 * `note` (why, as the form said it: relay.ts keptSentence) under it, after the app was closed
 * and opened too. */
async function keepDraft(draft: DraftRecord, note: string): Promise<void> {
  const written = decodeBody(draft.body);
  const view: MessageView = {
    message_id: draft.message_id, thread_id: draft.thread_id, from_user_id: st!.user_id, from_name: st!.display_name, mine: true,
    text: written.text, subject: written.subject, sent_at: draft.created_at, status: "sending",
    status_note: note,
  };
  await vault!.put(`outbox:${draft.message_id}`, draft);
  await addToThread(view, { thread_id: draft.thread_id, role: draft.role, subject: view.subject, priority: draft.priority, messages: [] });
}

/** The patient a consult of this phone is about, if it knows one (the consent screen fills
 * the patient's fields, name and number, with it and does not let them be changed). */
async function consultPatient(args: { thread_id: string }): Promise<{ patient: { name: string; id: string } | null }> {
  const p = (await vault!.get<ThreadRecord>(`thread:${args.thread_id}`))?.patient;
  return { patient: p ? { name: p.name.trim(), id: p.id.trim() } : null };
}

/** One of our messages written into its thread's record: appended to the consult it answers,
 * or, for a new consult, the thread's first (`fresh`, its record as it starts). `replace`: a
 * message already there (a kept photo, once sealed) is shown as `view` from now on. */
async function addToThread(view: MessageView, fresh: ThreadRecord, replace = false, record: RecordData | null = null): Promise<void> {
  await changingThread(view.thread_id, async () => {
    const key = `thread:${view.thread_id}`;
    const thread = (await vault!.get<ThreadRecord>(key)) ?? fresh;
    const at = thread.messages.findIndex((m) => m.message_id === view.message_id);
    if (at < 0) thread.messages.push(view);
    else if (replace) thread.messages[at] = view;
    learnPatient(thread, record);
    await vault!.put(key, thread);
  });
}

/**
 * Seal a consult as written: its thread made at the relay (once: a thread the relay already
 * has from an earlier try that was cut off is this one), its recipients' keys fetched and
 * verified, then sealed, same message id; the sealed record and the thread are written to
 * the vault before anything leaves the phone. `kept`: the draft is already in the vault, and
 * what the relay did for it is written back there as it goes.
 */
async function sealDraft(draft: DraftRecord, kept: boolean): Promise<OutboxRecord> {
  if (!draft.thread_created) {
    try {
      await relay!.call("POST", "/v1/threads", { thread_id: draft.thread_id, users: [], roles: draft.role ? [draft.role] : [], priority: draft.priority });
    } catch (err) {
      // A role nobody in the organisation holds is refused at the thread's creation (docs/
      // PROTOCOL.md §16.2): said in words, with the role meant if the directory suggests one.
      if (draft.role && err instanceof RelayError && err.code === "role_unknown") throw (await unknownRole(draft.role)) ?? err;
      // Made by an earlier try whose answer was lost (the id is this phone's, random).
      if (!(kept && err instanceof RelayError && err.code === "conflict")) throw err;
    }
    draft.thread_created = true;
    if (kept) await vault!.put(`outbox:${draft.message_id}`, draft);
  }
  const bundles = await recipients(draft.thread_id, new Map(), draft.role);
  const header: env.MessageHeader = {
    v: 1, message_id: draft.message_id, thread_id: draft.thread_id, sender_user_id: st!.user_id, sender_device_id: st!.device_id,
    sent_at: now(), purpose: "direct_care", priority: draft.priority, consent_id: null, attachment_ids: [],
    recipient_devices: bundles.map((b) => b.device.deviceId), external: false, emergency: null, body_size: 0,
  };
  const sealed = await env.sealMessage(header, draft.body, deviceKeys(), bundles);
  const record: OutboxRecord = { message_id: draft.message_id, thread_id: draft.thread_id, sealed: env.encodeSealed(sealed), created_at: draft.created_at, body: draft.body };
  await vault!.put(`content:${draft.message_id}`, contentOf(decodeBody(draft.body), draft.priority, header.purpose));
  if (kept) {
    await vault!.put(`outbox:${record.message_id}`, record);
    // Sealed now: shown from here on at its signed header's time, as every participant sees
    // it, and when it was written, if much earlier.
    await updateThread(record.thread_id, (thread) => {
      const m = thread.messages.find((x) => x.message_id === record.message_id);
      if (!m) return false;
      Object.assign(m, sentTimes(header.sent_at, draft.created_at));
      return true;
    });
  } else {
    // The outbox and the thread are written before anything leaves the phone (PROTOCOL §3.5).
    const written = decodeBody(draft.body);
    const view: MessageView = {
      message_id: record.message_id, thread_id: record.thread_id, from_user_id: st!.user_id, from_name: st!.display_name, mine: true,
      text: written.text, subject: written.subject, sent_at: header.sent_at, status: "sending",
    };
    await vault!.put(`outbox:${record.message_id}`, record);
    await addToThread(view, { thread_id: record.thread_id, role: draft.role, subject: view.subject, priority: draft.priority, messages: [] });
  }
  return record;
}

/** A message of ours written more than this many seconds before it was sealed (kept on the
 * phone while the relay could not take it) says when it was written too, as the desktop's
 * (clients/desktop/views.py WRITTEN_EARLIER). */
const WRITTEN_EARLIER = 60;

/** When one of ours was sent, the time in its signed header (what every participant and
 * `lightbox watch` show), and when it was written if more than WRITTEN_EARLIER seconds
 * earlier (docs/USER_GUIDE.md, "Interns: the phone app", Times). */
function sentTimes(sentAt: number, writtenAt: number | undefined): { sent_at: number; written_at: number | null } {
  return { sent_at: sentAt, written_at: writtenAt !== undefined && sentAt - writtenAt > WRITTEN_EARLIER ? writtenAt : null };
}

/** A kept draft sealed and sent (resendOutbox): a refusal for good, of its thread or of its
 * recipients, marks it not sent in its thread with why and what to do, as a refused send. */
async function sendDraft(draft: DraftRecord): Promise<void> {
  let record: OutboxRecord;
  inFlight.add(draft.message_id);
  try {
    record = await sealDraft(draft, true);
  } catch (err) {
    if (err instanceof RelayError && httpPasses(err)) return; // still kept: the next connection
    if (!(err instanceof RelayError || err instanceof UserError)) throw err;
    const refusal = err instanceof RelayError && ["role_unknown", "device_revoked"].includes(err.code)
      ? notSentSentence(err.code)
      : err.code === "device_set_mismatch"
        ? "Not sent: nobody on call for that role has a device that can receive the consult. Check the role and send it again; call the on-call team if it is urgent."
        : `Not sent: ${inWords(err).replace(/^(\S)/, (c) => c.toLowerCase())}`;
    await vault!.delete(`outbox:${draft.message_id}`);
    await markNotSent(draft.thread_id, draft.message_id, refusal);
    throw new SendRefused(err.code, refusal);
  } finally {
    inFlight.delete(draft.message_id);
  }
  await sendSealed(record);
}

const FORM_VERSION = "2026.1"; // clients/sdk/consent.py
const UPLOAD_RETRIES = 5;
const CONSENT_VALIDITY = 30 * 86400;

interface ImageSend {
  jpeg: Uint8Array;
  width: number;
  height: number;
  role: string;
  priority: "routine" | "urgent";
  subject: string;
  text: string;
  warnings: string[];
  consent: { decision: "agreed" | "refused"; purposes: env.Purpose[]; permanence: boolean; no_effect: boolean };
  record: RecordData;
  /** The consult the photo is added to (the lateral view the specialist asked for): sent in
   * its thread, with its priority and no subject of its own; absent, a new consult to `role`. */
  thread_id?: string | null;
  /** For a photo added to a consult: who the consent screen said may see it (`audience`), so
   * the consent names no one the patient was not told of. */
  audience?: { roles: string[]; users: string[] } | null;
  /** A refused kept photo sent again from its consult (keptPhoto): forgotten once sent. */
  kept_id?: string | null;
}

/** Who a photo added to a consult reaches, as the relay has the thread now: its roles (a role
 * covers everyone on its ladder, PROTOCOL §16.2) and its members but this user (the issuer is
 * always covered, §7.4), sorted. The consent names exactly these. */
async function threadAudience(threadId: string): Promise<{ roles: string[]; users: string[] }> {
  const listed = await relay!.call<{ threads: { thread_id: string; members: string[]; roles: string[] }[] }>("GET", "/v1/threads");
  const found = listed.threads.find((t) => t.thread_id === threadId);
  if (!found) throw new UserError("not_thread_member", "This phone is no longer part of that consult: start a new consult to send the photo.");
  return { roles: [...found.roles].sort(), users: found.members.filter((m) => m !== st!.user_id).sort() };
}

/** The same people in two audiences (sorted, as threadAudience gives them). */
function sameAudience(x: { roles: string[]; users: string[] }, y: { roles: string[]; users: string[] }): boolean {
  return JSON.stringify([[...x.roles].sort(), [...x.users].sort()]) === JSON.stringify([[...y.roles].sort(), [...y.users].sort()]);
}

/** For the consent screen of a photo added to a consult: everyone it would reach, by name, so
 * the patient is told who may see it; kept in the thread's record (`audience`) each time the
 * relay says it. While the relay cannot be reached, the last one kept is answered, `checked`
 * false: a photo consented for those people is kept, and checked against the relay's before it
 * is sent (sendPhotoDraft). */
async function audience(args: { thread_id: string }): Promise<{ roles: string[]; users: string[]; names: string[]; checked: boolean }> {
  const thread = await writableThread(args.thread_id);
  let who: { roles: string[]; users: string[] };
  try {
    who = await threadAudience(thread.thread_id);
  } catch (err) {
    if (!unreachable(err) || !thread.audience) throw err;
    return { ...thread.audience, checked: false };
  }
  const names: string[] = [];
  for (const userId of who.users) {
    const known = thread.messages.find((m) => m.from_user_id === userId)?.from_name;
    names.push(known ?? (await displayName(userId)));
  }
  const known = { ...who, names };
  await updateThread(thread.thread_id, (t) => {
    if (JSON.stringify(t.audience) === JSON.stringify(known)) return false;
    t.audience = known;
    return true;
  });
  return { ...known, checked: true };
}

/** The patient's hospital number or any of their names typed into the subject too: the subject is
 * shown wherever the consult is listed (the specialist's inbox, the lock screen's notice),
 * where the record data travels only inside the message (USER_GUIDE: keep names and numbers
 * out of the subject). */
function subjectNamesPatient(subject: string, record: RecordData): boolean {
  const said = subject.toLowerCase();
  // The number as typed or spaced out ("MRN 123", "mrn-123"): compared without separators.
  const compact = (x: string): string => x.toLowerCase().replace(/[^\p{L}\p{N}]+/gu, "");
  const id = compact(record.patient_id);
  if (id.length >= 3 && compact(said).includes(id)) return true;
  // Any word of 2 letters or more of the family, given or middle name, as a whole word
  // (clients/clinician/phi.py subject_names_patient, its twin): "Richard's ankle" names
  // Roe^Richard, "Richardson's ankle" does not name Roe^Rich.
  const words = (x: string): string[] => x.toLowerCase().split(/[^\p{L}\p{N}]+/u).filter((w) => w);
  const names = record.patient_name.split("^").slice(0, 3).flatMap(words)
    .filter((w) => [...w].filter((c) => /\p{L}/u.test(c)).length >= 2);
  const saidWords = new Set(words(said));
  return names.some((w) => saidWords.has(w));
}

/**
 * The consent registered for the photo on the consent screen, whose sending then failed. Sent
 * again with the same form (the same photo, decision, purposes and recipients), the same token
 * goes: the patient's one decision is registered once, and the page's button says it sends
 * again rather than records. Held in memory only, until the photo is sent or the app locks.
 */
let recordedConsent: { form: string; token: string; claims: ConsentClaims } | null = null;

/** A failure after the patient's decision was registered at the relay: the page's button then
 * says it sends again (recordedConsent), not that it records the decision. */
class AfterConsent extends Error {
  constructor(readonly failure: unknown) {
    super("after the consent was registered");
  }
}

/**
 * The photo of a film, with the patient's consent: the token signed here with the identity key
 * and registered (an agreement or a refusal alike, PROTOCOL §13); on agreement the photo is
 * encrypted (secretstream, §6), uploaded chunk by chunk (progress events), and sealed with its
 * descriptor, the token and the patient's record data to the role (and the record gateways):
 * a new consult with its subject, or (`thread_id`) added to a consult, whose current
 * participants the consent then names.
 */
async function sendImage(a: ImageSend): Promise<Record<string, unknown>> {
  try {
    a.jpeg = pixelsOnlyJpeg(a.jpeg);
  } catch (err) {
    if (err instanceof NotAJpeg) throw new UserError("validation_failed", "The photo could not be prepared: take it again.");
    throw err;
  }
  const thread = a.thread_id ? await writableThread(a.thread_id) : null;
  const role = thread ? thread.role ?? "" : a.role.replace(/^role:/, "").toLowerCase().replace(/-/g, "_");
  if (!thread && !/^[a-z][a-z0-9_]{0,63}$/.test(role)) throw new UserError("validation_failed", "A role is a name like orthopaedics_oncall.");
  // A mistyped role, refused before the patient's decision is recorded for it.
  const unknown = thread ? null : await unknownRole(role);
  if (unknown) throw unknown;
  if (!a.consent.permanence || !a.consent.no_effect) {
    throw new UserError("validation_failed", "Show the patient both statements before recording the decision.");
  }
  if (!a.consent.purposes.length) throw new UserError("validation_failed", "Choose at least one purpose.");
  if (!a.record.patient_id.trim()) {
    throw new UserError("validation_failed", a.consent.decision === "agreed"
      ? "Enter the patient's hospital number: the record needs it to file the photo."
      : "Enter the patient's hospital number: a refusal is filed in the patient's record too.");
  }
  // A consult is about one patient: a photo added to it whose record names another is refused
  // before anything is registered or sent (docs/HAZARD_LOG.md HAZ-01), judged by the rule of
  // clients/sdk/patients.py against every record the consult holds, as `lightbox send
  // --thread T --image` judges it (patients.ts).
  const other = thread ? otherPatient(thread, a.record) : null;
  if (other) {
    throw new UserError("patient_mismatch", `This consult is about ${other.name.trim()} (${other.id.trim()}): the photo names another patient, so nothing was sent. For another patient, start a new consult.`);
  }
  // A photo added to a consult has the consult's subject and priority (the desktop's and the
  // SDK's thread semantics: the first message's subject is the thread's).
  const subject = thread ? null : subjectLine(a.subject);
  if (subject && subjectNamesPatient(subject, a.record)) {
    throw new UserError("subject_identifies", "Keep the patient's name and hospital number out of the subject: it is shown wherever the consult is listed. They go in their own fields above.");
  }
  a.subject = subject ?? "";
  if (thread) a.priority = thread.priority === "urgent" ? "urgent" : "routine";
  // A photo added to a consult names who is in it as the relay has it now; a new consult names
  // its role. Without the relay, a photo added to a consult names who was in it when the phone
  // last asked (the thread's `audience`), as the consent screen told the patient: it is kept,
  // and sent only if they are still the consult's people then (sendPhotoDraft).
  const told = a.audience ? { roles: [...a.audience.roles].sort(), users: [...a.audience.users].sort() } : null;
  let recipients: { roles: string[]; users: string[] } = { users: [], roles: [role] };
  if (thread) {
    try {
      recipients = await threadAudience(thread.thread_id);
    } catch (err) {
      const last = thread.audience;
      if (!(keepable(a, err) && last && told && sameAudience(told, last))) throw beforeKeptError(err, thread);
      recipients = { roles: [...last.roles].sort(), users: [...last.users].sort() };
    }
  }
  if (thread && JSON.stringify(told) !== JSON.stringify(recipients)) {
    // Someone joined or left the consult since the screen opened (or it could not say yet):
    // the patient is told who may see the photo before the decision is recorded.
    throw new UserError("audience_changed", "Who may see the photo has changed since this screen opened, or was not known yet: it is shown on this screen now. Tell the patient, then record their decision.");
  }
  const form = JSON.stringify([imageHash(a.jpeg), a.consent.decision, [...a.consent.purposes].sort(), recipients]);
  let token: string;
  let claims: ConsentClaims;
  if (recordedConsent?.form === form) {
    ({ token, claims } = recordedConsent);
  } else {
    const t = now();
    const written = !(a.consent.purposes.length === 1 && a.consent.purposes[0] === "direct_care");
    claims = {
      jti: keys.uuid4(), iss: st!.user_id, org: st!.org_id, patient: "pt-" + hex(s.randomBytes(12)),
      purposes: a.consent.purposes, recipients: { users: recipients.users, roles: recipients.roles, orgs: [], external: false },
      images: [imageHash(a.jpeg)], form_version: FORM_VERSION, decision: a.consent.decision,
      basis: written ? "written" : "treatment_attestation", permanence_statement_shown: true,
      no_effect_on_care_statement_shown: true, iat: t, nbf: t, exp: t + CONSENT_VALIDITY,
    };
    token = issueConsentToken(claims, st!.identity_seed);
    try {
      await relay!.call("POST", "/v1/consents", { token });
    } catch (err) {
      // The patient's decision is recorded here, signed with this phone's identity key as the
      // patient gave it (iat/nbf: now); the relay registers and checks it once it can be
      // reached, before the photo's upload, and checks it again on the send (PROTOCOL §13).
      if (keepable(a, err)) {
        const kept = await keepPhoto(a, role, token, claims, false);
        if (a.kept_id) await forgetKeptPhoto(a.kept_id);
        return kept;
      }
      throw beforeKeptError(err);
    }
    recordedConsent = { form, token, claims };
  }
  try {
    const answer = await sendConsented(a, role, token, claims);
    recordedConsent = null;
    if (a.kept_id) await forgetKeptPhoto(a.kept_id);
    return answer;
  } catch (err) {
    throw new AfterConsent(err);
  }
}

/** sendImage once the patient's decision is registered: a refusal filed in the record, or the
 * photo uploaded and sent. A photo whose upload has started and cannot be finished now (the
 * relay cannot be reached, fails, or has nobody to seal it for yet) stays in the app, which
 * finishes it by itself at its next connection (resumeUploads): the page is told so, and is
 * never offered to send it a second time. */
async function sendConsented(a: ImageSend, role: string, token: string, claims: ConsentClaims): Promise<Record<string, unknown>> {
  if (a.consent.decision === "refused") {
    const filed = await fileRefusal(token, a.record);
    return { consent_id: claims.jti, decision: "refused", ...filed };
  }

  event("progress", { stage: "encrypting", done: 0, total: 1 });
  const enc = encryptAttachment(a.jpeg);
  let upload: { attachment_id: string; committed: number };
  try {
    upload = await relay!.call<{ attachment_id: string; committed: number }>("POST", "/v1/attachments", { size: enc.ciphertext.length });
  } catch (err) {
    if (keepable(a, err)) return await keepPhoto(a, role, token, claims, true);
    throw beforeKeptError(err);
  }
  // Kept before the first byte leaves: an upload cut by closing the app resumes from the
  // relay's offset when it is next unlocked, with the same ciphertext (PROTOCOL §12).
  const job: UploadJob = {
    attachment_id: upload.attachment_id, ciphertext: enc.ciphertext, key: enc.key, sha256: enc.sha256, size: enc.size,
    token, consent_id: claims.jti, role, send: { ...a, jpeg: a.jpeg }, written_at: now(),
  };
  const name = `upload:${job.attachment_id}`;
  uploading.add(job.attachment_id); // ours from here: a reconnect meanwhile does not resume it too
  try {
    await vault!.put(name, job);
  } catch (err) {
    uploading.delete(job.attachment_id);
    throw err;
  }
  try {
    return await finishUpload(job, true);
  } catch (err) {
    // Refused for good (relay.ts httpPasses): never resumed later to be refused again.
    if (err instanceof RelayError && !httpPasses(err)) await vault!.delete(name);
    if (!(err instanceof UserError || err instanceof RelayError) || !(await vault!.names(name)).includes(name)) throw err;
    recordedConsent = null; // the photo is the kept upload's now
    cutWhileOpen.set(name, cutBy(err));
    const why = inWords(err).replace(/^(\S)/, (c) => c.toLowerCase());
    return { decision: "agreed", kept: `Not sent yet: ${why} The app keeps the photo and sends it by itself the next time it connects to the relay, at the latest when you next unlock the app.` };
  }
}

/** The relay cannot be reached (or fails) for now: what the outbox keeps for later. */
function unreachable(err: unknown): err is RelayError {
  return err instanceof RelayError && (err.status === 0 || err.status >= 500);
}

/** A photo the relay cannot take before its upload starts is kept (keepPhoto) with the
 * patient's agreement, a new consult's or one added to a consult (whose consent then names who
 * was in it when the phone last knew, sendImage); a refusal to file is not. */
function keepable(a: ImageSend, err: unknown): boolean {
  return unreachable(err) && a.consent.decision === "agreed";
}

/** A photo not kept (keepable) whose request before its upload could not reach the relay is
 * said as it is, never "nothing is lost"; `thread`: it was added to that consult, whose people
 * the phone has never had from the relay. */
function beforeKeptError(err: unknown, thread: ThreadRecord | null = null): unknown {
  if (!unreachable(err)) return err;
  const why = thread && !thread.audience ? "The relay cannot be reached, and this phone does not know yet who is in this consult, so the photo was not sent, and the app cannot keep it"
    : "The relay cannot be reached, so the photo was not sent, and the app does not keep it yet";
  return new UserError(err.code, `${why}: it stays on this screen until you send it or the app locks. Send it again once the bar at the top says connected.`);
}

/**
 * A photo consult finished while the relay could not be reached (docs/USER_GUIDE.md "Interns:
 * the phone app", step 4), kept under `outbox:<message id>` as the patient's consent recorded it
 * until the relay can be reached: the photo (pixels only), the consult as written and the
 * signed consent token, sealed at rest like every vault record (vault.ts), never in clear. Its
 * message and thread ids are chosen now, so it is sent once (sendPhotoDraft).
 */
interface PhotoDraft {
  photo: true;
  message_id: string;
  thread_id: string;
  created_at: number;
  role: string;
  send: ImageSend;
  token: string;
  claims: ConsentClaims;
  /** The relay registered the consent (POST /v1/consents): it is not registered again. */
  registered: boolean;
  /** Refused because the people in the consult it was added to changed (sendPhotoDraft): sent
   * again, it needs the patient's decision anew, for who is in it now. */
  ask_again?: boolean;
}

/** The photo consult kept (PhotoDraft), or the photo added to a consult (`a.thread_id`), and
 * shown in its thread, marked sending with why. */
async function keepPhoto(a: ImageSend, role: string, token: string, claims: ConsentClaims, registered: boolean): Promise<Record<string, unknown>> {
  const draft: PhotoDraft = {
    photo: true, message_id: keys.uuid4(), thread_id: a.thread_id ?? keys.uuid4(), created_at: now(), role,
    send: { ...a, thread_id: a.thread_id ?? null, audience: null, kept_id: null }, token, claims, registered,
  };
  const subject = a.subject.trim() || null;
  // One sentence for why, the same under the consent screen's line and under the photo in its
  // consult (after the app was closed and opened too).
  const why = ready ? "this phone cannot reach the relay just now" : "this phone is not connected to the relay";
  const kept = `Not sent yet: ${why}. The photo is kept on this phone, encrypted, and sent by itself when the relay can be reached; it shows as sent then.`;
  const view: MessageView = {
    message_id: draft.message_id, thread_id: draft.thread_id, from_user_id: st!.user_id, from_name: st!.display_name, mine: true,
    text: a.text, subject, sent_at: draft.created_at, status: "sending", status_note: kept, quality_warnings: a.warnings,
    attachment_id: draft.message_id, image_state: "held",
  };
  await vault!.put(`outbox:${draft.message_id}`, draft);
  await addToThread(view, { thread_id: draft.thread_id, role, subject, priority: a.priority, messages: [] }, false, a.record);
  recordedConsent = null; // the consent is the kept photo's now
  return { decision: "agreed", thread_id: draft.thread_id, message_id: draft.message_id, kept };
}

/**
 * A kept photo (resendOutbox), once the relay answers: its consent registered (once), the photo
 * encrypted and its upload started, the job kept under `upload:<id>` in place of the draft
 * (so a restart resumes the upload, never starts another), then finished and sealed with the
 * draft's message and thread ids (finishUpload). A refusal for good (the consent refused, say)
 * is shown in its thread as any refused photo is (keptPhotoRefused).
 */
async function sendPhotoDraft(draft: PhotoDraft): Promise<void> {
  const key = `outbox:${draft.message_id}`;
  for (const name of await vault!.names("upload:")) {
    // Its upload had started when the app closed: resumeUploads finishes it.
    if ((await vault!.get<UploadJob>(name))?.message_id === draft.message_id) {
      await vault!.delete(key);
      return;
    }
  }
  inFlight.add(draft.message_id);
  let job: UploadJob;
  try {
    if (draft.send.thread_id) {
      // Added to a consult: its consent names who was in it when the patient agreed. Someone
      // joined or left since: nothing is sent (re-signing would name people the patient was
      // never told of); the photo stays, and the intern records the decision again.
      const nowIn = await threadAudience(draft.send.thread_id);
      if (!sameAudience(nowIn, draft.claims.recipients)) throw new UserError("audience_changed", AUDIENCE_CHANGED);
    }
    if (!draft.registered) {
      await relay!.call("POST", "/v1/consents", { token: draft.token });
      draft.registered = true;
      await vault!.put(key, draft);
    }
    const enc = encryptAttachment(draft.send.jpeg);
    const upload = await relay!.call<{ attachment_id: string; committed: number }>("POST", "/v1/attachments", { size: enc.ciphertext.length });
    job = {
      attachment_id: upload.attachment_id, ciphertext: enc.ciphertext, key: enc.key, sha256: enc.sha256, size: enc.size,
      token: draft.token, consent_id: draft.claims.jti, role: draft.role, send: draft.send,
      message_id: draft.message_id, thread_id: draft.thread_id, written_at: draft.created_at,
    };
    uploading.add(job.attachment_id);
    await vault!.put(`upload:${job.attachment_id}`, job);
    await vault!.delete(key);
  } catch (err) {
    if (err instanceof RelayError && httpPasses(err)) return; // still kept: the next connection
    if (!(err instanceof RelayError || err instanceof UserError)) throw err;
    await vault!.delete(key);
    const refusal = err instanceof RelayError ? notSentSentence(err.code, err.detail)
      : err.code === "audience_changed" ? err.message : `Not sent: ${inWords(err).replace(/^(\S)/, (c) => c.toLowerCase())}`;
    await keptPhotoRefused(draft, err.code, refusal);
    throw new SendRefused(err.code, refusal);
  } finally {
    inFlight.delete(draft.message_id);
  }
  try {
    await finishUpload(job, true);
  } catch (err) {
    if (err instanceof RelayError && !httpPasses(err)) await vault!.delete(`upload:${job.attachment_id}`);
    else if (!(err instanceof SendRefused)) {
      cutWhileOpen.set(`upload:${job.attachment_id}`, cutBy(err));
      return; // kept as an upload job: resumed at the next connection
    }
    const { code } = err as SendRefused | RelayError;
    const refusal = err instanceof SendRefused ? err.message : notSentSentence(code, (err as RelayError).detail);
    await keptPhotoRefused(draft, code, refusal);
    throw err instanceof SendRefused ? err : new SendRefused(code, refusal);
  }
}

/** A kept photo added to a consult whose people changed before it could be sent. */
const AUDIENCE_CHANGED = "Not sent: the people in this consult changed since the patient agreed to share the photo with them. Tap Send the photo again to show the patient who may see it now and record their decision again.";

/** A photo on its way: everything needed to finish its upload and send it after a restart. */
interface UploadJob {
  attachment_id: string;
  ciphertext: Uint8Array;
  key: Uint8Array;
  sha256: Uint8Array;
  size: number;
  token: string;
  consent_id: string;
  role: string;
  send: ImageSend;
  /** A kept photo's (PhotoDraft): the message and new consult it is sent as, chosen when it
   * was kept and shown in that thread since. */
  message_id?: string;
  thread_id?: string;
  /** When the photo consult was sent from the consent screen (a kept photo's: when it was
   * kept); absent in a job written before. */
  written_at?: number;
}

const uploading = new Set<string>();

/** The upload jobs (their vault records) cut off while the app stayed open, by what: their
 * resumption is not said to finish an upload "cut off when the app closed" (resumedSentence).
 * In memory: a job the app finds after it was closed is not here. */
const cutWhileOpen = new Map<string, "connection" | "relay">();

function cutBy(err: unknown): "connection" | "relay" {
  return err instanceof RelayError && err.status === 0 ? "connection" : "relay";
}

/** Upload the rest of the ciphertext from where the relay says it stands, finalise, and seal
 * the descriptor to the role (and the record gateways); the job is then the outbox's. */
async function finishUpload(job: UploadJob, owned = false): Promise<Record<string, unknown>> {
  const name = `upload:${job.attachment_id}`; // the job's vault record, whatever upload it is on
  let aid = job.attachment_id;
  const a = job.send;
  if (!owned && uploading.has(aid)) throw new UserError("busy", "This photo is already being uploaded.");
  uploading.add(aid);
  const claimed = [aid];
  try {
    let failures = 0;
    let status: { committed: number; chunk_size?: number };
    try {
      status = await relay!.call<{ committed: number; chunk_size?: number }>("GET", `/v1/attachments/${aid}/upload`);
    } catch (err) {
      // The relay no longer holds the unfinished upload (the app stayed closed past the relay's
      // time for unfinished uploads, PROTOCOL §12): upload the kept ciphertext again as a new
      // upload, as the SDK does (clients/sdk/sending.py). The job is rewritten under the same
      // vault record first, so a restart meanwhile resumes the new upload, never both.
      if (!(err instanceof RelayError && ["upload_not_found", "attachment_expired"].includes(err.code))) throw err;
      const again = await relay!.call<{ attachment_id: string; committed: number; chunk_size?: number }>("POST", "/v1/attachments", { size: job.ciphertext.length });
      job = { ...job, attachment_id: again.attachment_id };
      await vault!.put(name, job);
      aid = job.attachment_id;
      uploading.add(aid);
      claimed.push(aid);
      status = again;
    }
    let committed = status.committed;
    const chunkSize = status.chunk_size ?? 1024 * 1024;
    const total = job.ciphertext.length;
    event("progress", { stage: committed ? "resuming" : "uploading", done: committed, total });
    while (committed < total) {
      const chunk = job.ciphertext.subarray(committed, committed + chunkSize);
      try {
        status = await relay!.call<{ committed: number }>("PUT", `/v1/attachments/${aid}/upload?offset=${committed}`, chunk);
        committed = status.committed;
        failures = 0;
        event("progress", { stage: "uploading", done: committed, total });
        continue;
      } catch (err) {
        // A dropped connection, or a chunk that did land before the answer was lost: ask the
        // relay where the upload stands and go on from there (PROTOCOL §12 "Resuming").
        const resumable = err instanceof RelayError && (err.status === 0 || ["chunk_overlap", "chunk_out_of_order"].includes(err.code));
        if (!resumable || ++failures > UPLOAD_RETRIES) throw err;
        event("progress", { stage: "retrying", done: committed, total });
      }
      await new Promise((ok) => setTimeout(ok, 300 * failures));
      try {
        committed = (await relay!.call<{ committed: number }>("GET", `/v1/attachments/${aid}/upload`)).committed;
      } catch (err) {
        if (!(err instanceof RelayError && err.status === 0)) throw err; // counted at the next try
      }
    }
    await relay!.call("POST", `/v1/attachments/${aid}/finalise`, { sha256: hex(s.sha256(job.ciphertext)) });

    const body = encodeBody(makeBody({
      text: a.text, subject: a.subject.trim() || null, consent_token: job.token, record: a.record,
      quality_warnings: a.warnings,
      attachments: [{ attachment_id: aid, key: job.key, sha256: job.sha256, size: job.size, media_type: "image/jpeg", width: a.width, height: a.height }],
    }));
    // A new consult's thread is made here, once the photo is at the relay; a consult it is
    // added to is there already.
    const threadId = a.thread_id ?? job.thread_id ?? keys.uuid4();
    if (!a.thread_id) {
      try {
        await relay!.call("POST", "/v1/threads", { thread_id: threadId, users: [], roles: [job.role], priority: a.priority });
      } catch (err) {
        // A kept photo's thread, made by an earlier try whose answer was lost (its id is this
        // phone's, random).
        if (!(job.thread_id && err instanceof RelayError && err.code === "conflict")) throw err;
      }
    }
    const bundles = await recipients(threadId, await gatewayDevices());
    const messageId = job.message_id ?? keys.uuid4();
    const header: env.MessageHeader = {
      v: 1, message_id: messageId, thread_id: threadId, sender_user_id: st!.user_id, sender_device_id: st!.device_id,
      sent_at: now(), purpose: "direct_care", priority: a.priority, consent_id: job.consent_id, attachment_ids: [aid],
      recipient_devices: bundles.map((b) => b.device.deviceId), external: false, emergency: null, body_size: 0,
    };
    const sealed = await env.sealMessage(header, body, deviceKeys(), bundles);
    const record: OutboxRecord = { message_id: messageId, thread_id: threadId, sealed: env.encodeSealed(sealed), created_at: now(), body, gateways: true };
    await vault!.put(`content:${messageId}`, contentOf(decodeBody(body), a.priority, header.purpose));
    const view: MessageView = {
      message_id: messageId, thread_id: threadId, from_user_id: st!.user_id, from_name: st!.display_name, mine: true,
      text: a.text, subject: a.subject.trim() || null, ...sentTimes(header.sent_at, job.written_at), status: "sending",
      attachment_id: aid, image_state: "held", quality_warnings: a.warnings,
    };
    await vault!.put(`image:${aid}`, a.jpeg);
    await vault!.put(`outbox:${messageId}`, record);
    await addToThread(view, { thread_id: threadId, role: job.role || null, subject: view.subject, priority: a.priority, messages: [] }, true, a.record);
    await vault!.delete(name);
    // Refused for good (the patient withdrew consent meanwhile, say): sendSealed erases the
    // photo and its message (and the consult it started), so nothing "sending" stays on this
    // phone.
    const sent = await sendSealed(record);
    return { thread_id: threadId, message_id: messageId, attachment_id: aid, consent_id: job.consent_id, ...(sent.stored ? {} : { kept: keptSentence(sent.code) }) };
  } finally {
    for (const id of claimed) uploading.delete(id);
  }
}

/**
 * A kept photo the relay refused for good once back (its consent, its role, its upload): shown
 * in its thread as not sent, with why, as any refused photo; the photo stays kept (sealed at
 * rest, under `photo:<message id>`) for *Send the photo again*, which opens the consent screen
 * with it (keptPhoto), as the consent screen offers after a refusal. A consent the patient
 * withdrew meanwhile keeps nothing: it is not to be sent again.
 */
async function keptPhotoRefused(draft: PhotoDraft, code: string, refusal: string): Promise<void> {
  const again = code !== "consent_revoked" && code !== "not_thread_member";
  draft.ask_again = code === "audience_changed";
  if (again) await vault!.put(`photo:${draft.message_id}`, draft);
  const a = draft.send;
  const subject = a.subject.trim() || null;
  const view: MessageView = {
    message_id: draft.message_id, thread_id: draft.thread_id, from_user_id: st!.user_id, from_name: st!.display_name, mine: true,
    text: a.text, subject, sent_at: draft.created_at, status: "not_sent", status_note: refusal, quality_warnings: a.warnings,
    ...(again ? { kept_photo: true, attachment_id: draft.message_id, image_state: "held" as const } : {}),
  };
  await addToThread(view, { thread_id: draft.thread_id, role: draft.role, subject, priority: a.priority, messages: [] }, true);
  event("unsent", { message_id: draft.message_id, thread_id: draft.thread_id, refusal });
}

/** A refused kept photo (keptPhotoRefused) back on the consent screen: the photo and the form
 * as the patient's decision recorded them; a consent the relay registered is sent again as it
 * is (recordedConsent), never registered a second time. */
async function keptPhoto(args: { message_id: string }): Promise<Record<string, unknown>> {
  const draft = await vault!.get<PhotoDraft>(`photo:${args.message_id}`);
  if (!draft) throw new UserError("not_found", "This photo is no longer on this phone: take it again if it is still needed.");
  const a = draft.send;
  // Its recipients as sendImage's form has them: a new consult's role, or the people of the
  // consult it was added to (who, changed, make it a new decision: `ask_again`).
  const named = a.thread_id ? { roles: [...draft.claims.recipients.roles].sort(), users: [...draft.claims.recipients.users].sort() } : { users: [], roles: [draft.role] };
  const recorded = draft.registered && !draft.ask_again;
  recordedConsent = recorded
    ? { form: JSON.stringify([imageHash(a.jpeg), a.consent.decision, [...a.consent.purposes].sort(), named]), token: draft.token, claims: draft.claims }
    : null;
  return {
    jpeg: a.jpeg, width: a.width, height: a.height, warnings: a.warnings, role: draft.role, priority: a.priority,
    subject: a.subject, text: a.text, record: a.record, purposes: a.consent.purposes, recorded, thread_id: a.thread_id ?? null,
    title: a.thread_id ? (await vault!.get<ThreadRecord>(`thread:${a.thread_id}`))?.subject ?? null : null,
  };
}

/** A refused kept photo sent again (or kept again): its record and its not-sent message go. */
async function forgetKeptPhoto(messageId: string): Promise<void> {
  const draft = await vault!.get<PhotoDraft>(`photo:${messageId}`);
  if (!draft) return;
  await vault!.delete(`photo:${messageId}`);
  await removeFromThread(draft.thread_id, messageId);
}

// --- a refused message of ours: removed, or written again (USER_GUIDE "Interns: the phone app") --

const UNSENT_GONE = "This message is no longer on this phone: nothing was removed.";
const UNSENT_NOT_REFUSED = "This message is no longer marked not sent (the relay stored it, or it is being sent), so it stays on this phone.";

/** One of our messages the relay refused for good, and its thread's record, read under
 * changingThread: any other (stored, received, on its way, in the outbox) is refused in words,
 * and one no longer here (removed from another screen, a stale tap) too. */
async function refusedMessage(threadId: string, messageId: string): Promise<{ thread: ThreadRecord; m: MessageView }> {
  const thread = await vault!.get<ThreadRecord>(`thread:${threadId}`);
  const m = thread?.messages.find((x) => x.message_id === messageId);
  if (!thread || !m) throw new UserError("not_found", UNSENT_GONE);
  const queued = (await vault!.names(`outbox:${messageId}`)).includes(`outbox:${messageId}`);
  if (!m.mine || m.status !== "not_sent" || inFlight.has(messageId) || queued) throw new UserError("not_removable", UNSENT_NOT_REFUSED);
  return { thread, m };
}

/**
 * *Remove from this phone* under a message of ours the relay refused for good: deleted from the
 * vault (its thread's record rewritten without it, or deleted when it was its only message: a
 * consult the relay never stored leaves the list), with a kept photo's sealed copy. The relay
 * never stored it, so nobody else has it. Only a not-sent message: refusedMessage.
 */
async function removeUnsent(args: { thread_id: string; message_id: string }): Promise<{ thread_removed: boolean }> {
  return changingThread(args.thread_id, async () => {
    const { thread, m } = await refusedMessage(args.thread_id, args.message_id);
    await vault!.delete(`photo:${m.message_id}`);
    if (m.attachment_id) await vault!.delete(`image:${m.attachment_id}`);
    const rest = thread.messages.filter((x) => x.message_id !== m.message_id);
    if (rest.length) await vault!.put(`thread:${thread.thread_id}`, { ...thread, messages: rest });
    else await vault!.delete(`thread:${thread.thread_id}`);
    return { thread_removed: rest.length === 0 };
  });
}

/** *Edit and send again* under a text message of ours the relay refused: what it said, and where
 * it goes back to: a reply (`reply`: the consult is on the relay) to the consult's reply box, a
 * new consult to the compose form with its role, priority and subject. */
async function unsentAgain(args: { thread_id: string; message_id: string }): Promise<Record<string, unknown>> {
  return changingThread(args.thread_id, async () => {
    const { thread, m } = await refusedMessage(args.thread_id, args.message_id);
    if (m.attachment_id || thread.record) throw new UserError("validation_failed", "Only a written message is edited to send again: send a photo again from its consent screen.");
    const reply = thread.messages.some((x) => x.status === "sent" || x.status === "received");
    return { reply, text: m.text, subject: m.subject ?? "", role: thread.role ?? "", priority: thread.priority, refusal: m.status_note ?? null };
  });
}

/**
 * A consult or reply written again from a refused one (`again`, *Edit and send again*): the
 * refused copy goes once the new one is on this phone as a message of its own: stored, kept to
 * go by itself, or refused in turn (shown not sent with its own reason). Refused before it was
 * kept (an unknown role, say), the form still holds it and the refused copy stays; a copy no
 * longer refused (refusedMessage) stays too.
 */
async function replacing(again: { thread_id: string; message_id: string } | null | undefined, send: () => Promise<Record<string, unknown>>): Promise<Record<string, unknown>> {
  const drop = async (): Promise<void> => {
    if (!again) return;
    await removeUnsent(again).catch((err) => {
      if (!(err instanceof UserError)) throw err;
    });
  };
  try {
    const sent = await send();
    await drop();
    return sent;
  } catch (err) {
    if (err instanceof SendRefused) await drop();
    throw err;
  }
}

/** Photos whose upload the app was closed in the middle of: resumed when the connection is
 * ready; the page hears `resumed` with the outcome. */
async function resumeUploads(): Promise<void> {
  for (const name of await vault!.names("upload:")) {
    const job = await vault!.get<UploadJob>(name);
    if (!job || uploading.has(job.attachment_id)) continue;
    const cut = cutWhileOpen.get(name);
    try {
      const sent = await finishUpload(job);
      cutWhileOpen.delete(name);
      event("resumed", { ok: true, ...sent, message: (sent["kept"] as string | undefined) ?? resumedSentence({ ok: true, cut }) });
    } catch (err) {
      const code = (err as { code?: string }).code ?? "internal_error";
      // Refused for good, by the SDK's rule (relay.ts httpPasses): the same on every retry, so
      // the job goes (the photo is taken again or not at all) and the intern is told.
      const final = err instanceof RelayError && !httpPasses(err);
      if (final) await vault!.delete(name);
      // Kept (the relay could not be reached or failed, say): tried again at the next
      // connection's `ready`.
      const kept = (await vault!.names(name)).includes(name);
      const refusal = final ? finalRefusalSentence(err) : inWords(err);
      if (!kept) cutWhileOpen.delete(name);
      event("resumed", { ok: false, code, message: resumedSentence({ ok: false, code, kept, refusal, cut }) });
    }
  }
}

const RECORD_THREAD_SUBJECT = "Filed to the patient's record"; // clients/sdk/threads.py

/**
 * File a refusal in the patient's record, as the CLI does (clients/clinician/consenting.py,
 * clients/sdk/sending.py file_consent; PROTOCOL §15): the signed token with the patient's
 * record data, sealed as a `consent_record` to the organisation's record gateways in this
 * user's record thread (its only other members are the gateways; found, or made once). The
 * gateway answers with `consent_filed`, shown under the message. Without a gateway the refusal
 * stays registered at the relay and the intern is told to record it in the notes.
 */
async function fileRefusal(token: string, record: RecordData): Promise<Record<string, unknown>> {
  const gateways = await gatewayDevices(true);
  if (!gateways.size) return { filed: "no_gateway" };
  const members = new Set([st!.user_id, ...[...gateways.values()].map((g) => g.userId)]);
  const listed = await relay!.call<{ threads: { thread_id: string; members: string[]; roles: string[] }[] }>("GET", "/v1/threads");
  let threadId = listed.threads.find((t) => !t.roles.length && t.members.length === members.size && t.members.every((m) => members.has(m)))?.thread_id;
  let subject: string | null = null;
  if (!threadId) {
    threadId = keys.uuid4();
    subject = RECORD_THREAD_SUBJECT;
    await relay!.call("POST", "/v1/threads", { thread_id: threadId, users: [...members].filter((m) => m !== st!.user_id).sort(), roles: [], priority: "routine" });
  }
  const text = "The patient refused consent to share the photo; the refusal is filed in their record.";
  const body = encodeBody(makeBody({ kind: "consent_record", consent_token: token, record, subject }));
  const bundles = await recipients(threadId);
  const messageId = keys.uuid4();
  const header: env.MessageHeader = {
    v: 1, message_id: messageId, thread_id: threadId, sender_user_id: st!.user_id, sender_device_id: st!.device_id,
    sent_at: now(), purpose: "direct_care", priority: "routine", consent_id: null, attachment_ids: [],
    recipient_devices: bundles.map((b) => b.device.deviceId), external: false, emergency: null, body_size: 0,
  };
  const sealed = await env.sealMessage(header, body, deviceKeys(), bundles);
  const out: OutboxRecord = { message_id: messageId, thread_id: threadId, sealed: env.encodeSealed(sealed), created_at: now(), body };
  const view: MessageView = {
    message_id: messageId, thread_id: threadId, from_user_id: st!.user_id, from_name: st!.display_name, mine: true,
    text, subject: RECORD_THREAD_SUBJECT, sent_at: header.sent_at, status: "sending",
  };
  const key = `thread:${threadId}`;
  await changingThread(threadId, async () => {
    const thread = (await vault!.get<ThreadRecord>(key)) ?? { thread_id: threadId, role: null, subject: RECORD_THREAD_SUBJECT, priority: "routine", messages: [] };
    thread.record = true;
    thread.messages.push(view);
    await vault!.put(`outbox:${messageId}`, out);
    await vault!.put(key, thread);
  });
  await sendSealed(out);
  return { filed: "sent", thread_id: threadId, message_id: messageId };
}

async function image(args: { attachment_id: string }): Promise<Uint8Array | null> {
  const held = await vault!.get<Uint8Array>(`image:${args.attachment_id}`);
  if (held) return held;
  // A kept photo (PhotoDraft) is shown in its thread under its message id until it is sent.
  for (const name of [`outbox:${args.attachment_id}`, `photo:${args.attachment_id}`]) {
    const kept = await vault!.get<PhotoDraft | OutboxRecord | DraftRecord>(name);
    if (kept && "photo" in kept) return kept.send.jpeg;
  }
  return null;
}

async function threads(): Promise<ThreadRecord[]> {
  const out: ThreadRecord[] = [];
  for (const name of await vault!.names("thread:")) {
    const t = await vault!.get<ThreadRecord>(name);
    if (t) out.push(t);
  }
  return out.sort((a, b) => (b.messages.at(-1)?.sent_at ?? 0) - (a.messages.at(-1)?.sent_at ?? 0));
}

// --- dispatch ------------------------------------------------------------------------------------

const ops: Record<string, (args: any) => Promise<unknown> | unknown> = {
  async init(args: Config) {
    config = { relay: args.relay.replace(/\/+$/, ""), kdf: args.kdf };
    await s.ready();
    return { enrolled: await Vault.exists(), unlocked: vault !== null };
  },
  enrolStart,
  enrolFinish,
  ssoStart,
  ssoLogin,
  unlock,
  lock,
  reconnect: reconnectAfterReplaced,
  forgetRevoked,
  sendConsult,
  sendReply,
  sendImage,
  keptPhoto,
  removeUnsent,
  unsentAgain,
  audience,
  consultPatient,
  image,
  threads,
  markRead,
  quality: (a: { rgba: Uint8ClampedArray; width: number; height: number }) => checkQuality(a.rgba, a.width, a.height),
};

self.onmessage = async (m: MessageEvent) => {
  const { id, op, args } = m.data as { id: number; op: string; args: unknown };
  try {
    const fn = ops[op];
    if (!fn) throw new UserError("bad_request", `unknown operation ${op}`);
    if (!["init", "enrolStart", "enrolFinish", "ssoStart", "unlock", "lock", "forgetRevoked"].includes(op) && !vault) {
      throw new UserError("locked", "The app is locked: unlock it with your passphrase.");
    }
    post({ id, ok: true, result: await fn(args) });
  } catch (thrown) {
    // A failure after the patient's decision was registered (sendImage): said as itself, and
    // the page told the decision is recorded (its button then sends again, records nothing).
    const recorded = thrown instanceof AfterConsent;
    const err = recorded ? thrown.failure : thrown;
    if (op !== "ssoLogin" && st?.sso && vault && err instanceof RelayError && SESSION_ENDED.includes(err.code)) {
      // The relay ended this single sign-on session while the app was open (its lifetime is
      // over, or the IdP's user was disabled): only a new sign-in at the IdP opens another.
      await forgetSession(st);
      event("signin", {});
      post({ id, ok: false, error: { code: err.code, message: "Your hospital sign-in has ended: sign in with your hospital account again, then try again.", recorded } });
      return;
    }
    // A password phone's session ended because the organisation signs on now: found by
    // signing in again (signInAgain, `sso_required`), or by the refusal itself (nowSignsOn).
    if (op !== "ssoLogin" && st && vault && ((st.sso && err instanceof RelayError && err.code === "sso_required") || await nowSignsOn(st, err))) {
      event("signin", { signon: true });
      post({ id, ok: false, error: { code: "sso_required", message: "Your hospital now signs you in with your hospital account: sign in with it, then try again.", recorded } });
      return;
    }
    const code = (err as { code?: string }).code ?? "internal_error";
    post({ id, ok: false, error: { code, message: inWords(err), recorded } });
  }
};

/** The relay's refusals of a session (as opposed to of a request). */
const SESSION_ENDED = ["token_expired", "token_invalid", "refresh_reused", "unauthenticated"];
