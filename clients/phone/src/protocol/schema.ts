/**
 * Strict shape checks for decoded values, standing in for msgspec's strict structs
 * (STYLE.md "Wire messages are typed, frozen structs with strict decoding"): unknown fields,
 * missing fields, wrong types, out-of-range numbers, patterns and oversize values are refused
 * with DecodeError (LimitExceeded for a string, byte string or list over its limit).
 */
import { b64urlDecode } from "./canonical.js";
import { DecodeError, LimitExceeded } from "./errors.js";

export type Check = (value: unknown, path: string) => void;

export const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
export const ORG_ID = /^[a-z0-9][a-z0-9.-]{0,62}$/;
export const ROLE = /^[a-z][a-z0-9_]{0,63}$/;

export interface Limits {
  min?: number;
  max?: number;
  pattern?: RegExp;
  /** Error code for a value over `max` (frames: field_too_large). */
  tooLarge?: string;
}

function fail(path: string, what: string, code?: string): never {
  throw new DecodeError(`${path}: ${what}`, code);
}

export function str(l: Limits = {}): Check {
  return (v, p) => {
    if (typeof v !== "string") fail(p, "expected a string", l.tooLarge ? "malformed_frame" : undefined);
    const n = [...v].length; // characters (code points), like msgspec's str lengths
    if (l.max !== undefined && n > l.max) throw new LimitExceeded(`${p}: too long`, l.tooLarge ?? "validation_failed");
    if (l.min !== undefined && n < l.min) fail(p, "too short", l.tooLarge ? "malformed_frame" : undefined);
    if (l.pattern && !l.pattern.test(v)) fail(p, "does not match its pattern", l.tooLarge ? "malformed_frame" : undefined);
  };
}

export const uuid: Check = str({ pattern: UUID });

export function int(l: { min?: number; max?: number } = {}): Check {
  return (v, p) => {
    if (typeof v !== "number" || !Number.isSafeInteger(v)) fail(p, "expected an integer");
    if (l.min !== undefined && v < l.min) fail(p, "below its minimum");
    if (l.max !== undefined && v > l.max) fail(p, "above its maximum");
  };
}

export const time: Check = int({ min: 0, max: Number.MAX_SAFE_INTEGER });

export const bool: Check = (v, p) => {
  if (typeof v !== "boolean") fail(p, "expected a boolean");
};

export function oneOf(...values: string[]): Check {
  return (v, p) => {
    if (typeof v !== "string" || !values.includes(v)) fail(p, `expected one of ${values.join(", ")}`);
  };
}

export function nullable(check: Check): Check {
  return (v, p) => {
    if (v !== null) check(v, p);
  };
}

export function list(item: Check, l: { min?: number; max?: number; tooLarge?: string } = {}): Check {
  return (v, p) => {
    if (!Array.isArray(v)) fail(p, "expected a list", l.tooLarge ? "malformed_frame" : undefined);
    if (l.max !== undefined && v.length > l.max) throw new LimitExceeded(`${p}: too many items`, l.tooLarge ?? "validation_failed");
    if (l.min !== undefined && v.length < l.min) fail(p, "too few items", l.tooLarge ? "malformed_frame" : undefined);
    v.forEach((x, i) => item(x, `${p}[${i}]`));
  };
}

/** A base64url string (canonical JSON bodies) decoding to exactly `length` bytes. */
export function b64(length: number): Check {
  return (v, p) => {
    try {
      b64urlDecode(v as string, { length });
    } catch {
      fail(p, `expected base64url of ${length} bytes`);
    }
  };
}

/** A MessagePack bin value. */
export function bin(l: { len?: number; min?: number; max?: number; tooLarge?: string } = {}): Check {
  return (v, p) => {
    if (!(v instanceof Uint8Array)) fail(p, "expected bytes", l.tooLarge ? "malformed_frame" : undefined);
    const max = l.len ?? l.max;
    if (max !== undefined && v.length > max) throw new LimitExceeded(`${p}: too long`, l.tooLarge ?? "validation_failed");
    const min = l.len ?? l.min;
    if (min !== undefined && v.length < min) fail(p, "too short", l.tooLarge ? "malformed_frame" : undefined);
  };
}

export interface StructOptions {
  /** Fields that may be left out (they take their default). */
  optional?: string[];
  /** Error code for an unknown/missing field (frames: malformed_frame). */
  code?: string;
}

export function struct(fields: Record<string, Check>, opts: StructOptions = {}): Check {
  const optional = new Set(opts.optional ?? []);
  return (v, p) => {
    if (typeof v !== "object" || v === null || Array.isArray(v) || v instanceof Uint8Array) {
      fail(p, "expected an object", opts.code);
    }
    const obj = v as Record<string, unknown>;
    for (const k of Object.keys(obj)) {
      if (!(k in fields)) fail(p, `unknown field ${JSON.stringify(k)}`, opts.code);
    }
    for (const [k, check] of Object.entries(fields)) {
      if (!(k in obj)) {
        if (optional.has(k)) continue;
        fail(p, `missing field ${k}`, opts.code);
      }
      check(obj[k], `${p}.${k}`);
    }
  };
}

/** Check `value` against `check` and return it typed (the caller's interface). */
export function validate<T>(check: Check, value: unknown, what: string): T {
  check(value, what);
  return value as T;
}
