"""Filing routes (docs/PROTOCOL.md §15): the record gateways a sender adds to an image, and
where every copy of an image went (IT's ``lightbox-admin copies``). The logic is in
server/expiry.py; the websocket carries filing statements and expiry confirmations.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response

from protocol.api import DeviceBundle, UserDevices
from protocol.certs import ROLE_RECORD_GATEWAY
from protocol.errors import ErrorCode
from protocol.filing import CopiesList, CopiesReport, CopyInfo, GatewayList
from server.api import Endpoint, json_response
from server.authn import ADMIN_AUTH_ERRORS, DEVICE_AUTH_ERRORS, Authenticator, Principal
from server.copies import CopiesReport as Report
from server.db import Database
from server.errors import InvalidInput
from server.expiry import FilingService
from server.store import filings

__all__ = ["FilingRoutes"]

RequireDevice = Callable[[Request], Awaitable[Principal]]


def _t(value: dt.datetime | None) -> int | None:
    return None if value is None else int(value.timestamp())


def _uuid(value: str | None) -> str | None:
    if value is None or value == "":
        return None
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise InvalidInput(ErrorCode.VALIDATION_FAILED, "ids are UUIDs") from None


def wire_report(r: Report) -> CopiesReport:
    return CopiesReport(
        attachment_id=r.attachment_id, thread_id=r.thread_id, shared_at=_t(r.shared_at),
        filed_at=_t(r.filed_at), gateway_device_id=r.gateway_device_id,
        filing_statement_id=r.filing_statement_id, receipt_sha256=r.receipt_sha256,
        not_filed_at=_t(r.not_filed_at), ciphertext_deleted_at=_t(r.ciphertext_deleted_at),
        all_destroyed=r.all_destroyed,
        copies=[CopyInfo(device_id=c.device_id, role=c.role, received_at=_t(c.received_at),
                         order_id=c.order_id, order_reason=c.order_reason,
                         order_issued_at=_t(c.order_issued_at),
                         confirmed_at=_t(c.confirmed_at), status=c.status)
                for c in r.copies])


class FilingRoutes:
    def __init__(self, *, db: Database, service: FilingService, authn: Authenticator,
                 require_device: RequireDevice) -> None:
        self.db, self.service, self.authn = db, service, authn
        self.require_device = require_device

    def endpoints(self) -> list[Endpoint]:
        return [
            Endpoint("GET", "/v1/filing/gateways", self.gateways,
                     "The organisation's record-gateway devices: add them to every image "
                     "shared for direct care.", response=GatewayList, auth="device",
                     tag="filing", errors=list(DEVICE_AUTH_ERRORS)),
            Endpoint("GET", "/v1/admin/copies", self.copies,
                     "Where every copy of an image (?attachment_id=) or of a thread's images "
                     "(?thread_id=) went, from the audit trail.", response=CopiesList,
                     auth="admin", tag="admin",
                     errors=[*ADMIN_AUTH_ERRORS, ErrorCode.VALIDATION_FAILED,
                             ErrorCode.NOT_FOUND]),
        ]

    async def gateways(self, request: Request) -> Response:
        me = await self.require_device(request)
        async with self.db.pool.acquire() as conn:
            ids = await filings.org_gateways(conn, me.org_id, ROLE_RECORD_GATEWAY)
            rows = await conn.fetch(
                "SELECT u.user_id::text AS user_id, u.user_certificate, d.device_certificate, "
                "s.prekey FROM devices d JOIN users u USING (user_id) LEFT JOIN signed_prekeys "
                "s ON s.device_id = d.device_id WHERE d.device_id = ANY($1::uuid[]) "
                "ORDER BY u.user_id, d.created_at", sorted(ids))
        by_user: dict[str, UserDevices] = {}
        for r in rows:
            prev = by_user.get(r["user_id"])
            bundle = DeviceBundle(device_certificate=r["device_certificate"],
                                  signed_prekey=r["prekey"])
            by_user[r["user_id"]] = UserDevices(
                user_certificate=r["user_certificate"],
                devices=[*(prev.devices if prev else []), bundle])
        return json_response(GatewayList(
            users=list(by_user.values()),
            required=self.service.policy.requires_filing(me.org_id)))

    async def copies(self, request: Request) -> Response:
        await self.authn.require_admin(request)
        attachment_id = _uuid(request.query_params.get("attachment_id"))
        thread_id = _uuid(request.query_params.get("thread_id"))
        if (attachment_id is None) == (thread_id is None):
            raise InvalidInput(ErrorCode.VALIDATION_FAILED,
                               "give exactly one of attachment_id and thread_id")
        reports = await self.service.copies(attachment_id=attachment_id, thread_id=thread_id)
        return json_response(CopiesList(attachments=[wire_report(r) for r in reports]))
