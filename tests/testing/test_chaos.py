"""The chaos provider itself: each fault happens, and no message is lost."""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import find, given, settings
from hypothesis import strategies as st

from piko_trio_events import MemoryConfig, Message, Provider, Subscriber, open_memory_provider
from piko_trio_events.memory import MemoryProvider
from piko_trio_events.testing._chaos import (
    ChaosCrash,
    ChaosProvider,
    ChaosSchedule,
    Fault,
    chaos_schedules,
    open_chaos_provider,
)
from piko_trio_events.testing._conformance import Features, check_provider

TOPIC = "payments.made"


def run(main: Callable[[], Awaitable[None]]) -> None:
    """One fresh trio run and one fresh MockClock (per hypothesis example)."""
    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


class Recorder:
    """A handler that records each delivery it gets, and how it ended."""

    def __init__(self, sleeps: int = 0) -> None:
        self.seen: list[tuple[str, int, bool]] = []  # uuid, attempt, redelivered
        self.completed: Counter[str] = Counter()
        self.sleeps = sleeps

    async def __call__(self, msg: Message) -> None:
        assert msg.delivery is not None
        self.seen.append((msg.uuid, msg.delivery.attempt, msg.delivery.redelivered))
        for _ in range(self.sleeps):
            await trio.sleep(0.001)
        self.completed[msg.uuid] += 1

    def count(self) -> Counter[str]:
        return Counter(uuid for uuid, _, _ in self.seen)


async def handle_all(
    schedule: ChaosSchedule, uuids: list[str], recorder: Recorder
) -> ChaosProvider:
    async with open_chaos_provider(schedule) as provider:
        provider.router.add_handler("recorder", TOPIC, recorder)
        for uuid in uuids:
            await provider.publisher.publish(TOPIC, Message(uuid.encode(), uuid=uuid))
        await provider.wait_idle()
    return provider


def test_duplicates_deliver_every_message_twice() -> None:
    recorder = Recorder()
    uuids = ["a", "b", "c"]

    async def main() -> None:
        await handle_all(ChaosSchedule([Fault.duplicate()] * 3), uuids, recorder)

    run(main)
    assert recorder.count() == dict.fromkeys(uuids, 2)
    # The copy comes right after its original and says it is a redelivery.
    assert recorder.seen == [
        (u, attempt, redelivered) for u in uuids for attempt, redelivered in ((1, False), (2, True))
    ]


def test_a_late_duplicate_comes_after_later_messages() -> None:
    recorder = Recorder()

    async def main() -> None:
        await handle_all(ChaosSchedule([Fault.duplicate(later=2)]), ["a", "b", "c"], recorder)

    run(main)
    assert [uuid for uuid, _, _ in recorder.seen] == ["a", "b", "c", "a"]


def test_a_lost_ack_returns_true_and_the_message_comes_back() -> None:
    acks: list[bool] = []
    seen: list[int] = []

    async def handler(msg: Message) -> None:
        assert msg.delivery is not None
        seen.append(msg.delivery.attempt)
        acks.append(await msg.ack())

    async def main() -> None:
        async with open_chaos_provider(ChaosSchedule([Fault.ack_lost()])) as provider:
            provider.router.add_handler("h", TOPIC, handler)
            await provider.publisher.publish(TOPIC, Message(b"x", uuid="m"))
            await provider.wait_idle()
            assert any("ack LOST" in line for line in provider.trace)

    run(main)
    assert acks == [True, True]
    assert seen == [1, 2]


def test_a_crash_after_the_handler_returned_redelivers() -> None:
    recorder = Recorder(sleeps=2)

    async def main() -> None:
        provider = await handle_all(ChaosSchedule([Fault.crash()]), ["m"], recorder)
        assert any("CRASH before its ack" in line for line in provider.trace)

    run(main)
    # The side effect happened twice: once before the crash, once on redelivery.
    assert recorder.completed == {"m": 2}
    assert [attempt for _, attempt, _ in recorder.seen] == [1, 2]


def test_a_crash_at_a_schedule_point_interrupts_the_handler() -> None:
    recorder = Recorder(sleeps=3)

    async def main() -> None:
        provider = await handle_all(ChaosSchedule([Fault.crash(at=2)]), ["m"], recorder)
        assert any("CRASH at the handler's schedule point 2" in line for line in provider.trace)

    run(main)
    # The first run never completed; the redelivery did.
    assert recorder.completed == {"m": 1}
    assert [attempt for _, attempt, _ in recorder.seen] == [1, 2]


