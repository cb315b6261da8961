"""The command line and the demo, run as a user would, in a subprocess."""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator

import trio

from piko_trio_events.testing import open_nats_server

ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "piko_trio_events", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=ENV,
        check=False,
    )


def test_demo_runs_the_pipeline_on_the_memory_provider() -> None:
    result = run_cli("demo", "--orders", "8")
    assert result.returncode == 0, result.stderr
    assert "done: 7 charged, 1 poisoned" in result.stdout
    assert "poison    order   7  order 7: amount must be positive" in result.stdout
    assert "order   4  gateway hiccup, retrying" in result.stdout


def test_help_and_bad_arguments() -> None:
    assert run_cli("--help").returncode == 0
    assert "--nats" in run_cli("demo", "--help").stdout
    bad = run_cli("demo", "--orders", "-1")
    assert bad.returncode == 2
    assert "--orders" in bad.stderr


async def test_sigterm_drains_the_demo_and_exits_cleanly() -> None:
    proc = await trio.lowlevel.open_process(
        [sys.executable, "-m", "piko_trio_events", "demo", "--forever"],
        stdout=subprocess.PIPE,
        env=ENV,
    )
    try:
        assert proc.stdout is not None
        seen = b""
        with trio.fail_after(60):
            while b"notify    order   1" not in seen:
                chunk = await proc.stdout.receive_some()
                assert chunk, f"demo ended early: {seen.decode()}"
                seen += chunk
            proc.send_signal(signal.SIGTERM)
            while chunk := await proc.stdout.receive_some():
                seen += chunk
            await proc.wait()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        if proc.stdout is not None:
            await proc.stdout.aclose()
    out = seen.decode()
    assert proc.returncode == 0, out
    assert "stopped by signal; drained the pipeline" in out


def test_demo_runs_unchanged_on_an_embedded_nats_server() -> None:
    result = run_cli("demo", "--nats", "--orders", "8", timeout=120)
    assert result.returncode == 0, result.stderr
    assert "embedded nats-server at nats://127.0.0.1:" in result.stdout
    assert "done: 7 charged, 1 poisoned" in result.stdout


def test_demo_against_an_unreachable_server_fails_clearly() -> None:
    result = run_cli("demo", "--nats", "nats://127.0.0.1:1", timeout=60)
    assert result.returncode == 1
    assert "error:" in result.stderr
    assert "nats://127.0.0.1:1" in result.stderr


# -- publish / subscribe / streams / bench, against a real nats-server ------------------

CLI = [sys.executable, "-m", "piko_trio_events"]


#: Bound of every wait for a CLI process (seconds).
WAIT = 30


