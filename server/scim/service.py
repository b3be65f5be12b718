"""The directory service behind ``/scim/v2``: SCIM users and groups of one organisation (the
one the bearer token speaks for), and what their changes do to the relay's users.

A SCIM user is a *request* for an identity: it becomes a relay user only when IT's workstation
signs its certificate with the organisation key (``lightbox-admin sign-pending``, through
server/scim/pending.py). What the directory can do to a relay user it became is take away, never
give: ``active: false`` suspends the user at once (refresh tokens revoked, open websockets
closed through the ``revoked`` event, docs/SECURITY.md), ``active: true`` lifts that suspension
unless the organisation's signed revocation list names the user, and DELETE revokes every device
of the user and suspends it for good. A signed user joining a mapped group asks IT for the
role; leaving one withdraws the role at once; a rename (``userName``, ``displayName``,
``name``) asks IT to renew the certificate, which carries the name (server/renewals.py).

Errors are scim2-models' exceptions (RFC 7644 §3.12 status and ``scimType``); the routes turn
them into SCIM error bodies. Every change is audited in its transaction, by ids only.
"""

from __future__ import annotations

import dataclasses
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
from pydantic import ValidationError
from scim2_models import (
    Context,
    Error,
    InvalidFilterException,
    InvalidValueException,
    NotFoundException,
    PatchOp,
    PreconditionFailedException,
    SCIMException,
    ScimFilter,
    SearchRequest,
    UniquenessException,
)
from scim2_models.path.expressions import AttrPath, CompareOperator, Comparison

from protocol.api import Login
from server import audit, events
from server.db import Database
from server.errors import Conflict
from server.orgidentity import IdentitySettings
from server.renewals import ask_display_name, restate_roles
from server.scim.pending import display_name
from server.scim.schema import GroupModel, UserModel
from server.store import devices, directory, messages, sessions, users
from server.trust import Trust

__all__ = ["DirectoryService", "Listing", "invalid", "login_pattern"]

# Enough for a hospital's directory in one organisation; a list or filter reads no more rows.
_SCAN_LIMIT = 50_000

login_pattern = Login.__metadata__[0].pattern  # type: ignore[attr-defined]


def invalid(exc: ValidationError) -> SCIMException:
    """The first problem pydantic found, as the RFC 7644 §3.12 error it is."""
    return SCIMException.from_error(Error.from_validation_errors(exc)[0])


def change_of(model: Any, body: Any, *, patch: bool) -> Callable[[Any], Any]:
    """What a PUT body (the resource replaced, RFC 7644 §3.5.1) or a PATCH body (its
    operations, §3.5.2) does to the current resource, validated first: an invalid body is
    the RFC's ``invalidValue``/``invalidSyntax`` error and changes nothing."""
    try:
        if not patch:
            replacement = model.model_validate(
                body, scim_ctx=Context.RESOURCE_REPLACEMENT_REQUEST)
            return lambda _: replacement
        operations = PatchOp[model].model_validate(body, scim_ctx=Context.RESOURCE_PATCH_REQUEST)
    except ValidationError as exc:
        raise invalid(exc) from exc

    def apply(current: Any) -> Any:
        operations.patch(current)
        return current

    return apply


@dataclasses.dataclass(frozen=True)
class Listing:
    total: int
    start_index: int
    resources: list[Any]


def _etag(version: int) -> str:
    return f'W/"{version}"'


def check_precondition(if_match: str | None, version: int) -> None:
    """RFC 7644 §3.14 and RFC 9110 §13.1.1: a request naming versions the resource is not at
    changes nothing (412)."""
    if if_match is None:
        return
    tags = [t.strip() for t in if_match.split(",")]
    if "*" in tags or _etag(version) in tags or f'"{version}"' in tags:
        return
    raise PreconditionFailedException(detail="the resource changed: read it again")


