"""An at-least-once chaos provider: property-test that your handlers are idempotent.

At-least-once delivery means a handler sees some messages more than once:
the broker duplicates a delivery, an ack is lost on its way and the message
comes back after a successful ``ack()``, a replica crashes after the
handler's side effect but before its ack. :func:`open_chaos_provider` wraps
any provider and makes those things happen, on the deliveries a
:class:`ChaosSchedule` says, and :func:`chaos_schedules` lets hypothesis
draw (and shrink) the schedules::

    import trio
    import trio.testing
    from hypothesis import given
    from piko_trio_events import Message
    from piko_trio_events.testing import chaos_schedules, open_chaos_provider

    @given(schedule=chaos_schedules())
    def test_payments_apply_once(schedule):
        async def main():
            ledger = Ledger()
            async with open_chaos_provider(schedule) as provider:
                provider.router.add_handler("ledger", "payments", ledger.apply_payment)
                await provider.publisher.publish("payments", Message(b"10", uuid="p-1"))
                await provider.wait_idle()
            assert ledger.balance == 10

        trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))

(``Ledger`` stands for your handler and its store; the repository's
``docs/examples/test_ledger_idempotency.py`` is a complete worked example.)

On failure hypothesis prints the shrunk schedule (its ``repr`` lists the
faults by delivery) and, as notes, what the chaos provider did to each
delivery: the interleaving that broke the handler.

The faults are positional, not timed and not random: the n-th message that
the chaos provider takes from the wrapped provider gets the schedule's n-th
fault, and the same schedule replays the same run (trio's scheduling is
deterministic under hypothesis with pytest-trio). Past the end of the
schedule every message is delivered plainly, so every run ends.

This module imports hypothesis; import it only where hypothesis is installed.
"""

from __future__ import annotations

import dataclasses
import math
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, Final, Literal, TypeAlias

import hypothesis
import trio
from hypothesis import strategies as st

from .._abc import Provider, Publisher, StartPosition, Subscriber
from .._errors import ConfigError
from .._lifecycle import DrainStep, run_provider
from .._message import Message
from .._provider_base import ProviderBase
from .._router import Router
from .._types import HandlerFunc, HandlerResult

__all__ = [
    "ChaosCrash",
    "ChaosProvider",
    "ChaosSchedule",
    "Fault",
    "FaultKind",
    "chaos_schedules",
    "open_chaos_provider",
]

#: The kinds of fault, in the order hypothesis shrinks towards (``"ok"`` first).
FaultKind: TypeAlias = Literal["ok", "duplicate", "ack_lost", "hold", "crash"]
FAULT_KINDS: Final[tuple[FaultKind, ...]] = ("ok", "duplicate", "ack_lost", "hold", "crash")

#: A factory of the wrapped provider: an async context manager yielding a Provider.
ProviderFactory: TypeAlias = Callable[[], AbstractAsyncContextManager[Provider]]


class ChaosCrash(Exception):
    """A simulated crash of a handler: the router nacks its message, which comes back."""


