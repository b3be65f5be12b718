/**
 * The one module of the protocol core that calls cryptographic primitives (mirrors
 * protocol/_sodium.py; docs/PROTOCOL.md §1 "Primitives"). Everything else calls this small,
 * typed API. Primitives, all through libsodium except HKDF:
 *
 * - Ed25519 (RFC 8032), keys held as 32-byte seeds; verification with
 *   crypto_sign_verify_detached (rejects non-canonical signatures and small-order keys);
 * - X25519 (RFC 7748), an all-zero shared secret refused;
 * - XChaCha20-Poly1305-IETF (draft-irtf-cfrg-xchacha);
 * - XSalsa20-Poly1305 crypto_secretbox (passphrase-sealed secrets, §4.7);
 * - Argon2id v1.3 (RFC 9106) through crypto_pwhash;
 * - secretstream XChaCha20-Poly1305 (attachments, §6);
 * - SHA-256 (libsodium), HMAC-SHA-256 (libsodium crypto_auth_hmacsha256);
 * - HKDF-SHA256 (RFC 5869) from WebCrypto, which libsodium.js does not expose.
 *
 * Failures of verify/decrypt throw VerificationError; no libsodium exception leaks out.
 */
import sodiumModule from "libsodium-wrappers-sumo";
import { VerificationError } from "./errors.js";

const sodium = sodiumModule;

export type Rng = (n: number) => Uint8Array;

export const ED25519_SEED_BYTES = 32;
export const ED25519_PUBLIC_BYTES = 32;
export const ED25519_SIGNATURE_BYTES = 64;
export const X25519_BYTES = 32;
export const AEAD_KEY_BYTES = 32;
export const AEAD_NONCE_BYTES = 24;
export const AEAD_TAG_BYTES = 16;
export const SECRETBOX_NONCE_BYTES = 24;
export const SECRETBOX_TAG_BYTES = 16;
export const SECRETSTREAM_HEADER_BYTES = 24;
export const SECRETSTREAM_ABYTES = 17;
export const SECRETSTREAM_TAG_MESSAGE = 0;
export const SECRETSTREAM_TAG_FINAL = 3;
export const ARGON2ID_OPSLIMIT_MIN = 1;
export const ARGON2ID_OPSLIMIT_MAX = 16; // our own cap (protocol/_sodium.py)
export const ARGON2ID_MEMLIMIT_MIN = 8192;
export const ARGON2ID_MEMLIMIT_MAX = 1 << 30;

let loaded = false;

/** Load libsodium (WebAssembly); every other function needs it done. */
export async function ready(): Promise<void> {
  await sodium.ready;
  loaded = true;
}

function lib(): typeof sodium {
  if (!loaded) throw new Error("call ready() before using the protocol core");
  return sodium;
}

function checkLen(value: Uint8Array, size: number, what: string): void {
  if (!(value instanceof Uint8Array) || value.length !== size) {
    throw new RangeError(`${what} must be ${size} bytes`);
  }
}

/** The default Rng: the platform CSPRNG (libsodium's randombytes_buf, WebCrypto underneath). */
export const randomBytes: Rng = (n) => lib().randombytes_buf(n);

// --- hashes and KDF --------------------------------------------------------------------------

export function sha256(data: Uint8Array): Uint8Array {
  return lib().crypto_hash_sha256(data);
}

/** Incremental SHA-256 (attachments are hashed chunk by chunk). */
export class Sha256 {
  private state: unknown;
  private done: Uint8Array | null = null;
  constructor() {
    this.state = lib().crypto_hash_sha256_init();
  }
  update(data: Uint8Array): void {
    if (this.done) throw new Error("SHA-256 already finalised");
    lib().crypto_hash_sha256_update(this.state as never, data);
  }
  /** The digest; the state is finalised on the first call (libsodium frees it). */
  digest(): Uint8Array {
    this.done ??= lib().crypto_hash_sha256_final(this.state as never);
    return this.done;
  }
}

/** HMAC-SHA-256 (RFC 2104) through libsodium (any key length). */
export function hmacSha256(key: Uint8Array, data: Uint8Array): Uint8Array {
  if (key.length === 0) throw new RangeError("HMAC key must be non-empty");
  const s = lib();
  const st = s.crypto_auth_hmacsha256_init(key);
  s.crypto_auth_hmacsha256_update(st, data);
  return s.crypto_auth_hmacsha256_final(st);
}