@dataclasses.dataclass(frozen=True)
class _Kind:
    """What differs between the two resource types (RFC 7643 §4.1, §4.2) where the service
    treats them alike: their schema model, their endpoint and how the store reads one."""

    name: str  # "User", "Group": the resourceType
    model: Any
    get: Callable[..., Awaitable[Any]]  # directory.get_user, directory.get_group
    list: Callable[..., Awaitable[list[Any]]]  # directory.list_users, directory.list_groups
    columns: dict[str, str]  # filter attribute (lower case) -> the store's exact-match keyword

    def parse(self, body: Any) -> Any:
        """A creation request (RFC 7644 §3.3), validated; ``invalidValue`` otherwise."""
        try:
            return self.model.model_validate(body, scim_ctx=Context.RESOURCE_CREATION_REQUEST)
        except ValidationError as exc:
            raise invalid(exc) from exc

    def data(self, entry: Any, base: str) -> dict[str, Any]:
        """The stored resource with its ``id`` and ``meta`` (RFC 7643 §3.1)."""
        data = dict(entry.resource)
        data.update(id=entry.scim_id, meta={
            "resourceType": self.name, "created": entry.created_at.isoformat(),
            "lastModified": entry.updated_at.isoformat(),
            "location": f"{base}/{self.name}s/{entry.scim_id}", "version": _etag(entry.version)})
        return data

    async def find(self, conn: asyncpg.Connection, org_id: str, scim_id: str, *,
                   if_match: str | None = None, for_update: bool = False) -> Any:
        """The organisation's resource (404 ``no such user``/``group``), locked and checked
        against ``If-Match`` (412) when it is to change."""
        entry = await self.get(conn, org_id, scim_id, for_update=for_update)
        if entry is None:
            raise NotFoundException(detail=f"no such {self.name.lower()}")
        check_precondition(if_match, entry.version)
        return entry


_USER = _Kind("User", UserModel, directory.get_user, directory.list_users,
              {"username": "user_name", "externalid": "external_id"})
_GROUP = _Kind("Group", GroupModel, directory.get_group, directory.list_groups,
               {"displayname": "display_name", "externalid": "external_id"})


