"""Property tests: the in-memory provider and the router against a model.

Each hypothesis example is a list of operations interpreted inside ONE
``trio.run`` with its own ``MockClock(autojump_threshold=0)``: time moves only
when every task is blocked, so delayed nacks and handler deadlines fire at
exact, reproducible times. After every operation the driver waits for
``trio.testing.wait_all_tasks_blocked()`` and checks the model.

What is checked (see ``issues show 2``, item 10):

* every message published reaches every group whose pattern matches (and
  every private subscription open at the time) at least once, or is
  reported in ``provider.undelivered`` after close, with its attempt count;
* a message acked is never delivered again to that group; one group never
  has the same message in two members' hands;
* a nacked message comes back to the same group with ``attempt`` exactly
  one higher, not before its ``delay``; one never handed out keeps its count;
* per subscriber, first deliveries keep publish order;
* closing a subscription gives its unacked messages to the group's
  other/next member;
* router: a handler that returns acks (after its output was published), one
  that raises or overruns a deadline middleware nacks; it runs at most
  ``concurrency`` messages at once, and exactly that many while work waits;
* closing the provider (normally, by error, by cancelling an enclosing
  scope) drains router -> subscriber -> publisher: in-flight handlers finish
  within ``close_timeout`` and their output is published, nothing starts
  after intake stopped, ``publish`` then raises ``ProviderClosedError``, and
  no task is left.

Part 3 holds minimal regression tests for the bugs these properties found.
Run ``pytest --hypothesis-show-statistics`` to see how often the interesting
interleavings (``hypothesis.event``) occur.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Literal, get_args

import pytest
import trio
import trio.testing
from hypothesis import event, given
from hypothesis import strategies as st

from piko_trio_events import (
    HandlerFunc,
    MemoryConfig,
    Message,
    ProviderClosedError,
    RouterConfig,
    open_memory_provider,
)
from piko_trio_events.memory import MemoryProvider, MemorySubscription, Undelivered

# -- helpers ------------------------------------------------------------------------------


def _run_with_mock_clock(main: Callable[[], Awaitable[None]]) -> None:
    """One fresh trio run and one fresh MockClock per example."""
    clock = trio.testing.MockClock(autojump_threshold=0)
    trio.run(main, clock=clock)


def _matches(pattern: str, topic: str) -> bool:
    """NATS subject matching, written independently of the package's."""
    p, t = pattern.split("."), topic.split(".")
    for i, token in enumerate(p):
        if token == ">":
            return len(t) > i
        if i >= len(t) or (token != "*" and token != t[i]):
            return False
    return len(p) == len(t)


class _Boom(Exception):
    """Raised inside the provider's block to close it by error."""


def _unwrap_boom(exc: BaseException) -> bool:
    """True if ``exc`` is _Boom, possibly wrapped in (nested) exception groups."""
    if isinstance(exc, _Boom):
        return True
    if isinstance(exc, BaseExceptionGroup):
        return all(_unwrap_boom(e) for e in exc.exceptions)
    return False


def _tasks_below(task: trio.lowlevel.Task) -> list[trio.lowlevel.Task]:
    found: list[trio.lowlevel.Task] = []
    for nursery in task.child_nurseries:
        for child in nursery.child_tasks:
            found.append(child)
            found.extend(_tasks_below(child))
    return found


CloseMode = Literal["normal", "cancel", "error"]
close_modes: st.SearchStrategy[CloseMode] = st.sampled_from(get_args(CloseMode))


# == part 1: publish / subscribe / ack / nack / close, against a model ===================

PUB_TOPICS = ("t.a", "t.b", "u")
PATTERNS = ("t.a", "t.*", ">", "u")
GROUPS = (None, "g1", "g1", "g2")
NACK_DELAYS = (None, 0.0, 0.5, 2.0, 7.0)


@dataclass(frozen=True)
class Subscribe:
    pattern: int
    group: int


@dataclass(frozen=True)
class Publish:
    topic: int
    count: int


@dataclass(frozen=True)
class Pull:
    """``receive_nowait`` up to ``count`` times on one member."""

    member: int
    count: int


@dataclass(frozen=True)
class PullAll:
    """``receive_nowait`` until WouldBlock, then: nothing due may be left."""

    member: int


@dataclass(frozen=True)
class Drain:
    """Round-robin ``receive_nowait`` over every open member until none gets one."""


@dataclass(frozen=True)
class NackAll:
    """Nack every message held, newest first."""

    delay: float | None


@dataclass(frozen=True)
class Ack:
    held: int


@dataclass(frozen=True)
class Nack:
    held: int
    delay: float | None


@dataclass(frozen=True)
class Resettle:
    """ack/nack a message again: idempotent, no second redelivery."""

    settled: int


@dataclass(frozen=True)
class CloseSub:
    member: int
    how: Literal["exit", "aclose", "close"]


@dataclass(frozen=True)
class NackThenClose:
    """Nack a held message, then close a member of its group, with no checkpoint between."""

    held: int


@dataclass(frozen=True)
class CloseTwo:
    """Close a member, then at once (no checkpoint) another of its group, preferably
    one blocked in receive() in another task: what the first held must not come
    out of the second."""

    member: int


@dataclass(frozen=True)
class Wait:
    """Start a task blocked in ``receive()`` (exercises hand-off and wake-up)."""

    member: int


@dataclass(frozen=True)
class CancelWait:
    member: int


@dataclass(frozen=True)
class Sleep:
    seconds: float


Op = (
    Subscribe
    | Publish
    | Pull
    | PullAll
    | Drain
    | Ack
    | Nack
    | NackAll
    | Resettle
    | CloseSub
    | NackThenClose
    | CloseTwo
    | Wait
    | CancelWait
    | Sleep
)

