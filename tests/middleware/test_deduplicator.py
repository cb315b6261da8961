"""deduplicator: a message processed successfully within the window is skipped."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

from piko_trio_events import ConfigError, HandlerFunc, Message
from piko_trio_events.middleware import deduplicator


class Recorder:
    """A handler that records the payloads it processed and fails on demand."""

    def __init__(self, duration: float = 0.0) -> None:
        self.processed: list[bytes] = []
        self.fail_next = 0
        self.duration = duration

    async def __call__(self, msg: Message) -> Message:
        if self.duration:
            await trio.sleep(self.duration)
        if self.fail_next:
            self.fail_next -= 1
            raise RuntimeError("failed")
        self.processed.append(msg.payload)
        return Message(b"out:" + msg.payload)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"window": 0}, "window"),
        ({"window": -5}, "window"),
        ({"window": float("inf")}, "window"),
        ({"window": "60"}, "window"),
        ({"key": "uuid"}, "key"),
        ({"max_keys": 0}, "max_keys"),
        ({"max_keys": 1.0}, "max_keys"),
    ],
)
def test_invalid_arguments_are_refused_at_construction(kwargs: dict[str, Any], name: str) -> None:
    with pytest.raises(ConfigError, match=name):
        deduplicator(**kwargs)


async def test_a_duplicate_within_the_window_is_skipped(autojump_clock: Any) -> None:
    handler = Recorder()
    wrapped = deduplicator(window=10.0)(handler)
    first = await wrapped(Message(b"a", uuid="u1"))
    assert isinstance(first, Message)
    await trio.sleep(9.0)
    assert await wrapped(Message(b"a again", uuid="u1")) is None
    assert await wrapped(Message(b"b", uuid="u2")) is not None
    assert handler.processed == [b"a", b"b"]


async def test_the_key_expires_after_the_window(autojump_clock: Any) -> None:
    handler = Recorder()
    wrapped = deduplicator(window=10.0)(handler)
    await wrapped(Message(b"a", uuid="u1"))
    await trio.sleep(10.0)
    await wrapped(Message(b"a", uuid="u1"))
    await trio.sleep(9.99)
    await wrapped(Message(b"a", uuid="u1"))
    assert handler.processed == [b"a", b"a"]


async def test_the_window_counts_from_when_processing_finished(autojump_clock: Any) -> None:
    handler = Recorder(duration=5.0)
    wrapped = deduplicator(window=10.0)(handler)
    await wrapped(Message(b"a", uuid="u1"))  # finishes at 5
    await trio.sleep(9.0)  # now 14 < 15
    assert await wrapped(Message(b"a", uuid="u1")) is None
    assert handler.processed == [b"a"]


async def test_a_failed_message_is_processed_again(autojump_clock: Any) -> None:
    handler = Recorder()
    handler.fail_next = 1
    wrapped = deduplicator()(handler)
    with pytest.raises(RuntimeError):
        await wrapped(Message(b"a", uuid="u1"))
    assert await wrapped(Message(b"a", uuid="u1")) is not None
    assert await wrapped(Message(b"a", uuid="u1")) is None
    assert handler.processed == [b"a"]


async def test_a_cancelled_message_is_processed_again(autojump_clock: Any) -> None:
    handler = Recorder(duration=5.0)
    wrapped = deduplicator()(handler)
    with trio.move_on_after(1.0):
        await wrapped(Message(b"a", uuid="u1"))
    assert handler.processed == []
    await wrapped(Message(b"a", uuid="u1"))
    assert handler.processed == [b"a"]


async def test_a_key_function_replaces_the_uuid(autojump_clock: Any) -> None:
    handler = Recorder()
    wrapped = deduplicator(key=lambda m: m.metadata["order"])(handler)
    await wrapped(Message(b"1", {"order": "o-1"}))
    await wrapped(Message(b"2", {"order": "o-1"}))
    await wrapped(Message(b"3", {"order": "o-2"}))
    assert handler.processed == [b"1", b"3"]


async def test_max_keys_forgets_the_oldest_keys(autojump_clock: Any) -> None:
    handler = Recorder()
    wrapped = deduplicator(max_keys=2)(handler)
    for uuid in ("a", "b", "c"):
        await wrapped(Message(uuid.encode(), uuid=uuid))
    await wrapped(Message(b"c", uuid="c"))  # remembered
    await wrapped(Message(b"b", uuid="b"))  # remembered
    await wrapped(Message(b"a", uuid="a"))  # forgotten: processed again
    assert handler.processed == [b"a", b"b", b"c", b"a"]


async def test_many_keys_over_many_windows_stay_deduplicated(autojump_clock: Any) -> None:
    # Exercises pruning: every key is seen twice within its window, and again
    # after it expired.
    handler = Recorder()
    wrapped = deduplicator(window=3.0)(handler)
    for step in range(30):
        uuid = f"u{step}"
        await wrapped(Message(uuid.encode(), uuid=uuid))
        await wrapped(Message(uuid.encode(), uuid=uuid))
        if step >= 4:
            old = f"u{step - 4}"  # processed 4 s ago: expired
            await wrapped(Message(old.encode(), uuid=old))
        await trio.sleep(1.0)
    expected: list[bytes] = []
    for step in range(30):
        expected.append(f"u{step}".encode())
        if step >= 4:
            expected.append(f"u{step - 4}".encode())
    assert handler.processed == expected


async def test_a_concurrent_duplicate_waits_and_is_skipped(autojump_clock: Any) -> None:
    handler = Recorder(duration=1.0)
    wrapped = deduplicator()(handler)
    results: list[object] = []

    async def run(payload: bytes) -> None:
        results.append(await wrapped(Message(payload, uuid="same")))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run, b"first")
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(run, b"second")
        nursery.start_soon(run, b"third")
    assert handler.processed == [b"first"]
    assert results[1:] == [None, None]
    assert trio.current_time() == 1.0


async def test_a_concurrent_duplicate_is_processed_if_the_first_fails(autojump_clock: Any) -> None:
    handler = Recorder(duration=1.0)
    handler.fail_next = 1
    wrapped = deduplicator()(handler)
    outcomes: dict[bytes, str] = {}

    async def run(payload: bytes) -> None:
        try:
            result = await wrapped(Message(payload, uuid="same"))
        except RuntimeError:
            outcomes[payload] = "failed"
        else:
            outcomes[payload] = "skipped" if result is None else "processed"

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run, b"first")
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(run, b"second")
        nursery.start_soon(run, b"third")
    # Which waiter takes over is up to trio's scheduler; exactly one does.
    assert outcomes[b"first"] == "failed"
    assert sorted([outcomes[b"second"], outcomes[b"third"]]) == ["processed", "skipped"]
    assert len(handler.processed) == 1
    assert trio.current_time() == 2.0


async def test_each_wrapped_handler_has_its_own_keys(autojump_clock: Any) -> None:
    first, second = Recorder(), Recorder()
    mw = deduplicator()
    wrapped: list[HandlerFunc] = [mw(first), mw(second)]
    for handler in wrapped:
        await handler(Message(b"a", uuid="u1"))
    assert first.processed == second.processed == [b"a"]