@dataclasses.dataclass(frozen=True, slots=True)
class Fault:
    """What the chaos provider does to one delivery.

    Build faults with the class methods. Attributes:
        kind: ``"ok"`` (deliver plainly), ``"duplicate"``, ``"ack_lost"``,
            ``"hold"`` or ``"crash"``.
        n: for ``duplicate``, how many other messages are delivered before the
            copy; for ``hold``, how many later messages overtake this one;
            for ``crash``, the handler's schedule point at which it crashes
            (0: after it returned, before its ack).
    """

    kind: FaultKind = "ok"
    n: int = 0

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ConfigError(f"fault kind must be one of {FAULT_KINDS}, not {self.kind!r}")
        if isinstance(self.n, bool) or not isinstance(self.n, int) or self.n < 0:
            raise ConfigError(f"fault n must be an int >= 0, not {self.n!r}")
        if self.kind == "hold" and self.n < 1:
            raise ConfigError("a hold fault needs n >= 1 (the messages that overtake it)")

    @classmethod
    def ok(cls) -> Fault:
        """Deliver the message plainly."""
        return cls("ok")

    @classmethod
    def duplicate(cls, later: int = 0) -> Fault:
        """Deliver the message twice; the copy comes after ``later`` other messages
        (or the provider's ``hold_timeout``).

        The copy is a redelivery (``delivery.redelivered``); settling it does
        not settle the original delivery.
        """
        return cls("duplicate", later)

    @classmethod
    def ack_lost(cls) -> Fault:
        """The handler's ``ack()`` returns True, but the ack never reaches the
        broker: the message is redelivered."""
        return cls("ack_lost")

    @classmethod
    def hold(cls, behind: int = 1) -> Fault:
        """Hold the message back until ``behind`` later messages were delivered
        (or the provider's ``hold_timeout`` passed): a delay that reorders
        deliveries."""
        return cls("hold", behind)

    @classmethod
    def crash(cls, at: int = 0) -> Fault:
        """Crash the router's handler of this message, which is redelivered.

        ``at=0`` crashes after the handler returned (its side effects done)
        and before its output is published and its message acked: the hard
        case. ``at=k`` cancels the handler at its k-th schedule point (each
        ``await`` that yields), or after it returned if it yields fewer times.
        A message taken by a plain subscription, not by the router, is
        delivered as if the fault were ``ok``.
        """
        return cls("crash", at)

    def describe(self) -> str:
        """A short readable form, as used in the schedule's ``repr``."""
        if self.kind == "duplicate":
            return "duplicate" if self.n == 0 else f"duplicate(copy after {self.n} more)"
        if self.kind == "hold":
            return f"hold(behind {self.n})"
        if self.kind == "crash":
            if self.n == 0:
                return "crash(after handler returned, before ack)"
            return f"crash(at handler's schedule point {self.n})"
        return self.kind

    def __repr__(self) -> str:
        return self.describe()

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        # What hypothesis's pretty printer (and IPython's) shows: the readable form.
        printer.text(repr(self))


@dataclasses.dataclass(frozen=True, slots=True, init=False)
class ChaosSchedule:
    """The faults of a run: ``faults[n]`` is done to the n-th message taken
    from the wrapped provider; later messages are delivered plainly.

    Its ``repr`` lists the faults that are not ``ok`` by delivery number,
    for example ``ChaosSchedule(#0 duplicate, #2 crash(after handler
    returned, before ack))``.
    """

    faults: tuple[Fault, ...]

    def __init__(self, faults: Iterable[Fault] = ()) -> None:
        faults = tuple(faults)
        for fault in faults:
            if not isinstance(fault, Fault):
                raise TypeError(f"a ChaosSchedule holds Fault objects, not {fault!r}")
        object.__setattr__(self, "faults", faults)

    def fault_at(self, n: int) -> Fault:
        """The fault of the n-th delivery (``ok`` past the end)."""
        return self.faults[n] if n < len(self.faults) else _OK

    def __repr__(self) -> str:
        shown = [f"#{i} {f.describe()}" for i, f in enumerate(self.faults) if f.kind != "ok"]
        return f"ChaosSchedule({', '.join(shown) if shown else 'no faults'})"

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        # Hypothesis prints a falsifying example with this, not with the way
        # it was built (``ChaosSchedule([Fault(...), ...])``).
        printer.text(repr(self))


_OK: Final = Fault()


