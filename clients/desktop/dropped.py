"""The messages the client dropped because their sender's device was revoked or their account
suspended (docs/HAZARD_LOG.md HAZ-10), kept in the device's vault until the specialist
dismisses them, so that a restart of the desktop does not forget one: the message itself was
acknowledged to the relay and is gone, and this line is all that is left of it.

Each is a note of the vault (clients/sdk/vaultnotes.py: sealed under the vault's notes key,
the file shows only the kind and how many), under :data:`NOTE_KIND` and the line's id. It
holds the problem line the page shows (until dismissed there: ``line_dismissed``) and the mark
of its consult (until dismissed in the consult, which forgets the note).
"""

from __future__ import annotations

from typing import Any

import msgspec

from clients.sdk.vault import Vault, VaultCorrupt

__all__ = ["NOTE_KIND", "DroppedMessage", "forget", "keep", "kept"]

NOTE_KIND = "desktop-dropped"


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


def keep(vault: Vault, dropped: DroppedMessage) -> None:
    """Keep (or replace) the line in the vault."""
    vault.put_note(NOTE_KIND, dropped.id, msgspec.msgpack.encode(dropped))


def forget(vault: Vault, line_id: str) -> None:
    vault.drop_note(NOTE_KIND, line_id)


def kept(vault: Vault) -> list[DroppedMessage]:
    """Every line kept, oldest first."""
    out = []
    for line_id, value in vault.notes(NOTE_KIND).items():
        try:
            dropped = msgspec.msgpack.decode(value, type=DroppedMessage)
        except msgspec.DecodeError as exc:
            raise VaultCorrupt("a dropped message's line is unreadable") from exc
        if dropped.id != line_id:
            raise VaultCorrupt("a dropped message's line is damaged")
        out.append(dropped)
    return sorted(out, key=lambda d: (d.at, d.sent_at, d.id))
