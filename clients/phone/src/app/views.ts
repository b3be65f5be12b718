/** What the worker tells the page about threads and messages (never a key, never an image). */
import type { KnownPatient } from "./patients.js";

export interface MessageView {
  message_id: string;
  thread_id: string;
  from_user_id: string;
  from_name: string;
  mine: boolean;
  text: string;
  subject: string | null;
  /** For one of ours once sealed, the time in its signed header: when it was sent, as every
   * participant sees it; before, when it was written. */
  sent_at: number;
  /** One of ours sealed more than a minute after it was written (kept on the phone while the
   * relay could not take it): when it was written. */
  written_at?: number | null;
  status: "sending" | "sent" | "received" | "not_sent";
  /** Why one of ours is not sent (refused for good by the relay), and what to do, in words;
   * or, while it is sending, why it is kept on the phone (written while the relay could not be
   * reached). */
  status_note?: string | null;
  /** A kept photo the relay refused once back: it is still on this phone (sealed in the vault)
   * to send again from the consent screen. */
  kept_photo?: boolean;
  /** A received message: its place in the thread, and whether the intern has seen it (a
   * signed `read` receipt went to the sender then). */
  thread_seq?: number;
  read?: boolean;
  /** The photo this message carries: `image:<id>` in the vault until its expiry order. */
  attachment_id?: string | null;
  image_state?: "held" | "expired" | "fetching" | "refused" | "failed" | "withdrawn" | null;
  /** When the patient's consent for this message was withdrawn (the relay's time), and why a
   * message was withdrawn before delivery (`consent_revoked`, `sender_revoked`). */
  withdrawn_at?: number | null;
  withdrawn_reason?: string | null;
  /** Why a received photo is not shown (refused by its consent check, or not downloaded yet). */
  image_note?: string | null;
  quality_warnings?: string[];
  /** Signed receipts from recipients' devices, verified (PROTOCOL §8, §16.6). */
  receipts?: { kind: "delivered" | "read" | "acknowledged"; name: string; at: number }[];
  /** Where the record gateway filed the photo (its sealed filing receipt, PROTOCOL §15), and
   * when this phone's copy expires (the relay's filed notice). */
  filed?: { study_instance_uid: string | null; record_ref: string | null; expires_at: number | null } | null;
  /** A consult handed over at a shift change (PROTOCOL §16.4): `from_*` and `sent_at` are
   * then its author and time as its sealed body names them; this says whose device sealed it
   * again and when, and whether the phone could check the author and time (against the
   * original it holds, or the author's own device resealed it) or the original it holds says
   * otherwise (`contradicted`): of the author and time (`misclaimed`), of the content
   * (`altered`: not the author's words, HAZ-02 C20), or both. */
  handover?: { resealed_by: string; resealed_at: number; confirmed: boolean; contradicted: boolean; misclaimed?: boolean; altered?: boolean; by_author: boolean } | null;
  /** A handed-over copy: the original's message id its sealed body names (PROTOCOL §14). */
  handover_of_id?: string;
  /** Another copy of a consult listed once (PROTOCOL §16.4): the message id of the copy shown,
   * which says whose devices also handed it over. Kept for its receipts, not listed. */
  copy_of?: string;
  /** The device that sent a received message (checked against a handed-over copy's claim). */
  from_device_id?: string;
  /** To the sender: each person who never received this message's photo on any device before
   * its copies expired (PROTOCOL §15 "Never received"), `consult` as the phone names it. */
  not_received?: { user_id: string; name: string; consult: string; reason: string; record_ref: string | null; at: number }[];
  /** The on-call escalation of this consult, step by step (PROTOCOL §16.3). */
  escalation?: { step: number; kind: "renotify" | "released" | "handover" | "no_shift"; level: number; name: string; at: number; next_shift_at?: number | null }[];
}

export interface ThreadRecord {
  thread_id: string;
  role: string | null;
  subject: string | null;
  priority: string;
  messages: MessageView[];
  /** This user's thread with the record gateways (a refusal filed there): nothing is written
   * in it by hand, so it offers no reply and no photo. */
  record?: boolean;
  /** Who is in the consult (its roles, its members but this user, their names), as the relay
   * said when this phone last asked (worker.ts audience): what a photo added to it while the
   * relay cannot be reached is consented for. */
  audience?: { roles: string[]; users: string[]; names: string[] } | null;
  /** The patient this consult is about: the record data of the first photo this phone sent or
   * received in it, whose fields a photo added to the consult is given (HAZ-01). */
  patient?: KnownPatient | null;
  /** The record data of every photo this phone sent or received in it, each written once: a
   * photo added to the consult must name the same patient as each (patients.ts). Kept since
   * the phone judges by the rule of clients/sdk/patients.py; a consult kept before has
   * `patient` only. */
  patients?: KnownPatient[];
}

