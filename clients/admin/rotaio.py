"""Rota files for ``lightbox-admin rota import``: CSV and iCalendar (RFC 5545), parsed into
shifts with a per-row report (docs/OPERATIONS.md "On-call rotas").

**CSV**: UTF-8 (BOM accepted), a header row with ``start``, ``end``, ``primary`` and
``backups`` (extra columns ignored). ``start``/``end`` are ISO 8601 date-times; one without a
UTC offset is read in the ``tz`` given (IANA name, default UTC). ``primary`` is a login or
user id; ``backups`` are logins or user ids in escalation order, separated by ``;``.

**iCalendar**: each ``VEVENT`` is a shift, ``DTSTART`` to ``DTEND`` (or ``DURATION``); its
``ATTENDEE``\\ s are the ladder in file order, the one with ``ROLE=CHAIR`` (if any) first. An
attendee is named by its ``CN`` parameter, or else by the local part of its ``mailto:``
address; either must be a login (or user id). Parsing is the ``icalendar`` library's, never
ours. All-day and recurring events are refused per event (export the rota expanded).

A file over :data:`~clients.admin.csvio.MAX_CSV_BYTES`, or one that is not a CSV with the columns /
not an iCalendar stream, is refused whole (:class:`~clients.admin.csvio.CsvError`); every other
problem (bad or missing dates, an end before the start, nobody named) is reported per row and
the good rows are kept. Unknown users are reported per row by the relay.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import zoneinfo
from typing import Any

import icalendar

from clients.admin.csvio import CsvError, csv_records, decode_csv
from protocol.errors import ErrorCode

__all__ = ["RotaRowError", "ShiftRow", "parse_rota", "parse_rota_csv", "parse_rota_ics"]

CSV_COLUMNS = ("start", "end", "primary", "backups")
MAX_ROWS = 1000


@dataclasses.dataclass(frozen=True)
class ShiftRow:
    line: int  # the CSV line, or the event's position in the calendar (1-based)
    starts_at: int
    ends_at: int
    ladder: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class RotaRowError:
    line: int
    what: str  # the row's primary, or the event's UID
    reason: str


def _zone(tz: str) -> dt.tzinfo:
    try:
        return zoneinfo.ZoneInfo(tz)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
        raise CsvError(ErrorCode.ROTA_INVALID, f"unknown time zone {tz!r}") from exc


def _when(text: str, what: str, zone: dt.tzinfo) -> int:
    try:
        t = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"{what} {text.strip()[:40]!r} is not an ISO 8601 date-time") from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=zone)
    return int(t.timestamp())


def _check(start: int, end: int, ladder: list[str]) -> None:
    if end <= start:
        raise ValueError("the shift ends before it starts")
    if not ladder:
        raise ValueError("the shift names nobody")
    if len(set(ladder)) != len(ladder):
        raise ValueError("a person appears twice on the ladder")


def parse_rota_csv(data: bytes, *, tz: str = "UTC") -> tuple[list[ShiftRow], list[RotaRowError]]:
    zone = _zone(tz)
    good: list[ShiftRow] = []
    bad: list[RotaRowError] = []
    for line, values, problem in csv_records(data, CSV_COLUMNS, max_rows=MAX_ROWS,
                                             extra_fields=True):
        if problem is not None:
            bad.append(RotaRowError(line, "", problem))
            continue
        primary = values["primary"].strip()
        ladder = [primary] if primary else []
        ladder += [b.strip() for b in values["backups"].split(";") if b.strip()]
        try:
            start = _when(values["start"], "start", zone)
            end = _when(values["end"], "end", zone)
            _check(start, end, ladder)
        except ValueError as exc:
            bad.append(RotaRowError(line, primary, str(exc)))
            continue
        good.append(ShiftRow(line, start, end, tuple(ladder)))
    return good, bad


def _attendee_name(att: Any) -> str:
    cn = str(att.params.get("CN", "")).strip()
    if cn:
        return cn
    addr = str(att).strip()
    if addr.lower().startswith("mailto:"):
        addr = addr[len("mailto:"):]
    return addr.split("@", 1)[0].strip()


def _ics_time(value: Any, what: str, zone: dt.tzinfo) -> int:
    t = getattr(value, "dt", None)
    if isinstance(t, dt.datetime):
        if t.tzinfo is None:
            t = t.replace(tzinfo=zone)
        return int(t.timestamp())
    if isinstance(t, dt.date):
        raise ValueError(f"{what} is a date: an all-day event is not a shift (give times)")
    raise ValueError(f"{what} is missing or not a date-time")


def parse_rota_ics(data: bytes, *, tz: str = "UTC") -> tuple[list[ShiftRow], list[RotaRowError]]:
    zone = _zone(tz)
    text = decode_csv(data)
    try:
        cal = icalendar.Calendar.from_ical(text)
    except (ValueError, KeyError, IndexError) as exc:
        raise CsvError(ErrorCode.ROTA_INVALID, f"not an iCalendar file: {exc}") from exc
    good: list[ShiftRow] = []
    bad: list[RotaRowError] = []
    for n, event in enumerate(cal.walk("VEVENT"), start=1):
        if n > MAX_ROWS:
            raise CsvError(ErrorCode.ROTA_INVALID, f"more than {MAX_ROWS} events")
        uid = str(event.get("UID", ""))[:64]
        try:
            if event.get("RRULE") is not None:
                raise ValueError("recurring events are not supported: export the rota expanded")
            start = _ics_time(event.get("DTSTART"), "DTSTART", zone)
            if event.get("DTEND") is not None:
                end = _ics_time(event.get("DTEND"), "DTEND", zone)
            elif event.get("DURATION") is not None:
                end = start + int(event.decoded("DURATION").total_seconds())
            else:
                raise ValueError("DTEND or DURATION is missing")
            attendees = event.get("ATTENDEE") or []
            if not isinstance(attendees, list):
                attendees = [attendees]
            chairs = [a for a in attendees if str(a.params.get("ROLE", "")).upper() == "CHAIR"]
            ordered = chairs[:1] + [a for a in attendees if a not in chairs[:1]]
            ladder = [name for name in (_attendee_name(a) for a in ordered) if name]
            _check(start, end, ladder)
        except ValueError as exc:
            bad.append(RotaRowError(n, uid, str(exc)))
            continue
        good.append(ShiftRow(n, start, end, tuple(ladder)))
    return good, bad


def parse_rota(name: str, data: bytes, *, tz: str = "UTC"
               ) -> tuple[list[ShiftRow], list[RotaRowError]]:
    """By file name: ``.ics`` / ``.ical`` is iCalendar, anything else CSV."""
    if name.lower().endswith((".ics", ".ical")):
        return parse_rota_ics(data, tz=tz)
    return parse_rota_csv(data, tz=tz)
