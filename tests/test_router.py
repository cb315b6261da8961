"""The router, on the memory provider."""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from typing import Any

import pytest
import trio
import trio.lowlevel
import trio.testing

from piko_trio_events import (
    ConfigError,
    HandlerFunc,
    InvalidTopicError,
    MemoryConfig,
    Message,
    ProviderClosedError,
    RouterConfig,
    StartPosition,
    current_handler_name,
    open_memory_provider,
)
from piko_trio_events._lifecycle import unwind_reserve
from piko_trio_events._router import _prefetch_for
from piko_trio_events._uuid import derived_uuid
from piko_trio_events.testing import ChaosSchedule, open_chaos_provider


async def test_output_is_published_before_the_input_is_acked() -> None:
    async with open_memory_provider(MemoryConfig(output_buffer=1)) as provider:
        inputs: list[Message] = []
        async with provider.subscriber.subscribe("orders.audited", group="collector") as out:
            await provider.publisher.publish("orders.audited", Message(b"filler"))  # now full

            @provider.router.handler("orders.created", publish_topic="orders.audited")
            async def audit(msg: Message) -> list[Message]:
                inputs.append(msg)
                return [Message(b"audited:" + msg.payload)]

            await provider.publisher.publish("orders.created", Message(b"{1}"))
            await trio.testing.wait_all_tasks_blocked()
            assert len(inputs) == 1
            assert not inputs[0].acked  # its output's publish is waiting for room
            assert (await out.receive()).payload == b"filler"
            assert (await out.receive()).payload == b"audited:{1}"
            await trio.testing.wait_all_tasks_blocked()
            assert inputs[0].acked


