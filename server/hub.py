"""Registry of this relay process's websocket connections, indexed by device and user.

* One connection per device: a newer connection of the same device replaces the older one
  (closed with 4003, ``session_replaced``), in this process or in another (a ``session`` event
  over Postgres NOTIFY tells the other processes). "Newer" is decided by the time each
  connection registered, read from Postgres's clock (one clock for every process), and not by
  the order in which the events arrive: a late event of an older connection must never close
  the device's newer one (docs/ARCHITECTURE.md §3, "One connection per device").
* ``deliver`` events wake the connections of the devices that have new deliveries. Those of
  this process's own send pipeline carry its ``origin`` and are skipped, and name no device
  connected here: the pipeline hands the stored deliveries over after COMMIT
  (:meth:`Hub.deliver`), and a pump writes them without reading them back when nothing can be
  ahead of them (docs/ARCHITECTURE.md §3 "Local delivery"). A device served so that leaves
  this process is announced to the others by an event after all (:meth:`Hub.silenced`).
* ``revoked`` events close the sockets of revoked devices (4004) and suspended users (4005),
  and those opened with an access token of a refresh-token family that ended (logout, refresh
  token reuse, single sign-on lifetime: 4001 ``token_invalid``, what the handshake answers
  that token; docs/SECURITY.md "Identity and sessions"). A connection is indexed by its family
  (:meth:`Hub.follow`) before it reads whether the family is still active, so an end that
  commits meanwhile is either read or heard.
* Graceful shutdown closes every connection with 1001 (going away, RFC 6455 §7.4.1) before the
  server stops, so clients reconnect to another process at once.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable, Collection, Iterable, Sequence
from typing import Any, Protocol

from protocol.errors import CloseCode
from protocol.frames import Frame, KeysLow
from server.events import SESSION_ENDED
from server.store.messages import NewDelivery

__all__ = ["Closable", "Hub", "Member"]

log = logging.getLogger("lightbox.hub")


class Closable(Protocol):
    async def close(self, code: int = 1000, reason: str = "") -> None: ...


class Member(Closable, Protocol):
    """A registered, authenticated connection."""

    device_id: str
    user_id: str
    session_id: str
    registered_at: int  # Postgres's clock when it registered, in microseconds (see Hub)

    def wake(self, notices: bool = True) -> None:
        """New deliveries may be queued; with ``notices``, device notices may be too."""
        ...

    def push(self, frame: Frame) -> None:
        """Send a relay frame soon (best effort; durable frames go through notices)."""
        ...

    def offer(self, new: list[NewDelivery]) -> None:
        """Deliveries this process has just stored for the device: written without a read
        when nothing can be ahead of them, else a wake-up (its pump reads its queue)."""
        ...

    def may_take(self) -> bool:
        """Whether deliveries handed over now could be written without a read (the store
        then lists what else the device has queued, server/sends.py)."""
        ...

    def unacknowledged(self) -> int:
        """Deliveries written on this connection and not yet acknowledged."""
        ...


def _order(m: Member) -> tuple[int, str]:
    """When ``m`` registered: by Postgres's clock, then (a tie within one microsecond) by
    session id, so that every process orders a device's connections alike."""
    return m.registered_at, m.session_id


_REASON_CLOSE = {
    "device_revoked": CloseCode.DEVICE_REVOKED,
    "user_suspended": CloseCode.USER_SUSPENDED,
    "licence_expired": CloseCode.USER_SUSPENDED,
    SESSION_ENDED: CloseCode.AUTH_FAILED,
}


