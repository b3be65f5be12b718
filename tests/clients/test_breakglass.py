"""clients/sdk/breakglass.py: an emergency declaration is checked before anything is sent, as
the relay would check it (docs/PROTOCOL.md §17): direct care only, no consent beside it, a real
sentence of a bounded length, sealed into the body; its repr never shows the reason."""

from __future__ import annotations

import pytest

from clients.sdk.breakglass import MIN_REASON, Emergency, check_emergency
from clients.sdk.errors import FlowError
from protocol.body import MAX_EMERGENCY_REASON, Body
from protocol.model import EmergencyCategory, Purpose

REASON = "Patient Doe^Jane unconscious after a fall, no relative reachable"


def _check(reason: str = REASON, *, purpose: Purpose = Purpose.DIRECT_CARE,
           consent: str | None = None) -> Body:
    return check_emergency(Emergency(EmergencyCategory.UNCONSCIOUS, reason), purpose=purpose,
                           consent=consent, body=Body(text="Wrist, bed 4"))


def test_the_reason_is_sealed_into_the_body_with_its_spaces_folded() -> None:
    body = _check("  Patient   unconscious,\n no relative reachable  ")
    assert body.emergency_reason == "Patient unconscious, no relative reachable"
    assert body.text == "Wrist, bed 4"


@pytest.mark.parametrize(("kwargs", "code", "sentence"), [
    ({"consent": "token"}, "break_glass_not_allowed",
     "an emergency message goes without a consent: send it under the consent instead"),
    ({"purpose": Purpose.TEACHING}, "break_glass_not_allowed",
     "an emergency message without consent is for direct care only"),
    ({"reason": "x " * (MIN_REASON // 2)}, "validation_failed",
     f"say in a sentence (at least {MIN_REASON} characters) why no consent can be asked for"),
    ({"reason": "x" * (MAX_EMERGENCY_REASON + 1)}, "validation_failed",
     f"the reason is over {MAX_EMERGENCY_REASON} characters"),
])
def test_a_declaration_the_relay_would_refuse_is_refused_here(
        kwargs: dict[str, object], code: str, sentence: str) -> None:
    with pytest.raises(FlowError) as refused:
        _check(**kwargs)  # type: ignore[arg-type]
    assert (refused.value.code, str(refused.value)) == (code, sentence)


def test_a_reason_of_exactly_the_minimum_length_is_accepted() -> None:
    assert _check("x" * MIN_REASON).emergency_reason == "x" * MIN_REASON


def test_an_emergency_never_prints_its_reason() -> None:
    shown = repr(Emergency(EmergencyCategory.UNCONSCIOUS, REASON))
    assert "Doe" not in shown and f"<{len(REASON)} chars>" in shown
