/**
 * Certificates, signed prekeys and revocation lists (mirrors protocol/certs.py;
 * docs/PROTOCOL.md §4.2–§4.6). Every failure throws VerificationError with the specific code
 * of §4.6 (certificate_invalid, _untrusted, _revoked, _expired, licence_expired).
 */
import * as c from "./canonical.js";
import { DecodeError, VerificationError } from "./errors.js";
import { b64, bool, int, list, nullable, oneOf, ORG_ID, ROLE, str, struct, time, uuid, validate } from "./schema.js";

export const MAX_CERTIFICATE_LENGTH = 8 * 1024;
export const MAX_REVOCATION_LIST_LENGTH = 4 * 1024 * 1024;
export const ROLE_RECORD_GATEWAY = "record_gateway";

export interface Licence {
  type: string;
  number: string;
  jurisdiction: string;
  expires_at: number;
}

/** Field values as in the canonical JSON body (binary values are base64url strings). */
export interface UserCertificate {
  v: number;
  serial: string;
  user_id: string;
  org_id: string;
  display_name: string;
  account_kind: "clinician" | "service";
  roles: string[];
  specialty: string | null;
  department: string | null;
  licence: Licence | null;
  identity_key: string;
  not_before: number;
  not_after: number;
  issued_at: number;
}

export interface DeviceCertificate {
  v: number;
  device_id: string;
  user_id: string;
  org_id: string;
  kind: "mobile" | "desktop" | "gateway";
  signing_key: string;
  dh_key: string;
  issued_at: number;
  not_after: number;
}

export interface SignedPrekey {
  device_id: string;
  prekey_id: number;
  public: string;
  created_at: number;
}

export interface OneTimePrekey {
  device_id: string;
  prekey_id: number;
  public: string;
}

export interface RevocationEntry {
  subject: "user" | "device";
  id: string;
  revoked_at: number;
  reason: string;
  wipe: boolean;
}

export interface RevocationList {
  v: number;
  org_id: string;
  number: number;
  issued_at: number;
  entries: RevocationEntry[];
}

const text = str({ min: 1, max: 200 });
const version = int({ min: 1, max: 255 });
const prekeyId = int({ min: 0, max: 0xffffffff });
const orgId = str({ pattern: ORG_ID });

const LICENCE = struct({ type: text, number: text, jurisdiction: text, expires_at: time });
export const USER_CERTIFICATE = struct({
  v: version,
  serial: uuid,
  user_id: uuid,
  org_id: orgId,
  display_name: text,
  account_kind: oneOf("clinician", "service"),
  roles: list(str({ pattern: ROLE }), { max: 32 }),
  specialty: nullable(text),
  department: nullable(text),
  licence: nullable(LICENCE),
  identity_key: b64(32),
  not_before: time,
  not_after: time,
  issued_at: time,
});
export const DEVICE_CERTIFICATE = struct({
  v: version,
  device_id: uuid,
  user_id: uuid,
  org_id: orgId,
  kind: oneOf("mobile", "desktop", "gateway"),
  signing_key: b64(32),
  dh_key: b64(32),
  issued_at: time,
  not_after: time,
});
export const SIGNED_PREKEY = struct({ device_id: uuid, prekey_id: prekeyId, public: b64(32), created_at: time });
export const ONE_TIME_PREKEY = struct({ device_id: uuid, prekey_id: prekeyId, public: b64(32) });
const REVOCATION_ENTRY = struct({
  subject: oneOf("user", "device"),
  id: uuid,
  revoked_at: time,
  reason: str({ max: 200 }),
  wipe: bool,
});
export const REVOCATION_LIST = struct({
  v: version,
  org_id: orgId,
  number: int({ min: 0, max: Number.MAX_SAFE_INTEGER }),
  issued_at: time,
  entries: list(REVOCATION_ENTRY, { max: 20_000 }),
});

/** A device whose chain verified: the only input envelope.ts encrypts to or trusts. */
export interface VerifiedDevice {
  user: UserCertificate;
  device: DeviceCertificate;
  deviceId: string;
  userId: string;
  orgId: string;
  signingKey: Uint8Array;
  dhKey: Uint8Array;
}