def chaos_schedules(
    *,
    kinds: Sequence[FaultKind] = FAULT_KINDS,
    max_faults: int = 8,
    max_shift: int = 3,
    max_crash_point: int = 5,
) -> st.SearchStrategy[ChaosSchedule]:
    """Schedules of faults, shrinking towards fewer and plainer faults.

    Args:
        kinds: the kinds of fault to draw (``"ok"`` is always possible).
            Leave out ``"crash"``, for instance, to test a consumer that is
            not a router handler.
        max_faults: the longest schedule (the deliveries it covers).
        max_shift: the largest ``n`` of ``duplicate`` and ``hold`` faults.
        max_crash_point: the latest schedule point a ``crash`` lands on.

    Example::

        >>> from hypothesis import find
        >>> find(chaos_schedules(), lambda s: any(f.kind == "crash" for f in s.faults))
        ChaosSchedule(#0 crash(after handler returned, before ack))
    """
    for kind in kinds:
        if kind not in FAULT_KINDS:
            raise ConfigError(f"unknown fault kind {kind!r}; choose from {FAULT_KINDS}")
    if max_faults < 0 or max_shift < 1 or max_crash_point < 0:
        raise ConfigError("max_faults must be >= 0, max_shift >= 1 and max_crash_point >= 0")
    options: list[st.SearchStrategy[Fault]] = [st.just(_OK)]
    wanted = set(kinds)
    if "duplicate" in wanted:
        options.append(st.integers(0, max_shift).map(Fault.duplicate))
    if "ack_lost" in wanted:
        options.append(st.just(Fault.ack_lost()))
    if "hold" in wanted:
        options.append(st.integers(1, max_shift).map(Fault.hold))
    if "crash" in wanted:
        options.append(st.integers(0, max_crash_point).map(Fault.crash))
    return st.lists(st.one_of(options), max_size=max_faults).map(ChaosSchedule)


class _Settle:
    """The acker of one chaos delivery: settles the wrapped message (or not)."""

    system = "testing"  # (telemetry's messaging.system)

    __slots__ = ("copy", "inner", "kind", "label", "provider", "settled", "subscription")

    def __init__(
        self,
        provider: ChaosProvider,
        subscription: ChaosSubscription,
        inner: Message,
        kind: FaultKind,
        label: str,
        *,
        copy: bool,
    ) -> None:
        self.provider = provider
        self.subscription = subscription
        self.inner = inner
        self.kind = kind
        self.label = label
        self.copy = copy
        self.settled = False

    def _done(self, message: Message) -> bool:
        if self.settled:
            return False
        self.settled = True
        self.subscription._live.pop(id(message), None)
        self.provider._settled(message)
        return True

    def ack_message(self, message: Message) -> Any:
        if not self._done(message):
            return None
        if self.copy:
            self.provider._log(f"{self.label} (copy) acked; the original settles the message")
            return None
        if self.kind == "ack_lost":
            self.provider._log(f"{self.label} acked, ack LOST: it will be redelivered")
            return self.inner.nack()
        return self.inner.ack()

    async def nack_message(self, message: Message, delay: float | None) -> None:
        if self._done(message) and not self.copy:
            await self.inner.nack(delay)


