"""Lifecycle: SIGTERM cancels the block, and the provider drains in order.

A handler is in the middle of a message when the process gets SIGTERM (as
Kubernetes or systemd send it). ``cancel_on_signals`` turns the signal into
cancellation; the provider stops intake, lets the in-flight handler finish
and publish its output, then closes.  What a group had not received yet is
reported in ``provider.undelivered`` (and logged). Run: ``python docs/examples/lifecycle.py``.
"""

from __future__ import annotations

import os
import signal

import trio

from piko_trio_events import MemoryConfig, Message, cancel_on_signals, open_memory_provider

events: list[str] = []


async def main() -> None:
    started = trio.Event()
    async with cancel_on_signals() as stopped, open_memory_provider(MemoryConfig()) as provider:

        @provider.router.handler("jobs.run", publish_topic="jobs.done")
        async def work(msg: Message) -> Message:
            events.append("handler started")
            started.set()
            await trio.sleep(0.2)  # still running when SIGTERM arrives
            events.append("handler finished")
            return Message(b"done: " + msg.payload)

        @provider.router.handler("jobs.done")
        async def record(msg: Message) -> None:
            events.append(f"output received: {msg.payload!r}")

        await provider.publisher.publish("jobs.run", Message(b"job-1"))
        await started.wait()
        os.kill(os.getpid(), signal.SIGTERM)  # what `kubectl delete pod` does
        await trio.sleep_forever()
    # The drain is over: the handler finished and its output was published; the
    # `record` handler had already stopped taking messages, so the output is
    # reported, not silently dropped (on NATS it would wait in its stream).
    print("stopped by a signal:", stopped.cancelled_caught)
    print("\n".join(events))
    for left in provider.undelivered:
        print(f"undelivered to group {left.group!r}: {left.message.payload!r}")
    assert stopped.cancelled_caught
    assert events == ["handler started", "handler finished"]
    assert [left.message.payload for left in provider.undelivered] == [b"done: job-1"]


if __name__ == "__main__":
    trio.run(main)
