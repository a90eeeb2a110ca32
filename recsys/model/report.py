"""Evaluation outputs: metrics.json, a Markdown report with PNG plots, and a model card."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from recsys.model.evaluate import LABELS as _LABELS
from recsys.model.evaluate import MODELS

_HEADLINE = ("ndcg", "recall", "precision", "map", "mrr", "hit_rate", "coverage")


def _plot_metric_at_k(metrics: dict, path: Path) -> None:
    ks = metrics["ks"]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for ax, name in zip(axes, ("ndcg", "recall", "map"), strict=True):
        for model in MODELS:
            ax.plot(
                ks,
                [metrics["models"][model][f"{name}@{k}"] for k in ks],
                marker="o",
                label=_LABELS[model],
            )
        ax.set_title(f"{name.upper()}@K")
        ax.set_xlabel("K")
        ax.set_xticks(ks)
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_slices(metrics: dict, path: Path, metric: str = "ndcg@10") -> None:
    slices = list(metrics["slices"])
    width = 0.8 / len(MODELS)
    fig, ax = plt.subplots(figsize=(8, 3.8))
    for offset, model in enumerate(MODELS):
        values = [metrics["slices"][s]["models"][model][metric] for s in slices]
        ax.bar(
            [i + offset * width for i in range(len(slices))], values, width, label=_LABELS[model]
        )
    ax.set_xticks([i + width * (len(MODELS) - 1) / 2 for i in range(len(slices))])
    ax.set_xticklabels([f"{s}\n({metrics['slices'][s]['users']} users)" for s in slices])
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} by user slice")
    ax.legend()
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _table(metrics_by_model: dict, k: int) -> list[str]:
    header = "| model | " + " | ".join(f"{m}@{k}" for m in _HEADLINE) + " |"
    lines = [header, "|" + "---|" * (len(_HEADLINE) + 1)]
    for model in MODELS:
        row = metrics_by_model[model]
        lines.append(
            f"| {_LABELS[model]} | "
            + " | ".join(f"{row[f'{m}@{k}']:.4f}" for m in _HEADLINE)
            + " |"
        )
    return lines


def write_report(summary: dict, out_dir: str | Path) -> dict[str, Path]:
    """Write metrics.json, report.md (+ plots) and model_card.md; returns their paths.

    `summary` holds: metrics, validation, split, data_hash, config, timings, promotable,
    promotion_reasons, code_revision and (when saved) model tags.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    metrics = summary["metrics"]
    paths = {
        "metrics": out / "metrics.json",
        "report": out / "report.md",
        "model_card": out / "model_card.md",
        "plot_metric_at_k": out / "metric_at_k.png",
        "plot_slices": out / "slices.png",
    }
    paths["metrics"].write_text(json.dumps(summary, indent=2, default=str))
    _plot_metric_at_k(metrics, paths["plot_metric_at_k"])
    _plot_slices(metrics, paths["plot_slices"])

    n_cand = metrics["num_candidates"]
    verdict = "PROMOTABLE" if summary["promotable"] else "NOT PROMOTABLE"
    lines = [
        "# Offline evaluation report",
        "",
        f"**Verdict: {verdict}** (the served pipeline must beat popularity and not fall below "
        "retrieval-only on NDCG@10, and its order must not be below its best single source on "
        "the validation lists).",
        *[f"- {reason}" for reason in summary["promotion_reasons"]],
        "",
        f"Held-out users: {metrics['users']}; candidates per user: {n_cand}; "
        f"candidate recall@{n_cand}: {metrics[f'candidate_recall@{n_cand}']:.4f}.",
        "",
        f"Candidate recall@{n_cand} by source: "
        + ", ".join(f"{k} {v:.4f}" for k, v in metrics["candidate_recall_by_source"].items()),
        "",
        "## Metrics at K=10",
        "",
        *_table(metrics["models"], 10 if 10 in metrics["ks"] else metrics["ks"][0]),
        "",
        "![metric@K](metric_at_k.png)",
        "",
        "## Slices (NDCG@10)",
        "",
        "| slice | users | definition | " + " | ".join(_LABELS[m] for m in MODELS) + " |",
        "|---|---|---|" + "---|" * len(MODELS),
    ]
    for name, part in metrics["slices"].items():
        values = " | ".join(f"{part['models'][m]['ndcg@10']:.4f}" for m in MODELS)
        lines.append(
            f"| {name} | {part['users']} | {metrics['slice_definitions'][name]} | {values} |"
        )
    lines += [
        "",
        "![slices](slices.png)",
        "",
        "## Served order",
        "",
        *selection_table(metrics.get("selection")),
        "",
        "## Train/serve skew of the ranker's features",
        "",
        *skew_table(metrics.get("feature_skew")),
        "",
        "## Tuning on the validation window",
        "",
        *tuning_table(metrics.get("tuning") or {}),
        "",
        "## Retrieval index",
        "",
        *[f"- {k}: {v}" for k, v in metrics["index"].items()],
        "",
        "## Stage timings (seconds)",
        "",
        *[f"- {k}: {v}" for k, v in summary["timings"].items()],
        "",
    ]
    paths["report"].write_text("\n".join(lines))
    paths["model_card"].write_text(model_card(summary))
    return paths