def test_a_crash_point_past_the_handlers_end_crashes_before_the_ack() -> None:
    recorder = Recorder(sleeps=1)

    async def main() -> None:
        await handle_all(ChaosSchedule([Fault.crash(at=5)]), ["m"], recorder)

    run(main)
    assert recorder.completed == {"m": 2}


def test_a_crashed_handlers_output_is_not_published() -> None:
    outputs: list[str] = []

    async def handler(msg: Message) -> Message:
        return Message(b"out")

    async def audit(msg: Message) -> None:
        outputs.append(msg.uuid)

    async def main() -> None:
        async with open_chaos_provider(ChaosSchedule([Fault.crash()])) as provider:
            provider.router.add_handler("audit", "audit", audit)
            provider.router.add_handler("h", TOPIC, handler, publish_topic="audit")
            await provider.publisher.publish(TOPIC, Message(b"x", uuid="m"))
            await provider.wait_idle()

    run(main)
    # Published once, by the redelivery (the crashed run published nothing).
    assert len(outputs) == 1


def test_hold_reorders_deliveries() -> None:
    recorder = Recorder()

    async def main() -> None:
        await handle_all(ChaosSchedule([Fault.hold(behind=2)]), ["a", "b", "c", "d"], recorder)

    run(main)
    assert [uuid for uuid, _, _ in recorder.seen] == ["b", "c", "a", "d"]


def test_a_held_message_is_released_when_nothing_else_comes() -> None:
    recorder = Recorder()

    async def main() -> None:
        await handle_all(ChaosSchedule([Fault.hold(behind=3)]), ["a", "b"], recorder)

    run(main)
    assert [uuid for uuid, _, _ in recorder.seen] == ["b", "a"]


def test_a_plain_subscription_gets_faults_but_no_crash() -> None:
    schedule = ChaosSchedule([Fault.duplicate(), Fault.crash(), Fault.ack_lost()])
    got: list[tuple[str, int]] = []

    async def main() -> None:
        async with (
            open_chaos_provider(schedule) as provider,
            provider.subscriber.subscribe(TOPIC) as messages,
        ):
            await provider.publisher.publish(
                TOPIC, Message(uuid="a"), Message(uuid="b"), Message(uuid="c")
            )
            for _ in range(5):
                msg = await messages.receive()
                assert msg.delivery is not None
                got.append((msg.uuid, msg.delivery.attempt))
                assert await msg.ack()
            await provider.wait_idle()

    run(main)
    # a and its copy, b (its crash fault is ignored), c, and c again: its ack was lost.
    assert got == [("a", 1), ("a", 2), ("b", 1), ("c", 1), ("c", 2)]


def test_closing_a_subscription_loses_nothing() -> None:
    schedule = ChaosSchedule([Fault.hold(2), Fault.duplicate(3)])
    got: list[str] = []

    async def main() -> None:
        async with open_chaos_provider(schedule) as provider:
            async with provider.subscriber.subscribe(TOPIC, group="g") as messages:
                await provider.publisher.publish(TOPIC, Message(uuid="a"), Message(uuid="b"))
                msg = await messages.receive()  # b; a is held, b's copy waits
                assert msg.uuid == "b"
            # Nothing was acked: both come back to the group.
            async with provider.subscriber.subscribe(TOPIC, group="g") as messages:
                for _ in range(2):
                    msg = await messages.receive()
                    got.append(msg.uuid)
                    await msg.ack()
            await provider.wait_idle()

    run(main)
    assert sorted(got) == ["a", "b"]


@settings(max_examples=60, deadline=None)
@given(
    schedule=chaos_schedules(max_faults=10),
    count=st.integers(1, 6),
    sleeps=st.integers(0, 3),
    concurrency=st.integers(1, 2),
)
def test_every_message_is_handled_at_least_once(
    schedule: ChaosSchedule, count: int, sleeps: int, concurrency: int
) -> None:
    recorder = Recorder(sleeps=sleeps)
    uuids = [f"m{i}" for i in range(count)]

    async def main() -> None:
        async with open_chaos_provider(schedule) as provider:
            provider.router.add_handler("recorder", TOPIC, recorder, concurrency=concurrency)
            for uuid in uuids:
                await provider.publisher.publish(TOPIC, Message(uuid=uuid))
            await provider.wait_idle()
            inner = provider.inner
        assert isinstance(inner, MemoryProvider)
        assert inner.undelivered == []

    run(main)
    assert set(recorder.completed) == set(uuids)
    faults = sum(f.kind in ("duplicate", "ack_lost", "crash") for f in schedule.faults)
    assert len(recorder.seen) <= count + faults


