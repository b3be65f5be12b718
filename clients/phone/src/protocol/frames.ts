/**
 * Websocket frames, the client's side (mirrors protocol/frames.py; docs/PROTOCOL.md §3): one
 * binary frame per message, a MessagePack map tagged by `t`. The client encodes the frames it
 * sends and decodes the relay's, refusing a frame over the maximum size, one that is not a map
 * with a string `t`, and (for the frames it acts on) one whose fields are wrong.
 *
 * Bundles (§3.6): a client that asks for the `lightbox.bundle` subprotocol may get, once
 * `ready`, several frames in one websocket message. `decodeMessage` gives the frames a message
 * carries, each decoded and checked exactly as a frame alone, as protocol/session.py's
 * ClientSession does; the phone itself writes every frame alone (a sender never has to bundle).
 */
import { decode as mpDecode, encode as mpEncode } from "@msgpack/msgpack";
import { concat, utf8 } from "./bytes.js";
import { DecodeError, LimitExceeded } from "./errors.js";
import { sealedFromWire, sealedToWire, type SealedMessage } from "./envelope.js";
import { bin, bool, int, list, nullable, oneOf, str, struct, time, uuid, validate, type Check } from "./schema.js";
import * as s from "./sodium.js";

export const PROTOCOL_VERSION = 1;
export const DEFAULT_MAX_FRAME = 1024 * 1024;
/** The websocket subprotocol (RFC 6455 §1.9) a client asks for when it can take `bundle`
 * frames; only when the relay selects it may one come, and only after `ready` (§3.6). */
export const BUNDLE_SUBPROTOCOL = "lightbox.bundle";
/** Most frames in one `bundle` (protocol/frames.py MAX_BUNDLE). */
export const MAX_BUNDLE = 64;
export const LABEL_WS_AUTH = "lightbox/ws-auth/v1";

/** "lightbox/ws-auth/v1" || 0x00 || nonce (32) || SHA-256(UTF-8 access token): 84 bytes (§3.2). */
export function challengeSigningBytes(nonce: Uint8Array, accessToken: string): Uint8Array {
  if (nonce.length !== 32) throw new RangeError("challenge nonce must be 32 bytes");
  return concat(utf8(LABEL_WS_AUTH), new Uint8Array([0]), nonce, s.sha256(utf8(accessToken)));
}

export type ClientFrame =
  | { t: "hello"; versions: number[]; access_token: string; device_id: string; client: string; client_version: string }
  | { t: "auth"; signature: Uint8Array }
  | { t: "send"; req_id: string; message: SealedMessage }
  | { t: "ack"; delivery_ids: string[] }
  | { t: "receipt"; req_id: string | null; statement: string }
  | { t: "expiry_confirm"; req_id: string | null; statement: string }
  | { t: "wipe_confirm"; statement: string }
  | { t: "ping"; nonce: Uint8Array }
  | { t: "pong"; nonce: Uint8Array };

export function encodeFrame(frame: ClientFrame): Uint8Array {
  if (frame.t === "send") return mpEncode({ t: "send", req_id: frame.req_id, message: sealedToWire(frame.message) });
  return mpEncode(frame);
}

const F = { tooLarge: "field_too_large" };
const SERVER: Record<string, Check> = {
  challenge: struct({ t: str(), version: int({ min: 1, max: 65535 }), nonce: bin({ len: 32, ...F }), server_time: time }, { code: "malformed_frame" }),
  ready: struct(
    {
      t: str(),
      session_id: uuid,
      device_id: uuid,
      user_id: uuid,
      version: int(),
      server_time: time,
      heartbeat: int({ min: 1, max: 3600 }),
      expires_at: time,
      limits: (v, p) => {
        if (typeof v !== "object" || v === null) throw new DecodeError(`${p}: expected a map`, "malformed_frame");
      },
    },
    { code: "malformed_frame" },
  ),
  accepted: struct(
    { t: str(), req_id: str({ min: 1, max: 64, ...F }), message_id: uuid, thread_id: uuid, thread_seq: int({ min: 1 }), server_time: time, duplicate: bool },
    { code: "malformed_frame" },
  ),
  deliver: struct(
    { t: str(), delivery_id: uuid, thread_seq: int(), priority: oneOf("routine", "urgent"), received_at: time, message: () => undefined },
    { code: "malformed_frame" },
  ),
  error: struct(
    {
      t: str(),
      req_id: nullable(str({ max: 64, ...F })),
      code: str({ max: 64 }),
      detail: str({ max: 1024, ...F }),
      retry_after: nullable((v, p) => {
        if (typeof v !== "number") throw new DecodeError(`${p}: expected a number`, "malformed_frame");
      }),
      missing: nullable(list(uuid, { max: 256 })),
      extra: nullable(list(uuid, { max: 256 })),
      stale: nullable(list(uuid, { max: 256 })),
      fatal: bool,
    },
    { code: "malformed_frame", optional: ["req_id", "detail", "retry_after", "missing", "extra", "stale", "fatal"] },
  ),
  bundle: struct({ t: str(), frames: list(bin(F), { min: 1, max: MAX_BUNDLE, ...F }) }, { code: "malformed_frame" }),
  ping: struct({ t: str(), nonce: bin({ max: 32, ...F }) }, { code: "malformed_frame" }),
  pong: struct({ t: str(), nonce: bin({ max: 32, ...F }) }, { code: "malformed_frame" }),
};

