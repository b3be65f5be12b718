/**
 * The sealed body (mirrors protocol/body.py; docs/PROTOCOL.md §14): MessagePack, maps keyed by
 * field name in declaration order, every field written (msgspec's encoding), binary as bin.
 * encodeBody refuses what a peer would refuse (the kind rules of §14, control characters);
 * decodeBody checks the fields this client reads strictly and the nested gateway receipts
 * (filing, consent_filing) as maps of known keys.
 */
import { decode as mpDecode, encode as mpEncode } from "@msgpack/msgpack";
import type { AttachmentDescriptor } from "./attachments.js";
import { DecodeError, LimitExceeded } from "./errors.js";
import { MAX_BODY_SIZE } from "./envelope.js";
import { bin, int, list, nullable, oneOf, str, struct, uuid, validate, type Check } from "./schema.js";

export type BodyKind = "text" | "subject" | "filing_receipt" | "consent_record" | "consent_filed";
export type IdentifierKind = "name" | "date_of_birth" | "identifier" | "date" | "age" | "institution";

export interface RecordData {
  patient_name: string;
  patient_id: string;
  issuer_of_patient_id: string;
  birth_date: string | null;
  sex: "M" | "F" | "O" | "";
  accession_number: string;
  anatomic_region: string;
  study_description: string;
  capture: "film" | "clinical";
}

/** A consult handed over at a shift change (PROTOCOL.md §14, §16.4): the original's id, its
 * author (user and device) and time, as the device that sealed it again verified them. */
export interface HandoverOf {
  message_id: string;
  sender_user_id: string;
  sender_device_id: string;
  sent_at: number;
}

export interface Body {
  v: number;
  kind: BodyKind;
  text: string;
  subject: string | null;
  attachments: AttachmentDescriptor[];
  consent_token: string | null;
  record: RecordData | null;
  necessity: string | null;
  /** Break-glass (PROTOCOL.md §17): why no consent could be asked, in the sender's words. */
  emergency_reason: string | null;
  reply_to: string | null;
  quality_warnings: string[];
  filing: Record<string, unknown> | null;
  consent_filing: Record<string, unknown> | null;
  burned_in_identifiers: { attachment_id: string; kinds: IdentifierKind[] }[];
  /** Optional: absent (null here) in every body but a handed-over copy, and never written then. */
  handover_of: HandoverOf | null;
}

/** A body with the defaults of protocol/body.py, overridden by `fields`. */
export function makeBody(fields: Partial<Body>): Body {
  return {
    v: 1,
    kind: "text",
    text: "",
    subject: null,
    attachments: [],
    consent_token: null,
    record: null,
    necessity: null,
    emergency_reason: null,
    reply_to: null,
    quality_warnings: [],
    filing: null,
    consent_filing: null,
    burned_in_identifiers: [],
    handover_of: null,
    ...fields,
  };
}

