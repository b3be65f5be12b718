"""Single sign-on routes (docs/PROTOCOL.md §11, "Single sign-on"); the logic is in
server/oidc.py."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from protocol.api import Enrolled, TokenPair
from protocol.errors import ErrorCode
from protocol.sso import SsoChallenge, SsoConfig, SsoEnrolComplete, SsoLogin
from server.api import Endpoint, json_response, read_json, read_json_batch
from server.oidc import OidcService

__all__ = ["SsoRoutes"]

E = ErrorCode
_ID_TOKEN = [E.FORBIDDEN, E.TOKEN_INVALID, E.TOKEN_EXPIRED, E.TOKEN_AUDIENCE,
             E.CHALLENGE_FAILED, E.INVALID_CREDENTIALS, E.NOT_READY]
_STATUS = [E.DEVICE_REVOKED, E.USER_SUSPENDED, E.LICENCE_EXPIRED, E.CERTIFICATE_EXPIRED]


class SsoRoutes:
    def __init__(self, *, service: OidcService, max_body: int, prekey_batch_max: int) -> None:
        self.service, self.max_body, self.batch_max = service, max_body, prekey_batch_max

    def endpoints(self) -> list[Endpoint]:
        return [
            Endpoint("GET", "/v1/auth/sso/{org_id}", self.config,
                     "The organisation's OpenID provider and client id (to start the flow).",
                     response=SsoConfig, tag="auth", errors=[E.FORBIDDEN]),
            Endpoint("POST", "/v1/auth/sso/challenge", self.challenge,
                     "A single-use nonce: the OpenID nonce, and what the device signs.",
                     response=SsoChallenge, tag="auth"),
            Endpoint("POST", "/v1/auth/sso/login", self.login,
                     "Log in with the IdP's ID token and the device's signature over its "
                     "nonce.", request=SsoLogin, response=TokenPair, tag="auth",
                     errors=[*_ID_TOKEN, *_STATUS]),
            Endpoint("POST", "/v1/enrol/complete-sso", self.enrol,
                     "Register the first device with the IdP's ID token instead of a "
                     "password.", request=SsoEnrolComplete, response=Enrolled,
                     tag="enrolment",
                     errors=[*_ID_TOKEN, E.ENROLMENT_CODE_INVALID, E.ENROLMENT_CODE_USED,
                             E.ENROLMENT_CODE_EXPIRED, E.RATE_LIMITED, E.CERTIFICATE_INVALID,
                             E.CERTIFICATE_EXPIRED, E.CERTIFICATE_REVOKED,
                             E.CERTIFICATE_UNTRUSTED, E.LICENCE_EXPIRED,
                             E.PREKEY_BATCH_TOO_LARGE, E.PREKEY_DUPLICATE, E.DEVICE_LIMIT,
                             E.CONFLICT]),
        ]

    async def config(self, request: Request) -> Response:
        return json_response(self.service.config(request.path_params["org_id"]))

    async def challenge(self, request: Request) -> Response:
        return json_response(await self.service.challenge())

    async def login(self, request: Request) -> Response:
        body = await read_json(request, SsoLogin, self.max_body)
        return json_response(await self.service.login(body))

    async def enrol(self, request: Request) -> Response:
        body = await read_json_batch(request, SsoEnrolComplete, self.max_body,
                                     field="one_time_prekeys", max_items=self.batch_max,
                                     code=E.PREKEY_BATCH_TOO_LARGE)
        return json_response(await self.service.enrol(body))
