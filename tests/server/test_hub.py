"""The hub (server/hub.py). Wake-ups: a message's ``deliver`` event wakes its devices' pumps
for deliveries only; every other ``deliver`` event (receipts, withdrawals, filings, on-call
notices) leaves out the field and so also wakes the read of device notices. The events of this
process's own send pipeline are skipped: it hands its deliveries over instead. Replacement: of
a device's connections the one registered last stays, whatever order the processes' ``session``
events arrive in."""

from __future__ import annotations

import dataclasses
import datetime as dt

from protocol.errors import CloseCode
from protocol.frames import Frame
from server.hub import Hub
from server.store.messages import Delivery, NewDelivery


@dataclasses.dataclass(eq=False)
class RecordingMember:
    """A registered connection that records its wake-ups (the hub's Member protocol)."""

    device_id: str
    user_id: str = "user"
    session_id: str = "session"
    registered_at: int = 0
    wakes: list[bool] = dataclasses.field(default_factory=list)
    closes: list[tuple[int, str]] = dataclasses.field(default_factory=list)
    offered: list[list[NewDelivery]] = dataclasses.field(default_factory=list)
    taking: bool = True

    def wake(self, notices: bool = True) -> None:
        self.wakes.append(notices)

    def offer(self, new: list[NewDelivery]) -> None:
        self.offered.append(new)

    def may_take(self) -> bool:
        return self.taking

    def unacknowledged(self) -> int:
        return len(self.offered)

    def push(self, frame: Frame) -> None:
        raise AssertionError("no frame is pushed by a wake-up")

    async def close(self, code: int = 1000, reason: str = "") -> None:
        self.closes.append((code, reason))


async def test_a_messages_wake_up_skips_notices_and_any_other_reads_them() -> None:
    hub = Hub()
    a, b = RecordingMember("dev-a"), RecordingMember("dev-b")
    hub.register(a)
    hub.register(b)
    await hub.on_deliver({"kind": "deliver", "device_ids": ["dev-a"], "notices": False})
    await hub.on_deliver({"kind": "deliver", "device_ids": ["dev-a", "dev-b", "dev-gone"]})
    await hub.on_deliver({"kind": "deliver", "device_ids": ["dev-b"], "notices": "no"})
    assert a.wakes == [False, True]
    assert b.wakes == [True, True]  # only an explicit false skips the notices


async def test_this_processs_own_wake_ups_are_skipped_and_another_processs_are_not() -> None:
    hub, other = Hub(), Hub()
    assert hub.origin != other.origin
    a = RecordingMember("dev-a")
    hub.register(a)
    await hub.on_deliver({"kind": "deliver", "device_ids": ["dev-a"], "notices": False,
                          "origin": hub.origin})
    assert a.wakes == []
    await hub.on_deliver({"kind": "deliver", "device_ids": ["dev-a"], "notices": False,
                          "origin": other.origin})
    assert a.wakes == [False]


def _new(device_id: str, n: int) -> NewDelivery:
    return NewDelivery(device_id, "thread", Delivery(n, f"delivery-{n}", n, "routine",
                                                     dt.datetime.now(dt.UTC), b"sealed"), ())


def test_handed_over_deliveries_go_to_their_devices_connected_here_one_offer_each() -> None:
    hub = Hub()
    a, b = RecordingMember("dev-a"), RecordingMember("dev-b")
    hub.register(a)
    hub.register(b)
    hub.deliver([_new("dev-a", 1), _new("dev-gone", 2), _new("dev-a", 3), _new("dev-b", 4)])
    assert [[n.delivery.delivery_id for n in o] for o in a.offered] == [
        ["delivery-1", "delivery-3"]]
    assert [[n.delivery.delivery_id for n in o] for o in b.offered] == [["delivery-4"]]
    assert a.wakes == b.wakes == []


def test_the_takers_are_the_devices_connected_here_whose_pumps_could_take_a_delivery() -> None:
    hub = Hub()
    hub.register(RecordingMember("dev-a"))
    hub.register(RecordingMember("dev-b"))
    hub.register(RecordingMember("dev-busy", taking=False))
    assert sorted(hub.takers(["dev-b", "dev-gone", "dev-busy", "dev-a"])) == ["dev-a", "dev-b"]
    assert hub.takers([]) == []


def _announcing(hub: Hub) -> list[list[str]]:
    """What the hub announces (the wake-up events sent after all, server/events.py Announcer)."""
    told: list[list[str]] = []
    hub.announce = lambda ids: told.append(sorted(ids))
    return told


def test_a_device_that_left_before_its_silent_commit_is_announced_at_once() -> None:
    """The takeover rule (docs/ARCHITECTURE.md §3 "Local delivery"): of the devices a batch
    named in no wake-up event, one no longer connected here is announced after the COMMIT;
    one still here is not, until its connection leaves."""
    hub = Hub()
    told = _announcing(hub)
    hub.register(RecordingMember("dev-here"))
    assert hub.here(["dev-here", "dev-elsewhere"]) == ["dev-here"]
    hub.silenced(["dev-here", "dev-gone"])
    assert told == [["dev-gone"]]


