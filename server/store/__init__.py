"""Storage of the identity tables, one module per table group (STYLE.md: storage never speaks
HTTP). Every function takes an asyncpg connection (the caller owns the transaction) and raises
domain errors from server/errors.py.

    admins       IT administrator accounts
    users        users, their certificates and enrolment codes
    devices      devices and their certificates
    prekeys      signed and one-time prekeys (the atomic claim)
    pairing      linking a new device to an enrolled one
    sessions     login challenge nonces and rotating refresh tokens
    proofs       nonces of accepted request proofs (replay protection)
    lockout      failure counters with exponential backoff
    revocations  the newest organisation-signed revocation list per organisation
    bundles      recipients' key bundles (certificates and signed prekeys)
"""

from __future__ import annotations

import datetime as dt

__all__ = ["at", "unix"]


def at(seconds: float) -> dt.datetime:
    """Unix seconds as the timestamptz the tables use."""
    return dt.datetime.fromtimestamp(seconds, dt.UTC)


def unix(value: dt.datetime | None) -> int | None:
    """A timestamptz as integer unix seconds (None stays None)."""
    return None if value is None else int(value.timestamp())