_idx = st.integers(0, 15)
_publish = st.builds(Publish, st.integers(0, len(PUB_TOPICS) - 1), st.integers(1, 3))
_pull = st.one_of(st.builds(Pull, _idx, st.integers(1, 4)), st.builds(PullAll, _idx))
_settle = st.one_of(st.builds(Ack, _idx), st.builds(Nack, _idx, st.sampled_from(NACK_DELAYS)))
provider_ops: st.SearchStrategy[Op] = st.one_of(
    # Repeated entries weigh the common operations up.
    _publish,
    _publish,
    _publish,
    _pull,
    _pull,
    _settle,
    _settle,
    _settle,
    st.builds(Subscribe, st.integers(0, len(PATTERNS) - 1), st.integers(0, len(GROUPS) - 1)),
    st.just(Drain()),
    st.builds(NackAll, st.sampled_from(NACK_DELAYS)),
    st.builds(Resettle, _idx),
    st.builds(CloseSub, _idx, st.sampled_from(["exit", "aclose", "close"])),
    st.builds(NackThenClose, _idx),
    st.builds(CloseTwo, _idx),
    st.builds(Wait, _idx),
    st.builds(Wait, _idx),
    st.builds(CancelWait, _idx),
    st.builds(Sleep, st.sampled_from([0.5, 1.0, 3.0, 10.0])),
)
initial_subscriptions = st.lists(
    st.builds(Subscribe, st.integers(0, len(PATTERNS) - 1), st.integers(0, len(GROUPS) - 1)),
    min_size=1,
    max_size=4,
)


@dataclass
class Sent:
    index: int
    topic: str
    message: Message


@dataclass
class GroupModel:
    """What one group (a named group, or one private subscription) must see."""

    pattern: str
    name: str | None
    order: list[str] = field(default_factory=list)
    state: dict[str, Literal["pending", "held", "acked"]] = field(default_factory=dict)
    attempts: dict[str, int] = field(default_factory=dict)
    due: dict[str, float] = field(default_factory=dict)
    last_holder: dict[str, int] = field(default_factory=dict)
    how_returned: dict[str, str] = field(default_factory=dict)
    open_members: set[int] = field(default_factory=set)
    removed: bool = False


@dataclass
class Waiter:
    scope: trio.CancelScope
    outcome: str = "waiting"


@dataclass
class MemberModel:
    id: int
    group: GroupModel
    context: AbstractAsyncContextManager[MemorySubscription]
    sub: MemorySubscription
    open: bool = True
    last_first_index: int = -1
    waiter: Waiter | None = None
    past_waiters: list[Waiter] = field(default_factory=list)
    nacked_here: int = 0


