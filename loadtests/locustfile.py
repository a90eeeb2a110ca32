# ruff: noqa: I001  (locust must be imported first: gevent patches the standard library)
"""Load test of the recsys gateway with an SLO gate (Locust).

Traffic: `RecommenderClient` (FastHttpUser) mixes known users with power-law activity, cold users,
repeated requests, next pages with the first page excluded, batches and similar-items calls
(weights in request_mix.TASKS). Every answer is validated; an invalid one is a failed request.

Gate: after a warm-up the run is cut into windows; the same SLO breach in `--abort-after`
consecutive windows stops the run early. On quitting, each endpoint's p95, p99, error ratio and
throughput over the measured period are checked against the SLO file, a table is printed, a JSON
verdict is written and the exit code is set: 0 pass, 99 SLO breach, Locust's --exit-code-on-error
(1) for request errors without a breach, 3 for an unusable SLO file. See docs/loadtesting.md.

Runs as is in the Helm chart's Job (flat /loadtests directory, stock Locust image) and through
`python -m loadtests.run`, which can also start the local stack.
"""

import locust

import datetime
import json
import logging
import random
import sys
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path

import gevent
import psutil
from locust import FastHttpUser, LoadTestShape, events, task
from locust.runners import STATE_CLEANUP, STATE_STOPPED, STATE_STOPPING, WorkerRunner

import gate_checks
import gate_thresholds
import gate_verdict
import load_shapes
import request_mix
from gate_options import add_gate_options
from request_mix import TASKS

logger = logging.getLogger("recsys.loadtest")


@events.init_command_line_parser.add_listener
def add_options(parser) -> None:
    """The gate's options (gate_options.py); each also reads a RECSYS_* environment variable."""
    add_gate_options(parser.add_argument_group("recsys SLO gate"))


@dataclass
class RunState:
    """What the master (or the only process) keeps during a run."""

    thresholds: dict[str, gate_thresholds.EndpointThresholds] = field(default_factory=dict)
    users: request_mix.PowerLawUsers | None = None
    started_wall: str = ""
    started_at: float | None = None
    baseline_at: float | None = None
    stopped_at: float | None = None
    baseline: dict[str, gate_checks.Traffic] = field(default_factory=dict)
    baseline_degraded: Counter = field(default_factory=Counter)
    timeline: list[dict] = field(default_factory=list)
    abort: dict | None = None
    cpu: "GeneratorCPU | None" = None
    monitor: gevent.Greenlet | None = None


STATE = RunState()
DEGRADED: Counter = Counter()  # fallback answers per endpoint (summed over workers on the master)
SEEN_ITEMS: deque = deque(maxlen=2000)  # items shown to users: what they ask similar items for


@events.init.add_listener
def load_configuration(environment, **_kwargs) -> None:
    """Validate the SLO file and load the known users before any request is sent."""
    options = environment.parsed_options
    try:
        STATE.thresholds = gate_thresholds.load_thresholds(options.slo_file)
        STATE.users = request_mix.PowerLawUsers(request_mix.read_user_ids(options.users_file))
    except (gate_thresholds.SLOFileError, OSError, ValueError) as exc:
        message = f"recsys load test: cannot start: {exc}"
        logger.error(message)
        print(message, file=sys.stderr, flush=True)
        sys.exit(gate_verdict.EXIT_CONFIG_ERROR)
    if options.user_rate < 0 or options.window <= 0 or options.warmup < 0:
        print(
            "recsys load test: --user-rate, --warmup must be >= 0 and --window > 0",
            file=sys.stderr,
            flush=True,
        )
        sys.exit(gate_verdict.EXIT_CONFIG_ERROR)


# --------------------------------------------------------------------------- the simulated user