async def test_a_silently_served_device_is_announced_when_its_connection_leaves_this_process(
        ) -> None:
    hub = Hub()
    told = _announcing(hub)
    served, never = RecordingMember("dev-a", registered_at=1), RecordingMember("dev-b")
    hub.register(served)
    hub.register(never)
    hub.silenced(["dev-a"])
    assert told == []
    newer = RecordingMember("dev-a", session_id="newer", registered_at=5)
    await hub.on_session(_session(newer, origin="another process"))  # replaced elsewhere
    assert served.closes == [(CloseCode.SESSION_REPLACED, "session replaced")]
    assert told == [["dev-a"]]
    hub.unregister(never)  # never served without an event: nothing to announce
    assert told == [["dev-a"]]


def test_a_device_replaced_in_this_process_is_announced_only_when_it_leaves_it() -> None:
    hub = Hub()
    told = _announcing(hub)
    old, new = RecordingMember("dev-a", registered_at=1), RecordingMember(
        "dev-a", session_id="new", registered_at=2)
    hub.register(old)
    hub.silenced(["dev-a"])
    assert hub.register(new) is old
    hub.unregister(old)  # the older connection here ends: the device is still here
    assert told == []
    hub.unregister(new)
    assert told == [["dev-a"]]
    hub.register(RecordingMember("dev-a", session_id="third", registered_at=3))
    hub.unregister(hub.member("dev-a"))  # type: ignore[arg-type]
    assert told == [["dev-a"]]  # told once: the next connection was never served silently


# --- one connection per device ----------------------------------------------------------------


def _session(member: RecordingMember, origin: str) -> dict[str, object]:
    """The ``session`` event a process publishes when ``member`` registers there."""
    return {"kind": "session", "device_id": member.device_id, "session_id": member.session_id,
            "registered_at": member.registered_at, "origin": origin}


async def test_a_late_event_of_an_older_connection_leaves_the_newer_one_open() -> None:
    """The race CI met: the device reconnected at once, and the event of the connection it
    replaced arrived after the new one had registered."""
    hub, elsewhere = Hub(), Hub()
    older = RecordingMember("dev-a", session_id="s-old", registered_at=1_000)
    newer = RecordingMember("dev-a", session_id="s-new", registered_at=1_500)
    hub.register(newer)
    await hub.on_session(_session(older, elsewhere.origin))
    assert newer.closes == []
    assert hub.member("dev-a") is newer


async def test_an_event_of_a_newer_connection_elsewhere_closes_the_one_here_with_4003() -> None:
    hub, elsewhere = Hub(), Hub()
    here = RecordingMember("dev-a", user_id="amy", session_id="s-here", registered_at=1_000)
    hub.register(here)
    there = RecordingMember("dev-a", session_id="s-there", registered_at=1_001)
    await hub.on_session(_session(there, elsewhere.origin))
    assert here.closes == [(CloseCode.SESSION_REPLACED, "session replaced")]
    assert hub.member("dev-a") is None
    await hub.on_revoked({"kind": "revoked", "user_ids": ["amy"], "reason": "user_suspended"})
    assert len(here.closes) == 1  # no longer indexed under its user either


async def test_registrations_in_the_same_microsecond_are_ordered_by_session_id_alike() -> None:
    """Both processes must keep the same one, or the device would lose both connections."""
    p1, p2 = Hub(), Hub()
    a = RecordingMember("dev-a", session_id="s-a", registered_at=7)
    b = RecordingMember("dev-a", session_id="s-b", registered_at=7)
    p1.register(a)
    p2.register(b)
    await p1.on_session(_session(b, p2.origin))
    await p2.on_session(_session(a, p1.origin))
    assert a.closes == [(CloseCode.SESSION_REPLACED, "session replaced")]
    assert b.closes == []


async def test_this_processs_own_session_events_are_skipped() -> None:
    hub = Hub()
    newer = RecordingMember("dev-a", session_id="s-new", registered_at=2)
    hub.register(newer)
    await hub.on_session({"kind": "session", "device_id": "dev-a", "session_id": "s-x",
                          "registered_at": 3, "origin": hub.origin})
    assert newer.closes == []


async def test_an_event_of_an_earlier_relay_version_without_a_time_replaces_as_before() -> None:
    hub = Hub()
    here = RecordingMember("dev-a", session_id="s-here", registered_at=5)
    hub.register(here)
    await hub.on_session({"kind": "session", "device_id": "dev-a", "session_id": "s-here"})
    assert here.closes == []  # its own session
    for at in ("5", True, None):  # not a time: the earlier behaviour
        here.closes.clear()
        hub.register(here)
        await hub.on_session({"kind": "session", "device_id": "dev-a", "session_id": "s-y",
                              "registered_at": at})
        assert here.closes == [(CloseCode.SESSION_REPLACED, "session replaced")]


def test_a_registration_that_lost_the_race_in_this_process_is_the_one_to_close() -> None:
    hub = Hub()
    newer = RecordingMember("dev-a", session_id="s-new", registered_at=20)
    older = RecordingMember("dev-a", session_id="s-old", registered_at=10)
    assert hub.register(newer) is None
    assert hub.register(older) is older
    assert hub.member("dev-a") is newer
    later = RecordingMember("dev-a", session_id="s-later", registered_at=30)
    assert hub.register(later) is newer
    assert hub.member("dev-a") is later


def test_the_unacknowledged_deliveries_are_summed_over_the_connections_here() -> None:
    hub = Hub()
    a, b = RecordingMember("dev-a"), RecordingMember("dev-b")
    hub.register(a)
    hub.register(b)
    a.offer([_new("dev-a", 1)])
    a.offer([_new("dev-a", 2)])
    b.offer([_new("dev-b", 3)])
    assert hub.unacknowledged() == 3
    hub.unregister(a)
    assert hub.unacknowledged() == 1
