"""The universal provider suite (Watermill's TestPubSub), one test per check and provider.

Counts are scaled down (``scale=0.2``) so that CI stays fast; set
``PIKO_CONFORMANCE_FULL=1`` for Watermill's full counts.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import replace

import pytest

from piko_trio_events import (
    JetStreamConfig,
    MemoryConfig,
    Message,
    NatsConfig,
    Provider,
    open_memory_provider,
)
from piko_trio_events.nats import open_nats_provider
from piko_trio_events.testing._conformance import (
    CHECKS,
    CheckFn,
    CheckSkipped,
    Features,
    check_provider,
    skip_reason,
)
from piko_trio_events.testing._server import open_nats_server

SCALE = 1.0 if os.environ.get("PIKO_CONFORMANCE_FULL") == "1" else 0.2

HAVE_NATS = importlib.util.find_spec("nats") is not None

MEMORY = Features(
    consumer_groups=True,
    exactly_once_delivery=True,
    guaranteed_order=False,  # a subscription hands out messages before earlier ones are acked
    guaranteed_order_with_single_subscriber=True,
    persistent=False,
)

# Per provider: its features (restart_server filled in per test) and how to
# configure it against a server (None: no server).
CASES: dict[str, tuple[Features, Callable[[str], NatsConfig] | None]] = {
    "memory": (MEMORY, None),
    "memory_persistent": (replace(MEMORY, new_subscriber_receives_old_messages=True), None),
    "nats_core": (
        Features(
            consumer_groups=False,  # a queue group with no member receives nothing
            exactly_once_delivery=False,
            guaranteed_order_with_single_subscriber=True,
            persistent=False,
        ),
        lambda url: NatsConfig(
            url=url, reconnect_wait=0.2, jetstream=JetStreamConfig(disabled=True)
        ),
    ),
    "jetstream": (
        Features(
            consumer_groups=True,
            exactly_once_delivery=False,
            guaranteed_order_with_single_subscriber=True,
            persistent=True,
            new_subscriber_receives_old_messages=True,
        ),
        lambda url: NatsConfig(url=url, reconnect_wait=0.2),
    ),
    "jetstream_exactly_once": (
        Features(
            consumer_groups=True,
            exactly_once_delivery=True,
            guaranteed_order_with_single_subscriber=True,
            persistent=True,
            new_subscriber_receives_old_messages=True,
        ),
        lambda url: NatsConfig(
            url=url,
            reconnect_wait=0.2,
            jetstream=JetStreamConfig(track_message_id=True, ack_async=False),
        ),
    ),
}

# (provider, check) -> why it fails: known provider bugs, reported to the lead.
# (track_message_id once dropped a copy published to another topic of the same
# stream: the message id is now qualified by the topic.)
KNOWN_FAILURES: dict[tuple[str, str], str] = {}


async def _never_called() -> None:  # pragma: no cover - a placeholder
    raise AssertionError("the placeholder restart_server was called")


def _params() -> list[object]:
    params: list[object] = []
    for case, (features, nats_config) in CASES.items():
        if features.persistent:  # these get a server restart at run time
            features = replace(features, restart_server=_never_called)
        for name, check in CHECKS:
            marks: list[pytest.MarkDecorator] = []
            skip = skip_reason(name, features)
            if skip is not None:  # decided here: pytest-trio drops a skip's reason
                marks.append(pytest.mark.skip(reason=skip))
            if nats_config is not None:
                marks.append(pytest.mark.nats)
                if not HAVE_NATS:
                    marks.append(pytest.mark.skip(reason="nats-py is not installed"))
            reason = KNOWN_FAILURES.get((case, name))
            if reason is not None:
                marks.append(pytest.mark.xfail(strict=True, reason=reason))
            params.append(pytest.param(case, check, id=f"{case}-{name}", marks=marks))
    return params


@pytest.mark.parametrize(("case", "check"), _params())
async def test_conformance(case: str, check: CheckFn) -> None:
    features, nats_config = CASES[case]
    if nats_config is None:
        memory_config = MemoryConfig(persistent=features.new_subscriber_receives_old_messages)

        def make_memory() -> AbstractAsyncContextManager[Provider]:
            return open_memory_provider(memory_config)

        await _run(check, make_memory, features)
        return
    async with open_nats_server(jetstream=True) as server:
        config = nats_config(server.url)

        @asynccontextmanager
        async def make_nats() -> AsyncIterator[Provider]:
            async with open_nats_provider(config) as provider:
                yield provider

        if features.persistent:  # a broker that keeps its store across a restart
            features = replace(features, restart_server=server.restart)
        await _run(check, make_nats, features)


async def _run(
    check: CheckFn,
    make_provider: Callable[[], AbstractAsyncContextManager[Provider]],
    features: Features,
) -> None:
    try:
        await check(make_provider, features, SCALE)
    except CheckSkipped as skip:
        pytest.skip(str(skip))


async def test_check_provider_runs_every_check() -> None:
    """The runner users call: every check, in turn, each reported."""
    results = await check_provider(
        lambda: open_memory_provider(MemoryConfig(persistent=True)),
        replace(MEMORY, new_subscriber_receives_old_messages=True),
        scale=0.05,
    )
    assert list(results) == [name for name, _ in CHECKS]
    assert results["no_ack"].startswith("skipped: ")
    assert results["reconnect"].startswith("skipped: ")
    assert all(r == "passed" for n, r in results.items() if n not in ("no_ack", "reconnect"))


async def test_check_provider_names_the_failing_check() -> None:
    """A provider that delivers one message in place of another fails with an
    AssertionError naming the check and what went wrong."""

    @asynccontextmanager
    async def faulty() -> AsyncIterator[Provider]:
        async with open_memory_provider(MemoryConfig()) as provider:
            publish = provider.publisher.publish

            async def swap_fifth(topic: str, *messages: Message) -> None:
                if len(messages) > 4:  # the fifth is lost, the fourth comes twice
                    messages = (*messages[:4], messages[3].copy(), *messages[5:])
                await publish(topic, *messages)

            provider.publisher.publish = swap_fifth  # type: ignore[method-assign]
            yield provider

    with pytest.raises(AssertionError, match="1 of 100 never arrived") as caught:
        await check_provider(faulty, MEMORY, scale=0.05)
    assert "in conformance check 'publish_subscribe'" in caught.value.__notes__
    assert "1 duplicate deliveries (exactly-once promised)" in str(caught.value)