async def test_a_failed_output_publish_nacks_the_input(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_memory_provider() as provider:
        inputs: list[Message] = []
        gate = trio.Event()

        @provider.router.handler("in", publish_topic="out")
        async def bad_output(msg: Message) -> Message:
            inputs.append(msg)
            if len(inputs) == 2:
                gate.set()
                await trio.sleep_forever()
            return Message(b"x", {"Nats-Msg-Id": "reserved"})

        await provider.publisher.publish("in", Message(b"1"))
        await gate.wait()
        assert inputs[0].nacked
        assert inputs[1].delivery is not None
        assert inputs[1].delivery.attempt == 2


async def test_handler_exception_nacks_and_the_message_comes_back(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    attempts: list[int] = []
    async with open_memory_provider() as provider:
        done = trio.Event()

        @provider.router.handler("t")
        async def flaky(msg: Message) -> None:
            assert msg.delivery is not None
            attempts.append(msg.delivery.attempt)
            if msg.delivery.attempt < 3:
                raise RuntimeError("not yet")
            done.set()

        await provider.publisher.publish("t", Message(b"x"))
        await done.wait()
    assert attempts == [1, 2, 3]
    assert "not yet" in caplog.text


async def test_returning_messages_without_publish_topic_nacks(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    delivered: list[Message] = []
    async with open_memory_provider() as provider:
        gate = trio.Event()

        @provider.router.handler("t")
        async def bad(msg: Message) -> Message:
            delivered.append(msg)
            if len(delivered) == 2:
                gate.set()
                await trio.sleep_forever()
            return Message(b"out")

        await provider.publisher.publish("t", Message(b"x"))
        await gate.wait()
    assert delivered[0].nacked
    assert "no publish_topic" in caplog.text


async def test_output_uuids_are_derived_from_the_input() -> None:
    outs: list[Message] = []
    async with open_memory_provider() as provider:
        done = trio.Event()

        @provider.router.handler("in", publish_topic="out", name="fanout")
        async def fanout(msg: Message) -> list[Message]:
            return [Message(b"a"), Message(b"b", uuid="explicit")]

        @provider.router.handler("out")
        async def sink(msg: Message) -> None:
            outs.append(msg)
            if len(outs) == 2:
                done.set()

        await provider.publisher.publish("in", Message(b"x", uuid="in-1"))
        await done.wait()
    assert [m.uuid for m in outs] == [derived_uuid("in-1", "fanout", 0), "explicit"]


async def test_handlers_added_while_running_start_at_once_and_miss_nothing() -> None:
    async with open_memory_provider() as provider:
        got: list[bytes] = []
        done = trio.Event()

        async def handle(msg: Message) -> None:
            got.append(msg.payload)
            if len(got) == 3:
                done.set()

        provider.router.add_handler("late", "t", handle)
        # Published right after add_handler returns, before the handler task ran.
        await provider.publisher.publish("t", Message(b"1"), Message(b"2"), Message(b"3"))
        await done.wait()
        assert got == [b"1", b"2", b"3"]
        assert provider.router.handlers["late"].group == "late"


async def test_two_handlers_of_one_topic_each_get_every_message() -> None:
    counts = {"a": 0, "b": 0}
    async with open_memory_provider() as provider:
        done = trio.Event()

        def make(name: str) -> HandlerFunc:
            async def handle(msg: Message) -> None:
                counts[name] += 1
                if counts["a"] == counts["b"] == 10:
                    done.set()

            return handle

        provider.router.add_handler("a", "t", make("a"))
        provider.router.add_handler("b", "t", make("b"))
        await provider.publisher.publish("t", *(Message(b"%d" % i) for i in range(10)))
        await done.wait()
    assert counts == {"a": 10, "b": 10}


async def test_handlers_sharing_a_group_compete() -> None:
    per_handler = {"a": 0, "b": 0}
    async with open_memory_provider() as provider:
        done = trio.Event()
        total = 0

        def make(name: str) -> HandlerFunc:
            async def handle(msg: Message) -> None:
                nonlocal total
                per_handler[name] += 1
                total += 1
                await trio.lowlevel.checkpoint()
                if total == 40:
                    done.set()

            return handle

        provider.router.add_handler("a", "t", make("a"), group="shared")
        provider.router.add_handler("b", "t", make("b"), group="shared")
        await provider.publisher.publish("t", *(Message(b"%d" % i) for i in range(40)))
        await done.wait()
        await trio.testing.wait_all_tasks_blocked()
    assert sum(per_handler.values()) == 40
    assert per_handler["a"] > 0
    assert per_handler["b"] > 0


async def test_concurrency_limits_messages_in_flight() -> None:
    async with open_memory_provider() as provider:
        in_flight = 0
        peak = 0
        release = trio.Event()
        finished = 0
        done = trio.Event()

        @provider.router.handler("t", concurrency=3)
        async def handle(msg: Message) -> None:
            nonlocal in_flight, peak, finished
            in_flight += 1
            peak = max(peak, in_flight)
            await release.wait()
            in_flight -= 1
            finished += 1
            if finished == 10:
                done.set()

        await provider.publisher.publish("t", *(Message(b"%d" % i) for i in range(10)))
        await trio.testing.wait_all_tasks_blocked()
        assert in_flight == 3
        release.set()
        await done.wait()
    assert peak == 3


async def test_middleware_order_router_then_handler_first_added_outermost() -> None:
    trace: list[str] = []

    def tag(label: str) -> object:
        def middleware(h: HandlerFunc) -> HandlerFunc:
            async def wrapped(msg: Message) -> None:
                trace.append(f"{label}>")
                await h(msg)
                trace.append(f"<{label}")

            return wrapped

        return middleware

    async with open_memory_provider() as provider:
        done = trio.Event()
        provider.router.add_middleware(tag("r1"), tag("r2"))  # type: ignore[arg-type]

        @provider.router.handler("t", middleware=[tag("h1"), tag("h2")])  # type: ignore[list-item]
        async def handle(msg: Message) -> None:
            trace.append("handler")
            done.set()

        await provider.publisher.publish("t", Message(b"x"))
        await done.wait()
        await trio.testing.wait_all_tasks_blocked()
    assert trace == ["r1>", "r2>", "h1>", "h2>", "handler", "<h2", "<h1", "<r2", "<r1"]


async def test_router_middleware_after_handlers_is_an_error() -> None:
    async with open_memory_provider() as provider:

        @provider.router.handler("t")
        async def handle(msg: Message) -> None:
            pass  # pragma: no cover

        with pytest.raises(RuntimeError, match="before adding handlers"):
            provider.router.add_middleware(lambda h: h)


async def test_bad_registrations_fail_at_once() -> None:
    async def handle(msg: Message) -> None:
        pass  # pragma: no cover

    async with open_memory_provider() as provider:
        router = provider.router
        router.add_handler("h", "t", handle)
        with pytest.raises(ValueError, match="already exists"):
            router.add_handler("h", "t", handle)
        with pytest.raises(InvalidTopicError):
            router.add_handler("x", "bad topic", handle)
        with pytest.raises(InvalidTopicError):
            router.add_handler("y", "t", handle, publish_topic="out.*")
        with pytest.raises(ValueError, match="concurrency"):
            router.add_handler("z", "t", handle, concurrency=0)
        with pytest.raises(TypeError, match="callable"):
            router.add_handler("w", "t", "nope")  # type: ignore[arg-type]
        assert set(router.handlers) == {"h"}
    with pytest.raises(ProviderClosedError):
        router.add_handler("after", "t", handle)


async def test_handler_name_defaults_to_qualname_and_is_visible_to_middleware() -> None:
    names: list[str | None] = []
    async with open_memory_provider() as provider:
        done = trio.Event()

        @provider.router.handler("t")
        async def my_handler(msg: Message) -> None:
            names.append(current_handler_name())
            done.set()

        await provider.publisher.publish("t", Message(b"x"))
        await done.wait()
    (name,) = provider.router.handlers
    assert name.endswith("my_handler")
    assert names == [name]
    assert current_handler_name() is None


async def test_close_lets_in_flight_handlers_finish_then_publishes_their_output(
    autojump_clock: trio.testing.MockClock,
) -> None:
    outputs: list[Message] = []
    async with open_memory_provider() as provider:
        started = trio.Event()
        outputs_channel = provider.subscriber.subscribe("out", group="collector")

        @provider.router.handler("in", publish_topic="out")
        async def slow(msg: Message) -> Message:
            started.set()
            await trio.sleep(5)  # shorter than close_timeout (30 s)
            return Message(b"done:" + msg.payload)

        await provider.publisher.publish("in", Message(b"x"))
        await started.wait()
        t0 = trio.current_time()
    assert trio.current_time() - t0 == pytest.approx(5)
    # the output was published before publishing closed: it waits in its group
    assert [u.message.payload for u in provider.undelivered] == [b"done:x"]
    del outputs_channel, outputs


async def test_close_timeout_cancels_stuck_handlers_and_nacks_their_messages(
    autojump_clock: trio.testing.MockClock,
) -> None:
    held: list[Message] = []
    config = MemoryConfig(router=RouterConfig(close_timeout=2.0))
    async with open_memory_provider(config) as provider:
        started = trio.Event()

        @provider.router.handler("in")
        async def stuck(msg: Message) -> None:
            held.append(msg)
            started.set()
            await trio.sleep_forever()

        await provider.publisher.publish("in", Message(b"x"))
        await started.wait()
        t0 = trio.current_time()
    # One budget: the handler is cancelled in time for its nack to fit inside
    # close_timeout (the unwind reserve is 5% of it).
    assert trio.current_time() - t0 == pytest.approx(2.0 - unwind_reserve(2.0))
    assert held[0].nacked
    # nacked back into the handler's group, so it is reported, not lost
    (handler,) = provider.router.handlers.values()
    assert [(u.group, u.message.payload, u.attempts) for u in provider.undelivered] == [
        (handler.group, b"x", 1)
    ]


async def test_cancelling_an_outer_scope_still_drains(
    autojump_clock: trio.testing.MockClock,
) -> None:
    finished: list[bytes] = []
    with trio.move_on_after(1) as outer:
        async with open_memory_provider() as provider:

            @provider.router.handler("in")
            async def slow(msg: Message) -> None:
                await trio.sleep(3)  # the outer deadline passes meanwhile
                finished.append(msg.payload)

            await provider.publisher.publish("in", Message(b"x"))
            await trio.sleep_forever()
    assert outer.cancelled_caught
    assert finished == [b"x"]
    assert provider.undelivered == []
    assert not provider.running


async def test_prefetch_is_checked_and_the_router_sets_it_from_concurrency(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with open_memory_provider() as provider:
        for bad in (0, -3, 2.0, "4", True):
            with pytest.raises(ConfigError, match="prefetch"):
                provider.subscriber.subscribe("jobs", prefetch=bad)  # type: ignore[arg-type]
        async with provider.subscriber.subscribe("jobs", prefetch=1):
            pass

        asked: list[int | None] = []
        subscribe = provider.subscriber.subscribe

        def recording(
            topic: str,
            group: str | None = None,
            start: StartPosition = None,
            *,
            prefetch: int | None = None,
        ) -> AbstractAsyncContextManager[Any]:
            asked.append(prefetch)
            return subscribe(topic, group, start, prefetch=prefetch)

        monkeypatch.setattr(provider.subscriber, "subscribe", recording)
        provider.router.add_handler("one", "jobs", _noop)
        provider.router.add_handler("many", "jobs", _noop, concurrency=100)
        assert asked == [_prefetch_for(1), _prefetch_for(100)]
        assert _prefetch_for(100) >= 100

    async with open_chaos_provider(ChaosSchedule()) as chaos:  # passed through, checked inside
        with pytest.raises(ConfigError, match="prefetch"):
            chaos.subscriber.subscribe("jobs", prefetch=0)


async def _noop(msg: Message) -> None:
    await trio.lowlevel.checkpoint()