class ChaosSubscription(trio.abc.ReceiveChannel[Message]):
    """A subscription of the wrapped provider, with the schedule's faults applied.

    Messages that the schedule holds back or duplicates wait here; closing the
    subscription drops them (the wrapped subscription nacks the originals,
    so nothing is lost).
    """

    def __init__(self, provider: ChaosProvider, inner: trio.abc.ReceiveChannel[Message]) -> None:
        self._provider = provider
        self._inner = inner
        self._ready: deque[Message] = deque()
        # [message, deliveries still to overtake it, release time at the latest]
        self._held: list[list[Any]] = []
        self._live: dict[int, Message] = {}
        self._closed = False
        self._ended = False
        provider._subscriptions.add(self)

    async def receive(self) -> Message:
        """The next delivery: a ready copy or held message, else the wrapped
        subscription's next message with its fault applied."""
        await trio.lowlevel.checkpoint()
        while True:
            if self._closed:
                if self._ended:
                    raise trio.EndOfChannel
                raise trio.ClosedResourceError("this subscription was closed")
            if self._ready:
                return self._hand_out(self._ready.popleft())
            if self._held:
                inner = None
                with trio.move_on_at(min(entry[2] for entry in self._held)):
                    inner = await self._inner.receive()
                if inner is None:
                    self._release_due()
                    continue
            else:
                inner = await self._inner.receive()
            self._admit(inner)

    def _release_due(self) -> None:
        """Held messages wait at most ``hold_timeout``: release those due."""
        now = trio.current_time()
        for entry in [e for e in self._held if e[2] <= now]:
            self._held.remove(entry)
            self._provider._log(f"{_label_of(entry[0])} released: nothing overtook it in time")
            self._ready.append(entry[0])

    def _hand_out(self, message: Message) -> Message:
        still_held = []
        for entry in self._held:
            entry[1] -= 1
            if entry[1] <= 0:
                self._ready.append(entry[0])
            else:
                still_held.append(entry)
        self._held = still_held
        return message

    def _admit(self, inner: Message) -> None:
        provider = self._provider
        number = provider._taken
        provider._taken += 1
        fault = provider.schedule.fault_at(number)
        label = f"delivery #{number} ({_describe(inner)})"
        provider._log(f"{label}: {fault.describe()}")
        message = self._wrap(inner, fault.kind, label, copy=False)
        if fault.kind == "hold":
            self._hold(message, fault.n)
            return
        self._ready.append(message)
        if fault.kind == "crash":
            provider._crashes[id(message)] = fault
        elif fault.kind == "duplicate":
            copy = self._wrap(inner, "duplicate", label, copy=True)
            if fault.n == 0:
                self._ready.append(copy)
            else:
                self._hold(copy, fault.n + 1)  # the original goes first

    def _hold(self, message: Message, behind: int) -> None:
        due = trio.current_time() + self._provider.hold_timeout
        self._held.append([message, behind, due])

    def _wrap(self, inner: Message, kind: FaultKind, label: str, *, copy: bool) -> Message:
        delivery = inner.delivery
        assert delivery is not None
        if copy:
            delivery = dataclasses.replace(delivery, attempt=delivery.attempt + 1, redelivered=True)
        settle = _Settle(self._provider, self, inner, kind, label, copy=copy)
        message = Message._received(
            inner.uuid, inner.payload, dict(inner.metadata), delivery, settle
        )
        self._live[id(message)] = message
        self._provider._outstanding += 1
        return message

    def _close(self, *, ended: bool = False) -> None:
        """Drop what waits here and forget what was delivered and not settled
        (the wrapped subscription nacks the originals as it closes)."""
        if self._closed:
            return
        self._closed = True
        self._ended = ended
        self._provider._subscriptions.discard(self)
        waiting = [*self._ready, *(entry[0] for entry in self._held)]
        self._ready.clear()
        self._held.clear()
        for message in [*waiting, *self._live.values()]:
            acker = message._acker
            if isinstance(acker, _Settle) and acker._done(message):
                message._mark_nacked()

    async def aclose(self) -> None:
        self._close()
        await self._inner.aclose()


def _describe(message: Message) -> str:
    payload = message.payload if len(message.payload) <= 24 else message.payload[:24] + b"..."
    attempt = message.delivery.attempt if message.delivery is not None else None
    return f"uuid={message.uuid!r} payload={payload!r} attempt={attempt}"


def _label_of(message: Message) -> str:
    acker = message._acker
    return acker.label if isinstance(acker, _Settle) else repr(message)


