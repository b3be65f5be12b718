"""Lightbox relay: a blind store-and-forward server for end-to-end encrypted consults."""

__all__: list[str] = []
