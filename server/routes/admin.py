"""The admin API used by IT's tool (docs/PROTOCOL.md §11): administrator login, provisioning,
user listing and detail, one device by id (whose it is, so that IT's tool refuses to revoke an
id no device has: docs/USER_GUIDE.md, IT), enrolment code re-issue, licence renewal and
revocation lists. The
logic is in server/login.py and server/provisioning.py."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from protocol.api import (
    AdminLogin,
    AdminToken,
    CertificateRenewal,
    DeviceSummary,
    EnrolmentReissue,
    EnrolmentReissued,
    ProvisionResult,
    ProvisionUsers,
    RevocationUpload,
    UserDetail,
    UserList,
    UserSummary,
)
from protocol.certs import MAX_REVOCATION_LIST_LENGTH
from protocol.errors import ErrorCode
from protocol.model import DeviceKind
from server.api import Endpoint, json_response, read_json
from server.authn import ADMIN_AUTH_ERRORS, Authenticator
from server.db import Database
from server.errors import InvalidInput, NotFound
from server.login import LoginService
from server.provisioning import AppliedRevocations, ProvisioningService
from server.store import devices, users

__all__ = ["AdminDevice", "AdminRoutes", "ProvisionResults"]

E = ErrorCode
_AUTH = list(ADMIN_AUTH_ERRORS)
_CERTS = [E.CERTIFICATE_INVALID, E.CERTIFICATE_EXPIRED, E.CERTIFICATE_REVOKED,
          E.CERTIFICATE_UNTRUSTED, E.LICENCE_EXPIRED]
_STATUSES = {"pending", "active", "suspended"}
# A revocation list may reach MAX_REVOCATION_LIST_LENGTH characters, plus the JSON around it.
REVOCATION_BODY_LIMIT = MAX_REVOCATION_LIST_LENGTH + 1024


class ProvisionResults(msgspec.Struct, frozen=True, kw_only=True):
    """Answer of POST /v1/admin/users: one result per user, in request order."""

    results: list[ProvisionResult]


class AdminDevice(msgspec.Struct, frozen=True, kw_only=True):
    """Answer of GET /v1/admin/devices/{device_id}: the device and whose it is."""

    device: DeviceSummary
    user_id: str
    login: str
    org_id: str


def summary(u: users.UserRecord, device_count: int) -> UserSummary:
    return UserSummary(user_id=u.user_id, org_id=u.org_id, login=u.login,
                       display_name=u.display_name, roles=u.roles, specialty=u.specialty,
                       department=u.department, status=u.status,
                       licence_expires_at=u.licence_expires_at, devices=device_count)


class AdminRoutes:
    def __init__(self, *, db: Database, authn: Authenticator, login: LoginService,
                 provisioning: ProvisioningService, max_body: int,
                 clock: Callable[[], float] = time.time) -> None:
        self.db, self.authn, self.login_service = db, authn, login
        self.provisioning, self.max_body, self.clock = provisioning, max_body, clock

    def endpoints(self) -> list[Endpoint]:
        return [
            Endpoint("POST", "/v1/admin/login", self.login, "Log in as an IT administrator.",
                     request=AdminLogin, response=AdminToken, tag="admin",
                     errors=[E.INVALID_CREDENTIALS, E.ACCOUNT_LOCKED]),
            Endpoint("POST", "/v1/admin/users", self.provision,
                     "Provision users (per-user results; a bad one does not stop the others).",
                     request=ProvisionUsers, response=ProvisionResults, auth="admin",
                     tag="admin", errors=_AUTH),
            Endpoint("GET", "/v1/admin/users", self.list_users,
                     "List users, optionally by a substring of login or name, and by status.",
                     response=UserList, auth="admin", tag="admin",
                     errors=[*_AUTH, E.VALIDATION_FAILED]),
            Endpoint("GET", "/v1/admin/users/{user_id}", self.user_detail,
                     "One user with their certificate, devices and enrolment state.",
                     response=UserDetail, auth="admin", tag="admin",
                     errors=[*_AUTH, E.NOT_FOUND]),
            Endpoint("GET", "/v1/admin/devices/{device_id}", self.device_detail,
                     "One device by id, with the login and organisation of its user.",
                     response=AdminDevice, auth="admin", tag="admin",
                     errors=[*_AUTH, E.NOT_FOUND]),
            Endpoint("PUT", "/v1/admin/users/{user_id}/certificate", self.renew,
                     "Licence renewal: a newer certificate for the same user and key.",
                     request=CertificateRenewal, response=UserSummary, auth="admin",
                     tag="admin", errors=[*_AUTH, *_CERTS, E.NOT_FOUND, E.CONFLICT]),
            Endpoint("POST", "/v1/admin/users/{user_id}/enrolment", self.reissue,
                     "A new enrolment code for a user who has not enrolled: a new certificate "
                     "(new identity key) and package; the old code stops working.",
                     request=EnrolmentReissue, response=EnrolmentReissued, auth="admin",
                     tag="admin", errors=[*_AUTH, *_CERTS, E.VALIDATION_FAILED, E.NOT_FOUND,
                                          E.CONFLICT, E.USER_ALREADY_ENROLLED,
                                          E.USER_SUSPENDED]),
            Endpoint("POST", "/v1/admin/revocations", self.revoke,
                     "Apply an organisation-signed revocation list.", request=RevocationUpload,
                     response=AppliedRevocations, auth="admin", tag="admin",
                     errors=[*_AUTH, *_CERTS, E.CONFLICT], body_limit=REVOCATION_BODY_LIMIT),
        ]

    async def login(self, request: Request) -> Response:
        body = await read_json(request, AdminLogin, self.max_body)
        return json_response(await self.login_service.admin_login(body.login, body.password))

    async def provision(self, request: Request) -> Response:
        await self.authn.require_admin(request)
        body = await read_json(request, ProvisionUsers, self.max_body)
        results = await self.provisioning.provision(list(body.users))
        return json_response(ProvisionResults(results=results))

    async def list_users(self, request: Request) -> Response:
        await self.authn.require_admin(request)
        q = request.query_params.get("q") or None
        status = request.query_params.get("status") or None
        if (q is not None and len(q) > 64) or (status is not None and status not in _STATUSES):
            raise InvalidInput(detail="q is at most 64 characters; status is pending, active "
                                      "or suspended")
        async with self.db.pool.acquire() as conn:
            found = await users.list_users(conn, q=q, status=status)
        return json_response(UserList(users=[summary(u, u.devices) for u in found]))

    async def user_detail(self, request: Request) -> Response:
        await self.authn.require_admin(request)
        async with self.db.pool.acquire() as conn:
            user = await users.get_user(conn, request.path_params["user_id"])
            if user is None:
                raise NotFound(detail="no such user")
            devs = await devices.list_devices(conn, user.user_id)
            enrolment, expires_at = await users.enrolment_state(conn, user.user_id,
                                                                now=self.clock())
        active = sum(d.status == "active" for d in devs)
        return json_response(UserDetail(
            user=summary(user, active), user_certificate=user.user_certificate,
            devices=[DeviceSummary(device_id=d.device_id, kind=DeviceKind(d.kind),
                                   status=d.status, created_at=d.created_at,
                                   last_seen_at=d.last_seen_at) for d in devs],
            enrolment=enrolment, enrolment_expires_at=expires_at))

    async def device_detail(self, request: Request) -> Response:
        await self.authn.require_admin(request)
        try:
            device_id = str(uuid.UUID(request.path_params["device_id"]))
        except ValueError:  # as every route named by a UUID: no such one (404)
            raise NotFound(detail="no such device") from None
        async with self.db.pool.acquire() as conn:
            d = await devices.get_device(conn, device_id)
            user = None if d is None else await users.get_user(conn, d.user_id)
        if d is None or user is None:
            raise NotFound(detail="no such device")
        return json_response(AdminDevice(
            device=DeviceSummary(device_id=d.device_id, kind=DeviceKind(d.kind),
                                 status=d.status, created_at=d.created_at,
                                 last_seen_at=d.last_seen_at),
            user_id=user.user_id, login=user.login, org_id=user.org_id))

    async def renew(self, request: Request) -> Response:
        await self.authn.require_admin(request)
        body = await read_json(request, CertificateRenewal, self.max_body)
        user = await self.provisioning.renew_certificate(request.path_params["user_id"],
                                                         body.user_certificate)
        async with self.db.pool.acquire() as conn:
            count = await devices.count_active(conn, user.user_id)
        return json_response(summary(user, count))

    async def reissue(self, request: Request) -> Response:
        await self.authn.require_admin(request)
        body = await read_json(request, EnrolmentReissue, self.max_body)
        return json_response(await self.provisioning.reissue_enrolment(
            request.path_params["user_id"], body))

    async def revoke(self, request: Request) -> Response:
        await self.authn.require_admin(request)
        body = await read_json(request, RevocationUpload, REVOCATION_BODY_LIMIT)
        return json_response(await self.provisioning.apply_revocations(body.revocation_list))
