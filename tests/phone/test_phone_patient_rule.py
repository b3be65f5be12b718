"""The phone judges "do these records name one patient" by the rule every Python client uses
(clients/sdk/patients.py; docs/HAZARD_LOG.md HAZ-01 C6): its port, clients/phone/src/app/
patients.ts, run under Node (tests/phone/node.py), held to the table of
tests/clients/test_patients_rule.py (the CLI's refusal and the desktop's warning) and to
``same_patient`` over each field's spellings; a consult kept by an older phone (its first
patient's name and number only) is still judged, its issuer and birth date not given. The
phone's screens with it: tests/phone/test_phone_consult_one_patient.py."""

from __future__ import annotations

import itertools
from typing import Any

import msgspec

from clients.sdk.patients import same_patient
from protocol.body import RecordData
from tests.clients.test_patients_rule import CASES, rec
from tests.phone.node import run_driver


def js(record: RecordData) -> dict[str, Any]:
    return msgspec.to_builtins(record)  # type: ignore[no-any-return]


def kept(record: RecordData) -> dict[str, Any]:
    """A record as the phone keeps it with its consult (views.ts ThreadRecord ``patients``)."""
    return {"name": record.patient_name, "id": record.patient_id,
            "issuer": record.issuer_of_patient_id, "birth_date": record.birth_date}


def photo_patient(cases: list[dict[str, Any]]) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = run_driver({"op": "photo_patient", "cases": cases})["results"]
    return results


def test_the_phone_refuses_a_photo_added_to_a_consult_where_the_cli_does() -> None:
    results = photo_patient([{"kept": None, "records": [js(r) for r in case.consult],
                              "photo": js(case.photo)} for case in CASES.values()])
    for (name, case), result in zip(CASES.items(), results, strict=True):
        # The CLI names the latest of the consult's records the photo is another patient than
        # (clients/clinician/sending.py consult_patient); the phone names the same one.
        other = next((r for r in reversed(case.consult) if not same_patient(case.photo, r)),
                     None)
        assert result["other"] == (other and kept(other)), name
        assert (result["other"] is None) == (case.refusal == ""), name
        assert result["kept"]["patients"] == [kept(r) for r in case.consult], name


# Each field's spellings: one patient or two by the rule's folding, in Unicode too (sharp s
# folds to ss, a dotless i is not i, a final sigma is a sigma), and Python's whitespace, not
# JavaScript's.
SPELLINGS: dict[str, list[Any]] = {
    "patient_name": ["Poe^Edgar", "POE, edgar", " poe ^  edgar ", "Poe^Edgar^^", "Poe\x1c^Edgar",
                     "Poe\ufeff^Edgar", "Poe^Edgar^Allan", "Poe", "Poe^Edna", "", "^", "Edgar^Poe",
                     "Strauß^Jo", "STRAUSS^JO", "K\u0131l\u0131\u00e7^Ali",
                     "KILI\u00c7^ALI", "\u039f\u03b4\u03cc\u03c2^\u0391",
                     "\u039f\u0394\u039f\u03a3^\u03b1", "\u039f\u0394\u038c\u03a3^\u03b1"],
    "patient_id": ["MRN789", "mrn-789", "M.R.N. 7/89", "MRN7890", "MRN78", "789MRN", "",
                   "Straße1", "STRASSE-1", "ﬁ7", "FI7"],
    "issuer_of_patient_id": ["RGH", "rgh", "R.G.H.", "", "RSCH"],
    "birth_date": ["1970-01-02", None, "1970-02-01"],
}


def test_the_phone_and_the_python_rule_agree_on_every_spelling_of_each_field() -> None:
    pairs = [(msgspec.structs.replace(rec(), **{field: a}),
              msgspec.structs.replace(rec(), **{field: b}))
             for field, values in SPELLINGS.items()
             for a, b in itertools.product(values, repeat=2)]
    pairs += [(rec(issuer="", born=None), rec(name="poe,edgar", number="mrn 789")),
              (rec(name="", issuer="", born=None), rec(name="Roe^Richard", number="mrn789"))]
    same = run_driver({"op": "same_patient", "pairs": [[js(a), js(b)] for a, b in pairs]})["same"]
    expected = [same_patient(a, b) for a, b in pairs]
    assert [(a, b) for (a, b), x, y in zip(pairs, same, expected, strict=True) if x != y] == []
    assert True in expected and False in expected


OLD = {"patient": {"name": "Poe^Edgar", "id": "MRN789"}}  # kept by the phone before this rule


def test_a_consult_kept_by_an_older_phone_is_judged_without_its_issuer_and_birth_date() -> None:
    rsch = rec(issuer="RSCH")
    results = photo_patient([
        {"kept": OLD, "records": [], "photo": js(rec())},
        {"kept": OLD, "records": [], "photo": js(rec(name="Poe^Edna"))},
        {"kept": OLD, "records": [js(rsch), js(rsch)], "photo": js(rec(issuer="", born=None))},
        {"kept": OLD, "records": [js(rsch)], "photo": js(rec())},
    ])
    assert [r["other"] for r in results] == [None, OLD["patient"], None, kept(rsch)]
    # Learning more keeps the older phone's patient first, and each record once.
    assert results[2]["kept"] == {**OLD, "patients": [OLD["patient"], kept(rsch)]}
