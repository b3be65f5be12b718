/**
 * Canonical JSON, base64url and the compact signed-artefact format (mirrors
 * protocol/canonical.py; docs/PROTOCOL.md §1).
 *
 * Canonical JSON is RFC 8785 (JCS) restricted to strings, integers within ±(2^53 − 1)
 * (I-JSON, RFC 7493 §2.2), booleans, null, arrays and objects: keys sorted by UTF-16 code
 * units, no whitespace, UTF-8, strings escaping only `"`, `\` and U+0000..U+001F. Floats are
 * refused. base64url is RFC 4648 §5 without padding, decoded strictly (alphabet, no padding,
 * zero trailing bits, exact lengths). A compact artefact is `b64url(body) "." b64url(sig)`, the
 * Ed25519 signature (RFC 8032) over `label || 0x00 || body`.
 */
import { concat, fromUtf8, utf8 } from "./bytes.js";
import { DecodeError, LimitExceeded, VerificationError } from "./errors.js";
import * as s from "./sodium.js";

export const LABEL_USER_CERTIFICATE = "lightbox/v1/user-certificate";
export const LABEL_DEVICE_CERTIFICATE = "lightbox/v1/device-certificate";
export const LABEL_SIGNED_PREKEY = "lightbox/v1/signed-prekey";
export const LABEL_ONE_TIME_PREKEY = "lightbox/v1/one-time-prekey";
export const LABEL_REVOCATION_LIST = "lightbox/v1/revocation-list";
export const LABEL_SEALED_MESSAGE = "lightbox/v1/sealed-message";
export const LABEL_FILING_STATEMENT = "lightbox/v1/filing-statement";
export const LABEL_EXPIRY_CONFIRMATION = "lightbox/v1/expiry-confirmation";
export const LABEL_RECEIPT_STATEMENT = "lightbox/v1/receipt-statement";
export const LABEL_WIPE_CONFIRMATION = "lightbox/v1/wipe-confirmation";

/** Every domain label, in the order of docs/PROTOCOL.md §1. */
export const LABELS: readonly string[] = [
  LABEL_USER_CERTIFICATE,
  LABEL_DEVICE_CERTIFICATE,
  LABEL_SIGNED_PREKEY,
  LABEL_ONE_TIME_PREKEY,
  LABEL_REVOCATION_LIST,
  LABEL_SEALED_MESSAGE,
  LABEL_FILING_STATEMENT,
  LABEL_EXPIRY_CONFIRMATION,
  LABEL_RECEIPT_STATEMENT,
  LABEL_WIPE_CONFIRMATION,
];

export const MAX_SAFE_INTEGER = Number.MAX_SAFE_INTEGER; // 2^53 - 1
export const MAX_COMPACT_LENGTH = 64 * 1024;
const MAX_DEPTH = 16;

export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };

// --- base64url -------------------------------------------------------------------------------

const ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
const LOOKUP = new Int16Array(128).fill(-1);
for (let i = 0; i < ALPHABET.length; i++) LOOKUP[ALPHABET.charCodeAt(i)] = i;

export function b64urlEncode(data: Uint8Array): string {
  let out = "";
  let i = 0;
  for (; i + 2 < data.length; i += 3) {
    const n = (data[i]! << 16) | (data[i + 1]! << 8) | data[i + 2]!;
    out += ALPHABET[n >> 18]! + ALPHABET[(n >> 12) & 63]! + ALPHABET[(n >> 6) & 63]! + ALPHABET[n & 63]!;
  }
  const rest = data.length - i;
  if (rest === 1) {
    const n = data[i]! << 16;
    out += ALPHABET[n >> 18]! + ALPHABET[(n >> 12) & 63]!;
  } else if (rest === 2) {
    const n = (data[i]! << 16) | (data[i + 1]! << 8);
    out += ALPHABET[n >> 18]! + ALPHABET[(n >> 12) & 63]! + ALPHABET[(n >> 6) & 63]!;
  }
  return out;
}

/** Strict base64url decoding; `length` demands an exact decoded length, `maxLength` caps it. */
export function b64urlDecode(text: string, opts: { length?: number; maxLength?: number } = {}): Uint8Array {
  if (typeof text !== "string") throw new DecodeError("base64url value is not a string");
  if (opts.maxLength !== undefined && text.length > Math.floor((opts.maxLength * 4 + 2) / 3)) {
    throw new LimitExceeded("base64url value too long");
  }
  if (text.length % 4 === 1) throw new DecodeError("not unpadded base64url");
  const out = new Uint8Array(Math.floor((text.length * 3) / 4));
  let acc = 0;
  let bits = 0;
  let o = 0;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    const v = c < 128 ? LOOKUP[c]! : -1;
    if (v < 0) throw new DecodeError("not unpadded base64url");
    acc = (acc << 6) | v;
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out[o++] = (acc >> bits) & 0xff;
    }
    acc &= (1 << bits) - 1;
  }
  if (acc !== 0) throw new DecodeError("non-canonical base64url (trailing bits set)");
  if (opts.length !== undefined && o !== opts.length) {
    throw new DecodeError(`expected ${opts.length} bytes, got ${o}`);
  }
  return out.subarray(0, o);
}

