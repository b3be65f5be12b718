/**
 * Runs the protocol core against every section of protocol/vectors/v1.json (docs/PROTOCOL.md
 * §10) and prints one JSON report: per section, how many checks ran and which failed. A
 * section of the file this runner does not know is reported as "unknown": the pytest wrapper
 * (tests/phone/test_vectors.py) fails on it, so a new section cannot go untested.
 *
 *   node clients/phone/dist-test/vectors.mjs protocol/vectors/v1.json
 */
import { readFileSync } from "node:fs";
import { decode as mpDecode } from "@msgpack/msgpack";
import * as att from "../src/protocol/attachments.js";
import { concat, fromHex, fromUtf8, hex, utf8 } from "../src/protocol/bytes.js";
import * as c from "../src/protocol/canonical.js";
import * as certs from "../src/protocol/certs.js";
import * as consent from "../src/protocol/consent.js";
import * as env from "../src/protocol/envelope.js";
import * as keys from "../src/protocol/keys.js";
import * as proof from "../src/protocol/proof.js";
import * as s from "../src/protocol/sodium.js";
import * as st from "../src/protocol/statements.js";

type V = Record<string, any>;

const T0 = 1_767_225_600;
const YEAR = 365 * 24 * 3600;
const ORG_ID = "st-elsewhere";

const d = (x: string): Uint8Array => c.b64urlDecode(x);
const e = (x: Uint8Array): string => c.b64urlEncode(x);

class Section {
  checks = 0;
  failures: string[] = [];
  eq(what: string, got: unknown, want: unknown): void {
    this.checks++;
    const g = got instanceof Uint8Array ? e(got) : JSON.stringify(got);
    const w = want instanceof Uint8Array ? e(want) : JSON.stringify(want);
    if (g !== w) this.failures.push(`${what}: got ${g.slice(0, 120)}, want ${w.slice(0, 120)}`);
  }
  ok(what: string, cond: boolean): void {
    this.checks++;
    if (!cond) this.failures.push(what);
  }
  throwsCode(what: string, fn: () => unknown, code: string): void {
    this.checks++;
    try {
      fn();
      this.failures.push(`${what}: did not fail (want ${code})`);
    } catch (err) {
      const got = (err as { code?: string }).code;
      if (got !== code) this.failures.push(`${what}: failed with ${got ?? String(err)}, want ${code}`);
    }
  }
}

