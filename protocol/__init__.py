"""Lightbox protocol: sans-I/O wire format, cryptography, certificates and consent tokens.

Shared by the relay (server/) and every client (clients/). Imports no event loop, network,
web or database module (enforced by ruff's banned-api in protocol/ruff.toml and a test).
"""

__all__: list[str] = []
