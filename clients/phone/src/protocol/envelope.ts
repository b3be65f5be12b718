/**
 * Sealed messages (mirrors protocol/envelope.py; docs/PROTOCOL.md §5): the body encrypted once
 * under a fresh content key (XChaCha20-Poly1305-IETF), the key wrapped per recipient device
 * through X25519 + HKDF-SHA256 (RFC 7748, RFC 5869), and the whole signed by the sender device
 * (Ed25519, RFC 8032). `openMessage` checks the sender's chain and signature BEFORE decrypting
 * anything; a replay is ReplayError, every other failure one opaque VerificationError.
 */
import { decode as mpDecode, encode as mpEncode } from "@msgpack/msgpack";
import { concat, u16be, u32be, utf8 } from "./bytes.js";
import * as c from "./canonical.js";
import type { OneTimePrekey, SignedPrekey, VerifiedDevice } from "./certs.js";
import { verifyOneTimePrekey, verifySignedPrekey } from "./certs.js";
import { DecodeError, LimitExceeded, ReplayError, VerificationError } from "./errors.js";
import type { DeviceKeys, PrekeyStore } from "./keys.js";
import { bin, bool, int, list, nullable, oneOf, str, struct, validate } from "./schema.js";
import * as s from "./sodium.js";

export const CONTENT_KEY_BYTES = 32;
export const MAX_BODY_SIZE = 256 * 1024;
export const MAX_RECIPIENT_DEVICES = 64;
export const MAX_SEALED_SIZE = MAX_BODY_SIZE + 64 * 1024;
export const LABEL_BODY_AD = "lightbox/v1/message-body";
export const LABEL_WRAP_KDF = "lightbox/v1/wrap-key";
export const LABEL_WRAP_AD = "lightbox/v1/wrapped-key";
const WRAPPED_BYTES = CONTENT_KEY_BYTES + s.AEAD_TAG_BYTES;
const MAX_ID_BYTES = 128;

export type Purpose = "direct_care" | "external_consult" | "teaching" | "publication" | "research";
export const PURPOSES: readonly Purpose[] = ["direct_care", "external_consult", "teaching", "publication", "research"];
export type Priority = "routine" | "urgent";
export type EmergencyCategory = "unconscious" | "lacks_capacity" | "time_critical" | "other";
export const EMERGENCY_CATEGORIES: readonly EmergencyCategory[] = ["unconscious", "lacks_capacity", "time_critical", "other"];

export interface MessageHeader {
  v: number;
  message_id: string;
  thread_id: string;
  sender_user_id: string;
  sender_device_id: string;
  sent_at: number;
  purpose: Purpose;
  priority: Priority;
  consent_id: string | null;
  attachment_ids: string[];
  recipient_devices: string[];
  external: boolean;
  /** Break-glass (PROTOCOL.md §17): why it goes without a consent; null for every other. */
  emergency: EmergencyCategory | null;
  body_size: number;
}

export interface WrappedKey {
  device_id: string;
  signed_prekey_id: number;
  one_time_prekey_id: number | null;
  ephemeral_public: Uint8Array;
  nonce: Uint8Array;
  wrapped: Uint8Array;
}

export interface SealedMessage {
  header: MessageHeader;
  nonce: Uint8Array;
  ciphertext: Uint8Array;
  keys: WrappedKey[];
  signature: Uint8Array;
}

export interface RecipientBundle {
  device: VerifiedDevice;
  signedPrekey: SignedPrekey;
  oneTimePrekey?: OneTimePrekey | null;
}

/** Verify the prekey artefacts (as the relay serves them) under the device's key. */
export function bundleFromTokens(device: VerifiedDevice, signedPrekey: string, oneTimePrekey?: string | null): RecipientBundle {
  return {
    device,
    signedPrekey: verifySignedPrekey(signedPrekey, device),
    oneTimePrekey: oneTimePrekey ? verifyOneTimePrekey(oneTimePrekey, device) : null,
  };
}

/** The relay's replay memory interface (clients persist theirs). */
export interface SeenSet {
  checkAndAdd(messageId: string): boolean | Promise<boolean>;
}

export class MemorySeenSet implements SeenSet {
  private seen = new Set<string>();
  checkAndAdd(id: string): boolean {
    if (this.seen.has(id)) return false;
    this.seen.add(id);
    return true;
  }
}

