"""clients/clinician/identity.py: before sending, the identity typed is compared with the text
read on the film (real Tesseract OCR); a contradiction is shown side by side and stops the send
until it is confirmed or corrected (docs/HAZARD_LOG.md HAZ-01)."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

from clients.clinician import cli
from clients.clinician.identity import compare, side_by_side
from clients.clinician.phi import OcrStatus, PhiKind, PhiScan, TextRegion
from protocol.body import RecordData
from tests.clients.test_phi import labelled_film

# The label reads: DOE^JOHN  MRN 12345678  DOB 01/02/1960 (tests/clients/test_phi.py).
RIGHT = ["--patient-name", "Doe^John", "--patient-id", "12345678", "--birth-date", "1960-02-01"]
WRONG = ["--patient-name", "Roe^Jane", "--patient-id", "LBX-0042", "--birth-date", "1971-07-08"]


def _send(tmp_path: Path, *extra: str) -> tuple[int, str, str]:
    path = tmp_path / "film.png"
    labelled_film().save(path)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = cli.main(["--profile", "nobody", "send", "--to", "role:orthopaedics_oncall",
                       "--image", str(path), "--send-anyway", "--patient-agreed",
                       "--statements-shown", *extra, "wrist, please review"])
    return rc, out.getvalue(), err.getvalue()


def _scan(*words: tuple[str, PhiKind]) -> PhiScan:
    return PhiScan(OcrStatus.TEXT_FOUND, tuple(
        TextRegion(text, (0, 0, 1, 1), 90.0, frozenset({kind})) for text, kind in words))


def _record(name: str, patient_id: str, born: str | None) -> RecordData:
    return RecordData(patient_name=name, patient_id=patient_id, birth_date=born)


def test_a_typed_identity_the_film_contradicts_stops_the_send_side_by_side(
        tmp_path: Path) -> None:
    rc, out, err = _send(tmp_path, *WRONG)
    assert rc == 1 and "identity_mismatch" in err and "sent:" not in out
    assert "the patient typed and the text on the image disagree" in err
    table = err[err.index("disagree:"):]
    for typed, on_film in (("LBX-0042", "12345678"), ("1971-07-08", "01/02/1960"),
                           ("Roe^Jane", "DOE")):
        line = next(x for x in table.splitlines() if typed in x)
        assert on_film in line, line  # the two side by side, on one line


def test_a_confirmed_or_matching_identity_goes_on_to_the_send(tmp_path: Path) -> None:
    # Past the check, the send needs the profile: "nobody" has none, so that is the error.
    rc, _, err = _send(tmp_path, *WRONG, "--identity-checked")
    assert rc == 1 and "identity_mismatch" not in err and "you confirmed the identity" in err
    rc, _, err = _send(tmp_path, *RIGHT)
    assert rc == 1 and "identity_mismatch" not in err and "disagree" not in err


def test_the_comparison_reads_dates_both_ways_and_names_by_family() -> None:
    scan = _scan(("DOE^JOHN", PhiKind.NAME), ("MRN", PhiKind.IDENTIFIER),
                 ("12345678", PhiKind.IDENTIFIER), ("DOB", PhiKind.DATE_OF_BIRTH),
                 ("01/02/1960", PhiKind.DATE_OF_BIRTH))
    for born in ("1960-02-01", "1960-01-02"):  # day/month or month/day
        assert compare(_record("Doe^John", "12345678", born), scan) == []
    assert compare(_record("Doe", "MRN12345678", None), scan) == []  # label typed along
    assert [d.field for d in compare(_record("Doe", "2345", None), scan)] == ["patient id"]
    differs = compare(_record("Doe^John", "12345679", "1960-03-01"), scan)
    assert [d.field for d in differs] == ["patient id", "birth date"]
    lines = side_by_side(differs)
    assert "typed" in lines[0] and "12345679" in lines[1] and "12345678" in lines[1]
    monitor = _scan(("Name:", PhiKind.NAME), ("Jane", PhiKind.NAME), ("Smith", PhiKind.NAME),
                    ("Born", PhiKind.DATE_OF_BIRTH), ("14-Mar-1975", PhiKind.DATE_OF_BIRTH))
    assert compare(_record("Smith^Jane", "A1", "1975-03-14"), monitor) == []
    assert [d.field for d in compare(_record("Smyth^Jane", "A1", "1975-03-15"), monitor)] == [
        "birth date", "name"]


def test_no_text_read_means_no_comparison_never_a_confirmation() -> None:
    assert compare(_record("Doe^John", "1", "1960-02-01"), PhiScan(OcrStatus.NO_TEXT)) == []
    dates_only = _scan(("03/12/2026", PhiKind.DATE))  # a study date is not a birth date
    assert compare(_record("Doe^John", "1", "1960-02-01"), dates_only) == []
