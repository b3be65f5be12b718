"""The messages the client dropped because their sender's device was revoked or their account
suspended (docs/HAZARD_LOG.md HAZ-10), kept in the device's vault until the specialist
dismisses them, so that a restart of the desktop does not forget one: the message itself was
acknowledged to the relay and is gone, and this line is all that is left of it.

Each is a note of the vault (clients/sdk/vaultnotes.py: sealed under the vault's notes key,
the file shows only the kind and how many), under :data:`NOTE_KIND` and the line's id. It
holds the problem line the page shows (until dismissed there: ``line_dismissed``) and the mark
of its consult (until dismissed in the consult, which forgets the note).

Also kept there, so that a restart does not forget them either:

* every other problem line the client reported (a message it could not open, a sender whose
  certificate does not verify...), under :data:`PROBLEM_KIND`, until dismissed;
* the consults that had nothing left on this computer once their dropped messages were
  dismissed (:data:`EMPTIED_KIND`, by thread id, nothing else): the inbox leaves them out
  until something more of them arrives.
"""

from __future__ import annotations

from typing import Any, TypeVar

import msgspec

from clients.sdk.vault import Vault, VaultCorrupt

__all__ = ["EMPTIED_KIND", "NOTE_KIND", "PROBLEM_KIND", "DroppedMessage", "ProblemLine",
           "emptied", "forget", "keep", "keep_emptied", "kept", "problems", "title"]

NOTE_KIND = "desktop-dropped"
PROBLEM_KIND = "desktop-problem"
EMPTIED_KIND = "desktop-emptied"


class DroppedMessage(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One dropped message: its problem line (``id``, ``detail``, ``code``, ``at``) and the
    mark of its consult (who sent it, when it reached the relay, why, whether urgent)."""

    id: str
    thread_id: str
    detail: str
    code: str
    at: int
    sender: str | None
    sent_at: int
    because: str  # "revoked" or "suspended"
    urgent: bool
    line_dismissed: bool = False

    def notice(self) -> dict[str, Any]:
        """The problem line, as ``notices`` and the ``status`` event say it."""
        return {"id": self.id, "detail": self.detail, "code": self.code, "at": self.at,
                "thread_id": self.thread_id}

    def mark(self) -> dict[str, Any]:
        """The consult's line, as ``dropped`` in ``/api/threads`` says it."""
        return {"id": self.id, "sender": self.sender, "sent_at": self.sent_at,
                "because": self.because, "urgent": self.urgent}

    def __repr__(self) -> str:  # never print who sent it nor the sentence naming them
        return f"DroppedMessage(id={self.id!r}, thread_id={self.thread_id!r})"


class ProblemLine(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Any other problem line, as ``notices`` says it (``thread_id`` when it names a consult)."""

    id: str
    detail: str
    code: str | None
    at: int
    thread_id: str | None = None
    noted: float = 0.0  # when, finer than ``at``: lines of one second keep the order said

    def notice(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "detail": self.detail, "code": self.code,
                               "at": self.at}
        if self.thread_id is not None:
            out["thread_id"] = self.thread_id
        return out

    def __repr__(self) -> str:  # never print the sentence (it may name a colleague)
        return f"ProblemLine(id={self.id!r})"


def title(dropped: list[DroppedMessage]) -> str:
    """A consult's name when all this computer has of it is dropped messages: why it is empty,
    one clause per sender and cause, e.g. "Message dropped: Dr Ada Intern's device was
    revoked" or "2 messages dropped: the sender's account was suspended"."""
    clauses = []
    for d in dropped:
        who = f"{d.sender}'s" if d.sender else "the sender's"
        clause = (f"{who} account was suspended" if d.because == "suspended"
                  else f"{who} device was revoked")
        if clause not in clauses:
            clauses.append(clause)
    count = "Message dropped" if len(dropped) == 1 else f"{len(dropped)} messages dropped"
    return f"{count}: {'; '.join(clauses)}"


def keep(vault: Vault, line: DroppedMessage | ProblemLine) -> None:
    """Keep (or replace) the line in the vault."""
    kind = NOTE_KIND if isinstance(line, DroppedMessage) else PROBLEM_KIND
    vault.put_note(kind, line.id, msgspec.msgpack.encode(line))


def forget(vault: Vault, line_id: str, *, kind: str = NOTE_KIND) -> None:
    """Forget a dropped message's line (``kind``: :data:`PROBLEM_KIND` for another's)."""
    vault.drop_note(kind, line_id)


def kept(vault: Vault) -> list[DroppedMessage]:
    """Every line kept, oldest first."""
    out = _read(vault, NOTE_KIND, DroppedMessage, "a dropped message's line")
    return sorted(out, key=lambda d: (d.at, d.sent_at, d.id))


def problems(vault: Vault) -> list[ProblemLine]:
    """Every other problem line kept, oldest first."""
    out = _read(vault, PROBLEM_KIND, ProblemLine, "a problem line")
    return sorted(out, key=lambda p: (p.at, p.noted, p.id))


_Line = TypeVar("_Line", "DroppedMessage", "ProblemLine")


def _read(vault: Vault, kind: str, type_: type[_Line], what: str) -> list[_Line]:
    """The lines of ``kind``, each checked against the id it is kept under."""
    out = []
    for line_id, value in vault.notes(kind).items():
        try:
            line = msgspec.msgpack.decode(value, type=type_)
        except msgspec.DecodeError as exc:
            raise VaultCorrupt(f"{what} is unreadable") from exc
        if line.id != line_id:
            raise VaultCorrupt(f"{what} is damaged")
        out.append(line)
    return out


def keep_emptied(vault: Vault, thread_id: str) -> None:
    """The consult had nothing left on this computer once its dropped messages went."""
    vault.put_note(EMPTIED_KIND, thread_id, b"")


def emptied(vault: Vault) -> set[str]:
    return set(vault.notes(EMPTIED_KIND))
