"""`recsys retrain`: the continuous-training job (the chart's CronJob runs it from the image).

Steps, each reported as one log line with the run id, a Kubernetes Event (where the API is
reachable) and Prometheus metrics:

  load      read the catalog and the log from a directory or an object-store URL (fsspec)
  check     compare the newest window with the previous one (recsys.model.data.drift);
            refuse a broken one
  train     validate, split, train and evaluate (recsys.model.pipeline)
  gate      the offline promotion gate (recsys.model.evaluate.promotion_decision)
  store     save the pair in the BentoML store, with the training snapshot (recsys.model.health)
  preflight candidate vs stable on the newest window (recsys.rollout.preflight); a refused
            candidate is deleted from the store again
  publish   export both models to the shared model store (BentoML export), when one is set
  canary    `recsys rollout start|run` for the ranking component, or only record the candidate

A refused step stops the run: nothing already serving or stored is changed. Metrics go to a
Prometheus text file (`--metrics-file`, the node-exporter textfile format) and, with
`--pushgateway`, to a Pushgateway (POST, so the last-success timestamp of earlier runs stays).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from recsys.errors import RecsysError

logger = logging.getLogger("recsys.retrain")
CANARY_MODES = ("record", "start", "run")
STEPS = ("load", "check", "train", "gate", "store", "preflight", "publish", "canary")


class RetrainRefused(RecsysError):
    """A step refused the candidate (broken data, failed gate or preflight): nothing changed."""


@dataclass
class RetrainConfig:
    """Everything the job needs; the CLI and the CronJob fill it from flags / env."""

    source: str
    out: Path = Path("reports/retrain")
    window_days: float = 1.0
    max_reject_ratio: float = 0.05
    max_row_ratio: float = 3.0
    max_psi: float = 0.5
    stable_ranking: str = "latest"
    tolerance: float = 0.02
    model_store: str | None = None
    canary: str = "record"
    component: str = "ranking"
    image_tag: str | None = None
    rollout_args: list[str] = field(default_factory=list)
    dry_run: bool = False
    metrics_file: Path | None = None
    pushgateway: str | None = None
    run_id: str = field(
        default_factory=lambda: time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
    )
    train_overrides: dict[str, Any] = field(default_factory=dict)


@dataclass
class StepRecord:
    name: str
    outcome: str  # ok | refused | failed | skipped
    seconds: float
    detail: str


@dataclass
class RetrainResult:
    run_id: str
    outcome: str  # canary_started | recorded | refused | failed
    steps: list[StepRecord]
    candidate: dict[str, str] = field(default_factory=dict)
    reason: str = ""
    facts: dict[str, Any] = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        return {"refused": 1, "failed": 2}.get(self.outcome, 0)

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "outcome": self.outcome,
            "reason": self.reason,
            "candidate": self.candidate,
            "steps": [s.__dict__ for s in self.steps],
            "facts": self.facts,
        }


class KubeEvents:
    """Posts core/v1 Events about this pod where the in-cluster API is reachable; else nothing.

    The first failure (no RBAC, no API) is logged once and later events are skipped.
    """

    def __init__(self, api_client=None) -> None:
        """`api_client`: a kubernetes ApiClient to use; default the in-cluster one, when the
        pod's environment says it runs in a cluster."""
        self.api = None
        self.namespace = os.environ.get("POD_NAMESPACE", "")
        self.pod = os.environ.get("POD_NAME", "")
        if not (self.namespace and self.pod):
            return
        try:
            from kubernetes import client, config

            if api_client is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
                config.load_incluster_config()
                api_client = client.ApiClient()
            if api_client is not None:
                self.api = client.CoreV1Api(api_client)
        except Exception as exc:  # no token mounted, bad config: events are optional
            logger.warning("kubernetes events off: %s", exc)

    def post(self, run_id: str, step: str, outcome: str, message: str) -> None:
        if self.api is None:
            return
        from kubernetes import client

        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        event = client.CoreV1Event(
            metadata=client.V1ObjectMeta(generate_name=f"{self.pod}.", namespace=self.namespace),
            involved_object=client.V1ObjectReference(
                kind="Pod", name=self.pod, namespace=self.namespace, api_version="v1"
            ),
            reason=f"Retrain{step.capitalize()}{outcome.capitalize()}",
            message=f"run {run_id}: {message}"[:1000],
            type="Normal" if outcome in ("ok", "skipped") else "Warning",
            source=client.V1EventSource(component="recsys-retrain"),
            first_timestamp=now,
            last_timestamp=now,
            count=1,
        )
        try:
            self.api.create_namespaced_event(self.namespace, event, _request_timeout=5)
        except Exception as exc:
            logger.warning("kubernetes event not posted (%s); no more will be tried", exc)
            self.api = None


