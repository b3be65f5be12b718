"""Key directory routes: a user's devices, prekey claim and upload, the directory search and
the revocation lists (docs/PROTOCOL.md §11); the logic is in server/keydir.py."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from protocol.api import (
    ClaimedKeys,
    DirectoryResult,
    KeyClaim,
    PrekeyCount,
    PrekeyUpload,
    RevocationLists,
    SignedPrekeyUpload,
    UserDevices,
)
from protocol.errors import ErrorCode
from server.api import Endpoint, json_response, read_json, read_json_batch
from server.authn import DEVICE_AUTH_ERRORS, Authenticator
from server.keydir import KeyDirectory

__all__ = ["KeyRoutes"]

E = ErrorCode
_AUTH = list(DEVICE_AUTH_ERRORS)


class KeyRoutes:
    def __init__(self, *, keydir: KeyDirectory, authn: Authenticator, max_body: int,
                 prekey_batch_max: int) -> None:
        self.keydir, self.authn = keydir, authn
        self.max_body, self.batch_max = max_body, prekey_batch_max

    def endpoints(self) -> list[Endpoint]:
        return [
            Endpoint("GET", "/v1/users/{user_id}/devices", self.user_devices,
                     "A user's certificate, active device certificates and signed prekeys.",
                     response=UserDevices, auth="device", tag="keys",
                     errors=[*_AUTH, E.NOT_FOUND]),
            Endpoint("POST", "/v1/keys/claim", self.claim,
                     "Claim one one-time prekey per device (the signed prekey alone when none "
                     "is left or the device's claim window is used up).",
                     request=KeyClaim, response=ClaimedKeys, auth="device", tag="keys",
                     errors=[*_AUTH, E.NOT_FOUND, E.PREKEY_CLAIMS_LIMITED]),
            Endpoint("POST", "/v1/keys/one-time", self.upload,
                     "Upload a batch of signed one-time prekeys.", request=PrekeyUpload,
                     response=PrekeyCount, auth="device", tag="keys",
                     errors=[*_AUTH, E.PREKEY_BATCH_TOO_LARGE, E.PREKEY_DUPLICATE,
                             E.CERTIFICATE_INVALID]),
            Endpoint("PUT", "/v1/keys/signed-prekey", self.signed_prekey,
                     "Replace the device's signed prekey.", request=SignedPrekeyUpload,
                     status=204, auth="device", tag="keys",
                     errors=[*_AUTH, E.CERTIFICATE_INVALID]),
            Endpoint("GET", "/v1/keys/count", self.count,
                     "How many one-time prekeys the device has left on the relay.",
                     response=PrekeyCount, auth="device", tag="keys", errors=_AUTH),
            Endpoint("GET", "/v1/directory", self.directory,
                     "Find credentialed, active users by login, name, role, specialty or "
                     "department (``q``), or the one whose login is exactly ``login``.",
                     response=DirectoryResult, auth="device", tag="keys",
                     errors=[*_AUTH, E.VALIDATION_FAILED]),
            Endpoint("GET", "/v1/revocations", self.revocations,
                     "The latest organisation-signed revocation list of each organisation.",
                     response=RevocationLists, tag="keys"),
        ]

    async def user_devices(self, request: Request) -> Response:
        await self.authn.require_device(request)
        return json_response(await self.keydir.user_devices(request.path_params["user_id"]))

    async def claim(self, request: Request) -> Response:
        principal = await self.authn.require_device(request)
        body = await read_json(request, KeyClaim, self.max_body)
        return json_response(ClaimedKeys(keys=await self.keydir.claim(principal,
                                                                      list(body.devices))))

    async def upload(self, request: Request) -> Response:
        principal = await self.authn.require_device(request)
        body = await read_json_batch(request, PrekeyUpload, self.max_body, field="prekeys",
                                     max_items=self.batch_max, code=E.PREKEY_BATCH_TOO_LARGE)
        return json_response(await self.keydir.upload_one_time(principal, list(body.prekeys)))

    async def signed_prekey(self, request: Request) -> Response:
        principal = await self.authn.require_device(request)
        body = await read_json(request, SignedPrekeyUpload, self.max_body)
        await self.keydir.set_signed(principal, body.signed_prekey)
        return Response(status_code=204)

    async def count(self, request: Request) -> Response:
        principal = await self.authn.require_device(request)
        return json_response(await self.keydir.count(principal))

    async def directory(self, request: Request) -> Response:
        await self.authn.require_device(request)
        q = request.query_params.get("q", "")
        login = request.query_params.get("login")
        return json_response(DirectoryResult(users=await self.keydir.directory(q, login=login)))

    async def revocations(self, request: Request) -> Response:
        return json_response(RevocationLists(lists=await self.keydir.revocation_lists()))
