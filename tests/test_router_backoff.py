"""A handler whose output publish fails transiently is nacked with a growing delay.

Before the backoff the router nacked such a message with no delay, and the
broker handed it straight back: 5,741 immediate redeliveries during one
0.5 s node stop of a JetStream cluster. The NATS side of this is
tests/nats/test_publish_backoff.py.
"""

from __future__ import annotations

import itertools

import pytest
import trio
import trio.testing

from piko_trio_events import Message, PublishError, StreamNotFoundError, open_memory_provider
from piko_trio_events.memory import MemoryProvider
from piko_trio_events.middleware import CircuitOpenError


async def _relay_with_failing_output(
    provider: MemoryProvider,
    monkeypatch: pytest.MonkeyPatch,
    error: Exception,
    succeed_at: int,
) -> list[tuple[int, float]]:
    """Run a handler ``relay`` (in -> out) whose output publish raises ``error``
    until the input's delivery attempt ``succeed_at``; returns (attempt, trio
    time) of each delivery of the one input."""
    publish = provider.publisher.publish
    seen: list[tuple[int, float]] = []
    stored: list[Message] = []

    async def publish_or_fail(topic: str, *messages: Message) -> None:
        if topic != "out":
            await publish(topic, *messages)
            return
        await trio.lowlevel.checkpoint()
        if seen[-1][0] < succeed_at:
            raise error
        stored.extend(messages)

    # Before add_handler, which binds the publisher's publish for the outputs.
    monkeypatch.setattr(provider.publisher, "publish", publish_or_fail)
    done = trio.Event()

    @provider.router.handler("in", publish_topic="out", name="relay")
    async def relay(msg: Message) -> Message:
        assert msg.delivery is not None
        seen.append((msg.delivery.attempt, trio.current_time()))
        if msg.delivery.attempt == succeed_at:
            done.set()
        return Message(b"out")

    await publish("in", Message(b"x"))
    await done.wait()
    await trio.testing.wait_all_tasks_blocked()
    assert len(stored) == 1  # the last attempt got through, and the input was acked
    return seen


def _gaps(seen: list[tuple[int, float]]) -> list[float]:
    return [later - earlier for (_, earlier), (_, later) in itertools.pairwise(seen)]


async def test_a_transient_output_publish_failure_is_nacked_with_a_growing_delay(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    error = PublishError("no responders", unconfirmed=1, retry_after=0.1)
    async with open_memory_provider() as provider:
        seen = await _relay_with_failing_output(provider, monkeypatch, error, succeed_at=10)
    assert [attempt for attempt, _ in seen] == list(range(1, 11))
    # 0.1 s doubled with each attempt, at most 5 s.
    assert _gaps(seen) == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0, 5.0])


async def test_a_publish_error_that_is_not_transient_is_nacked_at_once(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    error = PublishError("JetStream is not enabled", unconfirmed=1)
    assert error.retry_after is None
    async with open_memory_provider() as provider:
        seen = await _relay_with_failing_output(provider, monkeypatch, error, succeed_at=4)
    assert _gaps(seen) == [0.0, 0.0, 0.0]


async def test_a_publish_errors_own_longer_retry_after_is_kept(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    error = PublishError("busy", unconfirmed=1, retry_after=8.0)
    async with open_memory_provider() as provider:
        seen = await _relay_with_failing_output(provider, monkeypatch, error, succeed_at=3)
    assert _gaps(seen) == pytest.approx([8.0, 8.0])


async def test_an_explicit_retry_after_of_another_error_wins_and_does_not_grow(
    autojump_clock: trio.testing.MockClock,
) -> None:
    seen: list[tuple[int, float]] = []
    async with open_memory_provider() as provider:
        done = trio.Event()

        @provider.router.handler("t", name="guarded")
        async def guarded(msg: Message) -> None:
            assert msg.delivery is not None
            seen.append((msg.delivery.attempt, trio.current_time()))
            if msg.delivery.attempt < 4:
                raise CircuitOpenError(0.7, "guarded")
            done.set()

        await provider.publisher.publish("t", Message(b"x"))
        await done.wait()
    assert [attempt for attempt, _ in seen] == [1, 2, 3, 4]
    assert _gaps(seen) == pytest.approx([0.7, 0.7, 0.7])


async def test_an_output_topic_without_a_stream_backs_off_too(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """auto_provision off and no stream for the output topic (yet: an operator
    creates it, or a cluster elects its leader): not handed back at once."""
    error = StreamNotFoundError("no JetStream stream holds topic 'out'")
    async with open_memory_provider() as provider:
        seen = await _relay_with_failing_output(provider, monkeypatch, error, succeed_at=5)
    assert _gaps(seen) == pytest.approx([0.1, 0.2, 0.4, 0.8])
