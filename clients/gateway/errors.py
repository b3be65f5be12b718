"""Why a filing did not happen: refused for good (the sender is told) or held by the
wrong-patient check until the sender corrects the identity; code is what the log says.
"""

from __future__ import annotations

__all__ = [
    "FilingFailed",
    "FilingHeld",
]


class FilingFailed(Exception):
    """This image cannot be filed as it is (the PACS refused it, or it fails a check): the
    sender is told why (``str()``, in the sealed thread) and nothing expires until the hard
    limit. ``code`` is what the log says: a fixed word, never the reason's text, which may
    quote the PACS's answer or the record data."""

    def __init__(self, reason: str, *, code: str) -> None:
        super().__init__(reason)
        self.code = code


class FilingHeld(FilingFailed):
    """The wrong-patient check (clients/gateway/identity.py) holds the filing: the typed
    identity is unknown to the record or disagrees with it. Nothing is filed; the sender is told
    how to correct it (``lightbox correct-patient``)."""
