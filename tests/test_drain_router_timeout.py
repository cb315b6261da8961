"""The router's own close_timeout bounds its handlers inside a longer drain
budget (piko_trio_events._lifecycle.drain): the budget is a ceiling, not a
share the router may use whole."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from piko_trio_events import Message, RouterConfig, open_memory_provider
from piko_trio_events._lifecycle import DrainStep, drain
from piko_trio_events._router import Router


async def test_handlers_are_cancelled_at_the_routers_close_timeout_not_at_the_budgets_end(
    autojump_clock: trio.testing.MockClock,
) -> None:
    budget, router_timeout = 30.0, 2.0
    cancelled_at: list[float] = []
    step_at: list[float] = []
    with trio.fail_after(2 * budget):
        async with open_memory_provider() as provider:
            router = Router(
                provider.publisher,
                provider.subscriber,
                RouterConfig(close_timeout=router_timeout),
            )

            @router.handler("in", name="stuck")
            async def stuck(msg: Message) -> None:
                try:
                    await trio.sleep_forever()
                finally:
                    cancelled_at.append(trio.current_time())

            async def after() -> None:
                step_at.append(trio.current_time())
                await trio.lowlevel.checkpoint()

            async with trio.open_nursery() as nursery:
                await nursery.start(router._run)
                await provider.publisher.publish("in", Message(b"x"))
                await trio.testing.wait_all_tasks_blocked()
                start = trio.current_time()
                report = await drain(router, [DrainStep("after", after, 1.0)], budget=budget)
                end = trio.current_time()
    assert cancelled_at == [pytest.approx(start + router_timeout)]
    # The step after the router starts as soon as the handlers are done.
    assert step_at == [pytest.approx(start + router_timeout)]
    assert end - start == pytest.approx(router_timeout)
    assert report.ok