class ChaosSubscriber:
    """Opens :class:`ChaosSubscription` objects on the wrapped subscriber.

    The wrapped subscription is created when :meth:`subscribe` is called (so
    a memory-provider group exists from the call), entered with the block.
    """

    def __init__(self, provider: ChaosProvider, inner: Subscriber) -> None:
        self._provider = provider
        self._inner = inner

    def subscribe(
        self,
        topic: str,
        group: str | None = None,
        start: StartPosition = None,
        *,
        prefetch: int | None = None,
    ) -> AbstractAsyncContextManager[trio.abc.ReceiveChannel[Message]]:
        """Subscribe through the wrapped subscriber (which checks ``prefetch``);
        see :class:`~piko_trio_events.Subscriber`."""
        return self._open(self._inner.subscribe(topic, group=group, start=start, prefetch=prefetch))

    @asynccontextmanager
    async def _open(
        self, inner: AbstractAsyncContextManager[trio.abc.ReceiveChannel[Message]]
    ) -> AsyncIterator[trio.abc.ReceiveChannel[Message]]:
        async with inner as channel:
            subscription = ChaosSubscription(self._provider, channel)
            try:
                yield subscription
            finally:
                subscription._close()


class _CrashPoints(trio.abc.Instrument):
    """Counts the schedule points of handlers due to crash, and cancels them there."""

    def __init__(self) -> None:
        self.watched: dict[trio.lowlevel.Task, list[Any]] = {}  # [cancel scope, points left]

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        entry = self.watched.get(task)
        if entry is not None:
            entry[1] -= 1
            if entry[1] <= 0:
                del self.watched[task]
                entry[0].cancel()


class ChaosProvider(ProviderBase[Publisher, ChaosSubscriber]):
    """What :func:`open_chaos_provider` yields: a Provider with faults.

    Its publisher is the wrapped provider's (publishing is not disturbed); its
    router runs on the chaos subscriber, so only its handlers can crash.

    Attributes:
        schedule: the faults of this run.
        inner: the wrapped provider.
        hold_timeout: the longest a held message (or a late duplicate) waits
            for the messages that should overtake it, in seconds of trio time.
        trace: what the chaos provider did, one line per event (also given
            to ``hypothesis.note`` inside a hypothesis test, so that a failing
            example shows the interleaving).
    """

    def __init__(
        self, schedule: ChaosSchedule, inner: Provider, *, hold_timeout: float = 0.1
    ) -> None:
        if not isinstance(schedule, ChaosSchedule):
            raise TypeError(f"schedule must be a ChaosSchedule, not {schedule!r}")
        if not isinstance(hold_timeout, int | float) or not 0 <= hold_timeout < math.inf:
            raise ConfigError(f"hold_timeout must be a finite number >= 0, not {hold_timeout!r}")
        self.hold_timeout = float(hold_timeout)
        self.schedule = schedule
        self.inner = inner
        self.trace: list[str] = []
        self._taken = 0
        self._outstanding = 0
        self._idle = trio.Event()
        self._crashes: dict[int, Fault] = {}
        self._subscriptions: set[ChaosSubscription] = set()
        self._crash_points = _CrashPoints()
        subscriber = ChaosSubscriber(self, inner.subscriber)
        inner_router = inner.router
        router = Router(
            inner.publisher,
            subscriber,
            inner_router.config,
            default_concurrency=inner_router._default_concurrency,
        )
        super().__init__(inner.publisher, subscriber, router)
        # Outermost, so that the crash comes after every middleware's effects.
        router.add_middleware(self._crashing)

    def __repr__(self) -> str:
        return f"<ChaosProvider {self.schedule!r} running={self._running} inner={self.inner!r}>"

    async def wait_idle(self) -> None:
        """Return once every delivery the chaos provider made is settled and
        every task is blocked: with an in-process wrapped provider, every
        published message has then been handled and acked.

        Use it under ``trio.testing.MockClock(autojump_threshold=0)``: time a
        handler sleeps passes at once. A message out of the chaos provider's
        sight (in a NATS server, or nacked with a delay) is not waited for.
        """
        while True:
            if self._outstanding:
                self._idle = trio.Event()
                await self._idle.wait()
                continue
            await trio.testing.wait_all_tasks_blocked()
            if not self._outstanding:
                return

    def _settled(self, message: Message) -> None:
        self._crashes.pop(id(message), None)
        self._outstanding -= 1
        if not self._outstanding:
            self._idle.set()

    def _log(self, line: str) -> None:
        self.trace.append(line)
        if hypothesis.currently_in_test_context():
            hypothesis.note(f"chaos: {line}")

    def _crashing(self, handler: HandlerFunc) -> HandlerFunc:
        async def run(msg: Message) -> HandlerResult:
            fault = self._crashes.pop(id(msg), None)
            if fault is None:
                return await handler(msg)
            label = _label_of(msg)
            if fault.n == 0:
                await handler(msg)
                self._log(f"{label}: handler returned, CRASH before its ack")
                raise ChaosCrash(f"{label}: crashed after the handler returned")
            task = trio.lowlevel.current_task()
            with trio.CancelScope() as scope:
                self._crash_points.watched[task] = [scope, fault.n]
                try:
                    await handler(msg)
                finally:
                    self._crash_points.watched.pop(task, None)
            if scope.cancelled_caught:
                self._log(f"{label}: CRASH at the handler's schedule point {fault.n}")
            else:
                self._log(f"{label}: handler returned before point {fault.n}, CRASH before ack")
            raise ChaosCrash(f"{label}: crashed")

        return run