// --- RFC 8785 canonical JSON -----------------------------------------------------------------

const ESCAPES: Record<number, string> = {
  0x08: "\\b",
  0x09: "\\t",
  0x0a: "\\n",
  0x0c: "\\f",
  0x0d: "\\r",
  0x22: '\\"',
  0x5c: "\\\\",
};

const LONE_SURROGATE = /[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/;

function encodeString(value: string): string {
  if (LONE_SURROGATE.test(value)) throw new DecodeError("string is not valid Unicode");
  let out = '"';
  for (let i = 0; i < value.length; i++) {
    const cp = value.charCodeAt(i);
    const esc = ESCAPES[cp];
    if (esc !== undefined) out += esc;
    else if (cp < 0x20) out += "\\u" + cp.toString(16).padStart(4, "0");
    else out += value[i];
  }
  return out + '"';
}

function encodeValue(value: unknown, depth: number): string {
  if (depth > MAX_DEPTH) throw new DecodeError("value nested too deeply");
  if (value === null) return "null";
  if (value === true) return "true";
  if (value === false) return "false";
  if (typeof value === "number") {
    if (!Number.isInteger(value)) throw new DecodeError("floats are not allowed in canonical JSON");
    if (Math.abs(value) > MAX_SAFE_INTEGER) throw new DecodeError("integer outside the I-JSON safe range");
    return Object.is(value, -0) ? "0" : String(value);
  }
  if (typeof value === "string") return encodeString(value);
  if (Array.isArray(value)) return "[" + value.map((v) => encodeValue(v, depth + 1)).join(",") + "]";
  if (typeof value === "object" && Object.getPrototypeOf(value) === Object.prototype) {
    // JavaScript compares strings by UTF-16 code units: exactly RFC 8785 §3.2.3's order.
    const keys = Object.keys(value as object).sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
    const parts = keys.map(
      (k) => encodeString(k) + ":" + encodeValue((value as Record<string, unknown>)[k], depth + 1),
    );
    return "{" + parts.join(",") + "}";
  }
  throw new DecodeError(`type ${typeof value} is not allowed in canonical JSON`);
}

export function canonicalJson(value: unknown): Uint8Array {
  return utf8(encodeValue(value, 0));
}

/** Parse canonical JSON bytes: refused unless re-encoding gives the very same bytes. */
export function parseCanonical(data: Uint8Array, maxLength = MAX_COMPACT_LENGTH): Json {
  if (data.length > maxLength) throw new LimitExceeded("body too large");
  let raw: Json;
  try {
    raw = JSON.parse(fromUtf8(data)) as Json;
  } catch {
    throw new DecodeError("body is not JSON");
  }
  const again = canonicalJson(raw);
  if (again.length !== data.length || !again.every((b, i) => b === data[i])) {
    throw new DecodeError("body is not in canonical form");
  }
  return raw;
}

// --- compact signed artefacts ----------------------------------------------------------------

export function signingInput(label: string, body: Uint8Array): Uint8Array {
  if (!LABELS.includes(label)) throw new RangeError("unknown domain label");
  return concat(utf8(label), new Uint8Array([0]), body);
}

export function signCompact(label: string, body: Uint8Array, seed: Uint8Array): string {
  const signature = s.ed25519Sign(seed, signingInput(label, body));
  return `${b64urlEncode(body)}.${b64urlEncode(signature)}`;
}

export function splitCompact(token: string, maxLength = MAX_COMPACT_LENGTH): [Uint8Array, Uint8Array] {
  if (typeof token !== "string") throw new DecodeError("artefact is not a string");
  if (token.length > maxLength) throw new LimitExceeded("artefact too large");
  const parts = token.split(".");
  if (parts.length !== 2) throw new DecodeError("artefact must have exactly two parts");
  return [b64urlDecode(parts[0]!), b64urlDecode(parts[1]!, { length: s.ED25519_SIGNATURE_BYTES })];
}

/** Verify a compact artefact under `publicKey`, then parse its canonical body. */
export function openCompact(label: string, token: string, publicKey: Uint8Array, maxLength = MAX_COMPACT_LENGTH): Json {
  const [body, signature] = splitCompact(token, maxLength);
  if (!s.ed25519Verify(publicKey, signingInput(label, body), signature)) {
    throw new VerificationError(`bad signature on ${label}`);
  }
  return parseCanonical(body, maxLength);
}

/** Parse a compact artefact's body WITHOUT verifying it (to find the key to verify with). */
export function peekCompact(token: string, maxLength = MAX_COMPACT_LENGTH): Json {
  const [body] = splitCompact(token, maxLength);
  return parseCanonical(body, maxLength);
}