class ProviderModel:
    def __init__(self, provider: MemoryProvider) -> None:
        self.provider = provider
        self.sent: dict[str, Sent] = {}
        self.groups: dict[tuple[str, str], GroupModel] = {}
        self.private: list[GroupModel] = []
        self.members: list[MemberModel] = []
        self.outstanding: list[tuple[MemberModel, Message]] = []
        self.settled: list[tuple[Message, Literal["acked", "nacked"]]] = []
        self.deliveries = 0
        self.closing = False
        self.private_open_at_close: list[GroupModel] = []
        self.nursery: trio.Nursery | None = None

    # -- the driver's operations ---------------------------------------------------------

    async def subscribe(self, op: Subscribe) -> None:
        pattern, name = PATTERNS[op.pattern], GROUPS[op.group]
        if name is None:
            group = GroupModel(pattern, None)
            self.private.append(group)
        else:
            existing = self.groups.get((pattern, name))
            if existing is None:
                group = self.groups[(pattern, name)] = GroupModel(pattern, name)
            else:
                group = existing
                if group.open_members:
                    event("competing members: a second member joins an open group")
        context = self.provider.subscriber.subscribe(pattern, group=name)
        sub = await context.__aenter__()
        assert isinstance(sub, MemorySubscription)
        member = MemberModel(len(self.members), group, context, sub)
        group.open_members.add(member.id)
        self.members.append(member)

    def live_groups(self) -> list[GroupModel]:
        return [*self.groups.values(), *(g for g in self.private if not g.removed)]

    async def publish(self, op: Publish) -> None:
        topic = PUB_TOPICS[op.topic]
        batch = []
        targets = [g for g in self.live_groups() if _matches(g.pattern, topic)]
        for _ in range(op.count):
            index = len(self.sent)
            msg = Message(f"p{index}".encode(), {"index": str(index), "topic": topic})
            self.sent[msg.uuid] = Sent(index, topic, msg)
            batch.append(msg)
            # Registered before publishing: a waiting receiver may get it at once.
            for group in targets:
                group.order.append(msg.uuid)
                group.state[msg.uuid] = "pending"
                group.attempts[msg.uuid] = 0
                group.due[msg.uuid] = -math.inf
        if len(targets) > 1:
            event("fan-out: one publish reaches several groups")
        await self.provider.publisher.publish(topic, *batch)

    def on_delivery(self, member: MemberModel, msg: Message) -> None:
        """Check one delivery against the model and record it."""
        group = member.group
        uuid = msg.uuid
        assert member.open, f"member {member.id} received {msg!r} after it was closed"
        assert not self.closing, f"member {member.id} received {msg!r} while the provider closed"
        assert msg.delivery is not None
        sent = self.sent.get(uuid)
        assert sent is not None, f"{msg!r} was never published"
        assert msg == sent.message
        assert msg.delivery.topic == sent.topic
        state = group.state.get(uuid)
        assert state is not None, (
            f"{msg!r} delivered to group {group.name!r} ({group.pattern}) that should not get it"
        )
        assert state != "acked", f"{msg!r} delivered again to {group.name!r} after it was acked"
        assert state != "held", (
            f"{msg!r} delivered to member {member.id} while member "
            f"{group.last_holder[uuid]} of the same group still holds it"
        )
        now = trio.current_time()
        assert now >= group.due[uuid], f"{msg!r} redelivered at {now}, before {group.due[uuid]}"
        attempt = msg.delivery.attempt
        assert attempt == group.attempts[uuid] + 1, (
            f"{msg!r}: attempt {attempt} after {group.attempts[uuid]} deliveries to this group"
        )
        assert msg.delivery.redelivered == (attempt > 1)
        if attempt == 1:
            assert sent.index > member.last_first_index, (
                f"member {member.id} got message #{sent.index} after #{member.last_first_index}"
            )
            member.last_first_index = sent.index
        else:
            how = group.how_returned.get(uuid, "?")
            event(f"redelivered after {how}")
            if group.last_holder.get(uuid) != member.id:
                event("redelivered to another member of the group")
            if attempt >= 3:
                event("attempt >= 3")
        if len(group.open_members) > 1:
            event("competing members: delivery while the group has several members")
        group.attempts[uuid] = attempt
        group.state[uuid] = "held"
        group.last_holder[uuid] = member.id
        self.outstanding.append((member, msg))
        self.deliveries += 1

    def member(self, index: int) -> MemberModel | None:
        return self.members[index % len(self.members)] if self.members else None

    async def pull(self, member: MemberModel, count: int | None) -> None:
        if not member.open:
            with pytest.raises(trio.ClosedResourceError):
                member.sub.receive_nowait()
            return
        n = 0
        while count is None or n < count:
            try:
                msg = member.sub.receive_nowait()
            except trio.WouldBlock:
                self.check_nothing_due(member.group)
                break
            self.on_delivery(member, msg)
            n += 1

    def check_nothing_due(self, group: GroupModel) -> None:
        """The group's queue is empty: then nothing that is due may be pending."""
        now = trio.current_time()
        lost = [u for u, s in group.state.items() if s == "pending" and group.due[u] <= now]
        assert not lost, (
            f"group {group.name!r} ({group.pattern}) has nothing to deliver, yet messages "
            f"{[self.sent[u].index for u in lost]} are due"
        )

    async def drain(self) -> None:
        progress = True
        while progress:
            progress = False
            for member in self.members:
                if not member.open:
                    continue
                try:
                    msg = member.sub.receive_nowait()
                except trio.WouldBlock:
                    self.check_nothing_due(member.group)
                    continue
                self.on_delivery(member, msg)
                progress = True

    async def ack(self, index: int) -> None:
        if not self.outstanding:
            return
        member, msg = self.outstanding.pop(index % len(self.outstanding))
        member.group.state[msg.uuid] = "acked"
        assert await msg.ack() is True
        assert msg.acked
        assert not msg.nacked
        self.settled.append((msg, "acked"))

    async def nack(self, index: int, delay: float | None) -> None:
        if not self.outstanding:
            return
        member, msg = self.outstanding.pop(index % len(self.outstanding))
        self.model_nack(member, msg, delay)
        assert await msg.nack(delay) is True
        assert msg.nacked
        assert not msg.acked

    def model_nack(self, member: MemberModel, msg: Message, delay: float | None) -> None:
        group = member.group
        group.state[msg.uuid] = "pending"
        group.due[msg.uuid] = trio.current_time() + (delay or 0.0)
        group.how_returned[msg.uuid] = "a delayed nack" if delay else "a nack"
        member.nacked_here += 1
        self.settled.append((msg, "nacked"))

    async def waiting_mate(self, member: MemberModel) -> MemberModel | None:
        """Another open member of ``member``'s group, blocked in receive() in its own
        task (started here if need be); None if the group has no other member."""
        group = member.group
        mates = [m for m in self.members if m.open and m.group is group and m is not member]
        if not mates:
            if group.name is None:
                return None
            await self.subscribe(Subscribe(PATTERNS.index(group.pattern), GROUPS.index(group.name)))
            mates = [self.members[-1]]
        mates.sort(key=lambda m: m.waiter is None)
        mate = mates[0]
        if mate.waiter is None:
            self.start_waiter(mate)
            await trio.testing.wait_all_tasks_blocked()  # it may take a pending message
        return mate

    def held_with_mates(self) -> list[int]:
        """Indexes of held messages whose group has (or can have) another member."""
        return [
            i
            for i, (holder, _) in enumerate(self.outstanding)
            if holder.group.name is not None
            or any(m.open and m.group is holder.group and m is not holder for m in self.members)
        ]

    async def nack_then_close(self, index: int) -> None:
        """Nack a held message, then close a member of its group blocked in receive()
        (or the holder itself), with no checkpoint of the test's between."""
        if not self.outstanding:
            return
        candidates = self.held_with_mates() or list(range(len(self.outstanding)))
        member, msg = self.outstanding[candidates[index % len(candidates)]]
        mate = await self.waiting_mate(member)
        self.outstanding.remove((member, msg))
        closing = mate if mate is not None else member
        if closing.waiter is not None:
            event("nack-then-close: nacked while the member closed next waits in receive()")
        self.model_nack(member, msg, None)
        assert await msg.nack() is True
        # The nack may or may not have let that member's receive() task run; if it
        # did not, the message handed to it must not come out of it once closed.
        if closing.open:
            self.returned_by_close(closing)
            closing.sub.close()

    async def close_two(self, index: int) -> None:
        """Close a member holding messages, then at once (no checkpoint) another of its
        group blocked in receive(): what the first held must not come out of the second."""
        candidates = self.held_with_mates()
        if not candidates:
            return
        first = self.outstanding[candidates[index % len(candidates)]][0]
        mate = await self.waiting_mate(first)
        if mate is None or not first.open:
            return
        if mate.waiter is not None and any(h is first for h, _ in self.outstanding):
            event("close-then-close: unacked messages go back while a mate waits")
        self.returned_by_close(first)
        first.sub.close()
        if mate.open:
            self.returned_by_close(mate)
            mate.sub.close()

    async def resettle(self, index: int) -> None:
        if not self.settled:
            return
        msg, how = self.settled[index % len(self.settled)]
        if how == "acked":
            assert await msg.ack() is True
            assert await msg.nack() is False
        else:
            assert await msg.nack() is True
            assert await msg.ack() is False
        event("ack/nack repeated on a settled message")

    def returned_by_close(self, member: MemberModel) -> None:
        """Model what closing ``member`` does to the messages it holds."""
        group = member.group
        member.open = False
        group.open_members.discard(member.id)
        kept = []
        for holder, msg in self.outstanding:
            if holder is member:
                group.state[msg.uuid] = "pending"
                group.due[msg.uuid] = -math.inf
                group.how_returned[msg.uuid] = "its member closed"
                self.settled.append((msg, "nacked"))
            else:
                kept.append((holder, msg))
        returned = len(self.outstanding) - len(kept)
        self.outstanding = kept
        if returned and group.name is not None:
            event("subscription closed holding unacked messages")
        pending = any(s == "pending" for s in group.state.values())
        if group.name is not None and pending and member.nacked_here:
            event("nack-then-close: closed after nacking, group has pending messages")
        if group.name is None:
            group.removed = True

    async def close_sub(self, member: MemberModel, how: str) -> None:
        if not member.open:
            return
        held = [msg for holder, msg in self.outstanding if holder is member]
        self.returned_by_close(member)
        if how == "exit":
            await member.context.__aexit__(None, None, None)
        elif how == "aclose":
            await member.sub.aclose()
        else:
            member.sub.close()
        for msg in held:
            assert msg.nacked, f"{msg!r} still pending after its subscription closed"
            assert await msg.ack() is False

    async def waiter(self, member: MemberModel, waiter: Waiter) -> None:
        try:
            with waiter.scope:
                try:
                    msg = await member.sub.receive()
                except trio.ClosedResourceError:
                    waiter.outcome = "closed"
                except trio.EndOfChannel:
                    waiter.outcome = "ended"
                else:
                    waiter.outcome = "message"
                    self.on_delivery(member, msg)
            if waiter.scope.cancelled_caught:
                waiter.outcome = "cancelled"
        finally:
            if member.waiter is waiter:
                member.waiter = None
                member.past_waiters.append(waiter)

    def start_waiter(self, member: MemberModel) -> None:
        if not member.open or member.waiter is not None:
            return
        assert self.nursery is not None
        member.waiter = Waiter(trio.CancelScope())
        self.nursery.start_soon(self.waiter, member, member.waiter)

    def cancel_waiter(self, member: MemberModel) -> None:
        if member.waiter is not None:
            member.waiter.scope.cancel()

    # -- checks ----------------------------------------------------------------------------

    def check_quiescent(self) -> None:
        """With every task blocked: a group with a waiting receiver has nothing due."""
        now = trio.current_time()
        for member in self.members:
            if member.waiter is None or not member.open:
                continue
            group = member.group
            due = [u for u, s in group.state.items() if s == "pending" and group.due[u] <= now]
            assert not due, (
                f"member {member.id} waits in receive() while messages "
                f"{[self.sent[u].index for u in due]} are due in its group"
            )
        for member in self.members:
            for waiter in member.past_waiters:
                if not member.open and waiter.outcome == "closed":
                    event("a receive() blocked in another task is woken by close")

    def check_after_close(self, undelivered: list[Undelivered]) -> None:
        # Who reported what: (pattern, group, uuid) -> attempts, exactly once each.
        reported: dict[tuple[str, str | None, str], int] = {}
        reported_private: Counter[tuple[str, str, int]] = Counter()
        for entry in undelivered:
            sent = self.sent.get(entry.message.uuid)
            assert sent is not None, entry
            assert entry.message == sent.message, entry
            if entry.group is None:
                reported_private[(entry.pattern, entry.message.uuid, entry.attempts)] += 1
                continue
            reported_key = (entry.pattern, entry.group, entry.message.uuid)
            assert reported_key not in reported, f"reported twice as undelivered: {entry!r}"
            reported[reported_key] = entry.attempts
        for group in self.groups.values():
            for uuid in group.order:
                key = (group.pattern, group.name, uuid)
                if group.state[uuid] == "acked":
                    assert key not in reported, f"acked yet reported undelivered: {key}"
                else:
                    assert key in reported, (
                        f"message #{self.sent[uuid].index} neither acked by group "
                        f"{group.name!r} ({group.pattern}) nor reported undelivered"
                    )
                    assert reported.pop(key) == group.attempts[uuid], key
        # Private subscriptions still open at close are ended by the provider: what
        # they held or never got is reported too, with group None.
        expected_private: Counter[tuple[str, str, int]] = Counter()
        for group in self.private_open_at_close:
            for uuid in group.order:
                if group.state[uuid] != "acked":
                    expected_private[(group.pattern, uuid, group.attempts[uuid])] += 1
        assert reported_private == expected_private, (reported_private, expected_private)
        if expected_private:
            event("close reported an open private subscription's messages")
        assert not reported, f"reported undelivered but never expected: {reported}"


