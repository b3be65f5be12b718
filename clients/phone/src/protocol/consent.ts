/**
 * Consent tokens (mirrors protocol/consent.py; docs/PROTOCOL.md §7): a compact JWS
 * (RFC 7515 §7.1) over a JWT claims set (RFC 7519), EdDSA over Ed25519 (RFC 8037 §3.1), signed
 * by the capturing clinician's identity key. The protected header is exactly
 * {"alg":"EdDSA","kid":...,"typ":"lightbox-consent+jwt"} (RFC 8725 §3.11); verification allows
 * EdDSA only, so `alg: none` and HS256-with-the-public-key are refused (RFC 8725 §2.1).
 * Failures: VerificationError `consent_expired` for the time window, `consent_invalid` for
 * everything else.
 */
import { fromUtf8, hex, utf8 } from "./bytes.js";
import { b64urlDecode, b64urlEncode } from "./canonical.js";
import { DecodeError, VerificationError } from "./errors.js";
import { keyId } from "./keys.js";
import { PURPOSES, type Purpose } from "./envelope.js";
import { bool, list, oneOf, ORG_ID, ROLE, str, struct, time, UUID, uuid, validate } from "./schema.js";
import * as s from "./sodium.js";

export const CONSENT_TOKEN_TYPE = "lightbox-consent+jwt";
export const MAX_CONSENT_TOKEN = 16 * 1024;
export const FHIR_SYSTEM_BASE = "https://lightbox.example.org/fhir";

export interface ConsentRecipients {
  users: string[];
  roles: string[];
  orgs: string[];
  external: boolean;
}

export interface ConsentClaims {
  jti: string;
  iss: string;
  org: string;
  patient: string;
  purposes: Purpose[];
  recipients: ConsentRecipients;
  images: string[];
  form_version: string;
  decision: "agreed" | "refused";
  basis: "treatment_attestation" | "written";
  permanence_statement_shown: boolean;
  no_effect_on_care_statement_shown: boolean;
  iat: number;
  nbf: number;
  exp: number;
}

const CLAIMS = struct({
  jti: uuid,
  iss: uuid,
  org: str({ pattern: ORG_ID }),
  patient: str({ min: 1, max: 128, pattern: /^[A-Za-z0-9._:-]+$/ }),
  purposes: list(oneOf(...PURPOSES), { min: 1, max: PURPOSES.length }),
  recipients: struct({
    users: list(str({ pattern: UUID }), { max: 64 }),
    roles: list(str({ pattern: ROLE }), { max: 32 }),
    orgs: list(str({ pattern: ORG_ID }), { max: 16 }),
    external: bool,
  }),
  images: list(str({ pattern: /^[0-9a-f]{64}$/ }), { max: 32 }),
  form_version: str({ min: 1, max: 32, pattern: /^[A-Za-z0-9._-]+$/ }),
  decision: oneOf("agreed", "refused"),
  basis: oneOf("treatment_attestation", "written"),
  permanence_statement_shown: bool,
  no_effect_on_care_statement_shown: bool,
  iat: time,
  nbf: time,
  exp: time,
});

/** The claims in field order: the payload is their compact JSON (so a token is reproducible). */
function orderedClaims(c: ConsentClaims): ConsentClaims {
  return {
    jti: c.jti,
    iss: c.iss,
    org: c.org,
    patient: c.patient,
    purposes: [...c.purposes],
    recipients: { users: [...c.recipients.users], roles: [...c.recipients.roles], orgs: [...c.recipients.orgs], external: c.recipients.external },
    images: [...c.images],
    form_version: c.form_version,
    decision: c.decision,
    basis: c.basis,
    permanence_statement_shown: c.permanence_statement_shown,
    no_effect_on_care_statement_shown: c.no_effect_on_care_statement_shown,
    iat: c.iat,
    nbf: c.nbf,
    exp: c.exp,
  };
}

