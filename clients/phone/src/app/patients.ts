/**
 * Whether two images' record data name one patient: the rule every Python client uses
 * (clients/sdk/patients.py, whose module docstring states it), ported as it is, so the phone
 * refuses a photo added to a consult exactly where `lightbox send --thread T --image` does
 * (docs/HAZARD_LOG.md HAZ-01 C6, a wrong patient). tests/phone/test_phone_patient_rule.py holds
 * the two to one table.
 *
 * The rule, in short: the hospital numbers equal once folded (case ignored, only letters and
 * digits kept); where both records give an issuer, the issuers equal folded alike; where both
 * give a birth date, the dates equal; where both give a name, the names equal as DICOM person
 * names (PS3.5 §6.2.1, PN: components split at `^` or `,`, spaces collapsed, case ignored, empty
 * trailing components dropped). It is not transitive when a record leaves a field out, so a
 * photo is one patient with a consult only when it is with every record the consult holds.
 */
import type { RecordData } from "../protocol/body.js";

/** What a consult keeps of a record its photos gave (views.ts ThreadRecord): the fields the
 * rule reads. A consult kept by an older version of the app has only `name` and `id`: the
 * issuer and birth date are then not given, as in a record without them. */
export interface KnownPatient {
  name: string;
  id: string;
  issuer?: string;
  birth_date?: string | null;
}

/** The part of a consult's record that names its patients (views.ts ThreadRecord). */
export interface PatientsKept {
  patient?: KnownPatient | null;
  patients?: KnownPatient[];
}

/** What the rule reads of a record data. */
export function patientOf(record: RecordData): KnownPatient {
  return { name: record.patient_name, id: record.patient_id, issuer: record.issuer_of_patient_id ?? "", birth_date: record.birth_date ?? null };
}

/** Python's `str.casefold` on one character (full case folding, Unicode CaseFolding.txt C+F):
 * upper then lower case gives it (ß → SS → ss, ς → Σ → σ), but for the dotless ı, which
 * folding keeps apart from i and upper casing would merge with it. */
function foldChar(c: string): string {
  return c === "ı" ? c : c.toUpperCase().toLowerCase();
}

const casefold = (value: string): string => Array.from(value, foldChar).join("");

/** Python's `str.isalnum` on one folded character: a letter or a number. */
const ALNUM = /^[\p{L}\p{N}]$/u;

/** A hospital number or issuer as compared: case folded, only its letters and digits. */
function fold(value: string | null | undefined): string {
  return Array.from(casefold(value ?? "")).filter((c) => ALNUM.test(c)).join("");
}

/** The whitespace Python's `str.split()` splits at (`str.isspace`), which JavaScript's `\s`
 * is not quite (it lacks U+001C to U+001F and U+0085, and adds U+FEFF). */
const SPACES = /[\t\n\v\f\r\x1c-\x1f \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]+/;

/** A DICOM person name (PS3.5 §6.2.1, PN) as compared: `Poe^Edgar`, `POE, Edgar` and
 * `poe ^ edgar` are one name. */
function nameParts(name: string): string[] {
  const parts = name.split(/[\^,]/).map((p) => casefold(p.split(SPACES).filter((w) => w).join(" ")));
  while (parts.length && !parts[parts.length - 1]) parts.pop();
  return parts;
}

/** Whether two values of one field tell two records apart: both given and unequal. */
function differ(a: string, b: string): boolean {
  return a !== "" && b !== "" && a !== b;
}

/** Whether two records name one patient (the rule: this module's comment). */
export function samePatient(a: KnownPatient, b: KnownPatient): boolean {
  return fold(a.id) === fold(b.id)
    && !differ(fold(a.issuer), fold(b.issuer))
    && !differ(a.birth_date ?? "", b.birth_date ?? "")
    && !differ(nameParts(a.name).join("^"), nameParts(b.name).join("^"));
}

/** Every record a consult's photos gave, oldest first (a consult kept by an older version of
 * the app kept its first only). */
export function patientsKept(kept: PatientsKept): KnownPatient[] {
  return kept.patients ?? (kept.patient ? [kept.patient] : []);
}

const written = (p: KnownPatient): string => JSON.stringify([p.name, p.id, p.issuer ?? "", p.birth_date ?? null]);

/** A record a photo of the consult gave (sent or received), kept with its others (each
 * written once); the first with a hospital number is the consult's patient, whose fields a
 * photo added to the consult is given. */
export function learnPatient(kept: PatientsKept, record: RecordData | null): void {
  if (!record) return;
  const learnt = patientOf(record);
  const known = patientsKept(kept);
  if (!known.some((p) => written(p) === written(learnt))) kept.patients = [...known, learnt];
  if (!kept.patient && record.patient_id.trim()) kept.patient = learnt;
}

/** The consult's record a photo's names another patient than, the latest such (as
 * clients/clinician/sending.py `consult_patient` names it), or null: the photo is of the
 * consult's patient by every record the consult holds. */
export function otherPatient(kept: PatientsKept, record: RecordData): KnownPatient | null {
  const photo = patientOf(record);
  return patientsKept(kept).slice().reverse().find((p) => !samePatient(p, photo)) ?? null;
}
