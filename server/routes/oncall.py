"""On-call over HTTP (docs/PROTOCOL.md §16): IT's rota management (admin token), who
is on call (device), and a thread's receipts and escalation steps (participants)."""

from __future__ import annotations

import datetime as dt
import re
import uuid
from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response

from protocol import api
from protocol.errors import ErrorCode
from server.api import Endpoint, json_response, read_json
from server.authn import AdminPrincipal, Principal
from server.db import Database
from server.errors import InvalidInput, NotFound
from server.oncall import OncallService, role_param
from server.store import escalations, oncall, receipts, threads

__all__ = ["OncallRoutes"]

RequireDevice = Callable[[Request], Awaitable[Principal]]
RequireAdmin = Callable[[Request], Awaitable[AdminPrincipal]]
_ORG = re.compile(r"^[a-z0-9][a-z0-9.-]{0,62}$")


class OncallRoutes:
    def __init__(self, *, db: Database, service: OncallService, require_device: RequireDevice,
                 require_admin: RequireAdmin, max_body: int) -> None:
        self.db, self.service = db, service
        self.require_device, self.require_admin = require_device, require_admin
        self.max_body = max_body

    def endpoints(self) -> list[Endpoint]:
        role_errors = [ErrorCode.ROLE_UNKNOWN]
        member = [ErrorCode.THREAD_NOT_FOUND, ErrorCode.NOT_THREAD_MEMBER]
        return [
            Endpoint("GET", "/v1/admin/oncall", self.roles, "On-call roles (IT).",
                     response=api.OncallRoleList, auth="admin", tag="oncall"),
            Endpoint("PUT", "/v1/admin/oncall/{org_id}/{role}", self.set_role,
                     "Define an on-call role and its acknowledgement deadlines.",
                     request=api.OncallRoleSet, response=api.OncallRoleInfo,
                     errors=[ErrorCode.ROLE_UNKNOWN, ErrorCode.ROTA_INVALID], auth="admin",
                     tag="oncall"),
            Endpoint("GET", "/v1/admin/oncall/{org_id}/{role}/shifts", self.shifts,
                     "The role's shifts (those not yet ended with ?current=1).",
                     response=api.ShiftList, errors=role_errors, auth="admin", tag="oncall"),
            Endpoint("POST", "/v1/admin/oncall/{org_id}/{role}/shifts", self.add_shifts,
                     "Add shifts; a verdict per shift, good ones kept.",
                     request=api.ShiftsUpload, response=api.ShiftResults,
                     errors=[ErrorCode.ROLE_UNKNOWN, ErrorCode.SHIFT_OVERLAP,
                             ErrorCode.SHIFT_EMPTY, ErrorCode.ROTA_INVALID],
                     auth="admin", tag="oncall"),
            Endpoint("DELETE", "/v1/admin/oncall/{org_id}/{role}/shifts/{shift_id}",
                     self.delete_shift,
                     "Remove a shift; with Prefer: return=representation, 200 and what "
                     "becomes of its unacknowledged consults (ShiftRemoved).", status=204,
                     errors=[ErrorCode.ROLE_UNKNOWN, ErrorCode.NOT_FOUND], auth="admin",
                     tag="oncall"),
            Endpoint("GET", "/v1/oncall/{role}", self.who,
                     "Who is on call for a role of my organisation, now or ?at=<unix time>.",
                     response=api.OnCall, errors=[ErrorCode.ROLE_UNKNOWN,
                                                  ErrorCode.VALIDATION_FAILED],
                     auth="device", tag="oncall"),
            Endpoint("GET", "/v1/threads/{thread_id}/receipts", self.receipts,
                     "Signed receipts per message and recipient device (?message_id=).",
                     response=api.ReceiptList, errors=member, auth="device", tag="threads"),
            Endpoint("GET", "/v1/threads/{thread_id}/escalations", self.escalations,
                     "Escalations of the thread's consults and their steps.",
                     response=api.EscalationList, errors=member, auth="device",
                     tag="threads"),
        ]

    # -- admin ---------------------------------------------------------------------------------

    @staticmethod
    def _org(request: Request) -> str:
        org = request.path_params["org_id"]
        if not _ORG.match(org):
            raise NotFound(ErrorCode.ROLE_UNKNOWN, "no such organisation")
        return str(org)

    @staticmethod
    def _role_info(r: oncall.Role) -> api.OncallRoleInfo:
        return api.OncallRoleInfo(org_id=r.org_id, role=r.role, display_name=r.display_name,
                                  urgent_seconds=r.urgent_seconds,
                                  routine_seconds=r.routine_seconds)

    async def roles(self, request: Request) -> Response:
        await self.require_admin(request)
        async with self.db.pool.acquire() as conn:
            rows = await oncall.list_roles(conn)
        return json_response(api.OncallRoleList(roles=[self._role_info(r) for r in rows]))

    async def set_role(self, request: Request) -> Response:
        await self.require_admin(request)
        body = await read_json(request, api.OncallRoleSet, self.max_body)
        role = await self.service.set_role(self._org(request), request.path_params["role"],
                                           body)
        return json_response(self._role_info(role))

    async def shifts(self, request: Request) -> Response:
        await self.require_admin(request)
        org, role = self._org(request), role_param(request.path_params["role"])
        current = request.query_params.get("current") in {"1", "true"}
        async with self.db.pool.acquire() as conn:
            await oncall.get_role(conn, org, role)
            rows = await oncall.list_shifts(conn, org, role,
                                            ending_after=self.service.at() if current else None)
            infos = [await self.service.shift_info(conn, s) for s in rows]
        return json_response(api.ShiftList(shifts=infos))

    async def add_shifts(self, request: Request) -> Response:
        await self.require_admin(request)
        body = await read_json(request, api.ShiftsUpload, self.max_body)
        results = await self.service.add_shifts(self._org(request),
                                                request.path_params["role"], body.shifts)
        return json_response(api.ShiftResults(results=results))

    async def delete_shift(self, request: Request) -> Response:
        await self.require_admin(request)
        shift_id = _uuid(request.path_params["shift_id"])
        removed = await self.service.delete_shift(self._org(request),
                                                  request.path_params["role"], shift_id)
        # 204 as before, unless the client asks for the outcome (RFC 7240 §4.2): an admin CLI
        # that expects 204 keeps working (docs/PROTOCOL.md §16.4).
        if _wants_representation(request.headers.get("prefer", "")):
            return json_response(removed, headers={"Preference-Applied": "return=representation"})
        return Response(status_code=204)

    # -- devices -------------------------------------------------------------------------------

    async def who(self, request: Request) -> Response:
        me = await self.require_device(request)
        raw = request.query_params.get("at")
        at = None
        if raw is not None:
            if not raw.isdigit() or len(raw) > 12:
                raise InvalidInput(ErrorCode.VALIDATION_FAILED, "at must be Unix seconds")
            at = int(raw)
        answer = await self.service.who(me.org_id, request.path_params["role"], at)
        return json_response(answer)

    async def receipts(self, request: Request) -> Response:
        me = await self.require_device(request)
        thread_id = _uuid(request.path_params["thread_id"], ErrorCode.THREAD_NOT_FOUND)
        message_id = request.query_params.get("message_id")
        if message_id is not None:
            message_id = _uuid(message_id)
        async with self.db.pool.acquire() as conn:
            await threads.require_participant(conn, thread_id, me.user_id, self.service.at())
            rows = await receipts.list_for_thread(conn, thread_id, message_id=message_id)
        return json_response(api.ReceiptList(receipts=[
            api.ReceiptInfo(message_id=r.message_id, device_id=r.device_id, user_id=r.user_id,
                            kind=r.kind, at=int(r.at.timestamp()), statement=r.statement)
            for r in rows]))

    async def escalations(self, request: Request) -> Response:
        me = await self.require_device(request)
        thread_id = _uuid(request.path_params["thread_id"], ErrorCode.THREAD_NOT_FOUND)
        async with self.db.pool.acquire() as conn:
            await threads.require_participant(conn, thread_id, me.user_id, self.service.at())
            rows = await escalations.list_for_thread(conn, thread_id)
        return json_response(api.EscalationList(escalations=[
            api.EscalationInfo(
                message_id=e.message_id, role=e.role, state=e.state, level=e.level,
                ladder=list(e.ladder), due_at=_ts(e.due_at) if e.state == "open" else None,
                acknowledged_by=e.acknowledged_by, acknowledged_at=_ts(e.acknowledged_at),
                steps=[api.EscalationStep(step=s.step, kind=s.kind, level=s.level,
                                          user_id=s.user_id, at=int(s.at.timestamp()),
                                          next_shift_at=_ts(s.next_shift_at))
                       for s in steps])
            for e, steps in rows]))


def _wants_representation(prefer: str) -> bool:
    """``Prefer: return=representation`` among the header's preferences (RFC 7240 §2, §4.2:
    comma-separated, each optionally with ``;`` parameters, names case-insensitive)."""
    for pref in prefer.split(","):
        name, _, value = pref.split(";", 1)[0].partition("=")
        if name.strip().lower() == "return" and value.strip().strip('"') == "representation":
            return True
    return False


def _ts(t: dt.datetime | None) -> int | None:
    return None if t is None else int(t.timestamp())


def _uuid(value: str, code: ErrorCode = ErrorCode.NOT_FOUND) -> str:
    try:
        return str(uuid.UUID(value))
    except ValueError as exc:
        raise NotFound(code, "no such resource") from exc
