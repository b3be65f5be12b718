/**
 * Lets the Python tests drive the TypeScript protocol core (tests/phone/test_cross.py): one
 * JSON command on stdin, one JSON answer on stdout; binary values are base64url.
 *
 *   {"op": "encrypt_attachment", "plaintext"}                  -> {key, ciphertext, sha256, size}
 *   {"op": "seal", "sender", "recipients", "trusted", "at", "header", "body"}  -> {sealed}
 *   {"op": "open", "me", "sender", "trusted", "at", "sealed", "attachments"}    -> {body, images} | {error}
 *   {"op": "sign_consent", "claims", "identity_seed"}          -> {token}
 *   {"op": "bench_encrypt", "size", "runs"}                     -> {median_ms} (bench/phone.py)
 *   {"op": "verify_consent", "token", "identity_public", "at"} -> {claims} | {error}
 *   {"op": "quality", "rgba", "width", "height"}              -> {warnings: [{issue, message}]} (app/quality.ts)
 *   {"op": "prekey_schedule", "signed": [{id, created_at}], "now"} -> {due, kept: [id]} (app/prekeys.ts)
 *   {"op": "read_answer", "status", "content_type", "text"}   -> {value} | {error: {code, status, message, sentence}} (app/relay.ts)
 *   {"op": "refusal_sentence", "code", "detail", "title"}     -> {sentence} (app/relay.ts)
 *   {"op": "resumed_sentence", "ok", "code", "kept", "refusal"} -> {sentence} (app/relay.ts)
 *   {"op": "final_refusal_sentence", "code", "status", "title"} -> {sentence, passes} (app/relay.ts)
 *   {"op": "decode_messages", "cases": [{data, bundles, ready}]} -> {results: [{frames: [{t, nonce?}], error}]}
 *                                                             (protocol/frames.ts decodeMessage, PROTOCOL §3.6)
 *   {"op": "same_patient", "pairs": [[record, record]]}      -> {same: [bool]} (app/patients.ts)
 *   {"op": "photo_patient", "cases": [{kept, records, photo}]} -> {results: [{other, kept}]}: the consult's
 *                                kept patients (a stored thread's `patient`/`patients`) with `records` learnt,
 *                                and the record of it `photo` names another patient than, or null (app/patients.ts)
 *   {"op": "copies_shown", "claim", "arrivals": [view]}       -> {shown: [message_id]}: the thread's messages
 *                                listed once the views have arrived in that order (app/copies.ts)
 */
import { readFileSync } from "node:fs";
import * as att from "../src/protocol/attachments.js";
import { hex } from "../src/protocol/bytes.js";
import { makeBody, encodeBody, decodeBody, type Body, type RecordData } from "../src/protocol/body.js";
import { b64urlDecode as d, b64urlEncode as e } from "../src/protocol/canonical.js";
import * as certs from "../src/protocol/certs.js";
import * as consent from "../src/protocol/consent.js";
import * as env from "../src/protocol/envelope.js";
import { decodeMessage } from "../src/protocol/frames.js";
import * as keys from "../src/protocol/keys.js";
import * as s from "../src/protocol/sodium.js";
import * as prekeys from "../src/app/prekeys.js";
import { checkQuality } from "../src/app/quality.js";
import { learnPatient, otherPatient, patientOf, samePatient, type PatientsKept } from "../src/app/patients.js";
import { oneCopyShown } from "../src/app/copies.js";
import type { MessageView, ThreadRecord } from "../src/app/views.js";
import { RelayError, finalRefusalSentence, httpPasses, readAnswer, refusalSentence, resumedSentence } from "../src/app/relay.js";

type V = Record<string, any>;

function trusted(t: Record<string, string>): Record<string, Uint8Array> {
  return Object.fromEntries(Object.entries(t).map(([k, v]) => [k, d(v)]));
}

function deviceKeys(x: V): keys.DeviceKeys {
  return { deviceId: x.device_id, signing: keys.ed25519FromSeed(d(x.signing_seed)), dh: keys.x25519FromSecret(d(x.dh_secret)) };
}

function bodyFromJson(b: V): Body {
  return makeBody({
    ...b,
    attachments: (b.attachments ?? []).map((a: V) => ({ ...a, key: d(a.key), sha256: d(a.sha256), width: a.width ?? null, height: a.height ?? null })),
  });
}

function bodyToJson(b: Body): V {
  return { ...b, attachments: b.attachments.map((a) => ({ ...a, key: e(a.key), sha256: e(a.sha256) })) };
}

