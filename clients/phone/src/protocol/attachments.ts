/**
 * Attachment encryption: libsodium secretstream XChaCha20-Poly1305 in 64 KiB chunks (mirrors
 * protocol/attachments.py; docs/PROTOCOL.md §6). Stream: header[24] || chunk_1 || ... ||
 * chunk_n; every chunk carries 65 536 plaintext bytes except the last (0..65 536, TAG_FINAL).
 * Decryption refuses tampering, reordering, a short non-final chunk, bytes after the final
 * chunk, and truncation (no TAG_FINAL).
 */
import { concat } from "./bytes.js";
import { LimitExceeded, VerificationError } from "./errors.js";
import * as s from "./sodium.js";

export const KEY_BYTES = 32;
export const HEADER_BYTES = s.SECRETSTREAM_HEADER_BYTES;
export const CHUNK_SIZE = 64 * 1024;
export const CIPHERTEXT_CHUNK_SIZE = CHUNK_SIZE + s.SECRETSTREAM_ABYTES;
export const MAX_ATTACHMENT_SIZE = 64 * 1024 * 1024;

/** Travels only inside a sealed body: it holds the key (field order of protocol/attachments.py). */
export interface AttachmentDescriptor {
  attachment_id: string;
  key: Uint8Array;
  sha256: Uint8Array;
  size: number;
  media_type: string;
  width: number | null;
  height: number | null;
}

export function ciphertextSize(plaintextSize: number): number {
  if (plaintextSize < 0) throw new RangeError("negative size");
  const chunks = Math.max(1, Math.ceil(plaintextSize / CHUNK_SIZE));
  return HEADER_BYTES + plaintextSize + chunks * s.SECRETSTREAM_ABYTES;
}

/** Incremental encryption: header + feed(...) + ... + finish() is the stream. */
export class AttachmentEncryptor {
  readonly header: Uint8Array;
  private stream: s.SecretStreamPush;
  private buffer: Uint8Array = new Uint8Array(0);
  private hash = new s.Sha256();
  private finished = false;
  size = 0;

  constructor(key: Uint8Array, rng: s.Rng = s.randomBytes) {
    this.header = rng(HEADER_BYTES);
    this.stream = new s.SecretStreamPush(key, this.header);
  }

  /** Take plaintext; return the ciphertext chunks now complete. A full chunk is only emitted
   * once a byte beyond it arrives, so finish() always has the last chunk to tag TAG_FINAL. */
  feed(data: Uint8Array): Uint8Array {
    if (this.finished) throw new Error("encryptor already finished");
    this.hash.update(data);
    this.size += data.length;
    this.buffer = concat(this.buffer, data);
    const out: Uint8Array[] = [];
    let offset = 0;
    while (this.buffer.length - offset > CHUNK_SIZE) {
      out.push(this.stream.push(this.buffer.subarray(offset, offset + CHUNK_SIZE), false));
      offset += CHUNK_SIZE;
    }
    this.buffer = this.buffer.slice(offset);
    return concat(...out);
  }

  finish(): Uint8Array {
    if (this.finished) throw new Error("encryptor already finished");
    this.finished = true;
    const last = this.stream.push(this.buffer, true);
    this.buffer = new Uint8Array(0);
    return last;
  }

  get sha256(): Uint8Array {
    return this.hash.digest();
  }
}

/** Incremental decryption; plaintext released before finish() succeeds is unauthenticated
 * as a whole and must be discarded on error. */
export class AttachmentDecryptor {
  private stream: s.SecretStreamPull | null = null;
  private buffer: Uint8Array = new Uint8Array(0);
  private hash = new s.Sha256();
  private finalSeen = false;
  private failed = false;
  size = 0;

  constructor(
    private readonly key: Uint8Array,
    private readonly maxSize = MAX_ATTACHMENT_SIZE,
  ) {}

  private fail(reason: string): VerificationError {
    this.failed = true;
    return new VerificationError(reason);
  }

