"""
Benchmarks of pi-server's event stream (issue 5): bytes on the wire per event
mode, the relay's cost in time, and the cost of a resume; a short prompt's round
trip and what idle sessions cost (issue 13). ``python -m bench.hotpath`` profiles
the relay instead.

Run ``python -m bench`` from the repository root (or ``tox -e bench``). Every
figure is a ratio against a baseline measured in the same run; the results go
to ``docs/performance.md``. These are measurements, not tests: nothing here
passes or fails on a number.
"""
