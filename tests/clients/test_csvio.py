"""clients/admin/csvio.py: the import format, its limits and per-row report; safe exports."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest

from clients.admin import cli as admin
from clients.admin import csvio
from clients.admin.csvio import (
    COLUMNS,
    MAX_CSV_BYTES,
    CsvError,
    licence_through,
    neutralise,
    parse_date,
    parse_users_csv,
    to_csv,
)
from protocol import api
from protocol.errors import ErrorCode

NOW = 1767225600  # 2026-01-01
HEADER = ",".join(COLUMNS)


def _row(name: str = "Ada Lovelace", login: str = "ada", roles: str = "physician;on_call",
         expires: str = "2030-06-30") -> str:
    return f"{name},{login},{roles},orthopaedics,surgery,MD,GMC-1,UK,{expires}"


def test_good_rows_parse_with_roles_and_licence() -> None:
    good, bad = parse_users_csv(f"{HEADER}\n{_row()}\n".encode(), now=NOW)
    assert bad == []
    (row,) = good
    assert row.line == 2
    assert row.roles == ("physician", "on_call")
    assert row.licence is not None
    assert row.licence.expires_at == 1909094400  # end of 2030-06-30, UTC
    assert row.specialty == "orthopaedics"


def test_licence_is_valid_through_the_given_day() -> None:
    assert parse_date("2030-06-30") == 1909094400  # 2030-07-01T00:00:00Z


def test_bad_rows_are_reported_with_line_numbers_and_do_not_stop_good_ones() -> None:
    text = "\n".join([
        HEADER,
        _row(login="ada"),
        _row(login="Bad Login"),
        "",
        _row(login="bob", roles=""),
        _row(login="carol", expires="2020-01-01"),
        _row(login="dan", expires="tomorrow"),
        _row(login="ada"),
        _row(name="", login="erin"),
        _row(login="fay", roles="Physician"),
        _row(login="gus") + ",extra",
        _row(login="hal"),
    ]) + "\n"
    good, bad = parse_users_csv(text.encode(), now=NOW)
    assert [r.login for r in good] == ["ada", "hal"]
    reasons = {(e.line, e.login): e.reason for e in bad}
    assert set(reasons) == {(3, "Bad Login"), (5, "bob"), (6, "carol"), (7, "dan"), (8, "ada"),
                            (9, "erin"), (10, "fay"), (11, "gus")}
    assert "login" in reasons[(3, "Bad Login")]
    assert "no role" in reasons[(5, "bob")]
    assert "expired" in reasons[(6, "carol")]
    assert "YYYY-MM-DD" in reasons[(7, "dan")]
    assert "line 2" in reasons[(8, "ada")]
    assert "name is empty" in reasons[(9, "erin")]
    assert "too many fields" in reasons[(11, "gus")]


def test_file_over_the_size_limit_is_csv_too_large() -> None:
    data = (HEADER + "\n").encode() + b"x" * MAX_CSV_BYTES
    with pytest.raises(CsvError) as exc:
        parse_users_csv(data, now=NOW)
    assert exc.value.code is ErrorCode.CSV_TOO_LARGE


def test_missing_columns_are_csv_invalid() -> None:
    with pytest.raises(CsvError) as exc:
        parse_users_csv(b"name,login,roles\nAda,ada,physician\n", now=NOW)
    assert exc.value.code is ErrorCode.CSV_INVALID
    assert "licence_type" in str(exc.value)


def test_specialty_and_department_columns_may_be_left_out() -> None:
    # the guide: "free text, may be empty"; a file without the columns reads them as empty
    header = ",".join(c for c in COLUMNS if c not in ("specialty", "department"))
    good, bad = parse_users_csv(
        f"{header}\nAda Lovelace,ada,physician,MD,GMC-1,UK,2030-06-30\n".encode(), now=NOW)
    assert bad == []
    (row,) = good
    assert (row.login, row.specialty, row.department) == ("ada", None, None)
    with pytest.raises(CsvError) as exc:  # the others stay required
        parse_users_csv(f"{header.replace(',jurisdiction', '')}\n".encode(), now=NOW)
    assert "missing columns: jurisdiction" in str(exc.value)


def test_not_utf8_is_csv_invalid() -> None:
    with pytest.raises(CsvError) as exc:
        parse_users_csv(HEADER.encode() + b"\n\xff\xfe\n", now=NOW)
    assert exc.value.code is ErrorCode.CSV_INVALID


def test_bom_extra_columns_and_header_case_are_accepted() -> None:
    data = ("\ufeff" + HEADER.upper() + ",notes\n" + _row() + ",hello\n").encode()
    good, bad = parse_users_csv(data, now=NOW)
    assert [r.login for r in good] == ["ada"]
    assert bad == []


def test_formula_names_are_imported_verbatim_but_neutralised_on_export() -> None:
    good, _ = parse_users_csv(f'{HEADER}\n{_row(name="=cmd|calc")}\n'.encode(), now=NOW)
    assert good[0].name == "=cmd|calc"
    out = to_csv(["name"], [[good[0].name]])
    assert list(csv.reader(io.StringIO(out))) == [["name"], ["'=cmd|calc"]]


@pytest.mark.parametrize(("cell", "expected"), [
    ("=1+1", "'=1+1"), ("+44 20", "'+44 20"), ("-2", "'-2"), ("@SUM(A1)", "'@SUM(A1)"),
    ("\tx", "'\tx"), ("\rx", "'\rx"), ("Ada", "Ada"), ("", ""), (None, ""), (3, "3"),
    ("a=b", "a=b"),
])
def test_neutralise(cell: object, expected: str) -> None:
    assert neutralise(cell) == expected


def test_export_neutralises_every_cell_including_the_header() -> None:
    out = to_csv(["=h"], [["@x", "ok", "-1"]])
    assert list(csv.reader(io.StringIO(out))) == [["'=h"], ["'@x", "ok", "'-1"]]


@pytest.mark.parametrize(("content", "code"), [
    ((HEADER + "\n").encode() + b"x" * MAX_CSV_BYTES, "csv_too_large"),
    (b"name,login\nAda,ada\n", "csv_invalid"),
])
def test_admin_import_refuses_the_whole_file_with_its_code(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes, code: str,
) -> None:
    path = tmp_path / "users.csv"
    path.write_bytes(content)
    assert admin.main(["user", "import", str(path)]) == 2
    assert f"error: {code}:" in capsys.readouterr().err


@pytest.mark.parametrize("day", ["2027-06-30", "2027-12-31", "2028-02-29", "2027-01-01"])
def test_a_licence_date_reads_back_as_the_day_it_is_valid_through(day: str) -> None:
    # parse_date stores the first second after the day; the date a person reads is the day
    assert licence_through(parse_date(day)) == day
    assert licence_through(None) == ""


def test_user_list_shows_the_licence_through_the_day_it_was_imported_with() -> None:
    (row,), failures = parse_users_csv(f"{HEADER}\n{_row(expires='2027-06-30')}\n".encode(),
                                       now=NOW)
    assert not failures
    summary = api.UserSummary(
        user_id="00000000-0000-4000-8000-000000000001", org_id="org", login="ada",
        display_name="Ada Lovelace", roles=["physician"], specialty=None, department=None,
        status="active", licence_expires_at=row.licence.expires_at if row.licence else None,
        devices=0)
    header, rows = admin.user_rows([summary])
    assert rows[0][header.index("licence_expires")] == "2027-06-30"


def test_csv_records_skip_blank_lines_flag_extra_cells_and_stop_at_a_broken_quote() -> None:
    data = b"a,b\n1,2\n,\n3,4,5\n\"6,7\n"
    records = list(csvio.csv_records(data, ["a", "b"], max_rows=10))
    assert [(r.line, r.values, r.problem) for r in records[:2]] == [
        (2, {"a": "1", "b": "2"}, None), (4, {"a": "3", "b": "4"}, "too many fields")]
    assert len(records) == 3 and records[2].problem is not None
    assert records[2].problem.startswith("cannot be parsed: ")
    loose = list(csvio.csv_records(b"a,b\n3,4,5\n", ["a", "b"], max_rows=10, extra_fields=True))
    assert loose == [csvio.CsvRecord(2, {"a": "3", "b": "4"}, None)]


def test_csv_records_refuse_the_file_past_max_rows_not_counting_blank_lines() -> None:
    assert len(list(csvio.csv_records(b"a,b\n1,2\n,\n ,\n3,4\n", ["a"], max_rows=2))) == 2
    with pytest.raises(csvio.CsvError, match="more than 2 rows"):
        list(csvio.csv_records(b"a\n1\n2\n3\n", ["a"], max_rows=2))
