"""Does nats-server forget an ack it confirmed when it is stopped? Raw nats-py only.

No part of piko_trio_events: asyncio, nats-py and the nats-server binary.
A pull consumer (AckWait 1 s) acks messages with ``ack_sync`` (the server
answers once it processed the ack) as fast as it can while the server gets
``--signal`` a moment into the run; the server is started again on the same
store, and everything it delivers in the next seconds is compared with the
acks it had confirmed. Prints one line per round and a summary::

    python tests/nats/raw_confirmed_acks.py --signal TERM --rounds 10
    python tests/nats/raw_confirmed_acks.py --signal KILL --rounds 3

nats-server 2.15.1, as measured for issue 14: SIGTERM never (0 of 20
rounds, half of them with acks in flight at the signal); SIGKILL in every
round (the consumer state on disk is older than what the server confirmed:
the documented ``kill -9`` exception).
"""

# A plain asyncio script that starts and signals its own server: blocking calls are fine.
# ruff: noqa: ASYNC220, ASYNC221, ASYNC230

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version as package_version
from pathlib import Path

import nats
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, StreamConfig


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def _wait_up(port: int) -> None:
    for _ in range(1000):
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            line = await reader.readline()
            writer.close()
            if line.startswith(b"INFO"):
                return
        except OSError:
            pass
        await asyncio.sleep(0.01)
    raise RuntimeError(f"nats-server did not start on port {port}")


async def _round(binary: str, sig: signal.Signals, n: int) -> tuple[int, int, int]:
    """One run; returns (acks confirmed, delivered after the restart, of those confirmed)."""
    port = _free_port()
    with tempfile.TemporaryDirectory() as store:
        cmd = [binary, "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", store]
        log = open(Path(store) / "log", "ab")  # noqa: SIM115 - closed in finally
        server = subprocess.Popen(cmd, stdout=log, stderr=log)
        try:
            await _wait_up(port)
            nc = await nats.connect(
                f"nats://127.0.0.1:{port}", max_reconnect_attempts=-1, reconnect_time_wait=0.05
            )
            js = nc.jetstream()
            await js.add_stream(StreamConfig(name="S", subjects=["s.>"]))
            await js.add_consumer(
                "S",
                ConsumerConfig(
                    durable_name="c", ack_policy=AckPolicy.EXPLICIT, ack_wait=1.0, max_deliver=-1
                ),
            )
            for _ in range(0, n, 100):
                await asyncio.gather(*[js.publish("s.x", b"x") for _ in range(100)])
            sub = await js.pull_subscribe_bind("c", "S")
            confirmed: set[int] = set()
            signalled = asyncio.Event()

            async def ack(msg: Msg) -> None:
                try:
                    await msg.ack_sync(timeout=1)  # returns once the server answered
                except Exception:
                    return
                confirmed.add(msg.metadata.sequence.stream)

            async def acker() -> None:
                while not signalled.is_set():
                    try:
                        batch = await sub.fetch(50, timeout=0.5)
                    except Exception:
                        continue
                    await asyncio.gather(*[ack(msg) for msg in batch])

            task = asyncio.ensure_future(acker())
            await asyncio.sleep(random.uniform(0.02, 0.25))
            server.send_signal(sig)
            server.wait()
            signalled.set()
            await asyncio.wait_for(task, 10)
            server = subprocess.Popen(cmd, stdout=log, stderr=log)
            await _wait_up(port)
            again: set[int] = set()
            deadline = time.monotonic() + 2.5  # longer than AckWait
            while time.monotonic() < deadline:
                try:
                    for msg in await sub.fetch(500, timeout=0.5):
                        again.add(msg.metadata.sequence.stream)
                        await msg.ack()
                except Exception:
                    pass
            await nc.close()
            return len(confirmed), len(again), len(again & confirmed)
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait()
            log.close()


async def _main(binary: str, sig: signal.Signals, rounds: int, n: int) -> None:
    version = subprocess.run([binary, "--version"], capture_output=True, text=True, check=True)
    print(f"{version.stdout.strip()}, nats-py {package_version('nats-py')}, signal {sig.name}")
    bad = 0
    for number in range(rounds):
        confirmed, again, back = await _round(binary, sig, n)
        bad += back > 0
        print(
            f"round {number}: {confirmed} acks confirmed of {n}, {again} delivered after "
            f"the restart, {back} of them confirmed before",
            flush=True,
        )
    print(f"rounds in which a confirmed ack came back: {bad} of {rounds}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--signal", choices=["TERM", "KILL", "INT"], default="TERM")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--nats-server", default=None, help="the binary (default: the venv's)")
    args = parser.parse_args()
    binary = args.nats_server or str(Path(sys.executable).parent / "nats-server")
    if not os.access(binary, os.X_OK):
        parser.error(f"no nats-server at {binary}")
    sig = signal.Signals[f"SIG{args.signal}"]
    asyncio.run(_main(binary, sig, args.rounds, args.messages))


if __name__ == "__main__":
    main()