// --- exact byte strings (§5.2–§5.4) -----------------------------------------------------------

/** The header in field order (the order msgspec encodes it in MessagePack). */
function orderedHeader(h: MessageHeader): MessageHeader {
  return {
    v: h.v,
    message_id: h.message_id,
    thread_id: h.thread_id,
    sender_user_id: h.sender_user_id,
    sender_device_id: h.sender_device_id,
    sent_at: h.sent_at,
    purpose: h.purpose,
    priority: h.priority,
    consent_id: h.consent_id,
    attachment_ids: [...h.attachment_ids],
    recipient_devices: [...h.recipient_devices],
    external: h.external,
    emergency: h.emergency ?? null,
    body_size: h.body_size,
  };
}

export function headerBytes(header: MessageHeader): Uint8Array {
  return c.canonicalJson(orderedHeader(header));
}

export function bodyAssociatedData(header: MessageHeader): Uint8Array {
  return concat(utf8(LABEL_BODY_AD), new Uint8Array([0]), headerBytes(header));
}

function keysJson(keys: WrappedKey[]): unknown {
  return keys.map((k) => ({
    device_id: k.device_id,
    signed_prekey_id: k.signed_prekey_id,
    one_time_prekey_id: k.one_time_prekey_id,
    ephemeral_public: c.b64urlEncode(k.ephemeral_public),
    nonce: c.b64urlEncode(k.nonce),
    wrapped: c.b64urlEncode(k.wrapped),
  }));
}

export function signatureInput(sealed: SealedMessage): Uint8Array {
  const digest = concat(
    s.sha256(headerBytes(sealed.header)),
    s.sha256(concat(sealed.nonce, sealed.ciphertext)),
    s.sha256(c.canonicalJson(keysJson(sealed.keys))),
  );
  return c.signingInput(c.LABEL_SEALED_MESSAGE, digest);
}

function lp(value: string): Uint8Array {
  const data = utf8(value);
  if (data.length > MAX_ID_BYTES) throw new VerificationError("identifier too long");
  return concat(u16be(data.length), data);
}

export interface WrapInfo {
  messageId: string;
  senderDeviceId: string;
  senderSigningKey: Uint8Array;
  recipientDeviceId: string;
  recipientDhKey: Uint8Array;
  signedPrekeyId: number;
  signedPrekey: Uint8Array;
  oneTimePrekeyId: number | null;
  oneTimePrekey: Uint8Array | null;
  ephemeralPublic: Uint8Array;
}

export function wrapKdfInfo(i: WrapInfo): Uint8Array {
  const otk =
    i.oneTimePrekeyId === null || i.oneTimePrekey === null
      ? new Uint8Array(1 + 4 + 32)
      : concat(new Uint8Array([1]), u32be(i.oneTimePrekeyId), i.oneTimePrekey);
  return concat(
    utf8(LABEL_WRAP_KDF),
    new Uint8Array([0]),
    lp(i.messageId),
    lp(i.senderDeviceId),
    i.senderSigningKey,
    lp(i.recipientDeviceId),
    i.recipientDhKey,
    u32be(i.signedPrekeyId),
    i.signedPrekey,
    otk,
    i.ephemeralPublic,
  );
}

export function deriveWrapKey(dhOutputs: Uint8Array[], info: Uint8Array): Promise<Uint8Array> {
  return s.hkdfSha256(concat(...dhOutputs), new Uint8Array(0), info, 32);
}

export function wrapAssociatedData(header: MessageHeader, deviceId: string): Uint8Array {
  return concat(utf8(LABEL_WRAP_AD), new Uint8Array([0]), s.sha256(headerBytes(header)), lp(deviceId));
}

// --- shape (§5.6) ----------------------------------------------------------------------------

