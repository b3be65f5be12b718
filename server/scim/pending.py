"""The queue of directory users waiting for IT's signature, on the admin API (admin token):

* ``GET /v1/admin/directory/pending``: active directory users no certificate was signed for,
  with the login, display name and roles IT's tool puts in the certificate;
* ``POST /v1/admin/directory/pending/{directory_id}``: the provisioning row IT's tool made for
  one of them (certificate signed with the organisation key on IT's workstation, enrolment
  package sealed under a code), provisioned and linked to the directory user in one
  transaction;
* ``POST /v1/admin/directory/renewals/{user_id}``: a certificate renewed as a renewal in the
  same listing asks (a directory rename, a role the IdP grants: server/renewals.py), stored
  like a licence renewal (same user, organisation and identity key, newer) and the request
  closed in one transaction.

The relay checks what it can without being able to sign: the certificate verifies under the
organisation's pinned key and names the directory user's organisation, the login is the
directory's ``userName``, and the directory user is still pending at the version IT read
(``conflict`` otherwise: the directory changed it, list again); a renewed certificate must
say exactly the display name and roles asked and keep everything else the old one said.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from protocol.directory import (
    MAX_PENDING,
    PendingRenewal,
    PendingUser,
    PendingUsers,
    Renewed,
    RenewPending,
    SignedPending,
    SignPending,
)
from protocol.errors import ErrorCode
from server import audit
from server.api import Endpoint, json_response, read_json
from server.authn import ADMIN_AUTH_ERRORS, Authenticator
from server.db import Database
from server.errors import Conflict, InvalidInput, NotFound
from server.orgidentity import IdentitySettings
from server.provisioning import ProvisioningService
from server.scim.schema import CLINICIAN_SCHEMA
from server.store import directory, renewals, users

__all__ = ["PendingRoutes", "display_name"]

E = ErrorCode
_CERTS = [E.CERTIFICATE_INVALID, E.CERTIFICATE_EXPIRED, E.CERTIFICATE_REVOKED,
          E.CERTIFICATE_UNTRUSTED, E.LICENCE_EXPIRED]


def display_name(resource: dict[str, Any], user_name: str) -> str:
    """displayName, else name.formatted, else given and family name, else the userName
    (RFC 7643 §4.1.1), at most 200 characters as certificates allow."""
    name = resource.get("name") or {}
    parts = " ".join(p for p in (name.get("givenName"), name.get("familyName")) if p)
    for candidate in (resource.get("displayName"), name.get("formatted"), parts, user_name):
        if isinstance(candidate, str) and candidate.strip():
            return candidate.strip()[:200]
    return user_name[:200]


_CLINICIAN_FIELDS = {"licenceType": "licence_type", "licenceNumber": "licence_number",
                     "jurisdiction": "jurisdiction", "licenceExpires": "licence_expires",
                     "specialty": "specialty", "department": "department"}


def _clinician(resource: dict[str, Any]) -> dict[str, str]:
    """The Lightbox extension's strings (RFC 7643 §3.3: under the extension's URN)."""
    ext = resource.get(CLINICIAN_SCHEMA) or {}
    return {field: value[:200] for key, field in _CLINICIAN_FIELDS.items()
            if isinstance(value := ext.get(key), str) and value.strip()}


class PendingRoutes:
    def __init__(self, *, db: Database, authn: Authenticator, provisioning: ProvisioningService,
                 identity: IdentitySettings, max_body: int,
                 clock: Callable[[], float] = time.time) -> None:
        self.db, self.authn, self.provisioning = db, authn, provisioning
        self.identity, self.max_body, self.clock = identity, max_body, clock

    def endpoints(self) -> list[Endpoint]:
        return [
            Endpoint("GET", "/v1/admin/directory/pending", self.pending,
                     "Directory (SCIM) users waiting for IT to sign their certificate.",
                     response=PendingUsers, auth="admin", tag="admin",
                     errors=list(ADMIN_AUTH_ERRORS)),
            Endpoint("POST", "/v1/admin/directory/pending/{directory_id}", self.sign,
                     "Provision a pending directory user with the certificate IT signed.",
                     request=SignPending, response=SignedPending, auth="admin", tag="admin",
                     errors=[*ADMIN_AUTH_ERRORS, *_CERTS, E.VALIDATION_FAILED, E.NOT_FOUND,
                             E.CONFLICT]),
            Endpoint("POST", "/v1/admin/directory/renewals/{user_id}", self.renew,
                     "Store the certificate IT renewed as the directory or the IdP asked.",
                     request=RenewPending, response=Renewed, auth="admin",
                     tag="admin", errors=[*ADMIN_AUTH_ERRORS, *_CERTS, E.VALIDATION_FAILED,
                                          E.NOT_FOUND, E.CONFLICT]),
        ]

    async def pending(self, request: Request) -> Response:
        await self.authn.require_admin(request)
        async with self.db.pool.acquire() as conn:
            entries = await directory.pending_users(conn, limit=MAX_PENDING)
            groups = await directory.groups_of(conn, [e.scim_id for e in entries])
            asked = await renewals.list_renewals(conn, limit=MAX_PENDING)
        return json_response(PendingUsers(renewals=[
            PendingRenewal(user_id=r.user_id, org_id=r.org_id, login=r.login,
                           user_certificate=r.user_certificate, display_name=r.display_name,
                           roles=r.roles, version=r.version) for r in asked], users=[
            PendingUser(directory_id=e.scim_id, org_id=e.org_id, login=e.user_name.lower(),
                        display_name=display_name(e.resource, e.user_name),
                        roles=self.identity.for_org(e.org_id).roles_for(
                            name for _, name in groups[e.scim_id]),
                        version=e.version, **_clinician(e.resource))
            for e in entries]))

    async def sign(self, request: Request) -> Response:
        principal = await self.authn.require_admin(request)
        body = await read_json(request, SignPending, self.max_body)
        directory_id = request.path_params["directory_id"]
        now = self.clock()
        async with self.db.pool.acquire() as conn, conn.transaction():
            entry = await directory.get_user(conn, None, directory_id, for_update=True)
            if entry is None:
                raise NotFound(detail="no such pending directory user")
            if entry.user_id is not None or not entry.active:
                raise Conflict(detail="the directory user is no longer pending")
            if entry.version != body.version:
                raise Conflict(detail="the directory changed this user: list the queue again")
            if body.user.login != entry.user_name.lower():
                raise InvalidInput(detail="the login must be the directory's userName")
            cert = await self.provisioning.provision_in(conn, body.user)
            if cert.org_id != entry.org_id:
                raise InvalidInput(E.CERTIFICATE_INVALID,
                                   "the certificate names another organisation")
            await directory.link_user(conn, entry.scim_id, cert.user_id, now=now)
            await audit.append(conn, "scim.user_signed", subject_kind="user",
                               subject_id=cert.user_id, actor_kind="admin",
                               actor_id=principal.admin_id,
                               details={"directory_id": entry.scim_id, "org_id": cert.org_id})
        return json_response(SignedPending(directory_id=entry.scim_id, user_id=cert.user_id,
                                           login=body.user.login))

    async def renew(self, request: Request) -> Response:
        principal = await self.authn.require_admin(request)
        body = await read_json(request, RenewPending, self.max_body)
        user_id = request.path_params["user_id"]
        async with self.db.pool.acquire() as conn, conn.transaction():
            asked = await renewals.get(conn, user_id, for_update=True)
            if asked is None:
                raise NotFound(detail="no renewal is asked for this user")
            if asked.version != body.version:
                raise Conflict(detail="the renewal asked changed: list the queue again")
            cert, previous = await self.provisioning.renew_in(conn, user_id,
                                                              body.user_certificate)
            expected = msgspec.structs.replace(
                previous, display_name=asked.display_name or previous.display_name,
                roles=sorted(previous.roles) if asked.roles is None else asked.roles)
            said = msgspec.structs.replace(cert, roles=sorted(cert.roles))
            if _content(said) != _content(expected):
                raise InvalidInput(E.CERTIFICATE_INVALID, "the certificate must say what the "
                                   "renewal asks and keep the rest of the one held")
            await renewals.delete(conn, user_id)
            await audit.append(conn, "directory.certificate_renewed", subject_kind="user",
                               subject_id=user_id, actor_kind="admin",
                               actor_id=principal.admin_id, details={"org_id": cert.org_id})
            renewed = await users.get_user(conn, user_id)
        assert renewed is not None  # renew_in locked the row
        return json_response(Renewed(user_id=user_id, login=renewed.login))


def _content(cert: Any) -> Any:
    """What a renewal keeps: all but the serial and the validity period."""
    return msgspec.structs.replace(cert, serial="", not_before=0, not_after=0, issued_at=0)
