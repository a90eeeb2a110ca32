"""The chart's default install, run as the kubelet would: its two Deployments, the gateway
(Ranking inside its process) and retrieval, as containers from the rendered pod specs
(read-only root, tmpfs /tmp, uid 1034, no capabilities, CPU/memory limits), on loopback ports.

Checked: exactly those two pods, the gateway reaching only retrieval over HTTP; the spec's
startup/readiness/liveness probes pass within their budgets; the `helm
test` pod succeeds against the gateway container; /recommend latency through the containers;
the Locust CI gate passes while the probes keep passing; retrieval killed under load costs no
client error, keeps the gateway ready, and recovers after a restart; a retrieval pod given a
model tag that is not in the
image never becomes ready and says why.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import random
import resource
import statistics
import subprocess
import sys
import threading
import time

import psutil
import pytest
from conftest import REPO_ROOT, REPORT_DIR, SCENARIOS, in_ci, running_stack
from pod_runner import KNOWN_USERS, Client

from recsys.ops.cpu import machine_cpu_seconds
from tests.slo_verdict import judge_latency_only_breach

pytestmark = [pytest.mark.containers]

GATEWAY, RETRIEVAL = "recsys-gateway", "recsys-retrieval"
MISSING_TAG = "recsys-retrieval:doesnotexist"


@pytest.fixture(scope="module")
def default_stack(chart_render, docker_bin, built_image, figures):
    """The default install (scenario default-values.yaml) with the built image, both
    Deployments started at once; plus, alongside, a retrieval pod whose model tag is missing."""
    objects = chart_render([SCENARIOS / "default-values.yaml"])
    missing = chart_render(
        [SCENARIOS / "default-values.yaml"], [f"retrieval.modelTag={MISSING_TAG}"]
    )
    with (
        running_stack("default", objects, docker_bin, built_image) as stack,
        running_stack("missing", missing, docker_bin, built_image, only=[RETRIEVAL]) as broken,
    ):
        readiness = stack.wait_all_ready()
        problems = {d: r.detail for d, r in readiness.items() if not r.ready}
        logs = {d: stack.docker.logs(stack.names[d], 40) for d in problems}
        assert not problems, f"containers never became ready: {problems}\n{logs}"
        figures.setdefault("default", {})["time_to_ready_s"] = {
            d: round(r.seconds, 1) for d, r in readiness.items()
        }
        figures["default"]["memory_mib_idle"] = stack.memory()
        yield stack, broken


def test_two_pods_with_ranking_inside_the_gateway(default_stack):
    """The default topology: no ranking pod; the gateway names only retrieval as remote, so
    BentoML runs Ranking in the gateway's own process (no extra process per stage)."""
    stack, _ = default_stack
    assert set(stack.names) == {GATEWAY, RETRIEVAL}
    gateway = stack.container(GATEWAY)
    assert gateway.env["BENTOML_SERVE_SERVICE_NAME"] == "Recommender"
    depends = dict(item.split("=", 1) for item in gateway.env["BENTOML_SERVE_DEPENDS"].split())
    assert depends == {"Retrieval": stack.container(RETRIEVAL).url}
    client = Client(gateway.host_port)
    try:
        status, answer = client.recommend(KNOWN_USERS[0])
    finally:
        client.close()
    assert status == 200 and not answer["degraded"], answer
    assert set(answer["model_versions"]) >= {"retrieval", "ranking"}, answer


def test_probes_pass_within_the_spec_budgets(default_stack):
    stack, _ = default_stack
    for deployment in (GATEWAY, RETRIEVAL):
        container = stack.container(deployment)
        assert stack.readiness[deployment].ready
        assert set(container.probes) == {"startupProbe", "readinessProbe", "livenessProbe"}
        for kind, probe in container.probes.items():
            passed, detail = probe.check()
            assert passed, f"{deployment} {kind} {probe.path}: {detail}"
        assert stack.docker.running(stack.names[deployment])