def capped_warning(tuning: dict) -> str | None:
    """Why a search's result may differ on another machine, or None when it cannot: the
    safety cap cut stages short (`TuningResult.table()`'s `capped`)."""
    if not tuning.get("capped"):
        return None
    return (
        f"the tuning safety cap ({tuning.get('safety_seconds')} s per stage) cut "
        f"{', '.join(tuning['capped'])} short: fewer trials ran than configured, so the chosen "
        "settings depend on this machine's speed and may differ elsewhere."
    )


def tuning_table(tuning: dict) -> list[str]:
    """The search table: every trial, its validation figures and which one was kept."""
    if not tuning.get("trials"):
        return ["Tuning was off: the configured settings were trained as they are."]
    trials = tuning.get("max_trials")
    lines = [
        f"{tuning.get('users', 0)} validation users, {tuning.get('seconds', 0)} s; selection: "
        f"{tuning.get('selection', '')}. The test window is never read."
        + (f" Up to {trials} trials per stage that refits a model." if trials else ""),
        "",
    ]
    if warning := capped_warning(tuning):
        lines += [f"> **Warning:** {warning}", ""]
    lines += [
        "| stage | settings | NDCG@10 | recall@N | seconds | chosen |",
        "|---|---|---|---|---|---|",
    ]
    for trial in tuning["trials"]:
        params = ", ".join(f"{k}={v}" for k, v in trial["params"].items())
        recall = "" if trial["recall"] is None else f"{trial['recall']:.4f}"
        lines.append(
            f"| {trial['stage']} | {params} | {trial['ndcg']:.4f} | {recall} | "
            f"{trial['seconds']} | {'**yes**' if trial['chosen'] else ''} |"
        )
    return lines


def selection_table(selection: dict | None) -> list[str]:
    """How the served order was chosen: each order's NDCG@10 on the selection lists and its
    difference from the ranker with a 95% paired-bootstrap interval."""
    if not selection:
        return ["No order comparison recorded (a ranker saved before it): the ranker serves."]
    versus = selection["difference_vs_ranker"]
    lines = [
        f"Served: **{selection['served_label']}**. {selection['users']} held-out users "
        f"({selection['lists']} lists) never learnt from; best single source: "
        f"{selection['best_single_source']}.",
        "",
        "| order | NDCG@10 | difference from the ranker (95% CI) |",
        "|---|---|---|",
    ]
    for name, value in selection["ndcg@10"].items():
        row = versus.get(name)
        difference = (
            f"{row['mean']:+.4f} [{row['ci95'][0]:+.4f}, {row['ci95'][1]:+.4f}]" if row else ""
        )
        chosen = " (served)" if name == selection["served"] else ""
        lines.append(f"| {name}{chosen} | {value:.4f} | {difference} |")
    return lines