/** Re-derive a party from its rng, exactly as protocol/vectors.py's _party does. */
function party(name: string, v: V, orgSeed: Uint8T, t: Section, kind: string, account: string, roles: string[], oneTime: number): void {
  const rng = keys.deterministicRng(`lightbox/v1/vectors/party/${name}`);
  const identity = keys.ed25519FromSeed(rng(32));
  t.eq(`${name} identity seed`, identity.seed, d(v.identity_seed));
  t.eq(`${name} identity public`, identity.public, d(v.identity_public));
  t.eq(`${name} identity key id`, keys.keyId(identity.public), v.identity_key_id);
  const userId = keys.uuid4(rng);
  const serial = keys.uuid4(rng);
  const licence = account === "clinician" ? { type: "GMC", number: "7" + String(name.length).repeat(6), jurisdiction: "GB", expires_at: T0 + 2 * YEAR } : null;
  const user: certs.UserCertificate = {
    v: 1, serial, user_id: userId, org_id: ORG_ID, display_name: name, account_kind: account as "clinician",
    roles, specialty: account === "clinician" ? "Dermatology" : null, department: account === "clinician" ? "Outpatients" : null,
    licence, identity_key: e(identity.public), not_before: T0 - 3600, not_after: T0 + YEAR, issued_at: T0 - 3600,
  };
  t.eq(`${name} user certificate body`, fromUtf8(c.canonicalJson(user)), v.user_certificate_body);
  t.eq(`${name} user certificate`, certs.issueUserCertificate(user, orgSeed), v.user_certificate);
  const deviceKeys = keys.generateDeviceKeys(keys.uuid4(rng), rng);
  t.eq(`${name} device id`, deviceKeys.deviceId, v.device_id);
  t.eq(`${name} device signing seed`, deviceKeys.signing.seed, d(v.device_signing_seed));
  t.eq(`${name} device signing public`, deviceKeys.signing.public, d(v.device_signing_public));
  t.eq(`${name} device dh secret`, deviceKeys.dh.secret, d(v.device_dh_secret));
  t.eq(`${name} device dh public`, deviceKeys.dh.public, d(v.device_dh_public));
  const device: certs.DeviceCertificate = {
    v: 1, device_id: deviceKeys.deviceId, user_id: userId, org_id: ORG_ID, kind: kind as "mobile",
    signing_key: e(deviceKeys.signing.public), dh_key: e(deviceKeys.dh.public), issued_at: T0 - 1800, not_after: T0 + YEAR,
  };
  t.eq(`${name} device certificate body`, fromUtf8(c.canonicalJson(device)), v.device_certificate_body);
  t.eq(`${name} device certificate`, certs.issueDeviceCertificate(device, identity.seed), v.device_certificate);
  const spk = keys.generatePrekey(1, rng);
  t.eq(`${name} signed prekey id`, spk.prekeyId, v.signed_prekey.id);
  t.eq(`${name} signed prekey secret`, spk.keypair.secret, d(v.signed_prekey.secret));
  t.eq(`${name} signed prekey public`, spk.keypair.public, d(v.signed_prekey.public));
  t.eq(
    `${name} signed prekey token`,
    certs.issueSignedPrekey({ device_id: device.device_id, prekey_id: 1, public: e(spk.keypair.public), created_at: T0 - 1800 }, deviceKeys.signing.seed),
    v.signed_prekey.token,
  );
  t.eq(`${name} one-time prekey count`, v.one_time_prekeys.length, oneTime);
  for (let i = 0; i < oneTime; i++) {
    const otk = keys.generatePrekey(100 + i, rng);
    const w = v.one_time_prekeys[i];
    t.eq(`${name} one-time prekey ${i} id`, otk.prekeyId, w.id);
    t.eq(`${name} one-time prekey ${i} secret`, otk.keypair.secret, d(w.secret));
    t.eq(`${name} one-time prekey ${i} public`, otk.keypair.public, d(w.public));
    t.eq(`${name} one-time prekey ${i} token`, certs.issueOneTimePrekey({ device_id: device.device_id, prekey_id: otk.prekeyId, public: e(otk.keypair.public) }, deviceKeys.signing.seed), w.token);
  }
  // And the chain verifies the way a recipient would check it.
  const vd = certs.verifyChain(v.user_certificate, v.device_certificate, { [ORG_ID]: keys.ed25519FromSeed(orgSeed).public }, T0, null);
  t.eq(`${name} chain verifies`, vd.deviceId, v.device_id);
  t.eq(`${name} signed prekey verifies`, certs.verifySignedPrekey(v.signed_prekey.token, vd).public, v.signed_prekey.public);
}
type Uint8T = Uint8Array;

function sectionKeys(v: V, t: Section): void {
  const orgRng = keys.deterministicRng("lightbox/v1/vectors/org");
  const org = keys.ed25519FromSeed(orgRng(32));
  t.eq("organisation seed", org.seed, d(v.organisation.seed));
  t.eq("organisation public", org.public, d(v.organisation.public));
  t.eq("organisation key id", keys.keyId(org.public), v.organisation.key_id);
  t.eq("organisation id", v.organisation.org_id, ORG_ID);
  party("Dr Alice Adeyemi", v.alice, org.seed, t, "mobile", "clinician", ["registrar"], 1);
  party("Dr Bob Brennan", v.bob, org.seed, t, "desktop", "clinician", ["consultant"], 2);
  party("Record gateway", v.gateway, org.seed, t, "gateway", "service", [certs.ROLE_RECORD_GATEWAY], 0);
  const ps = v.passphrase_seal;
  const sealed = keys.sealWithPassphrase(d(ps.secret), ps.passphrase, { opslimit: ps.opslimit, memlimit: ps.memlimit }, keys.deterministicRng("lightbox/v1/vectors/passphrase"));
  t.eq("passphrase seal", sealed, d(ps.sealed));
  t.eq("passphrase open", keys.openWithPassphrase(d(ps.sealed), ps.passphrase), d(ps.secret));
  t.throwsCode("passphrase open with a wrong passphrase", () => keys.openWithPassphrase(d(ps.sealed), "wrong horse"), "verification_failed");
}

