"""The patient's copy of an image-sharing consent: a one-page PDF (CLINICAL_SAFETY.md).

Why: the guidance asks that the patient be given a copy of what they agreed to (or refused) and
how to withdraw it. The copy states, in plain words: the decision; every use asked about, each
marked agreed, refused or not agreed; who may see the images (named clinicians, roles,
organisations, whether clinicians outside the organisation may, and the medical record); that
images shared electronically are permanent; that refusing does not affect care; the consent
reference (the token id, which the privacy office revokes by); and how to withdraw (the
organisation's privacy contact, the ``LIGHTBOX_PRIVACY_CONTACT`` setting or a parameter).

What it holds about the patient: nothing but what the clinician types for the patient's own copy
(``patient_label``, for example the name, so the patient can tell their papers apart). It is the
patient's document: :func:`save_consent_pdf` writes it on the device with mode 0600, and nothing
here talks to the relay. The record gateway (CLINICAL_SAFETY.md) may render the *record* copy with
the same function (``copy=FormCopy.RECORD``, ``patient_label`` from the sealed record data) and
file it with :func:`clients.gateway.dicom.build_encapsulated_pdf`.

Rendering uses fpdf2 with DejaVu Sans (Debian ``fonts-dejavu-core``) when present so any name
prints; otherwise the PDF core font Helvetica with characters outside Latin-1 replaced. The
layout shrinks its type until the text fits one A4 page.

Exceptions::

    ConsentPdfError     the consent cannot be found or read (``reason``: plain words)
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Final

from protocol.consent import ConsentClaims, ConsentDecision, peek_consent_token_unverified
from protocol.errors import ProtocolError
from protocol.model import Purpose

__all__ = [
    "PRIVACY_CONTACT_ENV",
    "Attachment",
    "ConsentFormDisplay",
    "ConsentPdfError",
    "FormCopy",
    "consent_form_lines",
    "font_path",
    "load_consent_token",
    "patient_label",
    "render_consent_pdf",
    "save_consent_pdf",
]

PRIVACY_CONTACT_ENV: Final = "LIGHTBOX_PRIVACY_CONTACT"
ORGANISATION_NAME_ENV: Final = "LIGHTBOX_ORGANISATION_NAME"
DEFAULT_PRIVACY_CONTACT: Final = "the hospital's privacy office (ask any member of staff)"
MAX_LISTED: Final = 8  # names per recipient kind before "and N more" (keeps one page)
_FONT_DIRS: Final = ("/usr/share/fonts/truetype/dejavu", "/usr/share/fonts/dejavu",
                     "/usr/local/share/fonts")

PERMANENT_STATEMENT: Final = (
    "Images shared electronically are permanent. Once sent, copies cannot be fully recalled, "
    "and images filed in your medical record are kept there like any other part of your record.")
NO_EFFECT_STATEMENT: Final = (
    "Refusing, or withdrawing later, does not affect your care in any way.")

_PURPOSE_WORDS: Final[dict[Purpose, str]] = {
    Purpose.DIRECT_CARE: "Your care: sharing with the clinicians treating you",
    Purpose.EXTERNAL_CONSULT: "A specialist opinion from clinicians outside {org}",
    Purpose.TEACHING: "Teaching healthcare staff and students (identifying details removed)",
    Purpose.PUBLICATION: "Publication in a medical journal or book (identifying details "
                         "removed)",
    Purpose.RESEARCH: "Medical research (identifying details removed)",
}


class ConsentPdfError(Exception):
    """The consent cannot be turned into a PDF. ``reason`` is a sentence for the user."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class FormCopy(enum.StrEnum):
    PATIENT = "patient"  # given to the patient (stays on the device, never sent to the relay)
    RECORD = "record"  # filed by the record gateway as DICOM Encapsulated PDF


@dataclasses.dataclass(frozen=True, slots=True)
class ConsentFormDisplay:
    """What the form shows beyond the claims. ``None`` settings come from the environment
    (``LIGHTBOX_ORGANISATION_NAME``, ``LIGHTBOX_PRIVACY_CONTACT``). ``user_names`` maps
    recipient user ids to display names (from the verified directory), ``org_names`` org ids
    to names; ``patient_label`` is whatever the clinician types for the patient's own copy."""

    organisation_name: str | None = None
    privacy_contact: str | None = None
    patient_label: str = ""
    clinician_name: str = ""
    user_names: Mapping[str, str] = dataclasses.field(default_factory=dict)
    org_names: Mapping[str, str] = dataclasses.field(default_factory=dict)
    withdrawn_at: int | None = None  # the consent was withdrawn then (seconds since epoch)

    def organisation(self, claims: ConsentClaims) -> str:
        name = self.organisation_name or os.environ.get(ORGANISATION_NAME_ENV, "").strip()
        return name or self.org_names.get(claims.org, claims.org)

    def contact(self) -> str:
        contact = self.privacy_contact or os.environ.get(PRIVACY_CONTACT_ENV, "").strip()
        return contact or DEFAULT_PRIVACY_CONTACT


