"""Fixtures for the NATS tests: a real nats-server per test (it starts in ~20 ms)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from piko_trio_events.testing._server import NatsServer, open_nats_server


@pytest.fixture
async def nats_server() -> AsyncIterator[NatsServer]:
    """A JetStream-enabled nats-server on a free loopback port."""
    async with open_nats_server(jetstream=True) as server:
        yield server
