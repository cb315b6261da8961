"""The command line and the demo, run as a user would, in a subprocess."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import trio

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
