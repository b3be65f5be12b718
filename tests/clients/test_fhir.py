"""clients/gateway/fhir.py against a real FHIR R4 server (``fhir_server``, tests/fhir_server.py).

What SEKMET FHIR R4 Tester 0.1.1 (``sekmet-fhir``, SQLite store) does, as these tests pin down:

- a conditional create (``If-None-Exist: identifier=system|value``) of a new Consent: 201 with
  ``Location: [base]/Consent/[id]/_history/1``; the same identifier again: 200, the existing
  Consent and the same Location, nothing new stored;
- the identifier already on two Consents: 412 (multiple matches);
- ``GET [base]/Consent?identifier=system|value``: a searchset Bundle with ``total``;
- no credentials, or a wrong token or password: 401 with ``WWW-Authenticate``;
- a Consent missing a required element, with an element of the wrong type or an unknown
  element: 400 with an OperationOutcome naming the element (structural validation only: a code
  outside its value set, e.g. ``provision.type`` "maybe", is accepted);
- over HTTPS with a certificate from a private CA: trusted with ``LIGHTBOX_FHIR_CA_FILE``,
  refused without it.

The consents are made with the real protocol helpers (claims → signed token → the claims the
gateway reads from it → ``to_fhir_consent``); the patient reference is an opaque test value.
"""

from __future__ import annotations

import asyncio
import json
import socket
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from clients.gateway.fhir import (
    FhirAuthError,
    FhirClient,
    FhirConflict,
    FhirError,
    FhirProtocolError,
    FhirRejected,
    FhirSettings,
    FhirUnavailable,
)
from clients.gateway.httpio import KEEPALIVE_EXPIRY
from protocol.consent import (
    ConsentBasis,
    ConsentClaims,
    ConsentDecision,
    ConsentRecipients,
    issue_consent_token,
    peek_consent_token_unverified,
    to_fhir_consent,
)
from protocol.keys import Ed25519KeyPair
from protocol.model import Purpose
from tests.fhir_server import (
    FhirServer,
    running_fhir_server,
)
from tests.helpers import TcpProxy, seconds

ISSUER_KEY = Ed25519KeyPair.from_seed(b"\x31" * 32)
T0 = 1_767_225_600  # 2026-01-01T00:00:00Z
URI = "urn:ietf:rfc:3986"  # the identifier system to_fhir_consent uses for the consent id


# --- fixtures and helpers ------------------------------------------------------------------


def bearer_settings(server: FhirServer, **changes: Any) -> FhirSettings:
    return FhirSettings(url=server.base_url, token=server.token, timeout=seconds(10), **changes)


@pytest.fixture
async def fhir(fhir_server: FhirServer) -> AsyncIterator[FhirClient]:
    async with FhirClient(bearer_settings(fhir_server)) as client:
        yield client


def consent_claims(*, decision: ConsentDecision = ConsentDecision.AGREED) -> ConsentClaims:
    """Claims as the gateway reads them from a signed consent token (a fresh consent id)."""
    claims = ConsentClaims(
        jti=str(uuid.uuid4()),
        iss="a0000000-0000-4000-8000-000000000001",
        org="st-elsewhere.example",
        patient="pt-test-" + uuid.uuid4().hex[:12],
        purposes=[Purpose.DIRECT_CARE],
        recipients=ConsentRecipients(users=[], roles=["orthopaedics_oncall"], orgs=[],
                                     external=False),
        images=["ab" * 32] if decision is ConsentDecision.AGREED else [],
        form_version="2026.1",
        decision=decision,
        basis=ConsentBasis.TREATMENT_ATTESTATION,
        permanence_statement_shown=True,
        no_effect_on_care_statement_shown=True,
        iat=T0, nbf=T0, exp=T0 + 30 * 86400,
    )
    token = issue_consent_token(claims, ISSUER_KEY.seed.reveal())
    return peek_consent_token_unverified(token)


def consent_resource(claims: ConsentClaims) -> dict[str, Any]:
    """What the gateway posts: to_fhir_consent without its ``id`` (gateway._post_fhir)."""
    return {k: v for k, v in to_fhir_consent(claims).items() if k != "id"}