function sectionCertificates(v: V, keysV: V, t: Section): void {
  const body = c.parseCanonical(d(v.user_certificate.split(".")[0]));
  t.eq("user certificate signing input", c.signingInput(c.LABEL_USER_CERTIFICATE, c.canonicalJson(body)), d(v.user_certificate_signing_input));
  const trusted = { [ORG_ID]: d(keysV.organisation.public) };
  const vd = certs.verifyChain(v.user_certificate, v.device_certificate, trusted, v.verify_at, null);
  t.eq("chain verifies at verify_at", vd.userId, JSON.parse(keysV.alice.user_certificate_body).user_id);
  t.eq("labels", [...c.LABELS], v.labels);
  t.throwsCode("untrusted organisation", () => certs.verifyChain(v.user_certificate, v.device_certificate, {}, v.verify_at, null), "certificate_untrusted");
  t.throwsCode("user certificate before its validity", () => certs.verifyChain(v.user_certificate, v.device_certificate, trusted, T0 - 7200, null), "certificate_expired");
  t.throwsCode("wrong organisation key", () => certs.verifyChain(v.user_certificate, v.device_certificate, { [ORG_ID]: d(keysV.alice.identity_public) }, v.verify_at, null), "certificate_invalid");
  t.throwsCode("device certificate of another user", () => certs.verifyChain(v.user_certificate, keysV.bob.device_certificate, trusted, v.verify_at, null), "certificate_invalid");
  const [b, sig] = v.user_certificate.split(".");
  const flipped = sig[0] === "A" ? "B" + sig.slice(1) : "A" + sig.slice(1);
  t.throwsCode("tampered signature", () => certs.verifyChain(`${b}.${flipped}`, v.device_certificate, trusted, v.verify_at, null), "certificate_invalid");
}

