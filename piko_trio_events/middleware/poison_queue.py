"""Set aside messages the handler cannot process, on a poison topic."""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from .._abc import Publisher
from .._errors import ConfigError
from .._message import Message
from .._topics import validate_topic
from .._types import HandlerFunc, HandlerResult, Middleware, current_handler_name
from ._validate import check_callable, check_int

__all__ = [
    "POISONED_HANDLER_KEY",
    "POISONED_TOPIC_KEY",
    "REASON_POISONED_KEY",
    "poison_queue",
]

#: Metadata key of a poisoned message: why the handler failed (``str`` of the error).
REASON_POISONED_KEY: Final = "reason_poisoned"
#: Metadata key of a poisoned message: the topic it was received from.
POISONED_TOPIC_KEY: Final = "topic_poisoned"
#: Metadata key of a poisoned message: the router handler that failed on it.
POISONED_HANDLER_KEY: Final = "handler_poisoned"


def poison_queue(
    publisher: Publisher,
    topic: str,
    *,
    should_poison: Callable[[Exception], bool] | None = None,
    max_attempts: int | None = None,
) -> Middleware:
    """Publish messages whose handler fails to ``topic``, then carry on.

    When the handler raises an :class:`Exception` that qualifies, a copy of
    the message (same uuid, payload and metadata) is published to ``topic``
    with three metadata entries added: ``reason_poisoned`` (the error's
    ``str``, line breaks replaced by spaces, or its class name if that is
    empty), ``topic_poisoned`` (the topic the message was received from) and
    ``handler_poisoned`` (the router handler's name); the two last are empty
    for a message the router did not deliver. Only after that publish returned
    does the middleware return normally, so the router acks the message and
    the handler's error goes no further. The message itself is not changed.

    An error qualifies when ``should_poison(error)`` is true (by default every
    error does) and, if ``max_attempts`` is given, the message's
    ``delivery.attempt`` has reached ``max_attempts`` (a message that was
    never delivered counts as attempt 1). An error that does not qualify
    propagates, so the router nacks and the message is redelivered.

    If publishing to ``topic`` fails, the handler's original error propagates
    (with a note saying why the poison publish failed): the message is nacked,
    not lost. Cancellation passes straight through, without publishing.

    Args:
        publisher: where poisoned messages are published (anything with an
            ``async publish(topic, *messages)``).
        topic: the poison topic (no wildcards).
        should_poison: called with the handler's error; returning False lets
            the error propagate.
        max_attempts: poison a message only from this delivery attempt on
            (>= 1); earlier failures are nacked for redelivery.

    Raises:
        ConfigError: if ``publisher``, ``should_poison`` or ``max_attempts`` is
            invalid.
        InvalidTopicError: if ``topic`` is not a valid topic to publish to.
    """
    if not callable(getattr(publisher, "publish", None)):
        raise ConfigError(f"publisher must have an async publish() method, not {publisher!r}")
    validate_topic(topic)
    check_callable("should_poison", should_poison)
    min_attempt = 1 if max_attempts is None else check_int("max_attempts", max_attempts, minimum=1)
    publish = publisher.publish

    def middleware(handler: HandlerFunc) -> HandlerFunc:
        async def poisoning(msg: Message) -> HandlerResult:
            try:
                return await handler(msg)
            except Exception as error:
                delivery = msg.delivery
                if (1 if delivery is None else delivery.attempt) < min_attempt:
                    raise
                if should_poison is not None and not should_poison(error):
                    raise
                failure: Exception | None = None
                try:
                    await publish(topic, _poisoned(msg, error))
                except Exception as publish_error:
                    failure = publish_error
                if failure is not None:
                    error.add_note(
                        f"poison_queue: could not publish the message to {topic!r}: {failure!r}"
                    )
                    del failure
                    raise
                return None

        return poisoning

    return middleware


def _poisoned(msg: Message, error: Exception) -> Message:
    """A copy of ``msg`` with the poison metadata set."""
    reason = str(error) or type(error).__qualname__
    if "\n" in reason or "\r" in reason:
        reason = reason.replace("\r\n", " ").replace("\n", " ").replace("\r", " ")
    copy = msg.copy()
    metadata = copy.metadata
    metadata[REASON_POISONED_KEY] = reason
    metadata[POISONED_TOPIC_KEY] = "" if msg.delivery is None else msg.delivery.topic
    metadata[POISONED_HANDLER_KEY] = current_handler_name() or ""
    return copy
