"""The admin API's queue of directory users waiting for IT's signature (docs/PROTOCOL.md §11,
"Directory users"): what the relay lists, and what IT's workstation answers for each.

A hospital directory (SCIM 2.0) can ask for a user, never make one: IT's tool reads
:class:`PendingUsers`, signs each user's certificate with the organisation key on IT's
workstation, and posts a :class:`SignPending` naming the ``version`` it read, so a user the
directory changed in the meantime is refused (``conflict``) rather than signed stale.

The directory (a rename) and the IdP (a role its claim now grants) can likewise ask for a
user's certificate to be *renewed*: a :class:`PendingRenewal`, answered with a
:class:`RenewPending` (the certificate held, re-signed with what is asked and nothing else).
"""

from __future__ import annotations

from typing import Annotated

import msgspec

from protocol.api import ProvisionUser

__all__ = ["MAX_PENDING", "PendingRenewal", "PendingUser", "PendingUsers", "RenewPending",
           "Renewed", "SignPending", "SignedPending"]

MAX_PENDING = 500  # one listing; the tool repeats until the queue is empty

Role = Annotated[str, msgspec.Meta(pattern=r"^[a-z][a-z0-9_]{0,63}$")]  # as protocol.certs


class PendingUser(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """A directory user no certificate was signed for: the login (the SCIM ``userName``, in
    lower case), the display name, the roles its groups map to (LIGHTBOX_IDENTITY_FILE) and
    the licence, specialty and department the directory states."""

    directory_id: str
    org_id: str
    login: str
    display_name: str
    roles: list[Role]
    version: int
    # The directory's Lightbox extension (server/scim/schema.py Clinician), unchecked: IT's
    # tool validates them before it signs anything.
    licence_type: str | None = None
    licence_number: str | None = None
    jurisdiction: str | None = None
    licence_expires: str | None = None  # YYYY-MM-DD
    specialty: str | None = None
    department: str | None = None


class PendingRenewal(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """A user whose certificate should say something new: the certificate held (compact
    form, to re-sign with the same key, licence and account kind), and the display name or
    the roles asked (None: keep the certificate's)."""

    user_id: str
    org_id: str
    login: str
    user_certificate: str
    display_name: str | None
    roles: list[Role] | None
    version: int


class PendingUsers(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    users: list[PendingUser]
    renewals: list[PendingRenewal] = msgspec.field(default_factory=list)


class RenewPending(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """IT's answer for one renewal: the version it read and the renewed certificate."""

    version: int
    user_certificate: str


class SignPending(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """IT's answer for one pending user: the version it read and the provisioning row its tool
    made (certificate signed by the organisation key, enrolment package sealed under a code)."""

    version: int
    user: ProvisionUser


class SignedPending(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    directory_id: str
    user_id: str
    login: str


class Renewed(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    user_id: str
    login: str