async function sectionSealed(v: V, k: V, t: Section): Promise<void> {
  const rng = keys.deterministicRng("lightbox/v1/vectors/sealed_message");
  const trusted = { [ORG_ID]: d(k.organisation.public) };
  const alice = certs.verifyChain(k.alice.user_certificate, k.alice.device_certificate, trusted, T0, null);
  const bob = certs.verifyChain(k.bob.user_certificate, k.bob.device_certificate, trusted, T0, null);
  const gw = certs.verifyChain(k.gateway.user_certificate, k.gateway.device_certificate, trusted, T0, null);
  const header: env.MessageHeader = {
    v: 1, message_id: keys.uuid4(rng), thread_id: keys.uuid4(rng), sender_user_id: alice.userId, sender_device_id: alice.deviceId,
    sent_at: T0, purpose: "direct_care", priority: "routine", consent_id: keys.uuid4(rng), attachment_ids: [],
    recipient_devices: [bob.deviceId, gw.deviceId], external: false, emergency: null, body_size: 0,
  };
  const sender: keys.DeviceKeys = { deviceId: alice.deviceId, signing: keys.ed25519FromSeed(d(k.alice.device_signing_seed)), dh: keys.x25519FromSecret(d(k.alice.device_dh_secret)) };
  const bundles = [
    env.bundleFromTokens(bob, k.bob.signed_prekey.token, k.bob.one_time_prekeys[0].token),
    env.bundleFromTokens(gw, k.gateway.signed_prekey.token),
  ];
  const body = utf8(v.body);
  const { sealed, trace } = await env.sealMessageTraced(header, body, sender, bundles, rng);
  t.eq("header canonical", fromUtf8(env.headerBytes(sealed.header)), v.header_canonical);
  t.eq("content key", trace.contentKey, d(v.content_key));
  t.eq("body nonce", sealed.nonce, d(v.body_nonce));
  t.eq("body associated data", env.bodyAssociatedData(sealed.header), d(v.body_associated_data));
  t.eq("ciphertext", sealed.ciphertext, d(v.ciphertext));
  t.eq("recipient count", trace.recipients.length, v.recipients.length);
  trace.recipients.forEach((r, i) => {
    const w = v.recipients[i];
    t.eq(`recipient ${i} device`, sealed.keys[i]!.device_id, w.device_id);
    t.eq(`recipient ${i} ephemeral secret`, r.ephemeralSecret, d(w.ephemeral_secret));
    t.eq(`recipient ${i} ephemeral public`, r.ephemeralPublic, d(w.ephemeral_public));
    t.eq(`recipient ${i} dh signed prekey`, r.dhSignedPrekey, d(w.dh_signed_prekey));
    t.eq(`recipient ${i} dh device`, r.dhDevice, d(w.dh_device));
    t.eq(`recipient ${i} dh one-time prekey`, r.dhOneTimePrekey, d(w.dh_one_time_prekey));
    t.eq(`recipient ${i} kdf info`, r.kdfInfo, d(w.kdf_info));
    t.eq(`recipient ${i} wrap key`, r.wrapKey, d(w.wrap_key));
    t.eq(`recipient ${i} wrap nonce`, r.wrapNonce, d(w.wrap_nonce));
    t.eq(`recipient ${i} wrap ad`, r.wrapAd, d(w.wrap_ad));
  });
  t.eq("signature input", env.signatureInput(sealed), d(v.signature_input));
  t.eq("signature", sealed.signature, d(v.signature));
  t.eq("msgpack", env.encodeSealed(sealed), d(v.msgpack));
  // Opening the published bytes, as Bob (with his one-time prekey) and as the gateway.
  const decoded = env.decodeSealed(d(v.msgpack));
  const bobKeys: keys.DeviceKeys = { deviceId: bob.deviceId, signing: keys.ed25519FromSeed(d(k.bob.device_signing_seed)), dh: keys.x25519FromSecret(d(k.bob.device_dh_secret)) };
  const bobStore = new keys.MemoryPrekeyStore(
    [{ prekeyId: 1, keypair: keys.x25519FromSecret(d(k.bob.signed_prekey.secret)) }],
    [{ prekeyId: 100, keypair: keys.x25519FromSecret(d(k.bob.one_time_prekeys[0].secret)) }],
  );
  const seen = new env.MemorySeenSet();
  t.eq("Bob opens", fromUtf8(await env.openMessage(decoded, bobKeys, bobStore, alice, seen)), v.body);
  await expectReject(t, "Bob opens it again (replay)", () => env.openMessage(decoded, bobKeys, bobStore, alice, seen), "replayed");
  const gwKeys: keys.DeviceKeys = { deviceId: gw.deviceId, signing: keys.ed25519FromSeed(d(k.gateway.device_signing_seed)), dh: keys.x25519FromSecret(d(k.gateway.device_dh_secret)) };
  const gwStore = new keys.MemoryPrekeyStore([{ prekeyId: 1, keypair: keys.x25519FromSecret(d(k.gateway.signed_prekey.secret)) }]);
  t.eq("gateway opens", fromUtf8(await env.openMessage(decoded, gwKeys, gwStore, alice, new env.MemorySeenSet())), v.body);
  await expectReject(t, "a message claiming another sender", () => env.openMessage(decoded, gwKeys, gwStore, bob, new env.MemorySeenSet()), "sender_mismatch");
  const tampered = { ...decoded, ciphertext: decoded.ciphertext.slice() };
  tampered.ciphertext[0]! ^= 1;
  await expectReject(t, "tampered ciphertext", () => env.openMessage(tampered, gwKeys, gwStore, alice, new env.MemorySeenSet()), "verification_failed");
  const noOtk = new keys.MemoryPrekeyStore([{ prekeyId: 1, keypair: keys.x25519FromSecret(d(k.bob.signed_prekey.secret)) }]);
  await expectReject(t, "a used one-time prekey", () => env.openMessage(decoded, bobKeys, noOtk, alice, new env.MemorySeenSet()), "verification_failed");
}

