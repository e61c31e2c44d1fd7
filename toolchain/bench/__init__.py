"""Benchmarks: a C vhost-user-blk load generator and the side-by-side runner.

``loadgen.c`` (built into ``build/bench/loadgen``) plays the guest;
``runner`` alternates backends run by run; ``report`` writes results.json,
report.md and plots. docs/bench.md documents the output.
"""