const DESCRIPTOR: Check = struct(
  {
    attachment_id: uuid,
    key: bin({ len: 32 }),
    sha256: bin({ len: 32 }),
    size: int({ min: 0, max: 64 * 1024 * 1024 }),
    media_type: str({ pattern: /^[a-z]+\/[a-z0-9.+-]{1,100}$/ }),
    width: nullable(int({ min: 1, max: 65535 })),
    height: nullable(int({ min: 1, max: 65535 })),
  },
  { optional: ["width", "height"] },
);
const short = str({ max: 64 });
const RECORD: Check = struct(
  {
    patient_name: str({ max: 200 }),
    patient_id: str({ min: 1, max: 64 }),
    issuer_of_patient_id: short,
    birth_date: nullable(str({ pattern: /^[0-9]{4}-[0-9]{2}-[0-9]{2}$/ })),
    sex: oneOf("M", "F", "O", ""),
    accession_number: str({ max: 16 }),
    anatomic_region: short,
    study_description: short,
    capture: oneOf("film", "clinical"),
  },
  { optional: ["issuer_of_patient_id", "birth_date", "sex", "accession_number", "anatomic_region", "study_description", "capture"] },
);
const anyMap: Check = (v, p) => {
  if (typeof v !== "object" || v === null || Array.isArray(v) || v instanceof Uint8Array) throw new DecodeError(`${p}: expected a map`);
};
const KINDS: IdentifierKind[] = ["name", "date_of_birth", "identifier", "date", "age", "institution"];
const BODY: Check = struct(
  {
    v: int({ min: 1, max: 255 }),
    kind: oneOf("text", "subject", "filing_receipt", "consent_record", "consent_filed"),
    text: str({ max: 16 * 1024 }),
    subject: nullable(str({ max: 200 })),
    attachments: list(DESCRIPTOR, { max: 16 }),
    consent_token: nullable(str({ max: 8192 })),
    record: nullable(RECORD),
    necessity: nullable(str({ max: 4000 })),
    emergency_reason: nullable(str({ max: 2000 })),
    reply_to: nullable(uuid),
    quality_warnings: list(str({ pattern: /^[a-z_]{1,32}$/ }), { max: 16 }),
    filing: nullable(anyMap),
    consent_filing: nullable(anyMap),
    burned_in_identifiers: list(struct({ attachment_id: uuid, kinds: list(oneOf(...KINDS), { min: 1, max: 6 }) }), { max: 16 }),
    handover_of: nullable(struct({ message_id: uuid, sender_user_id: uuid, sender_device_id: uuid, sent_at: int({ min: 0, max: 2 ** 53 - 1 }) })),
  },
  { optional: ["v", "kind", "text", "subject", "attachments", "consent_token", "record", "necessity", "emergency_reason", "reply_to", "quality_warnings", "filing", "consent_filing", "burned_in_identifiers", "handover_of"] },
);

const CONTROL = /[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]/;

function check(b: Body): void {
  const fail = (m: string): never => {
    throw new DecodeError(m, "validation_failed");
  };
  if (b.v !== 1) throw new DecodeError(`unsupported body version ${b.v}`, "unsupported_version");
  if (b.kind === "text" && !(b.text.trim() || b.attachments.length)) fail("a text body needs text or an attachment");
  if (b.kind === "subject" && !(b.subject && b.subject.trim())) fail("a subject body needs a subject");
  if (b.kind === "filing_receipt") {
    if (!b.filing || b.attachments.length || b.record) fail("a filing receipt carries the receipt only");
  } else if (b.filing) fail("only a filing_receipt body carries a receipt");
  if (b.kind === "consent_filed") {
    if (!b.consent_filing || b.attachments.length || b.record) fail("a consent_filed body carries the receipt only");
  } else if (b.consent_filing) fail("only a consent_filed body carries a consent filing");
  if (b.kind === "consent_record") {
    if (!b.consent_token || !b.record || b.attachments.length) fail("a consent_record carries a consent token and record data, and no images");
  } else if (b.record && !b.attachments.length && !b.handover_of) fail("record data goes with an image"); // a handed-over copy whose images expired keeps the patient data alone (PROTOCOL.md §14 "record")
  const ids = b.attachments.map((a) => a.attachment_id);
  if (new Set(ids).size !== ids.length) fail("an attachment is listed twice");
  const flagged = b.burned_in_identifiers.map((x) => x.attachment_id);
  if (new Set(flagged).size !== flagged.length || flagged.some((f) => !ids.includes(f))) fail("burned-in identifiers name each attachment at most once");
  if (b.burned_in_identifiers.some((x) => new Set(x.kinds).size !== x.kinds.length)) fail("a burned-in identifier kind is listed twice");
  const oneLine = [b.subject ?? ""];
  if (b.record) {
    const r = b.record;
    oneLine.push(r.patient_name, r.patient_id, r.issuer_of_patient_id, r.accession_number, r.anatomic_region, r.study_description);
  }
  if (oneLine.some((x) => CONTROL.test(x) || x.includes("\n") || x.includes("\r"))) fail("control characters in a one-line field");
  if ([b.text, b.necessity ?? "", b.emergency_reason ?? ""].some((x) => CONTROL.test(x))) fail("control characters in the text");
}