def urn(claims: ConsentClaims) -> str:
    return f"urn:uuid:{claims.jti}"


async def create(fhir: FhirClient, claims: ConsentClaims,
                 resource: dict[str, Any] | None = None) -> str:
    return await fhir.create_consent(
        consent_resource(claims) if resource is None else resource,
        identifier_system=URI, identifier_value=urn(claims))


def raw_http(server: FhirServer) -> httpx.AsyncClient:
    """Plain httpx with the server's token: what the server holds, seen without gateway/fhir.py."""
    return httpx.AsyncClient(headers={"Authorization": f"Bearer {server.token}"},
                             timeout=seconds(10))


async def raw_search(server: FhirServer, claims: ConsentClaims) -> dict[str, Any]:
    """The server's own answer to a search by identifier."""
    async with raw_http(server) as http:
        response = await http.get(f"{server.base_url}/Consent",
                                  params={"identifier": f"{URI}|{urn(claims)}"})
    assert response.status_code == 200
    bundle: dict[str, Any] = response.json()
    return bundle


def closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- conditional create and read-back ------------------------------------------------------


async def test_conditional_create_files_the_consent_once(
    fhir: FhirClient, fhir_server: FhirServer,
) -> None:
    claims = consent_claims()
    first = await create(fhir, claims)
    again = await create(fhir, claims)  # a retry after a lost answer
    assert first == again
    assert first.startswith(f"{fhir_server.base_url}/Consent/")
    bundle = await raw_search(fhir_server, claims)
    assert bundle["total"] == 1 and len(bundle["entry"]) == 1
    found = await fhir.find_consent(URI, urn(claims))
    assert found is not None and first.startswith(f"{fhir_server.base_url}/Consent/{found['id']}")


async def test_the_location_returned_reads_back_the_consent(
    fhir: FhirClient, fhir_server: FhirServer,
) -> None:
    claims = consent_claims()
    location = await create(fhir, claims)
    async with raw_http(fhir_server) as http:
        response = await http.get(location)
    assert response.status_code == 200
    assert response.json()["identifier"] == [{"system": URI, "value": urn(claims)}]


async def test_the_filed_consent_reads_back_with_its_status_provision_and_identifier(
    fhir: FhirClient,
) -> None:
    claims = consent_claims()
    sent = consent_resource(claims)
    await create(fhir, claims, sent)
    stored = await fhir.find_consent(URI, urn(claims))
    assert stored is not None
    assert stored["resourceType"] == "Consent"
    assert stored["id"] != claims.jti  # the server names it; a create carries no id
    for element in ("status", "scope", "category", "patient", "dateTime", "policyRule",
                    "provision", "identifier", "extension", "sourceReference"):
        assert stored[element] == sent[element], element
    assert stored["status"] == "active" and stored["provision"]["type"] == "permit"


async def test_a_refused_consent_is_filed_as_rejected_deny(fhir: FhirClient) -> None:
    claims = consent_claims(decision=ConsentDecision.REFUSED)
    await create(fhir, claims)
    stored = await fhir.find_consent(URI, urn(claims))
    assert stored is not None
    assert stored["status"] == "rejected" and stored["provision"]["type"] == "deny"


async def test_find_consent_is_none_for_an_identifier_never_filed(fhir: FhirClient) -> None:
    assert await fhir.find_consent(URI, f"urn:uuid:{uuid.uuid4()}") is None


async def test_a_connection_is_reused_at_once_but_not_once_idle_past_the_expiry(
        fhir_server: FhirServer) -> None:
    proxy = TcpProxy(fhir_server.port)
    async with proxy.running() as base_url:
        settings = FhirSettings(url=f"{base_url}/fhir", token=fhir_server.token,
                                timeout=seconds(10))
        async with FhirClient(settings) as fhir:
            for _ in range(2):
                assert await fhir.find_consent(URI, f"urn:uuid:{uuid.uuid4()}") is None
            assert proxy.opened == 1  # a burst shares one connection
            await asyncio.sleep(KEEPALIVE_EXPIRY + 0.25)
            assert await fhir.find_consent(URI, f"urn:uuid:{uuid.uuid4()}") is None
            assert proxy.opened == 2  # never sent as the server may be closing it