async function expectReject(t: Section, what: string, fn: () => Promise<unknown>, code: string): Promise<void> {
  t.checks++;
  try {
    await fn();
    t.failures.push(`${what}: did not fail (want ${code})`);
  } catch (err) {
    const got = (err as { code?: string }).code;
    if (got !== code) t.failures.push(`${what}: failed with ${got ?? String(err)}, want ${code}`);
  }
}

function sectionAttachment(v: V, t: Section): void {
  const rng = keys.deterministicRng("lightbox/v1/vectors/attachment");
  const small = att.encryptAttachment(utf8("not really a JPEG"), rng);
  t.eq("small plaintext", utf8("not really a JPEG"), d(v.small.plaintext));
  t.eq("small key", small.key, d(v.small.key));
  t.eq("small header", small.ciphertext.subarray(0, 24), d(v.small.header));
  t.eq("small plaintext sha256", small.sha256, d(v.small.plaintext_sha256));
  t.eq("small ciphertext", small.ciphertext, d(v.small.ciphertext));
  t.eq("small decrypts", att.decryptAttachment(d(v.small.ciphertext), d(v.small.key), { sha256: d(v.small.plaintext_sha256), size: 17 }), d(v.small.plaintext));
  const w = v.two_chunks;
  const big = new Uint8Array(w.size);
  for (let i = 0; i < big.length; i++) big[i] = i % 251;
  const key = rng(32);
  t.eq("two-chunk key", key, d(w.key));
  const enc = new att.AttachmentEncryptor(key, rng);
  const first = enc.feed(big);
  const last = enc.finish();
  const stream = concat(enc.header, first, last);
  t.eq("two-chunk header", enc.header, d(w.header));
  t.eq("two-chunk plaintext sha256", enc.sha256, d(w.plaintext_sha256));
  t.eq("two-chunk ciphertext size", stream.length, w.ciphertext_size);
  t.eq("ciphertext_size()", att.ciphertextSize(w.size), w.ciphertext_size);
  t.eq("two-chunk ciphertext sha256", s.sha256(stream), d(w.ciphertext_sha256));
  t.eq("two-chunk first chunk sha256", s.sha256(first), d(w.first_chunk_sha256));
  t.eq("two-chunk final chunk", last, d(w.final_chunk));
  t.eq("two-chunk decrypts", s.sha256(att.decryptAttachment(stream, key, { size: w.size })), d(w.plaintext_sha256));
  t.throwsCode("truncated stream", () => att.decryptAttachment(stream.subarray(0, 24 + att.CIPHERTEXT_CHUNK_SIZE), key), "verification_failed");
  t.throwsCode("bytes after the final chunk", () => att.decryptAttachment(concat(stream, new Uint8Array([0])), key), "verification_failed");
  const swapped = stream.slice();
  swapped[30]! ^= 0x80;
  t.throwsCode("tampered chunk", () => att.decryptAttachment(swapped, key), "verification_failed");
}