async def _provider_example(
    subs: list[Subscribe], ops: list[Op], close: CloseMode
) -> ProviderModel:
    model: ProviderModel | None = None
    open_at_close: list[MemberModel] = []
    async with trio.open_nursery() as test_nursery:
        with trio.CancelScope() as outer:
            try:
                async with open_memory_provider(MemoryConfig()) as provider:
                    model = ProviderModel(provider)
                    model.nursery = test_nursery
                    for op in [*subs, *ops]:
                        await _interpret(model, op)
                        await trio.testing.wait_all_tasks_blocked()
                        model.check_quiescent()
                    open_at_close = [m for m in model.members if m.open]
                    model.private_open_at_close = [g for g in model.private if not g.removed]
                    model.closing = True
                    if close == "cancel":
                        outer.cancel()
                        await trio.sleep_forever()
                    elif close == "error":
                        raise _Boom
            except BaseException as exc:
                if not _unwrap_boom(exc):
                    raise
                assert close == "error"
        assert outer.cancelled_caught == (close == "cancel")
        assert model is not None
        provider = model.provider
        await trio.testing.wait_all_tasks_blocked()
        assert not provider.running
        # Every member still open was ended: its held messages went back, nacked.
        for holder, msg in model.outstanding:
            assert msg.nacked, f"{msg!r} held by member {holder.id} not nacked by the close"
            assert await msg.ack() is False
        for member in open_at_close:
            if member.waiter is not None:
                pytest.fail(f"member {member.id}'s receive() still blocked after close")
            for waiter in member.past_waiters[-1:]:
                if waiter.outcome == "ended":
                    event("a receive() blocked at close ends with EndOfChannel")
            with pytest.raises((trio.EndOfChannel, trio.ClosedResourceError)):
                await member.sub.receive()
            member.open = False
        for holder, msg in model.outstanding:
            group = holder.group
            group.state[msg.uuid] = "pending"
        model.outstanding = []
        with pytest.raises(ProviderClosedError):
            await provider.publisher.publish("t.a", Message(b"late"))
        with pytest.raises(ProviderClosedError):
            provider.subscriber.subscribe("t.a")
        model.check_after_close(provider.undelivered)
        assert not test_nursery.child_tasks, "tasks left running after the provider closed"
    me = trio.lowlevel.current_task()
    assert not _tasks_below(me), f"tasks left running: {_tasks_below(me)}"
    return model


