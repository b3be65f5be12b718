"""One time format for people (clients/sdk/timefmt.py): ISO-like date, 24-hour time, the reader's
local zone, whatever the locale; and the places people read times use it."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterator
from zoneinfo import ZoneInfo

import pytest

from clients.sdk import timefmt
from protocol.filing import CopiesList, CopiesReport

# 2026-12-03 14:05:42 UTC: an afternoon, so a 12-hour clock would show it differently.
AFTERNOON = int(dt.datetime(2026, 12, 3, 14, 5, 42, tzinfo=dt.UTC).timestamp())


@pytest.fixture
def local_zone(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The machine's local zone set to one far from UTC (and restored afterwards)."""
    monkeypatch.setenv("TZ", "Australia/Sydney")
    time.tzset()
    yield "Australia/Sydney"
    monkeypatch.undo()
    time.tzset()


def test_a_time_has_its_year_and_a_24_hour_clock() -> None:
    assert timefmt.format_time(AFTERNOON, tz=dt.UTC) == "2026-12-03 14:05"
    assert timefmt.format_time(AFTERNOON, tz=ZoneInfo("America/New_York")) == "2026-12-03 09:05"
    assert timefmt.format_date(AFTERNOON, tz=dt.UTC) == "2026-12-03"


def test_a_time_is_in_the_local_zone_by_default(local_zone: str) -> None:
    # Sydney is UTC+11 in December: the next day there
    assert timefmt.format_time(AFTERNOON) == "2026-12-04 01:05"
    assert timefmt.format_date(AFTERNOON) == "2026-12-04"


def test_the_cli_and_the_admin_tool_write_times_with_the_one_helper(local_zone: str) -> None:
    from clients.admin import ops as adminops
    from clients.clinician import shell

    expected = "2026-12-04 01:05"
    assert shell.when(AFTERNOON) == expected
    lines = adminops.format_copies(CopiesList(attachments=[CopiesReport(
        attachment_id="a" * 8, thread_id=None, shared_at=AFTERNOON, filed_at=AFTERNOON,
        gateway_device_id="g", filing_statement_id="s", receipt_sha256="0" * 64,
        not_filed_at=None, ciphertext_deleted_at=None, all_destroyed=False, copies=[])]))
    assert any(f"filed {expected} " in line for line in lines), lines
