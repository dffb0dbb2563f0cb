"""The benchmark suite: this framework against a raw pika floor and its peers, in one run.

Run ``python -m benchmarks --quick`` (under 2 minutes) or ``python -m benchmarks`` (under 15);
see benchmarks/README.md. Every server and client runs in a process of its own, so CPU per call
is measured per side; every figure is also given as a ratio to a baseline measured in the same
run, because only same-run ratios mean anything on a shared, noisy machine.
"""