def skew_table(skew: dict | None, shown: int = 8) -> list[str]:
    """The ranker features that move most between its training lists and the serving regime."""
    if not skew or not skew.get("psi"):
        return ["Not measured."]
    ranked = sorted(skew["psi"].items(), key=lambda pair: -pair[1])
    return [
        f"PSI per feature, training lists vs the final sources' lists of the same "
        f"{skew['users']} users (< 0.1 stable, 0.1-0.25 moderate, > 0.25 a real shift); "
        f"the {min(shown, len(ranked))} largest:",
        "",
        "| feature | PSI |",
        "|---|---|",
        *[f"| {name} | {value:.3f} |" for name, value in ranked[:shown]],
    ]


def model_card(summary: dict) -> str:
    """A model card: what was trained on what, how well it does, and where it falls short."""
    metrics = summary["metrics"]
    split = summary["split"]
    served = metrics["models"]["served"]
    selection = metrics.get("selection") or {}
    tags = summary.get("model_tags") or {}
    lines = [
        "# Model card: recsys two-stage recommender",
        "",
        "## Models",
        f"- Retrieval: {summary['config']['embedding']['algorithm'].upper()} embeddings "
        f"({summary['config']['embedding']['factors']} factors) + ScaNN "
        f"({metrics['index']['index']}), {metrics['index'].get('item_item', 'no')} item-item "
        "and popularity, merged (tuned shares, reciprocal-rank order); popularity for cold users"
        + (f"; tag `{tags['retrieval']}`" if "retrieval" in tags else ""),
        "- Ranking: XGBoost LambdaMART over retrieved candidates; serves "
        + selection.get("served_label", "the ranker's order")
        + (f"; tag `{tags['ranking']}`" if "ranking" in tags else ""),
        f"- Code revision: {summary.get('code_revision', 'unknown')}",
        "",
        "## Data",
        f"- Data hash: `{summary['data_hash']}`",
        f"- Split: {split['kind']}; validation from {split['validation_start']}, "
        f"test from {split['test_start']}",
        f"- Train events: {split['train']['events']}, validation: {split['validation']['events']}, "
        f"test: {split['test']['events']}",
        f"- Validation: {'; '.join(summary['validation_summary'])}",
        "",
        "## Performance on the test window (served pipeline)",
        f"- NDCG@10 {served['ndcg@10']:.4f}, Recall@10 {served['recall@10']:.4f}, "
        f"MAP@10 {served['map@10']:.4f}, MRR@10 {served['mrr@10']:.4f}",
        "- Baselines, single sources and the ranker, NDCG@10: "
        + ", ".join(
            f"{_LABELS[m]} {metrics['models'][m]['ndcg@10']:.4f}" for m in MODELS if m != "served"
        ),
        f"- Promotable: {summary['promotable']}",
        *[f"  - {reason}" for reason in summary.get("promotion_reasons", [])],
        "",
        "## Served order (chosen on validation lists)",
        "",
        *selection_table(selection),
        "",
        "## Tuning (validation window)",
        "",
        *tuning_table(metrics.get("tuning") or {}),
        "",
        "## Known limitations",
        "- Items created after the training cut-off have no embedding: they reach users only "
        "through the trending list until the next retrain.",
        "- Cold users (little or no history) get trending items re-ranked without personal "
        "signal; see the cold slice in the report.",
        "- Relevance is implicit (any interaction in the held-out window counts), and items the "
        "user already met are excluded, so repeat consumption is not measured.",
        "- Feature tables are a snapshot at the training cut-off; popularity features go stale "
        "between retrains.",
        "",
        "## Configuration",
        "```json",
        json.dumps(summary["config"], indent=2),
        "```",
        "",
    ]
    return "\n".join(lines)
