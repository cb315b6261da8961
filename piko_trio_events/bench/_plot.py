"""Draw a results file: ``python -m piko_trio_events.bench plot RESULTS.json OUT.png``.

Three panels: every throughput scenario as the ratio of each contender to the
scenario's first baseline (log scale, 1.0 is parity), the round-trip latency
percentiles, and the peak RSS growth of the slow-consumer run. Needs
matplotlib (the ``bench`` extra), imported only here.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["render"]

#: A fixed colour per contender, so that a colour means the same on every panel.
COLOURS = {
    "raw-nats-py": "#7f7f7f",
    "bare-channel": "#7f7f7f",
    "faststream": "#d62728",
    "piko": "#1f77b4",
    "memory-provider": "#1f77b4",
    "piko-sc1": "#1f77b4",
    "piko-sc4": "#4c9bd6",
    "piko-sc16": "#7fbfea",
    "piko-2proc": "#2ca02c",
}


def _measured(scenario: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    return {
        name: result
        for name, result in scenario["contenders"].items()
        if result.get("median") is not None
    }


def _ratio_rows(scenarios: Sequence[Mapping[str, Any]]) -> list[tuple[str, str, float]]:
    """(scenario, contender, ratio to the first baseline) for the throughput scenarios."""
    rows: list[tuple[str, str, float]] = []
    for scenario in scenarios:
        if scenario["name"] in ("latency", "memory-rss") or not scenario["baselines"]:
            continue
        measured = _measured(scenario)
        base = measured.get(scenario["baselines"][0])
        if base is None:
            continue
        for name, result in measured.items():
            if name != scenario["baselines"][0]:
                ratio = float(result["median"]) / float(base["median"])
                rows.append((scenario["name"], name, ratio))
    return rows


def render(results: str, output: str) -> None:
    """Write ``output`` (PNG) from the JSON results file ``results``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    with open(results, encoding="utf-8") as f:
        data = json.load(f)
    scenarios: list[Mapping[str, Any]] = data["scenarios"]
    by_name = {s["name"]: s for s in scenarios}
    rows = _ratio_rows(scenarios)
    fig = plt.figure(figsize=(11, 5 + 0.3 * max(len(rows), 4)), layout="constrained")
    grid = fig.add_gridspec(2, 2, height_ratios=[max(len(rows), 4), 9])

    ax = fig.add_subplot(grid[0, :])
    labels = [f"{scenario}  {name}" for scenario, name, _ in rows]
    values = [ratio for _, _, ratio in rows]
    colours = [COLOURS.get(name, "#9467bd") for _, name, _ in rows]
    positions = list(range(len(rows)))[::-1]
    ax.barh(positions, values, color=colours)
    ax.set_yticks(positions, labels, fontsize=8)
    ax.set_xscale("log")
    ticks = [t for t in (0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 20) if min([*values, 1]) / 2 < t]
    ticks = [t for t in ticks if t < max([*values, 1]) * 2]
    ax.set_xticks(ticks)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _pos: f"{x:g}x"))
    ax.xaxis.set_minor_formatter(FuncFormatter(lambda x, _pos: ""))
    ax.axvline(1.0, color="black", linewidth=0.8)
    for y, value in zip(positions, values, strict=True):
        ax.text(value, y, f" {value:.2f}x", va="center", fontsize=7)
    ax.set_xlabel("median msg/s over the baseline's (log scale; right of the line is faster)")
    ax.set_title(
        "Throughput / the scenario's baseline: raw nats-py (NATS),"
        " bare trio channel (memory), subscribers_count 1 (scaling)",
        fontsize=10,
    )

    ax = fig.add_subplot(grid[1, 0])
    latency = by_name.get("latency")
    if latency is not None:
        measured = _measured(latency)
        keys = [("p50_us", "p50"), ("p99_us", "p99"), ("p999_us", "p99.9")]
        width = 0.8 / max(len(measured), 1)
        for i, (name, result) in enumerate(measured.items()):
            metrics = result.get("metrics") or {}
            xs = [k + i * width for k in range(len(keys))]
            ys = [float(metrics.get(key) or 0) for key, _ in keys]
            ax.bar(xs, ys, width, label=name, color=COLOURS.get(name, "#9467bd"))
        ax.set_xticks([k + 0.4 - width / 2 for k in range(len(keys))], [t for _, t in keys])
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _pos: f"{y:g}"))
        ax.yaxis.set_minor_formatter(FuncFormatter(lambda y, _pos: ""))
        ax.set_ylabel("round trip, microseconds (log)")
        rate = latency["params"].get("rate")
        ax.set_title(f"Latency at {rate:,.0f} requests/s" if rate else "Latency")
        ax.legend(fontsize=8)
    else:
        ax.set_axis_off()

    ax = fig.add_subplot(grid[1, 1])
    rss = by_name.get("memory-rss")
    if rss is not None:
        measured = _measured(rss)
        names = list(measured)
        growth = [
            float((measured[n].get("metrics") or {}).get("rss_growth_mib") or 0) for n in names
        ]
        ax.bar(names, growth, color=[COLOURS.get(n, "#9467bd") for n in names])
        for x, value in enumerate(growth):
            ax.text(x, value, f"{value:.1f}", ha="center", va="bottom", fontsize=8)
        ax.set_ylabel("peak RSS growth, MiB")
        count = rss["params"].get("messages", 0)
        ax.set_title(f"RSS growth: {count:,} msgs at {rss['params'].get('rate', 0):,.0f}/s")
    else:
        ax.set_axis_off()

    fig.suptitle(f"piko_trio_events benchmarks ({data.get('created', '')})", fontsize=10)
    fig.savefig(output, dpi=110)
    plt.close(fig)