async def _interpret(model: ProviderModel, op: Op) -> None:
    if isinstance(op, Subscribe):
        await model.subscribe(op)
    elif isinstance(op, Publish):
        await model.publish(op)
    elif isinstance(op, Ack):
        await model.ack(op.held)
    elif isinstance(op, Nack):
        await model.nack(op.held, op.delay)
    elif isinstance(op, Resettle):
        await model.resettle(op.settled)
    elif isinstance(op, Sleep):
        await trio.sleep(op.seconds)
    elif isinstance(op, Drain):
        await model.drain()
    elif isinstance(op, NackAll):
        for i in reversed(range(len(model.outstanding))):
            await model.nack(i, op.delay)
    elif isinstance(op, NackThenClose):
        await model.nack_then_close(op.held)
    elif isinstance(op, CloseTwo):
        await model.close_two(op.member)
    else:
        member = model.member(op.member)
        if member is None:
            return
        if isinstance(op, Pull):
            await model.pull(member, op.count)
        elif isinstance(op, PullAll):
            await model.pull(member, None)
        elif isinstance(op, CloseSub):
            await model.close_sub(member, op.how)
        elif isinstance(op, Wait):
            model.start_waiter(member)
        else:
            model.cancel_waiter(member)


@given(
    subs=initial_subscriptions,
    ops=st.lists(provider_ops, min_size=20, max_size=100),
    close=close_modes,
)
def test_memory_provider_matches_model(
    subs: list[Subscribe], ops: list[Op], close: CloseMode
) -> None:
    """Delivery, redelivery, competition, order and close, against the model."""
    length = ">= 40" if len(ops) >= 40 else ">= 20" if len(ops) >= 20 else "< 20"
    event(f"schedule length: {length}")
    event(f"provider closed by: {close}")
    result: list[ProviderModel] = []

    async def main() -> None:
        result.append(await _provider_example(subs, ops, close))

    _run_with_mock_clock(main)
    model = result[0]
    if model.provider.undelivered:
        event("close reported undelivered messages")
    if model.deliveries >= 20:
        event("20 or more deliveries in one example")


# == part 2: the router: handlers that succeed, raise, run slow or hang; ordered drain ====

ROUTER_TOPICS = ("in.a", "in.b")
HANDLER_PATTERNS = ("in.a", "in.*", "in.>")
MAX_HANDLERS = 3
#: A router-level middleware cuts every handler off after this long (it then nacks).
HANDLER_DEADLINE = 5.0
SETTLE_SECONDS = 1000.0

Behaviour = Literal["ok", "slow", "raise", "slow_raise", "hang"]
DURATION: dict[str, float] = {
    "ok": 0.0,
    "slow": 1.5,
    "raise": 0.0,
    "slow_raise": 0.7,
    "hang": HANDLER_DEADLINE,
}


@dataclass(frozen=True)
class HandlerSpec:
    pattern: int
    concurrency: int
    output: bool


@dataclass(frozen=True)
class RPublish:
    """Publish one message per plan; ``plan[h]`` is handler h's behaviour per attempt
    (then ``ok`` once the plan runs out)."""

    topic: int
    plans: tuple[tuple[tuple[Behaviour, ...], ...], ...]


@dataclass(frozen=True)
class RAddHandler:
    spec: HandlerSpec


@dataclass(frozen=True)
class RSleep:
    seconds: float


@dataclass(frozen=True)
class RSettle:
    """Sleep long enough for every plan to run out: everything must be acked."""


ROp = RPublish | RAddHandler | RSleep | RSettle

_behaviour = st.sampled_from(["ok", "slow", "raise", "slow_raise", "hang"])
_plan = st.lists(
    st.lists(_behaviour, max_size=3).map(tuple), min_size=MAX_HANDLERS, max_size=MAX_HANDLERS
).map(tuple)
handler_specs = st.builds(
    HandlerSpec,
    st.integers(0, len(HANDLER_PATTERNS) - 1),
    st.sampled_from([1, 1, 2, 3]),
    st.booleans(),
)
router_ops: st.SearchStrategy[ROp] = st.one_of(
    st.builds(
        RPublish,
        st.integers(0, len(ROUTER_TOPICS) - 1),
        st.lists(_plan, min_size=1, max_size=3).map(tuple),
    ),
    st.builds(RPublish, st.integers(0, len(ROUTER_TOPICS) - 1), st.tuples(_plan)),
    st.builds(RAddHandler, handler_specs),
    st.builds(RSleep, st.sampled_from([0.5, 1.0, 2.0, 6.0])),
    st.builds(RSleep, st.sampled_from([0.5, 1.0, 2.0, 6.0])),
    st.just(RSettle()),
)


