"""poison_queue: failed messages go to a poison topic, then the input is acked."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from piko_trio_events import ConfigError, Delivery, InvalidTopicError, Message
from piko_trio_events._types import _current_handler
from piko_trio_events.middleware import (
    POISONED_HANDLER_KEY,
    POISONED_TOPIC_KEY,
    REASON_POISONED_KEY,
    poison_queue,
)


class RecordingPublisher:
    """A test double for the Publisher protocol: records what is published,
    or raises ``fail_with`` if set."""

    def __init__(self, fail_with: Exception | None = None) -> None:
        self.published: list[tuple[str, Message]] = []
        self.fail_with = fail_with

    async def publish(self, topic: str, *messages: Message) -> None:
        await trio.lowlevel.checkpoint()
        if self.fail_with is not None:
            raise self.fail_with
        self.published.extend((topic, m) for m in messages)

    async def flush(self) -> None:
        await trio.lowlevel.checkpoint()


def received(attempt: int = 1, topic: str = "orders.created") -> Message:
    msg = Message(b"payload", {"k": "v"})
    msg.delivery = Delivery(topic, attempt=attempt, redelivered=attempt > 1)
    return msg


async def failing(msg: Message) -> None:
    raise ValueError("bad order")


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "match"),
    [
        ((None, "poison"), {}, ConfigError, "publisher"),
        ((object(), "poison"), {}, ConfigError, "publisher"),
        ((RecordingPublisher(), ""), {}, InvalidTopicError, "empty"),
        ((RecordingPublisher(), "poison.*"), {}, InvalidTopicError, "wildcard"),
        ((RecordingPublisher(), "poison"), {"should_poison": "yes"}, ConfigError, "should_poison"),
        ((RecordingPublisher(), "poison"), {"max_attempts": 0}, ConfigError, "max_attempts"),
        ((RecordingPublisher(), "poison"), {"max_attempts": True}, ConfigError, "max_attempts"),
        ((RecordingPublisher(), "poison"), {"max_attempts": 2.0}, ConfigError, "max_attempts"),
    ],
)
def test_invalid_arguments_are_refused_at_construction(
    args: tuple[Any, ...], kwargs: dict[str, Any], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        poison_queue(*args, **kwargs)


async def test_success_publishes_nothing_and_returns_the_output() -> None:
    pub = RecordingPublisher()
    output = Message(b"out")

    async def handler(msg: Message) -> Message:
        return output

    assert await poison_queue(pub, "poison")(handler)(received()) is output
    assert pub.published == []


async def test_a_failed_message_is_published_with_poison_metadata_and_swallowed() -> None:
    pub = RecordingPublisher()
    msg = received(topic="orders.created")
    token = _current_handler.set("audit")
    try:
        result = await poison_queue(pub, "orders.poison")(failing)(msg)
    finally:
        _current_handler.reset(token)
    assert result is None
    assert len(pub.published) == 1
    topic, poisoned = pub.published[0]
    assert topic == "orders.poison"
    assert poisoned is not msg
    assert poisoned.uuid == msg.uuid
    assert poisoned.payload == b"payload"
    assert poisoned.delivery is None
    assert poisoned.metadata == {
        "k": "v",
        REASON_POISONED_KEY: "bad order",
        POISONED_TOPIC_KEY: "orders.created",
        POISONED_HANDLER_KEY: "audit",
    }
    assert msg.metadata == {"k": "v"}, "the input message itself is not changed"


async def test_outside_a_router_handler_and_topic_are_empty() -> None:
    pub = RecordingPublisher()
    await poison_queue(pub, "poison")(failing)(Message(b"x"))
    assert pub.published[0][1].metadata == {
        REASON_POISONED_KEY: "bad order",
        POISONED_TOPIC_KEY: "",
        POISONED_HANDLER_KEY: "",
    }


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (ValueError("line one\nline two\r\nthree"), "line one line two three"),
        (KeyError(), "KeyError"),
    ],
)
async def test_the_reason_is_a_valid_metadata_value(error: Exception, reason: str) -> None:
    pub = RecordingPublisher()

    async def handler(msg: Message) -> None:
        raise error

    await poison_queue(pub, "poison")(handler)(received())
    assert pub.published[0][1].metadata[REASON_POISONED_KEY] == reason


async def test_errors_the_filter_rejects_propagate_unpublished() -> None:
    pub = RecordingPublisher()
    seen: list[Exception] = []

    def should_poison(error: Exception) -> bool:
        seen.append(error)
        return isinstance(error, KeyError)

    with pytest.raises(ValueError, match="bad order") as info:
        await poison_queue(pub, "poison", should_poison=should_poison)(failing)(received())
    assert pub.published == []
    assert seen == [info.value]


async def test_errors_the_filter_accepts_are_poisoned() -> None:
    pub = RecordingPublisher()
    mw = poison_queue(pub, "poison", should_poison=lambda e: isinstance(e, ValueError))
    assert await mw(failing)(received()) is None
    assert len(pub.published) == 1


@pytest.mark.parametrize(("attempt", "poisoned"), [(1, False), (2, False), (3, True), (4, True)])
async def test_max_attempts_poisons_only_from_that_attempt_on(attempt: int, poisoned: bool) -> None:
    pub = RecordingPublisher()
    wrapped = poison_queue(pub, "poison", max_attempts=3)(failing)
    if poisoned:
        assert await wrapped(received(attempt)) is None
    else:
        with pytest.raises(ValueError, match="bad order"):
            await wrapped(received(attempt))
    assert len(pub.published) == int(poisoned)


async def test_max_attempts_and_filter_must_both_agree() -> None:
    pub = RecordingPublisher()
    wrapped = poison_queue(pub, "poison", max_attempts=2, should_poison=lambda e: False)(failing)
    with pytest.raises(ValueError, match="bad order"):
        await wrapped(received(attempt=5))
    assert pub.published == []


async def test_an_undelivered_message_counts_as_first_attempt() -> None:
    pub = RecordingPublisher()
    with pytest.raises(ValueError, match="bad order"):
        await poison_queue(pub, "poison", max_attempts=2)(failing)(Message())
    assert await poison_queue(pub, "poison", max_attempts=1)(failing)(Message()) is None
    assert len(pub.published) == 1


async def test_if_the_poison_publish_fails_the_original_error_propagates() -> None:
    pub = RecordingPublisher(fail_with=ConnectionError("publisher down"))
    with pytest.raises(ValueError, match="bad order") as info:
        await poison_queue(pub, "poison")(failing)(received())
    notes = getattr(info.value, "__notes__", [])
    assert any("'poison'" in n and "publisher down" in n for n in notes), notes
    assert info.value.__context__ is None


async def test_cancellation_passes_through_without_publishing(autojump_clock: Any) -> None:
    pub = RecordingPublisher()

    async def handler(msg: Message) -> None:
        await trio.sleep_forever()

    with trio.move_on_after(1.0) as scope:
        await poison_queue(pub, "poison")(handler)(received())
    assert scope.cancelled_caught
    assert pub.published == []
