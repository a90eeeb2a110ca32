"""Locust load tests with SLO gates (`python -m loadtests.run`).

The Helm chart's loadtest Job mounts this directory flat at /loadtests, so the modules the
locustfile imports (`slo_gate`, `load_shapes`, `request_mix`) import each other without this
package name and depend on the standard library only.
"""
