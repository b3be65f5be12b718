"""On-call addressing and the escalation ladder, sans I/O (docs/PROTOCOL.md §15).

**Role names.** Certificates and consent tokens spell roles ``[a-z][a-z0-9_]{0,63}``. People
write on-call roles with hyphens (``role:orthopaedics-oncall``), so an address is normalised by
:func:`normalise_role`: an optional ``role:`` prefix is dropped and every ``-`` becomes ``_``
(``orthopaedics-oncall`` and ``orthopaedics_oncall`` are the same role). The relay stores and
answers the normalised name only.

**Escalation** of a consult addressed to a role (PROTOCOL.md §16): the relay delivers it to the
shift's primary (level 0) and holds the backups' copies. With ``deadline`` seconds per level
(the role's urgent or routine deadline) and nobody acknowledging:

* at half the deadline the current level is notified again (``renotify``);
* at the deadline the held copy is released to the next level (``released``), whose clock
  starts afresh;
* at the deadline of the last level everyone on the ladder is notified once more
  (``renotify``) and the escalation is *exhausted* (nothing more is automatic).

:func:`advance` is that state machine: given the state that fell due, it returns the event to
announce and the next state. The relay keeps the state and its due time in Postgres.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Final

from protocol.frames import EscalationKind

__all__ = [
    "ROLE_PREFIX",
    "ROLE_RE",
    "Phase",
    "Transition",
    "advance",
    "first_due",
    "normalise_role",
]

ROLE_PREFIX: Final = "role:"
ROLE_RE: Final = re.compile(r"^[a-z][a-z0-9_]{0,63}$")


def normalise_role(address: str) -> str:
    """``role:orthopaedics-oncall`` -> ``orthopaedics_oncall``; ValueError if not a role name."""
    name = address.strip().lower()
    if name.startswith(ROLE_PREFIX):
        name = name[len(ROLE_PREFIX):]
    name = name.replace("-", "_")
    if not ROLE_RE.match(name):
        raise ValueError("a role is 1-64 characters of a-z, 0-9, '_' or '-', starting with a "
                         "letter")
    return name


Phase = str  # "renotify" (the next event re-notifies) or "release" (the next event releases)


@dataclasses.dataclass(frozen=True)
class Transition:
    """What a due escalation does now, and when it is due next (None: no more timers)."""

    kind: EscalationKind
    level: int  # the level the event concerns (for ``released``: the level now reached)
    next_level: int
    next_phase: Phase
    next_due_in: int | None
    exhausted: bool = False


def first_due(deadline: int) -> int:
    """Seconds after delivery to a level when its re-notification falls due."""
    return max(1, deadline // 2)


def advance(*, level: int, phase: Phase, ladder_size: int, deadline: int) -> Transition:
    """The next step of an unacknowledged escalation that fell due (module docstring)."""
    if ladder_size < 1 or not 0 <= level < ladder_size:
        raise ValueError("level outside the ladder")
    if phase == "renotify":
        return Transition(EscalationKind.RENOTIFY, level, level, "release",
                          deadline - first_due(deadline))
    if phase != "release":
        raise ValueError(f"unknown phase {phase!r}")
    if level + 1 < ladder_size:
        return Transition(EscalationKind.RELEASED, level + 1, level + 1, "renotify",
                          first_due(deadline))
    return Transition(EscalationKind.RENOTIFY, level, level, "release", None, exhausted=True)
