"""Benchmark harness: ``python -m piko_trio_events.bench [all|nats|SCENARIO|plot]``.

Not a test and not run in CI. See :mod:`piko_trio_events.bench.__main__` for
the command line, :mod:`._runner` for how runs are made and compared, one
module per family of scenarios (:mod:`._memory`, :mod:`._rss`, :mod:`._nats`
with this library's contenders in :mod:`._nats_piko`; raw nats-py's and
FastStream's live in :mod:`piko_trio_events.nats._bench` and
:mod:`piko_trio_events.nats._bench_faststream`, beside the bridge, as only
that package imports asyncio), and :mod:`._plot` for the PNG.
"""