async function run(cmd: V): Promise<V> {
  switch (cmd.op) {
    case "encrypt_attachment": {
      const enc = att.encryptAttachment(d(cmd.plaintext));
      return { key: e(enc.key), ciphertext: e(enc.ciphertext), sha256: e(enc.sha256), sha256_hex: hex(enc.sha256), size: enc.size };
    }
    case "seal": {
      const orgs = trusted(cmd.trusted);
      const bundles = cmd.recipients.map((r: V) =>
        env.bundleFromTokens(certs.verifyChain(r.user_certificate, r.device_certificate, orgs, cmd.at, null), r.signed_prekey, r.one_time_prekey ?? null),
      );
      const header: env.MessageHeader = { external: false, emergency: null, body_size: 0, ...cmd.header };
      const sealed = await env.sealMessage(header, encodeBody(bodyFromJson(cmd.body)), deviceKeys(cmd.sender), bundles);
      return { sealed: e(env.encodeSealed(sealed)) };
    }
    case "open": {
      const orgs = trusted(cmd.trusted);
      const sender = certs.verifyChain(cmd.sender.user_certificate, cmd.sender.device_certificate, orgs, cmd.at, null);
      const store = new keys.MemoryPrekeyStore(
        cmd.me.signed_prekeys.map((p: V) => ({ prekeyId: p.id, keypair: keys.x25519FromSecret(d(p.secret)) })),
        (cmd.me.one_time_prekeys ?? []).map((p: V) => ({ prekeyId: p.id, keypair: keys.x25519FromSecret(d(p.secret)) })),
      );
      let body: Body;
      try {
        const sealed = env.decodeSealed(d(cmd.sealed));
        body = decodeBody(await env.openMessage(sealed, deviceKeys(cmd.me), store, sender, new env.MemorySeenSet()));
      } catch (err) {
        return { error: (err as { code?: string }).code ?? String(err) };
      }
      const images: V = {};
      for (const a of body.attachments) {
        const blob = cmd.attachments?.[a.attachment_id];
        if (blob) images[a.attachment_id] = e(att.decryptAttachment(d(blob), a.key, { sha256: a.sha256, size: a.size }));
      }
      return { body: bodyToJson(body), images };
    }
    case "bench_encrypt": {
      // Median time to encrypt `size` random bytes as an attachment (secretstream, §6).
      const data = s.randomBytes(cmd.size);
      const times: number[] = [];
      for (let i = 0; i < cmd.runs; i++) {
        const t0 = performance.now();
        att.encryptAttachment(data);
        times.push(performance.now() - t0);
      }
      times.sort((x, y) => x - y);
      return { median_ms: times[Math.floor(times.length / 2)] };
    }
    case "sign_consent":
      return { token: consent.issueConsentToken(cmd.claims, d(cmd.identity_seed)) };
    case "verify_consent":
      try {
        return { claims: consent.verifyConsentToken(cmd.token, d(cmd.identity_public), cmd.at) };
      } catch (err) {
        return { error: (err as { code?: string }).code ?? String(err) };
      }
    case "quality":
      return { warnings: checkQuality(new Uint8ClampedArray(d(cmd.rgba)), cmd.width, cmd.height) };
    case "prekey_schedule": {
      const signed = (cmd.signed as V[]).map((p) => ({ id: p.id as number, secret: new Uint8Array(32), created_at: p.created_at as number | undefined }));
      return {
        due: prekeys.rotationDue(signed, cmd.now, prekeys.DEFAULT_POLICY),
        kept: prekeys.keptSignedPrekeys(signed, cmd.now, prekeys.DEFAULT_POLICY).map((p) => p.id),
      };
    }
    case "read_answer": {
      try {
        return { value: readAnswer(cmd.status, cmd.content_type, cmd.text) ?? null };
      } catch (err) {
        if (!(err instanceof RelayError)) throw err;
        return { error: { code: err.code, status: err.status, message: err.message, sentence: refusalSentence(err) } };
      }
    }
    case "refusal_sentence":
      return { sentence: refusalSentence(new RelayError(cmd.code, 403, cmd.detail ?? "", cmd.title ?? "")) };
    case "resumed_sentence":
      return { sentence: resumedSentence(cmd.ok ? { ok: true } : { ok: false, code: cmd.code, kept: cmd.kept, refusal: cmd.refusal }) };
    case "final_refusal_sentence": {
      const err = new RelayError(cmd.code, cmd.status, "", cmd.title ?? "");
      return { sentence: finalRefusalSentence(err), passes: httpPasses(err) };
    }
    case "decode_messages":
      // Each websocket message as the phone reads it: the frames it carries (their type, and a
      // ping's or pong's nonce to tell them apart) and the code of the error that ends it.
      return {
        results: (cmd.cases as V[]).map((c) => {
          const got = decodeMessage(d(c.data), { bundles: c.bundles, ready: c.ready });
          return {
            frames: got.frames.map((f) => (f["nonce"] instanceof Uint8Array ? { t: f.t, nonce: hex(f["nonce"]) } : { t: f.t })),
            error: got.error ? got.error.code : null,
          };
        }),
      };
    case "same_patient":
      return { same: (cmd.pairs as [RecordData, RecordData][]).map(([a, b]) => samePatient(patientOf(a), patientOf(b))) };
    case "photo_patient":
      return {
        results: (cmd.cases as V[]).map((c) => {
          const kept: PatientsKept = c.kept ?? {};
          for (const r of c.records as RecordData[]) learnPatient(kept, r);
          return { other: otherPatient(kept, c.photo), kept };
        }),
      };
    case "copies_shown": {
      const thread: ThreadRecord = { thread_id: "t", role: null, subject: null, priority: "urgent", messages: [] };
      for (const view of cmd.arrivals as MessageView[]) {
        if (view.message_id !== cmd.claim.message_id) oneCopyShown(view, cmd.claim, thread); // a copy, as the worker does
        thread.messages.push(view);
      }
      return { shown: thread.messages.filter((m) => !m.copy_of).map((m) => m.message_id) };
    }
    default:
      throw new Error(`unknown op ${String(cmd.op)}`);
  }
}

await s.ready();
const answer = await run(JSON.parse(readFileSync(0, "utf-8")) as V);
process.stdout.write(JSON.stringify(answer) + "\n");