  private pull(chunk: Uint8Array): Uint8Array {
    let plaintext: Uint8Array;
    let tag: number;
    try {
      [plaintext, tag] = this.stream!.pull(chunk);
    } catch (e) {
      throw this.fail((e as VerificationError).reason ?? "chunk failed to authenticate");
    }
    if (tag === s.SECRETSTREAM_TAG_FINAL) this.finalSeen = true;
    else if (tag !== s.SECRETSTREAM_TAG_MESSAGE) throw this.fail(`unexpected secretstream tag ${tag}`);
    else if (chunk.length !== CIPHERTEXT_CHUNK_SIZE) throw this.fail("short chunk before the final chunk");
    this.size += plaintext.length;
    if (this.size > this.maxSize) {
      this.failed = true;
      throw new LimitExceeded("attachment larger than allowed");
    }
    this.hash.update(plaintext);
    return plaintext;
  }

  feed(data: Uint8Array): Uint8Array {
    if (this.failed) throw new VerificationError("decryptor already failed");
    if (this.finalSeen && data.length) throw this.fail("data after the final chunk");
    this.buffer = concat(this.buffer, data);
    if (!this.stream) {
      if (this.buffer.length < HEADER_BYTES) return new Uint8Array(0);
      this.stream = new s.SecretStreamPull(this.key, this.buffer.subarray(0, HEADER_BYTES));
      this.buffer = this.buffer.slice(HEADER_BYTES);
    }
    const out: Uint8Array[] = [];
    let offset = 0;
    while (this.buffer.length - offset >= CIPHERTEXT_CHUNK_SIZE && !this.finalSeen) {
      out.push(this.pull(this.buffer.subarray(offset, offset + CIPHERTEXT_CHUNK_SIZE)));
      offset += CIPHERTEXT_CHUNK_SIZE;
    }
    this.buffer = this.buffer.slice(offset);
    if (this.finalSeen && this.buffer.length) throw this.fail("data after the final chunk");
    return concat(...out);
  }

  finish(): Uint8Array {
    if (this.failed) throw new VerificationError("decryptor already failed");
    let out: Uint8Array = new Uint8Array(0);
    if (!this.finalSeen) {
      if (!this.stream || !this.buffer.length) throw this.fail("stream truncated: no final chunk");
      out = this.pull(this.buffer);
      this.buffer = new Uint8Array(0);
      if (!this.finalSeen) throw this.fail("stream truncated: last chunk is not final");
    }
    return out;
  }

  get sha256(): Uint8Array {
    return this.hash.digest();
  }
}

export interface EncryptedAttachment {
  key: Uint8Array;
  ciphertext: Uint8Array;
  sha256: Uint8Array;
  size: number;
}

/** Encrypt a whole attachment under a fresh key (32 bytes from rng, then the header). */
export function encryptAttachment(data: Uint8Array, rng: s.Rng = s.randomBytes): EncryptedAttachment {
  const key = rng(KEY_BYTES);
  const enc = new AttachmentEncryptor(key, rng);
  const ciphertext = concat(enc.header, enc.feed(data), enc.finish());
  return { key, ciphertext, sha256: enc.sha256, size: enc.size };
}

export function decryptAttachment(
  blob: Uint8Array,
  key: Uint8Array,
  expected: { sha256?: Uint8Array; size?: number; maxSize?: number } = {},
): Uint8Array {
  if (key.length !== KEY_BYTES) throw new VerificationError("attachment key has the wrong length");
  const dec = new AttachmentDecryptor(key, expected.maxSize);
  const plaintext = concat(dec.feed(blob), dec.finish());
  if (expected.size !== undefined && dec.size !== expected.size) throw new VerificationError("attachment size differs from its descriptor");
  if (expected.sha256 !== undefined && !s.constantTimeEqual(dec.sha256, expected.sha256)) {
    throw new VerificationError("attachment SHA-256 differs from its descriptor");
  }
  return plaintext;
}
