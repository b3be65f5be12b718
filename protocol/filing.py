"""HTTP bodies of filing and expiry (docs/PROTOCOL.md §15): the organisation's record gateways
a sender must add to an image, and ``lightbox-admin copies``, where every copy of an image went.

Plain data, strict like every wire struct (STYLE.md). Times are integer Unix seconds (UTC) or
null when the event has not happened.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

from protocol.api import UserDevices

__all__ = ["CopiesList", "CopiesReport", "CopyInfo", "GatewayList"]

_Time = Annotated[int, msgspec.Meta(ge=0, le=2**53 - 1)] | None


class GatewayList(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """``GET /v1/filing/gateways``: the caller's organisation's active record-gateway devices,
    with certificates and signed prekeys (the client verifies each chain before sealing)."""

    users: list[UserDevices]
    required: bool  # the organisation's policy refuses direct-care images without them


class CopyInfo(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """One device's copy of one image."""

    device_id: str
    role: str  # sender | recipient | gateway
    received_at: _Time  # shared (sender) or first downloaded (recipient, gateway)
    order_id: str | None
    order_reason: str | None  # filed | consent_revoked | hard_limit
    order_issued_at: _Time
    confirmed_at: _Time  # the device's signed confirmation that it shredded its copy
    # What the audit proves (server/expiry.py COPY_STATUSES): destroyed | never_received |
    # fetched_after_confirmation | ordered | held | not_received | gateway
    status: str = ""


class CopiesReport(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    attachment_id: str
    thread_id: str | None
    shared_at: _Time
    filed_at: _Time
    gateway_device_id: str | None
    filing_statement_id: str | None
    receipt_sha256: str | None  # hex
    not_filed_at: _Time  # the hard limit passed without a filing
    ciphertext_deleted_at: _Time
    all_destroyed: bool  # every device copy confirmed shredded, none downloaded after that
    copies: list[CopyInfo]


class CopiesList(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """``GET /v1/admin/copies?attachment_id=`` or ``?thread_id=``."""

    attachments: list[CopiesReport]
