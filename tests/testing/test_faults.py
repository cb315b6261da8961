"""Fault schedules: what the strategy draws and shrinks to, and what the runner does."""

from __future__ import annotations

import math
from typing import Any

import pytest
import trio
from hypothesis import find as _find
from hypothesis import given, settings
from hypothesis import strategies as st

from piko_trio_events.testing import (
    FAULT_KINDS,
    AppliedFault,
    FaultSchedule,
    FaultStep,
    fault_schedules,
    open_link,
    open_nats_cluster,
    run_fault_schedule,
)


def find(strategy: st.SearchStrategy[FaultSchedule], condition: Any) -> FaultSchedule:
    """hypothesis.find, the same whatever the example database holds."""
    return _find(
        strategy, condition, settings=settings(database=None, derandomize=True, max_examples=500)
    )


@given(schedule=fault_schedules(nodes=3, max_steps=4, max_hold=1.5, max_delay=0.1))
@settings(max_examples=50)
def test_schedules_stay_within_their_bounds(schedule: FaultSchedule) -> None:
    assert 1 <= len(schedule) <= 4
    for step in schedule.steps:
        assert step.kind in FAULT_KINDS
        assert 0 <= step.node < 3
        assert 0 <= step.hold <= 1.5
        assert 0 <= step.delay <= 0.1
        assert 0 <= step.rest <= 1.0
    assert math.isclose(schedule.duration, sum(s.hold + s.rest for s in schedule.steps))


def test_schedules_shrink_towards_few_short_plain_faults() -> None:
    found = find(fault_schedules(), lambda s: any(step.kind == "kill" for step in s.steps))
    [step] = found.steps  # one step, shrunk to its plainest form
    assert (step.kind, step.node, step.hold) == ("kill", 0, 0.0)
    assert repr(found).startswith("FaultSchedule(kill n0 for 0s")
    two = find(
        fault_schedules(kinds=["pause", "partition"]),
        lambda s: sum(step.kind == "partition" and step.hold >= 1 for step in s.steps) >= 2,
    )
    partitions = [(s.kind, s.node, s.hold) for s in two.steps if s.kind == "partition"]
    assert partitions == [("partition", 0, 1.0), ("partition", 0, 1.0)]
    assert len(two.steps) <= 3


def test_kinds_are_restricted_and_arguments_checked() -> None:
    only = find(fault_schedules(kinds=["stop"]), lambda s: True)
    assert {step.kind for step in only.steps} == {"stop"}
    bad: dict[str, Any]
    for bad in (
        {"kinds": []},
        {"kinds": ["meteor"]},
        {"nodes": 0},
        {"min_steps": 3, "max_steps": 2},
        {"max_hold": -1.0},
    ):
        with pytest.raises(ValueError):  # noqa: PT011 - each names its own field
            fault_schedules(**bad)
    with pytest.raises(ValueError, match="kind"):
        FaultStep("meteor")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=">= 0"):
        FaultStep("kill", hold=-1)
    assert FaultStep("slow", node=2, hold=1, delay=0.05, rest=0.5).describe() == (
        "slow(0.05s) n2 for 1s, rest 0.5s"
    )
    assert repr(FaultSchedule()) == "FaultSchedule(no fault)"


@pytest.mark.nats
async def test_the_runner_applies_each_fault_while_it_holds_and_heals_it() -> None:
    schedule = FaultSchedule(
        (
            FaultStep("kill", node=1, hold=0.2),
            FaultStep("stop", node=2, hold=0.2),
            FaultStep("partition", node=0, hold=0.2),
            FaultStep("partition_outbound", node=1, hold=0.1),
            FaultStep("partition_inbound", node=2, hold=0.1),
            FaultStep("client_cut", node=0, hold=0.1),
            FaultStep("slow", node=1, hold=0.1, delay=0.05),
            FaultStep("stall", node=0, hold=0.1),
            FaultStep("pause", node=0, hold=0.1, rest=0.1),
        )
    )
    seen: list[str] = []
    with trio.fail_after(90):
        async with open_nats_cluster(3, route_links=True) as cluster:
            await cluster.wait_healthy()
            async with open_link(cluster[0].port) as client_link:
                client_links = {0: [client_link]}

                def check(applied: AppliedFault) -> None:
                    """While each fault holds: is it in place?"""
                    step = applied.step
                    routes = cluster.route_links
                    if step.kind in ("kill", "stop"):
                        assert not cluster[step.node].running
                    elif step.kind == "partition":
                        assert routes[0, 1].state == routes[2, 0].state == "cut"
                        assert routes[1, 2].state == "ok"
                    elif step.kind == "partition_outbound":
                        assert routes[1, 0].state == "held upstream"
                        assert routes[0, 1].state == "held downstream"
                    elif step.kind == "partition_inbound":
                        assert routes[2, 0].state == "held downstream"
                    elif step.kind == "client_cut":
                        assert client_link.state == "cut"
                        assert routes[0, 1].state == "ok"
                    elif step.kind == "slow":
                        assert (
                            routes[1, 2].state == "upstream delayed 0.05s, downstream delayed 0.05s"
                        )
                        assert client_link.state == "ok"
                    elif step.kind == "stall":
                        assert (
                            client_link.state
                            == routes[0, 1].state
                            == ("held upstream, held downstream")
                        )
                    seen.append(step.kind)

                applied = await run_fault_schedule(
                    schedule, cluster, client_links=client_links, on_step=check
                )
                # Healed: every node up, routed, every link plain.
                assert all(node.running for node in cluster)
                assert {link.state for link in cluster.route_links.values()} == {"ok"}
                assert client_link.state == "ok"
                assert [await cluster.healthy(i) for i in range(3)] == [True] * 3
    assert seen == [step.kind for step in schedule.steps]
    for record in applied:
        assert record.started <= record.healed <= record.whole
        assert record.healed - record.started >= record.step.hold


@pytest.mark.nats
async def test_a_cancelled_run_heals_the_fault_it_was_holding() -> None:
    with trio.fail_after(60):
        async with open_nats_cluster(3, route_links=True) as cluster:
            with trio.CancelScope() as scope:

                def cancel(applied: AppliedFault) -> None:
                    assert not cluster[1].running
                    scope.cancel()

                await run_fault_schedule(
                    FaultSchedule((FaultStep("kill", node=1, hold=30.0),)), cluster, on_step=cancel
                )
            assert scope.cancelled_caught
            assert cluster[1].running  # started again, shielded, before the cancel went on
            await cluster.wait_healthy()


def test_strategy_can_drive_a_given_test() -> None:
    @given(schedule=fault_schedules(kinds=["pause"], max_steps=2))
    @settings(max_examples=5)
    def inner(schedule: FaultSchedule) -> None:
        assert all(step.kind == "pause" for step in schedule.steps)

    inner()
    assert st is not None