function checkShape(sealed: SealedMessage): void {
  const h = sealed.header;
  if (h.v !== 1) throw new DecodeError(`unsupported message version ${h.v}`, "unsupported_version");
  if (sealed.nonce.length !== s.AEAD_NONCE_BYTES) throw new DecodeError("body nonce must be 24 bytes");
  if (sealed.signature.length !== s.ED25519_SIGNATURE_BYTES) throw new DecodeError("signature must be 64 bytes");
  if (h.body_size < 0 || h.body_size > MAX_BODY_SIZE) throw new LimitExceeded("body too large", "message_too_large");
  if (sealed.ciphertext.length !== h.body_size + s.AEAD_TAG_BYTES) throw new DecodeError("ciphertext length does not match body_size");
  if (!sealed.keys.length || sealed.keys.length > MAX_RECIPIENT_DEVICES) throw new LimitExceeded("wrong number of recipient devices");
  const ids = sealed.keys.map((k) => k.device_id);
  if (ids.length !== h.recipient_devices.length || ids.some((d, i) => d !== h.recipient_devices[i]) || new Set(ids).size !== ids.length) {
    throw new DecodeError("wrapped keys do not match the header's recipient devices");
  }
  for (const k of sealed.keys) {
    if (
      k.ephemeral_public.length !== s.X25519_BYTES ||
      k.nonce.length !== s.AEAD_NONCE_BYTES ||
      k.wrapped.length !== WRAPPED_BYTES ||
      !(k.signed_prekey_id >= 0 && k.signed_prekey_id <= 0xffffffff) ||
      !(k.one_time_prekey_id === null || (k.one_time_prekey_id >= 0 && k.one_time_prekey_id <= 0xffffffff))
    ) {
      throw new DecodeError("malformed wrapped key");
    }
  }
}

// --- sealing ---------------------------------------------------------------------------------

export interface WrapTrace {
  ephemeralSecret: Uint8Array;
  ephemeralPublic: Uint8Array;
  dhSignedPrekey: Uint8Array;
  dhDevice: Uint8Array;
  dhOneTimePrekey: Uint8Array;
  kdfInfo: Uint8Array;
  wrapKey: Uint8Array;
  wrapNonce: Uint8Array;
  wrapAd: Uint8Array;
}

export interface SealResult {
  sealed: SealedMessage;
  /** Intermediates, for the test vectors (contain secrets: never log or keep them). */
  trace: { contentKey: Uint8Array; recipients: WrapTrace[] };
}

/**
 * Encrypt `body` for `recipients` and sign as `sender`. Randomness is drawn in the order of
 * §5.3: content key (32), body nonce (24), then per recipient ephemeral secret (32) and wrap
 * nonce (24). `header.body_size` is set to the body's length.
 */
export async function sealMessageTraced(
  header: MessageHeader,
  body: Uint8Array,
  sender: DeviceKeys,
  recipients: RecipientBundle[],
  rng: s.Rng = s.randomBytes,
): Promise<SealResult> {
  if (header.sender_device_id !== sender.deviceId) throw new RangeError("header.sender_device_id is not the sender device");
  const ids = recipients.map((r) => r.device.deviceId);
  if (ids.length !== header.recipient_devices.length || ids.some((d, i) => d !== header.recipient_devices[i])) {
    throw new RangeError("header.recipient_devices must list the recipients, in order");
  }
  if (body.length > MAX_BODY_SIZE) throw new LimitExceeded("body too large", "message_too_large");
  const h = orderedHeader({ ...header, body_size: body.length });
  const contentKey = rng(CONTENT_KEY_BYTES);
  const nonce = rng(s.AEAD_NONCE_BYTES);
  const ciphertext = s.aeadEncrypt(contentKey, nonce, body, bodyAssociatedData(h));
  const keys: WrappedKey[] = [];
  const traces: WrapTrace[] = [];
  for (const r of recipients) {
    const [key, trace] = await wrap(h, contentKey, sender, r, rng);
    keys.push(key);
    traces.push(trace);
  }
  const unsigned: SealedMessage = { header: h, nonce, ciphertext, keys, signature: new Uint8Array(64) };
  checkShape(unsigned);
  const signature = s.ed25519Sign(sender.signing.seed, signatureInput(unsigned));
  return { sealed: { ...unsigned, signature }, trace: { contentKey, recipients: traces } };
}

export async function sealMessage(
  header: MessageHeader,
  body: Uint8Array,
  sender: DeviceKeys,
  recipients: RecipientBundle[],
  rng: s.Rng = s.randomBytes,
): Promise<SealedMessage> {
  return (await sealMessageTraced(header, body, sender, recipients, rng)).sealed;
}

