/**
 * Statements signed by a device key (mirrors protocol/statements.py; docs/PROTOCOL.md §8):
 * filing statements, expiry confirmations, receipts and wipe confirmations, each canonical JSON
 * in the compact signed format with its own domain label.
 */
import * as c from "./canonical.js";
import { DecodeError, VerificationError } from "./errors.js";
import { b64, int, oneOf, struct, time, uuid, validate, type Check } from "./schema.js";

export const MAX_STATEMENT_LENGTH = 4 * 1024;
const version = int({ min: 1, max: 255 });

export interface FilingStatement {
  v: number;
  statement_id: string;
  device_id: string;
  attachment_id: string;
  message_id: string;
  thread_id: string;
  filed_at: number;
  receipt_sha256: string;
}
export interface ExpiryConfirmation {
  v: number;
  device_id: string;
  attachment_id: string;
  order_id: string;
  shredded_at: number;
}
export interface WipeConfirmation {
  v: number;
  device_id: string;
  order_id: string;
  wiped_at: number;
}
export type ReceiptKind = "delivered" | "read" | "acknowledged";
export interface ReceiptStatement {
  v: number;
  device_id: string;
  message_id: string;
  thread_id: string;
  kind: ReceiptKind;
  at: number;
}

const FILING = struct({
  v: version,
  statement_id: uuid,
  device_id: uuid,
  attachment_id: uuid,
  message_id: uuid,
  thread_id: uuid,
  filed_at: time,
  receipt_sha256: b64(32),
});
const EXPIRY = struct({ v: version, device_id: uuid, attachment_id: uuid, order_id: uuid, shredded_at: time });
const WIPE = struct({ v: version, device_id: uuid, order_id: uuid, wiped_at: time });
const RECEIPT = struct({
  v: version,
  device_id: uuid,
  message_id: uuid,
  thread_id: uuid,
  kind: oneOf("delivered", "read", "acknowledged"),
  at: time,
});

function issue(label: string, body: { v: number }, seed: Uint8Array): string {
  if (body.v !== 1) throw new RangeError("unsupported statement version");
  return c.signCompact(label, c.canonicalJson(body), seed);
}

function verify<T extends { v: number; device_id: string }>(
  label: string,
  check: Check,
  token: string,
  signingKey: Uint8Array,
  deviceId?: string,
): T {
  let body: T;
  try {
    body = validate<T>(check, c.openCompact(label, token, signingKey, MAX_STATEMENT_LENGTH), label);
  } catch (e) {
    if (e instanceof DecodeError) throw new VerificationError(`malformed statement: ${e.reason}`);
    throw e;
  }
  if (body.v !== 1) throw new VerificationError("unsupported statement version");
  if (deviceId !== undefined && body.device_id !== deviceId) throw new VerificationError("statement names another device than its signer");
  return body;
}

export const issueFilingStatement = (b: FilingStatement, seed: Uint8Array): string => issue(c.LABEL_FILING_STATEMENT, b, seed);
export const issueExpiryConfirmation = (b: ExpiryConfirmation, seed: Uint8Array): string => issue(c.LABEL_EXPIRY_CONFIRMATION, b, seed);
export const issueWipeConfirmation = (b: WipeConfirmation, seed: Uint8Array): string => issue(c.LABEL_WIPE_CONFIRMATION, b, seed);
export const issueReceiptStatement = (b: ReceiptStatement, seed: Uint8Array): string => issue(c.LABEL_RECEIPT_STATEMENT, b, seed);

export const verifyFilingStatement = (t: string, key: Uint8Array, deviceId?: string): FilingStatement =>
  verify(c.LABEL_FILING_STATEMENT, FILING, t, key, deviceId);
export const verifyExpiryConfirmation = (t: string, key: Uint8Array, deviceId?: string): ExpiryConfirmation =>
  verify(c.LABEL_EXPIRY_CONFIRMATION, EXPIRY, t, key, deviceId);
export const verifyWipeConfirmation = (t: string, key: Uint8Array, deviceId?: string): WipeConfirmation =>
  verify(c.LABEL_WIPE_CONFIRMATION, WIPE, t, key, deviceId);
export const verifyReceiptStatement = (t: string, key: Uint8Array, deviceId?: string): ReceiptStatement =>
  verify(c.LABEL_RECEIPT_STATEMENT, RECEIPT, t, key, deviceId);