class RecommenderClient(FastHttpUser):
    """A client of the gateway: a storefront page view, a batch job or an item page."""

    network_timeout = 10.0  # every request is bounded in time
    connection_timeout = 5.0

    def on_start(self) -> None:
        self.rng = random.Random()
        self.next_start: float | None = None
        self.last_page: tuple[str, int, list[str]] | None = None  # (user, k, items shown)

    def wait_time(self) -> float:
        """Pace to --user-rate tasks per second (no catching up after a slow answer)."""
        rate = self.environment.parsed_options.user_rate
        if rate <= 0:
            return 0.0
        now = time.monotonic()
        interval = 1.0 / rate
        if self.next_start is None:
            self.next_start = now + interval * self.rng.random()  # spread the users out
        else:
            self.next_start = max(self.next_start + interval, now)
        return self.next_start - now

    def _post(self, endpoint: str, body: dict, problems_of) -> dict | None:
        path = request_mix.ENDPOINT_PATHS[endpoint]
        with self.client.post(path, json=body, name=path, catch_response=True) as response:
            if response.status_code != 200:
                text = (response.text or "")[:160] if response.status_code else str(response.error)
                response.failure(f"HTTP {response.status_code}: {text}")
                return None
            try:
                answer = response.json()
            except ValueError:
                response.failure("answer is not JSON")
                return None
            problems = problems_of(answer)
            if problems:
                response.failure(f"invalid answer: {problems[0]}"[:200])
                return None
            response.success()
        DEGRADED[endpoint] += request_mix.degraded_count(endpoint, answer)
        return answer

    def _recommend(self, user_id: str, k: int | None = None, exclude: list[str] | None = None):
        k = k or self.rng.choice(request_mix.K_CHOICES)
        exclude = exclude or []
        body = {"user_id": user_id, "k": k, "exclude_items": exclude}
        answer = self._post(
            "recommend", body, lambda a: request_mix.recommendation_problems(a, user_id, k, exclude)
        )
        if answer is not None:
            shown = [item["item_id"] for item in answer["items"]]
            self.last_page = (user_id, k, shown)
            SEEN_ITEMS.extend(shown[:3])

    @task(TASKS["known_user"][0])
    def known_user(self) -> None:
        self._recommend(STATE.users.pick(self.rng))

    @task(TASKS["cold_user"][0])
    def cold_user(self) -> None:
        self._recommend(request_mix.cold_user_id(self.rng))

    @task(TASKS["repeat_request"][0])
    def repeat_request(self) -> None:
        """The same page again (a reload)."""
        if self.last_page is None:
            return self.known_user()
        user_id, k, _ = self.last_page
        self._recommend(user_id, k)

    @task(TASKS["next_page"][0])
    def next_page(self) -> None:
        """The next page: what the user has just been shown must not come back."""
        if self.last_page is None:
            return self.known_user()
        user_id, k, shown = self.last_page
        self._recommend(user_id, k, exclude=shown)

    @task(TASKS["similar_items"][0])
    def similar_items(self) -> None:
        """An item page: mostly items users were shown, some unknown to the model."""
        if SEEN_ITEMS and self.rng.random() < 0.9:
            item_id = self.rng.choice(SEEN_ITEMS)
        else:
            item_id = f"new-item-{self.rng.getrandbits(32):08x}"
        k = self.rng.choice(request_mix.K_CHOICES)
        self._post(
            "similar_items",
            {"item_id": item_id, "k": k},
            lambda a: request_mix.similar_items_problems(a, item_id, k),
        )

    @task(TASKS["batch"][0])
    def batch(self) -> None:
        """A batch job (e.g. an e-mail campaign): mostly known users, a few new ones."""
        size = self.rng.choice(request_mix.BATCH_SIZES)
        user_ids = [
            request_mix.cold_user_id(self.rng)
            if self.rng.random() < 0.1
            else STATE.users.pick(self.rng)
            for _ in range(size)
        ]
        user_ids = list(dict.fromkeys(user_ids))  # a user once per batch
        self._post(
            "recommend_batch",
            {"user_ids": user_ids, "k": 10},
            lambda a: request_mix.batch_problems(a, user_ids, 10),
        )


# --------------------------------------------------------------------------- load shape


class RecsysShape(LoadTestShape):
    """The shape chosen by --shape; --users is the peak, --run-time the length."""

    use_common_options = True

    def tick(self):
        options = self.runner.environment.parsed_options
        run_time = options.run_time or load_shapes.DEFAULT_RUN_TIME_S[options.shape]
        target = load_shapes.users_at(
            options.shape,
            self.get_run_time(),
            options.num_users or 1,
            options.spawn_rate or 1.0,
            run_time,
            options.steps,
        )
        return None if target is None else (target.users, target.spawn_rate)


# --------------------------------------------------------------------------- measurements