class Hub:
    def __init__(self) -> None:
        self._conns: set[Closable] = set()
        self._by_device: dict[str, Member] = {}
        self._by_user: dict[str, set[Member]] = {}
        self._by_family: dict[str, set[Member]] = {}  # refresh-token family -> connections
        self._family_of: dict[Member, str] = {}
        self.accepting = True
        self.origin = uuid.uuid4().hex  # marks this process's own ``deliver`` events
        # Devices connected here that were sent deliveries no wake-up event named (the send
        # pipeline tells this process's connections itself): when one leaves this process,
        # ``announce`` sends the event after all (:meth:`silenced`).
        self._silent: set[str] = set()
        self.announce: Callable[[Collection[str]], None] | None = None

    # -- raw connections (before authentication too) ---------------------------------------

    def add(self, conn: Closable) -> None:
        self._conns.add(conn)

    def discard(self, conn: Closable) -> None:
        self._conns.discard(conn)

    def __len__(self) -> int:
        return len(self._conns)

    # -- authenticated members ---------------------------------------------------------------

    def register(self, member: Member) -> Member | None:
        """Index an authenticated connection; returns the connection that must now close, if
        any: the device's older one, or ``member`` itself when the device's connection here
        registered later than it (two registrations of one device racing in this process)."""
        old = self._by_device.get(member.device_id)
        if old is not None and old is not member and _order(old) > _order(member):
            return member
        self._by_device[member.device_id] = member
        self._by_user.setdefault(member.user_id, set()).add(member)
        if old is not None and old is not member:
            self._unindex(old)
        return old

    def unregister(self, member: Member) -> None:
        if self._by_device.get(member.device_id) is member:
            del self._by_device[member.device_id]
            if member.device_id in self._silent:
                self._silent.discard(member.device_id)
                self._announce([member.device_id])
        self._unindex(member)
        self.unfollow(member)

    def follow(self, member: Member, family_id: str) -> None:
        """Index an authenticated connection by the refresh-token family of its access token
        (``sid``), so that the family's end closes it (:meth:`on_revoked`); before
        :meth:`register`, which :meth:`unregister` undoes, or :meth:`unfollow`."""
        self._family_of[member] = family_id
        self._by_family.setdefault(family_id, set()).add(member)

    def unfollow(self, member: Member) -> None:
        family = self._family_of.pop(member, None)
        if family is None:
            return
        members = self._by_family.get(family, set())
        members.discard(member)
        if not members:
            self._by_family.pop(family, None)

    def _unindex(self, member: Member) -> None:
        users = self._by_user.get(member.user_id)
        if users is not None:
            users.discard(member)
            if not users:
                del self._by_user[member.user_id]

    def member(self, device_id: str) -> Member | None:
        return self._by_device.get(device_id)

    @property
    def devices(self) -> int:
        return len(self._by_device)

    def unacknowledged(self) -> int:
        """Deliveries written to this process's connections and not yet acknowledged."""
        return sum(m.unacknowledged() for m in self._by_device.values())

    def wake(self, device_ids: Iterable[str], *, notices: bool = True) -> None:
        for d in device_ids:
            m = self._by_device.get(d)
            if m is not None:
                m.wake(notices)

    def here(self, device_ids: Iterable[str]) -> list[str]:
        """Those of ``device_ids`` connected to this process."""
        return [d for d in device_ids if d in self._by_device]

    def silenced(self, device_ids: Iterable[str]) -> None:
        """The send pipeline committed deliveries for these devices, which were connected
        here when it stored them, and sent no wake-up event for them: it has handed them over
        or woken their pumps here (server/sends.py). The takeover rule (docs/ARCHITECTURE.md
        §3 "Local delivery"): a device may meanwhile have connected to another process, whose
        pump read its queue before the COMMIT. So a device no longer connected here is
        announced now (an event after the COMMIT wakes it wherever it is), and one still here
        is announced when its connection leaves (:meth:`unregister`: replaced by a
        connection in another process, closed, revoked)."""
        gone = []
        for d in device_ids:
            if d in self._by_device:
                self._silent.add(d)
            else:
                gone.append(d)
        if gone:
            self._announce(gone)

    def _announce(self, device_ids: Collection[str]) -> None:
        if self.announce is not None:
            self.announce(device_ids)

    def takers(self, device_ids: Iterable[str]) -> list[str]:
        """Those of ``device_ids`` connected to this process whose pumps could take a
        delivery handed over now (:meth:`Member.may_take`)."""
        return [d for d in device_ids
                if (m := self._by_device.get(d)) is not None and m.may_take()]

    def deliver(self, new: Sequence[NewDelivery]) -> None:
        """Deliveries this process's send pipeline has just committed (server/sends.py): each
        device connected here is offered its own."""
        by_device: dict[str, list[NewDelivery]] = {}
        for n in new:
            by_device.setdefault(n.device_id, []).append(n)
        for d, items in by_device.items():
            m = self._by_device.get(d)
            if m is not None:
                m.offer(items)

    # -- events from any process --------------------------------------------------------------

    async def on_deliver(self, event: dict[str, Any]) -> None:
        """A ``deliver`` event: its devices have new deliveries, and notices too unless the
        event says ``"notices": false`` (a message's, server/sends.py). Every other publisher
        leaves the field out, so a new kind of notice cannot be missed by forgetting it. An
        event of this process's own send pipeline is skipped: it has already handed the
        deliveries over (:meth:`deliver`) or woken their devices."""
        if event.get("origin") == self.origin:
            return
        self.wake(event.get("device_ids", ()), notices=event.get("notices", True) is not False)

    async def on_keys_low(self, event: dict[str, Any]) -> None:
        target = int(event.get("target", 0))
        for item in event.get("devices", ()):
            m = self._by_device.get(str(item.get("device_id")))
            if m is not None:
                m.push(KeysLow(remaining=int(item.get("remaining", 0)), target=target))

    async def on_session(self, event: dict[str, Any]) -> None:
        """Another connection of this device registered in another process: the device's
        connection here closes if it is the older one. This process's own events are skipped
        (:meth:`register` has already replaced the connection), and an event that arrives after
        a newer connection registered here leaves that one open. An event without
        ``registered_at`` (a relay of an earlier version, during a rolling upgrade) replaces
        as before: whatever is here."""
        if event.get("origin") == self.origin:
            return
        m = self._by_device.get(str(event.get("device_id")))
        if m is None or m.session_id == event.get("session_id"):
            return
        at = event.get("registered_at")
        if isinstance(at, int) and not isinstance(at, bool) \
                and (at, str(event.get("session_id"))) <= _order(m):
            return
        self.unregister(m)
        await m.close(CloseCode.SESSION_REPLACED, "session replaced")

    async def on_revoked(self, event: dict[str, Any]) -> None:
        code = _REASON_CLOSE.get(str(event.get("reason")), CloseCode.DEVICE_REVOKED)
        targets: set[Member] = set()
        for d in event.get("device_ids", ()):
            m = self._by_device.get(d)
            if m is not None:
                targets.add(m)
        for u in event.get("user_ids", ()):
            targets.update(self._by_user.get(u, ()))
        for f in event.get("family_ids", ()):
            targets.update(self._by_family.get(f, ()))
        for m in targets:
            self.unregister(m)
        await asyncio.gather(*(m.close(code, str(event.get("reason"))) for m in targets),
                             return_exceptions=True)

    # -- shutdown ----------------------------------------------------------------------------

    async def close_all(self, code: int = 1001, reason: str = "relay shutting down") -> None:
        self.accepting = False
        conns = list(self._conns)
        if conns:
            log.info("closing websockets", extra={"connections": len(conns), "close_code": code})
        results = await asyncio.gather(*(c.close(code, reason) for c in conns),
                                       return_exceptions=True)
        for r in results:
            if isinstance(r, Exception):
                log.debug("websocket close failed", extra={"error_type": type(r).__name__})
