"""A websocket's deadlines (server/liveness.py), driven by the clocks the test passes in: ping
after a quiet heartbeat, close when the ping goes unanswered, idle, lifetime, licence, and
deliveries left unacknowledged, each with its close code."""

from __future__ import annotations

from protocol.errors import CloseCode, ErrorCode
from server.liveness import PING, Close, Liveness

WALL = 1_800_000_000


def liveness(licence_expires_at: int | None = None) -> Liveness:
    return Liveness(started=0.0, heartbeat=30, heartbeat_timeout=20, idle_timeout=3600,
                    session_lifetime=12 * 3600, ack_timeout=120,
                    licence_expires_at=licence_expires_at)


def test_a_quiet_connection_is_pinged_once_then_closed_without_a_pong() -> None:
    live = liveness()
    assert live.due(29.9, WALL, None) is None
    assert live.due(30, WALL, None) == PING
    assert live.due(31, WALL, None) is None  # one ping outstanding, not another
    assert live.due(50, WALL, None) == Close(CloseCode.HEARTBEAT_TIMEOUT, "no pong")


def test_a_pong_or_any_frame_answers_the_ping() -> None:
    live = liveness()
    assert live.due(30, WALL, None) == PING
    live.pong(35)
    assert live.due(64, WALL, None) is None
    assert live.due(65, WALL, None) == PING
    live.seen(70, activity=True)
    assert live.due(99, WALL, None) is None


def test_pings_alone_do_not_keep_a_connection_from_going_idle() -> None:
    live = liveness()
    for t in range(10, 3600, 10):
        live.seen(t, activity=False)
        assert live.due(t, WALL, None) is None
    assert live.due(3600, WALL, None) == Close(CloseCode.IDLE_TIMEOUT, "idle")


def test_the_session_lifetime_ends_with_token_expired() -> None:
    live = liveness()
    live.seen(12 * 3600 - 1, activity=True)
    assert live.due(12 * 3600, WALL, None) == Close(
        CloseCode.SESSION_EXPIRED, "session lifetime reached; log in again",
        ErrorCode.TOKEN_EXPIRED)


def test_the_licence_ends_on_the_wall_clock_before_anything_else() -> None:
    live = liveness(licence_expires_at=WALL + 60)
    assert live.due(1, WALL + 59, None) is None
    assert live.due(12 * 3600, WALL + 60, 0.0) == Close(
        CloseCode.USER_SUSPENDED, "the user's licence has expired", ErrorCode.LICENCE_EXPIRED)


def test_a_delivery_unacknowledged_for_the_ack_timeout_closes_as_too_slow() -> None:
    live = liveness()
    live.seen(100, activity=True)
    assert live.due(119.9, WALL, 0.0) is None
    assert live.due(120, WALL, 0.0) == Close(CloseCode.TOO_SLOW, "deliveries not acknowledged")
    assert live.due(120, WALL, 10.0) is None