def _default_inner() -> AbstractAsyncContextManager[Provider]:
    from ..memory import open_memory_provider

    return open_memory_provider()


class _ChaosSteps:
    """The chaos provider's own steps around its router's: none to start (the
    wrapped provider runs already); at the end, what is still open ends, as
    the wrapped provider's drain does. The wrapped provider drains after."""

    def __init__(self, provider: ChaosProvider) -> None:
        self.budget = provider.router.config.close_timeout
        self._provider = provider

    async def start(self, nursery: trio.Nursery) -> None:
        await trio.lowlevel.checkpoint()

    async def abort(self) -> None:
        await trio.lowlevel.checkpoint()

    def drain_steps(self) -> list[DrainStep]:
        return [DrainStep("subscriptions", self._end_subscriptions)]

    async def _end_subscriptions(self) -> None:
        for subscription in list(self._provider._subscriptions):
            subscription._close(ended=True)
        await trio.lowlevel.cancel_shielded_checkpoint()

    def stop(self) -> None:
        pass


@asynccontextmanager
async def open_chaos_provider(
    schedule: ChaosSchedule, inner: ProviderFactory | None = None, *, hold_timeout: float = 0.1
) -> AsyncIterator[ChaosProvider]:
    """Run ``inner()`` (default: ``open_memory_provider()``) wrapped in chaos.

    The yielded :class:`ChaosProvider` publishes through the wrapped provider;
    its subscriber and its router receive through it, with ``schedule``'s
    faults applied: duplicates, lost acks, held-back (reordered) messages and,
    for the router's handlers, crashes. Delivery stays at-least-once: no
    message is lost, every fault ends in a redelivery or an extra copy.

    Leaving the block drains the chaos router (as the wrapped provider
    drains its own), then the wrapped provider.

    Args:
        schedule: the faults, usually drawn from :func:`chaos_schedules`.
        inner: a callable returning the wrapped provider's async context
            manager, e.g. ``functools.partial(open_memory_provider, config)``.
        hold_timeout: the longest a held message waits for the messages that
            should overtake it (trio time: under a ``MockClock`` it costs
            nothing; with a real clock, keep it short).
    """
    factory = _default_inner if inner is None else inner
    async with factory() as wrapped:
        provider = ChaosProvider(schedule, wrapped, hold_timeout=hold_timeout)
        trio.lowlevel.add_instrument(provider._crash_points)
        try:
            async with run_provider(provider, _ChaosSteps(provider)):
                yield provider
        finally:
            trio.lowlevel.remove_instrument(provider._crash_points)
