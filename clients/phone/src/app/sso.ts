/**
 * Single sign-on from the phone: the OpenID Connect Authorization Code flow with PKCE, as a
 * browser-based app runs it (docs/SECURITY.md "On the phone"; the relay's side is
 * docs/PROTOCOL.md §11 "Single sign-on").
 *
 * - Authorization Code with PKCE, `S256` only (RFC 7636 §4.2; RFC 9700 §2.1.1 requires PKCE
 *   for public clients and forbids the implicit grant, §2.1.2): the verifier never leaves this
 *   worker; the page sees only the authorization URL and the redirect's `code` and `state`.
 * - `state` (RFC 6749 §10.12, RFC 9700 §4.7.1): a fresh random value per request, compared on
 *   the way back; an answer for any other request is refused and the flow is dropped.
 * - `nonce`: the relay's single-use challenge (`POST /v1/auth/sso/challenge`), which the relay
 *   checks in the ID token and consumes, and which the device signs for a login.
 * - The IdP's sign-in page opens in a window of its own (the page keeps this worker, and so the
 *   unsealed enrolment package and the open vault, alive); the IdP redirects that window to
 *   `sso-callback.html` on this app's origin, which hands `code` and `state` back over a
 *   same-origin BroadcastChannel (sso-callback.ts).
 * - The code is exchanged here, at the IdP's token endpoint (a CORS request, allowed by the
 *   Content-Security-Policy's `connect-src` for the IdP's origin only); the ID token goes to the
 *   relay, which verifies it (server/oidc.py). This app trusts nothing in it and does not parse
 *   it.
 */
import * as s from "../protocol/sodium.js";
import { b64urlEncode } from "../protocol/canonical.js";
import { utf8 } from "../protocol/bytes.js";
import type { Relay } from "./relay.js";

export const CALLBACK_PATH = "sso-callback.html";

export class SsoError extends Error {
  constructor(
    readonly code: string,
    message: string,
  ) {
    super(message);
  }
}

export interface SsoConfig {
  org_id: string;
  issuer: string;
  client_id: string;
  scopes: string[];
}

/** One authorization request in flight (held by the worker only). */
export interface SsoRequest {
  config: SsoConfig;
  state: string;
  verifier: string;
  nonce: string;
  redirectUri: string;
  tokenEndpoint: string;
  url: string;
}

/** The redirect's answer, as the callback page passes it on. */
export interface SsoAnswer {
  state?: string;
  code?: string;
  error?: string;
}

/** The organisation's IdP, or null when the organisation signs in with passwords (the relay
 * answers 403 `forbidden` for an organisation without single sign-on). */
export async function ssoConfig(relay: Relay, orgId: string): Promise<SsoConfig | null> {
  try {
    return await relay.call<SsoConfig>("GET", `/v1/auth/sso/${encodeURIComponent(orgId)}`, undefined, false);
  } catch (err) {
    if ((err as { code?: string }).code === "forbidden") return null;
    throw err;
  }
}

async function idpJson(url: string, init?: RequestInit): Promise<{ status: number; body: Record<string, unknown> }> {
  let r: Response;
  try {
    r = await fetch(url, { ...init, cache: "no-store", credentials: "omit", redirect: "error" });
  } catch {
    throw new SsoError("sso_failed", "Your hospital's sign-in service cannot be reached. Check the network and try again.");
  }
  const body = (await r.json().catch(() => ({}))) as Record<string, unknown>;
  return { status: r.status, body };
}

/** RFC 7636 §4.1: a 43-character verifier of 256 random bits; §4.2 S256 challenge. */
function pkce(): { verifier: string; challenge: string } {
  const verifier = b64urlEncode(s.randomBytes(32));
  return { verifier, challenge: b64urlEncode(s.sha256(utf8(verifier))) };
}

/** Start a request: the relay's challenge as the nonce, the IdP's endpoints from its discovery
 * document (OpenID Connect Discovery 1.0 §4, whose `issuer` must be the configured one). */
export async function startRequest(relay: Relay, config: SsoConfig, appOrigin: string): Promise<SsoRequest> {
  const challenge = await relay.call<{ nonce: string; expires_at: number }>("POST", "/v1/auth/sso/challenge", undefined, false);
  const found = await idpJson(config.issuer.replace(/\/+$/, "") + "/.well-known/openid-configuration");
  const meta = found.body;
  if (found.status !== 200 || meta["issuer"] !== config.issuer || typeof meta["authorization_endpoint"] !== "string" || typeof meta["token_endpoint"] !== "string") {
    throw new SsoError("sso_failed", "Your hospital's sign-in service answered with another identity: tell IT.");
  }
  const { verifier, challenge: codeChallenge } = pkce();
  const state = b64urlEncode(s.randomBytes(32));
  const redirectUri = `${appOrigin}/${CALLBACK_PATH}`;
  const url = new URL(meta["authorization_endpoint"] as string);
  for (const [k, v] of Object.entries({
    response_type: "code", client_id: config.client_id, redirect_uri: redirectUri, scope: config.scopes.join(" "),
    state, nonce: challenge.nonce, code_challenge: codeChallenge, code_challenge_method: "S256",
  })) url.searchParams.set(k, v);
  return { config, state, verifier, nonce: challenge.nonce, redirectUri, tokenEndpoint: meta["token_endpoint"] as string, url: url.toString() };
}

/** Check the answer's `state` against the request's, then exchange the code (RFC 6749 §4.1.3
 * with the PKCE verifier, RFC 7636 §4.5): the ID token, for the relay to verify. */
export async function finishRequest(request: SsoRequest, answer: SsoAnswer): Promise<string> {
  if (typeof answer.state !== "string" || !s.constantTimeEqual(utf8(answer.state), utf8(request.state))) {
    throw new SsoError("sso_state", "The sign-in answer was not for this request, so it was refused. Sign in again.");
  }
  if (typeof answer.code !== "string" || !answer.code) {
    throw new SsoError("sso_failed", `Your hospital's sign-in service did not sign you in (${answer.error ?? "no answer"}).`);
  }
  const exchanged = await idpJson(request.tokenEndpoint, {
    method: "POST",
    headers: { "content-type": "application/x-www-form-urlencoded" },
    body: new URLSearchParams({
      grant_type: "authorization_code", code: answer.code, redirect_uri: request.redirectUri,
      client_id: request.config.client_id, code_verifier: request.verifier,
    }).toString(),
  });
  const idToken = exchanged.body["id_token"];
  if (exchanged.status !== 200 || typeof idToken !== "string") {
    throw new SsoError("sso_failed", `Your hospital's sign-in service refused the sign-in (HTTP ${exchanged.status}). Sign in again.`);
  }
  return idToken;
}