@dataclass
class Invocation:
    handler: int
    index: int
    attempt: int
    start: float
    behaviour: str
    msg: Message
    end: float | None = None
    outcome: str = "running"  # returned | raised | timed_out | cancelled


@dataclass
class HandlerModel:
    number: int
    name: str
    pattern: str
    spec: HandlerSpec
    expected: list[int] = field(default_factory=list)
    running: int = 0
    last_first_index: int = -1


class _HandlerFailed(Exception):
    pass


class RouterModel:
    def __init__(
        self, provider: MemoryProvider, close_timeout: float, stop: trio.CancelScope
    ) -> None:
        self.provider = provider
        self.stop = stop
        self.violations: list[AssertionError] = []
        self.close_timeout = close_timeout
        self.handlers: list[HandlerModel] = []
        self.sent: list[tuple[str, Message, tuple[tuple[Behaviour, ...], ...]]] = []
        self.invocations: dict[tuple[int, int], list[Invocation]] = {}
        self.by_message: dict[int, Invocation] = {}
        self.drain_started: float | None = None

    def add_handler(self, spec: HandlerSpec) -> None:
        if len(self.handlers) >= MAX_HANDLERS:
            return
        number = len(self.handlers)
        handler = HandlerModel(number, f"h{number}", HANDLER_PATTERNS[spec.pattern], spec)
        self.handlers.append(handler)

        async def handle(msg: Message) -> Message | None:
            return await self.handle(handler, msg)

        self.provider.router.add_handler(
            handler.name,
            handler.pattern,
            handle,
            publish_topic="out" if spec.output else None,
            concurrency=spec.concurrency,
        )
        if self.sent:
            event("handler added while the router runs, after messages were published")

    def deadline(self, inner: HandlerFunc) -> HandlerFunc:
        async def wrapped(msg: Message) -> Sequence[Message] | Message | None:
            try:
                with trio.fail_after(HANDLER_DEADLINE):
                    return await inner(msg)
            except trio.TooSlowError:
                self.by_message[id(msg)].outcome = "timed_out"
                event("handler cut off by the deadline middleware (nacked)")
                raise

        return wrapped

    async def publish(self, op: RPublish) -> None:
        topic = ROUTER_TOPICS[op.topic]
        batch = []
        for plan in op.plans:
            index = len(self.sent)
            msg = Message(f"in{index}".encode(), {"index": str(index)})
            self.sent.append((topic, msg, plan))
            batch.append(msg)
            for handler in self.handlers:
                if _matches(handler.pattern, topic):
                    handler.expected.append(index)
        await self.provider.publisher.publish(topic, *batch)

    def check_start(self, handler: HandlerModel, msg: Message) -> Invocation:
        """Check that ``handler`` may start on ``msg`` now; record the invocation."""
        assert msg.delivery is not None
        index = int(msg.metadata["index"])
        attempt = msg.delivery.attempt
        now = trio.current_time()
        assert self.drain_started is None, (
            f"{handler.name} started message #{index} after the drain began (intake stopped)"
        )
        assert index in handler.expected, f"{handler.name} got #{index}, not meant for it"
        previous = self.invocations.setdefault((handler.number, index), [])
        assert attempt == len(previous) + 1, (
            f"{handler.name}: #{index} attempt {attempt} after {len(previous)} deliveries"
        )
        assert all(p.end is not None for p in previous), (
            f"{handler.name}: #{index} delivered again while still being handled"
        )
        assert not any(p.outcome == "returned" for p in previous), (
            f"{handler.name}: #{index} delivered again after it was handled and acked"
        )
        assert handler.running < handler.spec.concurrency, (
            f"{handler.name} runs more than {handler.spec.concurrency} at once"
        )
        if handler.spec.concurrency == 1 and attempt == 1:
            assert index > handler.last_first_index, (
                f"{handler.name} got #{index} after #{handler.last_first_index}"
            )
            handler.last_first_index = index
        if handler.running:
            event("handler runs several messages at once")
        if attempt >= 3:
            event("router redelivered a message a third time")
        plan = self.sent[index][2][handler.number]
        behaviour = plan[attempt - 1] if attempt <= len(plan) else "ok"
        invocation = Invocation(handler.number, index, attempt, now, behaviour, msg)
        previous.append(invocation)
        self.by_message[id(msg)] = invocation
        return invocation

    async def handle(self, handler: HandlerModel, msg: Message) -> Message | None:
        try:
            invocation = self.check_start(handler, msg)
        except AssertionError as exc:
            # Raised here, the router would take it for a handler failure and nack
            # (maybe forever): record it, stop the example, raise it after the close.
            self.violations.append(exc)
            self.stop.cancel()
            await trio.sleep_forever()
        index, attempt, behaviour = invocation.index, invocation.attempt, invocation.behaviour
        handler.running += 1
        try:
            if behaviour == "hang":
                await trio.sleep_forever()
            if DURATION[behaviour]:
                await trio.sleep(DURATION[behaviour])
            if behaviour in ("raise", "slow_raise"):
                invocation.outcome = "raised"
                raise _HandlerFailed(f"{handler.name} fails #{index} (attempt {attempt})")
            invocation.outcome = "returned"
            if handler.spec.output:
                return Message(f"out:{handler.name}:{index}".encode(), {"index": str(index)})
            return None
        except trio.Cancelled:
            invocation.outcome = "cancelled"
            raise
        finally:
            invocation.end = trio.current_time()
            handler.running -= 1

    def check_quiescent(self) -> None:
        """With every task blocked: a handler with work waiting runs at full concurrency
        (an idle worker would have taken it)."""
        for handler in self.handlers:
            waiting = 0
            for index in handler.expected:
                invocations = self.invocations.get((handler.number, index), [])
                if not any(i.outcome == "returned" or i.end is None for i in invocations):
                    waiting += 1
            if waiting:
                assert handler.running == handler.spec.concurrency, (
                    f"{handler.name} runs {handler.running} of {handler.spec.concurrency} "
                    f"while {waiting} message(s) wait"
                )
                if handler.spec.concurrency > 1:
                    event("handler at full concurrency with more work waiting")

    def check_settled(self) -> None:
        for handler in self.handlers:
            assert handler.running == 0
            for index in handler.expected:
                invocations = self.invocations.get((handler.number, index), [])
                assert invocations, f"{handler.name} never got #{index}"
                assert invocations[-1].msg.acked, (
                    f"{handler.name} never acked #{index} although its plan ran out: "
                    f"{[(i.attempt, i.behaviour, i.outcome) for i in invocations]}"
                )

    def check_drain(self, drain_ended: float) -> None:
        started = self.drain_started
        assert started is not None
        assert drain_ended - started <= self.close_timeout, (
            f"drain took {drain_ended - started}s, close_timeout is {self.close_timeout}s"
        )
        deadline = started + self.close_timeout
        for invocations in self.invocations.values():
            for inv in invocations:
                assert inv.end is not None, f"{inv} never ended"
                if inv.end < started or inv.start >= started:
                    continue
                natural_end = inv.start + DURATION[inv.behaviour]
                if natural_end < deadline:
                    event("in-flight handler finished during the drain")
                    assert inv.outcome != "cancelled", (
                        f"{inv} was cancelled at {inv.end} though it would end at "
                        f"{natural_end}, before the drain deadline {deadline}"
                    )
                elif natural_end > deadline:
                    event("in-flight handler cancelled at close_timeout")
                    assert inv.outcome == "cancelled", f"{inv} outlived the drain deadline"

    def check_after_close(self, undelivered: list[Undelivered]) -> None:
        inputs: Counter[tuple[str, str | None, str]] = Counter()
        attempts: dict[tuple[str, str | None, str], int] = {}
        outputs: Counter[bytes] = Counter()
        for entry in undelivered:
            if entry.pattern == "out":
                assert entry.group == "audit"
                outputs[entry.message.payload] += 1
                continue
            key = (entry.pattern, entry.group, entry.message.uuid)
            inputs[key] += 1
            attempts[key] = entry.attempts
        assert all(n == 1 for n in inputs.values()), f"reported twice: {inputs}"
        for handler in self.handlers:
            for index in handler.expected:
                msg = self.sent[index][1]
                key = (handler.pattern, handler.name, msg.uuid)
                invocations = self.invocations.get((handler.number, index), [])
                acked = [inv for inv in invocations if inv.msg.acked]
                for inv in invocations:
                    if inv.msg.acked:
                        assert inv.outcome == "returned", inv
                    else:
                        assert inv.msg.nacked, f"{inv}: neither acked nor nacked after close"
                    if inv.outcome in ("raised", "timed_out"):
                        assert inv.msg.nacked, inv
                    if inv.outcome == "returned" and (
                        self.drain_started is None
                        or inv.end is None
                        or inv.end < self.drain_started + self.close_timeout
                    ):
                        assert inv.msg.acked, f"{inv}: returned but not acked"
                assert len(acked) <= 1, f"{handler.name} acked #{index} twice"
                reported = inputs.pop(key, 0)
                assert len(acked) + reported == 1, (
                    f"{handler.name}: #{index} acked {len(acked)}x and reported undelivered "
                    f"{reported}x: {[(i.attempt, i.behaviour, i.outcome) for i in invocations]}"
                )
                if reported:
                    assert attempts[key] == len(invocations), (key, attempts[key], invocations)
                out = f"out:{handler.name}:{index}".encode()
                assert outputs.pop(out, 0) == (len(acked) if handler.spec.output else 0), (
                    f"{handler.name}: output of #{index} published but input not acked, "
                    "or acked without its output"
                )
        assert not inputs, f"reported undelivered but not expected: {inputs}"
        assert not outputs, f"outputs nobody produced: {outputs}"


