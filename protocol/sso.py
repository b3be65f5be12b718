"""Single sign-on with the hospital's OpenID provider (docs/PROTOCOL.md §11, "Single sign-on").

The clinician's client runs the Authorization Code flow with PKCE (RFC 7636; RFC 8252 §7.3
loopback redirect for the CLI) against the IdP itself, with the relay's single-use challenge
as the OpenID ``nonce``, and hands the relay the ID token as the first factor; the second is
the device's signature over the same challenge (:func:`protocol.api.login_signing_input`),
exactly as with a password. The relay never sees the authorization code or the IdP's access
token, and the IdP never sees a device key.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

from protocol.api import MAX_PREKEY_BATCH

__all__ = ["MAX_ID_TOKEN_LENGTH", "SsoChallenge", "SsoConfig", "SsoEnrolComplete", "SsoLogin"]

MAX_ID_TOKEN_LENGTH = 16_384
IdToken = Annotated[str, msgspec.Meta(min_length=5, max_length=MAX_ID_TOKEN_LENGTH,
                                      pattern=r"^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*$")]
OrgId = Annotated[str, msgspec.Meta(pattern=r"^[a-z0-9][a-z0-9.-]{0,62}$")]
B64 = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_-]*$", max_length=8192)]
Compact = Annotated[str, msgspec.Meta(min_length=3, max_length=16_384)]


class SsoConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """What a client needs to start the flow for an organisation (public)."""

    org_id: str
    issuer: str
    client_id: str
    scopes: list[str]


class SsoChallenge(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """A single-use nonce: the OpenID ``nonce`` of the authorization request, and what the
    device signs."""

    nonce: str
    expires_at: int


class SsoLogin(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    org_id: OrgId
    id_token: IdToken
    device_id: str
    signature: B64  # over login_signing_input(nonce, login, device_id); nonce from the token


class SsoEnrolComplete(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """:class:`protocol.api.EnrolComplete` with the ID token in place of a password."""

    enrolment_token: B64
    device_certificate: Compact
    signed_prekey: Compact
    one_time_prekeys: Annotated[list[Compact], msgspec.Meta(max_length=MAX_PREKEY_BATCH)]
    org_id: OrgId
    id_token: IdToken
