"""Benchmark harness: ``python -m piko_trio_events.bench [all|nats|SCENARIO|plot]``.

Not a test and not run in CI. See :mod:`piko_trio_events.bench.__main__` for
the command line, :mod:`._runner` for how runs are made and compared, one
module per family of scenarios (:mod:`._memory`, :mod:`._rss`, :mod:`._nats`
with this library's contenders in :mod:`._nats_piko`, :mod:`._cqrs`), and
:mod:`._plot` for the PNG. The peer contenders, raw nats-py
(:mod:`._peer_nats_py`) and FastStream (:mod:`._peer_faststream`,
:mod:`._peer_cqrs`), are the only modules here that import asyncio or
nats-py: each runs alone in its own interpreter. :mod:`._server` starts the
nats-server of a NATS scenario (with :func:`piko_trio_events.testing.open_nats_server`),
:mod:`._stats` holds the latency percentiles every contender reports.
"""