async def _router_example(
    specs: list[HandlerSpec], ops: list[ROp], close_timeout: float, close: CloseMode
) -> RouterModel:
    config = MemoryConfig(router=RouterConfig(close_timeout=close_timeout))
    model: RouterModel | None = None
    drain_ended = 0.0
    with trio.CancelScope() as outer:
        try:
            async with open_memory_provider(config) as provider:
                model = RouterModel(provider, close_timeout, outer)
                provider.router.add_middleware(model.deadline)
                sink = provider.subscriber.subscribe("out", group="audit")
                await sink.__aenter__()
                for spec in specs:
                    model.add_handler(spec)
                for op in ops:
                    if isinstance(op, RPublish):
                        await model.publish(op)
                    elif isinstance(op, RAddHandler):
                        model.add_handler(op.spec)
                    elif isinstance(op, RSleep):
                        await trio.sleep(op.seconds)
                    else:
                        await trio.sleep(SETTLE_SECONDS)
                        await trio.testing.wait_all_tasks_blocked()
                        model.check_settled()
                        event("router settled: every plan ran out, everything acked")
                    await trio.testing.wait_all_tasks_blocked()
                    model.check_quiescent()
                if any(h.running for h in model.handlers):
                    event("provider closed with handlers in flight")
                model.drain_started = trio.current_time()
                if close == "cancel":
                    outer.cancel()
                    await trio.sleep_forever()
                elif close == "error":
                    raise _Boom
        except BaseException as exc:
            if not _unwrap_boom(exc):
                raise
            assert close == "error"
        drain_ended = trio.current_time()
    assert model is not None
    if model.violations:
        raise model.violations[0]
    assert outer.cancelled_caught == (close == "cancel")
    provider = model.provider
    assert not provider.running
    assert not provider.router.running
    model.check_drain(drain_ended)
    with pytest.raises(ProviderClosedError):
        await provider.publisher.publish("in.a", Message(b"late"))

    async def late(msg: Message) -> None:
        raise AssertionError("must not run")

    with pytest.raises(ProviderClosedError):
        provider.router.add_handler("late", "in.a", late)
    model.check_after_close(provider.undelivered)
    me = trio.lowlevel.current_task()
    assert not _tasks_below(me), f"tasks left running: {_tasks_below(me)}"
    return model