function checkClaims(claims: ConsentClaims, invalid: (m: string) => Error): ConsentClaims {
  try {
    validate(CLAIMS, claims, "claims");
  } catch (e) {
    throw invalid(`claims: ${(e as DecodeError).reason ?? e}`);
  }
  if (new Set(claims.purposes).size !== claims.purposes.length) throw invalid("purposes must not repeat");
  if (claims.exp <= claims.nbf || claims.exp <= claims.iat) throw invalid("exp must be after nbf and iat");
  return claims;
}

/** Sign `claims` with the issuer's identity seed: the JWS header's keys sorted (as PyJWT
 * writes them), the payload the claims' compact JSON in field order. */
export function issueConsentToken(claims: ConsentClaims, identitySeed: Uint8Array): string {
  checkClaims(claims, (m) => new RangeError(m));
  const header = { alg: "EdDSA", kid: keyId(s.ed25519PublicKey(identitySeed)), typ: CONSENT_TOKEN_TYPE };
  const signingInput = `${b64urlEncode(utf8(JSON.stringify(header)))}.${b64urlEncode(utf8(JSON.stringify(orderedClaims(claims))))}`;
  const signature = s.ed25519Sign(identitySeed, utf8(signingInput));
  return `${signingInput}.${b64urlEncode(signature)}`;
}

function parts(token: string, invalid: (m: string) => Error): { header: Record<string, unknown>; payload: unknown; input: string; signature: Uint8Array } {
  if (typeof token !== "string" || token.length > MAX_CONSENT_TOKEN) throw invalid("not a consent token");
  const segs = token.split(".");
  if (segs.length !== 3) throw invalid("not a compact JWS");
  let header: Record<string, unknown>;
  let payload: unknown;
  let signature: Uint8Array;
  try {
    header = JSON.parse(fromUtf8(b64urlDecode(segs[0]!))) as Record<string, unknown>;
    payload = JSON.parse(fromUtf8(b64urlDecode(segs[1]!)));
    signature = b64urlDecode(segs[2]!, { length: 64 });
  } catch {
    throw invalid("not a compact JWS");
  }
  if (typeof header !== "object" || header === null || Array.isArray(header)) throw invalid("header is not an object");
  const keys = Object.keys(header).sort();
  if (keys.join(",") !== "alg,kid,typ") throw invalid("header must hold exactly alg, kid, typ");
  if (header["typ"] !== CONSENT_TOKEN_TYPE || header["alg"] !== "EdDSA") throw invalid("not a lightbox consent token");
  return { header, payload, input: `${segs[0]}.${segs[1]}`, signature };
}

/** §7.3: size, header, signature (EdDSA only), strict claims, then nbf - leeway <= at < exp + leeway. */
export function verifyConsentToken(token: string, issuerIdentityKey: Uint8Array, at: number, leeway = 0): ConsentClaims {
  const invalid = (m: string): Error => new VerificationError(m, "consent_invalid");
  const p = parts(token, invalid);
  if (issuerIdentityKey.length !== 32) throw invalid("bad issuer key");
  if (p.header["kid"] !== keyId(issuerIdentityKey)) throw invalid("kid names another key");
  if (!s.ed25519Verify(issuerIdentityKey, utf8(p.input), p.signature)) throw invalid("JWS: signature verification failed");
  const claims = checkClaims(p.payload as ConsentClaims, invalid);
  if (!(claims.nbf - leeway <= at && at < claims.exp + leeway)) throw new VerificationError("outside nbf/exp", "consent_expired");
  return claims;
}

/** The claims WITHOUT verifying (only to find the issuer); DecodeError(consent_invalid). */
export function peekConsentTokenUnverified(token: string): ConsentClaims {
  const invalid = (m: string): Error => new DecodeError(m, "consent_invalid");
  return checkClaims(parts(token, invalid).payload as ConsentClaims, invalid);
}

/** SHA-256 of an image's bytes, lowercase hex: what `images` lists. */
export function imageHash(image: Uint8Array): string {
  return hex(s.sha256(image));
}

