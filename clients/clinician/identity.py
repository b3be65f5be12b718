"""The typed patient identity against the text on the film (docs/HAZARD_LOG.md HAZ-01).

Before ``lightbox send`` seals an image with patient data, the text recognition that looks for
identifiers in the pixels (clients/clinician/phi.py) has read the film's label or the monitor's
corner. When that text names a record number, a birth date or a name, and the identity typed
disagrees with it, the two are shown side by side and the send stops until the clinician
confirms (``--identity-checked``, or "send" at the prompt) or corrects what they typed. OCR is
a safety net: no text read means no comparison, never "confirmed"; the record gateway's check
against the record (clients/gateway/identity.py) follows at filing.

Comparisons are lenient where OCR is noisy and strict where it matters: a record number matches
when the typed one, letters and digits only, equals a number read on the film, either allowed a
label run into it (``MRN12345678``); a birth date matches any reading of a date printed as
day/month or month/day; a name printed as a DICOM Person Name (``DOE^JOHN``; OCR may read the
``^`` as ``*``) matches by family and first given name, any other name when the typed family
name appears among the words read as a name.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
import unicodedata
from collections.abc import Sequence

from clients.clinician.phi import PhiKind, PhiScan, TextRegion
from protocol.body import RecordData

__all__ = ["Disagreement", "compare", "side_by_side"]

_DATE = re.compile(r"(\d{1,4})[/.\-](\d{1,2}|[A-Za-z]{3,9})[/.\-](\d{2,4})")
_MONTHS = {m: i for i, m in enumerate(("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug",
                                       "sep", "oct", "nov", "dec"), start=1)}


@dataclasses.dataclass(frozen=True)
class Disagreement:
    field: str  # "patient id", "birth date", "name"
    typed: str
    on_film: str


def _alnum(text: str) -> str:
    return "".join(c for c in text.upper() if c.isalnum())


def _number_forms(text: str) -> set[str]:
    """A record number as letters and digits, with and without a label run into it."""
    plain = _alnum(text)
    return {plain, re.sub(r"^[A-Z]+(?=\d)", "", plain)}


def _fold(text: str) -> str:
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()


def _year(value: str) -> int:
    year = int(value)
    return year if len(value) == 4 else (1900 + year if year > 30 else 2000 + year)


def _readings(text: str) -> set[dt.date]:
    """Every date ``text`` may print: d/m/y, m/d/y, y-m-d, d-Mon-y."""
    found: set[dt.date] = set()
    for a, b, c in _DATE.findall(text):
        candidates: list[tuple[int, int, int]] = []
        if b.isalpha():
            month = _MONTHS.get(b[:3].lower())
            if month and len(a) <= 2:
                candidates.append((_year(c), month, int(a)))
        elif len(a) == 4:
            candidates.append((int(a), int(b), int(c)))
        else:
            candidates += [(_year(c), int(b), int(a)), (_year(c), int(a), int(b))]
        for y, m, d in candidates:
            try:
                found.add(dt.date(y, m, d))
            except ValueError:
                continue
    return found


def _words(scan: PhiScan, kind: PhiKind) -> list[TextRegion]:
    return [r for r in scan.regions if kind in r.kinds]


def compare(record: RecordData, scan: PhiScan) -> list[Disagreement]:
    """Where the typed identity contradicts the text read on the image (module docstring)."""
    out: list[Disagreement] = []
    numbers = [r.text for r in _words(scan, PhiKind.IDENTIFIER) if any(c.isdigit()
                                                                        for c in r.text)]
    typed = _number_forms(record.patient_id) - {""}
    if numbers and typed and not any(typed & _number_forms(n) for n in numbers):
        out.append(Disagreement("patient id", record.patient_id, " ".join(numbers)))
    if record.birth_date:
        births = [r.text for r in _words(scan, PhiKind.DATE_OF_BIRTH)
                  if any(c.isdigit() for c in r.text)]
        read = set().union(*(_readings(b) for b in births)) if births else set()
        if read and dt.date.fromisoformat(record.birth_date) not in read:
            out.append(Disagreement("birth date", record.birth_date, " ".join(births)))
    name_parts = [_fold(p.strip()) for p in record.patient_name.split("^")[:2]] + ["", ""]
    family, given = name_parts[0], name_parts[1].split(" ")[0]
    names = [r.text for r in _words(scan, PhiKind.NAME)
             if r.text.rstrip(":").lower() not in {"name", "patient", "pt", "surname"}]
    person_names = [n for n in names if re.search(r"\w[\^*]\w", n)]
    if person_names:
        agrees = any(_same_person_name(n, family, given) for n in person_names)
    else:
        agrees = any(family in _fold(re.sub(r"[\^*,]", " ", n)).split() for n in names)
    if family and names and not agrees:
        out.append(Disagreement("name", record.patient_name, " ".join(names)))
    return out


def _same_person_name(printed: str, family: str, given: str) -> bool:
    """A name printed as ``FAMILY^GIVEN`` (or ``FAMILY*GIVEN``) against the typed parts."""
    parts = [_fold(p) for p in re.split(r"[\^*]", printed)[:2]] + ["", ""]
    printed_given = parts[1].split(" ")[0]
    return parts[0] == family and (not given or not printed_given or printed_given == given)


def side_by_side(disagreements: Sequence[Disagreement]) -> list[str]:
    """The lines a clinician reads before confirming or correcting."""
    width = max([len(d.typed) for d in disagreements] + [len("typed")])
    lines = [f"  {'':<11}{'typed':<{width}}   on the image"]
    lines += [f"  {d.field:<11}{d.typed:<{width}}   {d.on_film}" for d in disagreements]
    return lines
