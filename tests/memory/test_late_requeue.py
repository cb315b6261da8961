"""A message that comes back to a group after the provider closed is reported, not lost.

Reachable when a receiver was handed a message just before the drain ended its
subscription and only runs afterwards (it then puts the message back), so it is
checked here on the broker directly.
"""

from __future__ import annotations

from piko_trio_events import MemoryConfig
from piko_trio_events._metrics import provider_metrics
from piko_trio_events.memory._provider import _Broker, _Group


def test_a_hand_back_after_close_is_reported_with_its_attempts() -> None:
    broker = _Broker(MemoryConfig(), provider_metrics("memory"))
    group = _Group("late.x", "g", None, 8)
    broker.add_group(group)
    assert broker.close() == []
    envelope = ("late-1", b"x", {"k": "v"}, "late.x", 2, None, None, None)
    broker.requeue(group, envelope, None, front=True)
    broker.requeue(group, envelope, 5.0)  # a delayed nack arriving late
    reported = [
        (u.pattern, u.group, u.message.uuid, u.message.metadata, u.attempts)
        for u in broker.undelivered
    ]
    assert reported == [("late.x", "g", "late-1", {"k": "v"}, 2)] * 2
