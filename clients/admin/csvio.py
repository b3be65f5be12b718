"""CSV in and out for IT's tool: the user import format, and safe exports.

Import (``lightbox-admin user import FILE.csv``): UTF-8 (a BOM is accepted), a header row with
at least :data:`REQUIRED_COLUMNS` (:data:`OPTIONAL_COLUMNS` left out are empty; extra columns
are ignored), ``roles`` separated by ``;``, ``licence_expires`` as ``YYYY-MM-DD`` (the licence
is valid through that day, UTC). Files over :data:`MAX_CSV_BYTES` are refused whole
(``csv_too_large``), as are files without the required columns (``csv_invalid``). Every other
problem is reported per row, with its line number, and does not stop the good rows.

Export: every cell goes through :func:`neutralise`, so a display name such as ``=cmd|'/c calc'``
cannot become a formula when IT opens the export in a spreadsheet (OWASP "CSV Injection").
"""

from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import io
import re
from collections.abc import Iterable, Iterator, Sequence
from typing import NamedTuple

from protocol.certs import ROLE_RECORD_GATEWAY
from protocol.errors import ErrorCode

__all__ = [
    "COLUMNS",
    "MAX_CSV_BYTES",
    "OPTIONAL_COLUMNS",
    "REQUIRED_COLUMNS",
    "CsvError",
    "CsvRecord",
    "LicenceFields",
    "RowError",
    "UserRow",
    "csv_records",
    "licence_through",
    "neutralise",
    "parse_date",
    "parse_users_csv",
    "to_csv",
    "validate_user",
]

MAX_CSV_BYTES = 1024 * 1024
COLUMNS = ("name", "login", "roles", "specialty", "department", "licence_type",
           "licence_number", "jurisdiction", "licence_expires")
# Free text that may be empty (the guide's table), so a file may leave the columns out too.
OPTIONAL_COLUMNS = ("specialty", "department")
REQUIRED_COLUMNS = tuple(c for c in COLUMNS if c not in OPTIONAL_COLUMNS)
MAX_ROWS = 5000
_LOGIN = re.compile(r"^[a-z0-9][a-z0-9._-]{1,63}$")
_ROLE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


class CsvError(Exception):
    """The whole file is refused; ``code`` is csv_too_large or csv_invalid."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        self.code = code
        super().__init__(f"{code.value}: {message}")


@dataclasses.dataclass(frozen=True)
class LicenceFields:
    type: str
    number: str
    jurisdiction: str
    expires_at: int


@dataclasses.dataclass(frozen=True)
class UserRow:
    """One valid user to provision (from a CSV row or ``user add``)."""

    line: int
    name: str
    login: str
    roles: tuple[str, ...]
    specialty: str | None
    department: str | None
    licence: LicenceFields | None
    service: bool = False


@dataclasses.dataclass(frozen=True)
class RowError:
    line: int
    login: str
    reason: str


def neutralise(cell: object) -> str:
    """A cell safe to open in a spreadsheet: text starting with ``= + - @``, tab or CR gets a
    leading ``'`` so it is shown as text, never evaluated."""
    text = "" if cell is None else str(cell)
    return "'" + text if text.startswith(_FORMULA_START) else text


