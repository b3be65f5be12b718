"""Login, refresh and logout routes (docs/PROTOCOL.md §11); the logic is in server/login.py."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from protocol.api import LoginChallenge, LoginRequest, RefreshRequest, TokenPair
from protocol.errors import ErrorCode
from server.api import Endpoint, json_response, read_json
from server.login import LoginService

__all__ = ["AuthRoutes"]

E = ErrorCode
_STATUS = [E.DEVICE_REVOKED, E.USER_SUSPENDED, E.LICENCE_EXPIRED, E.CERTIFICATE_EXPIRED]


class AuthRoutes:
    def __init__(self, *, login: LoginService, max_body: int) -> None:
        self.service, self.max_body = login, max_body

    def endpoints(self) -> list[Endpoint]:
        return [
            Endpoint("POST", "/v1/auth/challenge", self.challenge,
                     "A single-use nonce for the device to sign at login.",
                     response=LoginChallenge, tag="auth"),
            Endpoint("POST", "/v1/auth/login", self.login,
                     "Log in with login, password and the device's signature over a nonce.",
                     request=LoginRequest, response=TokenPair, tag="auth",
                     errors=[E.INVALID_CREDENTIALS, E.ACCOUNT_LOCKED, E.CHALLENGE_FAILED,
                             E.SSO_REQUIRED, *_STATUS]),
            Endpoint("POST", "/v1/auth/refresh", self.refresh,
                     "Exchange a refresh token for new tokens (rotation; reuse ends the "
                     "session).", request=RefreshRequest, response=TokenPair, tag="auth",
                     errors=[E.TOKEN_INVALID, E.TOKEN_EXPIRED, E.REFRESH_REUSED, *_STATUS]),
            Endpoint("POST", "/v1/auth/logout", self.logout,
                     "End the session the refresh token belongs to.", request=RefreshRequest,
                     status=204, tag="auth", errors=[E.TOKEN_INVALID]),
        ]

    async def challenge(self, request: Request) -> Response:
        return json_response(await self.service.challenge())

    async def login(self, request: Request) -> Response:
        body = await read_json(request, LoginRequest, self.max_body)
        return json_response(await self.service.login(body))

    async def refresh(self, request: Request) -> Response:
        body = await read_json(request, RefreshRequest, self.max_body)
        return json_response(await self.service.refresh(body.refresh_token))

    async def logout(self, request: Request) -> Response:
        body = await read_json(request, RefreshRequest, self.max_body)
        await self.service.logout(body.refresh_token)
        return Response(status_code=204)
