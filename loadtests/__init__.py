"""Locust load tests with SLO gates (`python -m loadtests.run`).

The Helm chart's loadtest Job mounts this directory flat at /loadtests, so the modules the
locustfile imports (`gate_options`, `gate_thresholds`, `gate_checks`, `gate_verdict`,
`load_shapes`, `request_mix`) import no sibling at run time and depend on the standard library
only.
"""