function ordered(b: Body): Record<string, unknown> {
  return {
    v: b.v,
    kind: b.kind,
    text: b.text,
    subject: b.subject,
    attachments: b.attachments.map((a) => ({
      attachment_id: a.attachment_id,
      key: a.key,
      sha256: a.sha256,
      size: a.size,
      media_type: a.media_type,
      width: a.width,
      height: a.height,
    })),
    consent_token: b.consent_token,
    record: b.record && {
      patient_name: b.record.patient_name,
      patient_id: b.record.patient_id,
      issuer_of_patient_id: b.record.issuer_of_patient_id,
      birth_date: b.record.birth_date,
      sex: b.record.sex,
      accession_number: b.record.accession_number,
      anatomic_region: b.record.anatomic_region,
      study_description: b.record.study_description,
      capture: b.record.capture,
    },
    necessity: b.necessity,
    emergency_reason: b.emergency_reason ?? null,
    reply_to: b.reply_to,
    quality_warnings: b.quality_warnings,
    filing: b.filing,
    consent_filing: b.consent_filing,
    burned_in_identifiers: b.burned_in_identifiers,
    // protocol/body.py never writes it when absent: a body without it is unchanged
    ...(b.handover_of ? { handover_of: {
      message_id: b.handover_of.message_id,
      sender_user_id: b.handover_of.sender_user_id,
      sender_device_id: b.handover_of.sender_device_id,
      sent_at: b.handover_of.sent_at,
    } } : {}),
  };
}

/** A body as a copy handed over at a shift change must keep it (PROTOCOL.md §14 `handover_of`,
 * §16.4; HAZ-02 C20; clients/sdk/handover.py `same_content`), in MessagePack: all of it but
 * `handover_of` and the images (`rest`), and each image with its burned-in flags on its own
 * (`images`, in order), since a reseal drops the images the resealing device no longer holds
 * (expired there) with their flags, and keeps the patient record data (HAZ-02 C19). */
export function handoverParts(b: Body): { rest: Uint8Array; images: Uint8Array[] } {
  const flagged = new Map(b.burned_in_identifiers.map((f) => [f.attachment_id, f.kinds]));
  const images = ordered(b)["attachments"] as Record<string, unknown>[];
  // record fields a sender left out are protocol/body.py's defaults, as a copy resealed there has them
  const r = b.record && { ...b.record, issuer_of_patient_id: b.record.issuer_of_patient_id ?? "", birth_date: b.record.birth_date ?? null,
    sex: b.record.sex ?? "", accession_number: b.record.accession_number ?? "", anatomic_region: b.record.anatomic_region ?? "",
    study_description: b.record.study_description ?? "", capture: b.record.capture ?? "film" };
  return {
    rest: mpEncode(ordered({ ...b, record: r, attachments: [], burned_in_identifiers: [], handover_of: null })),
    images: images.map((a, i) => mpEncode([a, flagged.get(b.attachments[i]!.attachment_id) ?? null])),
  };
}

export function encodeBody(body: Body): Uint8Array {
  validate(BODY, ordered(body), "body");
  check(body);
  const data = mpEncode(ordered(body));
  if (data.length > MAX_BODY_SIZE) throw new LimitExceeded("body too large", "message_too_large");
  return data;
}

export function decodeBody(data: Uint8Array): Body {
  if (data.length > MAX_BODY_SIZE) throw new LimitExceeded("body too large", "message_too_large");
  let raw: unknown;
  try {
    raw = mpDecode(data);
  } catch (e) {
    throw new DecodeError(`malformed body: ${(e as Error).message}`, "validation_failed");
  }
  const partial = validate<Partial<Body>>(BODY, raw, "body");
  const body = makeBody(partial);
  body.attachments = body.attachments.map((a) => ({ ...a, width: a.width ?? null, height: a.height ?? null }));
  check(body);
  return body;
}
