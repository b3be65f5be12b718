"""The wrong-patient check at the record gateway (docs/HAZARD_LOG.md HAZ-01): before an image is
filed, the identity the clinician typed (sealed record data: Patient ID and issuer, name, birth
date) is compared with what the record already says of that Patient ID: the PACS's studies
(QIDO-RS, PS3.18 §10.6: PatientName and PatientBirthDate of each study) and, where a FHIR
server is configured, its ``Patient`` resources (``Patient?identifier=``, FHIR R4
search.html#token).

The verdict **holds** the filing (nothing is stored, nothing expires before the hard limit)
when no source knows the Patient ID, when no name the record holds for it matches the typed
name, or when the typed birth date is not one the record holds. The sentence told to the thread
names which field disagrees, never the record's value: the ID may belong to another patient,
whose name the specialist has no business reading.

Names compare as DICOM Person Names (PS3.5 §6.2.1.1: ``Family^Given^Middle^Prefix^Suffix``):
family and first given name, case, accents and spacing ignored; a typed name without a given
name compares by family name only. FHIR ``HumanName`` (family, given[0]) reads the same way.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import unicodedata
from collections.abc import Mapping, Sequence
from typing import Any

from protocol.body import RecordData

__all__ = ["Known", "Verdict", "from_fhir_patient", "judge", "same_name"]


@dataclasses.dataclass(frozen=True)
class Known:
    """What one source of the record says of the Patient ID."""

    source: str  # "PACS" or "FHIR"
    name: str | None  # DICOM PN form
    birth_date: dt.date | None


@dataclasses.dataclass(frozen=True)
class Verdict:
    code: str  # patient_confirmed, patient_unknown, patient_name_differs, patient_birth_date...
    reason: str  # for the thread (sealed): names the field, not the record's value

    @property
    def holds(self) -> bool:
        return self.code != "patient_confirmed"


def _fold(part: str) -> str:
    decomposed = unicodedata.normalize("NFKD", part)
    letters = "".join(c for c in decomposed if not unicodedata.combining(c))
    return " ".join(letters.replace("-", " ").split()).casefold()


def _parts(pn: str) -> tuple[str, str]:
    pieces = [*pn.split("=")[0].split("^"), "", ""][:2]  # the alphabetic group only
    given = _fold(pieces[1]).split(" ")[0] if pieces[1] else ""
    return _fold(pieces[0]), given


def same_name(typed: str, recorded: str) -> bool:
    """Whether a typed DICOM PN names the same person as a recorded one (module docstring)."""
    family, given = _parts(typed)
    r_family, r_given = _parts(recorded)
    if not family or family != r_family:
        return False
    return not given or not r_given or given == r_given


def from_fhir_patient(resource: Mapping[str, Any]) -> list[Known]:
    """A FHIR R4 Patient as :class:`Known` entries, one per HumanName (at least one)."""
    birth: dt.date | None = None
    raw = resource.get("birthDate")
    if isinstance(raw, str) and len(raw) == 10:
        try:
            birth = dt.date.fromisoformat(raw)
        except ValueError:
            birth = None
    names = []
    for n in resource.get("name") or []:
        if not isinstance(n, dict):
            continue
        given = n.get("given") or []
        first = given[0] if isinstance(given, list) and given else ""
        if isinstance(n.get("family"), str):
            names.append(f"{n['family']}^{first}")
    return [Known("FHIR", name, birth) for name in names] or [Known("FHIR", None, birth)]


def judge(record: RecordData, known: Sequence[Known]) -> Verdict:
    """Hold or confirm the typed identity against what the record says (module docstring)."""
    if not known:
        return Verdict("patient_unknown", f"the record does not know the patient ID "
                       f"{record.patient_id!r}: it may be mistyped")
    names = [k.name for k in known if k.name]
    if record.patient_name and names and not any(
            same_name(record.patient_name, n) for n in names):
        where = " and ".join(sorted({k.source for k in known if k.name}))
        return Verdict("patient_name_differs", f"the name typed is not the name the record "
                       f"({where}) holds for patient ID {record.patient_id!r}")
    births = {k.birth_date for k in known if k.birth_date is not None}
    if record.birth_date and births and dt.date.fromisoformat(record.birth_date) not in births:
        where = " and ".join(sorted({k.source for k in known if k.birth_date}))
        return Verdict("patient_birth_date_differs", f"the birth date typed is not the one the "
                       f"record ({where}) holds for patient ID {record.patient_id!r}")
    return Verdict("patient_confirmed", "the record knows this patient by the name and birth "
                   "date typed")