def to_csv(header: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """CSV text with every cell neutralised (header included)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow([neutralise(h) for h in header])
    for row in rows:
        writer.writerow([neutralise(c) for c in row])
    return out.getvalue()


def parse_date(text: str) -> int:
    """``YYYY-MM-DD`` -> the Unix time at the end of that day, UTC (the first second after)."""
    try:
        day = dt.date.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"{text.strip()!r} is not a date (YYYY-MM-DD)") from None
    end = dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), tzinfo=dt.UTC)
    return int(end.timestamp())


def licence_through(expires_at: int | None) -> str:
    """The inverse of :func:`parse_date`: the ``YYYY-MM-DD`` a licence is valid through, from
    its stored end (the first second after that day, UTC); "" for none. A licence's day is a
    UTC day wherever it is read, so the reader's zone does not move it."""
    if expires_at is None:
        return ""
    return dt.datetime.fromtimestamp(expires_at - 1, dt.UTC).date().isoformat()


def _text(value: str | None, what: str, *, required: bool) -> str | None:
    v = (value or "").strip()
    if not v:
        if required:
            raise ValueError(f"{what} is empty")
        return None
    if len(v) > 200:
        raise ValueError(f"{what} is longer than 200 characters")
    if any(ord(c) < 0x20 for c in v):
        raise ValueError(f"{what} contains control characters")
    return v


def validate_user(
    *, line: int, name: str | None, login: str | None, roles: str | Sequence[str] | None,
    specialty: str | None, department: str | None, licence_type: str | None,
    licence_number: str | None, jurisdiction: str | None, licence_expires: str | None,
    now: int, service: bool = False,
) -> UserRow:
    """Check one user's fields; ValueError with a reason fit for the per-row report."""
    display = _text(name, "name", required=True)
    assert display is not None
    lg = (login or "").strip()
    if not _LOGIN.match(lg):
        raise ValueError(f"login {lg!r} must be 2-64 characters of a-z, 0-9, '.', '_', '-' "
                         "starting with a letter or digit")
    if isinstance(roles, str):
        role_list = [r.strip() for r in roles.replace(",", ";").split(";") if r.strip()]
    else:
        role_list = [r.strip() for r in roles or [] if r.strip()]
    if not role_list:
        raise ValueError("no role given")
    if len(role_list) > 32:
        raise ValueError("more than 32 roles")
    for r in role_list:
        if not _ROLE.match(r):
            raise ValueError(f"role {r!r} must be lowercase a-z, 0-9 and '_'")
    if len(set(role_list)) != len(role_list):
        raise ValueError("a role is repeated")
    if ROLE_RECORD_GATEWAY in role_list and not service:
        raise ValueError(f"role {ROLE_RECORD_GATEWAY} is for service accounts (--service)")
    licence = None
    if not service:
        ltype = _text(licence_type, "licence_type", required=True)
        number = _text(licence_number, "licence_number", required=True)
        juris = _text(jurisdiction, "jurisdiction", required=True)
        if not (licence_expires or "").strip():
            raise ValueError("licence_expires is empty")
        expires_at = parse_date(licence_expires or "")
        if expires_at <= now:
            raise ValueError("the licence has already expired")
        assert ltype is not None
        assert number is not None
        assert juris is not None
        licence = LicenceFields(ltype, number, juris, expires_at)
    return UserRow(
        line=line, name=display, login=lg, roles=tuple(role_list),
        specialty=_text(specialty, "specialty", required=False),
        department=_text(department, "department", required=False),
        licence=licence, service=service,
    )


def decode_csv(data: bytes) -> str:
    """An import file's text: at most MAX_CSV_BYTES (csv_too_large), UTF-8 with or without a
    byte-order mark (csv_invalid otherwise)."""
    if len(data) > MAX_CSV_BYTES:
        raise CsvError(ErrorCode.CSV_TOO_LARGE,
                       f"the file is {len(data)} bytes; the limit is {MAX_CSV_BYTES}")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise CsvError(ErrorCode.CSV_INVALID, "the file is not UTF-8 text") from exc


def dict_reader(data: bytes, required: Sequence[str]) -> csv.DictReader[str]:
    """A strict reader over an import file whose header (case and spaces ignored) holds every
    ``required`` column (csv_invalid naming the missing ones)."""
    reader = csv.DictReader(io.StringIO(decode_csv(data), newline=""), strict=True)
    try:
        header = [h.strip().lower() for h in (reader.fieldnames or [])]
    except csv.Error as exc:
        raise CsvError(ErrorCode.CSV_INVALID, f"the header row cannot be parsed: {exc}") from exc
    missing = [c for c in required if c not in header]
    if missing:
        raise CsvError(ErrorCode.CSV_INVALID, "missing columns: " + ", ".join(missing))
    reader.fieldnames = header
    return reader



class CsvRecord(NamedTuple):
    """One non-blank record of an import file: its last physical line, its named cells (an
    empty cell is ""), and what makes it unreadable, if anything."""

    line: int
    values: dict[str, str]
    problem: str | None


def csv_records(data: bytes, required: Sequence[str], *, max_rows: int,
                extra_fields: bool = False) -> Iterator[CsvRecord]:
    """The records of an import file, blank lines skipped. A record with more cells than the
    header has the problem "too many fields" (unless ``extra_fields``, then they are dropped);
    a broken quote ends the file with a "cannot be parsed" record, since the csv module cannot
    resynchronise after one. More than ``max_rows`` records: CsvError for the whole file."""
    reader = dict_reader(data, required)
    count = 0
    while True:
        try:
            raw = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield CsvRecord(reader.line_num, {}, f"cannot be parsed: {exc}")
            return
        if count >= max_rows:
            raise CsvError(ErrorCode.CSV_INVALID, f"more than {max_rows} rows")
        values = {k: (v or "") for k, v in raw.items() if k is not None}
        too_many = None in raw and not extra_fields
        if not too_many and not any(v.strip() for v in values.values()):
            continue  # blank line
        count += 1
        # reader.line_num: the record's last physical line (its only one, usually).
        yield CsvRecord(reader.line_num, values, "too many fields" if too_many else None)

def parse_users_csv(data: bytes, *, now: int) -> tuple[list[UserRow], list[RowError]]:
    """Parse an import file: the valid rows, and one error per bad row (line numbers are the
    file's physical lines, the header being line 1; blank lines are skipped). Raises CsvError
    for the whole file."""
    good: list[UserRow] = []
    bad: list[RowError] = []
    seen: dict[str, int] = {}
    for line, values, problem in csv_records(data, REQUIRED_COLUMNS, max_rows=MAX_ROWS):
        login = values.get("login", "").strip()
        if problem is not None:
            bad.append(RowError(line, login, problem))
            continue
        try:
            row = validate_user(line=line, name=values["name"], login=login,
                                roles=values["roles"], specialty=values.get("specialty", ""),
                                department=values.get("department", ""),
                                licence_type=values["licence_type"],
                                licence_number=values["licence_number"],
                                jurisdiction=values["jurisdiction"],
                                licence_expires=values["licence_expires"], now=now)
        except ValueError as exc:
            bad.append(RowError(line, login, str(exc)))
            continue
        if row.login in seen:
            bad.append(RowError(line, login, f"login repeats line {seen[row.login]}"))
            continue
        seen[row.login] = line
        good.append(row)
    return good, bad