async function wrap(
  header: MessageHeader,
  contentKey: Uint8Array,
  sender: DeviceKeys,
  recipient: RecipientBundle,
  rng: s.Rng,
): Promise<[WrappedKey, WrapTrace]> {
  const device = recipient.device;
  const spk = recipient.signedPrekey;
  const otk = recipient.oneTimePrekey ?? null;
  if (spk.device_id !== device.deviceId || (otk && otk.device_id !== device.deviceId)) {
    throw new RangeError("prekey bundle mixes devices");
  }
  const spkPublic = c.b64urlDecode(spk.public, { length: 32 });
  const otkPublic = otk ? c.b64urlDecode(otk.public, { length: 32 }) : null;
  const eSecret = rng(s.X25519_BYTES);
  const ePublic = s.x25519PublicKey(eSecret);
  const dhs = [s.x25519Shared(eSecret, spkPublic), s.x25519Shared(eSecret, device.dhKey)];
  if (otkPublic) dhs.push(s.x25519Shared(eSecret, otkPublic));
  const info = wrapKdfInfo({
    messageId: header.message_id,
    senderDeviceId: sender.deviceId,
    senderSigningKey: sender.signing.public,
    recipientDeviceId: device.deviceId,
    recipientDhKey: device.dhKey,
    signedPrekeyId: spk.prekey_id,
    signedPrekey: spkPublic,
    oneTimePrekeyId: otk ? otk.prekey_id : null,
    oneTimePrekey: otkPublic,
    ephemeralPublic: ePublic,
  });
  const kek = await deriveWrapKey(dhs, info);
  const wrapNonce = rng(s.AEAD_NONCE_BYTES);
  const ad = wrapAssociatedData(header, device.deviceId);
  const wrapped = s.aeadEncrypt(kek, wrapNonce, contentKey, ad);
  const key: WrappedKey = {
    device_id: device.deviceId,
    signed_prekey_id: spk.prekey_id,
    one_time_prekey_id: otk ? otk.prekey_id : null,
    ephemeral_public: ePublic,
    nonce: wrapNonce,
    wrapped,
  };
  const trace: WrapTrace = {
    ephemeralSecret: eSecret,
    ephemeralPublic: ePublic,
    dhSignedPrekey: dhs[0]!,
    dhDevice: dhs[1]!,
    dhOneTimePrekey: dhs[2] ?? new Uint8Array(0),
    kdfInfo: info,
    wrapKey: kek,
    wrapNonce,
    wrapAd: ad,
  };
  return [key, trace];
}

// --- verifying and opening (§5.5) ------------------------------------------------------------

/** Shape and the sender device's signature; VerificationError, never decrypts. */
export function verifySealed(sealed: SealedMessage, senderSigningKey: Uint8Array): void {
  let message: Uint8Array;
  try {
    checkShape(sealed);
    message = signatureInput(sealed);
  } catch (e) {
    if (e instanceof DecodeError) throw new VerificationError(`malformed sealed message: ${e.reason}`);
    throw e;
  }
  if (!s.ed25519Verify(senderSigningKey, message, sealed.signature)) {
    throw new VerificationError("bad sender signature on sealed message");
  }
}

export function wrappedKeyFor(sealed: SealedMessage, deviceId: string): WrappedKey | undefined {
  return sealed.keys.find((k) => k.device_id === deviceId);
}

/**
 * Verify and decrypt a message addressed to `me`, in the order of §5.5. After success the
 * caller deletes the one-time prekey `wrappedKeyFor(sealed, me.deviceId)` names.
 */
