"""``python -m piko_trio_events.bench [SCENARIO|nats|all] [options]``: run the benchmarks.

``all`` (the default) runs every scenario: the memory provider against a bare
trio channel, the NATS matrix (raw nats-py, FastStream when installed, and
this library, against a nats-server the harness starts) and the memory
provider's peak RSS under a slow consumer. ``nats`` runs the NATS scenarios
only; a scenario's name runs that one. ``plot RESULTS.json OUT.png`` draws
a results file (needs matplotlib: the ``bench`` extra).

Each contender runs in its own subprocess, the contenders alternate round by
round, and the table shows the median of the rounds and the ratios to the
baseline(s). Results are also written as JSON (``--json``). Not a test: run
it on a quiet machine and compare ratios within one run, not across machines.

Adding a scenario: write a module beside ``_memory.py`` with a function that
returns a :class:`~._runner.Scenario` and give it an :class:`Entry` in
:data:`SCENARIOS` (its own options go in ``add_arguments``); ``all`` runs it too.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

from . import _cqrs, _memory, _nats, _rss
from ._runner import Scenario, print_summary, report, run_scenarios, write_json


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


def _no_arguments(group: argparse._ArgumentGroup) -> None:
    pass


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
    default = 20_000 if args.quick else 200_000
    return _memory.scenario(
        messages=args.messages or default,
        size=args.size,
        buffer=args.buffer,
        warmup=(2_000 if args.quick else 20_000) if args.warmup is None else args.warmup,
    )


def _rss_arguments(group: argparse._ArgumentGroup) -> None:
    group.add_argument(
        "--count",
        type=_positive,
        default=None,
        help="messages through the slow consumer (default: 1000000; --quick: 20000)",
    )
    group.add_argument(
        "--rate",
        type=float,
        default=20_000.0,
        help="the consumer's limit, messages a second (default: 20000)",
    )


def _rss_scenario(args: argparse.Namespace) -> Scenario:
    count = args.count or (20_000 if args.quick else 1_000_000)
    return _rss.scenario(messages=count, rate=args.rate)


def _nats_scenario(name: str, args: argparse.Namespace) -> Scenario:
    if args.messages:
        counts = _nats.Counts.every(args.messages)
    else:
        counts = _nats.Counts.quick() if args.quick else _nats.Counts()
    return _nats.build(name, counts, timeout=min(args.timeout, 120.0))


def _cqrs_scenario(name: str, args: argparse.Namespace) -> Scenario:
    timeout = min(args.timeout, 300.0)
    if name == "cqrs-request":
        return _cqrs.request_scenario(args.messages or (300 if args.quick else 5_000), timeout)
    kind = name.partition("-")[2]
    full = 100_000 if kind == "memory" else 50_000
    messages = args.messages or (full // 20 if args.quick else full)
    return _cqrs.throughput_scenario(kind, messages, timeout)


#: Scenario name -> its command-line entry. ``all`` runs every one, in this order.
SCENARIOS: dict[str, Entry] = {
    "memory": Entry(
        "memory provider vs a bare trio memory channel (publish -> handler -> ack)",
        _memory_arguments,
        _memory_scenario,
    ),
    **{
        name: Entry(
            _nats.HELP[name],
            _no_arguments,
            partial(_nats_scenario, name),
        )
        for name in _nats.NATS_SCENARIOS
    },
    "cqrs-memory": Entry(
        "typed (EventBus, JSON) vs bytes path, five-field dataclass, memory provider",
        _no_arguments,
        partial(_cqrs_scenario, "cqrs-memory"),
    ),
    "cqrs-core": Entry(
        "typed (EventBus, JSON) vs bytes path, five-field dataclass, core NATS",
        _no_arguments,
        partial(_cqrs_scenario, "cqrs-core"),
    ),
    "cqrs-request": Entry(
        "request/reply p50/p99: CommandBus.request vs nc.request vs FastStream broker.request",
        _no_arguments,
        partial(_cqrs_scenario, "cqrs-request"),
    ),
    "memory-rss": Entry(
        "memory provider: peak RSS, 1,000,000 messages to a consumer limited to 20,000/s",
        _rss_arguments,
        _rss_scenario,
    ),
}

#: Names that run several scenarios.
GROUPS: dict[str, tuple[str, ...]] = {
    "all": tuple(SCENARIOS),
    "nats": _nats.NATS_SCENARIOS,
    "cqrs": ("cqrs-memory", "cqrs-core", "cqrs-request"),
}


def parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--rounds",
        type=_positive,
        default=None,
        help="rounds per contender (default: 3; --quick: 1; memory-rss: always 1)",
    )
    common.add_argument(
        "--messages",
        type=_positive,
        default=None,
        help="messages a timed run, for every scenario but memory-rss (default: the scenario's)",
    )
    common.add_argument(
        "--warmup",
        type=_non_negative,
        default=None,
        help="untimed messages before each timed memory run (default: 20000)",
    )
    common.add_argument(
        "--quick",
        action="store_true",
        help="small counts and one round: a smoke test of the harness, not a measurement",
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
            "Throughput and latency benchmarks, each contender in its own subprocess,"
            " alternating rounds, median of the rounds. With no scenario, runs all."
        ),
    )
    names = [*GROUPS, *SCENARIOS, "plot"]
    sub = p.add_subparsers(dest="scenario", metavar="{" + ",".join(names) + "}")
    for group, members in GROUPS.items():
        what = "every scenario" if group == "all" else f"the {group.upper()} scenarios"
        every = sub.add_parser(group, parents=[common], help=f"{what} ({len(members)})")
        for name in members:
            if SCENARIOS[name].add_arguments is not _no_arguments:
                SCENARIOS[name].add_arguments(every.add_argument_group(f"{name} scenario"))
    for name, entry in SCENARIOS.items():
        one = sub.add_parser(name, parents=[common], help=entry.help)
        entry.add_arguments(one.add_argument_group(f"{name} scenario"))
    plot = sub.add_parser("plot", help="draw a results JSON file as a PNG (needs matplotlib)")
    plot.add_argument("results", help="a JSON file written by --json")
    plot.add_argument("output", help="the PNG to write")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if not args_list or (args_list[0].startswith("-") and args_list[0] not in ("-h", "--help")):
        args_list.insert(0, "all")
    args = parser().parse_args(args_list)
    if args.scenario == "plot":
        from ._plot import render

        render(args.results, args.output)
        print(f"plot written to {args.output}")
        return 0
    names = GROUPS.get(args.scenario, (args.scenario,))
    for option in ("size", "buffer", "count", "rate"):
        if not hasattr(args, option):
            setattr(args, option, None)
    if args.size is None:
        args.size, args.buffer = 128, 8192
    if args.rate is None:
        args.rate = 20_000.0
    scenarios = [SCENARIOS[name].build(args) for name in names]
    rounds = args.rounds or (1 if args.quick else 3)
    results = run_scenarios(scenarios, rounds=rounds, timeout=args.timeout)
    if len(results) > 1:
        print_summary(results)
    if args.json:
        write_json(report(results, args_list), args.json)
        print(f"\nresults written to {args.json}")
    failed = any(r.error for res in results for r in res.contenders.values())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
