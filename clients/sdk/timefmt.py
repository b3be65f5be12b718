"""One way to write a time for a person: ``2026-12-03 14:05`` (docs/USER_GUIDE.md).

Why one format: a clinician reads times in the CLI, the desktop page, IT's tool and the record
gateway's messages, and compares them (when was it sent, when does this copy expire). A time
without a year, or in 12-hour form in one place and 24-hour in another, invites a wrong reading.
So every time a person reads is an ISO 8601-like date and a 24-hour time (RFC 3339 §5.6
``full-date``, a space, then ``HH:MM``), in the reader's local zone, and every date alone is
``YYYY-MM-DD``. The desktop page writes times with its one JavaScript twin, ``when()`` in
clients/desktop/static/app.js, which formats explicitly (never by the browser's locale).

Machine-readable output (CSV, JSON) keeps whatever its format says; this is for people.
"""

from __future__ import annotations

import datetime as dt
from typing import Final

__all__ = ["DATE_FORMAT", "TIME_FORMAT", "format_date", "format_time"]

TIME_FORMAT: Final = "%Y-%m-%d %H:%M"
DATE_FORMAT: Final = "%Y-%m-%d"


def _local(ts: float, tz: dt.tzinfo | None) -> dt.datetime:
    # fromtimestamp in UTC, then to the zone: the machine's local zone when tz is None
    # (astimezone() with no argument reads it, following TZ).
    return dt.datetime.fromtimestamp(ts, dt.UTC).astimezone(tz)


def format_time(ts: float, *, tz: dt.tzinfo | None = None) -> str:
    """``ts`` (seconds since the epoch) as ``YYYY-MM-DD HH:MM`` in ``tz`` (default: the
    local zone of this machine, which is the reader's)."""
    return _local(ts, tz).strftime(TIME_FORMAT)


def format_date(ts: float, *, tz: dt.tzinfo | None = None) -> str:
    """The date of ``ts`` as ``YYYY-MM-DD`` in ``tz`` (default: the local zone)."""
    return _local(ts, tz).strftime(DATE_FORMAT)
