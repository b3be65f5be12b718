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
    AuthenticationScheme,
    Bulk,
    ChangePassword,
    ETag,
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
    "GROUP_ATTRIBUTES",
    "RESOURCE_TYPES",
    "SCHEMAS",
    "USER_ATTRIBUTES",
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


_USER_SCHEMA, UserModel = _narrowed(User, USER_ATTRIBUTES)
_GROUP_SCHEMA, GroupModel = _narrowed(Group, GROUP_ATTRIBUTES)
SCHEMAS: tuple[Schema, ...] = (_USER_SCHEMA, _GROUP_SCHEMA)


def _resource_type(name: str, schema: Schema) -> ResourceType:
    return ResourceType.model_validate({"id": name, "name": name,
                                        "description": f"Lightbox {name.lower()}s",
                                        "endpoint": f"/{name}s", "schema": schema.id})


RESOURCE_TYPES: tuple[ResourceType, ...] = (_resource_type("User", _USER_SCHEMA),
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
