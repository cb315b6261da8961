"""Typed cases of the conformance suite: the cqrs layer on any provider.

Like :mod:`piko_trio_events.testing._conformance`, free of pytest: a check
raises AssertionError saying what was wrong. :data:`TYPED_CHECKS` holds each
as ``(name, function)``; every one takes a zero-argument callable that
returns an async context manager yielding a fresh running provider, and
uses fresh topics (a uuid in the type's topic), since durable state can
outlive a provider. Every wait is bounded.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Final, TypeAlias
from uuid import uuid4

import trio

from .._abc import Provider
from .._errors import NoResponderError, RequestError
from .._message import Message
from .._uuid import derived_uuid
from ._bus import CommandBus, EventBus, default_topic

__all__ = ["TYPED_CHECKS", "MakeProvider"]

MakeProvider: TypeAlias = Callable[[], AbstractAsyncContextManager[Provider]]

#: The bound of one wait for messages (seconds).
TIMEOUT: Final = 15.0


@dataclasses.dataclass(frozen=True)
class Placed:
    """An event: five fields of the JSON kinds."""

    id: int
    sku: str
    quantity: int
    price: float
    note: str | None = None


@dataclasses.dataclass(frozen=True)
class Charge:
    order: int


@dataclasses.dataclass(frozen=True)
class Charged:
    order: int
    total: float


@dataclasses.dataclass(frozen=True)
class Unserved:
    n: int


def _topics() -> Callable[[str], str]:
    return default_topic(f"conf{uuid4().hex[:12]}")


def _placed(count: int) -> list[Placed]:
    return [
        Placed(i, f"sku-{i}", i % 7 + 1, i * 1.5, None if i % 2 else "gift") for i in range(count)
    ]


async def _until(condition: Callable[[], bool], changed: list[trio.Event]) -> None:
    """Wait until ``condition()`` holds; handlers set ``changed[0]`` on every change."""
    while not condition():
        await changed[0].wait()
        changed[0] = trio.Event()


def _changed(changed: list[trio.Event]) -> None:
    changed[0].set()


async def check_typed_publish_subscribe(make_provider: MakeProvider) -> None:
    """Typed events arrive as equal values, every one, at every handler of their type."""
    sent = _placed(20)
    async with make_provider() as provider:
        events = EventBus(provider, topic_of=_topics())
        got: dict[str, set[Placed]] = {"a": set(), "b": set()}
        changed = [trio.Event()]

        @events.handler(name=f"a-{uuid4().hex}")
        async def a(event: Placed) -> None:
            got["a"].add(event)
            _changed(changed)

        @events.handler(name=f"b-{uuid4().hex}")
        async def b(event: Placed) -> None:
            got["b"].add(event)
            _changed(changed)

        await events.publish(*sent)
        with trio.move_on_after(TIMEOUT):
            await _until(lambda: all(len(v) == len(sent) for v in got.values()), changed)
        for name, values in got.items():
            missing = set(sent) - values
            assert not missing, f"handler {name} never got {len(missing)} of {len(sent)} events"


async def check_typed_outputs(make_provider: MakeProvider) -> None:
    """An event handler's command output reaches the command's handler with a
    uuid derived from the event's."""
    async with make_provider() as provider:
        topics = _topics()
        events = EventBus(provider, topic_of=topics)
        commands = CommandBus(provider, topic_of=topics)
        handler_name = f"placed-{uuid4().hex}"
        charged: set[int] = set()
        uuids: set[str] = set()
        changed = [trio.Event()]

        @events.handler(name=handler_name)
        async def on_placed(event: Placed) -> Charge:
            return Charge(event.id)

        @commands.handler(name=f"charge-{uuid4().hex}")
        async def charge(command: Charge) -> None:
            charged.add(command.order)
            _changed(changed)

        async def record(message: Message) -> None:  # a raw reader of the commands
            uuids.add(message.uuid)
            _changed(changed)

        provider.router.add_handler(f"raw-{uuid4().hex}", commands.topic_of(Charge), record)

        published = [events._encode(event) for event in _placed(5)]
        for message in published:
            await provider.publisher.publish(events.topic_of(Placed), message)
        with trio.move_on_after(TIMEOUT):
            await _until(lambda: len(charged) == 5 and len(uuids) >= 5, changed)
        assert sorted(charged) == list(range(5)), f"commands handled: {sorted(charged)}"
        expected = {derived_uuid(m.uuid, handler_name, 0) for m in published}
        assert uuids == expected, "the commands' uuids are not derived from the events'"


