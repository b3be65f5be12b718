"""What the relay's SCIM service publishes (RFC 7643 §5-§7, RFC 7644 §4): the User and Group
schemas it keeps, the two resource types and the ServiceProviderConfig.

The User schema is RFC 7643 §4.1's, narrowed to the attributes Lightbox uses (a password or a
photo is never wanted here); the narrowed schema is both what ``/Schemas`` publishes and the
model every request is validated against, so the two cannot drift. Models, validation, filters
and PATCH come from ``scim2-models``; no SCIM grammar is parsed by hand.
"""

from __future__ import annotations

from typing import Any

from scim2_models import (
    URN,
    AuthenticationScheme,
    Bulk,
    ChangePassword,
    ETag,
    Extension,
    Filter,
    Group,
    Patch,
    Resource,
    ResourceType,
    Schema,
    ServiceProviderConfig,
    Sort,
    User,
)

__all__ = [
    "CLINICIAN_SCHEMA",
    "GROUP_ATTRIBUTES",
    "RESOURCE_TYPES",
    "SCHEMAS",
    "USER_ATTRIBUTES",
    "Clinician",
    "GroupModel",
    "UserModel",
    "service_provider_config",
]

USER_ATTRIBUTES = ("userName", "name", "displayName", "title", "emails", "active", "groups")
GROUP_ATTRIBUTES = ("displayName", "members")


def _narrowed(model: type[Resource[Any]], keep: tuple[str, ...]) -> tuple[Schema, Any]:
    schema = model.to_schema()
    schema.attributes = [a for a in schema.attributes or [] if a.name in keep]
    return schema, Resource.from_schema(schema)


CLINICIAN_SCHEMA = "urn:lightbox:params:scim:schemas:extension:clinician:2.0:User"


class Clinician(Extension):
    """What a clinician's certificate states beyond the core schema: the professional licence
    (IT's tool refuses to sign a clinician without one), specialty and department. Plain
    strings here; ``lightbox-admin sign-pending`` checks them (``licenceExpires`` is
    YYYY-MM-DD) and reports a user it cannot sign."""

    __schema__ = URN(CLINICIAN_SCHEMA)
    licence_type: str | None = None
    licence_number: str | None = None
    jurisdiction: str | None = None
    licence_expires: str | None = None
    specialty: str | None = None
    department: str | None = None


_USER_SCHEMA, _CoreUser = _narrowed(User, USER_ATTRIBUTES)
UserModel = _CoreUser[Clinician]
_GROUP_SCHEMA, GroupModel = _narrowed(Group, GROUP_ATTRIBUTES)
SCHEMAS: tuple[Schema, ...] = (_USER_SCHEMA, Clinician.to_schema(), _GROUP_SCHEMA)


def _resource_type(name: str, schema: Schema, *extensions: str) -> ResourceType:
    return ResourceType.model_validate({
        "id": name, "name": name, "description": f"Lightbox {name.lower()}s",
        "endpoint": f"/{name}s", "schema": schema.id,
        "schemaExtensions": [{"schema": e, "required": False} for e in extensions]})


RESOURCE_TYPES: tuple[ResourceType, ...] = (
    _resource_type("User", _USER_SCHEMA, CLINICIAN_SCHEMA),
    _resource_type("Group", _GROUP_SCHEMA))


def service_provider_config(max_results: int) -> ServiceProviderConfig:
    """RFC 7643 §5: PATCH, filters (up to ``max_results``) and ETags; no bulk, no sorting,
    no password change; bearer tokens IT issues on the relay host."""
    return ServiceProviderConfig(
        patch=Patch(supported=True),
        bulk=Bulk(supported=False, max_operations=0, max_payload_size=0),
        filter=Filter(supported=True, max_results=max_results),
        change_password=ChangePassword(supported=False),
        sort=Sort(supported=False),
        etag=ETag(supported=True),
        authentication_schemes=[AuthenticationScheme(
            type=AuthenticationScheme.Type.oauthbearertoken, name="Bearer token",
            description="A token from `lightbox-server scim token issue --org ORG` "
                        "(RFC 6750 Authorization: Bearer)", primary=True)],
    )
