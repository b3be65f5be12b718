"""Whether two images' record data name one patient, and how a patient is named in a sentence:
the one rule every Python client uses (docs/HAZARD_LOG.md HAZ-01 C6, a wrong patient).
``lightbox send --thread T --image`` refuses a photo of another patient than the consult's
(``patient_mismatch``, clients/clinician/sending.py) and the desktop shows its red warning over
a consult holding two patients' images (clients/desktop/app.py ``patients_warning``), both by
:func:`same_patient`, so the two cannot judge one consult differently.

The rule. Two records (protocol/body.py ``RecordData``) name the same patient when

* their hospital numbers are equal once folded: case ignored and separators dropped (anything
  but a letter or a digit: spaces, ``-``, ``/``, ``.``), so ``MRN 789``, ``mrn-789`` and
  ``MRN789`` are one number (the phone judges by the same rule: clients/phone/src/app/patients.ts,
  held to this module's cases by tests/phone/test_phone_patient_rule.py);
* where both give the number's issuer, the issuers are equal folded the same way; a record
  without one is not told apart by it;
* where both give a birth date, the dates are equal;
* where both give a name, the names are equal folded: the DICOM person name's components
  (PS3.5 §6.2.1, PN: ``FAMILY^GIVEN^MIDDLE^PREFIX^SUFFIX``) split at ``^`` or ``,``, spaces
  collapsed, case ignored, empty trailing components dropped (``Poe^Edgar``, ``POE, edgar``
  and ``poe ^ edgar`` are one name). The same number with another name is another patient.

Which way is safe. For every use the cautious answer is "not the same patient": the CLI then
refuses the photo, the desktop shows its warning. So nothing is matched that is not the same
writing: a number is never matched by a part of it, a name never by the family name alone or
with a component added (``Poe^Edgar`` is not ``Poe^Edgar^Allan``), a date only exactly. The one
allowance is a field only one record gives (an issuer, a birth date, a name): it cannot tell
the two apart, and the gateway checks the filed record against the PACS (HAZ-01 C5). Numbers
that differ only in where their separators sit (``12-3``, ``1-23``) fold to one; an issuer's
numbers share one format, so that is a way of writing the number, not another one.

The rule is not transitive when a record leaves a field out: ``MRN789`` of RGH and ``MRN789``
with no issuer are one patient, as are the latter and ``MRN789`` of RSCH, but the first and last
are two. So a consult is one patient only when every pair of its records is
(:func:`patients_of`), never by chaining one match to the next.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from protocol.body import RecordData

__all__ = ["patient_label", "patient_labels", "patients_of", "same_patient"]


def _fold(value: str | None) -> str:
    """A hospital number or issuer as compared: case folded, only its letters and digits."""
    return "".join(c for c in (value or "").casefold() if c.isalnum())


def _name_parts(name: str) -> tuple[str, ...]:
    """A DICOM person name (PS3.5 §6.2.1, PN) as compared: ``Poe^Edgar``, ``POE, Edgar`` and
    ``poe ^ edgar`` are one name."""
    parts = [" ".join(p.split()).casefold() for p in re.split(r"[\^,]", name)]
    while parts and not parts[-1]:
        parts.pop()
    return tuple(parts)


def _differ(a: object, b: object) -> bool:
    """Whether two values of one field tell two records apart: both given and unequal."""
    return bool(a) and bool(b) and a != b


def same_patient(a: RecordData, b: RecordData) -> bool:
    """Whether two records name one patient (the rule: this module's docstring)."""
    return (_fold(a.patient_id) == _fold(b.patient_id)
            and not _differ(_fold(a.issuer_of_patient_id), _fold(b.issuer_of_patient_id))
            and not _differ(a.birth_date, b.birth_date)
            and not _differ(_name_parts(a.patient_name), _name_parts(b.patient_name)))


def patients_of(records: Sequence[RecordData]) -> list[RecordData]:
    """One record for each patient ``records`` name, in the order they first appear: a record
    is another patient's unless it is :func:`same_patient` as every record of one already
    found. One record back: every pair of ``records`` names one patient."""
    groups: list[list[RecordData]] = []
    for record in records:
        group = next((g for g in groups if all(same_patient(record, r) for r in g)), None)
        if group is None:
            groups.append([record])
        else:
            group.append(record)
    return [g[0] for g in groups]


def _name(record: RecordData) -> str:
    family, *rest = [" ".join(p.split()) for p in record.patient_name.split("^")]
    given = " ".join(p for p in rest if p)
    return f"{family}, {given}" if family and given else family or given


def patient_label(record: RecordData) -> str:
    """``Poe, Edgar (MRN789)``: the patient as a clinician reads them in a sentence (the
    number alone for a record without a name)."""
    name = _name(record)
    return f"{name} ({record.patient_id})" if name else record.patient_id


def _detailed(record: RecordData) -> str:
    """:func:`patient_label` with the issuer and birth date the record gives:
    ``Poe, Edgar (MRN789, issuer RGH, born 1970-01-02)``."""
    number = ", ".join([record.patient_id,
                        *([f"issuer {record.issuer_of_patient_id}"]
                          if record.issuer_of_patient_id else []),
                        *([f"born {record.birth_date}"] if record.birth_date else [])])
    name = _name(record)
    return f"{name} ({number})" if name else number


def patient_labels(patients: Sequence[RecordData]) -> list[str]:
    """:func:`patient_label` of each of ``patients`` (distinct patients, as
    :func:`patients_of` gives them), but where two would read as one (their numbers and names
    equal folded: they differ by issuer or birth date) those two say their issuer and birth
    date: ``Poe, Edgar (MRN789, issuer RGH, born 1970-01-02)``."""
    def key(r: RecordData) -> tuple[str, tuple[str, ...]]:
        return _fold(r.patient_id), _name_parts(r.patient_name)

    keys = [key(r) for r in patients]
    return [_detailed(r) if keys.count(k) > 1 else patient_label(r)
            for r, k in zip(patients, keys, strict=True)]
