"""SCIM 2.0 (RFC 7643, RFC 7644) for the hospital's directory, at ``/scim/v2``.

    schema.py   what is published: the narrowed User and Group schemas, resource types and
                the ServiceProviderConfig (models from scim2-models)
    service.py  users and groups of one organisation, and what their changes do to relay users
    routes.py   the HTTP binding: bearer credentials, ETags, SCIM error bodies
    pending.py  the admin API IT's workstation uses to sign directory users' certificates

Errors are scim2-models' exception tree (``SCIMException`` and its RFC 7644 §3.12 subclasses:
``InvalidFilterException``, ``InvalidValueException``, ``InvalidSyntaxException``,
``UniquenessException``, ``NotFoundException``, ``PreconditionFailedException``,
``UnauthorizedException``, ...); routes.py turns each into its error body.
"""

__all__: list[str] = []
