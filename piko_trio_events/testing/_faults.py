"""Schedules of faults on a nats-server cluster, drawn by hypothesis, and their runner.

A :class:`FaultSchedule` is a list of :class:`FaultStep`: each takes one
node, does one thing to it (kill it, stop it, cut it off, slow it, ...),
holds that fault for a while, heals it, and waits until the cluster is
whole again before the next step. :func:`fault_schedules` draws them and
shrinks a failing one towards fewer, shorter and plainer faults;
:func:`run_fault_schedule` applies one to a
:class:`~piko_trio_events.testing.NatsCluster` while your application runs::

    @given(schedule=fault_schedules())
    @settings(max_examples=5, deadline=None)
    def test_pipeline_survives(schedule):
        async def main():
            async with open_nats_cluster(3, route_links=True) as cluster:
                ...  # start the application on cluster.url
                await run_fault_schedule(schedule, cluster)
                ...  # then check what the application did
        trio.run(main)

This module imports hypothesis; import it only where hypothesis is installed.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, TypeAlias

import trio
from hypothesis import strategies as st

from .._errors import ConfigError
from ._cluster import NatsCluster
from ._link import Link

__all__ = [
    "FAULT_KINDS",
    "AppliedFault",
    "FaultKind",
    "FaultSchedule",
    "FaultStep",
    "fault_schedules",
    "run_fault_schedule",
]

FaultKind: TypeAlias = Literal[
    "pause",
    "kill",
    "stop",
    "partition",
    "partition_outbound",
    "partition_inbound",
    "client_cut",
    "slow",
    "stall",
]

#: Every kind, plainest first (hypothesis shrinks a step's kind towards the front).
FAULT_KINDS: tuple[FaultKind, ...] = (
    "pause",
    "stop",
    "kill",
    "slow",
    "client_cut",
    "partition",
    "stall",
    "partition_outbound",
    "partition_inbound",
)

_WHAT = {
    "pause": "nothing (a quiet period)",
    "kill": "kill -9, then start from its store",
    "stop": "graceful stop (SIGTERM), then start: a rolling upgrade",
    "partition": "cut off from the other nodes on its routes, both ways",
    "partition_outbound": "what it sends to the other nodes held (one-way partition)",
    "partition_inbound": "what the other nodes send it held (one-way partition)",
    "client_cut": "its clients' links cut (they reconnect elsewhere, or wait)",
    "slow": "every link of the node delayed by `delay` seconds each way",
    "stall": "every link of the node (routes and clients) stalled, connections kept open",
}


@dataclass(frozen=True)
class FaultStep:
    """One fault: done to node ``node``, held ``hold`` seconds, then healed.

    ``delay`` is the one-way latency of a ``"slow"`` step; ``rest`` is how long
    the runner waits after the cluster is whole again, before the next step.
    """

    kind: FaultKind
    node: int = 0
    hold: float = 0.5
    delay: float = 0.0
    rest: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in _WHAT:
            raise ConfigError(f"kind must be one of {sorted(_WHAT)}, not {self.kind!r}")
        if self.node < 0 or self.hold < 0 or self.delay < 0 or self.rest < 0:
            raise ConfigError(f"node, hold, delay and rest must be >= 0: {self!r}")

    def describe(self) -> str:
        """``"kill n1 for 0.5s"``: the step in a few words."""
        what = self.kind if self.kind != "slow" else f"slow({self.delay:g}s)"
        text = (
            f"{what} for {self.hold:g}s"
            if self.kind == "pause"
            else (f"{what} n{self.node} for {self.hold:g}s")
        )
        return text + (f", rest {self.rest:g}s" if self.rest else "")


@dataclass(frozen=True)
class FaultSchedule:
    """Fault steps applied one after another by :func:`run_fault_schedule`."""

    steps: tuple[FaultStep, ...] = ()

    def __len__(self) -> int:
        return len(self.steps)

    def __repr__(self) -> str:
        return f"FaultSchedule({'; '.join(step.describe() for step in self.steps) or 'no fault'})"

    @property
    def duration(self) -> float:
        """The seconds the steps hold their faults and rest, healing not counted."""
        return sum(step.hold + step.rest for step in self.steps)


@dataclass
class AppliedFault:
    """What :func:`run_fault_schedule` did for one step, in trio time."""

    step: FaultStep
    started: float
    healed: float = float("nan")
    #: When the cluster was whole again (every node healthy and routed).
    whole: float = float("nan")

    @property
    def kind(self) -> FaultKind:
        return self.step.kind


def fault_schedules(
    *,
    kinds: Sequence[FaultKind] = FAULT_KINDS,
    nodes: int = 3,
    max_steps: int = 6,
    min_steps: int = 1,
    max_hold: float = 2.0,
    max_delay: float = 0.2,
    max_rest: float = 1.0,
) -> st.SearchStrategy[FaultSchedule]:
    """Draw :class:`FaultSchedule` s of ``min_steps`` to ``max_steps`` steps.

    Args:
        kinds: the faults to draw from (see :data:`FAULT_KINDS`); leave out
            ``"client_cut"`` and ``"stall"`` when your clients do not connect
            through links, and the partitions when the routes do not.
        nodes: how many nodes the cluster has (steps pick one).
        max_steps: the most steps a schedule has.
        max_hold: the longest a fault is held, in seconds.
        max_delay: the largest one-way delay of a ``"slow"`` step.
        max_rest: the longest quiet period after a step.

    Schedules shrink towards fewer steps, the front of ``kinds``, node 0,
    and shorter holds, delays and rests.
    """
    kinds = tuple(kinds)
    if not kinds or any(kind not in _WHAT for kind in kinds):
        raise ConfigError(f"kinds must be a non-empty selection of {list(FAULT_KINDS)}: {kinds!r}")
    if not isinstance(nodes, int) or nodes < 1:
        raise ConfigError(f"nodes must be an int >= 1, not {nodes!r}")
    if not 0 <= min_steps <= max_steps:
        raise ConfigError(f"need 0 <= min_steps <= max_steps, not {min_steps}, {max_steps}")
    if min(max_hold, max_delay, max_rest) < 0:
        raise ConfigError("max_hold, max_delay and max_rest must be >= 0")

    def seconds(top: float) -> st.SearchStrategy[float]:
        # Tenths of a second: readable schedules that shrink towards 0.
        return st.integers(0, round(top * 10)).map(lambda tenths: tenths / 10)

    def delays(top: float) -> st.SearchStrategy[float]:
        return st.integers(0, round(top * 100)).map(lambda hundredths: hundredths / 100)

    steps = st.builds(
        FaultStep,
        kind=st.sampled_from(kinds),
        node=st.integers(0, nodes - 1),
        hold=seconds(max_hold),
        delay=delays(max_delay),
        rest=seconds(max_rest),
    )
    return st.lists(steps, min_size=min_steps, max_size=max_steps).map(
        lambda drawn: FaultSchedule(tuple(drawn))
    )


@dataclass
class _Target:
    cluster: NatsCluster
    client_links: Mapping[int, Sequence[Link]] = field(default_factory=dict)

    def links_of(self, node: int) -> list[Link]:
        routes = [link for (i, j), link in self.cluster.route_links.items() if node in (i, j)]
        return routes + list(self.client_links.get(node, ()))


async def run_fault_schedule(
    schedule: FaultSchedule,
    cluster: NatsCluster,
    *,
    client_links: Mapping[int, Sequence[Link]] | None = None,
    heal_timeout: float = 30.0,
    on_step: Callable[[AppliedFault], Awaitable[None] | None] | None = None,
) -> list[AppliedFault]:
    """Apply ``schedule`` to ``cluster``, one step after another.

    Each step faults its node (``node`` modulo the cluster's size), sleeps
    ``hold`` seconds (holding the fault), heals it, waits until the cluster
    is whole again (:meth:`NatsCluster.wait_healthy`, at most
    ``heal_timeout`` seconds, else ``trio.TooSlowError``), then rests
    ``rest`` seconds. Partitions need ``open_nats_cluster(route_links=True)``;
    ``"client_cut"`` and ``"stall"`` act on ``client_links[node]``, the links
    through which your clients reach that node (a step with none to act on
    only holds). ``on_step`` is called with each step once its fault is in
    place (before the hold).

    Returns what was applied, with when each fault started, was healed, and
    when the cluster was whole again, for a report of latency during faults.
    If the run is cancelled, the fault being held is healed first
    (shielded), so the cluster is left whole.
    """
    target = _Target(cluster, client_links or {})
    applied: list[AppliedFault] = []
    for step in schedule.steps:
        node = step.node % len(cluster)
        record = AppliedFault(step, trio.current_time())
        applied.append(record)
        heal = await _apply(target, step, node)
        try:
            if on_step is not None:
                result = on_step(record)
                if result is not None:
                    await result
            await trio.sleep(step.hold)
        finally:
            with trio.CancelScope(shield=True):
                await heal()
                record.healed = trio.current_time()
        with trio.fail_after(heal_timeout):
            await cluster.wait_healthy()
        record.whole = trio.current_time()
        await trio.sleep(step.rest)
    return applied


async def _apply(target: _Target, step: FaultStep, node: int) -> Callable[[], Awaitable[None]]:
    """Do ``step`` to ``node``; return what heals it."""
    cluster = target.cluster
    server = cluster[node]
    kind = step.kind

    async def nothing() -> None:
        pass

    if kind == "pause":
        return nothing
    if kind in ("kill", "stop"):
        await (server.kill() if kind == "kill" else server.stop())
        return server.start
    if kind in ("partition", "partition_outbound", "partition_inbound"):
        side = {"partition": "both", "partition_outbound": "outbound"}.get(kind, "inbound")
        cluster.isolate(node, side)  # type: ignore[arg-type]

        async def heal_partition() -> None:
            cluster.heal()

        return heal_partition
    links = (
        target.links_of(node) if kind != "client_cut" else list(target.client_links.get(node, ()))
    )
    for link in links:
        if kind == "client_cut":
            link.cut()
        elif kind == "stall":
            link.stall()
        else:
            link.delay(step.delay)

    async def restore() -> None:
        for link in links:
            link.restore()

    return restore
