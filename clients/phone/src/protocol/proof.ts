/**
 * `Lightbox-Proof`, the proof of possession on every device request (mirrors
 * protocol/api.py request_proof_input; docs/PROTOCOL.md §11, in the spirit of DPoP, RFC 9449):
 * `<unix seconds>.<b64url nonce>.<b64url signature>`, the Ed25519 signature over
 *
 *   "lightbox/v1/request-proof/2" 0x00 METHOD 0x00 target 0x00 decimal-seconds 0x00
 *   nonce[16] SHA-256(body)[32] SHA-256(access token)[32]
 *
 * where target is the path and query exactly as sent (RFC 9110 §7.1 origin-form).
 */
import { concat, utf8 } from "./bytes.js";
import { b64urlDecode, b64urlEncode } from "./canonical.js";
import * as s from "./sodium.js";

export const LABEL_REQUEST_PROOF = "lightbox/v1/request-proof/2";
export const PROOF_NONCE_BYTES = 16;

export function requestProofInput(
  method: string,
  target: string,
  timestamp: number,
  nonce: Uint8Array,
  body: Uint8Array,
  accessToken: string,
): Uint8Array {
  if (nonce.length !== PROOF_NONCE_BYTES) throw new RangeError(`a proof nonce is ${PROOF_NONCE_BYTES} bytes`);
  if (method.includes("\0") || target.includes("\0")) throw new RangeError("a request method or target cannot contain NUL");
  const zero = new Uint8Array([0]);
  return concat(
    utf8(LABEL_REQUEST_PROOF),
    zero,
    utf8(method.toUpperCase()),
    zero,
    utf8(target),
    zero,
    utf8(String(timestamp)),
    zero,
    nonce,
    s.sha256(body),
    s.sha256(utf8(accessToken)),
  );
}

/** A fresh proof header for one request (sign every request, retries included, anew). */
export function makeProof(
  seed: Uint8Array,
  method: string,
  target: string,
  body: Uint8Array,
  accessToken: string,
  now: number,
  rng: s.Rng = s.randomBytes,
): string {
  const nonce = rng(PROOF_NONCE_BYTES);
  const signature = s.ed25519Sign(seed, requestProofInput(method, target, now, nonce, body, accessToken));
  return `${now}.${b64urlEncode(nonce)}.${b64urlEncode(signature)}`;
}

/** Check a proof as a relay would (without the seen-nonce memory, which is the relay's). */
export function verifyProof(
  header: string,
  publicKey: Uint8Array,
  method: string,
  target: string,
  body: Uint8Array,
  accessToken: string,
): boolean {
  const parts = header.split(".");
  if (parts.length !== 3 || !/^[0-9]{1,15}$/.test(parts[0]!)) return false;
  try {
    const nonce = b64urlDecode(parts[1]!, { length: PROOF_NONCE_BYTES });
    const signature = b64urlDecode(parts[2]!, { length: 64 });
    const input = requestProofInput(method, target, Number(parts[0]), nonce, body, accessToken);
    return s.ed25519Verify(publicKey, input, signature);
  } catch {
    return false;
  }
}
