"""One bounded HTTP exchange for the gateway's clients of other systems (clients/gateway/pacs.py,
clients/gateway/fhir.py): read the answer up to a size limit, and map transport failures to the
caller's "unavailable" exception, so each client keeps its own exception family.

Why: a PACS or FHIR server is outside our control; an answer larger than any we expect is
refused before it is held in memory (the declared Content-Length first, then while streaming).
"""

from __future__ import annotations

from types import TracebackType
from typing import Any, Self

import httpx

__all__ = ["KEEPALIVE_EXPIRY", "HttpService", "bounded_request", "service_limits"]

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
