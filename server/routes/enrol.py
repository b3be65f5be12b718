"""Enrolment of a first device and pairing of further ones (docs/PROTOCOL.md §11); the logic
is in server/enrolment.py."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from protocol.api import (
    EnrolComplete,
    EnrolFetch,
    Enrolled,
    EnrolPackage,
    PairingCertificate,
    PairingClaim,
    PairingOffer,
    PairingPending,
    PairingResult,
)
from protocol.errors import ErrorCode
from server.api import Endpoint, json_response, read_json, read_json_batch
from server.authn import DEVICE_AUTH_ERRORS, Authenticator
from server.enrolment import EnrolmentService

__all__ = ["EnrolRoutes"]

E = ErrorCode
_CODE = [E.ENROLMENT_CODE_INVALID, E.ENROLMENT_CODE_USED, E.ENROLMENT_CODE_EXPIRED,
         E.RATE_LIMITED]
_CERTS = [E.CERTIFICATE_INVALID, E.CERTIFICATE_EXPIRED, E.CERTIFICATE_REVOKED,
          E.CERTIFICATE_UNTRUSTED, E.LICENCE_EXPIRED]


class EnrolRoutes:
    def __init__(self, *, enrolment: EnrolmentService, authn: Authenticator, max_body: int,
                 prekey_batch_max: int) -> None:
        self.service, self.authn = enrolment, authn
        self.max_body, self.batch_max = max_body, prekey_batch_max

    def endpoints(self) -> list[Endpoint]:
        return [
            Endpoint("POST", "/v1/enrol/fetch", self.fetch,
                     "Fetch the identity key sealed under the enrolment code.",
                     request=EnrolFetch, response=EnrolPackage, tag="enrolment", errors=_CODE),
            Endpoint("POST", "/v1/enrol/complete", self.complete,
                     "Register the first device, its prekeys and the password.",
                     request=EnrolComplete, response=Enrolled, tag="enrolment",
                     errors=[*_CODE, *_CERTS, E.PASSWORD_TOO_WEAK, E.SSO_REQUIRED,
                             E.PREKEY_BATCH_TOO_LARGE, E.PREKEY_DUPLICATE, E.DEVICE_LIMIT,
                             E.CONFLICT]),
            Endpoint("POST", "/v1/pairing", self.offer,
                     "A new device offers its public keys for linking.", request=PairingOffer,
                     status=201, tag="enrolment", errors=[E.PAIRING_CODE_INVALID, E.CONFLICT]),
            Endpoint("GET", "/v1/pairing/{token_hash}", self.pending,
                     "An enrolled device reads a pending pairing offer.",
                     response=PairingPending, auth="device", tag="enrolment",
                     errors=[*DEVICE_AUTH_ERRORS, E.PAIRING_CODE_INVALID]),
            Endpoint("POST", "/v1/pairing/{token_hash}/certificate", self.certify,
                     "An enrolled device posts the new device's certificate.",
                     request=PairingCertificate, status=204, auth="device", tag="enrolment",
                     errors=[*DEVICE_AUTH_ERRORS, E.PAIRING_CODE_INVALID, *_CERTS,
                             E.DEVICE_LIMIT, E.CONFLICT]),
            Endpoint("POST", "/v1/pairing/{token_hash}/result", self.result,
                     "The new device collects its certificate (202 while pending).",
                     request=PairingClaim, response=PairingResult, tag="enrolment",
                     errors=[E.PAIRING_CODE_INVALID]),
        ]

    async def fetch(self, request: Request) -> Response:
        body = await read_json(request, EnrolFetch, self.max_body)
        return json_response(await self.service.fetch(body))

    async def complete(self, request: Request) -> Response:
        body = await read_json_batch(request, EnrolComplete, self.max_body,
                                     field="one_time_prekeys", max_items=self.batch_max,
                                     code=E.PREKEY_BATCH_TOO_LARGE)
        return json_response(await self.service.complete(body))

    async def offer(self, request: Request) -> Response:
        body = await read_json(request, PairingOffer, self.max_body)
        await self.service.offer(body)
        return Response(status_code=201)

    async def pending(self, request: Request) -> Response:
        principal = await self.authn.require_device(request)
        return json_response(await self.service.pending(principal,
                                                        request.path_params["token_hash"]))

    async def certify(self, request: Request) -> Response:
        principal = await self.authn.require_device(request)
        body = await read_json(request, PairingCertificate, self.max_body)
        await self.service.certify(principal, request.path_params["token_hash"], body)
        return Response(status_code=204)

    async def result(self, request: Request) -> Response:
        body = await read_json(request, PairingClaim, self.max_body)
        result = await self.service.result(request.path_params["token_hash"], body)
        if result is None:
            return Response(status_code=202, headers={"retry-after": "1"})
        return json_response(result)
