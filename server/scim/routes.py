"""``/scim/v2``: the SCIM 2.0 HTTP binding (RFC 7644) for the hospital's directory.

A Starlette application of its own, mounted by server/app.py, so that every answer under the
prefix, a 404 for an unknown path included, is a SCIM message (``application/scim+json``) and
every error the RFC 7644 §3.12 body (``urn:ietf:params:scim:api:messages:2.0:Error`` with its
``status`` and, where the RFC names one, ``scimType``), never the relay's problem+json: an
unexpected failure too (500, naming only the request id; the log has the rest).

Every request carries ``Authorization: Bearer <token>`` (RFC 6750 §2.1): a token IT issued on
the relay host (``lightbox-server scim token issue --org ORG``), kept there as a SHA-256 hash;
it selects the organisation whose directory the request reads or changes. Missing or unknown:
401 with ``WWW-Authenticate: Bearer`` (RFC 6750 §3). ETags (RFC 7644 §3.14) are weak
``W/"<version>"``; ``If-Match`` on PUT, PATCH and DELETE with another version is 412.

Every endpoint answers with a trailing slash too (``/Users/`` is ``/Users``), as directories
differ in how they join the base URL and a path. ``/Me`` (RFC 7644 §3.11: the token names a
directory, not a user) and ``/Bulk`` (§3.7; ``bulk.supported`` is false in the
ServiceProviderConfig, §5) are 501 Not Implemented, as §3.11 and the §3.12 table say.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from pydantic import ValidationError
from scim2_models import (
    Context,
    Error,
    InvalidSyntaxException,
    ListResponse,
    NotFoundException,
    NotImplementedException,
    PayloadTooLargeException,
    ResourceType,
    ResponseParameters,
    Schema,
    SCIMException,
    SearchRequest,
    UnauthorizedException,
)
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from server.api import read_body
from server.errors import LimitError, RelayError
from server.logs import REQUEST_ID
from server.scim.schema import (
    RESOURCE_TYPES,
    SCHEMAS,
    GroupModel,
    UserModel,
    service_provider_config,
)
from server.scim.service import DirectoryService, Listing, invalid

__all__ = ["MEDIA_TYPE", "PREFIX", "ScimRoutes"]

PREFIX = "/scim/v2"
MEDIA_TYPE = "application/scim+json"
_JSON_TYPES = {"application/scim+json", "application/json"}
_ALL = ["GET", "POST", "PUT", "PATCH", "DELETE"]

Handler = Callable[[Request, str], Awaitable[Response]]


def scim_response(body: dict[str, Any], status: int = 200,
                  headers: dict[str, str] | None = None) -> Response:
    return Response(json.dumps(body, separators=(",", ":")), status_code=status,
                    media_type=MEDIA_TYPE, headers=headers)


def error_response(exc: SCIMException) -> Response:
    error: Error = exc.to_error()
    headers = {}
    if exc.status == 401:
        headers["www-authenticate"] = 'Bearer realm="lightbox-scim"'
    return scim_response(error.model_dump(scim_ctx=Context.RESOURCE_QUERY_RESPONSE),
                         status=int(exc.status), headers=headers)


def _resource(model: Any, params: ResponseParameters[Any] | None, *, status: int = 200,
              location: bool = False) -> Response:
    headers = {}
    if model.meta is not None and model.meta.version:
        headers["etag"] = model.meta.version
    if location and model.meta is not None and model.meta.location:
        headers["location"] = model.meta.location
    ctx = Context.RESOURCE_CREATION_RESPONSE if status == 201 else \
        Context.RESOURCE_QUERY_RESPONSE
    return scim_response(model.model_dump(scim_ctx=ctx, response_parameters=params),
                         status=status, headers=headers)


class _MethodNotAllowed(SCIMException):
    status = 405
    _default_detail = "the endpoint does not take this method"

    def __init__(self, allowed: list[str]) -> None:
        self.allowed = allowed
        super().__init__()


class ScimRoutes:
    def __init__(self, *, service: DirectoryService, max_body: int) -> None:
        self.service, self.max_body = service, max_body

    def app(self) -> Starlette:
        r = self._route
        routes = [
            *r("/ServiceProviderConfig", ["GET"], self.spc),
            *r("/ResourceTypes", ["GET"], self.resource_types),
            *r("/ResourceTypes/{id}", ["GET"], self.resource_type),
            *r("/Schemas", ["GET"], self.schemas),
            *r("/Schemas/{id}", ["GET"], self.schema),
            *r("/Users", ["GET", "POST"], self.users),
            *r("/Users/.search", ["POST"], self.search_users),
            *r("/Users/{id}", ["GET", "PUT", "PATCH", "DELETE"], self.user),
            *r("/Groups", ["GET", "POST"], self.groups),
            *r("/Groups/.search", ["POST"], self.search_groups),
            *r("/Groups/{id}", ["GET", "PUT", "PATCH", "DELETE"], self.group),
            *r("/.search", ["POST"], self.search_all),
            *r("/Me", _ALL, self.me),
            *r("/Bulk", _ALL, self.bulk),
            r("/{path:path}", _ALL, self.unknown)[0],  # matches a trailing slash too
        ]
        return Starlette(routes=routes, exception_handlers={HTTPException: _http_error,
                                                            Exception: _internal_error})

    def _route(self, path: str, methods: list[str], handler: Handler) -> tuple[Route, Route]:
        """The endpoint at ``path`` and at ``path/`` (module docstring), one route template."""
        template = PREFIX + path

        async def endpoint(request: Request) -> Response:
            request.scope["lightbox.route"] = template
            try:
                org_id = await self._authenticate(request)
                if request.method not in methods:
                    raise _MethodNotAllowed(methods)
                return await handler(request, org_id)
            except _MethodNotAllowed as exc:
                response = error_response(exc)
                response.headers["allow"] = ", ".join(exc.allowed)
                return response
            except SCIMException as exc:
                return error_response(exc)
            except LimitError as exc:
                return error_response(PayloadTooLargeException(detail=exc.detail))
            except RelayError as exc:  # a malformed Content-Length, from read_body
                return error_response(InvalidSyntaxException(detail=exc.detail))

        return Route(path, endpoint, methods=_ALL), Route(path + "/", endpoint, methods=_ALL)

    async def _authenticate(self, request: Request) -> str:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise UnauthorizedException(detail="a bearer token is required")
        org_id = await self.service.organisation(token.strip())
        if org_id is None:
            raise UnauthorizedException(detail="the bearer token is not valid")
        return org_id

    # --- request parts --------------------------------------------------------------------

    async def _body(self, request: Request) -> Any:
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype not in _JSON_TYPES:
            raise InvalidSyntaxException(detail=f"the body must be {MEDIA_TYPE}")
        raw = await read_body(request, self.max_body)
        try:
            body = json.loads(raw)
        except ValueError as exc:
            raise InvalidSyntaxException(detail="the body is not valid JSON") from exc
        if not isinstance(body, dict):
            raise InvalidSyntaxException(detail="the body must be a JSON object")
        return body

    @staticmethod
    def _params(request: Request) -> ResponseParameters[Any]:
        query = {k: v for k, v in request.query_params.items()
                 if k in {"attributes", "excludedAttributes"}}
        try:
            return ResponseParameters.model_validate(query)
        except ValidationError as exc:
            raise invalid(exc) from exc

    @staticmethod
    def _search_query(request: Request) -> SearchRequest[Any]:
        """RFC 7644 §3.4.2: filter, startIndex, count, attributes, excludedAttributes."""
        names = {"filter", "startIndex", "count", "attributes", "excludedAttributes"}
        query = {k: v for k, v in request.query_params.items() if k in names}
        try:
            return SearchRequest.model_validate(query, scim_ctx=Context.SEARCH_REQUEST)
        except ValidationError as exc:
            raise invalid(exc) from exc

    async def _search_body(self, request: Request) -> SearchRequest[Any]:
        try:
            return SearchRequest.model_validate(await self._body(request),
                                                scim_ctx=Context.SEARCH_REQUEST)
        except ValidationError as exc:
            raise invalid(exc) from exc

    @staticmethod
    def _base(request: Request) -> str:
        """The service's base URL (RFC 7644 §3.1 ``meta.location`` is built on it)."""
        return str(request.url.replace(path=PREFIX, query="", fragment=""))

    # --- discovery (RFC 7644 §4) ----------------------------------------------------------

    async def spc(self, request: Request, org_id: str) -> Response:
        config = service_provider_config(self.service.max_results)
        return scim_response(config.model_dump(scim_ctx=Context.RESOURCE_QUERY_RESPONSE))

    async def resource_types(self, request: Request, org_id: str) -> Response:
        return self._listing(list(RESOURCE_TYPES), ResourceType)

    async def resource_type(self, request: Request, org_id: str) -> Response:
        for rt in RESOURCE_TYPES:
            if rt.id == request.path_params["id"]:
                return scim_response(rt.model_dump(scim_ctx=Context.RESOURCE_QUERY_RESPONSE))
        raise NotFoundException(detail="no such resource type")

    async def schemas(self, request: Request, org_id: str) -> Response:
        return self._listing(list(SCHEMAS), Schema)

    async def schema(self, request: Request, org_id: str) -> Response:
        for s in SCHEMAS:
            if s.id == request.path_params["id"]:
                return scim_response(s.model_dump(scim_ctx=Context.RESOURCE_QUERY_RESPONSE))
        raise NotFoundException(detail="no such schema")

    @staticmethod
    def _listing(items: list[Any], model: Any) -> Response:
        response = ListResponse[model](total_results=len(items), start_index=1,
                                     items_per_page=len(items), resources=items)
        return scim_response(response.model_dump(scim_ctx=Context.RESOURCE_QUERY_RESPONSE))

    async def search_all(self, request: Request, org_id: str) -> Response:
        """RFC 7644 §3.4.3: a search across both resource types."""
        search = await self._search_body(request)
        return self._list(await self.service.search_all(org_id, search, self._base(request)),
                          search, UserModel | GroupModel)

    async def unknown(self, request: Request, org_id: str) -> Response:
        raise NotFoundException(detail="no such endpoint")

    async def me(self, request: Request, org_id: str) -> Response:
        raise NotImplementedException(
            detail="/Me is not supported: the bearer token names a directory, not a user "
                   "(RFC 7644 §3.11)")

    async def bulk(self, request: Request, org_id: str) -> Response:
        raise NotImplementedException(
            detail="bulk operations are not supported (ServiceProviderConfig bulk.supported "
                   "is false, RFC 7644 §3.7)")

    # --- resources ------------------------------------------------------------------------

    @staticmethod
    def _list(listing: Listing, search: SearchRequest[Any], model: Any) -> Response:
        response = ListResponse[model](total_results=listing.total,
                                     start_index=listing.start_index,
                                     items_per_page=len(listing.resources),
                                     resources=listing.resources)
        return scim_response(response.model_dump(scim_ctx=Context.SEARCH_RESPONSE,
                                                 response_parameters=search))

    async def users(self, request: Request, org_id: str) -> Response:
        base = self._base(request)
        if request.method == "POST":
            body = await self._body(request)
            created = await self.service.create_user(org_id, body, base)
            return _resource(created, None, status=201, location=True)
        search = self._search_query(request)
        return self._list(await self.service.list_users(org_id, search, base), search, UserModel)

    async def search_users(self, request: Request, org_id: str) -> Response:
        search = await self._search_body(request)
        return self._list(await self.service.list_users(org_id, search, self._base(request)),
                          search, UserModel)

    async def user(self, request: Request, org_id: str) -> Response:
        scim_id, base = request.path_params["id"], self._base(request)
        if_match = request.headers.get("if-match")
        s = self.service
        if request.method == "GET":
            params = self._params(request)
            return self._fresh(request, await s.get_user(org_id, scim_id, base), params)
        if request.method == "DELETE":
            await s.delete_user(org_id, scim_id, if_match)
            return Response(status_code=204)
        body = await self._body(request)
        if request.method == "PUT":
            return _resource(await s.replace_user(org_id, scim_id, body, base, if_match), None)
        return _resource(await s.patch_user(org_id, scim_id, body, base, if_match), None)

    async def groups(self, request: Request, org_id: str) -> Response:
        base = self._base(request)
        if request.method == "POST":
            body = await self._body(request)
            created = await self.service.create_group(org_id, body, base)
            return _resource(created, None, status=201, location=True)
        search = self._search_query(request)
        return self._list(await self.service.list_groups(org_id, search, base), search,
                          GroupModel)

    async def search_groups(self, request: Request, org_id: str) -> Response:
        search = await self._search_body(request)
        return self._list(await self.service.list_groups(org_id, search, self._base(request)),
                          search, GroupModel)

    async def group(self, request: Request, org_id: str) -> Response:
        scim_id, base = request.path_params["id"], self._base(request)
        if_match = request.headers.get("if-match")
        s = self.service
        if request.method == "GET":
            params = self._params(request)
            return self._fresh(request, await s.get_group(org_id, scim_id, base), params)
        if request.method == "DELETE":
            await s.delete_group(org_id, scim_id, if_match)
            return Response(status_code=204)
        body = await self._body(request)
        if request.method == "PUT":
            return _resource(await s.replace_group(org_id, scim_id, body, base, if_match),
                             None)
        return _resource(await s.patch_group(org_id, scim_id, body, base, if_match), None)

    @staticmethod
    def _fresh(request: Request, model: Any, params: ResponseParameters[Any]) -> Response:
        """RFC 7644 §3.14: a GET whose If-None-Match names the current version is 304."""
        version = model.meta.version if model.meta is not None else None
        tags = [t.strip() for t in request.headers.get("if-none-match", "").split(",")]
        if version and version in tags:
            return Response(status_code=304, headers={"etag": version})
        return _resource(model, params)


async def _internal_error(request: Request, exc: Exception) -> Response:
    """An unexpected failure (the database gone, a bug) as the RFC 7644 §3.12 error body with
    status 500, naming only the request id; Starlette re-raises the exception after this
    answer, so the relay's edge (server/middleware.py) logs it with its route."""
    error = SCIMException.from_error(Error(
        status=500, detail=f"the relay could not handle this request; its log names request "
                           f"{REQUEST_ID.get()}"))
    return error_response(error)


async def _http_error(request: Request, exc: Exception) -> Response:
    """405 and the like from Starlette's router, as SCIM errors."""
    assert isinstance(exc, HTTPException)
    error = SCIMException.from_error(Error(status=exc.status_code, detail=exc.detail))
    return error_response(error)
