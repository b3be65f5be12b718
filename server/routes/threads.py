"""Consult threads over HTTP: create, list mine with unread counts, add and remove participants
(audited), mark read, and the recipients a message must be sealed for.

Messages themselves travel over the websocket (server/ws.py). A thread's subject is its first
sealed message, so the relay never sees it.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response

from protocol import api
from protocol.errors import ErrorCode
from server import audit
from server.api import Endpoint, json_response, read_json
from server.authn import Principal
from server.db import Database
from server.errors import NotFound
from server.settings import Settings
from server.store import breakglass, bundles, threads

__all__ = ["ThreadRoutes"]

RequireDevice = Callable[[Request], Awaitable[Principal]]


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class ThreadRoutes:
    def __init__(self, *, db: Database, settings: Settings, require_device: RequireDevice,
                 now: Callable[[], dt.datetime] = _now) -> None:
        self.db, self.settings, self.require_device, self.now = db, settings, require_device, now

    def endpoints(self) -> list[Endpoint]:
        member_errors = [ErrorCode.THREAD_NOT_FOUND, ErrorCode.NOT_THREAD_MEMBER]
        return [
            Endpoint("POST", "/v1/threads", self.create, "Create a consult thread.",
                     request=api.ThreadCreate, response=api.ThreadInfo, status=201,
                     errors=[ErrorCode.CONFLICT, ErrorCode.VALIDATION_FAILED,
                             ErrorCode.ROLE_UNKNOWN], auth="device", tag="threads"),
            Endpoint("GET", "/v1/threads", self.list, "My threads, with unread counts.",
                     response=api.ThreadList, auth="device", tag="threads"),
            Endpoint("GET", "/v1/threads/{thread_id}/recipients", self.recipients,
                     "Participants' certificates: what a message must be sealed for.",
                     response=api.ThreadRecipients, errors=member_errors, auth="device",
                     tag="threads"),
            Endpoint("POST", "/v1/threads/{thread_id}/participants", self.add,
                     "Add users or roles to a thread.", request=api.Participants, status=204,
                     errors=[*member_errors, ErrorCode.ROLE_UNKNOWN], auth="device",
                     tag="threads"),
            Endpoint("DELETE", "/v1/threads/{thread_id}/participants/{user_id}", self.remove,
                     "Remove a user from a thread.", status=204,
                     errors=[*member_errors, ErrorCode.NOT_FOUND], auth="device",
                     tag="threads"),
            Endpoint("POST", "/v1/threads/{thread_id}/read", self.read,
                     "Mark the thread read up to a sequence number.", request=api.ReadMark,
                     status=204, errors=member_errors, auth="device", tag="threads"),
        ]

    @staticmethod
    def _info(t: threads.ThreadSummary, pending: int = 0) -> api.ThreadInfo:
        return api.ThreadInfo(thread_id=t.thread_id, priority=t.priority,
                              created_by=t.created_by, created_at=int(t.created_at.timestamp()),
                              last_seq=t.last_seq, unread=t.unread, members=t.members,
                              roles=t.roles, break_glass_pending=pending)

    async def create(self, request: Request) -> Response:
        me = await self.require_device(request)
        body = await read_json(request, api.ThreadCreate, self.settings.max_body_bytes)
        async with self.db.pool.acquire() as conn, conn.transaction():
            await threads.create_thread(
                conn, thread_id=body.thread_id, org_id=me.org_id, creator=me.user_id,
                priority=body.priority, users=body.users, roles=body.roles, now=self.now())
            await audit.append(conn, "thread.created", subject_kind="thread",
                               subject_id=body.thread_id,
                               details={"users": len(body.users) + 1, "roles": body.roles,
                                        "priority": body.priority})
            mine = [t for t in await threads.list_threads(conn, me.user_id, at=self.now())
                    if t.thread_id == body.thread_id]
        return json_response(self._info(mine[0]), status=201)

    async def list(self, request: Request) -> Response:
        me = await self.require_device(request)
        async with self.db.pool.acquire() as conn:
            rows = await threads.list_threads(conn, me.user_id, at=self.now())
            pending = await breakglass.pending_by_thread(conn, [t.thread_id for t in rows])
        return json_response(api.ThreadList(threads=[
            self._info(t, pending.get(t.thread_id, 0)) for t in rows]))

    async def recipients(self, request: Request) -> Response:
        me = await self.require_device(request)
        thread_id = _uuid_param(request, "thread_id")
        async with self.db.pool.acquire() as conn:
            # A role reaches its on-call ladder at this moment: seal for exactly these.
            at = self.now()
            await threads.require_participant(conn, thread_id, me.user_id, at)
            members = await threads.participants(conn, thread_id, at)
            users = await bundles.key_bundles(conn, user_ids=sorted(members))
        return json_response(api.ThreadRecipients(users=users))

    async def add(self, request: Request) -> Response:
        me = await self.require_device(request)
        thread_id = _uuid_param(request, "thread_id")
        body = await read_json(request, api.Participants, self.settings.max_body_bytes)
        async with self.db.pool.acquire() as conn, conn.transaction():
            await threads.add_participants(conn, thread_id=thread_id, actor=me.user_id,
                                           users=body.users, roles=body.roles, now=self.now())
            await audit.append(conn, "thread.participants_added", subject_kind="thread",
                               subject_id=thread_id,
                               details={"users": body.users, "roles": body.roles})
        return Response(status_code=204)

    async def remove(self, request: Request) -> Response:
        me = await self.require_device(request)
        thread_id = _uuid_param(request, "thread_id")
        user_id = _uuid_param(request, "user_id")
        async with self.db.pool.acquire() as conn, conn.transaction():
            await threads.remove_participant(conn, thread_id=thread_id, actor=me.user_id,
                                             user_id=user_id, now=self.now())
            await audit.append(conn, "thread.participant_removed", subject_kind="thread",
                               subject_id=thread_id, details={"user_id": user_id})
        return Response(status_code=204)

    async def read(self, request: Request) -> Response:
        me = await self.require_device(request)
        thread_id = _uuid_param(request, "thread_id")
        body = await read_json(request, api.ReadMark, self.settings.max_body_bytes)
        now = self.now()
        async with self.db.pool.acquire() as conn:
            await threads.require_participant(conn, thread_id, me.user_id, now)
            await threads.mark_read(conn, thread_id, me.user_id, body.seq, now=now)
        return Response(status_code=204)


def _uuid_param(request: Request, name: str) -> str:
    value = request.path_params[name]
    try:
        return str(uuid.UUID(value))
    except ValueError as exc:
        code = ErrorCode.THREAD_NOT_FOUND if name == "thread_id" else ErrorCode.NOT_FOUND
        raise NotFound(code, f"no such {name.removesuffix('_id')}") from exc
