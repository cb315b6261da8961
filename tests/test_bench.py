"""The benchmark harness runs end to end on tiny counts and writes sane JSON.

Smoke tests, not measurements: each invocation runs the real harness (a
nats-server, one subprocess per contender) with ``--quick`` and tiny counts.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from piko_trio_events.bench._runner import (
    Column,
    Contender,
    ContenderResult,
    Scenario,
    ScenarioResult,
    Target,
)

HAVE_NATS = all(importlib.util.find_spec(m) is not None for m in ("nats", "trio_asyncio"))
HAVE_FASTSTREAM = importlib.util.find_spec("faststream") is not None
HAVE_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None
needs_nats = pytest.mark.skipif(not HAVE_NATS, reason="needs the nats extra (nats-py)")
ROOT = Path(__file__).resolve().parent.parent


def bench(tmp_path: Path, *args: str) -> dict[str, Any]:
    """Run ``python -m piko_trio_events.bench ARGS --json ...`` and return the JSON."""
    out = tmp_path / f"{args[0]}.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-m", "piko_trio_events.bench", *args, "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=ROOT,
        env=env,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    data: dict[str, Any] = json.loads(out.read_text(encoding="utf-8"))
    assert data["command"][-3:] == [*args[-1:], "--json", str(out)]
    return data


def scenario(data: dict[str, Any], name: str) -> dict[str, Any]:
    found = [s for s in data["scenarios"] if s["name"] == name]
    assert len(found) == 1, [s["name"] for s in data["scenarios"]]
    result: dict[str, Any] = found[0]
    return result


def ratio(data: dict[str, Any], contender: str, baseline: str, metric: str = "rate") -> Any:
    for entry in data["ratios"]:
        if (entry["contender"], entry["baseline"], entry["metric"]) == (
            contender,
            baseline,
            metric,
        ):
            return entry
    raise AssertionError(f"no ratio {contender} / {baseline} ({metric}) in {data['ratios']}")


def assert_measured(result: dict[str, Any], rounds: int) -> None:
    assert result["error"] is None
    assert result["skipped"] is None
    assert len(result["rates"]) == rounds
    assert all(rate > 0 for rate in result["rates"])
    assert result["median"] > 0
    assert result["us_per_message"] > 0


def assert_faststream(result: dict[str, Any]) -> None:
    """Measured when FastStream is installed, else skipped with a note saying why."""
    if HAVE_FASTSTREAM:
        assert result["error"] is None
        assert result["median"] > 0
    else:
        assert result["skipped"] == "missing faststream"


@pytest.mark.nats
@needs_nats
def test_core_nats_scenario_side_by_side(tmp_path: Path) -> None:
    data = bench(tmp_path, "core-128B", "--quick", "--rounds", "2", "--messages", "300")
    core = scenario(data, "core-128B")
    assert core["params"]["messages"] == 300
    assert core["params"]["url"].startswith("nats://127.0.0.1:")
    assert core["baselines"] == ["raw-nats-py", "faststream"]
    assert_measured(core["contenders"]["raw-nats-py"], 2)
    assert_measured(core["contenders"]["piko"], 2)
    assert_faststream(core["contenders"]["faststream"])
    for name in ("raw-nats-py", "piko"):
        # The clock stops once the handler has taken every message.
        assert [run["received"] for run in core["contenders"][name]["runs"]] == [300, 300]
    to_raw = ratio(core, "piko", "raw-nats-py")
    assert to_raw["ratio"] > 0
    assert len(to_raw["paired_ratios"]) == 2
    assert to_raw["target"] == 1.0
    assert isinstance(to_raw["met"], bool)
    expected = core["contenders"]["piko"]["median"] / core["contenders"]["raw-nats-py"]["median"]
    assert to_raw["ratio"] == pytest.approx(expected, rel=1e-3)
    assert ratio(core, "piko", "faststream")["target"] == 5.0


@pytest.mark.nats
@needs_nats
def test_a_nats_scenario_server_runs_for_its_block_only() -> None:
    """The scenarios' server is ``testing.open_nats_server``, run from the sync runner."""
    from piko_trio_events.bench._server import nats_server

    with nats_server() as params:
        url = str(params["url"])
        assert url.startswith("nats://127.0.0.1:")
        port = int(url.rpartition(":")[2])
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            assert sock.recv(4096).startswith(b"INFO ")
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()


