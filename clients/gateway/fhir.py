"""An async FHIR R4 client for the record gateway: file a Consent once, and find it again.

Why (docs/ARCHITECTURE.md §6, docs/CLINICAL_SAFETY.md "Document the consent in the record"): with
each image the gateway files the patient's consent as a FHIR R4 ``Consent`` (``protocol.consent.
to_fhir_consent``). It uses *conditional create* (FHIR R4 http.html §3.1.0.8.1, ``If-None-Exist``
on the consent's ``urn:uuid`` identifier) so that a retry after a lost answer finds the Consent
already filed instead of filing a second copy, and :meth:`FhirClient.find_consent` searches by
the same identifier (§3.1.0.9 search; a token parameter as ``system|value``, search.html#token)
to read it back.

The server is told who the gateway is with a bearer token (RFC 6750 §2.1) or HTTP Basic
(RFC 7617), each read from a file so it never sits in the process environment, and never
printed. Credentials go over HTTPS only (RFC 6750 §5.3, RFC 7617 §4), except to a loopback
address (a test bench or a local proxy that adds TLS).

Every failure of the transport or the server maps to one exception, in one place
(:func:`_raise_for_status` and :meth:`FhirClient._request`), so the gateway can decide: retry
later, fix its settings, or tell the sender. Retrying is the caller's policy; ``retryable``
says when it may help. A refusal carries the server's OperationOutcome diagnostics (truncated),
never the resource that was sent.

Behaviour of the server we test against (SEKMET FHIR R4 Tester 0.1.1, ``sekmet-fhir`` on PyPI,
SQLite store; tests/fhir_server.py): a first conditional create answers 201 with
``Location: [base]/Consent/[id]/_history/1``; the same identifier again answers 200 with the
existing resource and its Location; no credentials: 401 (``WWW-Authenticate``); a structurally
invalid resource: 400 with an OperationOutcome naming the element; criteria matching several
resources: 412.

Exceptions::

    FhirError                   base; ``retryable`` says whether trying again may help
     ├── FhirUnavailable        unreachable, timed out, 5xx, 408, 429 (retryable)
     ├── FhirAuthError          401 or 403: the gateway's FHIR credentials are wrong
     ├── FhirRejected           the server refused the request (``status``, ``diagnostics``);
     │                          412 on a create: several Consents already carry the identifier
     ├── FhirConflict           a search by identifier found more than one Consent
     └── FhirProtocolError      the answer is not what FHIR specifies (no location, not JSON,
                                too large, a redirect)
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import ssl
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote, urlencode

import httpx

from clients.gateway.httpio import HttpService, bounded_request, read_secret, service_limits
from clients.gateway.httpio import service_settings as settings_from_env
from clients.sdk.addresses import is_loopback

__all__ = [
    "FhirAuthError",
    "FhirClient",
    "FhirConflict",
    "FhirError",
    "FhirProtocolError",
    "FhirRejected",
    "FhirSettings",
    "FhirUnavailable",
]

FHIR_JSON: Final = "application/fhir+json"
DEFAULT_TIMEOUT: Final = 30.0
# A Consent or a one-entry search Bundle is a few KiB; a larger answer is not one of ours.
DEFAULT_MAX_RESPONSE_BYTES: Final = 4 * 1024 * 1024
MAX_DIAGNOSTICS: Final = 300  # characters of a server's OperationOutcome kept in an error
# RFC 6750 §2.1: b64token = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="
_B64TOKEN: Final = re.compile(r"[A-Za-z0-9\-._~+/]+=*")


# --- exceptions ----------------------------------------------------------------------------


class FhirError(Exception):
    """Base of every FHIR failure."""

    retryable: bool = False


class FhirUnavailable(FhirError):
    """The server cannot be reached or is failing; the same request may succeed later."""

    retryable = True


class FhirAuthError(FhirError):
    """The server refused the gateway's credentials (401) or its permissions (403)."""

    def __init__(self, message: str, *, status: int) -> None:
        super().__init__(message)
        self.status = status


