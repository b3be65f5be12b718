"""The free-text guard: identifiers typed into a message that leaves direct care
(docs/CLINICAL_SAFETY.md).

Why: the guidance asks for age ranges rather than exact ages, and no dates of birth, record
numbers or dates of service, wherever information leaves the treating team: an external
consult, teaching, publication, research (:data:`GUARDED_PURPOSES`). Encryption does not help
here: the recipient is allowed to read the text, and a "47-year-old seen on 3 March" is often
enough to re-identify a patient. So before a message is sealed for one of those purposes the
client warns and suggests a rewrite (``a 47-year-old`` -> ``a patient in their 40s``). It warns;
the clinician decides (an external colleague may truly need an exact age).

What it looks for (:func:`scan_text`), each a :class:`TextKind`:

* exact ages: ``47-year-old``, ``47 year old``, ``47 yo``, ``47y/o``, ``aged 47``, ``age: 47``,
  ``47 years old``, ``47M`` / ``47 F`` (age and sex shorthand);
* dates of birth: ``DOB``, ``d.o.b.``, ``date of birth``, ``born on`` followed by a date or not;
* MRN-like numbers: labelled (``MRN``, ``hospital number``, ``NHS no``, ``patient ID``,
  ``accession``) or any run of 6 or more digits (``943 476 5919`` too);
* dates of service: a date after ``admitted / seen / discharged / operated / presented / scanned
  / x-rayed / reviewed / injured / date of service / DOS`` (``on``/``at`` optional), and any
  other full calendar date.

Not flagged: measurements (``47 mm``, ``10 mg``), vital signs (``BP 120/80``), relative times
(``3 days ago``, ``day 2 post-op``), clock times, short numbers (bleeps, beds), and age ranges.
"""

from __future__ import annotations

import dataclasses
import enum
import re
from collections.abc import Iterable
from typing import Final

from clients.sdk.errors import FlowError
from protocol.model import Purpose

__all__ = [
    "GUARDED_PURPOSES",
    "TextFinding",
    "TextGuardWarning",
    "TextKind",
    "age_range",
    "check_text",
    "guard_text",
    "scan_text",
    "suggest_rewrite",
]

GUARDED_PURPOSES: Final = frozenset({Purpose.EXTERNAL_CONSULT, Purpose.TEACHING,
                                     Purpose.PUBLICATION, Purpose.RESEARCH})


class TextKind(enum.StrEnum):
    EXACT_AGE = "exact_age"
    DATE_OF_BIRTH = "date_of_birth"
    MRN = "mrn"
    DATE_OF_SERVICE = "date_of_service"


@dataclasses.dataclass(frozen=True, slots=True)
class TextFinding:
    kind: TextKind
    start: int
    end: int
    text: str
    suggestion: str  # a replacement, or advice when no mechanical rewrite fits


# A full month name, or an abbreviation with its optional dot (only there: the full stop after
# "3 March." ends the sentence, it is not part of the date).
_MONTH = (r"(?:(?:january|february|march|april|may|june|july|august|september|october|"
          r"november|december)|(?:jan|feb|mar|apr|jun|jul|aug|sept?|oct|nov|dec)\.?)")
_DATE = (r"(?:\d{1,2}[/.\-]\d{1,2}[/.\-](?:\d{4}|\d{2})(?!\d)"
         r"|\d{4}-\d{1,2}-\d{1,2}(?!\d)"
         rf"|\d{{1,2}}(?:st|nd|rd|th)?(?: of)? {_MONTH}(?:,? \d{{4}})?(?![a-z])"
         rf"|{_MONTH} \d{{1,2}}(?:st|nd|rd|th)?(?:,? \d{{4}})?(?!\d))")
_AGE_WORDS = r"(?:-| )?(?:years?|yrs?|yr)(?:-| )?old\b"

