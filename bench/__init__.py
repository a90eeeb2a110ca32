"""`make bench`: the compute floor, HTTP overhead, capacity, ANN trade-offs and a KServe peer.

Run with `python -m bench.run`; see docs/benchmark.md. Figures, not assertions.
"""
