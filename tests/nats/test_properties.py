"""Property tests: at-least-once delivery of the JetStream provider, in real time.

Hypothesis generates a schedule of operations, each of which publishes a
batch whose messages carry a per-delivery plan for the handlers (succeed,
raise, nack with a small delay, hang past AckWait) and then, with that
batch in flight, does its own thing: nothing more, a pause, closing the
manual group's subscription, leaving the provider by cancellation,
restarting the server, or publishing while the server is down; and it
interprets the schedule inside ONE
``trio.run`` against a fresh real nats-server (so durable consumers of one
example never meet the next one). AckWait and NAK delays are the server's
clock, so these run in real time with a short ``ack_wait_timeout``.

Two durable groups consume the one topic: ``r``, a router handler
(concurrency 2), and ``m``, a hand-written subscription loop that acks and
nacks itself. What is checked:

* at least once: every publish-confirmed message is processed (its plan
  runs to a success) in every group, across subscription closes, provider
  cancellations and server restarts;
* a delivery whose confirmed ack (``ack_async=False``) returned True is not
  delivered again to that group, also across every server stop and restart
  that follows the ack. One case is only recorded as an event: around a slow
  handler (the provider says "in progress" only every third of AckWait, so
  the server may resend a message just before it sees the ack), and a
  message whose handler ran while the server was down is checked too: the
  restarted server redelivers it (AckWait ran out) and the provider drops
  that stale copy once the first delivery's ack is confirmed
  (``test_confirmed_ack.py``, which also shows that nats-server keeps
  confirmed acks over a graceful restart);
* with ``track_message_id=True``, a batch published while the server is
  down (``PublishError``) and published again is stored once (the stream
  holds exactly the published uuids, each group sees one stream sequence
  per uuid);
* ``Delivery.attempt`` strictly increases with each delivery of a message
  in a group;
* leaving the provider (normally or by cancellation) leaves no task
  running, and what was unacked at close comes back to the next provider of
  the group (at least once, above).

The number of examples is the hypothesis profile's (``ci``: 200, about ten
minutes of real time, mostly waiting on AckWait; ``default``: 50);
``PIKO_NATS_PROPERTY_EXAMPLES`` overrides it. Shrinking is on: a failing
schedule is shrunk (in minutes of real time) before it is reported. Run with
``--hypothesis-show-statistics`` to see the ``hypothesis.event`` counts.
"""

from __future__ import annotations

import itertools
import math
import os
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Literal

import pytest
import trio
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from piko_trio_events import (
    AckError,
    HandlerFunc,
    JetStreamConfig,
    Message,
    NatsConfig,
    PublishError,
    RouterConfig,
)
from piko_trio_events.nats import NatsProvider, open_nats_provider
from piko_trio_events.testing._server import NatsServer, open_nats_server

from .helpers import eventually

ACK_WAIT = 0.6
SLOW = ACK_WAIT * 1.5  # a handler that hangs past AckWait
TOPIC = "props.work"
GROUPS = ("r", "m")
#: Examples to run: the hypothesis profile's, unless set here.
EXAMPLES = os.environ.get("PIKO_NATS_PROPERTY_EXAMPLES")
#: Upper bound of one example (real time); a healthy one takes 1-4 s.
EXAMPLE_TIMEOUT = 60.0

Behavior = Literal["ok", "raise", "nack", "slow"]


# -- the schedule ---------------------------------------------------------------------------


Plans = tuple[tuple[Behavior, ...], ...]


# Every operation publishes its batch (``plans``: each message's plan, the
# behaviors of its first deliveries) first, then acts with the batch in flight.
@dataclass(frozen=True)
class Publish:
    """Publish the batch."""

    plans: Plans


@dataclass(frozen=True)
class PublishDown:
    """Stop the server, publish the batch (PublishError), start it, publish it again."""

    plans: Plans


@dataclass(frozen=True)
class Pause:
    plans: Plans
    seconds: float


