/**
 * Keys, key ids, passphrase sealing and enrolment codes (mirrors protocol/keys.py;
 * docs/PROTOCOL.md §4.1, §4.7, §10).
 */
import { concat, hex, u32be, u64be, utf8 } from "./bytes.js";
import { b64urlEncode } from "./canonical.js";
import { DecodeError } from "./errors.js";
import * as s from "./sodium.js";

/** `b64url(SHA-256(public)[0:16])`: 22 characters (§4.1). */
export function keyId(publicKey: Uint8Array): string {
  return b64urlEncode(s.sha256(publicKey).subarray(0, 16));
}

/**
 * The vectors' deterministic generator (§10): the next n bytes of
 * SHA-256(seed || u64be(0)) || SHA-256(seed || u64be(1)) || ... . Never for real keys.
 */
export function deterministicRng(seed: Uint8Array | string): s.Rng {
  const seedBytes = typeof seed === "string" ? utf8(seed) : seed;
  let counter = 0;
  let pool: Uint8Array = new Uint8Array(0);
  return (n: number) => {
    while (pool.length < n) {
      pool = concat(pool, s.sha256(concat(seedBytes, u64be(counter))));
      counter += 1;
    }
    const out = pool.slice(0, n);
    pool = pool.slice(n);
    return out;
  };
}

