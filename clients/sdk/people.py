"""Naming colleagues: the one resolver every command that takes a person goes through
(``lightbox send --to user:LOGIN``, ``consent capture --user``, ``keys claim``), and how a
person is written where a patient or a clinician reads it.

People name each other by login (``rita.ray``), as IT provisioned them; protocol messages carry
user ids. A login is matched exactly (``GET /v1/directory?login=``, docs/PROTOCOL.md §11; logins
are lower case, so ``Rita.Ray`` is ``rita.ray``), never as a part of one: a mistyped or partial
login (``bea.bon``, ``ada``) that a search would complete is somebody else's consult sent in
silence (docs/SECURITY.md "Misdirection"). It is refused, naming the login or logins close to it
(``did you mean user:bea.bone?``). Something that cannot be a login (``Rita Ray``) is a name: it
must be the whole of exactly one colleague's name (a title such as "Dr" aside); a part of a name
is refused the same way, and a name two people share lists them by name and login, so the user
can choose.

A user id is accepted too (scripts): its certificate names the person (display only; whoever
encrypts to that person verifies the chain against the organisation key first). The relay says
when the person with that id is suspended (``user_suspended``, as it says to anyone holding
the id: docs/PROTOCOL.md §11), and so does the error, about them, not about the user.

A login is looked up among the colleagues the directory shows, who are the active ones: one
provisioned who has not enrolled a device yet, or a suspended or removed colleague, is not
there, and reads as "no colleague with login ... who can receive messages", which says the
first as a possibility and nothing of the others' standing. Telling
them apart would need the relay to answer for logins it does not list, which would show a
clinician who was suspended or removed by login to anyone who guesses it, more than the
organisation's directory shows (docs/SECURITY.md "The hospital directory (SCIM)").
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable

from clients.sdk.errors import FlowError, RelayRequestError, SDKError
from clients.sdk.http import RelayHTTP
from protocol import api, canonical
from protocol.certs import MAX_CERTIFICATE_LENGTH, UserCertificate
from protocol.errors import DecodeError, ErrorCode

__all__ = ["person_label", "resolve_user", "resolve_users"]

_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_LOGIN = re.compile(r"^[a-z0-9][a-z0-9._-]{1,63}$")  # protocol.api.Login
MAX_CANDIDATES = 8  # listed in an ambiguity error


def person_label(name: str, roles: Iterable[str] = (), specialty: str | None = None) -> str:
    """``Dr Rita Ray (radiology)``: the name, then the specialty (or the roles, readable)."""
    what = specialty or ", ".join(r.replace("_", " ") for r in roles)
    return f"{name} ({what})" if what else name


def _candidate(e: api.DirectoryEntry) -> str:
    return f"{e.display_name} ({e.login})"


async def _by_id(relay: RelayHTTP, user_id: str) -> api.DirectoryEntry:
    try:
        cert = (await relay.user_devices(user_id)).user_certificate
        body = canonical.peek_compact(cert, UserCertificate, max_length=MAX_CERTIFICATE_LENGTH)
    except RelayRequestError as exc:
        if exc.code == ErrorCode.NOT_FOUND.value:
            raise FlowError(f"no colleague with user id {user_id}",
                            code=ErrorCode.NOT_FOUND.value) from None
        if exc.code == ErrorCode.USER_SUSPENDED.value:  # theirs, not this user's
            raise FlowError(f"the colleague with user id {user_id} is suspended by your "
                            "organisation; nothing was sent to them", code=exc.code) from None
        raise
    except DecodeError as exc:
        raise FlowError(f"the relay's certificate for {user_id} is unreadable",
                        code=ErrorCode.CERTIFICATE_INVALID.value) from exc
    return api.DirectoryEntry(user_id=body.user_id, org_id=body.org_id, login="",
                              display_name=body.display_name, roles=list(body.roles),
                              specialty=body.specialty, department=body.department)


async def resolve_user(relay: RelayHTTP, who: str) -> api.DirectoryEntry:
    """One colleague named by their exact login, their user id, or the whole of their name.
    FlowError ``not_found`` (nobody has exactly that login or name: the close logins are
    suggested) or ``ambiguous`` (a name several people have, listed by name and login);
    ``validation_failed`` for an empty or overlong name."""
    who = who.strip()
    if who.startswith("user:"):
        who = who[len("user:"):].strip()
    if not who:
        raise FlowError("name a colleague by their login (e.g. rita.ray)",
                        code=ErrorCode.VALIDATION_FAILED.value)
    if _UUID.match(who):
        return await _by_id(relay, who)
    if _LOGIN.match(who.lower()):
        exact = (await relay.directory(login=who.lower())).users
        if exact:
            return exact[0]
        raise FlowError(f"no colleague with login {who!r} who can receive messages"
                        f"{await _did_you_mean(relay, who.lower())}: check its spelling "
                        "(lightbox lookup NAME searches the directory); if it is right, they "
                        "may not have enrolled a device yet",
                        code=ErrorCode.NOT_FOUND.value)
    if not 2 <= len(who) <= 64:
        raise FlowError(f"{who!r} is not a login: logins are 2 to 64 characters",
                        code=ErrorCode.VALIDATION_FAILED.value)
    found = [e for e in (await relay.directory(who)).users
             if _name_words(e.display_name) == _name_words(who)]
    if len(found) == 1:
        return found[0]
    if not found:
        raise FlowError(f"no colleague with login or name {who!r}"
                        f"{await _did_you_mean(relay, who)}: give their login, or their whole "
                        "name (lightbox lookup NAME searches the directory)",
                        code=ErrorCode.NOT_FOUND.value)
    listed = "; ".join(_candidate(e) for e in found[:MAX_CANDIDATES])
    more = f"; and {len(found) - MAX_CANDIDATES} more" if len(found) > MAX_CANDIDATES else ""
    raise FlowError(f"{who!r} matches {len(found)} people: {listed}{more}. Name one by login",
                    code="ambiguous")


# A title before a name ("Dr Rita Ray"): a name typed without it is still the whole name.
_TITLES = frozenset({"dr", "doctor", "prof", "professor", "mr", "mrs", "ms", "mx", "miss",
                     "sister", "nurse"})
MAX_SUGGESTIONS = 3  # logins a refusal suggests
CLOSE = 0.75  # difflib ratio from which a login is close to what was typed


def _name_words(name: str) -> tuple[str, ...]:
    """A name as compared: its words, case-folded, without a leading title or full stops."""
    words = name.casefold().replace(".", " ").split()
    while len(words) > 1 and words[0] in _TITLES:
        words = words[1:]
    return tuple(words)


async def _did_you_mean(relay: RelayHTTP, typed: str) -> str:
    """`` (did you mean user:bea.bone?)``: the logins of the colleagues the directory finds
    by what was typed (a part of their login or name), else by its first word, that are close
    to it; or those it finds when they are a few. Empty when there is none, or the directory
    cannot be asked."""
    found: dict[str, api.DirectoryEntry] = {}
    first = re.split(r"[\s._-]+", typed)[0]
    for q in dict.fromkeys([typed, first[:max(2, len(first) - 1)]]):
        if len(q) < 2:
            continue
        try:
            found.update((e.login, e) for e in (await relay.directory(q)).users if e.login)
        except SDKError:  # a hint only: the refusal stands without it
            return ""
    logins = difflib.get_close_matches(typed.lower(), sorted(found), n=MAX_SUGGESTIONS,
                                       cutoff=CLOSE)
    if not logins:  # a part of someone's login or name: the few it is part of
        part = typed.casefold()
        logins = sorted(login for login, e in found.items()
                        if part in login or part in e.display_name.casefold())
        if len(logins) > MAX_SUGGESTIONS:
            return ""
    return f" (did you mean {' or '.join(f'user:{login}' for login in logins)}?)" \
        if logins else ""


async def resolve_users(relay: RelayHTTP, names: Iterable[str]) -> list[api.DirectoryEntry]:
    """:func:`resolve_user` for each name, in order, each person once."""
    people: dict[str, api.DirectoryEntry] = {}
    for name in names:
        entry = await resolve_user(relay, name)
        people.setdefault(entry.user_id, entry)
    return list(people.values())