@dataclass(frozen=True)
class CloseSub:
    """Close the manual group's subscription (what it holds is nacked) and open a new one."""

    plans: Plans


@dataclass(frozen=True)
class CancelProvider:
    """Cancel the scope around the provider, then open a new provider (same groups)."""

    plans: Plans


@dataclass(frozen=True)
class Restart:
    """Restart the server (same port, same store) and wait until the provider reconnected."""

    plans: Plans


Op = Publish | PublishDown | Pause | CloseSub | CancelProvider | Restart

behaviors: st.SearchStrategy[Behavior] = st.sampled_from(
    ["raise", "nack", "slow", "ok", "raise", "nack"]
)
plans = st.lists(st.lists(behaviors, max_size=2).map(tuple), min_size=1, max_size=4).map(tuple)
ops: st.SearchStrategy[Op] = st.one_of(
    plans.map(Publish),
    st.builds(Pause, plans, st.sampled_from([0.0, 0.05, 0.3])),
    plans.map(CloseSub),
    plans.map(CancelProvider),
    plans.map(Restart),
    plans.map(PublishDown),
)
schedules = st.lists(ops, min_size=1, max_size=7)


# -- the record of what happened ------------------------------------------------------------


@dataclass
class Seen:
    attempt: int
    sequence: int | None
    start: float


@dataclass
class Acked:
    """A confirmed ack that returned True."""

    handler_start: float
    at: float


@dataclass
class Record:
    plans: dict[str, tuple[Behavior, ...]] = field(default_factory=dict)
    published: list[str] = field(default_factory=list)
    deliveries: dict[tuple[str, str], list[Seen]] = field(default_factory=lambda: defaultdict(list))
    processed: set[tuple[str, str]] = field(default_factory=set)
    acked: dict[tuple[str, str], list[Acked]] = field(default_factory=lambda: defaultdict(list))
    #: Periods during which a resend before the ack is expected: [start, end]
    #: (``math.inf`` while open). Per group (a handler past AckWait) and global
    #: (the server down).
    noisy: dict[str | None, list[list[float]]] = field(default_factory=lambda: defaultdict(list))
    changed: trio.Event = field(default_factory=trio.Event)
    position: int = 0  # the next operation of the schedule

    def notify(self) -> None:
        self.changed.set()
        self.changed = trio.Event()

    def open_noise(self, group: str | None) -> list[float]:
        window = [trio.current_time(), math.inf]
        self.noisy[group].append(window)
        return window

    def delivered(self, group: str, msg: Message) -> Behavior:
        """Record a delivery (before any checkpoint) and return what to do with it."""
        assert msg.delivery is not None
        key = (group, msg.uuid)
        seen = self.deliveries[key]
        seen.append(Seen(msg.delivery.attempt, msg.delivery.sequence, trio.current_time()))
        if msg.delivery.redelivered:
            event(f"group {group}: redelivery")
        if key in self.processed:
            event(f"group {group}: delivered again after processing")
        plan = self.plans.get(msg.uuid, ())
        index = len(seen) - 1
        return plan[index] if index < len(plan) else "ok"

    def done(self, group: str, msg: Message, ack: bool | None) -> None:
        """The plan of ``msg`` ran to a success (``ack``: None before its ack(),
        True once ack() returned True)."""
        key = (group, msg.uuid)
        self.processed.add(key)
        if ack:
            start = self.deliveries[key][-1].start
            self.acked[key].append(Acked(start, trio.current_time()))
        self.notify()

    def missing(self) -> list[tuple[str, str]]:
        return [(g, u) for u in self.published for g in GROUPS if (g, u) not in self.processed]

    def excused(self, group: str, ack: Acked) -> str | None:
        """Why a resend may follow ``ack`` (None: it must not)."""
        low, high = ack.handler_start - 2 * ACK_WAIT, ack.at
        if any(start <= high and end >= low for start, end in self.noisy[group]):
            return "around a handler past AckWait"
        # A stop or restart after the ack is checked, also when the handler
        # held the message while the server was down (test_confirmed_ack.py).
        return None


