"""``lightbox logout``: end this device's session at the relay (POST /v1/auth/logout,
docs/PROTOCOL.md §11) and forget its tokens here, for a shared workstation (docs/USER_GUIDE.md
"Everyday commands").

The relay ends a session only when shown its refresh token (it stores the token's SHA-256 and
nothing else that names the session: docs/SECURITY.md "Identity and sessions"). So when the
relay cannot be reached, this device stops using the session at once (the session leaves the
device state, and nothing refreshes with it again) but keeps its refresh token, sealed in the
vault's notes under the password as the device's keys are, marked *to end*; the next
``lightbox logout`` that reaches the relay ends it there and then forgets it. A token past its
lapse time is forgotten without asking: the relay ended that session by itself.

Before anything else, it marks the profile logged out (clients/sdk/profile.py): a ``lightbox
watch`` (or the desktop) running on it in another terminal stops using its session at once,
also while the relay is out of reach, rather than reconnecting with the tokens it holds in
memory once the relay is back.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time

import msgspec

from clients.clinician.shell import unlock_profile, when
from clients.sdk.errors import RelayRequestError, RelayUnavailable
from clients.sdk.failures import run_async
from clients.sdk.http import RelayHTTP
from clients.sdk.vault import Vault
from protocol.errors import ErrorCode

__all__ = ["logout"]

# Vault notes (clients/sdk/vault.py "notes") of sessions to end, keyed by the SHA-256 of their
# refresh token.
_NOTE_TO_END = "session-to-end"
_ENDED_ALREADY = frozenset({ErrorCode.TOKEN_INVALID.value, ErrorCode.TOKEN_EXPIRED.value})


class _ToEnd(msgspec.Struct, frozen=True, kw_only=True):
    refresh_token: str
    refresh_expires_at: int


def _to_end(vault: Vault, now: float) -> dict[str, _ToEnd]:
    """The sessions kept to end; those lapsed since are forgotten (the relay ended them)."""
    kept: dict[str, _ToEnd] = {}
    for key, raw in vault.notes(_NOTE_TO_END).items():
        item = msgspec.msgpack.decode(raw, type=_ToEnd)
        if item.refresh_expires_at <= now:
            vault.drop_note(_NOTE_TO_END, key)
        else:
            kept[key] = item
    return kept


async def _end(relay: RelayHTTP, refresh_token: str) -> bool:
    """End a session at the relay: False when it had ended already (elsewhere, by IT, or
    expired)."""
    try:
        await relay.end_session(refresh_token)
    except RelayRequestError as exc:
        if exc.code not in _ENDED_ALREADY:
            raise
        return False
    return True


def _earlier(who: str, ended: int, total: int) -> str:
    if total == 1:
        return (f"the relay ended the session of {who} that it could not be told to end before"
                if ended else f"the session of {who} that the relay could not be told to end "
                "before had already ended there")
    return (f"the relay ended {ended} of the {total} sessions of {who} that it could not be "
            "told to end before (the others had already ended there)")


def logout(args: argparse.Namespace) -> int:
    device = unlock_profile(args)
    device.mark_logged_out()  # every program running on the profile stops using the session
    st = device.store.state
    who = f"{st.login} on device {st.device_id}"
    to_end = _to_end(device.vault, time.time())
    session = st.session
    if session is None and not to_end:
        print(f"not logged in: {who} holds no session; `lightbox login` signs in again")
        return 0

    async def go() -> tuple[bool, int]:
        async with RelayHTTP(st.server_url) as relay:
            ended = session is not None and await _end(relay, session.refresh_token)
            earlier = 0
            for key, item in to_end.items():
                earlier += await _end(relay, item.refresh_token)
                device.vault.drop_note(_NOTE_TO_END, key)  # answered: nothing left to end
        return ended, earlier

    try:
        ended, earlier = run_async(go)
    except RelayUnavailable as exc:
        if session is not None:
            # Out of use here at once: no one at this workstation uses the session again.
            # Its refresh token stays sealed only so that a later logout can end it.
            device.vault.put_note(
                _NOTE_TO_END, hashlib.sha256(session.refresh_token.encode()).hexdigest(),
                msgspec.msgpack.encode(_ToEnd(refresh_token=session.refresh_token,
                                              refresh_expires_at=session.refresh_expires_at)))
            device.store.update(lambda now: msgspec.structs.replace(now, session=None))
        lapses = max([i.refresh_expires_at for i in to_end.values()]
                     + ([] if session is None else [session.refresh_expires_at]))
        print(f"error: cannot reach the relay ({exc.reason}), so it could not be told to end "
              f"the session of {who}: this device no longer uses it and keeps its token sealed "
              "only to end it; run `lightbox logout` again once the relay answers, or the "
              f"session lapses at {when(lapses)} (your IT team can end it sooner)",
              file=sys.stderr)
        return 1
    if session is not None:
        device.store.update(lambda now: msgspec.structs.replace(now, session=None))
        how = ("the relay ended the session" if ended
               else "the session had already ended at the relay")
        print(f"logged out: {how} of {who} and this device forgot its tokens; `lightbox login` "
              "signs in again")
        if to_end:
            print(f"also: {_earlier(who, earlier, len(to_end))}")
        return 0
    print(f"logged out: {_earlier(who, earlier, len(to_end))}, and this device forgot its "
          "token; `lightbox login` signs in again")
    return 0
