"""One bounded HTTP exchange for the gateway's clients of other systems (clients/gateway/pacs.py,
clients/gateway/fhir.py): read the answer up to a size limit, and map transport failures to the
caller's "unavailable" exception, so each client keeps its own exception family.

Why: a PACS or FHIR server is outside our control; an answer larger than any we expect is
refused before it is held in memory (the declared Content-Length first, then while streaming).
"""

from __future__ import annotations

import math
import ssl
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

import httpx

__all__ = ["KEEPALIVE_EXPIRY", "HttpService", "bounded_request", "ca_bundle", "number_setting",
           "read_secret", "service_limits", "service_settings"]

# Seconds an idle connection to the PACS or FHIR server is kept for reuse. A server may close an
# idle connection at any moment, and a request sent as it does gets no answer (RFC 9112 §9.6):
# the gateway could only call that "unreachable" and retry. Orthanc closes after 1 s (it
# answers `Keep-Alive: timeout=1`; its KeepAliveTimeout), where httpx would keep a connection
# 5 s: half of Orthanc's second leaves the race no room. A connection reused within it saves
# the new TCP (and TLS) handshake of a burst of requests, as a filing makes.
KEEPALIVE_EXPIRY = 0.5


def service_limits() -> httpx.Limits:
    """The connection pool's limits for a client of a PACS or FHIR server."""
    return httpx.Limits(keepalive_expiry=KEEPALIVE_EXPIRY)


class HttpService:
    """A client of one remote service over ``self._http``: ``async with`` closes it."""

    _http: httpx.AsyncClient

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()


async def bounded_request(http: httpx.AsyncClient, method: str, url: str, *, limit: int,
                          name: str, too_large: type[Exception], unavailable: type[Exception],
                          **kwargs: Any) -> httpx.Response:
    """``method url`` through ``http``, its body read whole but never past ``limit`` bytes
    (``too_large`` otherwise); timeouts and transport errors raise ``unavailable``. ``name``
    says whose answer it is in the messages ("PACS", "FHIR server")."""
    try:
        async with http.stream(method, url, **kwargs) as response:
            declared = response.headers.get("Content-Length")
            if declared is not None and declared.isdigit() and int(declared) > limit:
                raise too_large(f"{name} answer exceeds the response size limit")
            chunks: list[bytes] = []
            size = 0
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size > limit:
                    raise too_large(f"{name} answer exceeds the response size limit")
                chunks.append(chunk)
        return httpx.Response(response.status_code, headers=_decoded_headers(response.headers),
                              content=b"".join(chunks), request=response.request)
    except httpx.TimeoutException as exc:
        raise unavailable(f"{name} timed out ({type(exc).__name__})") from exc
    except httpx.TransportError as exc:
        raise unavailable(f"{name} unreachable ({type(exc).__name__})") from exc


def _decoded_headers(headers: httpx.Headers) -> list[tuple[str, str]]:
    # The body handed on is already decoded: drop the encoding headers that described it.
    return [(k, v) for k, v in headers.items()
            if k.lower() not in ("content-encoding", "content-length", "transfer-encoding")]


# --- settings from the environment: each wrong value a ValueError naming its variable, which
# lightbox-gateway prints as one sentence before it starts (clients/gateway/cli.py) -----------

N = TypeVar("N", int, float)


def read_secret(variable: str, path: str) -> str:
    """The text of the file ``variable`` names (a password or token file)."""
    try:
        value = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{variable}: {path} cannot be read ({type(exc).__name__})") from exc
    if not value.strip():
        raise ValueError(f"{variable}: {path} is empty")
    return value


def number_setting(env: Mapping[str, str], name: str, default: N, kind: type[N], *,
                   least: N, unit: str) -> N:
    """``env[name]`` as a finite ``kind`` of at least ``least`` (``default`` when unset)."""
    raw = env.get(name)
    if raw is None or not raw.strip():
        return default
    try:
        value = kind(raw)
    except ValueError:
        value = None
    if value is None or not math.isfinite(value) or value < least:
        raise ValueError(f"{name} must be a number of {unit} of at least {least}, not {raw!r}")
    return value


def ca_bundle(variable: str, path: str) -> Path:
    """The CA bundle file ``variable`` names, checked now: it must load as PEM certificates."""
    try:
        ssl.create_default_context(cafile=path)
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
        raise ValueError(f"{variable}: {path} is not a readable CA bundle (PEM certificates)"
                         ) from exc
    return Path(path)


def service_settings(env: Mapping[str, str], prefix: str, *, timeout: float,
                     max_response_bytes: int) -> dict[str, Any]:
    """``{prefix}_TIMEOUT`` (seconds), ``{prefix}_CA_FILE`` and ``{prefix}_MAX_RESPONSE_BYTES``
    from ``env``, checked, as the settings' fields of those names (defaults as given)."""
    ca = env.get(f"{prefix}_CA_FILE")
    return {
        "timeout": number_setting(env, f"{prefix}_TIMEOUT", timeout, float, least=0.1,
                                  unit="seconds"),
        "ca_file": ca_bundle(f"{prefix}_CA_FILE", ca) if ca else None,
        "max_response_bytes": number_setting(env, f"{prefix}_MAX_RESPONSE_BYTES",
                                             max_response_bytes, int, least=1024, unit="bytes"),
    }
