/**
 * The phone's vault in IndexedDB (through idb). Every record is sealed with XChaCha20-Poly1305
 * under the vault key, its name bound as associated data; the vault key is derived from the
 * passphrase with Argon2id (RFC 9106, libsodium crypto_pwhash) and exists only in the worker's
 * memory while the app is unlocked. IndexedDB holds the KDF parameters, the salt, a check value
 * and ciphertext: nothing readable without the passphrase.
 */
import { decode as mpDecode, encode as mpEncode } from "@msgpack/msgpack";
import { openDB, type IDBPDatabase } from "idb";
import { concat, utf8 } from "../protocol/bytes.js";
import { VerificationError } from "../protocol/errors.js";
import type { PassphraseProfile } from "../protocol/keys.js";
import * as s from "../protocol/sodium.js";

const DB_NAME = "lightbox-phone";
const LABEL = "lightbox/phone/vault/v1";
const CHECK = utf8("lightbox vault check");

interface Meta {
  salt: Uint8Array;
  opslimit: number;
  memlimit: number;
  check: Uint8Array;
}

interface Sealed {
  n: Uint8Array;
  c: Uint8Array;
}

function ad(name: string): Uint8Array {
  return concat(utf8(LABEL), new Uint8Array([0]), utf8(name));
}

function passphraseBytes(passphrase: string): Uint8Array {
  return utf8(passphrase.normalize("NFKC"));
}

async function db(): Promise<IDBPDatabase> {
  return openDB(DB_NAME, 1, {
    upgrade(d) {
      d.createObjectStore("meta");
      d.createObjectStore("records");
    },
  });
}

export class Vault {
  private constructor(
    private readonly idb: IDBPDatabase,
    private key: Uint8Array | null,
  ) {}

  static async exists(): Promise<boolean> {
    const d = await db();
    try {
      return (await d.get("meta", "kdf")) !== undefined;
    } finally {
      d.close();
    }
  }

  /** A new, empty vault under `passphrase` (refuses to replace one that exists). */
  static async create(passphrase: string, profile: PassphraseProfile): Promise<Vault> {
    const d = await db();
    if ((await d.get("meta", "kdf")) !== undefined) throw new Error("a vault already exists on this phone");
    const salt = s.randomBytes(16);
    const key = s.argon2id(passphraseBytes(passphrase), salt, profile.opslimit, profile.memlimit);
    const nonce = s.randomBytes(24);
    const meta: Meta = { salt, ...profile, check: concat(nonce, s.aeadEncrypt(key, nonce, CHECK, ad("check"))) };
    await d.put("meta", meta, "kdf");
    return new Vault(d, key);
  }

  /** Open with the passphrase; VerificationError when it is not the right one. */
  static async unlock(passphrase: string): Promise<Vault> {
    const d = await db();
    const meta = (await d.get("meta", "kdf")) as Meta | undefined;
    if (!meta) throw new Error("no vault on this phone");
    const key = s.argon2id(passphraseBytes(passphrase), meta.salt, meta.opslimit, meta.memlimit);
    s.aeadDecrypt(key, meta.check.subarray(0, 24), meta.check.subarray(24), ad("check")); // throws if wrong
    return new Vault(d, key);
  }

  private k(): Uint8Array {
    if (!this.key) throw new VerificationError("the vault is locked", "not_ready");
    return this.key;
  }

  async put(name: string, value: unknown): Promise<void> {
    const nonce = s.randomBytes(24);
    const sealed: Sealed = { n: nonce, c: s.aeadEncrypt(this.k(), nonce, mpEncode(value), ad(name)) };
    await this.idb.put("records", sealed, name);
  }

  async get<T>(name: string): Promise<T | undefined> {
    const sealed = (await this.idb.get("records", name)) as Sealed | undefined;
    if (!sealed) return undefined;
    return mpDecode(s.aeadDecrypt(this.k(), sealed.n, sealed.c, ad(name))) as T;
  }

  async delete(name: string): Promise<void> {
    await this.idb.delete("records", name);
  }

  async names(prefix: string): Promise<string[]> {
    const all = (await this.idb.getAllKeys("records")) as string[];
    return all.filter((k) => k.startsWith(prefix)).sort();
  }

  /** Forget the key: the vault is unreadable until the passphrase is given again. */
  lock(): void {
    if (this.key) this.key.fill(0);
    this.key = null;
    this.idb.close();
  }

  /** Erase everything on this phone (a wipe order, or starting over). */
  static async erase(): Promise<void> {
    const d = await db();
    await d.clear("records");
    await d.clear("meta");
    d.close();
  }
}