async def test_an_identifier_on_two_consents_is_a_conflict_not_a_third_copy(
    fhir: FhirClient, fhir_server: FhirServer,
) -> None:
    claims = consent_claims()
    async with raw_http(fhir_server) as http:
        for _ in range(2):  # filed twice by something that did not use conditional create
            response = await http.post(f"{fhir_server.base_url}/Consent",
                                       content=json.dumps(consent_resource(claims)),
                                       headers={"Content-Type": "application/fhir+json"})
            assert response.status_code == 201
    with pytest.raises(FhirRejected) as err:
        await create(fhir, claims)
    assert err.value.status == 412 and not err.value.retryable
    with pytest.raises(FhirConflict, match="2 Consents"):
        await fhir.find_consent(URI, urn(claims))
    assert (await raw_search(fhir_server, claims))["total"] == 2


async def test_create_refuses_a_consent_that_does_not_carry_its_identifier(
    fhir: FhirClient,
) -> None:
    claims = consent_claims()
    with pytest.raises(ValueError, match="does not carry the identifier"):
        await fhir.create_consent(consent_resource(claims), identifier_system=URI,
                                  identifier_value=f"urn:uuid:{uuid.uuid4()}")
    with pytest.raises(ValueError, match="Consent"):
        await fhir.create_consent({**consent_resource(claims), "resourceType": "Patient"},
                                  identifier_system=URI, identifier_value=urn(claims))


async def test_create_drops_the_resources_id(fhir: FhirClient) -> None:
    claims = consent_claims()
    await create(fhir, claims, to_fhir_consent(claims))  # with "id": the jti
    stored = await fhir.find_consent(URI, urn(claims))
    assert stored is not None and stored["id"] != claims.jti


# --- refusals ------------------------------------------------------------------------------


@pytest.mark.parametrize(("change", "element"), [
    (lambda r: {**r, "status": 42}, "Consent.status"),
    (lambda r: {k: v for k, v in r.items() if k != "scope"}, "Consent.scope"),
    (lambda r: {**r, "colour": "blue"}, "Consent.colour"),
], ids=["wrong-type", "missing-required", "unknown-element"])
async def test_a_resource_the_server_refuses_raises_rejected_with_its_diagnostics(
    fhir: FhirClient, fhir_server: FhirServer, change: Any, element: str,
) -> None:
    claims = consent_claims()
    with pytest.raises(FhirRejected) as err:
        await create(fhir, claims, change(consent_resource(claims)))
    assert err.value.status == 400 and not err.value.retryable
    assert element in err.value.diagnostics and element in str(err.value)
    # The error names the problem, never the resource: no patient reference, no consent id.
    assert claims.patient not in str(err.value) and claims.jti not in str(err.value)
    assert (await raw_search(fhir_server, claims))["total"] == 0


# --- credentials ---------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["bearer", "basic"])
async def test_credentials_from_files_are_sent_and_accepted(
    fhir_server: FhirServer, tmp_path: Path, scheme: str,
) -> None:
    env = {"LIGHTBOX_FHIR_URL": fhir_server.base_url}
    if scheme == "bearer":
        (tmp_path / "token").write_text(fhir_server.token + "\n")
        env["LIGHTBOX_FHIR_TOKEN_FILE"] = str(tmp_path / "token")
    else:
        (tmp_path / "password").write_text(fhir_server.password + "\n")
        env["LIGHTBOX_FHIR_USERNAME"] = fhir_server.username
        env["LIGHTBOX_FHIR_PASSWORD_FILE"] = str(tmp_path / "password")
    claims = consent_claims()
    async with FhirClient(FhirSettings.from_env(env)) as fhir:
        await create(fhir, claims)
        assert await fhir.find_consent(URI, urn(claims)) is not None


