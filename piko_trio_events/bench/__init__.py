"""Benchmark harness: ``python -m piko_trio_events.bench [memory|all]``.

Not a test and not run in CI. See :mod:`piko_trio_events.bench.__main__` for
the command line, :mod:`._runner` for how runs are made and compared, and one
module per scenario (:mod:`._memory`).
"""