# -- the two groups -------------------------------------------------------------------------


async def _act(record: Record, group: str, msg: Message, behavior: Behavior) -> None:
    """Do what the plan says with one delivery of ``group`` (both groups share this)."""
    if behavior == "raise":
        raise _Fail(msg.uuid)
    if behavior == "nack":
        await msg.nack(0.1)
        return
    if behavior == "slow":
        window = record.open_noise(group)
        try:
            await trio.sleep(SLOW)
        finally:
            window[1] = trio.current_time()
        event("handler held a message past AckWait")
    # Processed: the work is done. What ack() says comes after (it may also be
    # cancelled by a closing subscription once the server confirmed it).
    record.done(group, msg, None)
    try:
        ack = await msg.ack()
    except AckError:
        event(f"group {group}: ack not confirmed (AckError)")
        ack = None
    if ack:
        record.done(group, msg, ack)
    else:
        event(f"group {group}: processed, ack did not return True")


class _Fail(Exception):
    """What a handler raises when its plan says so."""


def _router_handler(record: Record) -> HandlerFunc:
    async def handle(msg: Message) -> None:
        await _act(record, "r", msg, record.delivered("r", msg))

    return handle


async def _manual_member(
    provider: NatsProvider, record: Record, *, task_status: trio.TaskStatus[trio.CancelScope]
) -> None:
    """Group ``m``: receive, act, settle by hand, until its scope is cancelled."""
    with trio.CancelScope() as scope:
        async with provider.subscriber.subscribe(TOPIC, group="m") as channel:
            task_status.started(scope)
            async for msg in channel:
                try:
                    await _act(record, "m", msg, record.delivered("m", msg))
                except _Fail:
                    await msg.nack()


# -- the interpreter ------------------------------------------------------------------------


def _config(server: NatsServer) -> NatsConfig:
    return NatsConfig(
        url=server.url,
        ack_wait_timeout=ACK_WAIT,
        reconnect_wait=0.05,
        close_timeout=1.0,
        router=RouterConfig(close_timeout=0.3),
        jetstream=JetStreamConfig(track_message_id=True, ack_async=False),
    )


def _messages(record: Record, batch: tuple[tuple[Behavior, ...], ...]) -> list[Message]:
    messages = []
    for plan in batch:
        msg = Message(b"%d" % len(record.plans))
        record.plans[msg.uuid] = plan
        messages.append(msg)
    return messages


async def _publish(provider: NatsProvider, record: Record, messages: list[Message]) -> None:
    """Publish until confirmed (PublishError means: try again, same uuids)."""
    while True:
        try:
            await provider.publisher.publish(TOPIC, *messages)
            break
        except PublishError:
            event("publish failed; published again")
            await trio.sleep(0.05)
    record.published.extend(m.uuid for m in messages)


async def _wait_connected(provider: NatsProvider) -> None:
    await eventually(lambda: provider.connected)