// --- FHIR R4 Consent (§7.5) ------------------------------------------------------------------

const V3_PURPOSE: Partial<Record<Purpose, string>> = { direct_care: "TREAT", external_consult: "TREAT", research: "HRESCH" };
const V3_ACT_REASON = "http://terminology.hl7.org/CodeSystem/v3-ActReason";
const V3_PARTICIPATION = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType";
const URI = "urn:ietf:rfc:3986";

function fhirTime(t: number): string {
  return new Date(t * 1000).toISOString().replace(/\.\d{3}Z$/, "Z");
}

const ident = (system: string, value: string): Record<string, string> => ({ system, value });

/** Map consent claims field by field to a FHIR R4 Consent, as protocol/consent.py does. */
export function toFhirConsent(claims: ConsentClaims, systemBase = FHIR_SYSTEM_BASE): Record<string, unknown> {
  const sys = systemBase.replace(/\/+$/, "");
  const agreed = claims.decision === "agreed";
  const urn = `urn:uuid:${claims.jti}`;
  const ref = (kind: string, system: string, value: string): Record<string, unknown> => ({ type: kind, identifier: ident(`${sys}/${system}`, value) });
  const actor = (reference: Record<string, unknown>): Record<string, unknown> => ({
    role: { coding: [{ system: V3_PARTICIPATION, code: "IRCP" }] },
    reference,
  });
  const purposes: Record<string, string>[] = [];
  for (const p of claims.purposes) {
    purposes.push({ system: `${sys}/CodeSystem/purpose`, code: p });
    const v3 = V3_PURPOSE[p];
    if (v3 && !purposes.some((x) => x["code"] === v3)) purposes.push({ system: V3_ACT_REASON, code: v3 });
  }
  const r = claims.recipients;
  const actors = [
    ...r.users.map((u) => actor(ref("Practitioner", "user-id", u))),
    ...r.roles.map((x) => actor(ref("PractitionerRole", "role", x))),
    ...r.orgs.map((o) => actor(ref("Organization", "org-id", o))),
  ];
  const provision: Record<string, unknown> = {
    type: agreed ? "permit" : "deny",
    period: { start: fhirTime(claims.nbf), end: fhirTime(claims.exp) },
    purpose: purposes,
    extension: [{ url: `${sys}/StructureDefinition/external-recipients`, valueBoolean: r.external }],
  };
  if (actors.length) provision["actor"] = actors;
  if (claims.images.length) {
    provision["data"] = claims.images.map((h) => ({ meaning: "instance", reference: { identifier: ident(`${sys}/image-sha256`, h) } }));
  }
  return {
    resourceType: "Consent",
    id: claims.jti,
    extension: [
      { url: `${sys}/StructureDefinition/permanence-statement-shown`, valueBoolean: claims.permanence_statement_shown },
      { url: `${sys}/StructureDefinition/no-effect-on-care-statement-shown`, valueBoolean: claims.no_effect_on_care_statement_shown },
    ],
    identifier: [ident(URI, urn)],
    status: agreed ? "active" : "rejected",
    scope: { coding: [{ system: "http://terminology.hl7.org/CodeSystem/consentscope", code: "patient-privacy" }] },
    category: [{ coding: [{ system: "http://loinc.org", code: "59284-0", display: "Consent" }] }],
    patient: { identifier: ident(`${sys}/patient-ref`, claims.patient) },
    dateTime: fhirTime(claims.iat),
    performer: [ref("Practitioner", "user-id", claims.iss)],
    organization: [ref("Organization", "org-id", claims.org)],
    sourceReference: { type: "DocumentReference", identifier: ident(URI, urn), display: "Lightbox consent token (compact JWS, EdDSA)" },
    policy: [{ uri: `${sys}/consent-form/${claims.form_version}` }],
    policyRule: { coding: [{ system: `${sys}/CodeSystem/consent-basis`, code: claims.basis }] },
    provision,
  };
}
