"""Operational helpers shared by the CLI, the local stacks, the load tests, the soak test and the
benchmark: one home each for durations, process trees, CPU accounting and private BentoML homes.

Nothing here imports BentoML.
"""
