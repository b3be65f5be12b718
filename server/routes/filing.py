"""Filing routes (docs/PROTOCOL.md §15): the record gateways a sender adds to an image, and
where every copy of an image went (IT's ``lightbox-admin copies``). The logic is in
server/expiry.py; the websocket carries filing statements and expiry confirmations.
"""

from __future__ import annotations

import datetime as dt
import re
import uuid
from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response

from protocol.certs import ROLE_RECORD_GATEWAY
from protocol.errors import ErrorCode
from protocol.filing import CopiesList, CopiesReport, CopyInfo, GatewayList
from server.api import Endpoint, json_response
from server.authn import ADMIN_AUTH_ERRORS, DEVICE_AUTH_ERRORS, Authenticator, Principal
from server.copies import CopiesReport as Report
from server.db import Database
from server.errors import InvalidInput
from server.expiry import FilingService
from server.store import bundles, filings, threads

__all__ = ["FilingRoutes"]

RequireDevice = Callable[[Request], Awaitable[Principal]]


_PREFIX = re.compile(r"[0-9a-f]{8,31}")  # a consult id's start, as `lightbox` prints it


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
            users = await bundles.key_bundles(conn, device_ids=sorted(ids))
        return json_response(GatewayList(
            users=users,
            required=self.service.policy.requires_filing(me.org_id)))

    async def copies(self, request: Request) -> Response:
        await self.authn.require_admin(request)
        attachment_id = _uuid(request.query_params.get("attachment_id"))
        thread_id = await self._thread_id(request.query_params.get("thread_id"))
        if (attachment_id is None) == (thread_id is None):
            raise InvalidInput(ErrorCode.VALIDATION_FAILED,
                               "give exactly one of attachment_id and thread_id")
        if thread_id == "":  # a short id no consult has
            return json_response(CopiesList(attachments=[]))
        reports = await self.service.copies(attachment_id=attachment_id, thread_id=thread_id)
        return json_response(CopiesList(attachments=[wire_report(r) for r in reports]))

    async def _thread_id(self, given: str | None) -> str | None:
        """A consult's id, whole, or as its first 8 to 31 hex digits: the short form the
        clinicians' screens print, which is what they read out to IT. A prefix two consults
        share is refused (give more of it); one no consult has is "", answered as an unknown
        whole id is (an empty list: no image was shared in it)."""
        if given is None or not _PREFIX.fullmatch(given):
            return _uuid(given)
        async with self.db.pool.acquire() as conn:
            found = await threads.ids_starting(conn, given)
        if len(found) > 1:
            raise InvalidInput(ErrorCode.VALIDATION_FAILED,
                               f"more than one consult id starts with {given}: give more of it")
        return found[0] if found else ""
