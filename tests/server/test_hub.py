"""The hub's wake-ups (server/hub.py): a message's ``deliver`` event wakes its devices' pumps
for deliveries only; every other ``deliver`` event (receipts, withdrawals, filings, on-call
notices) leaves out the field and so also wakes the read of device notices."""

from __future__ import annotations

import dataclasses

from protocol.frames import Frame
from server.hub import Hub


@dataclasses.dataclass(eq=False)
class _Socket:
    """A registered connection that records its wake-ups (the hub's Member protocol)."""

    device_id: str
    user_id: str = "user"
    session_id: str = "session"
    wakes: list[bool] = dataclasses.field(default_factory=list)

    def wake(self, notices: bool = True) -> None:
        self.wakes.append(notices)

    def push(self, frame: Frame) -> None:
        raise AssertionError("no frame is pushed by a wake-up")

    async def close(self, code: int = 1000, reason: str = "") -> None:
        raise AssertionError("no socket is closed by a wake-up")


async def test_a_messages_wake_up_skips_notices_and_any_other_reads_them() -> None:
    hub = Hub()
    a, b = _Socket("dev-a"), _Socket("dev-b")
    hub.register(a)
    hub.register(b)
    await hub.on_deliver({"kind": "deliver", "device_ids": ["dev-a"], "notices": False})
    await hub.on_deliver({"kind": "deliver", "device_ids": ["dev-a", "dev-b", "dev-gone"]})
    await hub.on_deliver({"kind": "deliver", "device_ids": ["dev-b"], "notices": "no"})
    assert a.wakes == [False, True]
    assert b.wakes == [True, True]  # only an explicit false skips the notices
