"""Side-by-side throughput of the NATS provider and raw nats-py on asyncio.

Run ``python -m piko_trio_events.nats._bench [--count N] [--rounds R]``. It
starts one nats-server and measures, against it, in one process:

* core publish -> subscribe: raw nats-py (a fresh uuid per message in the
  ``_watermill_message_uuid`` header, a callback subscription) against the
  provider's publisher and a subscription channel, and against a router
  handler;
* JetStream publish in batches of 100 per call: nats-py ``publish_async``
  (same headers) against ``publisher.publish(topic, *100 messages)``;
* JetStream consume + ack: raw pull ``fetch`` + ``ack()`` against a router
  handler on the provider (``ack_async=True``, as the raw side's ``ack()``
  is fire-and-forget);
* ``--only jsconfirmed``: the provider alone with confirmed acks (the
  default), handler concurrency 1 and 32.

Each figure is the best of ``rounds`` runs; the ratio is provider / raw.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import trio

from .._config import JetStreamConfig, NatsConfig
from .._message import UUID_HEADER, Message
from .._uuid import new_uuid
from ..testing._server import _free_port, find_nats_server
from ._provider import open_nats_provider

PAYLOAD = b"x" * 128


# -- raw nats-py on asyncio --------------------------------------------------------------


async def _raw_core(url: str, count: int) -> float:
    import nats

    nc = await nats.connect(url)
    done = asyncio.Event()
    received = 0

    async def cb(msg: Any) -> None:
        nonlocal received
        received += 1
        if received == count:
            done.set()

    await nc.subscribe("bench.core", cb=cb, pending_msgs_limit=count + 1)
    await nc.flush()
    start = time.perf_counter()
    for _ in range(count):
        await nc.publish("bench.core", PAYLOAD, headers={UUID_HEADER: new_uuid()})
    await done.wait()
    elapsed = time.perf_counter() - start
    await nc.close()
    return count / elapsed


async def _raw_js_publish(url: str, count: int, batch: int) -> float:
    import nats

    nc = await nats.connect(url)
    js = nc.jetstream()
    await _raw_stream(js, "rawpub")
    start = time.perf_counter()
    for _ in range(count // batch):
        futures = [
            await js.publish_async("rawpub.x", PAYLOAD, headers={UUID_HEADER: new_uuid()})
            for _ in range(batch)
        ]
        await asyncio.gather(*futures)
    elapsed = time.perf_counter() - start
    await nc.close()
    return (count // batch * batch) / elapsed


async def _raw_stream(js: Any, root: str) -> None:
    with contextlib.suppress(Exception):
        await js.delete_stream(f"RAW_{root}")
    await js.add_stream(name=f"RAW_{root}", subjects=[root, root + ".>"])


async def _raw_js_consume(url: str, count: int) -> float:
    import nats

    nc = await nats.connect(url)
    js = nc.jetstream()
    await _raw_stream(js, "rawcon")
    await _fill(js, "rawcon.x", count)
    sub = await js.pull_subscribe("rawcon.x", durable="raw")
    start = time.perf_counter()
    received = 0
    while received < count:
        msgs = await sub.fetch(256, timeout=5)
        for msg in msgs:
            await msg.ack()
            received += 1
    await nc.flush()
    elapsed = time.perf_counter() - start
    await nc.close()
    return count / elapsed


async def _fill(js: Any, subject: str, count: int) -> None:
    for _ in range(count // 100):
        futures = [
            await js.publish_async(subject, PAYLOAD, headers={UUID_HEADER: new_uuid()})
            for _ in range(100)
        ]
        await asyncio.gather(*futures)


# -- the provider on trio ----------------------------------------------------------------


async def _provider_core(url: str, count: int, *, router: bool) -> float:
    config = NatsConfig(url=url, jetstream=JetStreamConfig(disabled=True))
    done = trio.Event()
    received = 0
    async with open_nats_provider(config) as provider:
        if router:

            async def handler(msg: Message) -> None:
                nonlocal received
                received += 1
                if received == count:
                    done.set()

            provider.router.add_handler("bench", "bench.core", handler)
            await provider.publisher.flush()
            start = time.perf_counter()
            publish = provider.publisher.publish
            for _ in range(count):
                await publish("bench.core", Message(PAYLOAD))
            await done.wait()
            return count / (time.perf_counter() - start)
        async with provider.subscriber.subscribe("bench.core") as channel:

            async def consume() -> None:
                nonlocal received
                receive_nowait = channel.receive_nowait  # type: ignore[attr-defined]
                while received < count:
                    try:
                        msg = receive_nowait()
                    except trio.WouldBlock:
                        msg = await channel.receive()
                    await msg.ack()
                    received += 1
                done.set()

            await provider.publisher.flush()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(consume)
                start = time.perf_counter()
                publish = provider.publisher.publish
                for _ in range(count):
                    await publish("bench.core", Message(PAYLOAD))
                await done.wait()
            return count / (time.perf_counter() - start)


async def _provider_js_publish(url: str, count: int, batch: int) -> float:
    config = NatsConfig(url=url)
    async with open_nats_provider(config) as provider:
        publish = provider.publisher.publish
        await publish("pikopub.x", Message(PAYLOAD))
        start = time.perf_counter()
        for _ in range(count // batch):
            await publish("pikopub.x", *[Message(PAYLOAD) for _ in range(batch)])
        return (count // batch * batch) / (time.perf_counter() - start)


async def _provider_js_consume(
    url: str, count: int, round_: int, confirmed: bool = False, concurrency: int = 1
) -> float:
    root = f"pikocon{round_}{'c' if confirmed else ''}{concurrency}"
    config = NatsConfig(
        url=url,
        subscribers_count=concurrency,
        jetstream=JetStreamConfig(ack_async=not confirmed),
    )
    done = trio.Event()
    received = 0
    async with open_nats_provider(config) as provider:
        publish = provider.publisher.publish
        for _ in range(count // 100):
            await publish(f"{root}.x", *[Message(PAYLOAD) for _ in range(100)])

        async def handler(msg: Message) -> None:
            nonlocal received
            received += 1
            if received == count:
                done.set()

        start = time.perf_counter()
        provider.router.add_handler("consume", f"{root}.x", handler)
        await done.wait()
        return count / (time.perf_counter() - start)


# -- driver --------------------------------------------------------------------------------


def _best(rounds: int, *runs: Callable[[int], float]) -> list[float]:
    """The best of ``rounds`` runs of each, interleaved so that noise hits all alike."""
    best = [0.0] * len(runs)
    for i in range(rounds):
        for k, run in enumerate(runs):
            best[k] = max(best[k], run(i))
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--only", choices=["core", "jspub", "jscon", "jsconfirmed"], action="append"
    )
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)
    count, rounds = args.count, args.rounds
    only = set(args.only or ["core", "jspub", "jscon"])
    port = _free_port()
    url = f"nats://127.0.0.1:{port}"
    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as store:
        server = subprocess.Popen(
            [find_nats_server(), "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", store],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            _wait_ready(port)
            if "core" in only:
                raw, chan, handler = _best(
                    rounds,
                    lambda i: asyncio.run(_raw_core(url, count)),
                    lambda i: trio.run(lambda: _provider_core(url, count, router=False)),
                    lambda i: trio.run(lambda: _provider_core(url, count, router=True)),
                )
                results.update(
                    core_raw=raw,
                    core_channel=chan,
                    core_router=handler,
                    core_channel_ratio=chan / raw,
                    core_router_ratio=handler / raw,
                )
            if "jspub" in only:
                raw, ours = _best(
                    rounds,
                    lambda i: asyncio.run(_raw_js_publish(url, count, 100)),
                    lambda i: trio.run(_provider_js_publish, url, count, 100),
                )
                results.update(js_publish_raw=raw, js_publish=ours, js_publish_ratio=ours / raw)
            if "jscon" in only:
                raw, ours = _best(
                    rounds,
                    lambda i: asyncio.run(_raw_js_consume(url, count)),
                    lambda i: trio.run(_provider_js_consume, url, count, i),
                )
                results.update(js_consume_raw=raw, js_consume=ours, js_consume_ratio=ours / raw)
            if "jsconfirmed" in only:
                # Confirmed acks (the default): one server round trip per ack, so
                # handler concurrency is what pipelines them.
                one, many = _best(
                    rounds,
                    lambda i: trio.run(_provider_js_consume, url, count, i, True, 1),
                    lambda i: trio.run(_provider_js_consume, url, count, i, True, 32),
                )
                results.update(js_consume_confirmed_c1=one, js_consume_confirmed_c32=many)
        finally:
            server.terminate()
            server.wait()
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for key, value in results.items():
            unit = "" if key.endswith("ratio") else " msg/s"
            shown = f"{value:.3f}x" if key.endswith("ratio") else f"{value:,.0f}"
            print(f"{key:24} {shown}{unit}")
    return 0


def _wait_ready(port: int) -> None:
    import socket

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                if sock.recv(4096).startswith(b"INFO "):
                    return
        except OSError:
            time.sleep(0.01)
    raise RuntimeError("nats-server did not start")


if __name__ == "__main__":
    sys.exit(main())