function sectionRevocation(v: V, k: V, t: Section): void {
  const body = c.parseCanonical(utf8(v.body)) as unknown as certs.RevocationList;
  t.eq("revocation body canonical", fromUtf8(c.canonicalJson(body)), v.body);
  t.eq("revocation token", certs.issueRevocationList(body, d(k.organisation.seed)), v.token);
  const rl = certs.verifyRevocationList(v.token, { [ORG_ID]: d(k.organisation.public) });
  t.eq("revocation number", rl.number, 7);
  const set = new certs.RevocationSet();
  set.add(rl);
  t.throwsCode(
    "a revoked device's chain",
    () => certs.verifyChain(k.bob.user_certificate, k.bob.device_certificate, { [ORG_ID]: d(k.organisation.public) }, T0, set),
    "certificate_revoked",
  );
  t.throwsCode("an older list", () => set.add({ ...rl, number: 6 }), "certificate_revoked");
}

function sectionFiling(v: V, k: V, t: Section): void {
  const rng = keys.deterministicRng("lightbox/v1/vectors/filing_statement");
  const body: st.FilingStatement = {
    v: 1, statement_id: keys.uuid4(rng), device_id: k.gateway.device_id, attachment_id: keys.uuid4(rng), message_id: keys.uuid4(rng),
    thread_id: keys.uuid4(rng), filed_at: T0, receipt_sha256: e(s.sha256(utf8("sealed filing receipt"))),
  };
  t.eq("filing statement body", fromUtf8(c.canonicalJson(body)), v.body);
  t.eq("filing statement token", st.issueFilingStatement(body, d(k.gateway.device_signing_seed)), v.token);
  t.eq("filing statement verifies", st.verifyFilingStatement(v.token, d(k.gateway.device_signing_public), k.gateway.device_id).statement_id, body.statement_id);
  t.throwsCode("a statement under another device's key", () => st.verifyFilingStatement(v.token, d(k.bob.device_signing_public)), "verification_failed");
  t.throwsCode("a filing statement as an expiry confirmation", () => st.verifyExpiryConfirmation(v.token, d(k.gateway.device_signing_public)), "verification_failed");
}

function sectionProof(v: V, t: Section): void {
  const rng = keys.deterministicRng("lightbox/v1/vectors/request_proof");
  const nonce = rng(proof.PROOF_NONCE_BYTES);
  t.eq("nonce", nonce, d(v.nonce));
  const target = `/v1/threads/${keys.uuid4(rng)}/participants?notify=1`;
  t.eq("target", target, v.target);
  const body = utf8(`{"users":["${keys.uuid4(rng)}"]}`);
  t.eq("body", fromUtf8(body), v.body);
  t.eq("body sha256", hex(s.sha256(body)), v.body_sha256);
  const input = proof.requestProofInput(v.method, v.target, v.timestamp, nonce, body, v.access_token);
  t.eq("signing input", input, d(v.signing_input));
  const seed = d((VECTORS as V).keys.bob.device_signing_seed);
  t.eq("signature", s.ed25519Sign(seed, input), d(v.signature));
  t.eq("header", proof.makeProof(seed, v.method, v.target, body, v.access_token, v.timestamp, keys.deterministicRng("lightbox/v1/vectors/request_proof")), v.header);
  const pub = d(v.device_signing_public);
  t.ok("the proof verifies", proof.verifyProof(v.header, pub, v.method, v.target, body, v.access_token));
  t.ok("another body is refused", !proof.verifyProof(v.header, pub, v.method, v.target, utf8('{"users":[]}'), v.access_token));
  t.ok("another query is refused", !proof.verifyProof(v.header, pub, v.method, v.target.replace("notify=1", "notify=0"), body, v.access_token));
  t.ok("another method is refused", !proof.verifyProof(v.header, pub, "PUT", v.target, body, v.access_token));
  t.ok("another token is refused", !proof.verifyProof(v.header, pub, v.method, v.target, body, v.access_token + "x"));
  t.eq("refused changes listed", v.refused_changes.length, 4);
}