def snapshot(environment) -> dict[str, gate_checks.Traffic]:
    """Cumulative traffic per endpoint from Locust's stats (aggregated over workers)."""
    by_path = {path: name for name, path in request_mix.ENDPOINT_PATHS.items()}
    traffic: dict[str, gate_checks.Traffic] = {}
    for (name, _method), entry in list(environment.stats.entries.items()):
        endpoint = by_path.get(name, name.strip("/"))
        traffic[endpoint] = gate_checks.Traffic(
            entry.num_requests, entry.num_failures, dict(entry.response_times)
        )
    return traffic


def window_between(current, earlier) -> dict[str, gate_checks.Traffic]:
    return {
        name: seen.since(earlier.get(name, gate_checks.Traffic())) for name, seen in current.items()
    }


class GeneratorCPU:
    """CPU time used by the load generator itself (this process and its --processes workers)."""

    def __init__(self) -> None:
        self.me = psutil.Process()
        self.children: dict[int, float] = {}  # last CPU seconds seen per worker process
        self.start_wall = time.monotonic()
        self.start = self.cpu_seconds()

    def cpu_seconds(self) -> float:
        """Own CPU seconds plus the workers' (sampled while they live: they exit before us)."""
        times = self.me.cpu_times()
        for child in self.me.children(recursive=True):
            try:
                child_times = child.cpu_times()
            except psutil.Error:
                continue
            self.children[child.pid] = child_times.user + child_times.system
        return times.user + times.system + sum(self.children.values())

    def report(self) -> dict:
        seconds = max(self.cpu_seconds() - self.start, 0.0)
        wall = max(time.monotonic() - self.start_wall, 1e-9)
        cores = psutil.cpu_count() or 1
        return {
            "processes": 1 + len(self.children),
            "cpu_seconds": round(seconds, 2),
            "wall_seconds": round(wall, 2),
            "cpu_percent_of_one_core": round(100 * seconds / wall, 1),
            "cpu_share_of_machine": round(seconds / (wall * cores), 3),
            "machine_cores": cores,
        }


@events.report_to_master.add_listener
def send_degraded(client_id, data, **_kwargs) -> None:
    data["recsys_degraded"] = dict(DEGRADED)
    DEGRADED.clear()


@events.worker_report.add_listener
def add_degraded(client_id, data, **_kwargs) -> None:
    DEGRADED.update(data.get("recsys_degraded", {}))


@events.test_start.add_listener
def start_monitor(environment, **_kwargs) -> None:
    if isinstance(environment.runner, WorkerRunner):
        return
    STATE.started_wall = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    STATE.started_at = time.monotonic()
    STATE.cpu = GeneratorCPU()
    STATE.monitor = gevent.spawn(monitor, environment)


@events.test_stop.add_listener
def note_stop(environment, **_kwargs) -> None:
    if not isinstance(environment.runner, WorkerRunner) and STATE.stopped_at is None:
        STATE.stopped_at = time.monotonic()


def monitor(environment) -> None:
    """Warm-up, then one window at a time: record it, and stop the run on a sustained breach."""
    options = environment.parsed_options
    runner = environment.runner
    detector = gate_checks.SustainedBreachDetector(STATE.thresholds, options.abort_after)
    gevent.sleep(options.warmup)
    STATE.baseline = previous = snapshot(environment)
    STATE.baseline_degraded = Counter(DEGRADED)
    STATE.baseline_at = time.monotonic()
    while runner.state not in (STATE_STOPPING, STATE_STOPPED, STATE_CLEANUP):
        gevent.sleep(options.window)
        STATE.cpu.cpu_seconds()  # remember worker CPU while they live
        current = snapshot(environment)
        window = window_between(current, previous)
        previous = current
        failed = detector.observe(window)
        STATE.timeline.append(
            {
                "t_s": round(time.monotonic() - STATE.started_at, 1),
                "users": runner.user_count,
                "rps": round(
                    sum(t.requests - t.failures for t in window.values()) / options.window, 1
                ),
                "endpoints": {
                    name: {
                        "requests": t.requests,
                        "p95_ms": t.percentile(0.95),
                        "p99_ms": t.percentile(0.99),
                        "error_ratio": t.error_ratio,
                    }
                    for name, t in window.items()
                },
                "breaches": [f"{c.endpoint}.{c.metric}" for c in failed],
            }
        )
        if detector.should_abort:
            STATE.abort = {
                "at_s": STATE.timeline[-1]["t_s"],
                "windows": options.abort_after,
                "window_s": options.window,
                "breaches": [c.as_dict() for c in detector.sustained],
            }
            names = ", ".join(f"{c.endpoint}.{c.metric}" for c in detector.sustained)
            logger.error(
                "sustained SLO breach (%s) for %d windows: stopping the run",
                names,
                options.abort_after,
            )
            runner.quit()
            return


