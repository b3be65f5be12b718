"""Per-organisation identity settings: how a hospital's directory and single sign-on map onto
Lightbox (docs/OPERATIONS.md "Hospital directory (SCIM)" and "Single sign-on (OpenID Connect)").

The file (``LIGHTBOX_IDENTITY_FILE``) is JSON ``{"orgs": {org_id: {OrgIdentity fields}}}``::

    {"orgs": {"st-elsewhere": {
        "group_roles": {"Orthopaedics on call": "orthopaedics_oncall"}}}}

``group_roles`` maps a directory group's ``displayName`` (SCIM Groups, matched without regard
to case) to the Lightbox role IT's workstation writes into the certificates of its members.
An organisation not listed maps no groups; its users are provisioned with no role.

``oidc`` turns on single sign-on for the organisation (server/oidc.py)::

    "oidc": {"issuer": "https://login.example.org/tenant/v2.0", "client_id": "lightbox",
             "login_claim": "preferred_username", "required_claims": {"tid": "..."}}

``issuer`` is compared exactly with the ID token's ``iss`` and the discovery document's
``issuer`` (OpenID Connect Discovery 1.0 §4.3); it must be https (loopback http is allowed
for tests). ``login_claim`` names the claim that carries the Lightbox login (case ignored);
``required_claims`` are claims the ID token must carry with exactly these values (a tenant,
an audience group); ``algorithms`` the signature algorithms accepted.

``role_claim`` names the ID token claim that carries the user's groups or roles at the IdP
(``groups`` for Okta and Keycloak, ``roles`` for Entra ID app roles), a string or a list of
strings; ``claim_roles`` maps its values (case ignored) to Lightbox roles::

    "oidc": {..., "scopes": ["openid", "profile", "groups"], "role_claim": "groups",
             "claim_roles": {"Orthopaedics on call": "orthopaedics_oncall"}}

The IdP then speaks for those roles only (server/renewals.py): one it grants that the
certificate lacks waits for IT's signature, one it no longer grants is withdrawn at sign-in.
A token without the claim grants none of them.

``password_login`` says whether the relay still takes a Lightbox password from the
organisation's clinicians once it signs on with its IdP: ``"refused"`` (the default) makes the
IdP their only first factor, so a password given before single sign-on was turned on no longer
logs in or enrols (``sso_required``, server/login.py) and disabling someone at the IdP is
enough; ``"allowed"`` keeps those passwords working beside the IdP for a migration period::

    "oidc": {..., "password_login": "allowed"}

Service accounts (the record gateway) have no account at the IdP and keep their passwords
either way; IT administrators (``lightbox-admin``) are no user of an organisation and are not
affected (docs/SECURITY.md "Single sign-on").

A role is mapped in one place only: an organisation whose ``claim_roles`` and
``group_roles`` name the same role is refused, and the relay does not start. Were it allowed,
either source could restore at once a role the other had just withdrawn (the certificate
still names it until IT signs the renewal), so the directory's withdrawal would last only
until the user's next sign-in (docs/SECURITY.md "Single sign-on").
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Literal

import msgspec

from protocol.certs import AccountKind

__all__ = ["IdentitySettings", "OidcSettings", "OrgIdentity"]

Role = Annotated[str, msgspec.Meta(pattern=r"^[a-z][a-z0-9_]{0,63}$")]  # as protocol.certs
OrgId = Annotated[str, msgspec.Meta(pattern=r"^[a-z0-9][a-z0-9.-]{0,62}$")]


_ALGORITHMS = ["RS256", "PS256", "ES256", "EdDSA"]


class OidcSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    issuer: Annotated[str, msgspec.Meta(
        pattern=r"^(https://[^\s]+|http://(127\.0\.0\.1|localhost|\[::1\])(:[0-9]+)?(/[^\s]*)?)$")]
    client_id: Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
    login_claim: str = "preferred_username"
    required_claims: dict[str, str] = {}
    scopes: list[str] = msgspec.field(default_factory=lambda: ["openid", "profile"])
    algorithms: list[Annotated[str, msgspec.Meta(pattern=r"^(RS|PS|ES)(256|384|512)$|^EdDSA$")]] = \
        msgspec.field(default_factory=lambda: list(_ALGORITHMS))
    role_claim: Annotated[str, msgspec.Meta(min_length=1, max_length=256)] | None = None
    claim_roles: dict[str, Role] = {}
    password_login: Literal["refused", "allowed"] = "refused"  # noqa: S105 (a policy)

    def __post_init__(self) -> None:
        if self.claim_roles and self.role_claim is None:
            raise ValueError("claim_roles needs role_claim: the claim whose values they map")

    def roles_for(self, claims: dict[str, object]) -> list[str] | None:
        """The roles the ID token's ``role_claim`` maps to (sorted, each once), or None when
        no role claim is configured (the IdP then speaks for no role)."""
        if self.role_claim is None:
            return None
        value = claims.get(self.role_claim)
        values = [value] if isinstance(value, str) else value if isinstance(value, list) else []
        return _mapped(self.claim_roles, [v for v in values if isinstance(v, str)])


class OrgIdentity(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    group_roles: dict[str, Role] = {}
    oidc: OidcSettings | None = None

    def refuses_password(self, account_kind: str) -> bool:
        """Whether a Lightbox password of a user of this kind (``AccountKind``) is refused:
        a clinician's, when the organisation signs on with its IdP and ``password_login`` is
        not ``"allowed"`` (module docstring)."""
        allowed = self.oidc is None or self.oidc.password_login == "allowed"  # noqa: S105
        return not allowed and account_kind == AccountKind.CLINICIAN

    def mapped_twice(self) -> list[str]:
        """The roles both ``group_roles`` and ``oidc.claim_roles`` map (sorted)."""
        claimed = () if self.oidc is None else self.oidc.claim_roles.values()
        return sorted(set(self.group_roles.values()) & set(claimed))

    def roles_for(self, groups: Iterable[str]) -> list[str]:
        """The roles the named groups map to (sorted, each once)."""
        return _mapped(self.group_roles, groups)


def _mapped(table: Mapping[str, str], names: Iterable[str]) -> list[str]:
    """The roles ``names`` map to in ``table`` (keys matched without regard to case)."""
    folded = {name.casefold(): role for name, role in table.items()}
    return sorted({folded[n.casefold()] for n in names if n.casefold() in folded})


class _File(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    orgs: dict[OrgId, OrgIdentity]


_EMPTY = OrgIdentity()


class IdentitySettings:
    def __init__(self, by_org: Mapping[str, OrgIdentity] | None = None) -> None:
        """ValueError when an organisation maps a role both ways (module docstring)."""
        self.by_org = dict(by_org or {})
        for org_id, org in sorted(self.by_org.items()):
            if twice := org.mapped_twice():
                raise ValueError(
                    f"organisation {org_id} maps {'the role' if len(twice) == 1 else 'the roles'}"
                    f" {', '.join(twice)} both from a directory group (group_roles) and from "
                    "the IdP's claim (oidc.claim_roles): map each role in one place only")

    @classmethod
    def from_file(cls, path: Path | None) -> IdentitySettings:
        """The settings of ``path`` (None: no organisation configured); ValueError naming the
        file when it is unreadable or malformed."""
        if path is None:
            return cls()
        try:
            parsed = msgspec.convert(json.loads(path.read_text()), _File)
        except (OSError, ValueError, msgspec.ValidationError) as exc:
            raise ValueError(f"{path}: not a valid identity settings file: {exc}") from exc
        issuers = [o.oidc.issuer for o in parsed.orgs.values() if o.oidc is not None]
        if len(set(issuers)) != len(issuers):
            raise ValueError(f"{path}: two organisations name the same OpenID issuer")
        try:
            return cls(parsed.orgs)
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from exc

    def for_org(self, org_id: str) -> OrgIdentity:
        return self.by_org.get(org_id, _EMPTY)