/** A version-4 UUID from 16 random bytes (RFC 9562 §5.4). */
export function uuid4(rng: s.Rng = s.randomBytes): string {
  const b = rng(16);
  b[6] = (b[6]! & 0x0f) | 0x40;
  b[8] = (b[8]! & 0x3f) | 0x80;
  const h = hex(b);
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

export interface Ed25519KeyPair {
  seed: Uint8Array;
  public: Uint8Array;
}

export interface X25519KeyPair {
  secret: Uint8Array;
  public: Uint8Array;
}

export function ed25519FromSeed(seed: Uint8Array): Ed25519KeyPair {
  return { seed, public: s.ed25519PublicKey(seed) };
}

export function x25519FromSecret(secret: Uint8Array): X25519KeyPair {
  return { secret, public: s.x25519PublicKey(secret) };
}

export interface DeviceKeys {
  deviceId: string;
  signing: Ed25519KeyPair;
  dh: X25519KeyPair;
}

/** A device's keys: Ed25519 seed first, then the X25519 secret (the order of protocol/keys.py). */
export function generateDeviceKeys(deviceId: string, rng: s.Rng = s.randomBytes): DeviceKeys {
  const signing = ed25519FromSeed(rng(32));
  const dh = x25519FromSecret(rng(32));
  return { deviceId, signing, dh };
}

export interface Prekey {
  prekeyId: number;
  keypair: X25519KeyPair;
}

export function generatePrekey(prekeyId: number, rng: s.Rng = s.randomBytes): Prekey {
  if (!Number.isInteger(prekeyId) || prekeyId < 0 || prekeyId > 0xffffffff) {
    throw new RangeError("prekey ids are unsigned 32-bit integers");
  }
  return { prekeyId, keypair: x25519FromSecret(rng(32)) };
}

/** Where a device finds its prekey secrets when opening a message. */
export interface PrekeyStore {
  signedPrekey(id: number): X25519KeyPair | undefined;
  oneTimePrekey(id: number): X25519KeyPair | undefined;
}

export class MemoryPrekeyStore implements PrekeyStore {
  readonly signed = new Map<number, X25519KeyPair>();
  readonly oneTime = new Map<number, X25519KeyPair>();
  constructor(signed: Prekey[] = [], oneTime: Prekey[] = []) {
    for (const p of signed) this.signed.set(p.prekeyId, p.keypair);
    for (const p of oneTime) this.oneTime.set(p.prekeyId, p.keypair);
  }
  signedPrekey(id: number): X25519KeyPair | undefined {
    return this.signed.get(id);
  }
  oneTimePrekey(id: number): X25519KeyPair | undefined {
    return this.oneTime.get(id);
  }
  /** Forget a used one-time prekey: this is what gives forward secrecy (§5.3). */
  deleteOneTime(id: number): void {
    this.oneTime.delete(id);
  }
}

// --- passphrase sealing (§4.7) ---------------------------------------------------------------

export interface PassphraseProfile {
  opslimit: number;
  memlimit: number;
}

/** libsodium INTERACTIVE: enrolment codes and the phone's vault passphrase. */
export const DEFAULT_PROFILE: PassphraseProfile = { opslimit: 2, memlimit: 64 * 1024 * 1024 };
/** The library minimum: tests only. */
export const CHEAP_PROFILE: PassphraseProfile = { opslimit: 1, memlimit: 8192 };

const MAGIC = utf8("LBPW");
const HEADER_BYTES = 4 + 1 + 1 + 4 + 8;
const SALT_BYTES = 16;
const OVERHEAD = HEADER_BYTES + SALT_BYTES + s.SECRETBOX_NONCE_BYTES;
export const MAX_SEALED_SECRET = 4096;

function passphraseBytes(passphrase: string): Uint8Array {
  // NFKC: the same passphrase typed on different keyboards gives the same bytes.
  return utf8(passphrase.normalize("NFKC"));
}

export function sealWithPassphrase(
  secret: Uint8Array,
  passphrase: string,
  profile: PassphraseProfile = DEFAULT_PROFILE,
  rng: s.Rng = s.randomBytes,
): Uint8Array {
  if (!passphrase) throw new RangeError("empty passphrase");
  if (secret.length > MAX_SEALED_SECRET) throw new RangeError("secret too large");
  if (profile.memlimit % 1024) throw new RangeError("memlimit must be a multiple of 1024 bytes");
  const salt = rng(SALT_BYTES);
  const nonce = rng(s.SECRETBOX_NONCE_BYTES);
  const key = s.argon2id(passphraseBytes(passphrase), salt, profile.opslimit, profile.memlimit);
  const header = concat(MAGIC, new Uint8Array([1, 1]), u32be(profile.opslimit), u64be(profile.memlimit));
  return concat(header, salt, nonce, s.secretboxSeal(key, nonce, secret));
}

/** Inverse of sealWithPassphrase: DecodeError when malformed, VerificationError when the
 * passphrase is wrong or the bytes were changed. Parameters above the caps are refused before
 * any work. */
export function openWithPassphrase(sealed: Uint8Array, passphrase: string): Uint8Array {
  if (sealed.length < OVERHEAD + s.SECRETBOX_TAG_BYTES || sealed.length > OVERHEAD + s.SECRETBOX_TAG_BYTES + MAX_SEALED_SECRET) {
    throw new DecodeError("sealed secret has the wrong size");
  }
  const view = new DataView(sealed.buffer, sealed.byteOffset, sealed.byteLength);
  const magicOk = MAGIC.every((b, i) => sealed[i] === b);
  if (!magicOk || sealed[4] !== 1 || sealed[5] !== 1) {
    throw new DecodeError("not a Lightbox passphrase-sealed secret", "unsupported_version");
  }
  const opslimit = view.getUint32(6);
  const memlimitBig = view.getBigUint64(10);
  if (memlimitBig > BigInt(s.ARGON2ID_MEMLIMIT_MAX) || memlimitBig % 1024n) {
    throw new DecodeError("Argon2id parameters out of range");
  }
  const memlimit = Number(memlimitBig);
  const salt = sealed.subarray(HEADER_BYTES, HEADER_BYTES + SALT_BYTES);
  const nonce = sealed.subarray(HEADER_BYTES + SALT_BYTES, OVERHEAD);
  let key: Uint8Array;
  try {
    key = s.argon2id(passphraseBytes(passphrase), salt, opslimit, memlimit);
  } catch {
    throw new DecodeError("Argon2id parameters out of range");
  }
  return s.secretboxOpen(key, nonce, sealed.subarray(OVERHEAD));
}

// --- enrolment codes (§4.7) ------------------------------------------------------------------

const CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/** Canonical form of a typed enrolment code; DecodeError(enrolment_code_invalid) otherwise. */
export function normaliseEnrolmentCode(code: string): string {
  const cleaned = code
    .replace(/\s+/g, "")
    .replace(/-/g, "")
    .toUpperCase()
    .replace(/O/g, "0")
    .replace(/[IL]/g, "1");
  if (cleaned.length !== 20 || [...cleaned].some((c) => !CROCKFORD.includes(c))) {
    throw new DecodeError("malformed enrolment code", "enrolment_code_invalid");
  }
  return cleaned.match(/.{4}/g)!.join("-");
}
