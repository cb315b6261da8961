"""Exactly-once pipelines (issue 4, section 5): at-least-once input plus
idempotent output is an exactly-once effect.

Three router handlers chained over JetStream with ``track_message_id=True``
(``eo.stage1`` -> ``eo.stage2`` -> ``eo.stage3`` -> ``eofinal.out``, the
second stage fanning out to two messages). No output is given a uuid: the
router derives each one from its input's uuid, the handler's name and the
output's position, so an input delivered again republishes the same ids and
JetStream's duplicate window stores them once. While the pipeline runs, the
server is killed with ``kill -9`` and restarted from its store, and the
provider is cancelled, at seeded random points. A restarted server may
redeliver messages whose acks it had confirmed (its consumer state can go
back in time): the duplicate window absorbs those too. At the end the final
stream holds every expected output exactly once.

``PIKO_EXACTLY_ONCE_ROUNDS`` (default 6) sets the number of chaos rounds and
``PIKO_EXACTLY_ONCE_MESSAGES`` (default 300) the number of inputs;
``PIKO_EXACTLY_ONCE_SEED`` replays a run.
"""

from __future__ import annotations

import os
import random
import time
from typing import Any

import trio

from piko_trio_events import JetStreamConfig, Message, NatsConfig, PublishError
from piko_trio_events._uuid import derived_uuid
from piko_trio_events.nats import NatsProvider, open_nats_provider
from piko_trio_events.nats._names import consumer_name
from piko_trio_events.testing._server import NatsServer

from .helpers import Tally

ROUNDS = int(os.environ.get("PIKO_EXACTLY_ONCE_ROUNDS", "6"))
MESSAGES = int(os.environ.get("PIKO_EXACTLY_ONCE_MESSAGES", "300"))
SEED = int(os.environ.get("PIKO_EXACTLY_ONCE_SEED", str(random.randrange(2**32))))

#: (handler name, input topic, output topic, outputs per input)
STAGES = (
    ("stage1", "eo.stage1", "eo.stage2", 1),
    ("stage2", "eo.stage2", "eo.stage3", 2),
    ("stage3", "eo.stage3", "eofinal.out", 1),
)


def expected_final(inputs: list[Message]) -> set[str]:
    """The uuids the pipeline's final outputs must have, derived as the router does."""
    uuids = [m.uuid for m in inputs]
    for name, _topic, _out, fan_out in STAGES:
        uuids = [derived_uuid(u, name, i) for u in uuids for i in range(fan_out)]
    return set(uuids)


def add_pipeline(provider: NatsProvider, concurrency: int, runs: Tally) -> None:
    for name, topic, out, fan_out in STAGES:

        async def stage(msg: Message, fan_out: int = fan_out, name: str = name) -> list[Message]:
            runs.add(name)
            await trio.sleep(0.001)  # a little work, so the faults land mid-stream
            # No uuid given: the router derives one (input uuid, handler, position).
            return [Message(msg.payload + b"/%d" % i) for i in range(fan_out)]

        provider.router.add_handler(name, topic, stage, publish_topic=out, concurrency=concurrency)


async def jsm_call(provider: NatsProvider, method: str, *args: Any) -> Any:
    conn = provider._conn
    assert conn.jsm is not None
    return await conn.bridge.call(getattr(conn.jsm, method), *args)


async def final_count(provider: NatsProvider) -> int:
    """Messages in the final stream (0 while nothing has created it yet)."""
    from nats.js.errors import NotFoundError

    try:
        info = await jsm_call(provider, "stream_info", "PIKO_eofinal")
    except NotFoundError:
        return 0
    return int(info.state.messages)


async def settled(provider: NatsProvider) -> bool:
    """Whether every stage's consumer has nothing pending and nothing unacked."""
    for name, topic, _out, _fan_out in STAGES:
        info = await jsm_call(
            provider, "consumer_info", "PIKO_eo", consumer_name("piko", name, topic)
        )
        if info.num_pending or info.num_ack_pending:
            return False
    return True


