"""The shared drain: one budget cut into deadlines (piko_trio_events._lifecycle)."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from piko_trio_events import MemoryConfig, Message, RouterConfig, open_memory_provider
from piko_trio_events._lifecycle import DrainStep, drain, reserve, unwind_reserve
from piko_trio_events._router import Router


async def test_steps_keep_their_reserves_whatever_the_router_and_the_other_steps_do(
    autojump_clock: trio.testing.MockClock,
) -> None:
    budget = 30.0
    log: list[tuple[str, float]] = []
    with trio.fail_after(2 * budget):  # a drain that never ends fails here
        async with open_memory_provider() as provider:
            # Equal budgets, as by default: the router would like all 30 s.
            router = Router(
                provider.publisher, provider.subscriber, RouterConfig(close_timeout=budget)
            )

            @router.handler("in", name="stuck")
            async def stuck(msg: Message) -> None:
                try:
                    await trio.sleep_forever()
                finally:
                    log.append(("handler cancelled", trio.current_time()))

            async with trio.open_nursery() as nursery:
                await nursery.start(router._run)
                await provider.publisher.publish("in", Message(b"x"))
                await trio.testing.wait_all_tasks_blocked()

                async def hangs() -> None:
                    log.append(("hangs", trio.current_time()))
                    await trio.sleep_forever()

                async def fails() -> None:
                    log.append(("fails", trio.current_time()))
                    raise RuntimeError("boom")

                async def last() -> None:
                    log.append(("last", trio.current_time()))
                    await trio.sleep(0.2)

                start = trio.current_time()
                with trio.CancelScope() as outer:
                    outer.cancel()  # an outer cancellation does not shorten the drain
                    report = await drain(
                        router,
                        [
                            DrainStep("hangs", hangs, 1.0),
                            DrainStep("fails", fails, 1.0),
                            DrainStep("last", last, 1.0),
                        ],
                        budget=budget,
                    )
                end = trio.current_time()
    at = {name: t - start for name, t in log}
    router_end = budget - 3.0
    assert at["handler cancelled"] == pytest.approx(router_end - unwind_reserve(budget))
    # The next step starts as soon as the router is done: it gets the time left.
    assert at["hangs"] == pytest.approx(at["handler cancelled"])
    assert at["fails"] == pytest.approx(budget - 2.0)  # cut at its deadline
    assert at["last"] == pytest.approx(budget - 2.0)  # a failing step does not stop the next
    assert end - start == pytest.approx(budget - 2.0 + 0.2)
    assert report.failed == ["hangs", "fails"]


@pytest.mark.parametrize("budget", [0.0, 0.5, 2.0, 30.0, 600.0])
def test_reserves_are_a_capped_share(budget: float) -> None:
    assert reserve(budget, 0.05, 1.0) == min(budget * 0.05, 1.0)
    assert 0.0 <= unwind_reserve(budget) <= min(budget, 1.0)


async def test_the_memory_provider_drains_within_its_routers_budget(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A handler that needs time to unwind after its cancellation still leaves
    the drain inside the budget, and its message is reported, not lost."""
    budget = 2.0
    config = MemoryConfig(router=RouterConfig(close_timeout=budget))
    started = trio.Event()
    async with open_memory_provider(config) as provider:

        @provider.router.handler("in", name="slow")
        async def slow(msg: Message) -> None:
            started.set()
            try:
                await trio.sleep_forever()
            finally:
                with trio.CancelScope(shield=True):
                    await trio.sleep(unwind_reserve(budget) / 2)

        await provider.publisher.publish("in", Message(b"x", uuid="m1"))
        await started.wait()
        began = trio.current_time()
    assert trio.current_time() - began <= budget
    assert [u.message.uuid for u in provider.undelivered] == ["m1"]
