"""What every provider object shares: its publisher, subscriber, router and state."""

from __future__ import annotations

from typing import Generic, TypeVar

from ._router import Router

__all__ = ["ProviderBase"]

P = TypeVar("P")
S = TypeVar("S")


class ProviderBase(Generic[P, S]):
    """The read-only face of a provider, typed by its publisher and subscriber."""

    def __init__(self, publisher: P, subscriber: S, router: Router) -> None:
        self._publisher = publisher
        self._subscriber = subscriber
        self._router = router
        self._running = False

    @property
    def publisher(self) -> P:
        return self._publisher

    @property
    def subscriber(self) -> S:
        return self._subscriber

    @property
    def router(self) -> Router:
        return self._router

    @property
    def running(self) -> bool:
        """True from start until the drain begins."""
        return self._running

    def _set_running(self, running: bool) -> None:
        """The lifecycle's: true once started, false when the drain begins."""
        self._running = running
