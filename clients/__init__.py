"""Lightbox clients: the SDK and the programs built on it (CLI, admin, gateway, desktop)."""

__all__: list[str] = []