async def cli(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    with trio.fail_after(WAIT):
        return await trio.run_process(
            [*CLI, *args],
            stdin=stdin,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            env=ENV,
        )


async def read_until(stream: trio.abc.ReceiveStream, marker: bytes, seen: bytearray) -> None:
    """Read ``stream`` into ``seen`` until ``marker`` shows up (bounded by the caller)."""
    while marker not in seen:
        chunk = await stream.receive_some()
        assert chunk, f"the stream ended before {marker!r}: {bytes(seen).decode()}"
        seen += chunk


async def read_all(stream: trio.abc.ReceiveStream) -> bytes:
    seen = bytearray()
    while chunk := await stream.receive_some():
        seen += chunk
    return bytes(seen)


async def subscriber(*args: str) -> trio.Process:
    """A ``subscribe`` process, returned once it has said it is subscribed."""
    proc = await trio.lowlevel.open_process(
        [*CLI, "subscribe", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV
    )
    assert proc.stderr is not None
    err = bytearray()
    try:
        with trio.fail_after(WAIT):
            await read_until(proc.stderr, b"subscribed to", err)
    except BaseException:
        proc.kill()
        await proc.wait()
        raise
    return proc


async def finish(proc: trio.Process) -> tuple[int, str, str]:
    """Wait for ``proc`` to end; its exit code, stdout and stderr."""
    assert proc.stdout is not None
    assert proc.stderr is not None
    out = err = b""
    try:
        with trio.fail_after(WAIT):
            async with trio.open_nursery() as nursery:

                async def collect_err() -> None:
                    nonlocal err
                    assert proc.stderr is not None
                    err = await read_all(proc.stderr)

                nursery.start_soon(collect_err)
                out = await read_all(proc.stdout)
            await proc.wait()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await proc.stdout.aclose()
        await proc.stderr.aclose()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_subscribe_prints_json_lines_of_what_publish_sends_over_jetstream() -> None:
    async with open_nats_server(jetstream=True) as server:
        proc = await subscriber("orders.*", "--json", "--count", "3", "--nats", server.url)
        one = await cli("publish", "orders.created", "a", "-m", "k=v", "--nats", server.url)
        assert one.returncode == 0, one.stderr
        assert b"published 1 message(s) to orders.created" in one.stderr
        lines = await cli("publish", "orders.paid", "--nats", server.url, stdin=b"b\r\nc\n")
        assert lines.returncode == 0, lines.stderr
        code, out, err = await finish(proc)
    assert code == 0, err
    records = [json.loads(line) for line in out.splitlines()]
    assert [(r["topic"], r["payload"], r["attempt"]) for r in records] == [
        ("orders.created", "a", 1),
        ("orders.paid", "b", 1),
        ("orders.paid", "c", 1),
    ]
    assert records[0]["metadata"] == {"k": "v"}
    assert all(len(r["uuid"]) == 36 for r in records)


async def test_core_subscribe_prints_plain_lines_and_stops_cleanly_on_sigint() -> None:
    async with open_nats_server(jetstream=False) as server:
        proc = await subscriber("t.>", "--core", "--nats", server.url)
        sent = await cli("publish", "t.x", "hello", "--core", "--nats", server.url)
        assert sent.returncode == 0, sent.stderr
        assert proc.stdout is not None
        seen = bytearray()
        with trio.fail_after(WAIT):
            await read_until(proc.stdout, b"\n", seen)
        proc.send_signal(signal.SIGINT)
        code, out, err = await finish(proc)
    assert code == 0, err  # a signal is how an open-ended subscribe ends
    assert (bytes(seen).decode() + out).splitlines() == ["t.x: hello"]


async def test_streams_lists_the_provisioned_stream_and_a_group_consumer() -> None:
    async with open_nats_server(jetstream=True) as server:
        sent = await cli("publish", "audit.log", "--nats", server.url, stdin=b"1\n2\n3\n")
        assert sent.returncode == 0, sent.stderr
        # A named group is a durable consumer from the first stored message.
        proc = await subscriber(
            "audit.log", "--group", "report", "--count", "1", "--nats", server.url
        )
        code, out, err = await finish(proc)
        assert (code, out) == (0, "audit.log: 1\n"), err
        listed = await cli("streams", "--nats", server.url)
        as_json = await cli("streams", "--json", "--nats", server.url)
    assert listed.returncode == 0, listed.stderr
    text = listed.stdout.decode()
    assert "stream PIKO_audit  subjects: audit, audit.>  messages: 3" in text
    assert "consumer piko_report_audit_log" in text
    assert "(durable)" in text
    (stream,) = [json.loads(line) for line in as_json.stdout.decode().splitlines()]
    (consumer,) = stream["consumers"]
    assert (stream["name"], stream["messages"]) == ("PIKO_audit", 3)
    assert consumer["pending"] + consumer["ack_pending"] == 2


async def test_cli_errors_are_clear() -> None:
    unreachable = await cli("publish", "t", "x", "--nats", "nats://127.0.0.1:1")
    assert unreachable.returncode == 1
    assert b"error:" in unreachable.stderr
    assert b"nats://127.0.0.1:1" in unreachable.stderr
    bad_topic = await cli("publish", "orders..created", "x")
    assert bad_topic.returncode == 2
    assert b"orders..created" in bad_topic.stderr
    wildcard = await cli("publish", "orders.*", "x")
    assert wildcard.returncode == 2
    assert b"orders.*" in wildcard.stderr
    js_wildcard = await cli("subscribe", ">")
    assert js_wildcard.returncode == 2
    assert b"'>'" in js_wildcard.stderr
    bad_metadata = await cli("publish", "t", "x", "--metadata", "novalue")
    assert bad_metadata.returncode == 2
    assert b"KEY=VALUE" in bad_metadata.stderr
    streams = await cli("streams", "--nats", "nats://127.0.0.1:1")
    assert streams.returncode == 1
    assert b"nats://127.0.0.1:1" in streams.stderr


async def test_help_of_each_command() -> None:
    for command, expected in [
        ("publish", b"--metadata"),
        ("subscribe", b"--group"),
        ("streams", b"--json"),
        ("bench", b"memory"),
    ]:
        result = await cli(command, "--help")
        assert result.returncode == 0, result.stderr
        assert expected in result.stdout, result.stdout
    top = await cli("--help")
    for name in (b"demo", b"publish", b"subscribe", b"streams", b"bench"):
        assert name in top.stdout


def _helps(parser: argparse.ArgumentParser, prog: str) -> Iterator[tuple[str, str]]:
    """``(command, help text)`` of ``parser`` and of every subcommand under it."""
    yield prog, parser.format_help()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _helps(sub, f"{prog} {name}")


#: reST that must not reach a terminal: inline literals, roles, links, directives.
_REST = re.compile(r"``|:[a-z]+(:[a-z]+)?:`|`_|^\s*\.\. ", re.M)


def test_every_help_text_is_plain_text() -> None:
    """What ``--help`` prints, for every command and every bench scenario, has no reST."""
    from piko_trio_events.__main__ import _parser
    from piko_trio_events.bench.__main__ import parser as bench_parser

    helps = [*_helps(_parser(), "piko-events"), *_helps(bench_parser(), "piko-events bench")]
    names = {command for command, _ in helps}
    assert {"piko-events demo", "piko-events streams", "piko-events bench nats"} <= names
    markup = {
        command: [line for line in text.splitlines() if _REST.search(line)]
        for command, text in helps
    }
    assert {command: lines for command, lines in markup.items() if lines} == {}


async def test_sigterm_interrupts_a_publish_from_stdin_with_exit_130() -> None:
    async with open_nats_server(jetstream=True) as server:
        proc = await subscriber("feed", "--count", "1", "--nats", server.url)
        publisher = await trio.lowlevel.open_process(
            [*CLI, "publish", "feed", "--nats", server.url],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=ENV,
        )
        assert publisher.stdin is not None
        try:
            await publisher.stdin.send_all(b"first\n")  # and stdin stays open
            code, out, err = await finish(proc)
            assert (code, out) == (0, "feed: first\n"), err
            publisher.send_signal(signal.SIGTERM)
            code, out, err = await finish(publisher)
        finally:
            await publisher.stdin.aclose()
    assert code == 130, err
    assert "interrupted after publishing 1 message(s) to feed" in err


async def test_no_provision_creates_no_stream_and_uses_an_existing_one() -> None:
    for command in ("publish", "subscribe"):
        shown = await cli(command, "--help")
        help_text = b" ".join(shown.stdout.split())  # argparse wraps the lines
        assert b"--no-provision" in help_text
        assert b"a stream PIKO_<root>" in help_text
    async with open_nats_server(jetstream=True) as server:
        # No stream holds the topic: a clear error, exit 1, and nothing created.
        refused = await cli(
            "publish", "orders.created", "x", "--no-provision", "--nats", server.url
        )
        assert refused.returncode == 1, refused.stderr
        err = refused.stderr.decode()
        assert err.startswith("error: no JetStream stream holds topic 'orders.created'"), err
        assert "drop --no-provision to have PIKO_orders created" in err
        unsubscribed = await cli(
            "subscribe", "orders.*", "--no-provision", "--count", "1", "--nats", server.url
        )
        assert unsubscribed.returncode == 1, unsubscribed.stderr
        assert b"no JetStream stream holds topic 'orders.*'" in unsubscribed.stderr
        listed = await cli("streams", "--nats", server.url)
        assert listed.stdout == b"no JetStream streams\n", listed.stdout
        # Without the flag the stream is provisioned; with it, an existing one is used.
        provisioned = await cli("publish", "orders.created", "first", "--nats", server.url)
        assert provisioned.returncode == 0, provisioned.stderr
        proc = await subscriber("orders.*", "--no-provision", "--count", "1", "--nats", server.url)
        sent = await cli("publish", "orders.paid", "second", "--no-provision", "--nats", server.url)
        assert sent.returncode == 0, sent.stderr
        code, out, err = await finish(proc)
        assert (code, out) == (0, "orders.paid: second\n"), err
        listed = await cli("streams", "--nats", server.url)
    assert listed.stdout.decode().count("stream PIKO_orders ") == 1, listed.stdout
