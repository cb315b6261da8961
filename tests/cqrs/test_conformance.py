"""The conformance suite's typed cases, on every provider kind of tests/test_conformance.py."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import pytest
import trio

from piko_trio_events import MemoryConfig, Provider, open_memory_provider
from piko_trio_events.cqrs._conformance import TYPED_CHECKS
from piko_trio_events.nats import open_nats_provider
from piko_trio_events.testing import open_chaos_provider
from piko_trio_events.testing._chaos import ChaosSchedule
from piko_trio_events.testing._server import open_nats_server

from ..test_conformance import CASES, HAVE_NATS

Check = Callable[[Callable[[], AbstractAsyncContextManager[Provider]]], object]


def _params() -> list[object]:
    params: list[object] = []
    for case, (_features, nats_config) in [*CASES.items(), ("chaos", (None, None))]:
        marks: list[pytest.MarkDecorator] = []
        if nats_config is not None:
            marks.append(pytest.mark.nats)
            if not HAVE_NATS:
                marks.append(pytest.mark.skip(reason="nats-py is not installed"))
        for name, check in TYPED_CHECKS:
            params.append(pytest.param(case, check, id=f"{case}-{name}", marks=marks))
    return params


@pytest.mark.parametrize(("case", "check"), _params())
async def test_typed_conformance(case: str, check: Check) -> None:
    with trio.fail_after(60):
        if case == "chaos":  # no faults: a wrapper provider borrows the inner transport

            def make_chaos() -> AbstractAsyncContextManager[Provider]:
                return open_chaos_provider(ChaosSchedule())

            await check(make_chaos)  # type: ignore[misc]
            return
        features, nats_config = CASES[case]
        if nats_config is None:
            config = MemoryConfig(persistent=features.new_subscriber_receives_old_messages)

            def make_memory() -> AbstractAsyncContextManager[Provider]:
                return open_memory_provider(config)

            await check(make_memory)  # type: ignore[misc]
            return
        async with open_nats_server(jetstream=True) as server:
            nats = nats_config(server.url)

            @asynccontextmanager
            async def make_nats() -> AsyncIterator[Provider]:
                async with open_nats_provider(nats) as provider:
                    yield provider

            await check(make_nats)  # type: ignore[misc]