async def test_without_credentials_the_server_refuses_and_nothing_is_filed(
    fhir: FhirClient, fhir_server: FhirServer,
) -> None:
    claims = consent_claims()
    async with FhirClient(FhirSettings(url=fhir_server.base_url)) as anonymous:
        with pytest.raises(FhirAuthError) as err:
            await create(anonymous, claims)
        assert err.value.status == 401 and not err.value.retryable
        with pytest.raises(FhirAuthError):
            await anonymous.find_consent(URI, urn(claims))
    assert await fhir.find_consent(URI, urn(claims)) is None


@pytest.mark.parametrize("scheme", ["bearer", "basic"])
async def test_wrong_credentials_are_refused(fhir_server: FhirServer, scheme: str) -> None:
    settings = (FhirSettings(url=fhir_server.base_url, token="not-the-token")
                if scheme == "bearer" else
                FhirSettings(url=fhir_server.base_url, username=fhir_server.username,
                             password="not-the-password"))
    async with FhirClient(settings) as fhir:
        with pytest.raises(FhirAuthError):
            await create(fhir, consent_claims())


async def test_https_is_trusted_with_the_private_ca_and_refused_without_it(
    tmp_path: Path,
) -> None:
    with running_fhir_server(tls=True) as server:
        assert server.tls is not None and server.base_url.startswith("https://")
        claims = consent_claims()
        env = {"LIGHTBOX_FHIR_URL": server.base_url,
               "LIGHTBOX_FHIR_CA_FILE": str(server.tls.ca_cert),
               "LIGHTBOX_FHIR_TOKEN_FILE": str(tmp_path / "token")}
        (tmp_path / "token").write_text(server.token)
        async with FhirClient(FhirSettings.from_env(env)) as fhir:
            location = await create(fhir, claims)
            assert location.startswith(f"{server.base_url}/Consent/")
        # Without the CA the handshake fails before any credential is sent.
        async with FhirClient(FhirSettings(url=server.base_url, token=server.token)) as fhir:
            with pytest.raises(FhirUnavailable, match="unreachable"):
                await create(fhir, consent_claims())


# --- an unreachable or silent server -------------------------------------------------------


async def test_an_unreachable_server_is_unavailable_and_retryable() -> None:
    settings = FhirSettings(url=f"http://127.0.0.1:{closed_port()}/fhir", token="t0ken")
    async with FhirClient(settings) as fhir:
        with pytest.raises(FhirUnavailable, match="unreachable") as err:
            await create(fhir, consent_claims())
        assert err.value.retryable
        with pytest.raises(FhirUnavailable):
            await fhir.find_consent(URI, "urn:uuid:" + str(uuid.uuid4()))


async def test_a_server_that_never_answers_times_out_as_unavailable() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)  # accepts the connection in the kernel, never answers
        port = silent.getsockname()[1]
        settings = FhirSettings(url=f"http://127.0.0.1:{port}/fhir", timeout=seconds(0.3))
        async with FhirClient(settings) as fhir:
            with pytest.raises(FhirUnavailable, match="timed out") as err:
                await create(fhir, consent_claims())
    assert err.value.retryable


async def test_an_answer_over_the_size_limit_is_a_protocol_error(
    fhir: FhirClient, fhir_server: FhirServer,
) -> None:
    claims = consent_claims()
    await create(fhir, claims)  # its search Bundle is a few KiB
    async with FhirClient(bearer_settings(fhir_server, max_response_bytes=1024)) as small:
        with pytest.raises(FhirProtocolError, match="size limit"):
            await small.find_consent(URI, urn(claims))


# --- status mapping (a scripted transport stands in for what the real server won't do) -----


def scripted(status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> FhirClient:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, content=body, headers=headers or {})

    return FhirClient(FhirSettings(url="http://fhir.invalid/r4"),
                      transport=httpx.MockTransport(handler))


@pytest.mark.parametrize(("status", "error"), [
    (500, FhirUnavailable), (502, FhirUnavailable), (503, FhirUnavailable),
    (408, FhirUnavailable), (429, FhirUnavailable),
    (401, FhirAuthError), (403, FhirAuthError),
    (400, FhirRejected), (404, FhirRejected), (409, FhirRejected), (412, FhirRejected),
    (415, FhirRejected), (422, FhirRejected),
    (302, FhirProtocolError), (204, FhirProtocolError),
])
async def test_status_codes_map_to_exceptions(status: int, error: type[FhirError]) -> None:
    async with scripted(status, headers={"Location": "http://elsewhere.invalid/"}) as fhir:
        with pytest.raises(error) as err:
            await create(fhir, consent_claims())
    assert err.value.retryable is (error is FhirUnavailable)