async def publish_inputs(provider: NatsProvider, inputs: list[Message]) -> None:
    """Publish the inputs until the server confirms them (same uuids each try)."""
    for start in range(0, len(inputs), 50):
        batch = inputs[start : start + 50]
        while True:
            try:
                await provider.publisher.publish("eo.stage1", *batch)
                break
            except PublishError:
                await trio.sleep(0.05)  # retry pacing while the server is away


async def test_a_three_stage_pipeline_stores_every_output_exactly_once_through_kills_and_cancels(
    nats_server: NatsServer,
) -> None:
    rng = random.Random(SEED)
    print(f"exactly-once pipeline: seed={SEED} rounds={ROUNDS} messages={MESSAGES}")
    config = NatsConfig(
        url=nats_server.url,
        reconnect_wait=0.05,
        ack_wait_timeout=2.0,  # unacked messages come back quickly
        close_timeout=2.0,
        jetstream=JetStreamConfig(track_message_id=True, ack_async=False, duplicate_window=600.0),
    )
    inputs = [Message(b"%d" % i) for i in range(MESSAGES)]
    expected = expected_final(inputs)
    kills = cancels = 0
    runs = Tally()  # handler runs per stage, redeliveries included
    started = time.perf_counter()
    with trio.fail_after(60 + 20 * ROUNDS):
        async with open_nats_provider(config) as provider:
            await publish_inputs(provider, inputs)
        # Chaos: each round runs the pipeline for a random while, in most rounds
        # kills the server (kill -9, restart from the store) under the running
        # provider, and ends by cancelling the provider at a random point.
        for round_ in range(ROUNDS):
            concurrency = rng.choice((1, 2, 8))
            run_for = rng.uniform(0.05, 0.6)
            kill = round_ == 0 or rng.random() < 0.6
            down_for = rng.uniform(0.0, 0.3)
            after = rng.uniform(0.0, 2.0)
            with trio.CancelScope() as scope:
                async with open_nats_provider(config) as provider:
                    add_pipeline(provider, concurrency, runs)
                    if round_ == 0:
                        # The first kill always lands mid-stream: a quarter of the work done.
                        await runs.reached(lambda counts: sum(counts.values()) >= MESSAGES)
                    else:
                        await trio.sleep(run_for)  # a random point in the run, not a wait
                    if kill:
                        with trio.CancelScope(shield=True):
                            await nats_server.kill()
                            kills += 1
                            await trio.sleep(down_for)  # the outage itself
                            await nats_server.start()
                        await trio.sleep(after)  # the run goes on after the restart
                    scope.cancel()  # the provider is cancelled, handlers mid-message
            cancels += 1
        # Calm: run until every stage has handled and acked everything.
        async with open_nats_provider(config) as provider:
            add_pipeline(provider, 32, runs)
            while True:
                if await final_count(provider) >= len(expected) and await settled(provider):
                    break
                await trio.sleep(0.1)  # polling the server's counters
            # Read the final stream directly: every uuid, as stored.
            stored = await final_count(provider)
            uuids: list[str] = []
            async with provider.subscriber.subscribe("eofinal.out", start="all") as channel:
                while len(uuids) < stored:
                    msg = await channel.receive()
                    uuids.append(msg.uuid)
                    await msg.ack()
    elapsed = time.perf_counter() - started
    print(
        f"exactly-once pipeline: {MESSAGES} inputs -> {stored} final outputs stored "
        f"(expected {len(expected)}), {kills} kill -9, {cancels} cancels, {elapsed:.1f}s; "
        f"handler runs {dict(runs.counts)} (once each: stage1 {MESSAGES}, stage2 {MESSAGES}, "
        f"stage3 {2 * MESSAGES})"
    )
    # The faults made handlers run again (else nothing here was deduplicated).
    assert sum(runs.counts.values()) > 4 * MESSAGES
    assert stored == len(expected)
    assert len(set(uuids)) == len(uuids) == stored
    assert set(uuids) == expected