function verified(user: UserCertificate, device: DeviceCertificate): VerifiedDevice {
  return {
    user,
    device,
    deviceId: device.device_id,
    userId: user.user_id,
    orgId: user.org_id,
    signingKey: c.b64urlDecode(device.signing_key, { length: 32 }),
    dhKey: c.b64urlDecode(device.dh_key, { length: 32 }),
  };
}

function fail(reason: string, code = "certificate_invalid"): VerificationError {
  return new VerificationError(reason, code);
}

function open<T>(label: string, token: string, check: typeof USER_CERTIFICATE, key: Uint8Array, max = MAX_CERTIFICATE_LENGTH): T {
  try {
    return validate<T>(check, c.openCompact(label, token, key, max), label);
  } catch (e) {
    if (e instanceof DecodeError || e instanceof VerificationError) throw fail(e.reason);
    throw e;
  }
}

function checkUserBody(body: UserCertificate): void {
  if (body.v !== 1) throw fail(`unsupported user certificate version ${body.v}`);
  if (body.not_after <= body.not_before) throw fail("user certificate validity period is empty");
  if (body.account_kind === "clinician" && body.licence === null) throw fail("clinician certificate without a licence");
}

function checkDeviceBody(body: DeviceCertificate): void {
  if (body.v !== 1) throw fail(`unsupported device certificate version ${body.v}`);
  if (body.not_after <= body.issued_at) throw fail("device certificate validity period is empty");
}

/** The latest verified revocation list of each organisation (refuses rollbacks, §4.5). */
export class RevocationSet {
  private lists = new Map<string, RevocationList>();
  add(rl: RevocationList): boolean {
    const current = this.lists.get(rl.org_id);
    if (current) {
      if (rl.number === current.number) {
        const same = c.b64urlEncode(c.canonicalJson(rl)) === c.b64urlEncode(c.canonicalJson(current));
        if (!same) throw fail("two different revocation lists with the same number", "certificate_revoked");
        return false;
      }
      if (rl.number < current.number) throw fail("revocation list older than the one held", "certificate_revoked");
    }
    this.lists.set(rl.org_id, rl);
    return true;
  }
  number(orgId: string): number | null {
    return this.lists.get(orgId)?.number ?? null;
  }
  entry(orgId: string, subject: "user" | "device", id: string): RevocationEntry | undefined {
    return this.lists.get(orgId)?.entries.find((e) => e.subject === subject && e.id === id);
  }
}

export function issueUserCertificate(body: UserCertificate, orgSeed: Uint8Array): string {
  checkUserBody(body);
  return c.signCompact(c.LABEL_USER_CERTIFICATE, c.canonicalJson(body), orgSeed);
}

export function issueDeviceCertificate(body: DeviceCertificate, identitySeed: Uint8Array): string {
  checkDeviceBody(body);
  return c.signCompact(c.LABEL_DEVICE_CERTIFICATE, c.canonicalJson(body), identitySeed);
}

export function issueSignedPrekey(body: SignedPrekey, deviceSeed: Uint8Array): string {
  return c.signCompact(c.LABEL_SIGNED_PREKEY, c.canonicalJson(body), deviceSeed);
}

export function issueOneTimePrekey(body: OneTimePrekey, deviceSeed: Uint8Array): string {
  return c.signCompact(c.LABEL_ONE_TIME_PREKEY, c.canonicalJson(body), deviceSeed);
}

export function issueRevocationList(body: RevocationList, orgSeed: Uint8Array): string {
  if (body.v !== 1) throw fail(`unsupported revocation list version ${body.v}`);
  return c.signCompact(c.LABEL_REVOCATION_LIST, c.canonicalJson(body), orgSeed);
}

