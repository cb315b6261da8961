"""``python -m piko_trio_events.bench [memory|nats|all] [options]``: run the benchmarks.

``nats`` runs raw nats-py and this library side by side against an embedded
nats-server (``nats --help`` for its options).

Each contender runs in its own subprocess, the contenders alternate round by
round, and the table shows the median of the rounds and the ratios to the
baseline(s). Results are also written as JSON (``--json``). Not a test: run
it on a quiet machine and compare ratios within one run, not across machines.

Adding a scenario: write a module beside ``_memory.py`` with a function that
returns a :class:`~._runner.Scenario`, give it an :class:`Entry` in
:data:`SCENARIOS` (its own options go in ``add_arguments``), and ``all``
runs it too.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from . import _memory
from ._runner import Scenario, report, run_scenarios, write_json


@dataclass(frozen=True)
class Entry:
    """A scenario on the command line."""

    help: str
    add_arguments: Callable[[argparse._ArgumentGroup], None]
    build: Callable[[argparse.Namespace], Scenario]


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, not {value}")
    return value


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, not {value}")
    return value


def _memory_arguments(group: argparse._ArgumentGroup) -> None:
    group.add_argument(
        "--size", type=_non_negative, default=128, help="payload bytes (default: 128)"
    )
    group.add_argument(
        "--buffer",
        type=_positive,
        default=8192,
        help="channel buffer and MemoryConfig.output_buffer (default: 8192)",
    )


def _memory_scenario(args: argparse.Namespace) -> Scenario:
    return _memory.scenario(
        messages=args.messages or 200_000,
        size=args.size,
        buffer=args.buffer,
        warmup=20_000 if args.warmup is None else args.warmup,
    )


#: Scenario name -> its command-line entry. ``all`` runs every one, in this order.
SCENARIOS: dict[str, Entry] = {
    "memory": Entry(
        "memory provider vs a bare trio memory channel (publish -> handler -> ack)",
        _memory_arguments,
        _memory_scenario,
    ),
}


def parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--rounds", type=_positive, default=5, help="rounds per contender (default: 5)"
    )
    common.add_argument(
        "--messages",
        type=_positive,
        default=None,
        help="messages a timed run (default: the scenario's; memory: 200000)",
    )
    common.add_argument(
        "--warmup",
        type=_non_negative,
        default=None,
        help="untimed messages before each timed run (default: the scenario's; memory: 20000)",
    )
    common.add_argument(
        "--json",
        metavar="PATH",
        default="bench-results.json",
        help="where to write the results (default: ./bench-results.json); '' for none",
    )
    common.add_argument(
        "--timeout",
        type=float,
        default=600.0,
        help="seconds one contender run may take (default: 600)",
    )
    p = argparse.ArgumentParser(
        prog="python -m piko_trio_events.bench",
        description=(
            "Throughput benchmarks, each contender in its own subprocess, alternating"
            " rounds, median of the rounds. With no scenario, runs all."
        ),
    )
    sub = p.add_subparsers(
        dest="scenario", metavar="{" + ",".join([*SCENARIOS, "nats", "all"]) + "}"
    )
    sub.add_parser("nats", help="core NATS and JetStream vs raw nats-py (own options)")
    every = sub.add_parser("all", parents=[common], help="every scenario available")
    for name, entry in SCENARIOS.items():
        one = sub.add_parser(name, parents=[common], help=entry.help)
        entry.add_arguments(one.add_argument_group(f"{name} scenario"))
        entry.add_arguments(every.add_argument_group(f"{name} scenario"))
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] == ["nats"]:
        # The NATS side-by-side runs (raw nats-py vs this library) have their own
        # harness beside the bridge; it starts its own nats-server.
        from ..nats import _bench

        return _bench.main(args_list[1:])
    if not args_list or (args_list[0].startswith("-") and args_list[0] not in ("-h", "--help")):
        args_list.insert(0, "all")
    args = parser().parse_args(args_list)
    names = list(SCENARIOS) if args.scenario == "all" else [args.scenario]
    scenarios = [SCENARIOS[name].build(args) for name in names]
    results = run_scenarios(scenarios, rounds=args.rounds, timeout=args.timeout)
    if args.json:
        write_json(report(results, args_list), args.json)
        print(f"\nresults written to {args.json}")
    failed = any(r.error for res in results for r in res.contenders.values())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
