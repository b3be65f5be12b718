"""Consent routes (docs/PROTOCOL.md §13): register a token, read it back, list the caller's,
revoke it, and a recipient's report of an image the consent does not name; for the privacy
office (admin-authenticated, docs/SECURITY.md): see a consent's withdrawal, and withdraw it.
The logic is in server/consents.py.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response

from protocol.api import (
    ConsentCopy,
    ConsentInfo,
    ConsentList,
    ConsentMismatch,
    ConsentRegister,
    ConsentRevoke,
    ConsentRevoked,
    ConsentWithdrawal,
)
from protocol.errors import ErrorCode
from server.api import Endpoint, json_response, read_json
from server.authn import ADMIN_AUTH_ERRORS, DEVICE_AUTH_ERRORS, AdminPrincipal, Principal
from server.consents import ConsentService, RevokeResult
from server.errors import InvalidInput, NotFound
from server.store.consents import ConsentRecord

__all__ = ["ConsentRoutes"]

E = ErrorCode
_AUTH = list(DEVICE_AUTH_ERRORS)
_ADMIN = list(ADMIN_AUTH_ERRORS)
RequireDevice = Callable[[Request], Awaitable[Principal]]
RequireAdmin = Callable[[Request], Awaitable[AdminPrincipal]]


def _ts(value: dt.datetime | None) -> int | None:
    return None if value is None else int(value.timestamp())


def _consent_id(request: Request) -> str:
    try:
        return str(uuid.UUID(request.path_params["consent_id"]))
    except ValueError:
        raise NotFound(E.NOT_FOUND, "no such consent") from None


class ConsentRoutes:
    def __init__(self, *, service: ConsentService, require_device: RequireDevice,
                 require_admin: RequireAdmin, max_body: int) -> None:
        self.service, self.require_device, self.max_body = service, require_device, max_body
        self.require_admin = require_admin

    def endpoints(self) -> list[Endpoint]:
        return [
            Endpoint("POST", "/v1/consents", self.register,
                     "Register a consent token (agreed or refused) after verifying it against "
                     "the issuer's certificate.", request=ConsentRegister, response=ConsentInfo,
                     status=201, auth="device", tag="consent",
                     errors=[*_AUTH, E.CONSENT_INVALID, E.CONSENT_EXPIRED, E.CONFLICT]),
            Endpoint("GET", "/v1/consents", self.list_mine,
                     "The consents the caller captured (issued), newest first.",
                     response=ConsentList, auth="device", tag="consent", errors=_AUTH),
            Endpoint("GET", "/v1/consents/{consent_id}", self.get,
                     "A consent's token and status, for its participants.",
                     response=ConsentInfo, auth="device", tag="consent",
                     errors=[*_AUTH, E.NOT_FOUND]),
            Endpoint("POST", "/v1/consents/{consent_id}/revoke", self.revoke,
                     "Withdraw a consent (issuer or privacy officer): undelivered messages are "
                     "withdrawn and delivered copies ordered to expire. The body (a reason, "
                     "for the audit log) is optional.",
                     request=ConsentRevoke, response=ConsentRevoked, auth="device",
                     tag="consent", errors=[*_AUTH, E.NOT_FOUND, E.FORBIDDEN,
                                            E.VALIDATION_FAILED]),
            Endpoint("POST", "/v1/consents/{consent_id}/mismatch", self.mismatch,
                     "Report an image the consent does not name (it was not shown); audited.",
                     request=ConsentMismatch, status=204, auth="device", tag="consent",
                     errors=[*_AUTH, E.NOT_FOUND]),
            Endpoint("GET", "/v1/admin/consents/{consent_id}", self.admin_show,
                     "The privacy office's view of a consent: status, who withdrew it and "
                     "why, messages withdrawn before delivery, every copy and its expiry.",
                     response=ConsentWithdrawal, auth="admin", tag="admin",
                     errors=[*_ADMIN, E.NOT_FOUND]),
            Endpoint("POST", "/v1/admin/consents/{consent_id}/revoke", self.admin_revoke,
                     "Withdraw a consent for the privacy office (a reason is required and "
                     "audited): the same effects as the issuing clinician's withdrawal.",
                     request=ConsentRevoke, response=ConsentRevoked, auth="admin",
                     tag="admin", errors=[*_ADMIN, E.NOT_FOUND, E.VALIDATION_FAILED]),
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

    async def list_mine(self, request: Request) -> Response:
        me = await self.require_device(request)
        return json_response(ConsentList(consents=[self._info(r) for r in
                                                   await self.service.issued_by(me)]))

    async def _reason(self, request: Request, *, required: bool) -> str:
        if not required and request.headers.get("content-length", "0") == "0" and \
                "content-type" not in request.headers:
            return ""
        reason = (await read_json(request, ConsentRevoke, self.max_body)).reason.strip()
        if required and not reason:
            raise InvalidInput(E.VALIDATION_FAILED, "say why the consent is withdrawn "
                               "(reason; no patient details)")
        return reason

    @staticmethod
    def _revoked(result: RevokeResult) -> Response:
        revoked_at = _ts(result.record.revoked_at)
        assert revoked_at is not None
        return json_response(ConsentRevoked(
            consent_id=result.record.consent_id, revoked_at=revoked_at,
            withdrawn_messages=result.withdrawn, expiry_orders=result.orders,
            already=result.already))

    async def revoke(self, request: Request) -> Response:
        me = await self.require_device(request)
        consent_id = _consent_id(request)
        reason = await self._reason(request, required=False)
        return self._revoked(await self.service.revoke(me, consent_id, reason=reason))

    async def admin_revoke(self, request: Request) -> Response:
        admin = await self.require_admin(request)
        consent_id = _consent_id(request)
        reason = await self._reason(request, required=True)
        return self._revoked(await self.service.revoke_as_admin(admin, consent_id,
                                                                reason=reason))

    async def admin_show(self, request: Request) -> Response:
        await self.require_admin(request)
        w = await self.service.withdrawal(_consent_id(request))
        revocation = w.revocation or {}
        return json_response(ConsentWithdrawal(
            consent=self._info(w.record), issuer_login=w.issuer_login,
            issuer_name=w.issuer_name, decision=w.claims.decision.value,
            purposes=[p.value for p in w.claims.purposes],
            revoked_by=w.revoked_by, reason=revocation.get("reason"),
            messages=w.messages,
            withdrawn_message_ids=list(revocation.get("withdrawn_message_ids") or []),
            copies=[ConsentCopy(attachment_id=c.attachment_id, device_id=c.device_id,
                                device_kind=c.device_kind, user_id=c.user_id, login=c.login,
                                display_name=c.display_name, reason=c.reason,
                                ordered_at=_ts(c.ordered_at), confirmed_at=_ts(c.confirmed_at))
                    for c in w.copies]))

    async def mismatch(self, request: Request) -> Response:
        me = await self.require_device(request)
        consent_id = _consent_id(request)
        body = await read_json(request, ConsentMismatch, self.max_body)
        await self.service.report_mismatch(me, consent_id, message_id=body.message_id,
                                           attachment_id=body.attachment_id,
                                           reason=body.reason)
        return Response(status_code=204)