/** §4.6 steps 1–5. */
export function verifyUserCertificate(
  token: string,
  trustedOrgs: Record<string, Uint8Array>,
  at: number,
  revocations: RevocationSet | null,
): UserCertificate {
  let claimed: UserCertificate;
  try {
    claimed = validate<UserCertificate>(USER_CERTIFICATE, c.peekCompact(token, MAX_CERTIFICATE_LENGTH), "user certificate");
  } catch (e) {
    if (e instanceof DecodeError) throw fail(`malformed user certificate: ${e.reason}`);
    throw e;
  }
  const key = Object.prototype.hasOwnProperty.call(trustedOrgs, claimed.org_id) ? trustedOrgs[claimed.org_id] : undefined;
  if (!key) throw fail(`organisation ${claimed.org_id} is not trusted`, "certificate_untrusted");
  const body = open<UserCertificate>(c.LABEL_USER_CERTIFICATE, token, USER_CERTIFICATE, key);
  checkUserBody(body);
  if (revocations?.entry(body.org_id, "user", body.user_id)) throw fail(`user ${body.user_id} is revoked`, "certificate_revoked");
  if (!(body.not_before <= at && at < body.not_after)) throw fail("user certificate outside its validity period", "certificate_expired");
  if (body.account_kind === "clinician" && at >= body.licence!.expires_at) throw fail("licence expired", "licence_expired");
  return body;
}

/** §4.6 steps 6–7. */
export function verifyDeviceCertificate(
  token: string,
  user: UserCertificate,
  at: number,
  revocations: RevocationSet | null,
): DeviceCertificate {
  const body = open<DeviceCertificate>(
    c.LABEL_DEVICE_CERTIFICATE,
    token,
    DEVICE_CERTIFICATE,
    c.b64urlDecode(user.identity_key, { length: 32 }),
  );
  checkDeviceBody(body);
  if (body.user_id !== user.user_id || body.org_id !== user.org_id) throw fail("device certificate names another user or organisation");
  if (body.kind === "gateway" && user.account_kind !== "service") throw fail("a gateway device must belong to a service account");
  if (revocations?.entry(body.org_id, "device", body.device_id)) throw fail(`device ${body.device_id} is revoked`, "certificate_revoked");
  if (!(body.issued_at <= at && at < body.not_after)) throw fail("device certificate outside its validity period", "certificate_expired");
  return body;
}

/** Organisation -> user -> device at time `at` (§4.6): the only way to a VerifiedDevice. */
export function verifyChain(
  userCert: string,
  deviceCert: string,
  trustedOrgs: Record<string, Uint8Array>,
  at: number,
  revocations: RevocationSet | null,
): VerifiedDevice {
  const user = verifyUserCertificate(userCert, trustedOrgs, at, revocations);
  const device = verifyDeviceCertificate(deviceCert, user, at, revocations);
  return verified(user, device);
}

export function verifySignedPrekey(token: string, device: VerifiedDevice): SignedPrekey {
  const body = open<SignedPrekey>(c.LABEL_SIGNED_PREKEY, token, SIGNED_PREKEY, device.signingKey);
  if (body.device_id !== device.deviceId) throw fail("signed prekey belongs to another device");
  return body;
}

export function verifyOneTimePrekey(token: string, device: VerifiedDevice): OneTimePrekey {
  const body = open<OneTimePrekey>(c.LABEL_ONE_TIME_PREKEY, token, ONE_TIME_PREKEY, device.signingKey);
  if (body.device_id !== device.deviceId) throw fail("one-time prekey belongs to another device");
  return body;
}

export function verifyRevocationList(token: string, trustedOrgs: Record<string, Uint8Array>): RevocationList {
  let claimed: RevocationList;
  try {
    claimed = validate<RevocationList>(REVOCATION_LIST, c.peekCompact(token, MAX_REVOCATION_LIST_LENGTH), "revocation list");
  } catch (e) {
    if (e instanceof DecodeError) throw fail(`malformed revocation list: ${e.reason}`);
    throw e;
  }
  const key = Object.prototype.hasOwnProperty.call(trustedOrgs, claimed.org_id) ? trustedOrgs[claimed.org_id] : undefined;
  if (!key) throw fail(`organisation ${claimed.org_id} is not trusted`, "certificate_untrusted");
  const body = open<RevocationList>(c.LABEL_REVOCATION_LIST, token, REVOCATION_LIST, key, MAX_REVOCATION_LIST_LENGTH);
  if (body.v !== 1) throw fail(`unsupported revocation list version ${body.v}`);
  return body;
}