class DirectoryService:
    def __init__(self, *, db: Database, trust: Trust, identity: IdentitySettings,
                 max_results: int, clock: Callable[[], float] = time.time) -> None:
        self.db, self.trust, self.identity = db, trust, identity
        self.max_results, self.clock = max_results, clock

    # --- credentials ----------------------------------------------------------------------

    async def organisation(self, token: str) -> str | None:
        async with self.db.pool.acquire() as conn:
            return await directory.org_for_token(conn, token)

    # --- users ----------------------------------------------------------------------------

    def _user_model(self, entry: directory.DirectoryUser, groups: list[tuple[str, str]],
                    base: str) -> Any:
        data = _USER.data(entry, base)
        if groups:
            data["groups"] = [{"value": gid, "display": name, "type": "direct",
                               "$ref": f"{base}/Groups/{gid}"} for gid, name in groups]
        return UserModel.model_validate(data)

    async def _users_out(self, conn: asyncpg.Connection, entries: list[directory.DirectoryUser],
                         base: str) -> list[Any]:
        groups = await directory.groups_of(conn, [e.scim_id for e in entries])
        return [self._user_model(e, groups[e.scim_id], base) for e in entries]

    @staticmethod
    def _user_fields(model: Any) -> tuple[str, str | None, bool, dict[str, Any]]:
        """userName, externalId, active and the stored resource of a validated request."""
        name = model.user_name
        if not isinstance(name, str) or not _valid_login(name):
            raise InvalidValueException(
                detail="userName must be a Lightbox login: 2-64 of a-z, 0-9, '.', '_', '-', "
                       "starting with a letter or digit (case is ignored)")
        resource = model.model_dump(scim_ctx=Context.RESOURCE_REPLACEMENT_REQUEST)
        resource.pop("groups", None)
        active = True if model.active is None else bool(model.active)
        return name, model.external_id, active, resource

    async def create_user(self, org_id: str, body: Any, base: str) -> Any:
        name, external_id, active, resource = self._user_fields(_USER.parse(body))
        now = self.clock()
        async with self.db.pool.acquire() as conn, conn.transaction():
            try:
                entry = await directory.insert_user(
                    conn, scim_id=str(uuid.uuid4()), org_id=org_id, user_name=name,
                    external_id=external_id, active=active, resource=resource, now=now)
            except Conflict as exc:
                raise UniquenessException(detail=exc.detail) from exc
            await audit.append(conn, "scim.user_created", subject_kind="directory_user",
                               subject_id=entry.scim_id, actor_kind="directory",
                               actor_id=org_id, details={"org_id": org_id})
            return self._user_model(entry, [], base)

    async def get_user(self, org_id: str, scim_id: str, base: str) -> Any:
        async with self.db.pool.acquire() as conn:
            entry = await _USER.find(conn, org_id, scim_id)
            return (await self._users_out(conn, [entry], base))[0]

    async def list_users(self, org_id: str, search: SearchRequest[Any], base: str) -> Listing:
        return await self._list(_USER, self._users_out, org_id, search, base)

    async def replace_user(self, org_id: str, scim_id: str, body: Any, base: str,
                           if_match: str | None) -> Any:
        return await self._change_user(org_id, scim_id, base, if_match,
                                       change_of(UserModel, body, patch=False))

    async def patch_user(self, org_id: str, scim_id: str, body: Any, base: str,
                         if_match: str | None) -> Any:
        return await self._change_user(org_id, scim_id, base, if_match,
                                       change_of(UserModel, body, patch=True))

    async def _change_user(self, org_id: str, scim_id: str, base: str, if_match: str | None,
                           change: Callable[[Any], Any]) -> Any:
        now = self.clock()
        async with self.db.pool.acquire() as conn, conn.transaction():
            entry = await _USER.find(conn, org_id, scim_id, if_match=if_match, for_update=True)
            (current,) = await self._users_out(conn, [entry], base)
            updated = change(current)
            name, external_id, active, resource = self._user_fields(updated)
            if resource == entry.resource and name == entry.user_name:
                return current  # nothing changed: same version, same ETag
            try:
                changed = await directory.update_user(
                    conn, entry, user_name=name, external_id=external_id, active=active,
                    resource=resource, now=now)
            except Conflict as exc:
                raise UniquenessException(detail=exc.detail) from exc
            await audit.append(conn, "scim.user_updated", subject_kind="directory_user",
                               subject_id=scim_id, actor_kind="directory", actor_id=org_id,
                               details={"org_id": org_id, "active": active})
            renamed = display_name(resource, name)
            if entry.user_id is not None and \
                    renamed != display_name(entry.resource, entry.user_name):
                await self._rename(conn, entry.user_id, renamed, now)
            if entry.user_id is not None and active != entry.active:
                if active:
                    await self._resume(conn, org_id, entry.user_id, now)
                else:
                    await self._suspend(conn, entry.user_id, now)
            return (await self._users_out(conn, [changed], base))[0]

    async def delete_user(self, org_id: str, scim_id: str, if_match: str | None) -> None:
        now = self.clock()
        async with self.db.pool.acquire() as conn, conn.transaction():
            entry = await _USER.find(conn, org_id, scim_id, if_match=if_match, for_update=True)
            revoked: list[str] = []
            if entry.user_id is not None:
                revoked = await self._remove(conn, org_id, entry.user_id, now)
            await directory.delete_user(conn, scim_id, now=now)
            await audit.append(conn, "scim.user_deleted", subject_kind="directory_user",
                               subject_id=scim_id, actor_kind="directory", actor_id=org_id,
                               details={"org_id": org_id, "user_id": entry.user_id,
                                        "devices_revoked": len(revoked)})

    # --- what the directory does to relay users -------------------------------------------

    async def _regroup(self, conn: asyncpg.Connection, org_id: str, scim_ids: list[str],
                       now: float) -> None:
        """Signed users whose groups changed: the roles ``group_roles`` maps restated
        (server/renewals.py): a mapped group left is a role withdrawn at once, one joined a
        role asked of IT's signature."""
        mapping = self.identity.for_org(org_id)
        managed = sorted(set(mapping.group_roles.values()))
        if not managed or not scim_ids:
            return
        groups = await directory.groups_of(conn, scim_ids)
        for scim_id in scim_ids:
            entry = await directory.get_user(conn, org_id, scim_id)
            user = None if entry is None or entry.user_id is None else \
                await users.get_user(conn, entry.user_id, for_update=True)
            if user is not None:
                await restate_roles(conn, user, mapping.roles_for(n for _, n in groups[scim_id]),
                                    managed, source="directory", now=now)

    async def _rename(self, conn: asyncpg.Connection, user_id: str, name: str,
                      now: float) -> None:
        """The certificate carries the display name: a new one is asked of IT's signature
        (server/renewals.py); the certificate held stays valid until it is renewed."""
        user = await users.get_user(conn, user_id, for_update=True)
        if user is not None and await ask_display_name(conn, user, name, now=now):
            await audit.append(conn, "scim.renewal_asked", subject_kind="user",
                               subject_id=user_id, actor_kind="directory")

    async def _suspend(self, conn: asyncpg.Connection, user_id: str, now: float) -> None:
        await users.set_status(conn, user_id, "suspended", now=now)
        await sessions.revoke_for(conn, user_ids=[user_id], now=now)
        await audit.append(conn, "scim.user_suspended", subject_kind="user",
                           subject_id=user_id, actor_kind="directory")
        await events.publish_revocation(conn, user_ids=[user_id], reason="user_suspended")

    async def _resume(self, conn: asyncpg.Connection, org_id: str, user_id: str,
                      now: float) -> None:
        """Lift the directory's suspension, unless the signed revocation list holds one."""
        if (await self.trust.revocations(conn)).user_entry(org_id, user_id) is not None:
            return
        user = await users.get_user(conn, user_id, for_update=True)
        if user is None or user.status != "suspended":
            return
        enrolled = await devices.count_active(conn, user_id) > 0 or user.password_hash
        await users.set_status(conn, user_id, "active" if enrolled else "pending", now=now)
        await audit.append(conn, "scim.user_resumed", subject_kind="user", subject_id=user_id,
                           actor_kind="directory")

    async def _remove(self, conn: asyncpg.Connection, org_id: str, user_id: str,
                      now: float) -> list[str]:
        """Deleted from the directory: every device revoked, the user suspended for good
        (the row stays: certificates and the audit trail name it)."""
        device_ids = [d.device_id for d in await devices.list_devices(conn, user_id,
                                                                      active_only=True)]
        revoked = await devices.revoke_devices(conn, device_ids, org_id=org_id, now=now)
        dropped = await messages.drop_queues(conn, revoked)  # as a revocation list's
        await users.set_status(conn, user_id, "suspended", now=now)
        await sessions.revoke_for(conn, device_ids=revoked, user_ids=[user_id], now=now)
        for did in revoked:
            await audit.append(conn, "scim.device_revoked", subject_kind="device",
                               subject_id=did, actor_kind="directory",
                               details={"user_id": user_id,
                                        **messages.dropped_details(dropped, did)})
        if revoked:
            await events.publish_revocation(conn, device_ids=revoked, reason="device_revoked")
        await events.publish_revocation(conn, user_ids=[user_id], reason="user_suspended")
        return revoked

    # --- groups ---------------------------------------------------------------------------

    async def _groups_out(self, conn: asyncpg.Connection,
                          entries: list[directory.DirectoryGroup], base: str) -> list[Any]:
        out = []
        for entry in entries:
            members = await directory.members_of(conn, entry.scim_id)
            data = _GROUP.data(entry, base)
            if members:
                data["members"] = [{"value": m, "type": "User", "$ref": f"{base}/Users/{m}",
                                    **({"display": d} if d is not None else {})}
                                   for m, d in members]
            out.append(GroupModel.model_validate(data))
        return out

    async def _group_fields(self, conn: asyncpg.Connection, org_id: str, model: Any
                            ) -> tuple[str, str | None, list[tuple[str, str | None]],
                                       dict[str, Any]]:
        name = model.display_name
        if not isinstance(name, str) or not name.strip():
            raise InvalidValueException(detail="displayName is required")
        if any(m.type not in (None, "User") for m in model.members or []):
            raise InvalidValueException(detail="members must be users (no nested groups)")
        members = sorted({m.value: m.display for m in model.members or [] if m.value}.items())
        unknown = await directory.unknown_members(conn, org_id, [m for m, _ in members])
        if unknown:
            raise InvalidValueException(detail="members must be users of this directory")
        resource = model.model_dump(scim_ctx=Context.RESOURCE_REPLACEMENT_REQUEST)
        resource.pop("members", None)
        return name, model.external_id, members, resource

    async def create_group(self, org_id: str, body: Any, base: str) -> Any:
        model = _GROUP.parse(body)
        now = self.clock()
        async with self.db.pool.acquire() as conn, conn.transaction():
            name, external_id, members, resource = await self._group_fields(conn, org_id, model)
            entry = await directory.insert_group(
                conn, scim_id=str(uuid.uuid4()), org_id=org_id, display_name=name,
                external_id=external_id, resource=resource, now=now)
            await directory.set_members(conn, entry.scim_id, members)
            await self._regroup(conn, org_id, [m for m, _ in members], now)
            await audit.append(conn, "scim.group_created", subject_kind="directory_group",
                               subject_id=entry.scim_id, actor_kind="directory",
                               actor_id=org_id, details={"org_id": org_id,
                                                         "members": len(members)})
            return (await self._groups_out(conn, [entry], base))[0]

    async def get_group(self, org_id: str, scim_id: str, base: str) -> Any:
        async with self.db.pool.acquire() as conn:
            entry = await _GROUP.find(conn, org_id, scim_id)
            return (await self._groups_out(conn, [entry], base))[0]

    async def list_groups(self, org_id: str, search: SearchRequest[Any], base: str) -> Listing:
        return await self._list(_GROUP, self._groups_out, org_id, search, base)

    async def replace_group(self, org_id: str, scim_id: str, body: Any, base: str,
                            if_match: str | None) -> Any:
        return await self._change_group(org_id, scim_id, base, if_match,
                                        change_of(GroupModel, body, patch=False))

    async def patch_group(self, org_id: str, scim_id: str, body: Any, base: str,
                          if_match: str | None) -> Any:
        return await self._change_group(org_id, scim_id, base, if_match,
                                        change_of(GroupModel, body, patch=True))

    async def _change_group(self, org_id: str, scim_id: str, base: str, if_match: str | None,
                            change: Callable[[Any], Any]) -> Any:
        now = self.clock()
        async with self.db.pool.acquire() as conn, conn.transaction():
            entry = await _GROUP.find(conn, org_id, scim_id, if_match=if_match, for_update=True)
            (current,) = await self._groups_out(conn, [entry], base)
            before = await directory.members_of(conn, scim_id)
            name, external_id, members, resource = await self._group_fields(
                conn, org_id, change(current))
            if resource == entry.resource and members == before:
                return current
            changed = await directory.update_group(conn, entry, display_name=name,
                                                   external_id=external_id, resource=resource,
                                                   now=now)
            moved = await directory.set_members(conn, scim_id, members)
            if name != entry.display_name:  # a renamed group may map to another role
                moved = sorted(set(moved) | {m for m, _ in members})
            await self._regroup(conn, org_id, moved, now)
            await audit.append(conn, "scim.group_updated", subject_kind="directory_group",
                               subject_id=scim_id, actor_kind="directory", actor_id=org_id,
                               details={"org_id": org_id, "members_changed": len(moved)})
            return (await self._groups_out(conn, [changed], base))[0]

    async def delete_group(self, org_id: str, scim_id: str, if_match: str | None) -> None:
        async with self.db.pool.acquire() as conn, conn.transaction():
            await _GROUP.find(conn, org_id, scim_id, if_match=if_match, for_update=True)
            members = [m for m, _ in await directory.members_of(conn, scim_id)]
            await directory.delete_group(conn, scim_id)
            await self._regroup(conn, org_id, members, self.clock())
            await audit.append(conn, "scim.group_deleted", subject_kind="directory_group",
                               subject_id=scim_id, actor_kind="directory", actor_id=org_id,
                               details={"org_id": org_id})

    async def search_all(self, org_id: str, search: SearchRequest[Any], base: str) -> Listing:
        """RFC 7644 §3.4.3: users and groups at once; a filter attribute only one of them has
        is false for the other (§3.4.2.1)."""
        scim_filter = _filter(search.filter, UserModel | GroupModel)
        async with self.db.pool.acquire() as conn:
            found = await self._users_out(
                conn, await directory.list_users(conn, org_id, limit=_SCAN_LIMIT), base)
            found += await self._groups_out(
                conn, await directory.list_groups(conn, org_id, limit=_SCAN_LIMIT), base)
        return self._page(found, scim_filter, search)

    # --- lists ----------------------------------------------------------------------------

    async def _list(self, kind: _Kind, out: Callable[..., Awaitable[list[Any]]], org_id: str,
                    search: SearchRequest[Any], base: str) -> Listing:
        """One resource type's list (RFC 7644 §3.4.2), an exact filter narrowed in SQL."""
        scim_filter = _filter(search.filter, kind.model)
        exact = _exact(scim_filter, kind.columns)
        async with self.db.pool.acquire() as conn:
            entries = await kind.list(conn, org_id, limit=_SCAN_LIMIT, **exact)
            models = await out(conn, entries, base)
        return self._page(models, scim_filter, search)

    def _page(self, models: list[Any], scim_filter: ScimFilter[Any] | None,
              search: SearchRequest[Any]) -> Listing:
        """RFC 7644 §3.4.2: filter, then the 1-based page (count capped to max_results)."""
        if scim_filter is not None:
            models = [m for m in models if scim_filter.match(m)]
        start = max(1, search.start_index or 1)
        count = self.max_results if search.count is None else \
            max(0, min(search.count, self.max_results))
        return Listing(total=len(models), start_index=start,
                       resources=models[start - 1:start - 1 + count])


def _valid_login(name: str) -> bool:
    return re.fullmatch(login_pattern, name.lower()) is not None


def _filter(text: str | None, model: Any) -> ScimFilter[Any] | None:
    """The filter, parsed and checked against the model by scim2-models (RFC 7644 §3.4.2.2):
    bad syntax or an attribute the schema lacks is ``invalidFilter``."""
    if text is None:
        return None
    try:
        parsed: ScimFilter[Any] = ScimFilter[model](text)
        parsed._validate_semantics(strict=True)
    except InvalidFilterException:
        raise
    except (SCIMException, ValueError) as exc:
        raise InvalidFilterException(detail=str(exc)) from exc
    return parsed


def _exact(scim_filter: ScimFilter[Any] | None, columns: dict[str, str]) -> dict[str, str]:
    """A filter that is one ``eq`` on an indexed attribute narrows the query in SQL too."""
    if scim_filter is None:
        return {}
    node = scim_filter.ast
    if (isinstance(node, Comparison) and node.op is CompareOperator.eq
            and isinstance(node.attr_path, AttrPath) and node.attr_path.sub_attr is None
            and isinstance(node.value, str)
            and node.attr_path.attr.lower() in columns):
        return {columns[node.attr_path.attr.lower()]: node.value}
    return {}