async def check_typed_request_reply(make_provider: MakeProvider) -> None:
    """Concurrent requests each get their own typed reply; a raising handler's
    error comes back as RequestError."""
    async with make_provider() as provider:
        commands = CommandBus(provider, topic_of=_topics())

        @commands.handler(name=f"charge-{uuid4().hex}")
        async def charge(command: Charge) -> Charged:
            if command.order < 0:
                raise LookupError(f"no order {command.order}")
            return Charged(command.order, command.order * 2.0)

        replies: dict[int, Charged] = {}

        async def ask(order: int) -> None:
            replies[order] = await commands.request(
                Charge(order), timeout=TIMEOUT, reply_type=Charged
            )

        async with trio.open_nursery() as nursery:
            for order in range(50):
                nursery.start_soon(ask, order)
        assert replies == {n: Charged(n, n * 2.0) for n in range(50)}, "wrong or missing replies"
        failure: RequestError | None = None
        try:
            await commands.request(Charge(-1), timeout=TIMEOUT)
        except RequestError as error:
            failure = error
        assert failure is not None, "a raising handler's request did not raise RequestError"
        assert failure.remote_type == "LookupError", failure
        assert failure.remote_message == "no order -1", failure
        assert commands.pending_requests == 0


async def check_typed_unserved_request(make_provider: MakeProvider) -> None:
    """A request nobody serves ends: NoResponderError at once where the provider
    can tell, else trio.TooSlowError at its timeout; nothing is left waiting."""
    async with make_provider() as provider:
        commands = CommandBus(provider, topic_of=_topics())
        started = trio.current_time()
        try:
            await commands.request(Unserved(1), timeout=0.5)
        except (NoResponderError, trio.TooSlowError):
            pass
        else:
            raise AssertionError("a request no one serves returned")
        assert trio.current_time() - started < 5, "the unserved request outlived its timeout"
        assert commands.pending_requests == 0


async def check_typed_bad_input(make_provider: MakeProvider) -> None:
    """Input that does not decode is counted and settled, and what follows it
    is handled: never a crashed router, never a message redelivered forever."""
    async with make_provider() as provider:
        events = EventBus(provider, topic_of=_topics())
        got: list[Placed] = []
        changed = [trio.Event()]

        @events.handler(name=f"h-{uuid4().hex}")
        async def handle(event: Placed) -> None:
            got.append(event)
            _changed(changed)

        topic = events.topic_of(Placed)
        good = _placed(1)[0]
        await provider.publisher.publish(
            topic,
            Message(b"not json", {"name": "Placed"}),
            Message(b'{"id": 1}', {"name": "Placed"}),  # fields missing
            Message(b"{}"),  # no name
            Message(b"{}", {"name": f"Other{uuid4().hex}"}),  # unknown name
            events._encode(good),
        )
        with trio.move_on_after(TIMEOUT):
            await _until(lambda: bool(got), changed)
        assert got == [good], f"the good event after four bad ones: {got}"
        assert events.decode_errors >= 4, f"{events.decode_errors} decode errors counted"


CheckFn: TypeAlias = Callable[[MakeProvider], Awaitable[None]]

TYPED_CHECKS: Final[list[tuple[str, CheckFn]]] = [
    ("typed_publish_subscribe", check_typed_publish_subscribe),
    ("typed_outputs", check_typed_outputs),
    ("typed_request_reply", check_typed_request_reply),
    ("typed_unserved_request", check_typed_unserved_request),
    ("typed_bad_input", check_typed_bad_input),
]
