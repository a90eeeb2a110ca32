"""`make relevance`: baselines, single sources and the two-stage model on MovieLens and the
synthetic data, three protocols, in one table.

Runs the training pipeline (nothing is stored) on:
- ml-latest-small (`../shared/data/ml-latest-small` or --movielens DIR), per-user random 75/25
  holdout, to compare with published tables;
- ml-latest-small, per-user temporal: each user's last 20% of events is test (the same rule
  inside the rest gives the ranker's labels), so all 610 users are evaluated on their future;
- ml-latest-small, chronological (the last `--ml-days` days are test, the ones before
  validation): the production protocol on a log that spans 22 years;
- the embedded synthetic data (--data, default size), chronological.

Writes reports/relevance/relevance.md and relevance.json (--out).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from recsys import REPO_ROOT
from recsys.model.data.loaders import load_dataset, load_movielens
from recsys.model.evaluate import LABELS, MODELS
from recsys.model.pipeline import TrainConfig, train_pipeline
from recsys.model.report import selection_table, skew_table, tuning_table

DEFAULT_MOVIELENS = REPO_ROOT.parent / "shared" / "data" / "ml-latest-small"
_SHOWN = ("ndcg@10", "recall@10", "map@10", "mrr@10", "coverage@10")


def _runs(movielens: Path, data: Path, ml_days: float) -> list[tuple[str, Path, bool, TrainConfig]]:
    return [
        ("ml-latest-small, random 75/25", movielens, True, TrainConfig(split="random")),
        (
            "ml-latest-small, per-user temporal (last 20%)",
            movielens,
            True,
            TrainConfig(split="temporal", holdout=0.2),
        ),
        (
            f"ml-latest-small, chronological ({ml_days:g} + {ml_days:g} days)",
            movielens,
            True,
            TrainConfig(validation_days=ml_days, test_days=ml_days),
        ),
        ("synthetic (default size), chronological", data, False, TrainConfig()),
    ]


def _table(results: list[dict]) -> list[str]:
    lines = [
        "| data, protocol | model | " + " | ".join(_SHOWN) + " |",
        "|---|---|" + "---|" * len(_SHOWN),
    ]
    for run in results:
        for model in MODELS:
            row = run["metrics"]["models"][model]
            name = f"**{LABELS[model]}**" if model == "served" else LABELS[model]
            values = " | ".join(f"{row[m]:.4f}" for m in _SHOWN)
            lines.append(f"| {run['name']} | {name} | {values} |")
    return lines


def _summary(run: dict) -> list[str]:
    metrics = run["metrics"]
    models = metrics["models"]
    n = metrics["num_candidates"]
    served = models["served"]["ndcg@10"]
    two_stage = models["two_stage"]["ndcg@10"]
    singles = {m: models[m]["ndcg@10"] for m in ("popularity", "ann", "item_item")}
    best_name, best = max(singles.items(), key=lambda pair: pair[1])
    popular = models["popularity"]["ndcg@10"]
    choice = metrics.get("selection") or {}
    recall = ", ".join(f"{k} {v:.4f}" for k, v in metrics["candidate_recall_by_source"].items())
    return [
        f"### {run['name']}",
        "",
        f"- {metrics['users']} evaluated users; training {run['seconds']:.1f} s "
        f"({', '.join(f'{k} {v:.1f}' for k, v in run['timings'].items())}).",
        f"- Served: {choice.get('served_label', 'ranker')}. Served NDCG@10 {served:.4f}; "
        f"best single source {LABELS[best_name]} {best:.4f} ({(served / best - 1) * 100:+.1f}%); "
        f"popularity {popular:.4f} ({served / max(popular, 1e-9):.2f}x); the ranker's order "
        f"{two_stage:.4f} ({two_stage / max(popular, 1e-9):.2f}x popularity).",
        f"- Candidate recall@{n}: {recall}.",
        f"- Item-item: {metrics['index'].get('item_item')} over "
        f"{metrics['index'].get('item_item_active_items')} items.",
        "",
        "Served order, chosen on validation lists:",
        "",
        *selection_table(choice),
        "",
        *skew_table(metrics.get("feature_skew"), shown=5),
        "",
        "<details><summary>tuning table</summary>",
        "",
        *tuning_table(metrics.get("tuning") or {}),
        "",
        "</details>",
        "",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--movielens", type=Path, default=DEFAULT_MOVIELENS)
    parser.add_argument("--data", type=Path, default=Path("data"))
    parser.add_argument("--ml-days", type=float, default=730.0)
    parser.add_argument("--out", type=Path, default=Path("reports/relevance"))
    args = parser.parse_args(argv)
    for path, what in ((args.movielens / "ratings.csv", "MovieLens"), (args.data, "synthetic")):
        if not path.exists():
            print(f"error: relevance: {what} data not found at {path}", file=sys.stderr)
            return 2
    results = []
    for name, directory, is_movielens, config in _runs(args.movielens, args.data, args.ml_days):
        interactions, catalog = (load_movielens if is_movielens else load_dataset)(directory)
        print(f"training: {name} ...", flush=True)
        start = time.perf_counter()
        result = train_pipeline(interactions, catalog, config)
        seconds = time.perf_counter() - start
        results.append(
            {"name": name, "seconds": seconds, "timings": result.timings, "metrics": result.metrics}
        )
        models = result.metrics["models"]
        print(
            f"  done in {seconds:.1f} s: served ({result.ranker.serving_order}) NDCG@10 "
            f"{models['served']['ndcg@10']:.4f}, "
            f"ranker's order {models['two_stage']['ndcg@10']:.4f}",
            flush=True,
        )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "relevance.json").write_text(json.dumps(results, indent=2, default=str))
    lines = [
        "# Relevance: baselines, single sources and the two-stage model",
        "",
        "Binary relevance, items the user met before removed, k=10. Every figure is computed "
        "by this project (`make relevance`).",
        "",
        *_table(results),
        "",
        *[line for run in results for line in _summary(run)],
    ]
    (args.out / "relevance.md").write_text("\n".join(lines))
    print("\n".join(_table(results)))
    print(f"report: {args.out / 'relevance.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