async def test_rejection_diagnostics_are_truncated_to_one_line() -> None:
    outcome = {"resourceType": "OperationOutcome", "issue": [
        {"severity": "error", "code": "invalid", "diagnostics": "bad\nthing " + "x" * 1000}]}
    async with scripted(422, json.dumps(outcome).encode()) as fhir:
        with pytest.raises(FhirRejected) as err:
            await create(fhir, consent_claims())
    assert err.value.diagnostics.startswith("error invalid: bad thing x")
    assert len(err.value.diagnostics) <= 300 and "\n" not in err.value.diagnostics


async def test_a_rejection_without_an_outcome_gives_the_status_line_not_the_body() -> None:
    async with scripted(400, b"<html>echo of the request: pt-test-secret</html>") as fhir:
        with pytest.raises(FhirRejected) as err:
            await create(fhir, consent_claims())
    assert err.value.diagnostics == "HTTP 400 Bad Request"


async def test_a_created_answer_without_a_location_falls_back_to_the_returned_id() -> None:
    body = json.dumps({"resourceType": "Consent", "id": "abc-123"}).encode()
    async with scripted(201, body) as fhir:
        assert await create(fhir, consent_claims()) == "http://fhir.invalid/r4/Consent/abc-123"
    async with scripted(201, headers={"Location": "Consent/9/_history/2"}) as fhir:
        assert await create(fhir, consent_claims()) == \
            "http://fhir.invalid/r4/Consent/9/_history/2"
    async with scripted(201) as fhir:
        with pytest.raises(FhirProtocolError, match="no location"):
            await create(fhir, consent_claims())


# --- settings ------------------------------------------------------------------------------