def patient_label(patient_name: str) -> str:
    """A DICOM person name (``Family^Given^Middle^Prefix^Suffix``) as the form shows it."""
    family, _, rest = patient_name.partition("^")
    given = " ".join(p for p in rest.split("^")[:2] if p)
    return f"{family}, {given}" if family and given else (family or given)


def _date(ts: int) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%d %B %Y")


def _listed(items: Sequence[str]) -> str:
    shown = list(items[:MAX_LISTED])
    if len(items) > MAX_LISTED:
        shown.append(f"and {len(items) - MAX_LISTED} more")
    return ", ".join(shown)


def consent_form_lines(claims: ConsentClaims, display: ConsentFormDisplay,
                       copy: FormCopy = FormCopy.PATIENT) -> list[tuple[str, str]]:
    """The form as ``(style, text)`` lines; style is ``title``, ``heading`` or ``text``.
    Separate from rendering so the wording is testable and reusable (the desktop can show it)."""
    org = display.organisation(claims)
    agreed = claims.decision is ConsentDecision.AGREED
    scope = claims.recipients
    lines: list[tuple[str, str]] = [
        ("title", "Consent to share clinical images"),
        ("text", f"{org} - {'your copy' if copy is FormCopy.PATIENT else 'copy for the record'}"),
    ]
    if display.patient_label:
        lines.append(("text", f"Patient: {display.patient_label}"))
    by = f" by {display.clinician_name}" if display.clinician_name else ""
    lines.append(("text", f"Recorded on {_date(claims.iat)}{by}."))
    lines.append(("text", f"Consent reference: {claims.jti}"))

    lines.append(("heading", "Your decision"))
    count = len(claims.images)
    images = f"{count} image{'s' if count != 1 else ''}"
    if agreed:
        lines.append(("text", f"You AGREED to share the {images} you were shown, for the uses "
                              "marked 'agreed' below, until "
                              f"{_date(claims.exp)} unless you withdraw sooner."))
    else:
        lines.append(("text", f"You REFUSED to share the {images} you were shown. Your refusal "
                              "is recorded; the images will not be shared for the uses below."))
    if display.withdrawn_at is not None:
        lines.append(("text", f"You WITHDREW this consent on {_date(display.withdrawn_at)}: "
                              "nothing more is shared under it."))

    lines.append(("heading", "Uses"))
    for purpose in Purpose:
        words = _PURPOSE_WORDS[purpose].format(org=org)
        if purpose in claims.purposes:
            mark = "agreed" if agreed else "refused"
        else:
            mark = "not agreed (not asked)"
        lines.append(("text", f"- {words}: {mark}"))

    lines.append(("heading", "Who may see the images"))
    if not agreed:
        lines.append(("text", "Nobody: you refused. (The clinician who asked you already saw "
                              "them.)"))
    else:
        who: list[str] = []
        if scope.users:
            # By name only: an id means nothing to a patient. Someone this device could not
            # name (no longer in the directory) is counted, not shown as an id.
            named = [display.user_names[u] for u in scope.users if u in display.user_names]
            unnamed = len(scope.users) - len(named)
            if unnamed:
                named.append(f"{unnamed} other clinician{'s' if unnamed > 1 else ''} named by "
                             "your clinician (ask them who)")
            who.append("Named clinicians: " + _listed(named))
        if scope.roles:
            who.append("Clinicians in these roles at " + org + ": "
                       + _listed([r.replace("_", " ") for r in scope.roles]))
        if scope.orgs:
            who.append("Clinicians at: " + _listed(
                [display.org_names.get(o, o) for o in scope.orgs]))
        for line in who:
            lines.append(("text", "- " + line))
        outside = "yes" if scope.external else "no"
        lines.append(("text", f"- Clinicians outside {org}: {outside}"))
        if {Purpose.DIRECT_CARE, Purpose.EXTERNAL_CONSULT} & set(claims.purposes):
            lines.append(("text", "- Your medical record: the images are filed in it"))

    lines.append(("heading", "Please know"))
    lines.append(("text", PERMANENT_STATEMENT))
    lines.append(("text", NO_EFFECT_STATEMENT))

    lines.append(("heading", "How to withdraw"))
    if agreed:
        lines.append(("text", f"You can withdraw this consent at any time. Contact "
                              f"{display.contact()} and quote the consent reference "
                              f"{claims.jti}. Nothing more is shared after you withdraw, and "
                              "copies on clinicians' devices are deleted; images already "
                              "filed in your record stay there."))
    else:
        lines.append(("text", f"If you change your mind, tell your clinician or contact "
                              f"{display.contact()}, quoting the consent reference "
                              f"{claims.jti}."))
    lines.append(("text", f"Form version {claims.form_version}. This consent is only about "
                          "sharing images; it is separate from your consent to treatment."))
    return lines