@given(
    specs=st.lists(handler_specs, min_size=1, max_size=2),
    ops=st.lists(router_ops, min_size=3, max_size=30),
    # Often end with fresh work, so that handlers are in flight when the drain begins.
    tail=st.one_of(
        st.just(()),
        st.tuples(
            st.builds(RPublish, st.integers(0, len(ROUTER_TOPICS) - 1), st.tuples(_plan)),
            st.builds(RSleep, st.sampled_from([0.5, 1.0])),
        ),
    ),
    close_timeout=st.sampled_from([30.0, 4.0, 1.0, 0.0]),
    close=close_modes,
)
def test_router_matches_model(
    specs: list[HandlerSpec],
    ops: list[ROp],
    tail: tuple[ROp, ...],
    close_timeout: float,
    close: CloseMode,
) -> None:
    """Handlers ack on return, nack on raise, redeliver with attempt+1; the drain is ordered."""
    event(f"provider closed by: {close}")
    event(f"router close_timeout: {close_timeout}")
    result: list[RouterModel] = []

    async def main() -> None:
        result.append(await _router_example(specs, [*ops, *tail], close_timeout, close))

    _run_with_mock_clock(main)
    model = result[0]
    if sum(len(v) for v in model.invocations.values()) >= 20:
        event("20 or more handler invocations in one example")


# == part 3: the package bugs the properties found, each as a minimal test ================


async def test_a_message_handed_to_a_closing_member_goes_back_to_its_group() -> None:
    """Member A's unacked message goes back when A closes, and is handed to member B,
    blocked in receive() in another task; B is closed before that task runs (two
    ``close()`` calls, no checkpoint between). The task must see ClosedResourceError
    and the message must go back to the group, not come out of the closed member
    (where nothing nacks it any more: lost, and not reported as undelivered)."""
    outcome: list[object] = []
    async with trio.open_nursery() as nursery, open_memory_provider() as provider:
        a = await provider.subscriber.subscribe("t", group="g").__aenter__()
        b = await provider.subscriber.subscribe("t", group="g").__aenter__()
        await provider.publisher.publish("t", Message(b"m"))
        held = a.receive_nowait()

        async def blocked_in_receive() -> None:
            try:
                outcome.append(await b.receive())
            except trio.ClosedResourceError:
                outcome.append("closed")

        nursery.start_soon(blocked_in_receive)
        await trio.testing.wait_all_tasks_blocked()
        a.close()
        b.close()
        await trio.testing.wait_all_tasks_blocked()
        assert outcome == ["closed"]
        async with provider.subscriber.subscribe("t", group="g") as c:
            again = c.receive_nowait()
            assert again == held
            assert again.delivery is not None
            assert again.delivery.attempt == 2
            await again.ack()


async def test_drain_does_not_hand_unacked_messages_to_members_being_ended() -> None:
    """At close, member A's unacked message is requeued while member B of the same group
    still waits in receive() (B's task lives outside the provider's block): it must be
    reported in ``undelivered`` and B must see EndOfChannel, not receive it after the
    provider closed. Which member the drain ends first depends on set order, so try a
    few times."""
    for _ in range(10):
        got: list[object] = []

        async def consume(channel: MemorySubscription, got: list[object] = got) -> None:
            try:
                got.append(await channel.receive())
            except trio.EndOfChannel:
                got.append("end")

        async with trio.open_nursery() as nursery, open_memory_provider() as provider:
            a_context = provider.subscriber.subscribe("t", group="g")
            a = await a_context.__aenter__()
            b_context = provider.subscriber.subscribe("t", group="g")
            b = await b_context.__aenter__()
            await provider.publisher.publish("t", Message(b"m"))
            a.receive_nowait()  # held, never acked
            nursery.start_soon(consume, b)
            await trio.testing.wait_all_tasks_blocked()
        assert got == ["end"]
        assert [u.message.payload for u in provider.undelivered] == [b"m"]


async def test_open_private_subscription_reports_undelivered_at_close() -> None:
    """A private subscription still open when the provider closes: what it never got
    (or got and did not ack) belongs in ``provider.undelivered`` (``group=None``), as
    for a named group; today it is dropped without a trace."""
    async with open_memory_provider() as provider:
        context = provider.subscriber.subscribe("t")
        sub = await context.__aenter__()
        await provider.publisher.publish("t", Message(b"held"), Message(b"queued"))
        sub.receive_nowait()
    reported = [(u.pattern, u.group, u.message.payload, u.attempts) for u in provider.undelivered]
    assert sorted(reported) == [("t", None, b"held", 1), ("t", None, b"queued", 0)]


async def test_an_error_leaving_the_block_is_not_wrapped_in_an_exception_group() -> None:
    """STYLE.md: don't let an ExceptionGroup escape for a single error."""
    with pytest.raises(_Boom):
        async with open_memory_provider():
            raise _Boom


async def test_a_handler_failing_at_once_does_not_starve_other_tasks() -> None:
    """A handler that raises without awaiting anything (a poison message) is nacked and
    redelivered at once, forever. Each round must let other tasks run: otherwise the
    whole program hangs in that loop, and neither Ctrl-C nor the drain gets a turn."""
    limit = 200
    calls = 0

    async def poison(msg: Message) -> None:
        nonlocal calls
        calls += 1
        if calls < limit:  # give up eventually, so that a failure ends the test
            raise ValueError("poison")

    async with open_memory_provider() as provider:
        provider.router.add_handler("poison", "t", poison)
        await provider.publisher.publish("t", Message(b"x"))
        await trio.lowlevel.checkpoint()
        assert calls < limit, f"{calls} handler calls without letting another task run"
        with trio.fail_after(10):  # a safety net only: this takes milliseconds
            while calls < limit:
                await trio.lowlevel.checkpoint()