def test_a_custom_inner_provider_is_wrapped() -> None:
    recorder = Recorder()
    factory = functools.partial(open_memory_provider, MemoryConfig(output_buffer=4))

    async def main() -> None:
        async with open_chaos_provider(ChaosSchedule([Fault.duplicate()]), factory) as provider:
            assert provider.running
            assert provider.inner.running
            assert isinstance(provider.inner, MemoryProvider)
            assert provider.inner.config.output_buffer == 4
            provider.router.add_handler("recorder", TOPIC, recorder)
            await provider.publisher.publish(TOPIC, Message(uuid="a"))
            await provider.wait_idle()
        assert not provider.running

    run(main)
    assert recorder.count() == {"a": 2}


def test_the_schedule_repr_lists_the_faults_by_delivery() -> None:
    schedule = ChaosSchedule(
        [Fault.ok(), Fault.duplicate(1), Fault.ack_lost(), Fault.hold(2), Fault.crash(3)]
    )
    assert repr(schedule) == (
        "ChaosSchedule(#1 duplicate(copy after 1 more), #2 ack_lost, #3 hold(behind 2), "
        "#4 crash(at handler's schedule point 3))"
    )
    assert repr(ChaosSchedule()) == "ChaosSchedule(no faults)"
    assert repr(ChaosSchedule([Fault.crash()])) == (
        "ChaosSchedule(#0 crash(after handler returned, before ack))"
    )


def test_schedules_shrink_to_the_plainest_fault() -> None:
    found = find(chaos_schedules(), lambda s: any(f.kind == "crash" for f in s.faults))
    assert found == ChaosSchedule([Fault.crash()])
    found = find(chaos_schedules(), lambda s: any(f.kind == "hold" for f in s.faults))
    assert found == ChaosSchedule([Fault.hold(1)])


@given(chaos_schedules(kinds=("duplicate",), max_faults=3))
def test_kinds_limit_the_faults_drawn(schedule: ChaosSchedule) -> None:
    assert len(schedule.faults) <= 3
    assert {f.kind for f in schedule.faults} <= {"ok", "duplicate"}


def test_bad_faults_and_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="kind"):
        Fault("explode")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="n must be"):
        Fault.duplicate(-1)
    with pytest.raises(ValueError, match="hold"):
        Fault.hold(0)
    with pytest.raises(TypeError, match="Fault"):
        ChaosSchedule(["duplicate"])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="unknown fault kind"):
        chaos_schedules(kinds=("boom",))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_faults"):
        chaos_schedules(max_faults=-1)

    async def main() -> None:
        with pytest.raises(ValueError, match="hold_timeout"):
            async with open_chaos_provider(ChaosSchedule(), hold_timeout=-1):
                pass  # pragma: no cover
        with pytest.raises(TypeError, match="ChaosSchedule"):
            async with open_chaos_provider([Fault.crash()]):  # type: ignore[arg-type]
                pass  # pragma: no cover

    run(main)


def test_chaos_crash_is_an_exception() -> None:
    assert issubclass(ChaosCrash, Exception)


MEMORY = Features(
    consumer_groups=True,
    exactly_once_delivery=True,
    guaranteed_order=False,
    guaranteed_order_with_single_subscriber=True,
    persistent=False,
)


def chaos_over_memory(schedule: ChaosSchedule) -> Callable[[], Any]:
    return lambda: open_chaos_provider(schedule, hold_timeout=0.01)


async def test_without_faults_it_is_a_conforming_provider() -> None:
    results = await check_provider(chaos_over_memory(ChaosSchedule()), MEMORY, scale=0.05)
    assert all(r == "passed" or r.startswith("skipped") for r in results.values())


async def test_with_faults_it_is_an_at_least_once_provider() -> None:
    faults = [Fault.duplicate(), Fault.ack_lost(), Fault.hold(2), Fault.duplicate(3)] * 3
    at_least_once = replace(
        MEMORY, exactly_once_delivery=False, guaranteed_order_with_single_subscriber=False
    )
    results = await check_provider(
        chaos_over_memory(ChaosSchedule(faults)), at_least_once, scale=0.05
    )
    assert all(r == "passed" or r.startswith("skipped") for r in results.values())
    for check in ("publish_subscribe", "resend_on_error", "message_ctx", "consumer_groups"):
        assert results[check] == "passed"


async def test_it_is_a_provider() -> None:
    async with open_chaos_provider(ChaosSchedule()) as provider:
        assert isinstance(provider, Provider)
        assert isinstance(provider.subscriber, Subscriber)
        assert "ChaosSchedule(no faults)" in repr(provider)