/** HKDF-SHA256 extract-and-expand (RFC 5869 §2) with WebCrypto. An empty salt is RFC 5869's
 * default (HashLen zero bytes), exactly as protocol/_sodium.py's hkdf_sha256. */
export async function hkdfSha256(
  ikm: Uint8Array,
  salt: Uint8Array,
  info: Uint8Array,
  length = 32,
): Promise<Uint8Array> {
  const subtle = globalThis.crypto.subtle;
  const key = await subtle.importKey("raw", ikm as BufferSource, "HKDF", false, ["deriveBits"]);
  const bits = await subtle.deriveBits(
    {
      name: "HKDF",
      hash: "SHA-256",
      salt: (salt.length ? salt : new Uint8Array(32)) as BufferSource,
      info: info as BufferSource,
    },
    key,
    length * 8,
  );
  return new Uint8Array(bits);
}

export function constantTimeEqual(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  return lib().memcmp(a, b);
}

// --- Ed25519 ---------------------------------------------------------------------------------

export function ed25519PublicKey(seed: Uint8Array): Uint8Array {
  checkLen(seed, ED25519_SEED_BYTES, "Ed25519 seed");
  return lib().crypto_sign_seed_keypair(seed).publicKey;
}

export function ed25519Sign(seed: Uint8Array, message: Uint8Array): Uint8Array {
  checkLen(seed, ED25519_SEED_BYTES, "Ed25519 seed");
  const s = lib();
  const kp = s.crypto_sign_seed_keypair(seed);
  try {
    return s.crypto_sign_detached(message, kp.privateKey);
  } finally {
    s.memzero(kp.privateKey);
  }
}

/** True iff the signature verifies; never throws. */
export function ed25519Verify(
  publicKey: Uint8Array,
  message: Uint8Array,
  signature: Uint8Array,
): boolean {
  if (!(publicKey instanceof Uint8Array) || publicKey.length !== ED25519_PUBLIC_BYTES) return false;
  if (!(signature instanceof Uint8Array) || signature.length !== ED25519_SIGNATURE_BYTES) {
    return false;
  }
  try {
    return lib().crypto_sign_verify_detached(signature, message, publicKey);
  } catch {
    return false;
  }
}

// --- X25519 ----------------------------------------------------------------------------------

export function x25519PublicKey(secret: Uint8Array): Uint8Array {
  checkLen(secret, X25519_BYTES, "X25519 secret");
  return lib().crypto_scalarmult_base(secret);
}

export function x25519Shared(secret: Uint8Array, publicKey: Uint8Array): Uint8Array {
  checkLen(secret, X25519_BYTES, "X25519 secret");
  if (!(publicKey instanceof Uint8Array) || publicKey.length !== X25519_BYTES) {
    throw new VerificationError("X25519 public key has the wrong length");
  }
  let out: Uint8Array;
  try {
    out = lib().crypto_scalarmult(secret, publicKey);
  } catch {
    throw new VerificationError("X25519 produced an all-zero shared secret");
  }
  if (out.every((b) => b === 0)) throw new VerificationError("X25519 all-zero shared secret");
  return out;
}

// --- AEAD ------------------------------------------------------------------------------------

export function aeadEncrypt(
  key: Uint8Array,
  nonce: Uint8Array,
  plaintext: Uint8Array,
  ad: Uint8Array,
): Uint8Array {
  checkLen(key, AEAD_KEY_BYTES, "AEAD key");
  checkLen(nonce, AEAD_NONCE_BYTES, "AEAD nonce");
  return lib().crypto_aead_xchacha20poly1305_ietf_encrypt(plaintext, ad, null, nonce, key);
}

export function aeadDecrypt(
  key: Uint8Array,
  nonce: Uint8Array,
  ciphertext: Uint8Array,
  ad: Uint8Array,
): Uint8Array {
  checkLen(key, AEAD_KEY_BYTES, "AEAD key");
  if (nonce.length !== AEAD_NONCE_BYTES || ciphertext.length < AEAD_TAG_BYTES) {
    throw new VerificationError("AEAD nonce or ciphertext has the wrong length");
  }
  try {
    return lib().crypto_aead_xchacha20poly1305_ietf_decrypt(null, ciphertext, ad, nonce, key);
  } catch {
    throw new VerificationError("AEAD decryption failed");
  }
}

