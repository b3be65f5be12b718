"""The hub's wake-ups (server/hub.py): a message's ``deliver`` event wakes its devices' pumps
for deliveries only; every other ``deliver`` event (receipts, withdrawals, filings, on-call
notices) leaves out the field and so also wakes the read of device notices. The events of this
process's own send pipeline are skipped: it hands its deliveries over instead."""

from __future__ import annotations

import dataclasses
import datetime as dt

from protocol.frames import Frame
from server.hub import Hub
from server.store.messages import Delivery, NewDelivery


@dataclasses.dataclass(eq=False)
class RecordingMember:
    """A registered connection that records its wake-ups (the hub's Member protocol)."""

    device_id: str
    user_id: str = "user"
    session_id: str = "session"
    wakes: list[bool] = dataclasses.field(default_factory=list)
    offered: list[list[NewDelivery]] = dataclasses.field(default_factory=list)
    taking: bool = True

    def wake(self, notices: bool = True) -> None:
        self.wakes.append(notices)

    def offer(self, new: list[NewDelivery]) -> None:
        self.offered.append(new)

    def may_take(self) -> bool:
        return self.taking

    def push(self, frame: Frame) -> None:
        raise AssertionError("no frame is pushed by a wake-up")

    async def close(self, code: int = 1000, reason: str = "") -> None:
        raise AssertionError("no socket is closed by a wake-up")


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
