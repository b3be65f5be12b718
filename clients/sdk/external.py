"""External consults, the client half (CLINICAL_SAFETY.md; docs/ARCHITECTURE.md §5 policy table).

Why: the guidance asks that the clinical necessity be documented before a patient's images or
details go to a clinician outside the organisation. A message is *external* when any recipient's
verified user certificate names another organisation than the sender's. Such a message must
carry a clinical-necessity statement, and it travels in two parts:

* the statement itself, **sealed** in the body (``protocol.body.Body.necessity``): it is
  clinical text and the relay is blind;
* a **server-visible flag**, ``MessageHeader.external = True``, so the relay can refuse an
  external message without it (``external_necessity_missing``, the relay half) and
  audit it, without reading the body.

:func:`apply_external` does both decisions at once and is called by the SDK's
``Sender.send_body`` (clients/sdk/sending.py) after the recipients' certificate chains are
verified (so the organisations are known from signed certificates, not from anything the
relay says) and before the body is encoded and sealed. ``send_text`` and ``send_image`` take
``necessity=``.
The statement is clinical text leaving direct care, so clients also run it through
:func:`clients.sdk.textguard.guard_text` with the external-consult purpose.

Exceptions::

    FlowError (clients.sdk.errors)
      NecessityMissing   external recipients and no (or a too short) statement
                         (``code`` external_necessity_missing)
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

import msgspec

from clients.sdk.errors import FlowError
from protocol.body import MAX_NECESSITY, Body
from protocol.model import Purpose

__all__ = [
    "MIN_NECESSITY",
    "NecessityMissing",
    "apply_external",
    "external_orgs",
    "is_external",
]

MIN_NECESSITY: Final = 20  # characters: a sentence, not "x" or "urgent"


class NecessityMissing(FlowError):
    """An external consult without its clinical-necessity statement."""

    def __init__(self, message: str) -> None:
        super().__init__(message, code="external_necessity_missing")


def external_orgs(sender_org: str, recipient_orgs: Iterable[str]) -> list[str]:
    """The recipients' organisations other than the sender's, sorted."""
    return sorted(set(recipient_orgs) - {sender_org})


def is_external(sender_org: str, recipient_orgs: Iterable[str]) -> bool:
    return bool(external_orgs(sender_org, recipient_orgs))


def apply_external(body: Body, *, sender_org: str, recipient_orgs: Iterable[str],
                   necessity: str | None, purpose: Purpose) -> tuple[Body, bool]:
    """``(body to seal, header external flag)`` for a message to ``recipient_orgs``.

    External: the statement (``necessity``, or one already in ``body``) is required, at least
    :data:`MIN_NECESSITY` characters, and is sealed in the body; the flag is True; a
    direct-care purpose is refused (an outside recipient makes it an external consult).
    Internal: the flag is False and the body is unchanged apart from a statement the sender
    chose to give (kept, sealed, harmless).
    """
    statement = " ".join((necessity if necessity is not None else body.necessity or "").split())
    if len(statement) > MAX_NECESSITY:
        raise FlowError(f"the clinical-necessity statement is over {MAX_NECESSITY} characters",
                        code="validation_failed")
    outside = external_orgs(sender_org, recipient_orgs)
    if not outside:
        return (msgspec.structs.replace(body, necessity=statement) if statement else body), False
    if purpose is Purpose.DIRECT_CARE:
        raise FlowError(f"recipients in {', '.join(outside)} are outside your organisation: "
                        "send it as an external consult (purpose external_consult)",
                        code="validation_failed")
    if len(statement) < MIN_NECESSITY:
        raise NecessityMissing(
            f"recipients in {', '.join(outside)} are outside your organisation: state the "
            f"clinical necessity of consulting them (at least {MIN_NECESSITY} characters; it "
            "is sealed, only the recipients read it)")
    return msgspec.structs.replace(body, necessity=statement), True