def test_settings_read_secrets_from_files_and_never_show_them(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("s3cret-token-from-file\n")
    (tmp_path / "password").write_text(" s3cret pass \n")
    cfg = FhirSettings.from_env({"LIGHTBOX_FHIR_URL": "https://fhir.example.invalid/r4",
                                 "LIGHTBOX_FHIR_TOKEN_FILE": str(tmp_path / "token"),
                                 "LIGHTBOX_FHIR_TIMEOUT": "12.5"})
    assert cfg.token == "s3cret-token-from-file" and cfg.timeout == 12.5
    basic = FhirSettings.from_env({"LIGHTBOX_FHIR_URL": "https://fhir.example.invalid/r4",
                                   "LIGHTBOX_FHIR_USERNAME": "gateway",
                                   "LIGHTBOX_FHIR_PASSWORD_FILE": str(tmp_path / "password")})
    assert basic.username == "gateway" and basic.password == " s3cret pass "
    for shown in (repr(cfg), repr(basic), repr(FhirClient(cfg)), repr(FhirClient(basic))):
        assert "s3cret" not in shown


def test_settings_url_argument_stands_in_for_the_environment() -> None:
    cfg = FhirSettings.from_env({}, url="https://fhir.example.invalid/r4/")
    assert cfg.url == "https://fhir.example.invalid/r4/"
    assert FhirClient(cfg).base_url == "https://fhir.example.invalid/r4"


@pytest.mark.parametrize(("env", "message"), [
    ({}, "LIGHTBOX_FHIR_URL is not set"),
    ({"LIGHTBOX_FHIR_URL": "  "}, "LIGHTBOX_FHIR_URL is not set"),
    ({"LIGHTBOX_FHIR_URL": "ftp://fhir.example.invalid"}, "http"),
    ({"LIGHTBOX_FHIR_URL": "https://fhir.example.invalid/r4?x=1"}, "no query"),
    ({"LIGHTBOX_FHIR_TOKEN_FILE": "{tmp}/absent"}, "LIGHTBOX_FHIR_TOKEN_FILE.*cannot be read"),
    ({"LIGHTBOX_FHIR_TOKEN_FILE": "{tmp}"}, "LIGHTBOX_FHIR_TOKEN_FILE.*cannot be read"),
    ({"LIGHTBOX_FHIR_TOKEN_FILE": "{tmp}/empty"}, "LIGHTBOX_FHIR_TOKEN_FILE.*empty"),
    ({"LIGHTBOX_FHIR_TOKEN_FILE": "{tmp}/two-lines"}, "b64token"),
    ({"LIGHTBOX_FHIR_USERNAME": "gateway"}, "LIGHTBOX_FHIR_PASSWORD_FILE"),
    ({"LIGHTBOX_FHIR_PASSWORD_FILE": "{tmp}/password"}, "LIGHTBOX_FHIR_USERNAME"),
    ({"LIGHTBOX_FHIR_USERNAME": "gate:way", "LIGHTBOX_FHIR_PASSWORD_FILE": "{tmp}/password"},
     "':'"),
    ({"LIGHTBOX_FHIR_TOKEN_FILE": "{tmp}/token", "LIGHTBOX_FHIR_USERNAME": "gateway",
      "LIGHTBOX_FHIR_PASSWORD_FILE": "{tmp}/password"}, "not both"),
    ({"LIGHTBOX_FHIR_CA_FILE": "{tmp}/absent"}, "LIGHTBOX_FHIR_CA_FILE"),
    ({"LIGHTBOX_FHIR_TIMEOUT": "soon"}, "LIGHTBOX_FHIR_TIMEOUT"),
    ({"LIGHTBOX_FHIR_TIMEOUT": "0"}, "LIGHTBOX_FHIR_TIMEOUT.*at least"),
    ({"LIGHTBOX_FHIR_MAX_RESPONSE_BYTES": "12"}, "at least"),
], ids=["no-url", "blank-url", "not-http", "query", "token-file-missing",
        "token-file-is-a-folder", "token-file-empty", "token-not-b64token", "user-no-password",
        "password-no-user", "colon-in-user", "token-and-basic", "ca-missing", "timeout-nan",
        "timeout-zero", "limit-too-small"])
def test_settings_from_env_refuse_what_they_cannot_use(
    tmp_path: Path, env: dict[str, str], message: str,
) -> None:
    (tmp_path / "empty").write_text("\n")
    (tmp_path / "two-lines").write_text("abc\ndef\n")
    (tmp_path / "token").write_text("t0ken")
    (tmp_path / "password").write_text("pw")
    full = {"LIGHTBOX_FHIR_URL": "https://fhir.example.invalid/r4"} if env else {}
    full.update({k: v.replace("{tmp}", str(tmp_path)) for k, v in env.items()})
    with pytest.raises(ValueError, match=message):
        FhirSettings.from_env(full)


@pytest.mark.parametrize(("url", "allowed"), [
    ("https://fhir.example.invalid/r4", True),
    ("http://127.0.0.1:8080/fhir", True),
    ("http://localhost/fhir", True),
    ("http://[::1]:8080/fhir", True),
    ("http://fhir.example.invalid/r4", False),
    ("http://10.1.2.3/fhir", False),
])
def test_credentials_go_over_https_or_to_loopback_only(url: str, allowed: bool) -> None:
    if allowed:
        assert FhirSettings(url=url, token="t0ken").has_credentials
        assert FhirSettings(url=url, username="gateway", password="pw").has_credentials
    else:
        with pytest.raises(ValueError, match="https"):
            FhirSettings(url=url, token="t0ken")
        with pytest.raises(ValueError, match="https"):
            FhirSettings(url=url, username="gateway", password="pw")
    assert not FhirSettings(url=url).has_credentials  # no credentials: any http(s) URL


def test_the_consent_identifier_is_the_one_to_fhir_consent_writes() -> None:
    """The gateway creates on (urn:ietf:rfc:3986, urn:uuid:<jti>): the system and value
    to_fhir_consent puts in ``identifier``, or the condition would never match."""
    claims = consent_claims()
    assert to_fhir_consent(claims)["identifier"] == [{"system": URI, "value": urn(claims)}]
