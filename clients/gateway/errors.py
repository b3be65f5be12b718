"""Why a filing did not happen: refused for good (the sender is told), held by the
wrong-patient check until the sender corrects the identity, or not needed because the image is
filed already (never filed twice); code is what the log says.

Exceptions::

    FilingFailed        refused: NOT saved to the record
     ├── FilingHeld     held by the wrong-patient check, until ``correct-patient``
     ├── FilingUnproven the PACS accepted it but the read-back did not prove it
     └── AlreadyFiled   the PACS holds the image already: it is not filed again
"""

from __future__ import annotations

__all__ = [
    "AlreadyFiled",
    "FilingFailed",
    "FilingHeld",
    "FilingUnproven",
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


class AlreadyFiled(FilingFailed):
    """The PACS already holds this image (its SOP Instance UID, derived from the attachment)
    from another message: a correction or a stale copy of an image already filed. It is not
    stored again, under any patient; a filed image is corrected by the records team in the
    PACS. ``study_instance_uid`` is where it is filed (the record reference)."""

    def __init__(self, study_instance_uid: str) -> None:
        super().__init__(f"it is already filed in the patient's record as "
                         f"{study_instance_uid}; a filed image is corrected by the records "
                         "team in the PACS", code="already_filed")
        self.study_instance_uid = study_instance_uid


class FilingUnproven(FilingFailed):
    """The PACS accepted the object (STOW-RS) but reading it back did not prove it: it may be
    in the record, so the sender is never told it was "NOT saved"; the records team checks
    the PACS. No filing statement is sent, so nothing expires before the hard limit."""