def test_containers_run_as_specified(default_stack, docker_bin):
    """What docker actually applied: user, read-only root, tmpfs, capabilities, limits."""
    stack, _ = default_stack
    for deployment, name in stack.names.items():
        host = json.loads(
            subprocess.run(
                [docker_bin, "inspect", "--format", "{{json .HostConfig}}", name],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
        )
        config = json.loads(
            subprocess.run(
                [docker_bin, "inspect", "--format", "{{json .Config}}", name],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
        )
        assert config["User"] == "1034:1034", deployment
        assert host["ReadonlyRootfs"] is True
        assert "/tmp" in host["Tmpfs"]
        assert host["CapDrop"] == ["ALL"]
        assert "no-new-privileges" in host["SecurityOpt"]
        assert host["NanoCpus"] > 0 and host["Memory"] > 0
        # Writes outside the emptyDir fail, as with readOnlyRootFilesystem.
        probe = subprocess.run(
            [docker_bin, "exec", name, "sh", "-c", "touch /home/bentoml/x 2>&1; id -u"],
            capture_output=True,
            text=True,
            check=False,
        )
        assert "Read-only file system" in probe.stdout and probe.stdout.strip().endswith("1034")


def test_helm_test_pod_passes_against_the_gateway(default_stack):
    stack, _ = default_stack
    results = stack.run_test_pods()
    assert results, "the chart rendered no helm test pod"
    for pod, (code, log) in results.items():
        assert code == 0, f"{pod} failed ({code}):\n{log}"
        assert "OK:" in log


def test_recommend_latency_through_the_containers(default_stack, figures):
    stack, _ = default_stack
    client = Client(stack.container(GATEWAY).host_port)
    rng = random.Random(11)
    latencies, degraded = [], []
    try:
        for _ in range(20):  # warm-up
            client.recommend(rng.choice(KNOWN_USERS))
        for _ in range(500):
            user = rng.choice(KNOWN_USERS)
            started = time.perf_counter()
            status, answer = client.recommend(user)
            latencies.append((time.perf_counter() - started) * 1000)
            assert status == 200, answer
            assert len(answer["items"]) == 10
            assert set(answer["model_versions"]) >= {"retrieval", "ranking"}, answer
            if answer["degraded"]:
                degraded.append(answer["degraded_reasons"])
    finally:
        client.close()
    assert not degraded, f"{len(degraded)} degraded answers, e.g. {degraded[:3]}"
    cuts = statistics.quantiles(latencies, n=100)
    figures.setdefault("default", {})["recommend_ms"] = {
        "calls": len(latencies),
        "p50": round(cuts[49], 2),
        "p95": round(cuts[94], 2),
        "p99": round(cuts[98], 2),
    }


class ProbeWatch:
    """The kubelet's periodic liveness/readiness probes of running containers, in a thread:
    counts consecutive failures; liveness reaching failureThreshold means a restart."""

    def __init__(self, stack, deployments) -> None:
        self.stack, self.deployments = stack, deployments
        self.failures: dict[tuple[str, str], int] = {}
        self.worst: dict[tuple[str, str], int] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        next_due: dict[tuple[str, str], float] = {}
        while not self.stop.is_set():
            now = time.monotonic()
            for deployment in self.deployments:
                for kind in ("livenessProbe", "readinessProbe"):
                    probe = self.stack.container(deployment).probes[kind]
                    key = (deployment, kind)
                    if now < next_due.get(key, 0):
                        continue
                    next_due[key] = now + probe.period_s
                    passed, _ = probe.check()
                    self.failures[key] = 0 if passed else self.failures.get(key, 0) + 1
                    self.worst[key] = max(self.worst.get(key, 0), self.failures[key])
            self.stop.wait(0.5)

    def __enter__(self) -> ProbeWatch:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()


class CPUAccount:
    """CPU seconds of the whole machine, of the stack's containers and of our children (Locust)
    over a run: what is left is other work sharing the cores (like loadtests.run's account of a
    local stack, which cannot see inside containers)."""

    def __init__(self, stack) -> None:
        self.stack = stack

    def _containers(self) -> float:
        total = 0.0
        for name in self.stack.names.values():
            out = self.stack.docker.run("top", name, "-eo", "pid", check=False).stdout
            for pid in out.split()[1:]:
                with contextlib.suppress(psutil.Error, ValueError):
                    times = psutil.Process(int(pid)).cpu_times()
                    total += times.user + times.system + times.children_user
        return total

    @staticmethod
    def _busy() -> float:
        return machine_cpu_seconds()[0]

    @staticmethod
    def _children() -> float:
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        return usage.ru_utime + usage.ru_stime

    def __enter__(self) -> CPUAccount:
        self.start = (time.monotonic(), self._busy(), self._containers(), self._children())
        return self

    def __exit__(self, *exc) -> None:
        wall, busy, containers, children = (
            time.monotonic() - self.start[0],
            self._busy() - self.start[1],
            self._containers() - self.start[2],
            self._children() - self.start[3],
        )
        capacity = wall * (psutil.cpu_count() or 1)
        self.stack_share = containers / capacity
        self.other_share = max(0.0, busy - containers - children) / capacity


BUSY_MACHINE = 0.15  # the share tests/loadtests uses: above it, latency is not attributable


def test_locust_ci_gate_passes_against_the_gateway_container(default_stack, figures):
    """`python -m loadtests.run --host <gateway container>` with the CI profile (30 users x
    4 req/s, 60 s), while the kubelet's liveness/readiness probes keep running: the SLO gate
    passes (a latency breach fails, as any other) and no probe reaches its failure threshold."""
    stack, _ = default_stack
    out = REPORT_DIR / "loadtest"
    out_args = ["--out", str(out)]
    command = [sys.executable, "-m", "loadtests.run", "--host", stack.container(GATEWAY).url]
    with ProbeWatch(stack, [GATEWAY, RETRIEVAL]) as watch, CPUAccount(stack) as cpu:
        done = subprocess.run(
            [*command, *out_args],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
    print(done.stdout[-3000:])
    for (deployment, kind), streak in watch.worst.items():
        threshold = stack.container(deployment).probes[kind].failure_threshold
        assert streak < threshold, f"{deployment} {kind} failed {streak} times in a row under load"
    figures.setdefault("default", {})["memory_mib_after_load"] = stack.memory()
    verdict = json.loads((out / "verdict.json").read_text())
    figures["default"]["locust_gate"] = {
        "outcome": verdict.get("outcome"),
        "containers_cpu_share": round(cpu.stack_share, 2),
        "other_cpu_share": round(cpu.other_share, 2),
    }
    if done.returncode == 99 and cpu.other_share > BUSY_MACHINE and not in_ci():
        pytest.skip(
            f"SLO gate breached while other processes used {cpu.other_share:.0%} of the cores "
            "(outside the containers and Locust): latency not attributable here; CI runs it "
            "strictly"
        )
    judge_latency_only_breach(verdict, "the default form in the chart's containers")
    assert done.returncode == 0, f"Locust gate failed ({done.returncode}):\n{done.stdout[-4000:]}"


def test_retrieval_killed_under_load_costs_no_client_error(default_stack, figures):
    """4 clients call the gateway; retrieval is SIGKILLed, then restarted in place (what the
    kubelet does after a crash). Every call must get a 200 (the popularity fallback meanwhile);
    once retrieval is ready again the answers must turn non-degraded and stay so for 3 s."""
    stack, _ = default_stack
    gateway_port = stack.container(GATEWAY).host_port
    retrieval = stack.names[RETRIEVAL]
    results: list[tuple[float, int, list]] = []  # (time, status, degraded reasons)
    errors: list[str] = []
    stop = threading.Event()

    def load(seed: int) -> None:
        client, rng = Client(gateway_port), random.Random(seed)
        try:
            while not stop.is_set():
                try:
                    status, answer = client.recommend(rng.choice(KNOWN_USERS))
                except (OSError, http.client.HTTPException) as error:
                    errors.append(repr(error))
                    continue
                degraded = answer.get("degraded")
                reasons = (answer.get("degraded_reasons") or ["?"]) if degraded else []
                results.append((time.monotonic(), status, reasons))
                if status != 200:
                    errors.append(f"HTTP {status}: {json.dumps(answer)[:300]}")
                time.sleep(0.02)
        finally:
            client.close()

    def clean_since(moment: float) -> bool:
        """At least 3 s of answers after `moment`, none degraded."""
        recent = [r for r in results if r[0] > moment]
        return bool(recent) and not any(r[2] for r in recent) and recent[-1][0] - moment >= 3

    threads = [threading.Thread(target=load, args=(seed,)) for seed in range(4)]
    for thread in threads:
        thread.start()
    recovered_after = None
    try:
        time.sleep(3)
        stack.docker.run("kill", retrieval)
        killed_at = time.monotonic()
        time.sleep(3)
        # A remote stage being down leaves the gateway ready: its fallbacks answer.
        gateway_ready = stack.container(GATEWAY).probes["readinessProbe"].check()
        time.sleep(2)
        stack.docker.run("start", retrieval)  # the kubelet restarts the container in its pod
        stack.started_at[RETRIEVAL] = time.monotonic()
        readiness = stack.wait_ready(RETRIEVAL)
        assert readiness.ready, f"retrieval did not come back: {readiness.detail}"
        ready_at = time.monotonic()
        deadline = ready_at + 30
        while time.monotonic() < deadline:
            degraded = [r[0] for r in results if r[2]]
            last_degraded = max(degraded[-1] if degraded else ready_at, ready_at)
            if clean_since(last_degraded):
                recovered_after = last_degraded - ready_at
                break
            time.sleep(0.5)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert not errors, f"{len(errors)} client errors, e.g. {errors[:5]}"
    assert gateway_ready[0], f"gateway unready while retrieval was down: {gateway_ready[1]}"
    during = [r for r in results if killed_at + 1 < r[0] < killed_at + 5]
    assert during and all(r[2] for r in during), "fallback not seen while retrieval was down"
    late = [r[2] for r in results if r[0] > ready_at and r[2]][-3:]
    assert recovered_after is not None, f"still degraded 30 s after ready, e.g. {late}"
    figures.setdefault("default", {})["retrieval_kill"] = {
        "requests": len(results),
        "client_errors": len(errors),
        "degraded_answers": sum(1 for r in results if r[2]),
        "restart_to_ready_s": round(readiness.seconds, 1),
        "ready_to_non_degraded_s": round(recovered_after, 1),
    }


def test_missing_model_tag_never_becomes_ready_and_says_why(default_stack, figures):
    _, broken = default_stack
    container = broken.container(RETRIEVAL)
    assert container.env["RECSYS_RETRIEVAL_MODEL_TAG"] == MISSING_TAG
    # Its startup probe (/livez) may pass; readiness must not, for as long as we look (at
    # least 30 s after the healthy pods were ready, far beyond their time to ready).
    elapsed = time.monotonic() - broken.started_at[RETRIEVAL]
    readiness = broken.wait_ready(RETRIEVAL, budget_s=max(elapsed + 5, 45))
    assert not readiness.ready, "a retrieval pod without its model became ready"
    log = broken.docker.logs(broken.names[RETRIEVAL], tail=400)
    assert "doesnotexist" in log, f"the log does not name the missing model:\n{log[-3000:]}"
    figures.setdefault("missing_model", {})["readiness"] = readiness.detail


def test_gateway_terminates_gracefully_as_the_kubelet_stops_it(default_stack, figures):
    """Pod deletion: the kubelet runs the preStop hook (sleep, while endpoints drop the pod),
    then sends SIGTERM and waits out terminationGracePeriodSeconds. The gateway keeps answering
    during preStop and exits by itself (code 0) well before the grace period ends. Runs last:
    it stops the gateway."""
    stack, _ = default_stack
    container = stack.container(GATEWAY)
    name = stack.names[GATEWAY]
    assert container.pre_stop, "the gateway has no preStop hook"
    started = time.monotonic()
    hook = subprocess.Popen(
        [stack.docker.binary, "exec", name, *container.pre_stop],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    client, statuses = Client(container.host_port), []
    try:
        while hook.poll() is None:
            statuses.append(client.recommend("u1")[0])
            time.sleep(0.2)
    finally:
        client.close()
    assert hook.returncode == 0, f"preStop {container.pre_stop} failed in the image"
    assert statuses and set(statuses) == {200}, f"answers during preStop: {set(statuses)}"
    remaining = container.stop_timeout - (time.monotonic() - started)
    stopping = time.monotonic()
    stack.docker.run("stop", "--time", str(max(1, int(remaining))), name, timeout=120)
    stop_s = time.monotonic() - stopping
    state = stack.docker.run("inspect", "--format", "{{.State.ExitCode}}", name).stdout.strip()
    assert state == "0", f"exit code {state} after SIGTERM (137 = killed at the grace period)"
    assert stop_s < remaining - 1
    figures.setdefault("default", {})["gateway_sigterm_to_exit_s"] = round(stop_s, 1)
