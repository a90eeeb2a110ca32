"""Cost of the services' model-health hook per answered request (`python -m bench.drift_hook`).

Times `ModelHealth.on_retrieval` (200 candidates) plus `ModelHealth.on_ranking` (200 ranked
items) as the Retrieval and Ranking services call them, with the gauges of services/metrics.py
as prometheus_client gauges in multiprocess mode (what BentoML runs), publishing every 25
requests (the default). The model does not matter to this cost, so the snapshot and the
candidates are synthetic. Figures, not assertions.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time

import numpy as np


def main(requests: int = 20_000, candidates: int = 200) -> dict[str, float]:
    os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="drift-bench-"))
    from prometheus_client import Gauge

    from recsys.model.health import Bins, HealthSettings, ModelHealth, TrainingSnapshot

    rng = np.random.default_rng(0)
    categories = [f"c{i:02d}" for i in range(24)]
    snapshot = TrainingSnapshot(
        data_end=time.time() - 3600,
        trained_until=time.time() - 86400,
        requests=400,
        unknown_user_share=0.1,
        unknown_item_share=0.0,
        retrieval_scores=Bins.from_sample(rng.normal(size=50_000)),
        ranking_scores=Bins.from_sample(rng.normal(size=50_000)),
        categories={c: 1 / 24 for c in categories},
    )
    age = Gauge("bench_age", "age", ["component", "model_version", "track"])
    psi = Gauge("bench_psi", "psi", ["component", "model_version", "track", "signal"])

    def on_drift(version, reading) -> None:
        for signal, value in reading.psi.items():
            psi.labels("Ranking", version, "stable", signal).set(value)

    snapshot_dir = tempfile.mkdtemp(prefix="drift-bench-model-")
    snapshot.save(snapshot_dir)
    health = ModelHealth(
        lambda version: (snapshot_dir, None),
        lambda version, end, seconds: age.labels("Ranking", version, "stable").set(seconds),
        on_drift,
        HealthSettings(),
    )
    # what the stages hold per request: the candidates' scores, and the ranker's verdict
    retrieval_scores = rng.normal(size=candidates).tolist()
    ranking_scores = np.sort(rng.normal(size=candidates))[::-1].tolist()
    top = [categories[i % 24] for i in range(10)]
    timings = []
    for _ in range(requests):
        start = time.perf_counter_ns()
        health.on_retrieval("v1", True, retrieval_scores)
        health.on_ranking("v1", ranking_scores, top)
        timings.append(time.perf_counter_ns() - start)
    timings_us = np.array(timings[1000:]) / 1000
    figures = {
        "requests": len(timings_us),
        "mean_us": round(float(timings_us.mean()), 1),
        "p50_us": round(float(np.percentile(timings_us, 50)), 1),
        "p99_us": round(float(np.percentile(timings_us, 99)), 1),
        "stdev_us": round(statistics.pstdev(timings_us.tolist()), 1),
    }
    print(
        f"model-health hook, retrieval + ranking, {candidates} candidates, publish every "
        f"{health.settings.publish_every}: {figures}"
    )
    return figures


if __name__ == "__main__":
    main()
