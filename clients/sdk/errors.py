"""Errors of the client SDK (the tree is drawn in :mod:`clients.sdk`)."""

from __future__ import annotations

from collections.abc import Iterator

from clients.sdk.timefmt import format_time

__all__ = [
    "ConsentImageMismatch",
    "DeviceWiped",
    "FlowError",
    "KeyStoreError",
    "LoggedOut",
    "RelayRequestError",
    "RelayResponseError",
    "RelayUnavailable",
    "SDKError",
    "SessionEnded",
    "causes",
    "flow_error",
]


def causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc``, then what it was raised from or during (``__cause__``, else ``__context__``),
    and so on: where a library's error says what went wrong underneath (a TLS refusal under an
    httpx error under the SDK's)."""
    cause: BaseException | None = exc
    while cause is not None:
        yield cause
        cause = cause.__cause__ or cause.__context__


class SDKError(Exception):
    """Base of every error raised by clients.sdk."""


class RelayRequestError(SDKError):
    """The relay refused a request with a problem document (docs/SECURITY.md error codes).
    ``str()`` names the HTTP status too, for logs; :attr:`said` is what a person reads, the
    code and detail without it (clients/sdk/failures.py)."""

    def __init__(
        self,
        code: str,
        status: int,
        detail: str | None = None,
        retry_after: float | None = None,
        extra: dict[str, object] | None = None,
    ) -> None:
        self.code = code
        self.status = status
        self.detail = detail
        self.retry_after = retry_after
        self.extra = extra or {}
        rest = f": {detail}" if detail else ""
        if retry_after is not None:
            rest += f"; retry after {retry_after:g} s"
        self.said = f"{code}{rest}"
        super().__init__(f"{code} (HTTP {status}){rest}")


class RelayResponseError(SDKError):
    """The relay answered something that is not what protocol/api.py promises."""


class RelayUnavailable(SDKError):
    """The relay could not be reached (connection refused, timeout, TLS failure...).

    ``str()`` keeps the technical detail (for logs); ``reason`` is the plain cause a person
    reads (``no connection could be made``), never an exception's name. ``kept``: set when the
    send it stopped is kept in the outbox to go again later (clients/sdk/sending.py), the
    sentence that says so."""

    def __init__(self, message: str, *, reason: str | None = None,
                 kept: str | None = None) -> None:
        self.reason = reason or message
        self.kept = kept
        super().__init__(message)


class SessionEnded(SDKError):
    """The relay ended this device's session (``code``: token_invalid, token_expired,
    refresh_reused; unauthenticated when there was none) and this program cannot sign in again
    by itself: it holds no password, or the user signs in at the organisation's identity
    provider (``sso``), which only the user can do (docs/PROTOCOL.md §11, "Single sign-on")."""

    def __init__(self, code: str, *, sso: bool) -> None:
        self.code, self.sso = code, sso
        super().__init__(f"the session has ended ({code}): sign in again")


class LoggedOut(SDKError):
    """The user logged out on this device (``lightbox logout``) after this program opened the
    profile: it uses its session no more (clients/sdk/profile.py). ``str()`` is the sentence a
    command prints."""

    def __init__(self) -> None:
        super().__init__("you logged out on this device (in another terminal); `lightbox login` "
                         "signs in again")


class KeyStoreError(SDKError):
    """The key store is missing, already exists, is corrupt, or the password is wrong."""


class FlowError(SDKError):
    """A client-side check of an identity flow failed (``code`` is an ErrorCode value)."""

    def __init__(self, message: str, *, code: str = "verification_failed") -> None:
        self.code = code
        super().__init__(message)


def flow_error(exc: Exception, message: str) -> FlowError:
    """A protocol check that failed on this device, as a FlowError carrying its code and the
    reason (``message (code: reason)``)."""
    code = getattr(exc, "code", None)
    value = getattr(code, "value", None) or "verification_failed"
    reason = getattr(exc, "reason", "") or str(exc)
    return FlowError(f"{message} ({value}: {reason})", code=value)


class ConsentImageMismatch(FlowError):
    """A received image is not one its consent names (or the consent does not verify against
    the issuer's certificate chain): it must not be shown (docs/ARCHITECTURE.md §2, consent enforced
    twice)."""

    def __init__(self, message: str, *, reason: str = "token_invalid") -> None:
        super().__init__(message, code="consent_image_mismatch")
        self.reason = reason  # image_not_named | token_invalid (reported to the relay)


class DeviceWiped(SDKError):
    """The organisation revoked this device and ordered it wiped; its data is erased.
    ``revoked_at`` (unix seconds) comes from the organisation-signed revocation list."""

    def __init__(self, revoked_at: int) -> None:
        self.revoked_at = revoked_at
        when = format_time(revoked_at)
        super().__init__(f"This device was revoked by your organisation on {when}; its data "
                         "has been erased.")
