"""Where each copy of a filed image stands (server/copies.py): the status of one copy from
what the audit trail says of it, and when a report counts every copy as gone."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from server.copies import COPY_STATUSES, CopiesReport, CopyRow, as_datetime, copy_status

AT = dt.datetime(2026, 12, 3, 9, 30, tzinfo=dt.UTC)


def copy(role: str = "recipient", *, received: bool = False, issued: bool = False,
         confirmed: bool = False, late_fetch: bool = False) -> dict[str, Any]:
    return {"role": role, "received_at": AT if received else None,
            "issued_at": AT if issued else None, "confirmed_at": AT if confirmed else None,
            "late_fetch": late_fetch}


@pytest.mark.parametrize(("c", "status"), [
    (copy(), "not_received"),
    (copy(received=True), "held"),
    (copy(received=True, issued=True), "ordered"),
    (copy(received=True, issued=True, confirmed=True), "destroyed"),
    (copy(issued=True, confirmed=True), "never_received"),
    (copy(received=True, issued=True, confirmed=True, late_fetch=True),
     "fetched_after_confirmation"),
    (copy("gateway", received=True), "gateway"),
    (copy("sender", received=True, issued=True, confirmed=True), "destroyed"),
])
def test_a_copys_status_follows_the_audit_trail(c: dict[str, Any], status: str) -> None:
    assert copy_status(c) == status
    assert status in COPY_STATUSES


def row(role: str, status: str) -> CopyRow:
    return CopyRow("a", f"{role}-device", role, AT, None, None, None, None, status)


def report(*copies: CopyRow) -> CopiesReport:
    return CopiesReport("a", None, None, None, None, None, None, None, None, list(copies))


def test_every_copy_is_gone_only_when_each_device_copy_is_destroyed_or_never_received() -> None:
    assert report(row("sender", "destroyed"), row("recipient", "never_received"),
                  row("gateway", "gateway")).all_destroyed
    assert not report(row("sender", "destroyed"),
                      row("recipient", "fetched_after_confirmation")).all_destroyed
    assert not report(row("sender", "destroyed"), row("recipient", "ordered")).all_destroyed
    assert not report(row("gateway", "gateway")).all_destroyed  # no device copy to account for
    assert not report().all_destroyed


def test_audit_times_are_read_leniently() -> None:
    assert as_datetime("2026-12-03T09:30:00Z") == AT
    assert as_datetime("2026-12-03T09:30:00+00:00") == AT
    assert as_datetime("yesterday") is None
    assert as_datetime(None) is None
    assert as_datetime(1_800_000_000) is None