export async function openMessage(
  sealed: SealedMessage,
  me: DeviceKeys,
  prekeys: PrekeyStore,
  sender: VerifiedDevice,
  seen: SeenSet,
): Promise<Uint8Array> {
  const h = sealed.header;
  if (h.sender_device_id !== sender.deviceId || h.sender_user_id !== sender.userId) {
    throw new VerificationError("header names another sender than the verified chain", "sender_mismatch");
  }
  verifySealed(sealed, sender.signingKey);
  const key = wrappedKeyFor(sealed, me.deviceId);
  if (!key) throw new VerificationError("this device is not a recipient");
  if (!(await seen.checkAndAdd(h.message_id))) throw new ReplayError(`message ${h.message_id} already seen`);
  const spk = prekeys.signedPrekey(key.signed_prekey_id);
  if (!spk) throw new VerificationError("unknown signed prekey");
  const dhs = [s.x25519Shared(spk.secret, key.ephemeral_public), s.x25519Shared(me.dh.secret, key.ephemeral_public)];
  let otkPublic: Uint8Array | null = null;
  if (key.one_time_prekey_id !== null) {
    const otk = prekeys.oneTimePrekey(key.one_time_prekey_id);
    if (!otk) throw new VerificationError("one-time prekey unknown or already used");
    dhs.push(s.x25519Shared(otk.secret, key.ephemeral_public));
    otkPublic = otk.public;
  }
  const info = wrapKdfInfo({
    messageId: h.message_id,
    senderDeviceId: sender.deviceId,
    senderSigningKey: sender.signingKey,
    recipientDeviceId: me.deviceId,
    recipientDhKey: me.dh.public,
    signedPrekeyId: key.signed_prekey_id,
    signedPrekey: spk.public,
    oneTimePrekeyId: key.one_time_prekey_id,
    oneTimePrekey: otkPublic,
    ephemeralPublic: key.ephemeral_public,
  });
  const kek = await deriveWrapKey(dhs, info);
  const contentKey = s.aeadDecrypt(kek, key.nonce, key.wrapped, wrapAssociatedData(h, me.deviceId));
  return s.aeadDecrypt(contentKey, sealed.nonce, sealed.ciphertext, bodyAssociatedData(h));
}

// --- MessagePack codec (§5.6) ----------------------------------------------------------------

const WRAPPED_KEY = struct({
  device_id: str({ max: 128 }),
  signed_prekey_id: int(),
  one_time_prekey_id: nullable(int()),
  ephemeral_public: bin(),
  nonce: bin(),
  wrapped: bin(),
});
export const MESSAGE_HEADER = struct(
  {
    v: int(),
    message_id: str(),
    thread_id: str(),
    sender_user_id: str(),
    sender_device_id: str(),
    sent_at: int(),
    purpose: oneOf(...PURPOSES),
    priority: oneOf("routine", "urgent"),
    consent_id: nullable(str()),
    attachment_ids: list(str()),
    recipient_devices: list(str()),
    external: bool,
    emergency: nullable(oneOf(...EMERGENCY_CATEGORIES)),
    body_size: int(),
  },
  { optional: ["external", "emergency", "body_size"] },
);
export const SEALED_MESSAGE = struct({ header: MESSAGE_HEADER, nonce: bin(), ciphertext: bin(), keys: list(WRAPPED_KEY), signature: bin() });


/** The sealed message as a plain MessagePack-ready value, fields in declaration order. */
export function sealedToWire(sealed: SealedMessage): Record<string, unknown> {
  return {
    header: orderedHeader(sealed.header),
    nonce: sealed.nonce,
    ciphertext: sealed.ciphertext,
    keys: sealed.keys.map((k) => ({
      device_id: k.device_id,
      signed_prekey_id: k.signed_prekey_id,
      one_time_prekey_id: k.one_time_prekey_id,
      ephemeral_public: k.ephemeral_public,
      nonce: k.nonce,
      wrapped: k.wrapped,
    })),
    signature: sealed.signature,
  };
}

/** Checks a decoded value is a sealed message (defaults filled in). DecodeError otherwise. */
export function sealedFromWire(value: unknown): SealedMessage {
  const sealed = validate<SealedMessage>(SEALED_MESSAGE, value, "sealed message");
  sealed.header.external ??= false;
  sealed.header.emergency ??= null;
  sealed.header.body_size ??= 0;
  checkShape(sealed);
  return sealed;
}

/** MessagePack encoding, maps keyed by field name in declaration order (msgspec's own). */
export function encodeSealed(sealed: SealedMessage): Uint8Array {
  return mpEncode(sealedToWire(sealed));
}

export function decodeSealed(data: Uint8Array, maxSize = MAX_SEALED_SIZE): SealedMessage {
  if (data.length > maxSize) throw new LimitExceeded("sealed message too large", "message_too_large");
  let raw: unknown;
  try {
    raw = mpDecode(data);
  } catch (e) {
    throw new DecodeError(`malformed sealed message: ${(e as Error).message}`);
  }
  return sealedFromWire(raw);
}
