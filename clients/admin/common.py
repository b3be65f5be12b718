"""What every ``lightbox-admin`` command shares: a refusal that did nothing, running one
relay call, and the relay client acting as the logged-in IT administrator.
"""

from __future__ import annotations

from typing import TypeVar

from clients.admin.session import (
    AdminSession,
)
from clients.sdk.http import RelayHTTP

__all__ = [
    "CommandError",
    "T",
    "admin_relay",
]


T = TypeVar("T")


class CommandError(Exception):
    """Nothing was done; the message says why (exit status 2)."""


def admin_relay(session: AdminSession) -> RelayHTTP:
    return RelayHTTP(session.server, admin_token=session.token)
