"""protocol.oncall: role address normalisation and the escalation state machine (no I/O)."""

from __future__ import annotations

import pytest

from protocol.frames import EscalationKind
from protocol.oncall import advance, first_due, normalise_role


@pytest.mark.parametrize("address", ["role:orthopaedics-oncall", "orthopaedics-oncall",
                                     "orthopaedics_oncall", " ROLE:Orthopaedics-Oncall "])
def test_role_addresses_normalise_to_the_certificate_spelling(address: str) -> None:
    assert normalise_role(address) == "orthopaedics_oncall"


@pytest.mark.parametrize("bad", ["", "role:", "9oncall", "ortho oncall", "a" * 65, "ørtho"])
def test_bad_role_names_are_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        normalise_role(bad)


def test_a_three_level_ladder_renotifies_releases_and_ends_exhausted() -> None:
    level, phase, steps = 0, "renotify", []
    elapsed = first_due(300)
    while True:
        t = advance(level=level, phase=phase, ladder_size=3, deadline=300)
        steps.append((elapsed, t.kind, t.level))
        if t.next_due_in is None:
            assert t.exhausted
            break
        elapsed += t.next_due_in
        level, phase = t.next_level, t.next_phase
    assert steps == [(150, EscalationKind.RENOTIFY, 0), (300, EscalationKind.RELEASED, 1),
                     (450, EscalationKind.RENOTIFY, 1), (600, EscalationKind.RELEASED, 2),
                     (750, EscalationKind.RENOTIFY, 2), (900, EscalationKind.RENOTIFY, 2)]


def test_advance_refuses_a_level_outside_the_ladder_or_an_unknown_phase() -> None:
    with pytest.raises(ValueError):
        advance(level=3, phase="renotify", ladder_size=3, deadline=300)
    with pytest.raises(ValueError):
        advance(level=0, phase="sleep", ladder_size=3, deadline=300)
