"""Break-glass routes (docs/PROTOCOL.md §17): the sender's open cases and their follow-up; for
the privacy office (admin-authenticated, through IT's tool) the review queue, one case, closing
it with an outcome, and the report of use. The logic is in server/breakglass.py."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response

from protocol.api import (
    BreakGlassCase,
    BreakGlassClose,
    BreakGlassFollowUp,
    BreakGlassList,
    BreakGlassReport,
    BreakGlassUse,
)
from protocol.errors import ErrorCode
from server.api import Endpoint, json_response, read_json
from server.authn import ADMIN_AUTH_ERRORS, DEVICE_AUTH_ERRORS, AdminPrincipal, Principal
from server.breakglass import BreakGlassService
from server.errors import InvalidInput, NotFound

__all__ = ["BreakGlassRoutes"]

E = ErrorCode
RequireDevice = Callable[[Request], Awaitable[Principal]]
RequireAdmin = Callable[[Request], Awaitable[AdminPrincipal]]
REPORT_DEFAULT = dt.timedelta(days=30)
_STATUSES = {"open": "open", "closed": "closed", "all": None}


def _case_id(request: Request) -> str:
    try:
        return str(uuid.UUID(request.path_params["case_id"]))
    except ValueError:
        raise NotFound(E.NOT_FOUND, "no such break-glass case") from None


def _time(request: Request, name: str, default: dt.datetime) -> dt.datetime:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    if not raw.isdigit() or len(raw) > 12:
        raise InvalidInput(E.VALIDATION_FAILED, f"{name} must be a time in seconds since 1970")
    return dt.datetime.fromtimestamp(int(raw), dt.UTC)


def _window(request: Request, now: dt.datetime,
            default_span: dt.timedelta | None) -> tuple[dt.datetime, dt.datetime]:
    until = _time(request, "until", now + dt.timedelta(seconds=1))
    since = _time(request, "since", until - default_span if default_span
                  else dt.datetime.fromtimestamp(0, dt.UTC))
    if since >= until:
        raise InvalidInput(E.VALIDATION_FAILED, "since must be before until")
    return since, until


class BreakGlassRoutes:
    def __init__(self, *, service: BreakGlassService, require_device: RequireDevice,
                 require_admin: RequireAdmin, max_body: int) -> None:
        self.service, self.require_device, self.max_body = service, require_device, max_body
        self.require_admin = require_admin

    def endpoints(self) -> list[Endpoint]:
        device = list(DEVICE_AUTH_ERRORS)
        admin = list(ADMIN_AUTH_ERRORS)
        return [
            Endpoint("GET", "/v1/break-glass", self.mine,
                     "The caller's emergency messages still waiting for a consent or a "
                     "reason why none was possible (the reminder).",
                     response=BreakGlassList, auth="device", tag="break-glass", errors=device),
            Endpoint("POST", "/v1/break-glass/{case_id}/follow-up", self.follow_up,
                     "File the follow-up of the caller's emergency message: the consent "
                     "registered afterwards, or the category of reason why none was possible.",
                     request=BreakGlassFollowUp, response=BreakGlassCase, auth="device",
                     tag="break-glass", errors=[*device, E.NOT_FOUND, E.CONFLICT]),
            Endpoint("GET", "/v1/admin/break-glass/report", self.report,
                     "Use of break-glass over a period (since, until: seconds since 1970; "
                     "default the last 30 days): totals, by category, outcome and clinician.",
                     response=BreakGlassReport, auth="admin", tag="admin",
                     errors=[*admin, E.VALIDATION_FAILED]),
            Endpoint("GET", "/v1/admin/break-glass", self.list,
                     "The privacy office's review queue (status: open, closed or all; "
                     "default open), oldest first.",
                     response=BreakGlassList, auth="admin", tag="admin",
                     errors=[*admin, E.VALIDATION_FAILED]),
            Endpoint("GET", "/v1/admin/break-glass/{case_id}", self.show,
                     "One break-glass case.", response=BreakGlassCase, auth="admin",
                     tag="admin", errors=[*admin, E.NOT_FOUND]),
            Endpoint("POST", "/v1/admin/break-glass/{case_id}/close", self.close,
                     "Close a case after review, with an outcome and a note (audited; no "
                     "patient details).", request=BreakGlassClose, response=BreakGlassCase,
                     auth="admin", tag="admin", errors=[*admin, E.NOT_FOUND, E.CONFLICT]),
        ]

    async def mine(self, request: Request) -> Response:
        me = await self.require_device(request)
        return json_response(BreakGlassList(
            cases=[c for c in await self.service.pending(me)]))

    async def follow_up(self, request: Request) -> Response:
        me = await self.require_device(request)
        case_id = _case_id(request)
        body = await read_json(request, BreakGlassFollowUp, self.max_body)
        case = await self.service.follow_up(me, case_id, consent_id=body.consent_id,
                                            no_consent=body.no_consent)
        return json_response(case)

    async def list(self, request: Request) -> Response:
        await self.require_admin(request)
        raw = request.query_params.get("status", "open")
        if raw not in _STATUSES:
            raise InvalidInput(E.VALIDATION_FAILED, "status must be open, closed or all")
        since, until = _window(request, self.service.now(), None)
        cases = await self.service.list(status=_STATUSES[raw], since=since, until=until)
        return json_response(BreakGlassList(cases=[c for c in cases]))

    async def show(self, request: Request) -> Response:
        await self.require_admin(request)
        return json_response(await self.service.show(_case_id(request)))

    async def close(self, request: Request) -> Response:
        admin = await self.require_admin(request)
        case_id = _case_id(request)
        body = await read_json(request, BreakGlassClose, self.max_body)
        case = await self.service.close(admin, case_id, outcome=body.outcome,
                                        note=body.note.strip())
        return json_response(case)

    async def report(self, request: Request) -> Response:
        await self.require_admin(request)
        since, until = _window(request, self.service.now(), REPORT_DEFAULT)
        r = await self.service.report(since=since, until=until)
        return json_response(BreakGlassReport(
            since=int(since.timestamp()), until=int(until.timestamp()), total=len(r.cases),
            open=r.count(lambda c: c.status == "open"),
            closed=r.count(lambda c: c.status == "closed"),
            awaiting_follow_up=r.count(lambda c: c.follow_up is None),
            by_category=r.by(lambda c: c.category), by_outcome=r.by(lambda c: c.outcome),
            by_clinician=[BreakGlassUse(user_id=u.user_id, login=u.login,
                                        display_name=u.display_name, cases=u.cases,
                                        awaiting_follow_up=u.awaiting_follow_up,
                                        inappropriate=u.inappropriate)
                          for u in r.by_clinician()]))