def test_a_nats_scenario_server_that_cannot_start_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    import piko_trio_events.testing
    from piko_trio_events.bench._server import nats_server

    @asynccontextmanager
    async def no_server(jetstream: bool = True) -> AsyncIterator[None]:
        raise FileNotFoundError("nats-server not found")
        yield  # pragma: no cover

    monkeypatch.setattr(piko_trio_events.testing, "open_nats_server", no_server)
    with pytest.raises(FileNotFoundError, match="nats-server not found"), nats_server():
        pytest.fail("no server, no block")


@pytest.mark.nats
@needs_nats
def test_latency_scenario_reports_percentiles(tmp_path: Path) -> None:
    data = bench(tmp_path, "latency", "--quick", "--messages", "300")
    latency = scenario(data, "latency")
    for name in ("raw-nats-py", "piko"):
        result = latency["contenders"][name]
        assert_measured(result, 1)
        metrics = result["metrics"]
        assert 0 < metrics["p50_us"] <= metrics["p99_us"] <= metrics["p999_us"]
        assert result["runs"][0]["samples"] == 300
    p99 = ratio(latency, "piko", "raw-nats-py", "p99_us")
    assert p99["ratio"] > 0
    assert p99["target"] == 1.2


@pytest.mark.nats
@needs_nats
def test_concurrent_jetstream_scenarios_run(tmp_path: Path) -> None:
    """Issue 11's scenarios: 16 tasks publishing one message a call each, and
    confirmed acks of 8 concurrent handlers against raw nats-py's ack_sync."""
    data = bench(tmp_path, "js-publish-16tasks", "--quick", "--messages", "160")
    publish = scenario(data, "js-publish-16tasks")
    assert publish["params"]["tasks"] == 16
    for name in ("raw-nats-py", "piko"):
        assert_measured(publish["contenders"][name], 1)
        assert publish["contenders"][name]["runs"][0]["messages"] == 320
    assert ratio(publish, "piko", "raw-nats-py")["target"] == 2.0

    data = bench(tmp_path, "js-consume-confirmed-c8", "--quick", "--messages", "200")
    consume = scenario(data, "js-consume-confirmed-c8")
    assert consume["baselines"] == ["raw-nats-py"]
    for name in ("raw-nats-py", "piko"):
        assert_measured(consume["contenders"][name], 1)
    assert ratio(consume, "piko", "raw-nats-py")["target"] == 1.5


def test_memory_scenarios(tmp_path: Path) -> None:
    data = bench(tmp_path, "memory", "--quick", "--messages", "2000", "--warmup", "100")
    memory = scenario(data, "memory")
    assert_measured(memory["contenders"]["bare-channel"], 1)
    assert_measured(memory["contenders"]["handler-pipe"], 1)
    assert_measured(memory["contenders"]["memory-provider"], 1)
    assert ratio(memory, "memory-provider", "bare-channel")["ratio"] > 0
    assert ratio(memory, "memory-provider", "handler-pipe")["target"] == 0.9

    data = bench(tmp_path, "memory-rss", "--count", "3000", "--rate", "30000", "--rounds", "3")
    rss = scenario(data, "memory-rss")
    assert rss["rounds"] == 1  # a long scenario: one round whatever --rounds says
    for name in ("bare-channel", "memory-provider"):
        result = rss["contenders"][name]
        assert_measured(result, 1)
        run = result["runs"][0]
        assert run["received"] == 3000
        assert run["rss_peak_mib"] >= run["rss_before_mib"] > 0
        assert result["metrics"]["rss_growth_mib"] >= 0
        # The consumer is limited to 30,000/s: 3,000 messages take at least 0.1 s.
        assert result["median"] <= 30_000 * 1.05