/** Relay frames this client knows by name but does not act on yet are passed through as maps. */
const KNOWN = new Set([
  "challenge", "ready", "accepted", "deliver", "queue_empty", "withdrawn", "receipt_notice", "error", "filed_notice",
  "expire_order", "wipe_order", "keys_low", "revoked", "escalation_notice", "reseal_request", "bundle", "ping", "pong",
  "not_received",
]);

export type ServerFrame = { t: string; [field: string]: unknown };

export function decodeFrame(data: Uint8Array, maxFrame = DEFAULT_MAX_FRAME): ServerFrame {
  if (data.length > maxFrame) throw new LimitExceeded("frame too large", "frame_too_large");
  let raw: unknown;
  try {
    raw = mpDecode(data, { maxDepth: 16 } as never);
  } catch {
    throw new DecodeError("not MessagePack", "malformed_frame");
  }
  if (typeof raw !== "object" || raw === null || Array.isArray(raw) || raw instanceof Uint8Array) {
    throw new DecodeError("a frame is a map", "malformed_frame");
  }
  const t = (raw as Record<string, unknown>)["t"];
  if (typeof t !== "string") throw new DecodeError("frame without a type", "malformed_frame");
  if (!KNOWN.has(t)) throw new DecodeError(`unknown frame type ${t.slice(0, 32)}`, "unknown_frame_type");
  const check = SERVER[t];
  const frame = raw as ServerFrame;
  if (check) validate(check, frame, t);
  if (t === "deliver") frame["message"] = sealedFromWire(frame["message"]);
  return frame;
}

/** What the client knows of its connection when a message comes (§3.6). */
export interface Connection {
  /** The relay selected `lightbox.bundle` in its upgrade answer (`WebSocket.protocol`). */
  bundles: boolean;
  /** The relay's `ready` has come on this connection. */
  ready: boolean;
}

/** The frames one websocket message carries, in order, and the error that ends it, if any. */
export interface Received {
  frames: ServerFrame[];
  /** A bad frame (alone, or inside a bundle after `frames`), or a bundle out of place: the
   * client closes with 4000 (`code` as the close reason) once `frames` are handled. */
  error: DecodeError | null;
}

function asDecodeError(err: unknown): DecodeError {
  return err instanceof DecodeError ? err : new DecodeError(String(err), (err as { code?: string }).code ?? "malformed_frame");
}

/**
 * Decode one binary websocket message from the relay into the frames it carries: a frame
 * alone is itself; a `bundle` (only on a connection that selected the subprotocol, only after
 * `ready`) is its 1..64 entries, each a complete frame payload decoded and checked as a frame
 * alone (§3.1), in order, up to the first bad one, which is the error (a `bundle` inside a
 * bundle is `unexpected_frame`). The whole message is checked against `maxFrame` before
 * anything is parsed. A bundle out of place is `unexpected_frame` and none of its frames is
 * given (protocol/session.py ClientSession.receive_data).
 */
export function decodeMessage(data: Uint8Array, conn: Connection, maxFrame = DEFAULT_MAX_FRAME): Received {
  let frame: ServerFrame;
  try {
    frame = decodeFrame(data, maxFrame);
  } catch (err) {
    return { frames: [], error: asDecodeError(err) };
  }
  if (frame.t !== "bundle") return { frames: [frame], error: null };
  if (!conn.bundles || !conn.ready) {
    return { frames: [], error: new DecodeError("bundle from the relay before ready or without the lightbox.bundle subprotocol", "unexpected_frame") };
  }
  const frames: ServerFrame[] = [];
  for (const entry of frame["frames"] as Uint8Array[]) {
    let inner: ServerFrame;
    try {
      inner = decodeFrame(entry, maxFrame);
    } catch (err) {
      return { frames, error: asDecodeError(err) };
    }
    if (inner.t === "bundle") return { frames, error: new DecodeError("bundle inside a bundle", "unexpected_frame") };
    frames.push(inner);
  }
  return { frames, error: null };
}