_RULES: Final[tuple[tuple[TextKind, re.Pattern[str]], ...]] = (
    (TextKind.DATE_OF_BIRTH, re.compile(
        rf"\b(?:d\.?o\.?b\.?|date of birth|birth ?date|born(?: on)?)(?:\s*[:\-]\s*|\s+)"
        rf"(?:{_DATE}|\d{{4}})?", re.IGNORECASE)),
    (TextKind.EXACT_AGE, re.compile(
        rf"\b(?:an? )?(?P<age>\d{{1,3}}){_AGE_WORDS}"
        rf"|\b(?:aged?|age:)\s*(?P<age2>\d{{1,3}})\b(?! ?(?:-|to) ?\d)(?!\s*(?:mm|cm|kg|mg))"
        r"|\b(?P<age3>\d{1,3}) ?(?:yo|y/o|y\.o\.)(?![a-z])"
        r"|\b(?P<age4>\d{1,3}) ?(?:M|F)\b(?! ?(?:/|\d))", re.IGNORECASE)),
    (TextKind.MRN, re.compile(
        r"\b(?:mrn|mr ?no|hosp(?:ital)? ?(?:no|number|#)|nhs(?: ?(?:no|number))?|patient ?id|"
        r"accession(?: ?(?:no|number))?|unit ?(?:no|number)|chi(?: ?no)?)\b\.?\s*[:#]?\s*"
        r"[A-Z0-9][A-Z0-9\-/ ]{2,}[A-Z0-9]"
        r"|(?<![\d.,/])\d{3}[ \-]\d{3}[ \-]\d{4}(?![\d.,/])"
        r"|(?<![\d.,/])\d{6,}(?![\d.,/])", re.IGNORECASE)),
    (TextKind.DATE_OF_SERVICE, re.compile(
        r"\b(?:(?:admitted|seen|discharged|operated|presented|attended|scanned|imaged|"
        r"x-?rayed|reviewed|examined|injured|fell|transferred|date of service|d\.?o\.?s\.?|"
        r"(?:surgery|procedure|visit|operation|injury|admission|scan))\b[^.\n]{0,20}?"
        rf"\b(?:on |at |dated? )?{_DATE}"
        rf"|(?<![\w/.\-]){_DATE})", re.IGNORECASE)),
)
# "47M" shorthand is case-sensitive in practice ("47 m" is usually metres): re-check it.
_SHORTHAND = re.compile(r"\b\d{1,3} ?[MF]\b")


def age_range(age: int) -> str:
    """An age range for an exact age (HIPAA Safe Harbor groups 90 and over, 45 CFR
    164.514(b)(2)(i)(C))."""
    if age < 1:
        return "an infant"
    if age < 13:
        return "a child"
    if age < 20:
        return "a teenager"
    if age >= 90:
        return "a patient aged 90 or over"
    return f"a patient in their {age // 10 * 10}s"


def _suggest(kind: TextKind, match: re.Match[str]) -> str:
    if kind is TextKind.EXACT_AGE:
        age = next(int(v) for v in match.groupdict().values() if v is not None)
        return age_range(age)
    if kind is TextKind.DATE_OF_BIRTH:
        return "(leave out the date of birth; give an age range if it matters)"
    if kind is TextKind.MRN:
        return ("(leave out the record number: patient data for the record travels sealed "
                "with the image, never in the text)")
    return "(give the interval instead, e.g. '3 days ago' or 'day 2 after surgery')"


def scan_text(text: str) -> list[TextFinding]:
    """Every finding in ``text``, in order; overlapping findings keep the first rule's (date of
    birth beats date of service, a labelled MRN beats a bare number)."""
    found: list[TextFinding] = []
    taken: list[tuple[int, int]] = []
    for kind, pattern in _RULES:
        for match in pattern.finditer(text):
            start, end = match.span()
            while end > start and text[end - 1] in " ,;:-":
                end -= 1
            if end <= start:
                continue
            if kind is TextKind.EXACT_AGE and match.group("age4") is not None \
                    and not _SHORTHAND.fullmatch(text[start:end].lstrip("anAN ")):
                continue
            if any(s < end and start < e for s, e in taken):
                continue
            taken.append((start, end))
            found.append(TextFinding(kind, start, end, text[start:end], _suggest(kind, match)))
    return sorted(found, key=lambda f: f.start)


def check_text(text: str, purpose: Purpose) -> list[TextFinding]:
    """Findings that matter for ``purpose``: none for direct care within the organisation."""
    return scan_text(text) if purpose in GUARDED_PURPOSES else []


def suggest_rewrite(text: str, findings: Iterable[TextFinding] | None = None) -> str:
    """``text`` with each exact age replaced by its range (other findings are left for the
    clinician to reword: only they know what the reader needs)."""
    out, at = [], 0
    for f in sorted(scan_text(text) if findings is None else findings, key=lambda f: f.start):
        if f.kind is not TextKind.EXACT_AGE:
            continue
        out += [text[at:f.start], f.suggestion]
        at = f.end
    out.append(text[at:])
    return "".join(out)


class TextGuardWarning(FlowError):
    """The text holds identifiers and the clinician has not confirmed sending it as it is.
    ``findings`` lists them; ``suggestion`` is the text with ages turned into ranges."""

    def __init__(self, message: str, findings: list[TextFinding], suggestion: str) -> None:
        super().__init__(message, code="phi_in_text")
        self.findings = findings
        self.suggestion = suggestion


def guard_text(text: str, purpose: Purpose, *, confirmed: bool = False) -> list[TextFinding]:
    """Call before sealing. Returns the findings when there are none or ``confirmed`` (the
    clinician saw the warning and chose to send as written); otherwise raises
    TextGuardWarning for the client to show."""
    findings = check_text(text, purpose)
    if findings and not confirmed:
        kinds = ", ".join(dict.fromkeys(f.kind.value.replace("_", " ") for f in findings))
        raise TextGuardWarning(
            f"the text holds identifiers ({kinds}) and is for {purpose.value}: reword it "
            "(age ranges, intervals) or confirm sending it as written", findings,
            suggest_rewrite(text, findings))
    return findings