class FhirRejected(FhirError):
    """The server refused the request or the resource; sending it again will not help."""

    def __init__(self, diagnostics: str, *, status: int) -> None:
        super().__init__(f"FHIR server refused the request (HTTP {status}): {diagnostics}")
        self.diagnostics = diagnostics
        self.status = status


class FhirConflict(FhirError):
    """More than one Consent carries one identifier (filed twice by a server or a client that
    does not honour conditional create): which one is the record is not ours to guess."""


class FhirProtocolError(FhirError):
    """The server answered with something FHIR's RESTful API does not allow."""


# --- settings ------------------------------------------------------------------------------


@dataclass(frozen=True)
class FhirSettings:
    """Where the gateway files Consents and how it logs in. Secrets never appear in a repr.

    From the environment (:meth:`from_env`): ``LIGHTBOX_FHIR_URL`` (the FHIR base, e.g.
    ``https://fhir.example.org/r4``), either ``LIGHTBOX_FHIR_TOKEN_FILE`` (a file holding a
    bearer token, RFC 6750) or ``LIGHTBOX_FHIR_USERNAME`` with ``LIGHTBOX_FHIR_PASSWORD_FILE``
    (HTTP Basic, RFC 7617), ``LIGHTBOX_FHIR_CA_FILE`` (a CA bundle for a private PKI),
    ``LIGHTBOX_FHIR_TIMEOUT`` (seconds per request, 30) and
    ``LIGHTBOX_FHIR_MAX_RESPONSE_BYTES`` (the largest answer read, 4 MiB). Secrets come from
    files only: the environment of a process is readable by too many others."""

    url: str
    token: str | None = field(default=None, repr=False)
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    timeout: float = DEFAULT_TIMEOUT
    ca_file: Path | None = None
    max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES

    def __post_init__(self) -> None:
        try:
            url = httpx.URL(self.url)
        except httpx.InvalidURL as exc:
            raise ValueError("the FHIR URL is not a valid URL") from exc
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError("the FHIR URL must be an http(s) URL of the FHIR base")
        if url.query or url.fragment:
            raise ValueError("the FHIR base URL must have no query or fragment")
        if self.token is not None and (self.username is not None or self.password is not None):
            raise ValueError("give a FHIR bearer token or a username and password, not both")
        if (self.username is None) != (self.password is None):
            raise ValueError("give both a FHIR username and password, or neither")
        if self.token is not None and not _B64TOKEN.fullmatch(self.token):
            raise ValueError("the FHIR bearer token is not an RFC 6750 b64token")
        if self.username is not None and (":" in self.username or not self.username
                                          or not self.username.isprintable()):
            raise ValueError("the FHIR username must be non-empty, printable and without ':' "
                             "(RFC 7617 §2)")
        if self.password is not None and not self.password.isprintable():
            raise ValueError("the FHIR password must be printable")
        if self.has_credentials and url.scheme != "https" and not is_loopback(url.host):
            raise ValueError("FHIR credentials are only sent over https (RFC 6750 §5.3, "
                             "RFC 7617 §4), or to a loopback address")
        if not self.timeout > 0:
            raise ValueError("the FHIR timeout must be positive")
        if self.max_response_bytes < 1024:
            raise ValueError("the FHIR response limit must be at least 1 KiB")

    @property
    def has_credentials(self) -> bool:
        return self.token is not None or self.username is not None

    @classmethod
    def from_env(
        cls, env: Mapping[str, str] | None = None, *, url: str | None = None,
    ) -> FhirSettings:
        """Settings from ``env`` (default: the process environment). ``url``, when given (the
        gateway's ``--fhir-url``), stands in for ``LIGHTBOX_FHIR_URL``. Raises ValueError,
        naming the variable, when one is missing, unreadable or malformed."""
        env = os.environ if env is None else env
        base = (url if url is not None else env.get("LIGHTBOX_FHIR_URL", "")).strip()
        if not base:
            raise ValueError("LIGHTBOX_FHIR_URL is not set")
        token = None
        if token_file := env.get("LIGHTBOX_FHIR_TOKEN_FILE"):
            token = read_secret("LIGHTBOX_FHIR_TOKEN_FILE", token_file).strip()
        password = None
        if password_file := env.get("LIGHTBOX_FHIR_PASSWORD_FILE"):
            # Only the line ending goes: a password may begin or end with a space.
            password = read_secret("LIGHTBOX_FHIR_PASSWORD_FILE", password_file).rstrip("\r\n")
        username = env.get("LIGHTBOX_FHIR_USERNAME") or None
        if (username is None) != (password is None):
            raise ValueError("set both LIGHTBOX_FHIR_USERNAME and LIGHTBOX_FHIR_PASSWORD_FILE, "
                             "or neither")
        return cls(url=base, token=token, username=username, password=password,
                   **settings_from_env(env, "LIGHTBOX_FHIR", timeout=DEFAULT_TIMEOUT,
                                       max_response_bytes=DEFAULT_MAX_RESPONSE_BYTES))


