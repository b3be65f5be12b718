"""Per-organisation identity settings: how a hospital's directory and single sign-on map onto
Lightbox (docs/OPERATIONS.md "Hospital directory and single sign-on").

The file (``LIGHTBOX_IDENTITY_FILE``) is JSON ``{"orgs": {org_id: {OrgIdentity fields}}}``::

    {"orgs": {"st-elsewhere": {
        "group_roles": {"Orthopaedics on call": "orthopaedics_oncall"}}}}

``group_roles`` maps a directory group's ``displayName`` (SCIM Groups, matched without regard
to case) to the Lightbox role IT's workstation writes into the certificates of its members.
An organisation not listed maps no groups; its users are provisioned with no role.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated

import msgspec

__all__ = ["IdentitySettings", "OrgIdentity"]

Role = Annotated[str, msgspec.Meta(pattern=r"^[a-z][a-z0-9_]{0,63}$")]  # as protocol.certs
OrgId = Annotated[str, msgspec.Meta(pattern=r"^[a-z0-9][a-z0-9.-]{0,62}$")]


class OrgIdentity(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    group_roles: dict[str, Role] = {}

    def roles_for(self, groups: Iterable[str]) -> list[str]:
        """The roles the named groups map to (sorted, each once)."""
        table = {name.casefold(): role for name, role in self.group_roles.items()}
        return sorted({table[g.casefold()] for g in groups if g.casefold() in table})


class _File(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    orgs: dict[OrgId, OrgIdentity]


_EMPTY = OrgIdentity()


class IdentitySettings:
    def __init__(self, by_org: Mapping[str, OrgIdentity] | None = None) -> None:
        self.by_org = dict(by_org or {})

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
        return cls(parsed.orgs)

    def for_org(self, org_id: str) -> OrgIdentity:
        return self.by_org.get(org_id, _EMPTY)
