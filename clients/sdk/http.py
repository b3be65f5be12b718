"""The relay's HTTP API (docs/PROTOCOL.md §11) for clients: one async method per route, and
nothing else. A route names its method, path, body struct (:mod:`protocol.api`) and answer
struct; how a request is authenticated, sent, retried and its answer mapped to errors lives in
:mod:`clients.sdk.transport` (and :mod:`clients.sdk.answers`, :mod:`clients.sdk.proof`).

Device routes go through ``_device`` (bearer token and ``Lightbox-Proof``, refreshed as
needed); admin routes send ``_admin_headers()``; public routes neither.
"""

from __future__ import annotations

import contextlib
from typing import Any
from urllib.parse import quote

import httpx
import msgspec

from clients.sdk.transport import RelayTransport
from protocol import api
from protocol.canonical import b64url_encode
from protocol.directory import PendingUsers, Renewed, RenewPending, SignedPending, SignPending
from protocol.sso import SsoChallenge, SsoConfig, SsoEnrolComplete, SsoLogin

__all__ = ["ProvisionResults", "RelayHTTP"]


class ProvisionResults(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Answer of ``POST /v1/admin/users``: one result per provisioned user, in order."""

    results: list[api.ProvisionResult]


class RelayHTTP(RelayTransport):
    """Async client of one relay: the routes. Use as ``async with RelayHTTP(url) as relay: ...``
    (the arguments are :class:`~clients.sdk.transport.RelayTransport`'s)."""

    async def __aenter__(self) -> RelayHTTP:
        return self

    # --- admin ----------------------------------------------------------------------------

    async def admin_login(self, login: str, password: str) -> api.AdminToken:
        r = await self._send("POST", "/v1/admin/login",
                             body=api.AdminLogin(login=login, password=password))
        token = self._decode(r, api.AdminToken)
        self.admin_token = token.token
        return token

    async def provision_users(self, body: api.ProvisionUsers) -> list[api.ProvisionResult]:
        r = await self._send("POST", "/v1/admin/users", body=body, headers=self._admin_headers())
        return self._decode(r, ProvisionResults).results

    async def list_users(self, q: str | None = None, status: str | None = None) -> api.UserList:
        params = {k: v for k, v in {"q": q, "status": status}.items() if v}
        r = await self._send("GET", "/v1/admin/users", params=params,
                             headers=self._admin_headers())
        return self._decode(r, api.UserList)

    async def get_user(self, user_id: str) -> api.UserDetail:
        r = await self._send("GET", f"/v1/admin/users/{quote(user_id, safe='')}",
                             headers=self._admin_headers())
        return self._decode(r, api.UserDetail)

    async def renew_certificate(self, user_id: str, user_certificate: str) -> api.UserSummary:
        r = await self._send(
            "PUT", f"/v1/admin/users/{quote(user_id, safe='')}/certificate",
            body=api.CertificateRenewal(user_certificate=user_certificate),
            headers=self._admin_headers(),
        )
        return self._decode(r, api.UserSummary)

    async def reissue_enrolment(self, user_id: str,
                                body: api.EnrolmentReissue) -> api.EnrolmentReissued:
        r = await self._send("POST", f"/v1/admin/users/{quote(user_id, safe='')}/enrolment",
                             body=body, headers=self._admin_headers())
        return self._decode(r, api.EnrolmentReissued)

    async def upload_revocations(self, revocation_list: str) -> Any:
        r = await self._send("POST", "/v1/admin/revocations",
                             body=api.RevocationUpload(revocation_list=revocation_list),
                             headers=self._admin_headers())
        return self._decode(r, object)

    async def directory_pending(self) -> PendingUsers:
        """Directory (SCIM) users waiting for IT's signature (protocol/directory.py)."""
        r = await self._send("GET", "/v1/admin/directory/pending",
                             headers=self._admin_headers())
        return self._decode(r, PendingUsers)

    async def sign_pending(self, directory_id: str, body: SignPending) -> SignedPending:
        r = await self._send("POST", f"/v1/admin/directory/pending/{quote(directory_id, safe='')}",
                             body=body, headers=self._admin_headers())
        return self._decode(r, SignedPending)

    async def renew_pending(self, user_id: str, body: RenewPending) -> Renewed:
        """A certificate renewed as the directory or the IdP asked (protocol/directory.py)."""
        r = await self._send("POST", f"/v1/admin/directory/renewals/{quote(user_id, safe='')}",
                             body=body, headers=self._admin_headers())
        return self._decode(r, Renewed)

    # --- public ---------------------------------------------------------------------------

    async def revocations(self) -> api.RevocationLists:
        return self._decode(await self._send("GET", "/v1/revocations"), api.RevocationLists)

    async def enrol_fetch(self, enrolment_token: bytes) -> api.EnrolPackage:
        r = await self._send("POST", "/v1/enrol/fetch",
                             body=api.EnrolFetch(enrolment_token=b64url_encode(enrolment_token)))
        return self._decode(r, api.EnrolPackage)

    async def enrol_complete(self, body: api.EnrolComplete) -> api.Enrolled:
        return self._decode(await self._send("POST", "/v1/enrol/complete", body=body),
                            api.Enrolled)

    async def enrol_complete_sso(self, body: SsoEnrolComplete) -> api.Enrolled:
        return self._decode(await self._send("POST", "/v1/enrol/complete-sso", body=body),
                            api.Enrolled)

    async def accepts_browser_origin(self, origin: str) -> bool:
        """Whether the relay lets a browser on ``origin`` call its HTTP API: a CORS preflight
        (Fetch Standard, "CORS-preflight fetch") of the request a phone app makes first, its
        enrolment, answered with that origin allowed (LIGHTBOX_PHONE_ORIGINS,
        docs/OPERATIONS.md)."""
        response = await self._send("OPTIONS", "/v1/enrol/fetch", headers={
            "Origin": origin, "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type"})
        allowed: str | None = response.headers.get("access-control-allow-origin")
        return allowed == origin

    async def sso_config(self, org_id: str) -> SsoConfig:
        return self._decode(await self._send("GET", f"/v1/auth/sso/{quote(org_id, safe='')}"),
                            SsoConfig)

    async def sso_challenge(self) -> SsoChallenge:
        return self._decode(await self._send("POST", "/v1/auth/sso/challenge"), SsoChallenge)

    async def sso_login(self, body: SsoLogin) -> api.TokenPair:
        tokens = self._decode(await self._send("POST", "/v1/auth/sso/login", body=body),
                              api.TokenPair)
        return await self._set_tokens(tokens)

    async def pairing_offer(self, body: api.PairingOffer) -> None:
        self._expect(await self._send("POST", "/v1/pairing", body=body), 200, 201, 204)

    async def pairing_result(self, token_hash: str, token: bytes) -> api.PairingResult | None:
        """The pairing result, or None while the enrolled device has not answered (202)."""
        r = await self._send("POST", f"/v1/pairing/{token_hash}/result",
                             body=api.PairingClaim(pairing_token=b64url_encode(token)))
        if r.status_code == 202:
            return None
        return self._decode(r, api.PairingResult)

    async def challenge(self) -> api.LoginChallenge:
        return self._decode(await self._send("POST", "/v1/auth/challenge"), api.LoginChallenge)

    async def login(self, body: api.LoginRequest) -> api.TokenPair:
        tokens = self._decode(await self._send("POST", "/v1/auth/login", body=body),
                              api.TokenPair)
        return await self._set_tokens(tokens)

    async def logout(self) -> None:
        if self.tokens is None:
            return
        await self.end_session(self.tokens.refresh_token)
        self.tokens = None

    async def end_session(self, refresh_token: str) -> None:
        """End the session ``refresh_token`` belongs to, used by this client or not."""
        r = await self._send("POST", "/v1/auth/logout",
                             body=api.RefreshRequest(refresh_token=refresh_token))
        self._expect(r, 200, 204)

    # --- device ---------------------------------------------------------------------------

    async def pairing_pending(self, token_hash: str) -> api.PairingPending:
        return self._decode(await self._device("GET", f"/v1/pairing/{token_hash}"),
                            api.PairingPending)

    async def pairing_certificate(self, token_hash: str, body: api.PairingCertificate) -> None:
        r = await self._device("POST", f"/v1/pairing/{token_hash}/certificate", body=body)
        self._expect(r, 200, 201, 204)

    async def user_devices(self, user_id: str) -> api.UserDevices:
        r = await self._device("GET", f"/v1/users/{quote(user_id, safe='')}/devices")
        return self._decode(r, api.UserDevices)

    async def claim_keys(self, device_ids: list[str]) -> api.ClaimedKeys:
        r = await self._device("POST", "/v1/keys/claim", body=api.KeyClaim(devices=device_ids))
        return self._decode(r, api.ClaimedKeys)

    async def upload_one_time_prekeys(self, prekeys: list[str]) -> api.PrekeyCount:
        r = await self._device("POST", "/v1/keys/one-time", body=api.PrekeyUpload(prekeys=prekeys))
        return self._decode(r, api.PrekeyCount)

    async def upload_signed_prekey(self, signed_prekey: str) -> None:
        r = await self._device("PUT", "/v1/keys/signed-prekey",
                               body=api.SignedPrekeyUpload(signed_prekey=signed_prekey))
        self._expect(r, 200, 204)

    async def prekey_count(self) -> api.PrekeyCount:
        return self._decode(await self._device("GET", "/v1/keys/count"), api.PrekeyCount)

    async def directory(self, q: str = "", *, login: str | None = None) -> api.DirectoryResult:
        """A directory search (``q``), or the one user whose login is exactly ``login``."""
        params = {"q": q} if login is None else {"login": login}
        return self._decode(await self._device("GET", "/v1/directory", params=params),
                            api.DirectoryResult)

    # --- attachments (PROTOCOL §12) ---------------------------------------------------------

    async def create_upload(self, size: int) -> api.UploadStatus:
        r = await self._device("POST", "/v1/attachments", body=api.UploadCreate(size=size))
        return self._decode(r, api.UploadStatus)

    async def upload_status(self, attachment_id: str) -> api.UploadStatus:
        r = await self._device("GET", f"/v1/attachments/{quote(attachment_id, safe='')}/upload")
        return self._decode(r, api.UploadStatus)

    async def put_chunk(self, attachment_id: str, offset: int, data: bytes) -> api.UploadStatus:
        r = await self._device("PUT", f"/v1/attachments/{quote(attachment_id, safe='')}/upload",
                               params={"offset": str(offset)}, raw=data)
        return self._decode(r, api.UploadStatus)

    async def finalise_upload(self, attachment_id: str, sha256_hex: str) -> api.UploadStatus:
        r = await self._device("POST",
                               f"/v1/attachments/{quote(attachment_id, safe='')}/finalise",
                               body=api.UploadFinalise(sha256=sha256_hex))
        return self._decode(r, api.UploadStatus)

    def download_stream(self, attachment_id: str, *, start: int = 0
                        ) -> contextlib.AbstractAsyncContextManager[httpx.Response]:
        """Stream an attachment's ciphertext from byte ``start`` (a Range request when > 0).
        A transfer that breaks raises :class:`RelayUnavailable`; resume from what arrived."""
        return self._device_stream(f"/v1/attachments/{quote(attachment_id, safe='')}",
                                   headers={"Range": f"bytes={start}-"} if start else None,
                                   expect=206 if start else 200)

    # --- consent (PROTOCOL §13) ---------------------------------------------------------------

    async def register_consent(self, token: str) -> api.ConsentInfo:
        r = await self._device("POST", "/v1/consents", body=api.ConsentRegister(token=token))
        return self._decode(r, api.ConsentInfo)

    async def get_consent(self, consent_id: str) -> api.ConsentInfo:
        r = await self._device("GET", f"/v1/consents/{quote(consent_id, safe='')}")
        return self._decode(r, api.ConsentInfo)

    async def revoke_consent(self, consent_id: str, reason: str = "") -> api.ConsentRevoked:
        r = await self._device("POST", f"/v1/consents/{quote(consent_id, safe='')}/revoke",
                               body=api.ConsentRevoke(reason=reason) if reason else None)
        return self._decode(r, api.ConsentRevoked)

    async def my_consents(self) -> api.ConsentList:
        """The consents this user captured, newest first."""
        return self._decode(await self._device("GET", "/v1/consents"), api.ConsentList)

    async def admin_consent(self, consent_id: str) -> api.ConsentWithdrawal:
        """The privacy office's view of a consent (admin session)."""
        r = await self._send("GET", f"/v1/admin/consents/{quote(consent_id, safe='')}",
                             headers=self._admin_headers())
        return self._decode(r, api.ConsentWithdrawal)

    async def admin_revoke_consent(self, consent_id: str, reason: str) -> api.ConsentRevoked:
        """Withdraw a consent for the privacy office (admin session; the reason is audited)."""
        r = await self._send("POST", f"/v1/admin/consents/{quote(consent_id, safe='')}/revoke",
                             body=api.ConsentRevoke(reason=reason),
                             headers=self._admin_headers())
        return self._decode(r, api.ConsentRevoked)

    async def report_consent_mismatch(self, consent_id: str, body: api.ConsentMismatch) -> None:
        r = await self._device("POST", f"/v1/consents/{quote(consent_id, safe='')}/mismatch",
                               body=body)
        self._expect(r, 204)

    # --- break-glass (PROTOCOL §17) -------------------------------------------------------------

    async def break_glass_pending(self) -> api.BreakGlassList:
        """This user's emergency messages still waiting for a consent or a reason."""
        return self._decode(await self._device("GET", "/v1/break-glass"), api.BreakGlassList)

    async def break_glass_follow_up(self, case_id: str,
                                    body: api.BreakGlassFollowUp) -> api.BreakGlassCase:
        r = await self._device("POST", f"/v1/break-glass/{quote(case_id, safe='')}/follow-up",
                               body=body)
        return self._decode(r, api.BreakGlassCase)

    async def admin_break_glass(self, *, status: str = "open", since: int | None = None,
                                until: int | None = None) -> api.BreakGlassList:
        """The privacy office's review queue (admin session)."""
        r = await self._send("GET", "/v1/admin/break-glass", headers=self._admin_headers(),
                             params=_window({"status": status}, since, until))
        return self._decode(r, api.BreakGlassList)

    async def admin_break_glass_case(self, case_id: str) -> api.BreakGlassCase:
        r = await self._send("GET", f"/v1/admin/break-glass/{quote(case_id, safe='')}",
                             headers=self._admin_headers())
        return self._decode(r, api.BreakGlassCase)

    async def admin_close_break_glass(self, case_id: str,
                                      body: api.BreakGlassClose) -> api.BreakGlassCase:
        r = await self._send("POST", f"/v1/admin/break-glass/{quote(case_id, safe='')}/close",
                             body=body, headers=self._admin_headers())
        return self._decode(r, api.BreakGlassCase)

    async def admin_break_glass_report(self, *, since: int | None = None,
                                       until: int | None = None) -> api.BreakGlassReport:
        r = await self._send("GET", "/v1/admin/break-glass/report",
                             headers=self._admin_headers(), params=_window({}, since, until))
        return self._decode(r, api.BreakGlassReport)

    # --- threads (PROTOCOL §11) ------------------------------------------------------------------

    async def create_thread(self, body: api.ThreadCreate) -> api.ThreadInfo:
        return self._decode(await self._device("POST", "/v1/threads", body=body), api.ThreadInfo)

    async def threads(self) -> api.ThreadList:
        return self._decode(await self._device("GET", "/v1/threads"), api.ThreadList)

    async def thread_recipients(self, thread_id: str) -> api.ThreadRecipients:
        r = await self._device("GET", f"/v1/threads/{quote(thread_id, safe='')}/recipients")
        return self._decode(r, api.ThreadRecipients)

    async def remove_participant(self, thread_id: str, user_id: str) -> None:
        """Take a user (this device's own user too) out of a thread (PROTOCOL §11)."""
        r = await self._device("DELETE", f"/v1/threads/{quote(thread_id, safe='')}"
                                         f"/participants/{quote(user_id, safe='')}")
        self._expect(r, 204)

    async def mark_thread_read(self, thread_id: str, seq: int) -> None:
        r = await self._device("POST", f"/v1/threads/{quote(thread_id, safe='')}/read",
                               body=api.ReadMark(seq=seq))
        self._expect(r, 204)

    # --- on-call, receipts and escalations (PROTOCOL §16) ----------------------------------------

    async def on_call(self, role: str, at: int | None = None) -> api.OnCall:
        """Who is on call for a role of my organisation (now, or at ``at``)."""
        params = None if at is None else {"at": str(at)}
        r = await self._device("GET", f"/v1/oncall/{quote(role, safe='')}", params=params)
        return self._decode(r, api.OnCall)

    async def thread_receipts(self, thread_id: str, message_id: str | None = None
                              ) -> api.ReceiptList:
        params = None if message_id is None else {"message_id": message_id}
        r = await self._device("GET", f"/v1/threads/{quote(thread_id, safe='')}/receipts",
                               params=params)
        return self._decode(r, api.ReceiptList)

    async def thread_escalations(self, thread_id: str) -> api.EscalationList:
        r = await self._device("GET", f"/v1/threads/{quote(thread_id, safe='')}/escalations")
        return self._decode(r, api.EscalationList)

    def _oncall_path(self, org_id: str, role: str) -> str:
        return f"/v1/admin/oncall/{quote(org_id, safe='')}/{quote(role, safe='')}"

    async def oncall_roles(self) -> api.OncallRoleList:
        r = await self._send("GET", "/v1/admin/oncall", headers=self._admin_headers())
        return self._decode(r, api.OncallRoleList)

    async def set_oncall_role(self, org_id: str, role: str, body: api.OncallRoleSet
                              ) -> api.OncallRoleInfo:
        r = await self._send("PUT", self._oncall_path(org_id, role), body=body,
                             headers=self._admin_headers())
        return self._decode(r, api.OncallRoleInfo)

    async def add_shifts(self, org_id: str, role: str, body: api.ShiftsUpload
                         ) -> api.ShiftResults:
        r = await self._send("POST", self._oncall_path(org_id, role) + "/shifts", body=body,
                             headers=self._admin_headers())
        return self._decode(r, api.ShiftResults)

    async def shifts(self, org_id: str, role: str, *, current: bool = False) -> api.ShiftList:
        r = await self._send("GET", self._oncall_path(org_id, role) + "/shifts",
                             params={"current": "1"} if current else None,
                             headers=self._admin_headers())
        return self._decode(r, api.ShiftList)

    async def delete_shift(self, org_id: str, role: str, shift_id: str) -> None:
        r = await self._send(
            "DELETE", self._oncall_path(org_id, role) + f"/shifts/{quote(shift_id, safe='')}",
            headers=self._admin_headers())
        self._expect(r, 204)


def _window(params: dict[str, str], since: int | None, until: int | None) -> dict[str, str]:
    """Query parameters with an optional [since, until) period in seconds since 1970."""
    out = dict(params)
    if since is not None:
        out["since"] = str(since)
    if until is not None:
        out["until"] = str(until)
    return out