async def _run_ops(
    server: NatsServer,
    provider: NatsProvider,
    record: Record,
    schedule: list[Op],
    scope: trio.CancelScope,
) -> None:
    """Interpret ``schedule`` from ``record.position`` until its end (then wait for
    everything to be processed) or a CancelProvider."""
    async with trio.open_nursery() as nursery:
        member: trio.CancelScope = await nursery.start(_manual_member, provider, record)
        # Both consumers exist before an operation stops the server: a server that
        # stops while the router creates its consumer makes the provider fail with
        # nats-py's TimeoutError (a finding, reported with this file).
        await eventually(lambda: len(provider._conn.subscriptions) == 2)
        while record.position < len(schedule):
            op = schedule[record.position]
            record.position += 1
            if not isinstance(op, PublishDown):
                await _publish(provider, record, _messages(record, op.plans))
            if isinstance(op, Publish):
                pass
            elif isinstance(op, Pause):
                await trio.sleep(op.seconds)
            elif isinstance(op, CloseSub):
                member.cancel()
                member = await nursery.start(_manual_member, provider, record)
            elif isinstance(op, CancelProvider):
                event("provider left by cancellation")
                scope.cancel()
                await trio.sleep_forever()
            elif isinstance(op, Restart):
                window = record.open_noise(None)
                await server.restart()
                await _wait_connected(provider)
                window[1] = trio.current_time()
                event("server restarted")
            else:
                window = record.open_noise(None)
                messages = _messages(record, op.plans)
                await server.stop()
                try:
                    await provider.publisher.publish(TOPIC, *messages)
                except PublishError:
                    event("publish failed while the server was down")
                else:  # pragma: no cover - depends on timing
                    event("publish while down succeeded")
                await server.start()
                await _wait_connected(provider)
                window[1] = trio.current_time()
                await _publish(provider, record, messages)
        # The end of the schedule: wait until everything is processed, then a
        # little longer (an acked message must not come back after AckWait).
        try:
            with trio.fail_after(30):
                while record.missing():
                    await record.changed.wait()
        except trio.TooSlowError:
            raise AssertionError(f"never processed (group, uuid): {record.missing()}") from None
        await trio.sleep(ACK_WAIT + 0.2)
        await _check_stored(provider, record)
        nursery.cancel_scope.cancel()


async def _check_stored(provider: NatsProvider, record: Record) -> None:
    conn = provider._conn
    assert conn.jsm is not None
    name = await conn.bridge.call(conn.jsm.find_stream_name_by_subject, TOPIC)
    info = await conn.bridge.call(conn.jsm.stream_info, name)
    assert len(set(record.published)) == len(record.published)
    assert info.state.messages == len(record.published), "a message was stored twice (or lost)"


async def _example(schedule: list[Op]) -> Record:
    record = Record()
    with trio.fail_after(EXAMPLE_TIMEOUT):
        async with open_nats_server(jetstream=True) as server:
            config = _config(server)
            finished = False
            while not finished:
                before = trio.lowlevel.current_statistics().tasks_living
                with trio.CancelScope() as scope:
                    async with open_nats_provider(config) as provider:
                        provider.router.add_handler(
                            "r", TOPIC, _router_handler(record), group="r", concurrency=2
                        )
                        await _run_ops(server, provider, record, schedule, scope)
                        finished = True
                # Nothing of the provider (or of our consumers) is left running.
                assert trio.lowlevel.current_statistics().tasks_living == before
    return record


def _check(record: Record) -> None:
    for key, seen in record.deliveries.items():
        attempts = [d.attempt for d in seen]
        assert all(a < b for a, b in itertools.pairwise(attempts)), (
            f"{key}: attempts {attempts} do not strictly increase"
        )
        # track_message_id: one stored copy, so one stream sequence per uuid.
        assert len({d.sequence for d in seen}) == 1, f"{key}: several stream sequences"
        for ack in record.acked.get(key, []):
            again = [d for d in seen if d.start > ack.at]
            if not again:
                continue
            excuse = record.excused(key[0], ack)
            if excuse is None:
                raise AssertionError(
                    f"{key}: delivered again (attempts {[d.attempt for d in again]}) "
                    f"after its confirmed ack returned True"
                )
            event(f"resent after a confirmed ack, {excuse}")
    assert not record.missing()


# An example takes seconds of real time: shrinking a failure takes minutes.
# Each example has its own fail_after; the whole test may take the hang guard's
# half hour (the ci profile's 200 examples take about ten minutes).
@pytest.mark.deadline(1800)
@settings(
    max_examples=int(EXAMPLES) if EXAMPLES else settings().max_examples,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(schedule=schedules)
def test_jetstream_delivers_at_least_once(schedule: list[Op]) -> None:
    record = trio.run(_example, schedule)
    _check(record)
    assert record.published, "every example publishes"
    event(f"messages published: {min(len(record.published), 8)}")