function sectionConsent(v: V, t: Section): void {
  const seed = fromHex(v.issuer_seed);
  const pub = s.ed25519PublicKey(seed);
  t.eq("issuer public", hex(pub), v.issuer_public);
  t.eq("kid", keys.keyId(pub), v.kid);
  const token = consent.issueConsentToken(v.claims, seed);
  t.eq("token", token, v.token);
  const [h, p, sig] = token.split(".");
  t.eq("signing input", `${h}.${p}`, v.signing_input);
  t.eq("signature", sig, v.signature_b64url);
  t.eq("header", JSON.parse(fromUtf8(c.b64urlDecode(h!))), v.header);
  const claims = consent.verifyConsentToken(v.token, pub, v.valid_at);
  t.eq("claims", canonicalize(claims), canonicalize(v.claims));
  t.eq("peeked claims", canonicalize(consent.peekConsentTokenUnverified(v.token)), canonicalize(v.claims));
  t.eq("FHIR Consent", canonicalize(consent.toFhirConsent(claims)), canonicalize(v.fhir));
  for (const bad of v.invalid) {
    const key = bad.issuer_public ? fromHex(bad.issuer_public) : pub;
    t.throwsCode(`invalid case ${bad.case}`, () => consent.verifyConsentToken(bad.token ?? v.token, key, bad.at), bad.code);
  }
  // Header confusion (RFC 8725 §2.1): alg none, and an extra header parameter.
  const none = `${c.b64urlEncode(utf8('{"alg":"none","kid":"' + v.kid + '","typ":"lightbox-consent+jwt"}'))}.${p}.${sig}`;
  t.throwsCode("alg none", () => consent.verifyConsentToken(none, pub, v.valid_at), "consent_invalid");
  const extra = `${c.b64urlEncode(utf8('{"alg":"EdDSA","jku":"x","kid":"' + v.kid + '","typ":"lightbox-consent+jwt"}'))}.${p}.${sig}`;
  t.throwsCode("an extra header parameter", () => consent.verifyConsentToken(extra, pub, v.valid_at), "consent_invalid");
}

function canonicalize(x: unknown): string {
  return fromUtf8(c.canonicalJson(x));
}

let VECTORS: V = {};

async function main(): Promise<void> {
  await s.ready();
  const path = process.argv[2] ?? "protocol/vectors/v1.json";
  VECTORS = JSON.parse(readFileSync(path, "utf-8")) as V;
  const runners: Record<string, (t: Section) => void | Promise<void>> = {
    keys: (t) => sectionKeys(VECTORS.keys, t),
    certificates: (t) => sectionCertificates(VECTORS.certificates, VECTORS.keys, t),
    sealed_message: (t) => sectionSealed(VECTORS.sealed_message, VECTORS.keys, t),
    attachment: (t) => sectionAttachment(VECTORS.attachment, t),
    revocation: (t) => sectionRevocation(VECTORS.revocation, VECTORS.keys, t),
    filing_statement: (t) => sectionFiling(VECTORS.filing_statement, VECTORS.keys, t),
    request_proof: (t) => sectionProof(VECTORS.request_proof, t),
    consent: (t) => sectionConsent(VECTORS.consent, t),
  };
  const report: Record<string, { checks: number; failures: string[] } | "unknown"> = {};
  for (const name of Object.keys(VECTORS)) {
    if (["version", "time", "rng"].includes(name)) continue;
    const run = runners[name];
    if (!run) {
      report[name] = "unknown";
      continue;
    }
    const t = new Section();
    try {
      await run(t);
    } catch (err) {
      t.failures.push(`threw ${(err as Error).stack ?? String(err)}`);
    }
    report[name] = { checks: t.checks, failures: t.failures };
  }
  const meta = { version: VECTORS.version, time: VECTORS.time === T0, rng: typeof VECTORS.rng === "string" };
  process.stdout.write(JSON.stringify({ meta, sections: report }, null, 1) + "\n");
  void mpDecode;
}

main().catch((err) => {
  process.stderr.write(String((err as Error).stack ?? err) + "\n");
  process.exit(2);
});