def test_lower_is_better_targets_and_extra_columns() -> None:
    target = Target("ours", "theirs", 1.5, metric="p99_us")
    assert target.met(1.4)
    assert not target.met(1.6)
    assert Target("ours", "theirs", 0.9).met(0.95)
    assert not Target("ours", "theirs", 0.9).met(0.85)
    spec = Scenario(
        "s",
        "t",
        (Contender("ours", "m:f"), Contender("theirs", "m:f")),
        ("theirs",),
        (target,),
        columns=(Column("p99_us", "p99"),),
    )
    ours = ContenderResult("ours", [10.0, 30.0], [{"p99_us": 300.0}, {"p99_us": 100.0}])
    theirs = ContenderResult("theirs", [10.0, 10.0], [{"p99_us": 100.0}, {"p99_us": 100.0}])
    result = ScenarioResult(spec, {}, {"ours": ours, "theirs": theirs}, 2)
    assert result.ratio("ours", "theirs") == 2.0
    assert result.ratio("ours", "theirs", "p99_us") == 2.0
    assert result.paired_ratios("ours", "theirs", "p99_us") == [3.0, 1.0]
    dumped = result.to_json()
    assert dumped["contenders"]["ours"]["metrics"] == {"p99_us": 200.0}
    p99 = [r for r in dumped["ratios"] if r["metric"] == "p99_us" and r["contender"] == "ours"]
    assert p99 == [
        {
            "contender": "ours",
            "baseline": "theirs",
            "metric": "p99_us",
            "ratio": 2.0,
            "paired_ratios": [3.0, 1.0],
            "paired_median": 2.0,
            "target": 1.5,
            "met": False,
        }
    ]


def test_percentiles_nearest_rank() -> None:
    from piko_trio_events.bench._stats import percentiles

    got = percentiles([float(i) for i in range(1000, 0, -1)])
    assert (got["p50_us"], got["p99_us"], got["p999_us"], got["max_us"]) == (500, 990, 999, 1000)
    assert got["samples"] == 1000


@pytest.mark.skipif(not HAVE_MATPLOTLIB, reason="needs matplotlib (the bench extra)")
def test_plot_renders_a_results_file(tmp_path: Path) -> None:
    from piko_trio_events.bench._plot import render

    def contender(median: float | None, **metrics: float) -> dict[str, Any]:
        return {"median": median, "metrics": metrics, "skipped": None if median else "n/a: x"}

    data = {
        "created": "2026-01-01T00:00:00+00:00",
        "scenarios": [
            {
                "name": "core-128B",
                "baselines": ["raw-nats-py", "faststream"],
                "params": {},
                "contenders": {
                    "raw-nats-py": contender(100.0),
                    "faststream": contender(10.0),
                    "piko": contender(120.0),
                },
            },
            {
                "name": "js-publish-batch100",
                "baselines": ["raw-nats-py", "faststream"],
                "params": {},
                "contenders": {
                    "raw-nats-py": contender(100.0),
                    "faststream": contender(None),
                    "piko": contender(200.0),
                },
            },
            {
                "name": "latency",
                "baselines": ["raw-nats-py"],
                "params": {"rate": 1000.0},
                "contenders": {
                    "raw-nats-py": contender(1000.0, p50_us=100, p99_us=300, p999_us=900),
                    "piko": contender(1000.0, p50_us=120, p99_us=400, p999_us=1000),
                },
            },
            {
                "name": "memory-rss",
                "baselines": ["bare-channel"],
                "params": {"messages": 1000, "rate": 100.0},
                "contenders": {
                    "bare-channel": contender(100.0, rss_growth_mib=0.5),
                    "memory-provider": contender(100.0, rss_growth_mib=1.5),
                },
            },
        ],
    }
    results = tmp_path / "results.json"
    results.write_text(json.dumps(data), encoding="utf-8")
    out = tmp_path / "bench.png"
    render(str(results), str(out))
    png = out.read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    assert len(png) > 10_000
