"""The free-text guard (clients/sdk/textguard.py): exact ages, dates of birth, MRN-like numbers and
dates of service are caught for purposes that leave direct care; ordinary clinical text is not."""

from __future__ import annotations

import contextlib
import io

import pytest

from clients.clinician import cli
from clients.sdk.textguard import (
    GUARDED_PURPOSES,
    TextGuardWarning,
    TextKind,
    age_range,
    check_text,
    guard_text,
    scan_text,
    suggest_rewrite,
)
from protocol.model import Purpose

POSITIVE = [
    ("a 47-year-old with a distal radius fracture", TextKind.EXACT_AGE, "a 47-year-old"),
    ("47 year old man, fell on outstretched hand", TextKind.EXACT_AGE, "47 year old"),
    ("he is 82 years old", TextKind.EXACT_AGE, "82 years old"),
    ("47 yo woman", TextKind.EXACT_AGE, "47 yo"),
    ("pt is 47y/o", TextKind.EXACT_AGE, "47y/o"),
    ("aged 47, fell from a ladder", TextKind.EXACT_AGE, "aged 47"),
    ("Age: 47", TextKind.EXACT_AGE, "Age: 47"),
    ("47M with wrist pain", TextKind.EXACT_AGE, "47M"),
    ("DOB 01/02/1960", TextKind.DATE_OF_BIRTH, "DOB 01/02/1960"),
    ("date of birth: 3 March 1960", TextKind.DATE_OF_BIRTH, "date of birth: 3 March 1960"),
    ("born on 12/05/1980", TextKind.DATE_OF_BIRTH, "born on 12/05/1980"),
    ("MRN 12345678", TextKind.MRN, "MRN 12345678"),
    ("hospital number A1234567", TextKind.MRN, "hospital number A1234567"),
    ("NHS no 943 476 5919", TextKind.MRN, "NHS no 943 476 5919"),
    ("please look up 20481234", TextKind.MRN, "20481234"),
    ("admitted on 12/03/2026", TextKind.DATE_OF_SERVICE, "admitted on 12/03/2026"),
    ("seen 3 March in fracture clinic", TextKind.DATE_OF_SERVICE, "seen 3 March"),
    ("x-rayed on 2026-03-01", TextKind.DATE_OF_SERVICE, "x-rayed on 2026-03-01"),
    ("surgery was on 5th of May", TextKind.DATE_OF_SERVICE, "surgery was on 5th of May"),
    ("film from 14/02/2026", TextKind.DATE_OF_SERVICE, "14/02/2026"),
]

NEGATIVE = [
    "a patient in their 40s", "lesion 47 mm", "BP 120/80", "10 mg twice daily", "3 days ago",
    "day 2 post-op", "bleep 4455", "at 14:30", "bed 12", "Hb 12.3", "aged 40-49", "T 37.5",
    "fracture of the 5th metatarsal", "Weber B, 2 cm displacement", "pain 7/10",
    "seen today in clinic", "may need surgery", "angulation 20 degrees", "3 m fall",
]


@pytest.mark.parametrize(("text", "kind", "found"), POSITIVE)
def test_identifiers_in_text_are_found(text: str, kind: TextKind, found: str) -> None:
    findings = scan_text(text)
    assert [(f.kind, f.text) for f in findings] == [(kind, found)]
    assert text[findings[0].start:findings[0].end] == found


@pytest.mark.parametrize("text", NEGATIVE)
def test_ordinary_clinical_text_is_not_flagged(text: str) -> None:
    assert scan_text(text) == []


@pytest.mark.parametrize(("age", "expected"), [
    (0, "an infant"), (7, "a child"), (16, "a teenager"), (20, "a patient in their 20s"),
    (47, "a patient in their 40s"), (89, "a patient in their 80s"),
    (90, "a patient aged 90 or over"), (103, "a patient aged 90 or over")])
def test_exact_ages_become_ranges(age: int, expected: str) -> None:
    assert age_range(age) == expected


def test_the_rewrite_replaces_ages_and_leaves_the_rest_to_the_clinician() -> None:
    text = "Referral: a 47-year-old, MRN 12345678, with a distal radius fracture."
    assert suggest_rewrite(text) == ("Referral: a patient in their 40s, MRN 12345678, with a "
                                     "distal radius fracture.")
    mrn = next(f for f in scan_text(text) if f.kind is TextKind.MRN)
    assert "leave out the record number" in mrn.suggestion


def test_several_findings_come_in_order() -> None:
    text = "47F, DOB 02/03/1979, seen on 12/03/2026, hospital number 88812345"
    kinds = [f.kind for f in scan_text(text)]
    assert kinds == [TextKind.EXACT_AGE, TextKind.DATE_OF_BIRTH, TextKind.DATE_OF_SERVICE,
                     TextKind.MRN]


def test_direct_care_is_not_guarded_and_the_other_purposes_are() -> None:
    text = "a 47-year-old"
    assert check_text(text, Purpose.DIRECT_CARE) == []
    assert GUARDED_PURPOSES == {Purpose.EXTERNAL_CONSULT, Purpose.TEACHING,
                                Purpose.PUBLICATION, Purpose.RESEARCH}
    for purpose in GUARDED_PURPOSES:
        assert check_text(text, purpose)


def test_guard_text_warns_until_confirmed() -> None:
    with pytest.raises(TextGuardWarning) as warning:
        guard_text("a 47-year-old, DOB 01/02/1960", Purpose.TEACHING)
    assert warning.value.code == "phi_in_text"
    assert warning.value.suggestion == "a patient in their 40s, DOB 01/02/1960"
    assert len(guard_text("a 47-year-old", Purpose.TEACHING, confirmed=True)) == 1
    assert guard_text("a patient in their 40s", Purpose.TEACHING) == []


def _lightbox(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = cli.main(list(argv))
    return rc, out.getvalue(), err.getvalue()


def test_lightbox_send_warns_before_sealing_and_suggests_a_range() -> None:
    rc, out, err = _lightbox("--profile", "nobody", "send", "--to", "role:x", "--purpose",
                             "external_consult", "a 47-year-old with a scaphoid fracture")
    assert rc == 1 and "phi_in_text" in err and "sent:" not in out
    assert "suggested: a patient in their 40s with a scaphoid fracture" in err


def test_the_full_stop_after_a_date_is_not_part_of_it() -> None:
    (finding,) = scan_text("Seen in clinic on 3 March.")
    assert finding.text.endswith("3 March")
    (finding,) = scan_text("Seen on 3 Mar. for review")  # an abbreviation keeps its dot
    assert finding.text.endswith("3 Mar.")