export function secretboxSeal(key: Uint8Array, nonce: Uint8Array, plaintext: Uint8Array): Uint8Array {
  checkLen(key, 32, "secretbox key");
  checkLen(nonce, SECRETBOX_NONCE_BYTES, "secretbox nonce");
  return lib().crypto_secretbox_easy(plaintext, nonce, key);
}

export function secretboxOpen(key: Uint8Array, nonce: Uint8Array, ciphertext: Uint8Array): Uint8Array {
  checkLen(key, 32, "secretbox key");
  if (nonce.length !== SECRETBOX_NONCE_BYTES || ciphertext.length < SECRETBOX_TAG_BYTES) {
    throw new VerificationError("secretbox nonce or ciphertext has the wrong length");
  }
  try {
    return lib().crypto_secretbox_open_easy(ciphertext, nonce, key);
  } catch {
    throw new VerificationError("secretbox authentication failed");
  }
}

// --- Argon2id --------------------------------------------------------------------------------

/** Argon2id v1.3 (RFC 9106) via crypto_pwhash; memlimit in bytes. RangeError out of range. */
export function argon2id(
  password: Uint8Array,
  salt: Uint8Array,
  opslimit: number,
  memlimit: number,
  length = 32,
): Uint8Array {
  if (!(opslimit >= ARGON2ID_OPSLIMIT_MIN && opslimit <= ARGON2ID_OPSLIMIT_MAX)) {
    throw new RangeError("Argon2id opslimit out of range");
  }
  if (!(memlimit >= ARGON2ID_MEMLIMIT_MIN && memlimit <= ARGON2ID_MEMLIMIT_MAX)) {
    throw new RangeError("Argon2id memlimit out of range");
  }
  checkLen(salt, 16, "Argon2id salt");
  const s = lib();
  return s.crypto_pwhash(length, password, salt, opslimit, memlimit, s.crypto_pwhash_ALG_ARGON2ID13);
}

// --- secretstream ----------------------------------------------------------------------------

/**
 * Encrypting side of secretstream XChaCha20-Poly1305. As in protocol/_sodium.py the header is
 * supplied (injectable randomness) and the state set up with init_pull, which in libsodium
 * computes exactly the state init_push would for that header (docs/PROTOCOL.md §6).
 */
export class SecretStreamPush {
  private state: unknown;
  constructor(key: Uint8Array, header: Uint8Array) {
    checkLen(key, 32, "secretstream key");
    checkLen(header, SECRETSTREAM_HEADER_BYTES, "secretstream header");
    this.state = lib().crypto_secretstream_xchacha20poly1305_init_pull(header, key);
  }
  push(message: Uint8Array, final: boolean): Uint8Array {
    const tag = final ? SECRETSTREAM_TAG_FINAL : SECRETSTREAM_TAG_MESSAGE;
    return lib().crypto_secretstream_xchacha20poly1305_push(this.state as never, message, null, tag);
  }
}

export class SecretStreamPull {
  private state: unknown;
  constructor(key: Uint8Array, header: Uint8Array) {
    checkLen(key, 32, "secretstream key");
    if (header.length !== SECRETSTREAM_HEADER_BYTES) {
      throw new VerificationError("secretstream header has the wrong length");
    }
    this.state = lib().crypto_secretstream_xchacha20poly1305_init_pull(header, key);
  }
  /** Decrypt one chunk: [plaintext, tag]. VerificationError if it does not authenticate. */
  pull(chunk: Uint8Array): [Uint8Array, number] {
    if (chunk.length < SECRETSTREAM_ABYTES) throw new VerificationError("secretstream chunk too short");
    let r: { message: Uint8Array; tag: number } | false;
    try {
      r = lib().crypto_secretstream_xchacha20poly1305_pull(this.state as never, chunk, null);
    } catch {
      throw new VerificationError("secretstream chunk failed to authenticate");
    }
    if (!r) throw new VerificationError("secretstream chunk failed to authenticate");
    return [r.message, r.tag];
  }
}
