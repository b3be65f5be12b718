"""How times read for people: one form everywhere a person reads a time (docs/USER_GUIDE.md):
an ISO-like date, 24-hour time and the user's local zone, ``2026-12-03 14:05 CET``."""

from __future__ import annotations

import datetime as dt

__all__ = ["local_time"]


def local_time(ts: float) -> str:
    """``ts`` (seconds since the epoch) in this machine's local zone."""
    return dt.datetime.fromtimestamp(ts, dt.UTC).astimezone().strftime("%Y-%m-%d %H:%M %Z")