class RunMetrics:
    """The run's metrics in the Prometheus text format: to a file and/or a Pushgateway."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        self.samples: list[tuple[str, str, dict[str, str], float]] = []

    def add(self, name: str, help_text: str, value: float, **labels: str) -> None:
        self.samples.append((name, help_text, labels, float(value)))

    def exposition(self) -> str:
        """Text format 0.0.4: one HELP/TYPE header per family, its samples grouped under it."""
        families: dict[str, list[str]] = {}
        helps: dict[str, str] = {}
        for name, help_text, labels, value in self.samples:
            helps.setdefault(name, help_text)
            text = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
            families.setdefault(name, []).append(
                f"{name}{{{text}}} {value:.17g}" if text else f"{name} {value:.17g}"
            )
        lines: list[str] = []
        for name, samples in families.items():
            lines += [f"# HELP {name} {helps[name]}", f"# TYPE {name} gauge", *samples]
        return "\n".join(lines) + "\n"

    def write(self, path: Path | None, pushgateway: str | None, grouping: str = "") -> None:
        body = self.exposition()
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_suffix(path.suffix + ".tmp")
            partial.write_text(body)
            partial.replace(path)  # the textfile collector never reads half a file
        if pushgateway:
            import httpx

            url = f"{pushgateway.rstrip('/')}/metrics/job/recsys-retrain{grouping}"
            try:
                httpx.post(url, content=body.encode(), timeout=10).raise_for_status()
            except httpx.HTTPError as exc:
                logger.warning("metrics not pushed to %s: %s", url, exc)


class Reporter:
    """One log line, one Event and metrics per step."""

    def __init__(
        self, config: RetrainConfig, echo: Callable[[str], None], events: KubeEvents | None = None
    ) -> None:
        self.config = config
        self.echo = echo
        self.events = events or KubeEvents()
        self.metrics = RunMetrics(config.run_id)
        self.steps: list[StepRecord] = []

    def record(self, name: str, outcome: str, seconds: float, detail: str) -> None:
        self.steps.append(StepRecord(name, outcome, round(seconds, 3), detail))
        self.echo(
            f"retrain run={self.config.run_id} step={name} outcome={outcome} "
            f"seconds={seconds:.1f} {detail}"
        )
        self.events.post(self.config.run_id, name, outcome, f"{name} {outcome}: {detail}")
        self.metrics.add(
            "recsys_retrain_step_success",
            "1 when the step of the last run succeeded, 0 when it refused or failed.",
            1 if outcome in ("ok", "skipped") else 0,
            step=name,
        )
        self.metrics.add(
            "recsys_retrain_step_duration_seconds",
            "Seconds the step of the last run took.",
            seconds,
            step=name,
        )

    @contextmanager
    def step(self, name: str) -> Iterator[dict[str, str]]:
        """Time a step; the body sets note['detail']; a RecsysError marks it refused."""
        note = {"detail": ""}
        start = time.perf_counter()
        try:
            yield note
        except RetrainRefused as exc:
            self.record(name, "refused", time.perf_counter() - start, str(exc))
            raise
        except RecsysError as exc:
            self.record(name, "refused", time.perf_counter() - start, str(exc))
            raise RetrainRefused(str(exc)) from exc
        except Exception as exc:
            self.record(name, "failed", time.perf_counter() - start, f"{type(exc).__name__}: {exc}")
            raise
        self.record(name, "ok", time.perf_counter() - start, note["detail"])

    def finish(self, result: RetrainResult, started: float) -> None:
        now = time.time()
        success = result.outcome in ("canary_started", "recorded")
        add = self.metrics.add
        add(
            "recsys_retrain_last_run_timestamp_seconds",
            "Unix time the last retraining run ended.",
            now,
        )
        add("recsys_retrain_run_success", "1 when the last run produced a candidate.", success)
        add("recsys_retrain_run_duration_seconds", "Seconds the last run took.", now - started)
        if success:
            add(
                "recsys_retrain_last_success_timestamp_seconds",
                "Unix time the last successful retraining run ended.",
                now,
            )
        for key in ("candidate_ndcg_at_10", "data_end_timestamp_seconds"):
            if key in result.facts:
                add(
                    f"recsys_retrain_{key}",
                    f"{key} of the last run's candidate.",
                    result.facts[key],
                )
        # The Pushgateway adds its grouping key as labels: the alerts select on these two.
        grouping = "".join(
            f"/{label}/{os.environ[var]}"
            for label, var in (("namespace", "RECSYS_NAMESPACE"), ("release", "RECSYS_RELEASE"))
            if os.environ.get(var)
        )
        self.metrics.write(self.config.metrics_file, self.config.pushgateway, grouping)


def export_models(tags: dict[str, str], store: str) -> list[str]:
    """Export the pair as `.bentomodel` archives into a directory or object-store URL."""
    import bentoml
    import fsspec

    fs, root = fsspec.core.url_to_fs(store)
    fs.makedirs(root, exist_ok=True)
    written = []
    with tempfile.TemporaryDirectory() as tmp:
        for tag in tags.values():
            name = tag.replace(":", "-") + ".bentomodel"
            local = bentoml.models.export_model(tag, str(Path(tmp) / name))
            fs.put_file(local, f"{root.rstrip('/')}/{name}")
            written.append(f"{store.rstrip('/')}/{name}")
    return written


def import_model(tag: str, store: str, into: str | Path | None = None) -> str:
    """Import one model from the shared store into a local BentoML store (if missing there):
    the default one (BENTOML_HOME), or the model store directory `into`.

    Only the archive's files are read: our loaders check their checksums and unpickle nothing.
    """
    import bentoml
    import fsspec
    from bentoml.exceptions import NotFound

    from recsys.model.artifacts import model_store

    target = {"_model_store": model_store(into)} if into else {}
    try:
        return str(bentoml.models.get(tag, **target).tag)
    except NotFound:
        pass
    fs, root = fsspec.core.url_to_fs(store)
    name = tag.replace(":", "-") + ".bentomodel"
    remote = f"{root.rstrip('/')}/{name}"
    if not fs.exists(remote):
        raise RecsysError(f"model {tag} is neither in the local store nor at {store}/{name}")
    with tempfile.TemporaryDirectory() as tmp:
        local = str(Path(tmp) / name)
        fs.get_file(remote, local)
        return str(bentoml.models.import_model(local, **target).tag)


def _delete(tags: dict[str, str]) -> None:
    import bentoml

    for tag in tags.values():
        bentoml.models.delete(tag)


def _rollout_argv(config: RetrainConfig, tags: dict[str, str]) -> list[str]:
    command = "start" if config.canary == "start" else "run"
    argv = [sys.executable, "-m", "recsys", "rollout", command, "--component", config.component]
    argv += ["--image-tag", config.image_tag or "", "--model-tag", tags[config.component]]
    if config.dry_run:
        argv.append("--dry-run")
    return argv + list(config.rollout_args)


def run_retrain(
    config: RetrainConfig,
    echo: Callable[[str], None] = print,
    events: KubeEvents | None = None,
) -> RetrainResult:
    """Run every step; returns how the run ended (never raises for a refused candidate)."""
    if config.canary not in CANARY_MODES:
        raise RecsysError(
            f"--canary must be one of {', '.join(CANARY_MODES)}, got {config.canary!r}"
        )
    if config.canary != "record" and not config.image_tag:
        raise RecsysError("--canary start|run needs --image-tag (the image the canary runs)")
    started = time.time()
    reporter = Reporter(config, echo, events)
    result = RetrainResult(config.run_id, "failed", reporter.steps)
    config.out.mkdir(parents=True, exist_ok=True)
    try:
        _run_steps(config, reporter, result)
    except RetrainRefused as exc:
        result.outcome, result.reason = "refused", str(exc)
    except Exception as exc:
        result.outcome, result.reason = "failed", f"{type(exc).__name__}: {exc}"
    done = {s.name for s in reporter.steps}
    for name in STEPS:
        if name not in done and result.outcome in ("refused", "failed"):
            reporter.metrics.add(
                "recsys_retrain_step_success",
                "1 when the step of the last run succeeded, 0 when it refused or failed.",
                0,
                step=name,
            )
    reporter.finish(result, started)
    (config.out / "run.json").write_text(json.dumps(result.to_dict(), indent=2, default=str))
    echo(
        f"retrain run={config.run_id} outcome={result.outcome}"
        + (f" reason={result.reason}" if result.reason else "")
    )
    return result


def _run_steps(config: RetrainConfig, reporter: Reporter, result: RetrainResult) -> None:
    from recsys.errors import ModelMissingError
    from recsys.model.artifacts import RANKING_MODEL, resolve_tag, save_models
    from recsys.model.data.drift import WindowLimits, check_windows
    from recsys.model.data.source import load_source
    from recsys.model.health import snapshot_for
    from recsys.model.pipeline import TrainConfig, train_pipeline
    from recsys.rollout.preflight import linked_retrieval

    with reporter.step("load") as note:
        source = load_source(config.source)
        # Resolved before anything is stored, so `latest` means the model serving now. Only
        # `latest` may be missing (the first run); a named stable model must be found.
        try:
            if config.model_store and config.stable_ranking != "latest":
                # The preflight scores the stable pair: the ranker and the retrieval model it
                # was trained with.
                import_model(config.stable_ranking, config.model_store)
                import_model(linked_retrieval(config.stable_ranking), config.model_store)
            stable = resolve_tag(config.stable_ranking, RANKING_MODEL)
        except ModelMissingError:
            if config.stable_ranking != "latest":
                raise
            stable = None
        note["detail"] = (
            f"{len(source.interactions)} events in {len(source.parts)} file(s), "
            f"{len(source.catalog)} items from {config.source}; stable {stable or 'none'}"
        )
    with reporter.step("check") as note:
        limits = WindowLimits(config.max_reject_ratio, config.max_row_ratio, config.max_psi)
        report = check_windows(source, config.window_days, limits)
        (config.out / "window-check.json").write_text(json.dumps(report.to_dict(), indent=2))
        note["detail"] = "; ".join(report.summary_lines())
    with reporter.step("train") as note:
        reused = _stable_settings(stable)
        overrides = {"max_reject_ratio": config.max_reject_ratio}
        for name, value in {**reused, **config.train_overrides}.items():
            both = isinstance(value, dict) and isinstance(reused.get(name), dict)
            overrides[name] = {**reused[name], **value} if both else value
        train_config = TrainConfig.with_overrides(overrides)
        trained = train_pipeline(
            source.interactions,
            source.catalog,
            train_config,
            rejects_dir=str(config.out / "rejects"),
        )
        ndcg = trained.metrics["models"]["served"]["ndcg@10"]
        result.facts["candidate_ndcg_at_10"] = ndcg
        settings = (
            f"the settings of {stable}"
            if reused
            else ("tuned settings" if train_config.tuning.enabled else "configured settings")
        )
        order = trained.ranker.serving_order
        note["detail"] = (
            f"served ({order}) ndcg@10 {ndcg:.4f}, data {trained.data_hash}, {settings}"
        )
    with reporter.step("gate") as note:
        if not trained.promotable:
            raise RetrainRefused("promotion gate: " + "; ".join(trained.promotion_reasons))
        note["detail"] = "; ".join(trained.promotion_reasons) or "passed"
    with reporter.step("store") as note:
        snapshot = snapshot_for(trained, source.interactions)
        result.facts["data_end_timestamp_seconds"] = snapshot.data_end
        tags = save_models(trained, report_dir=str(config.out.resolve()), snapshot=snapshot)
        result.candidate = tags
        note["detail"] = f"retrieval {tags['retrieval']}, ranking {tags['ranking']}"
    with reporter.step("preflight") as note:
        if stable is None:
            note["detail"] = "no stable model to compare with: first model"
        else:
            try:
                checked = _preflight_on(source, stable, tags["ranking"], config.tolerance)
            except Exception:
                _delete(tags)
                raise
            (config.out / "preflight.json").write_text(json.dumps(checked.to_dict(), indent=2))
            if not checked.passed:
                _delete(tags)
                raise RetrainRefused(f"preflight: {checked.reason} (candidate deleted)")
            note["detail"] = checked.reason
    with reporter.step("publish") as note:
        if config.model_store:
            written = export_models(tags, config.model_store)
            note["detail"] = "exported " + ", ".join(written)
        else:
            note["detail"] = "no shared model store set: models stay in this BentoML store"
    with reporter.step("canary") as note:
        (config.out / "candidate.json").write_text(
            json.dumps({"run_id": config.run_id, **tags, "stable": stable}, indent=2)
        )
        if config.canary == "record":
            result.outcome = "recorded"
            note["detail"] = f"candidate recorded in {config.out / 'candidate.json'}"
            return
        argv = _rollout_argv(config, tags)
        done = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL)
        (config.out / "rollout.log").write_text(done.stdout + done.stderr)
        if done.returncode != 0:
            last = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["(no output)"]
            raise RetrainRefused(
                f"recsys rollout {config.canary} exited {done.returncode}: {last[0]}"
            )
        result.outcome = "canary_started"
        mode = " (dry run: helm steps printed)" if config.dry_run else ""
        note["detail"] = f"recsys rollout {config.canary} for {config.component}{mode}"


def _stable_settings(stable: str | None) -> dict[str, Any]:
    """The stable model's tuned settings as training overrides (none for a first model)."""
    if stable is None:
        return {}
    import bentoml

    from recsys.model.pipeline import TrainConfig

    saved = bentoml.models.get(stable).info.metadata.get("config", {})
    return TrainConfig.tuned_settings(saved)


def _preflight_on(source, stable: str, candidate: str, tolerance: float):
    """Preflight on the job's own data (written to a temp directory the loaders read)."""
    from recsys.model.data.loaders import save_dataset
    from recsys.rollout.preflight import run_preflight

    with tempfile.TemporaryDirectory(prefix="recsys-preflight-") as tmp:
        save_dataset(_plain(source.interactions), source.catalog, tmp)
        return run_preflight(Path(tmp), stable, candidate, tolerance=tolerance)


def _plain(frame):
    """Mixed-type object columns (concatenated files) as strings, so Parquet can hold them."""
    out = frame.copy()
    for column in out.columns:
        if out[column].dtype == object:
            out[column] = out[column].astype("string")
    return out