def font_path(name: str) -> Path | None:
    """The font file ``name`` from the usual folders (Debian's fonts-dejavu-core), if any."""
    for directory in _FONT_DIRS:
        path = Path(directory) / name
        if path.is_file():
            return path
    return None


@dataclasses.dataclass(frozen=True, slots=True)
class Attachment:
    """A file embedded in the PDF (ISO 32000-1 §7.11.4 embedded file streams), such as the
    record copy's machine-readable consent: the signed token and the FHIR Consent."""

    name: str
    data: bytes = dataclasses.field(repr=False)
    media_type: str
    description: str


def render_consent_pdf(claims: ConsentClaims, display: ConsentFormDisplay | None = None, *,
                       copy: FormCopy = FormCopy.PATIENT,
                       attachments: Sequence[Attachment] = ()) -> bytes:
    """The one-page consent form as PDF bytes (deterministic for equal input), with
    ``attachments`` embedded (their dates are the consent's, for determinism)."""
    from fpdf import FPDF  # a client-only dependency; imported where it is used

    display = display or ConsentFormDisplay()
    issued = dt.datetime.fromtimestamp(claims.iat, dt.UTC)
    lines = consent_form_lines(claims, display, copy)
    regular, bold = font_path("DejaVuSans.ttf"), font_path("DejaVuSans-Bold.ttf")
    for size in (11.0, 10.0, 9.0, 8.0, 7.0):
        pdf = FPDF(format="A4")
        pdf.set_creation_date(issued)
        for a in attachments:
            pdf.embed_file(bytes=a.data, basename=a.name, mime_type=a.media_type,
                           desc=a.description, creation_date=issued, modification_date=issued,
                           compress=True)
        pdf.set_title("Consent to share clinical images")
        pdf.set_auto_page_break(True, margin=15)
        pdf.set_margins(18, 15, 18)
        if regular is not None and bold is not None:
            pdf.add_font("Body", "", str(regular))
            pdf.add_font("Body", "B", str(bold))
            family = "Body"

            def clean(text: str) -> str:
                return text
        else:
            family = "Helvetica"

            def clean(text: str) -> str:
                return text.encode("latin-1", "replace").decode("latin-1")
        pdf.add_page()
        for style, text in lines:
            if style == "title":
                pdf.set_font(family, "B", size + 5)
                pdf.multi_cell(0, (size + 5) * 0.55, clean(text), new_x="LMARGIN",
                               new_y="NEXT", align="L")
                pdf.ln(1)
            elif style == "heading":
                pdf.ln(size * 0.3)
                pdf.set_font(family, "B", size + 1)
                pdf.multi_cell(0, (size + 1) * 0.5, clean(text), new_x="LMARGIN",
                               new_y="NEXT", align="L")
            else:
                pdf.set_font(family, "", size)
                pdf.multi_cell(0, size * 0.5, clean(text), new_x="LMARGIN", new_y="NEXT",
                               align="L")
        if pdf.page_no() == 1:
            return bytes(pdf.output())
    raise ConsentPdfError("the consent form does not fit on one page")  # pragma: no cover


def load_consent_token(path: Path | str) -> tuple[str, ConsentClaims]:
    """Read a token file (``lightbox consent capture --token-out``) and decode its claims.

    The claims are decoded, not verified: the patient's copy shows what the clinician recorded
    on this device; the relay and the recipients verify the signature. Raises ConsentPdfError
    with a plain sentence when there is no such consent or the file is not a consent token.
    """
    p = Path(path)
    try:
        token = p.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise ConsentPdfError(
            f"there is no consent at {p}: capture it first with `lightbox consent capture "
            "--token-out FILE` (or pass --pdf FILE to capture)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConsentPdfError(f"cannot read the consent at {p}: {exc}") from None
    if not token:
        raise ConsentPdfError(f"{p} is empty: it holds no consent")
    try:
        return token, peek_consent_token_unverified(token)
    except ProtocolError:
        raise ConsentPdfError(f"{p} does not hold a Lightbox consent token") from None


def save_consent_pdf(path: Path | str, pdf: bytes) -> Path:
    """Write the patient's copy with mode 0600 (it may name the patient); returns the path."""
    p = Path(path)
    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pdf)
    return p
