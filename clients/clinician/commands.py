"""The clinician's messaging commands of ``lightbox`` (ARCHITECTURE.md §3), on the SDK client:

    lightbox threads                                   my consult threads, urgent first
    lightbox send --to role:orthopaedics_oncall [--to user:LOGIN] [--urgent] "text"
                  [--image FILE [--send-anyway]] [--purpose P] [--thread ID]
                  [--patient-name 'Doe^Jane' --patient-id MRN ...]   (sealed body only)
                  [--consent-token FILE | --patient-agreed --statements-shown]
                  [--necessity TEXT] [--redact identifiers|all-text] [--redact-box X,Y,W,H]
                  [--text-checked]                   (see docs/CLINICAL_SAFETY.md)
                  [--emergency REASON [--emergency-category C]]   break-glass, no consent
    lightbox correct-patient THREAD MESSAGE --patient-id ID [--patient-name N] [--birth-date D]
                                                       send a held image again, identity fixed
    lightbox break-glass [follow-up CASE (--consent-token FILE | --no-consent WHY --reason T)]
                                                       emergencies awaiting their follow-up
    lightbox inbox [--mark-read]                       what arrived (stored in the vault)
    lightbox ack MESSAGE_ID                            "I'm on it": stops the escalation
    lightbox outbox [--drop ID]                        sends not yet stored by the relay
    lightbox watch [--count N] [--timeout S]           print consults as they arrive
    lightbox desktop                                   the specialist's desktop client

A profile holds the key store (``keystore.lbx``) and the vault (``vault.db``, messages and
images) side by side, both unlocked with the account password. Patient data flags go only
into the sealed body (protocol/body.py), never into anything the relay can read.

Every failure a user can cause ends with one plain sentence and a non-zero exit status, and
nothing the relay accepted is lost: a message counts as sent only once the relay stored it.
"""

from __future__ import annotations

import argparse
from typing import Any

from clients.clinician.reading import (
    ack_command,
    inbox_command,
    outbox_command,
    threads_command,
    watch_command,
)
from clients.clinician.sending import (
    break_glass_command,
    correct_patient_command,
    send_command,
)
from clients.clinician.shell import (
    guarded,
    profile_dir,
    unlock_profile,
)
from protocol import api
from protocol.model import EmergencyCategory, Purpose

__all__ = ["register", "unlock_profile"]


# --- desktop -----------------------------------------------------------------------------------


def _desktop(args: argparse.Namespace) -> int:
    from clients.desktop.app import run_desktop

    return run_desktop(profile_dir(args), open_browser=not args.no_browser)


# --- registration ------------------------------------------------------------------------------


def add_patient_options(g: Any) -> None:
    """The patient data options read by :func:`record_from_args` (``send``, ``consent
    capture``)."""
    g.add_argument("--patient-name", metavar="FAMILY^GIVEN")
    g.add_argument("--patient-id", metavar="MRN")
    g.add_argument("--issuer", metavar="ISSUER", help="who assigned the patient id")
    g.add_argument("--birth-date", metavar="YYYY-MM-DD")
    g.add_argument("--sex", choices=["M", "F", "O"])
    g.add_argument("--accession", metavar="NUMBER")
    g.add_argument("--region", metavar="REGION", help="anatomic region, e.g. wrist")


