"""Where each copy of a filed image stands (docs/ARCHITECTURE.md, filing and expiry): a copy is
destroyed when its device confirmed the expiry order and did not download it after that
confirmation, or when it was never received; ordered, held or fetched after its confirmation
otherwise. What ``lightbox-admin copies`` and the audit report show.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

__all__ = [
    "COPY_STATUSES",
    "DESTROYED",
    "CopiesReport",
    "CopyRow",
    "as_datetime",
    "copy_status",
]


@dataclasses.dataclass(frozen=True)
class CopyRow:
    """One device's copy of one image, from the audit trail."""

    attachment_id: str
    device_id: str
    role: str  # sender | recipient | gateway
    received_at: dt.datetime | None
    order_id: str | None
    order_reason: str | None
    order_issued_at: dt.datetime | None
    confirmed_at: dt.datetime | None
    status: str = "held"  # one of COPY_STATUSES

    @property
    def destroyed(self) -> bool:
        return self.status in DESTROYED


COPY_STATUSES = ("destroyed", "never_received", "fetched_after_confirmation", "ordered", "held",
                 "not_received", "gateway")


DESTROYED = frozenset({"destroyed", "never_received"})


@dataclasses.dataclass(frozen=True)
class CopiesReport:
    attachment_id: str
    thread_id: str | None
    shared_at: dt.datetime | None
    filed_at: dt.datetime | None
    gateway_device_id: str | None
    filing_statement_id: str | None
    receipt_sha256: str | None
    not_filed_at: dt.datetime | None
    ciphertext_deleted_at: dt.datetime | None
    copies: list[CopyRow]

    @property
    def all_destroyed(self) -> bool:
        """Every device copy is accounted for: confirmed, and not downloaded again after."""
        held = [c for c in self.copies if c.role != "gateway"]
        return bool(held) and all(c.destroyed for c in held)


def as_datetime(value: Any) -> dt.datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def copy_status(c: dict[str, Any]) -> str:
    """One of :data:`COPY_STATUSES` for a copy as :meth:`FilingService._report` collects it."""
    if c["role"] == "gateway":
        return "gateway"
    if c["late_fetch"]:
        return "fetched_after_confirmation"
    if c["confirmed_at"] is not None:
        return "destroyed" if c["received_at"] is not None else "never_received"
    if c["issued_at"] is not None:
        return "ordered"
    return "held" if c["received_at"] is not None else "not_received"
