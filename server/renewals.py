"""What the hospital's directory and IdP ask of a user's *next* certificate, and what they
may change at once (docs/SECURITY.md "Single sign-on", "Hospital directory").

Only a certificate signed by the organisation key on IT's workstation says who a user is and
which roles they hold; the relay cannot make one. So:

* a new display name (a SCIM rename) or a role the IdP now grants is *asked for*: a row in
  the renewal queue (server/store/renewals.py) that ``lightbox-admin sign-pending`` signs;
  until then the certificate held stays valid and says what it said;
* a role the IdP no longer grants is *withdrawn at once*: the relay stops acting on it
  (``users.roles``, what authorisation and the key directory read) without a signature,
  since taking away needs none; the renewal asked for drops it from the certificate too.

The same holds for the directory's groups of a signed user (``group_roles``): joining a mapped
group asks, leaving it withdraws. Each source speaks only for the roles its mapping names
(``claim_roles`` for the IdP, ``group_roles`` for the directory, LIGHTBOX_IDENTITY_FILE,
server/orgidentity.py): a role IT signed by other means is untouched.

A source's statement is applied to what is asked now: the pending renewal's roles while one
asks for roles, else the certificate's. Never to the certificate alone: it names a role the
other source withdrew until IT signs, and restating from it would bring that role back.
Withdrawals are at once and stick: nothing one source states makes the relay act again on a
role outside its own mapping, and a licence renewal or re-issued certificate stored meanwhile
(:func:`keep_withdrawn`) or a rename (:func:`ask_display_name`) keeps the roles asked, with
those IT added or took out by hand in that certificate. A role
is mapped by one source only; server/orgidentity.py refuses a file that maps one in both
(docs/SECURITY.md "Single sign-on").
"""

from __future__ import annotations

from collections.abc import Iterable

import asyncpg

from protocol.canonical import peek_compact
from protocol.certs import UserCertificate
from server import audit
from server.store import renewals, users

__all__ = ["ask_display_name", "keep_withdrawn", "restate_roles"]


async def ask_display_name(conn: asyncpg.Connection, user: users.UserRecord,
                           display_name: str, *, now: float) -> bool:
    """Queue the user's certificate for renewal under ``display_name`` (withdraw the request
    when the certificate already says it); whether a renewal is now asked for the name."""
    cert = peek_compact(user.user_certificate, UserCertificate)
    held = await renewals.get(conn, user.user_id, for_update=True)
    name = None if display_name == cert.display_name else display_name
    await renewals.request(conn, user.user_id, user.org_id, display_name=name,
                           roles=None if held is None else held.roles, now=now)
    return name is not None


async def keep_withdrawn(conn: asyncpg.Connection, cert: UserCertificate,
                         previous: UserCertificate, *, now: float) -> None:
    """After IT stored ``cert`` in place of ``previous`` (a licence renewal, a re-issued
    code): a role withdrawn while a renewal asks for less stays withdrawn, though the new
    certificate was made from one that still names it; and what IT changed by hand between the
    two is IT's word (docs/SECURITY.md "Two sources, one user"): a role it added is acted on
    and asked of the renewal too, one it took out is no longer asked, so ``sign-pending``
    neither drops the one nor brings back the other."""
    held = await renewals.get(conn, cert.user_id, for_update=True)
    if held is None or held.roles is None:
        return
    added, removed = set(cert.roles) - set(previous.roles), set(previous.roles) - set(cert.roles)
    desired = sorted((set(held.roles) - removed) | added)
    await users.set_roles(conn, cert.user_id, [r for r in cert.roles if r in desired],
                          now=now)
    if desired != sorted(held.roles):
        await renewals.request(conn, cert.user_id, cert.org_id,
                               display_name=held.display_name,
                               roles=None if desired == sorted(cert.roles) else desired,
                               now=now)


async def restate_roles(conn: asyncpg.Connection, user: users.UserRecord,
                        granted: Iterable[str], managed: Iterable[str], *, source: str,
                        now: float) -> tuple[list[str], list[str]]:
    """``source`` (``idp``, ``directory``) grants ``granted`` out of the ``managed`` roles:
    (roles withdrawn at once, roles asked of IT's signature).

    The statement is applied to what is asked now (:func:`_asked`), not to the certificate,
    which still names a role the other source withdrew until IT signs; and no role outside
    ``managed`` that the relay no longer acts on is acted on again."""
    cert = peek_compact(user.user_certificate, UserCertificate)
    managed_set, granted_set = set(managed), set(granted) & set(managed)
    held = await renewals.get(conn, user.user_id, for_update=True)
    desired = sorted((set(_asked(cert, held)) - managed_set) | granted_set)
    roles = None if desired == sorted(cert.roles) else desired
    await renewals.request(conn, user.user_id, user.org_id,
                           display_name=None if held is None else held.display_name,
                           roles=roles, now=now)
    acting = [r for r in cert.roles
              if r in desired and (r in managed_set or r in user.roles)]
    withdrawn = sorted(set(user.roles) - set(acting))
    asked = sorted(granted_set - set(cert.roles))
    if acting != user.roles:
        await users.set_roles(conn, user.user_id, acting, now=now)
    if withdrawn or (roles is not None and (held is None or held.roles != roles)):
        await audit.append(conn, f"{source}.roles_restated", subject_kind="user",
                           subject_id=user.user_id, actor_kind=source,
                           details={"org_id": user.org_id, "withdrawn": withdrawn,
                                    "asked": asked})
    return withdrawn, asked


def _asked(cert: UserCertificate, held: renewals.Renewal | None) -> list[str]:
    """The roles asked for the user now: the renewal's while one asks for roles (a
    withdrawal not yet signed is in it, not in the certificate), else the certificate's."""
    return list(cert.roles) if held is None or held.roles is None else held.roles