def register(sub: Any) -> None:
    """Add the commands to ``lightbox``'s subparsers (called once from clients/clinician/cli.py)."""
    t = sub.add_parser("threads", help="your consult threads, urgent first")
    t.add_argument("--timeout", type=float, default=30.0, help=argparse.SUPPRESS)
    t.set_defaults(func=guarded(threads_command))
    s = sub.add_parser("send", help="send a consult: text and/or an image, to a user or a role")
    s.add_argument("text", nargs="*", help="the message")
    s.add_argument("--to", action="append", metavar="user:LOGIN|role:ROLE",
                   help="a colleague by their exact login (or whole name), or a role")
    s.add_argument("--thread", metavar="ID",
                   help="an existing thread instead of a new one: its id, or its first 8 "
                        "characters or more; a photo added to it is of its patient")
    s.add_argument("--subject", help="the thread's subject line (never the patient's names "
                                     "or number: it is shown wherever the consult is listed)")
    s.add_argument("--image", metavar="FILE", help="a photo (metadata is stripped first)")
    s.add_argument("--send-anyway", action="store_true",
                   help="send even if the quality checks warn")
    s.add_argument("--purpose", choices=[p.value for p in Purpose],
                   default=Purpose.DIRECT_CARE.value)
    s.add_argument("--urgent", action="store_true")
    add_patient_options(s.add_argument_group(
        "patient data for the record (sealed; only with --image)"))
    c = s.add_argument_group("consent")
    c.add_argument("--consent-token", metavar="FILE", help="from `lightbox consent capture` "
                   "(also names the consent a text outside direct care is sent under)")
    c.add_argument("--patient-agreed", action="store_true")
    c.add_argument("--statements-shown", action="store_true")
    c.add_argument("--file-wait", type=float, default=30.0, metavar="SECONDS",
                   help="a patient who refuses at the prompt: how long to wait for the record "
                        "gateway's receipt of the refusal")
    x = s.add_argument_group("clinical safety (CLINICAL_SAFETY.md; docs/CLINICAL_SAFETY.md)")
    x.add_argument("--necessity", metavar="TEXT", help="the clinical necessity of consulting "
                   "outside your organisation (sealed; required for external recipients)")
    x.add_argument("--redact", choices=["none", "identifiers", "all-text"], default="none",
                   help="black out text found in the image (all-text is required for "
                        "teaching, publication and research when the image shows text)")
    x.add_argument("--redact-box", action="append", metavar="X,Y,W,H",
                   help="also black out this box (pixels of the upright image)")
    x.add_argument("--text-checked", action="store_true",
                   help="send the text as written despite the identifier warnings")
    x.add_argument("--identity-checked", action="store_true",
                   help="send the patient data as typed although the text on the image "
                   "reads otherwise (shown side by side first)")
    e = s.add_argument_group("break-glass: an emergency where no consent can be asked "
                             "(docs/PROTOCOL.md §17)")
    e.add_argument("--emergency", metavar="REASON", help="send without consent, saying why "
                   "(sealed; the relay sees only the category); colleagues of your "
                   "organisation only, for direct care; reviewed by the privacy office")
    e.add_argument("--emergency-category", choices=[c.value for c in EmergencyCategory],
                   default=EmergencyCategory.OTHER.value)
    s.set_defaults(func=guarded(send_command))
    cp = sub.add_parser("correct-patient", help="the record gateway held an image: send it "
                        "again with the patient's identity corrected")
    cp.add_argument("thread", metavar="THREAD")
    cp.add_argument("message", metavar="MESSAGE", help="the held message (the gateway's "
                    "message names it)")
    cp.add_argument("--patient-id", required=True, metavar="MRN")
    cp.add_argument("--patient-name", metavar="FAMILY^GIVEN")
    cp.add_argument("--birth-date", metavar="YYYY-MM-DD")
    cp.add_argument("--issuer", metavar="ISSUER")
    cp.add_argument("--timeout", type=float, default=30.0, help=argparse.SUPPRESS)
    cp.set_defaults(func=guarded(correct_patient_command))
    b = sub.add_parser("break-glass", help="emergency messages sent without consent that "
                       "await a follow-up; file one")
    b.add_argument("action", nargs="?", choices=["list", "follow-up"], default="list")
    b.add_argument("case", nargs="?", metavar="CASE")
    how = b.add_mutually_exclusive_group()
    how.add_argument("--consent-token", metavar="FILE",
                     help="the consent sought afterwards (lightbox consent capture --out)")
    how.add_argument("--no-consent", choices=list(api.NO_CONSENT_REASONS),
                     help="why no consent was possible")
    b.add_argument("--reason", metavar="TEXT", help="with --no-consent: in a sentence "
                   "(sealed into the thread)")
    b.set_defaults(func=guarded(break_glass_command))
    i = sub.add_parser("inbox", help="messages that arrived (stored in your vault)")
    i.add_argument("--mark-read", action="store_true")
    i.add_argument("--timeout", type=float, default=30.0, help=argparse.SUPPRESS)
    i.set_defaults(func=guarded(inbox_command))
    a = sub.add_parser("ack", help="\"I'm on it\": tell the sender you are dealing with a "
                       "consult (on call, this stops its escalation)")
    a.add_argument("message", metavar="MESSAGE_ID", help="the id `inbox` and `watch` show "
                   "under the consult, after \"lightbox ack\"")
    a.add_argument("--timeout", type=float, default=30.0, help=argparse.SUPPRESS)
    a.set_defaults(func=guarded(ack_command))
    o = sub.add_parser("outbox", help="messages not yet stored by the relay (sent again on the "
                       "next start)")
    o.add_argument("--drop", metavar="ID", help="remove this message from the outbox: it is "
                   "not sent (one that cannot be read, or that should not go)")
    o.set_defaults(func=guarded(outbox_command))
    w = sub.add_parser("watch", help="print consults as they arrive")
    w.add_argument("--count", type=int, help="stop after this many messages")
    w.add_argument("--timeout", type=float, help="stop after this many seconds")
    w.set_defaults(func=guarded(watch_command))
    d = sub.add_parser("desktop", help="the specialist's desktop client, in your browser")
    d.add_argument("--no-browser", action="store_true", help="print the address only")
    d.set_defaults(func=guarded(_desktop))