def capacity(timeline: list[dict]) -> dict | None:
    """The busiest window without any breach (what the step shape searches for)."""
    clean = [w for w in timeline if not w["breaches"] and w["rps"] > 0]
    if not clean:
        return None
    best = max(clean, key=lambda w: w["rps"])
    return {"users": best["users"], "rps": best["rps"], "at_s": best["t_s"]}


@events.quitting.add_listener
def gate(environment, **_kwargs) -> None:
    """Check the measured period against the SLO file; table, JSON verdict, exit code."""
    if isinstance(environment.runner, WorkerRunner) or STATE.started_at is None:
        return
    options = environment.parsed_options
    if STATE.monitor is not None:
        STATE.monitor.kill(block=False)
    end = STATE.stopped_at or time.monotonic()
    current = snapshot(environment)
    if STATE.baseline_at is None:  # the run ended inside the warm-up: judge all of it
        start, earlier, degraded_before = STATE.started_at, {}, Counter()
    else:
        start, earlier, degraded_before = STATE.baseline_at, STATE.baseline, STATE.baseline_degraded
    measured_s = max(end - start, 1e-3)
    traffic = window_between(current, earlier)
    planned = request_mix.planned_rps(options.num_users or 1, options.user_rate)
    if options.shape in ("step", "spike") and options.min_rps_check == "auto":
        skip = {
            name: f"{options.shape} shape: the load varies; see timeline and capacity"
            for name in STATE.thresholds
        }
    else:
        skip = gate_checks.plan_min_rps_checks(STATE.thresholds, options.min_rps_check, planned)
    checks = gate_checks.evaluate(traffic, STATE.thresholds, measured_s, skip_min_rps=skip)
    request_errors = environment.stats.total.num_failures + len(environment.runner.exceptions)
    code = gate_verdict.decide_exit_code(
        checks, STATE.abort is not None, request_errors, options.exit_code_on_error
    )
    degraded = {name: DEGRADED[name] - degraded_before.get(name, 0) for name in traffic}
    run = {
        "host": environment.host,
        "shape": options.shape,
        "users": options.num_users,
        "spawn_rate": options.spawn_rate,
        "user_rate": options.user_rate,
        "planned_rps": {k: round(v, 1) for k, v in planned.items()} if planned else None,
        "processes": options.processes or 1,
        "run_time_s": options.run_time or load_shapes.DEFAULT_RUN_TIME_S[options.shape],
        "warmup_s": options.warmup,
        "window_s": options.window,
        "abort_after_windows": options.abort_after,
        "min_rps_check": options.min_rps_check,
        "slo_file": str(options.slo_file),
        "started_at": STATE.started_wall,
        "locust_version": locust.__version__,
        "request_errors_whole_run": request_errors,
    }
    verdict = gate_verdict.build_verdict(
        checks,
        traffic,
        measured_s,
        code,
        run,
        STATE.cpu.report() if STATE.cpu else {},
        abort=STATE.abort,
        timeline=STATE.timeline,
        extra={
            "degraded_answers": degraded,
            "capacity": capacity(STATE.timeline) if options.shape == "step" else None,
        },
    )
    path = Path(options.verdict_file)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(verdict, indent=2) + "\n")
    except OSError as exc:
        logger.error("could not write the verdict to %s: %s", path, exc)
    print("\n" + gate_verdict.render_table(checks, code), flush=True)
    if STATE.abort:
        print(f"Stopped early at {STATE.abort['at_s']}s: sustained breach.", flush=True)
    generator = verdict["generator"]
    if generator:
        print(
            f"Load generator CPU: {generator['cpu_percent_of_one_core']}% of one core "
            f"({generator['cpu_share_of_machine']:.0%} of {generator['machine_cores']} cores)",
            flush=True,
        )
    print(f"Verdict: {path}", flush=True)
    environment.process_exit_code = code
