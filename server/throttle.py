"""Who is slowed down after failed logins and wrong enrolment codes (docs/SECURITY.md "Lockout").

The scheme follows the OWASP Authentication Cheat Sheet ("Account Lockout") and OWASP ASVS 5.0
V6.3: a lock that a third party can trigger from outside is a denial of service, and one
address may be a whole hospital behind NAT. Each login attempt is checked against, and each
failure charged to, three counters (server/store/lockout.py):

- the **pair** (account, client address): a hard lock after ``LIGHTBOX_LOCKOUT_ACCOUNT_FAILURES``
  failures, ``LIGHTBOX_LOCKOUT_BASE_SECONDS`` doubling up to ``LIGHTBOX_LOCKOUT_MAX_SECONDS``. It
  holds back a guesser at one address and nobody else;
- the **account** (from any address): a progressive delay from the same number of failures on,
  ``LIGHTBOX_LOGIN_DELAY_BASE_SECONDS`` doubling up to ``LIGHTBOX_LOGIN_DELAY_MAX_SECONDS``
  (at most 300 s): a guesser who moves between addresses gets one guess per delay, and the
  holder waits at most that long, never a lock;
- the **address** (any account): a throttle after ``LIGHTBOX_LOCKOUT_ADDRESS_FAILURES``
  failures, for password sprays.

A device login is the *holder's* when its nonce signature verifies under an active device of
the named account (the second factor, docs/PROTOCOL.md §11): the holder's attempts have pair and
account counters of their own, and the address throttle does not apply to them. So failures
without the device (a third party, whatever his address) never slow the holder's login, and a
thief of the device (without the password) is held by the holder's counters. Attempts refused
by a counter are not evaluated and not counted, so waiting cannot be made to grow by hammering.
IT administrators log in with a password only: all their attempts are of one class.

Wrong enrolment codes slow their address only: a code is 100 random bits
(protocol/keys.py ``ENROLMENT_CODE_BITS``), its own defence against online guessing, so a right
code is accepted whatever its address did, and a wrong one from a throttled address is answered
``rate_limited`` instead of ``enrolment_code_invalid``.
"""

from __future__ import annotations

import dataclasses
import enum

import asyncpg

from protocol.errors import ErrorCode
from server.errors import LimitError
from server.settings import Settings
from server.store import lockout

__all__ = ["Attempt", "Throttle", "Who", "forget_admin_failures"]


class Who(enum.Enum):
    """Whose login attempt it is, as far as the relay can tell before checking the password."""

    HOLDER = "holder"  # signed by an active device of the named account
    OTHER = "login"    # a device login without that proof
    ADMIN = "admin"    # an IT administrator's password login


@dataclasses.dataclass(frozen=True)
class Attempt:
    """The counter keys one login attempt is checked against and charged to."""

    pair: str
    account: str
    address: str | None  # None: the address throttle does not apply

    @classmethod
    def of(cls, who: Who, login: str, ip: str | None) -> Attempt:
        # A login matches ^[a-z0-9][a-z0-9._-]{1,63}$ (protocol/api.py) and has no space, so
        # "<who>:<login> <ip>" cannot collide with another attempt's key.
        where = ip or "-"
        address = None if who is Who.HOLDER or ip is None else f"addr:{ip}"
        return cls(pair=f"{who.value}:{login} {where}", account=f"{who.value}:{login}",
                   address=address)


async def forget_admin_failures(conn: asyncpg.Connection, login: str) -> int:
    """Lift an IT administrator's lock and delay (its account and its pairs with every
    address; the addresses' own counters stay): ``lightbox-server admin password``."""
    return await lockout.reset_account(conn, Attempt.of(Who.ADMIN, login, None).account)


class Throttle:
    """The policies, built once from the settings; every method takes a connection."""

    def __init__(self, settings: Settings) -> None:
        s = settings
        self.pair = lockout.Policy(s.lockout_account_failures, s.lockout_base_seconds,
                                   s.lockout_max_seconds)
        self.account = lockout.Policy(s.lockout_account_failures, s.login_delay_base_seconds,
                                      s.login_delay_max_seconds, forget=s.lockout_max_seconds)
        self.address = lockout.Policy(s.lockout_address_failures, s.lockout_base_seconds,
                                      s.lockout_max_seconds)

    async def check(self, conn: asyncpg.Connection, attempt: Attempt, *, now: float) -> None:
        """Raise ``account_locked`` (with the longest wait among the counters) if any applies."""
        keys = [attempt.pair, attempt.account] + ([attempt.address] if attempt.address else [])
        wait = await lockout.retry_after(conn, keys, now=now)
        if wait is not None:
            raise LimitError(ErrorCode.ACCOUNT_LOCKED, "too many failed logins; retry later",
                             retry_after=wait)

    async def failure(self, conn: asyncpg.Connection, attempt: Attempt, *,
                      now: float) -> dict[str, int]:
        """Charge a wrong password; return the waits it started, by counter (empty: none)."""
        started = {
            "pair": await lockout.record_failure(conn, attempt.pair, self.pair, now=now),
            "account": await lockout.record_failure(conn, attempt.account, self.account,
                                                    now=now)}
        if attempt.address:
            started["address"] = await lockout.record_failure(conn, attempt.address,
                                                              self.address, now=now)
        return {name: seconds for name, seconds in started.items() if seconds}

    async def success(self, conn: asyncpg.Connection, attempt: Attempt) -> None:
        """A right login clears its pair and its account; never the address, which may be a
        sprayer's NAT that a colleague shares."""
        await lockout.reset(conn, attempt.pair, attempt.account)

    # --- enrolment codes --------------------------------------------------------------------

    @staticmethod
    def enrolment_key(ip: str) -> str:
        return f"enrol:{ip}"

    async def enrolment_wait(self, conn: asyncpg.Connection, ip: str | None, *,
                             now: float) -> float | None:
        """Seconds the address must wait before its next wrong code is evaluated."""
        if ip is None:
            return None
        return await lockout.retry_after(conn, [self.enrolment_key(ip)], now=now)

    async def enrolment_failure(self, conn: asyncpg.Connection, ip: str | None, *,
                                now: float) -> None:
        if ip is not None:
            await lockout.record_failure(conn, self.enrolment_key(ip), self.address, now=now)