class _BearerAuth(httpx.Auth):
    """``Authorization: Bearer <token>`` on every request (RFC 6750 §2.1)."""

    def __init__(self, token: str) -> None:
        self._header = f"Bearer {token}"

    def __repr__(self) -> str:
        return "_BearerAuth(<hidden>)"

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = self._header
        yield request


# --- the client ----------------------------------------------------------------------------


class FhirClient(HttpService):
    """FHIR R4 RESTful API against one server. Use as ``async with FhirClient(settings) as
    fhir``."""

    def __init__(
        self, settings: FhirSettings, *, transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._base = str(httpx.URL(settings.url)).rstrip("/")
        self._max = settings.max_response_bytes
        auth: httpx.Auth | None = None
        if settings.token is not None:
            auth = _BearerAuth(settings.token)
        elif settings.username is not None and settings.password is not None:
            auth = httpx.BasicAuth(settings.username, settings.password)
        verify: ssl.SSLContext | bool = True
        if settings.ca_file is not None:
            verify = ssl.create_default_context(cafile=str(settings.ca_file))
        # No redirects: following one would send the credentials wherever it points.
        self._http = httpx.AsyncClient(
            auth=auth, timeout=settings.timeout, transport=transport, verify=verify,
            follow_redirects=False, headers={"Accept": FHIR_JSON}, limits=service_limits(),
        )

    def __repr__(self) -> str:
        return f"FhirClient({self._base!r})"

    @property
    def base_url(self) -> str:
        return self._base

    # create --------------------------------------------------------------------------------

    async def create_consent(
        self, resource: Mapping[str, Any], *, identifier_system: str, identifier_value: str,
    ) -> str:
        """File ``resource`` (a Consent) unless one with this identifier is already there
        (conditional create, FHIR R4 http.html §3.1.0.8.1). Returns the absolute URL of the
        Consent: the ``Location`` the server gave (version-specific, ``.../_history/[vid]``,
        for a new one, §3.1.0.8), else its ``Content-Location``, else ``[base]/Consent/[id]``
        from the returned resource.

        201 means filed now, 200 that the server found it already filed; both return its URL.
        The resource must carry the identifier, or the condition could never match it and
        each retry would file another copy; an ``id`` is dropped (a create carries none)."""
        if resource.get("resourceType") != "Consent":
            raise ValueError("create_consent files a Consent resource")
        if not identifier_system or not identifier_value:
            raise ValueError("a conditional create needs an identifier system and value")
        if not _carries(resource, identifier_system, identifier_value):
            raise ValueError("the Consent does not carry the identifier it is created on")
        body = json.dumps({k: v for k, v in resource.items() if k != "id"},
                          ensure_ascii=False, separators=(",", ":")).encode()
        condition = urlencode([("identifier", _token(identifier_system, identifier_value))],
                              safe=":/|", quote_via=quote)
        response = await self._request("POST", f"{self._base}/Consent", content=body, headers={
            "Content-Type": f"{FHIR_JSON}; charset=utf-8",
            "If-None-Exist": condition,
        })
        _raise_for_status(response)
        if response.status_code not in (200, 201):
            raise FhirProtocolError(f"unexpected status {response.status_code} to a create")
        return self._location(response)

    def _location(self, response: httpx.Response) -> str:
        for header in ("Location", "Content-Location"):
            if value := response.headers.get(header, "").strip():
                url = httpx.URL(self._base + "/").join(value)
                if url.scheme not in ("http", "https") or not url.host:
                    raise FhirProtocolError(f"the {header} header is not an http(s) URL")
                return str(url)
        doc = _json(response) if response.content.strip() else None
        if isinstance(doc, dict) and doc.get("resourceType") == "Consent":
            rid = doc.get("id")
            if isinstance(rid, str) and re.fullmatch(r"[A-Za-z0-9\-.]{1,64}", rid):
                return f"{self._base}/Consent/{rid}"
        raise FhirProtocolError("the server named no location and returned no Consent id")

    # search --------------------------------------------------------------------------------

    async def find_consent(
        self, identifier_system: str, identifier_value: str,
    ) -> dict[str, Any] | None:
        """The Consent with this identifier (``GET [base]/Consent?identifier=system|value``,
        http.html §3.1.0.9, search.html#token), or None when the server holds none.

        Matches are checked on this side too: a server may ignore a search parameter it does
        not support and return every Consent (search.html#errors). More than one match raises
        :class:`FhirConflict`."""
        if not identifier_system or not identifier_value:
            raise ValueError("a search by identifier needs a system and a value")
        response = await self._request("GET", f"{self._base}/Consent", params=[
            ("identifier", _token(identifier_system, identifier_value)), ("_count", "10")])
        bundle, entries = _search_bundle(response)
        matches = [
            entry["resource"] for entry in entries
            if isinstance(entry, dict) and _is_match(entry)
            and _carries(entry["resource"], identifier_system, identifier_value)
        ]
        total = bundle.get("total")
        if len(matches) > 1 or (len(matches) == 1 and isinstance(total, int) and total > 1):
            raise FhirConflict(f"{max(len(matches), total or 0)} Consents carry the identifier "
                               f"{identifier_system}|{identifier_value}")
        return matches[0] if matches else None

    async def find_patient_consents(
        self, patient_id: str, *, system: str | None = None, limit: int = 100,
    ) -> list[dict[str, Any]]:
        """The Consents filed for a patient: ``GET [base]/Consent?patient:identifier=
        [system|]value`` (the ``:identifier`` modifier on a reference parameter matches a
        logical reference, search.html#modifiers), as the record gateway files them
        (``to_fhir_consent(..., patient_identifier=...)``). Without ``system``, any issuer's id
        equal to ``patient_id`` matches. Matches are checked on this side too (a server may
        ignore a parameter it does not support), at most ``limit`` of them."""
        def identifiers(resource: Mapping[str, Any]) -> list[Any]:
            patient = resource.get("patient")
            return [patient.get("identifier")] if isinstance(patient, dict) else []

        return await self._by_patient("Consent", "patient:identifier", patient_id, system,
                                      limit, identifiers)

    async def find_patients(self, patient_id: str, *, system: str | None = None,
                            limit: int = 10) -> list[dict[str, Any]]:
        """The Patient resources carrying this identifier (``GET [base]/Patient?identifier=
        [system|]value``, search.html#token): what the record says of a patient the clinician
        typed, for the record gateway's wrong-patient check. Matches are checked on this side
        too, as for :meth:`find_patient_consents`."""
        def identifiers(resource: Mapping[str, Any]) -> list[Any]:
            found = resource.get("identifier")
            return found if isinstance(found, list) else []

        return await self._by_patient("Patient", "identifier", patient_id, system, limit,
                                      identifiers)

    async def _by_patient(
        self, resource_type: str, param: str, patient_id: str, system: str | None, limit: int,
        identifiers: Callable[[Mapping[str, Any]], list[Any]],
    ) -> list[dict[str, Any]]:
        """One token search by a patient's identifier, the matches checked here as well."""
        if not patient_id:
            raise ValueError("a search by patient needs the patient's id")
        value = _token(system, patient_id) if system else re.sub(r"([\\|,$])", r"\\\1",
                                                                 patient_id)
        response = await self._request("GET", f"{self._base}/{resource_type}", params=[
            (param, value), ("_count", str(limit))])
        _bundle, entries = _search_bundle(response)

        def names_patient(resource: Mapping[str, Any]) -> bool:
            return any(isinstance(i, dict) and i.get("value") == patient_id
                       and (system is None or i.get("system") == system)
                       for i in identifiers(resource))

        return [entry["resource"] for entry in entries if isinstance(entry, dict)
                and _is_match(entry, resource_type) and names_patient(entry["resource"])
                ][:limit]

    # transport -----------------------------------------------------------------------------

    async def _request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        """One request, read up to the response limit; transport failures → FhirUnavailable."""
        return await bounded_request(
            self._http, method, url, limit=self._max, name="FHIR server",
            too_large=FhirProtocolError, unavailable=FhirUnavailable, **kwargs)


# --- helpers -------------------------------------------------------------------------------


def _raise_for_status(response: httpx.Response) -> None:
    """Map an HTTP status to the exception tree; 2xx returns."""
    status = response.status_code
    if 200 <= status < 300:
        return
    if status in (401, 403):
        raise FhirAuthError(f"FHIR server refused the credentials (HTTP {status})",
                            status=status)
    if status >= 500 or status in (408, 429):
        raise FhirUnavailable(f"FHIR server failed (HTTP {status})")
    if status >= 400:
        raise FhirRejected(_diagnostics(response), status=status)
    raise FhirProtocolError(f"unexpected HTTP {status} (redirects are not followed)")


def _diagnostics(response: httpx.Response) -> str:
    """The OperationOutcome's issues (severity, code, diagnostics or details.text), at most
    :data:`MAX_DIAGNOSTICS` characters; else the status line. Never the body itself: it may
    echo the resource."""
    texts = []
    with contextlib.suppress(FhirProtocolError):
        doc = _json(response)
        if isinstance(doc, dict) and doc.get("resourceType") == "OperationOutcome":
            for issue in doc.get("issue") or []:
                if not isinstance(issue, dict):
                    continue
                details = issue.get("details")
                text = issue.get("diagnostics") or (
                    details.get("text") if isinstance(details, dict) else None)
                if isinstance(text, str) and text.strip():
                    texts.append(f"{issue.get('severity', '?')} {issue.get('code', '?')}: "
                                 f"{text.strip()}")
    reason = "; ".join(texts) or f"HTTP {response.status_code} {response.reason_phrase}".strip()
    reason = " ".join(reason.split())  # no line breaks into logs
    return reason if len(reason) <= MAX_DIAGNOSTICS else reason[:MAX_DIAGNOSTICS - 1] + "…"


def _is_match(entry: Mapping[str, Any], resource_type: str = "Consent") -> bool:
    """A searchset entry that is a resource of the type searched that the search matched (not
    an _include, not an OperationOutcome: ``Bundle.entry.search.mode``, search.html)."""
    search = entry.get("search")
    mode = search.get("mode", "match") if isinstance(search, dict) else "match"
    resource = entry.get("resource")
    return (mode == "match" and isinstance(resource, dict)
            and resource.get("resourceType") == resource_type)


def _carries(resource: Mapping[str, Any], system: str, value: str) -> bool:
    identifiers = resource.get("identifier")
    return isinstance(identifiers, list) and any(
        isinstance(i, dict) and i.get("system") == system and i.get("value") == value
        for i in identifiers)


def _search_bundle(response: httpx.Response) -> tuple[dict[str, Any], list[Any]]:
    """A search answer: the searchset Bundle and its entries, or the precise refusal."""
    _raise_for_status(response)
    if response.status_code != 200:
        raise FhirProtocolError(f"unexpected status {response.status_code} to a search")
    bundle = _json(response)
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
        raise FhirProtocolError("a search answer is not a Bundle")
    entries = bundle.get("entry") or []
    if not isinstance(entries, list):
        raise FhirProtocolError("Bundle.entry is not a list")
    return bundle, entries


def _json(response: httpx.Response) -> Any:
    try:
        return json.loads(response.content)
    except ValueError as exc:
        raise FhirProtocolError("the FHIR answer is not JSON") from exc


def _token(system: str, value: str) -> str:
    """A token search value ``system|value`` with FHIR's escapes (search.html#escaping)."""
    def esc(s: str) -> str:
        return re.sub(r"([\\|,$])", r"\\\1", s)
    return f"{esc(system)}|{esc(value)}"

