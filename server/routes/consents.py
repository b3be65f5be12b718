"""Consent routes (docs/PROTOCOL.md §13): register a token, read it back, revoke it, and a
recipient's report of an image the consent does not name. The logic is in server/consents.py.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response

from protocol.api import ConsentInfo, ConsentMismatch, ConsentRegister, ConsentRevoked
from protocol.errors import ErrorCode
from server.api import Endpoint, json_response, read_json
from server.authn import DEVICE_AUTH_ERRORS, Principal
from server.consents import ConsentService
from server.errors import NotFound
from server.store.consents import ConsentRecord

__all__ = ["ConsentRoutes"]

E = ErrorCode
_AUTH = list(DEVICE_AUTH_ERRORS)
RequireDevice = Callable[[Request], Awaitable[Principal]]


def _ts(value: dt.datetime | None) -> int | None:
    return None if value is None else int(value.timestamp())


def _consent_id(request: Request) -> str:
    try:
        return str(uuid.UUID(request.path_params["consent_id"]))
    except ValueError:
        raise NotFound(E.NOT_FOUND, "no such consent") from None


class ConsentRoutes:
    def __init__(self, *, service: ConsentService, require_device: RequireDevice,
                 max_body: int) -> None:
        self.service, self.require_device, self.max_body = service, require_device, max_body

    def endpoints(self) -> list[Endpoint]:
        return [
            Endpoint("POST", "/v1/consents", self.register,
                     "Register a consent token (agreed or refused) after verifying it against "
                     "the issuer's certificate.", request=ConsentRegister, response=ConsentInfo,
                     status=201, auth="device", tag="consent",
                     errors=[*_AUTH, E.CONSENT_INVALID, E.CONSENT_EXPIRED, E.CONFLICT]),
            Endpoint("GET", "/v1/consents/{consent_id}", self.get,
                     "A consent's token and status, for its participants.",
                     response=ConsentInfo, auth="device", tag="consent",
                     errors=[*_AUTH, E.NOT_FOUND]),
            Endpoint("POST", "/v1/consents/{consent_id}/revoke", self.revoke,
                     "Withdraw a consent (issuer or privacy officer): undelivered messages are "
                     "withdrawn and delivered copies ordered to expire.",
                     response=ConsentRevoked, auth="device", tag="consent",
                     errors=[*_AUTH, E.NOT_FOUND, E.FORBIDDEN]),
            Endpoint("POST", "/v1/consents/{consent_id}/mismatch", self.mismatch,
                     "Report an image the consent does not name (it was not shown); audited.",
                     request=ConsentMismatch, status=204, auth="device", tag="consent",
                     errors=[*_AUTH, E.NOT_FOUND]),
        ]

    def _info(self, r: ConsentRecord) -> ConsentInfo:
        return ConsentInfo(consent_id=r.consent_id, token=r.token,
                           status=r.status(self.service.now()),
                           issuer_user_id=r.issuer_user_id, org_id=r.org_id,
                           registered_at=int(r.registered_at.timestamp()),
                           revoked_at=_ts(r.revoked_at))

    async def register(self, request: Request) -> Response:
        me = await self.require_device(request)
        body = await read_json(request, ConsentRegister, self.max_body)
        record, created = await self.service.register(me, body.token)
        return json_response(self._info(record), status=201 if created else 200)

    async def get(self, request: Request) -> Response:
        me = await self.require_device(request)
        return json_response(self._info(await self.service.get(me, _consent_id(request))))

    async def revoke(self, request: Request) -> Response:
        me = await self.require_device(request)
        result = await self.service.revoke(me, _consent_id(request))
        revoked_at = _ts(result.record.revoked_at)
        assert revoked_at is not None
        return json_response(ConsentRevoked(
            consent_id=result.record.consent_id, revoked_at=revoked_at,
            withdrawn_messages=result.withdrawn, expiry_orders=result.orders))

    async def mismatch(self, request: Request) -> Response:
        me = await self.require_device(request)
        consent_id = _consent_id(request)
        body = await read_json(request, ConsentMismatch, self.max_body)
        await self.service.report_mismatch(me, consent_id, message_id=body.message_id,
                                           attachment_id=body.attachment_id,
                                           reason=body.reason)
        return Response(status_code=204)
