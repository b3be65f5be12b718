"""Break-glass on the sending device (docs/PROTOCOL.md §17): an emergency message without a
consent, when none can be asked for.

The sender gives a category (the only part the relay reads, in the signed header) and a
written reason (sealed in the body, for the recipients and the record: it may name the
patient). This module checks the declaration before anything is kept or sent, so a client never
seals what the relay would refuse for reasons it can see here (a consent named as well, a
purpose other than direct care); who may receive it is the relay's check, on the certificates
it holds. After the emergency the sender files a follow-up: the consent sought afterwards, or
why none was possible (its category to the relay, its words sealed into the thread).
"""

from __future__ import annotations

import dataclasses

import msgspec

from clients.sdk.errors import FlowError
from protocol.body import MAX_EMERGENCY_REASON, Body
from protocol.errors import ErrorCode
from protocol.model import EmergencyCategory, Purpose

__all__ = ["MIN_REASON", "Emergency", "check_emergency"]

MIN_REASON = 20  # characters: a real sentence, as for an external consult's necessity


@dataclasses.dataclass(frozen=True)
class Emergency:
    """A break-glass declaration: its category and the clinician's reason (sealed)."""

    category: EmergencyCategory
    reason: str

    def __repr__(self) -> str:  # the reason may name the patient: never print it
        return f"Emergency(category={self.category.value}, reason=<{len(self.reason)} chars>)"


def check_emergency(emergency: Emergency, *, purpose: Purpose, consent: str | None,
                    body: Body) -> Body:
    """``body`` with the reason sealed in it; FlowError (``break_glass_not_allowed`` or
    ``validation_failed``) for a declaration the relay would refuse or a reason too short."""
    if consent is not None:
        raise FlowError("an emergency message goes without a consent: send it under the "
                        "consent instead", code=ErrorCode.BREAK_GLASS_NOT_ALLOWED.value)
    if purpose is not Purpose.DIRECT_CARE:
        raise FlowError("an emergency message without consent is for direct care only",
                        code=ErrorCode.BREAK_GLASS_NOT_ALLOWED.value)
    reason = " ".join(emergency.reason.split())
    if len(reason) < MIN_REASON:
        raise FlowError(f"say in a sentence (at least {MIN_REASON} characters) why no consent "
                        "can be asked for", code=ErrorCode.VALIDATION_FAILED.value)
    if len(reason) > MAX_EMERGENCY_REASON:
        raise FlowError(f"the reason is over {MAX_EMERGENCY_REASON} characters",
                        code=ErrorCode.VALIDATION_FAILED.value)
    return msgspec.structs.replace(body, emergency_reason=reason)
