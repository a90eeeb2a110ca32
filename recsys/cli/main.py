"""`recsys` command line: data generation and validation, training, evaluation, model listing."""

from __future__ import annotations

import os

# implicit parallelises ALS itself; OpenBLAS threads on top of it only slow it down.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from recsys.errors import RecsysError

app = typer.Typer(
    help="Two-stage recommender: data, training, evaluation and models.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Generate and validate interaction data.", no_args_is_help=True)
models_app = typer.Typer(
    help="Inspect versioned models in the BentoML store.", no_args_is_help=True
)
app.add_typer(data_app, name="data")
app.add_typer(models_app, name="models")
from recsys.rollout.cli import rollout_app  # noqa: E402

app.add_typer(rollout_app, name="rollout")
from recsys.cli.retrain import models_import, retrain  # noqa: E402

app.command("retrain")(retrain)
models_app.command("import")(models_import)
console = Console()
err_console = Console(stderr=True, soft_wrap=True)

DataDir = Annotated[Path, typer.Option("--data", help="Directory with interactions.* and items.*")]


def _load(data: Path, movielens: bool):
    from recsys.model.data.loaders import load_dataset, load_movielens

    return load_movielens(data) if movielens else load_dataset(data)


@data_app.command("synth")
def data_synth(
    out: Annotated[Path, typer.Option(help="Output directory")] = Path("data"),
    users: Annotated[int, typer.Option(min=1, help="Number of users")] = 20_000,
    items: Annotated[int, typer.Option(min=1, help="Number of items")] = 50_000,
    events: Annotated[int, typer.Option(min=1, help="Number of events")] = 1_000_000,
    days: Annotated[int, typer.Option(min=1, help="Days the log spans")] = 120,
    categories: Annotated[int, typer.Option(min=1, help="Number of item categories")] = 24,
    seed: Annotated[int, typer.Option(help="Random seed")] = 42,
    csv: Annotated[bool, typer.Option("--csv", help="Write CSV instead of Parquet")] = False,
) -> None:
    """Generate the embedded synthetic data set (seeded: same flags, same rows)."""
    import time

    from recsys.model.data.loaders import save_dataset
    from recsys.model.data.synth import SynthConfig, generate

    start = time.perf_counter()
    config = SynthConfig(
        n_users=users, n_items=items, n_events=events, days=days, n_categories=categories, seed=seed
    )
    with console.status("generating synthetic interactions"):
        generated = generate(config)
    if csv:
        out.mkdir(parents=True, exist_ok=True)
        generated.interactions.to_csv(out / "interactions.csv", index=False)
        generated.catalog.to_csv(out / "items.csv", index=False)
    else:
        save_dataset(generated.interactions, generated.catalog, out)
    console.print(
        f"wrote {len(generated.interactions):,} events, {len(generated.catalog):,} items to {out} "
        f"in {time.perf_counter() - start:.1f}s"
    )


@data_app.command("validate")
def data_validate(
    data: DataDir = Path("data"),
    movielens: Annotated[bool, typer.Option(help="Read MovieLens files")] = False,
    max_reject_ratio: Annotated[float, typer.Option(min=0, max=1)] = 0.05,
    rejects: Annotated[Path | None, typer.Option(help="Where rejected rows go")] = None,
    window_days: Annotated[
        float, typer.Option(min=0, help="Window compared with the one before (0: no comparison)")
    ] = 1.0,
    max_row_ratio: Annotated[float, typer.Option(min=1, help="Refused row-count ratio")] = 3.0,
    max_psi: Annotated[float, typer.Option(min=0, help="Refused distribution shift (PSI)")] = 0.5,
) -> None:
    """Validate a data set: counts of rejected rows per problem, written aside; then compare the
    newest window of the log with the previous one and refuse a broken one."""
    from recsys.model.data.validate import validate_dataset

    if movielens:
        interactions, catalog = _load(data, movielens)
    else:
        from recsys.model.data.source import load_source

        source = load_source(str(data))
        interactions, catalog = source.interactions, source.catalog
    if window_days > 0 and not movielens:  # first: its refusal names the broken file
        from recsys.model.data.drift import WindowLimits, check_windows

        limits = WindowLimits(max_reject_ratio, max_row_ratio, max_psi)
        for line in check_windows(source, window_days, limits).summary_lines():
            console.print(line, highlight=False)
    rejects = rejects or data / "rejects"
    result = validate_dataset(interactions, catalog, max_reject_ratio, rejects)
    for line in result.report.summary_lines():
        console.print(line)
    console.print(f"rejected rows and validation.json are in {rejects}")


def _stage_printer():
    def hook(name: str, seconds: float | None) -> None:
        if seconds is None:
            console.print(f"[bold cyan]>[/] {name} ...")
        else:
            console.print(f"[green]done[/] {name} in {seconds:.1f}s")

    return hook


def _metrics_table(metrics: dict, k: int = 10) -> Table:
    table = Table(title=f"Test window, {metrics['users']} users")
    table.add_column("model")
    names = ("ndcg", "recall", "precision", "map", "mrr", "hit_rate", "coverage")
    for name in names:
        table.add_column(f"{name}@{k}", justify="right")
    for model, values in metrics["models"].items():
        table.add_row(model, *(f"{values[f'{n}@{k}']:.4f}" for n in names))
    return table


@app.command("train")
def train(
    data: DataDir = Path("data"),
    out: Annotated[Path, typer.Option(help="Report directory")] = Path("reports/latest"),
    movielens: Annotated[bool, typer.Option(help="Read MovieLens files from --data")] = False,
    split: Annotated[
        str,
        typer.Option(
            help="chronological (global time windows), random (per-user random holdout) or "
            "temporal (per user, the latest --holdout share of events is test)"
        ),
    ] = "chronological",
    ratio: Annotated[float, typer.Option(help="History share with --split random")] = 0.75,
    holdout: Annotated[
        float,
        typer.Option(
            min=0.01, max=0.99, help="Share of each user's latest events held out, --split temporal"
        ),
    ] = 0.2,
    validation_days: Annotated[float, typer.Option(min=0.01)] = 14.0,
    test_days: Annotated[float, typer.Option(min=0.01)] = 14.0,
    algorithm: Annotated[str, typer.Option(help="als or bpr")] = "als",
    factors: Annotated[int, typer.Option(min=2)] = 64,
    iterations: Annotated[int, typer.Option(min=1)] = 15,
    candidates: Annotated[int, typer.Option(min=10, max=2000)] = 200,
    max_reject_ratio: Annotated[float, typer.Option(min=0, max=1)] = 0.05,
    seed: Annotated[int, typer.Option()] = 0,
    tune: Annotated[
        bool, typer.Option(help="Search the sources' and ranker's settings on validation")
    ] = True,
    tune_trials: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Trials per tuning stage that refits a model (item-item, ALS); a count, not "
            "seconds, so any machine picks the same settings [default: TuningConfig.max_trials, "
            "the whole grids]",
        ),
    ] = None,
    save: Annotated[bool, typer.Option(help="Store models in the BentoML model store")] = True,
) -> None:
    """Train retrieval and ranking, evaluate them on the held-out window, store the models."""
    from recsys.model.pipeline import TrainConfig, train_pipeline

    if split not in ("chronological", "random", "temporal"):
        raise RecsysError(f"--split must be chronological, random or temporal, got {split!r}")
    if algorithm not in ("als", "bpr"):
        raise RecsysError(f"--algorithm must be als or bpr, got {algorithm!r}")
    base = TrainConfig()
    config = replace(
        base,
        split=split,  # type: ignore[arg-type]
        ratio=ratio,
        holdout=holdout,
        validation_days=validation_days,
        test_days=test_days,
        max_reject_ratio=max_reject_ratio,
        seed=seed,
        embedding=replace(
            base.embedding,
            algorithm=algorithm,
            factors=factors,  # type: ignore[arg-type]
            iterations=iterations,
            seed=seed,
        ),
        retrieval=replace(base.retrieval, num_candidates=candidates),
        ranker=replace(base.ranker, seed=seed),
        tuning=replace(base.tuning, enabled=tune, max_trials=tune_trials or base.tuning.max_trials),
    )
    interactions, catalog = _load(data, movielens)
    result = train_pipeline(
        interactions, catalog, config, rejects_dir=str(out / "rejects"), on_stage=_stage_printer()
    )
    _finish(result, out, save, interactions)


def _finish(result, out: Path, save: bool, interactions=None) -> None:
    from recsys.model.artifacts import code_revision, save_models
    from recsys.model.report import capped_warning, write_report

    summary = {
        "metrics": result.metrics,
        "validation": result.validation.to_dict(),
        "validation_summary": result.validation.summary_lines(),
        "split": result.split,
        "data_hash": result.data_hash,
        "config": result.config.to_dict(),
        "timings": result.timings,
        "promotable": result.promotable,
        "promotion_reasons": result.promotion_reasons,
        "code_revision": code_revision(),
    }
    if save:
        from recsys.model.health import snapshot_for

        with console.status("saving models (and their health snapshot) to the BentoML store"):
            snapshot = snapshot_for(result, interactions) if interactions is not None else None
            summary["model_tags"] = save_models(
                result, report_dir=str(out.resolve()), snapshot=snapshot
            )
    paths = write_report(summary, out)
    console.print(_metrics_table(result.metrics))
    timing = ", ".join(f"{k} {v:.1f}s" for k, v in result.timings.items())
    console.print(f"stage timings: {timing} (total {sum(result.timings.values()):.1f}s)")
    console.print(f"served order: {result.ranker.order_label} (chosen on validation lists)")
    if warning := capped_warning(result.metrics.get("tuning") or {}):
        console.print(f"[yellow]warning:[/] {warning}")
    verdict = "[green]promotable[/]" if result.promotable else "[red]not promotable[/]"
    console.print(f"verdict: {verdict} " + "; ".join(result.promotion_reasons))
    for name, tag in summary.get("model_tags", {}).items():
        console.print(f"{name} model: {tag}")
    console.print(f"report: {paths['report']}  (metrics: {paths['metrics']})")


@app.command("evaluate")
def evaluate(
    data: DataDir = Path("data"),
    out: Annotated[Path, typer.Option(help="Report directory")] = Path("reports/evaluate"),
    retrieval_tag: Annotated[str, typer.Option(help="Retrieval model tag")] = "latest",
    ranking_tag: Annotated[str, typer.Option(help="Ranking model tag")] = "latest",
    movielens: Annotated[bool, typer.Option(help="Read MovieLens files from --data")] = False,
) -> None:
    """Evaluate stored models on the test window of a data set (split as the models were)."""
    from recsys.model.artifacts import load_ranker, load_retrieval
    from recsys.model.data.validate import validate_dataset
    from recsys.model.evaluate import evaluate_models, held_out_relevance, promotion_decision
    from recsys.model.pipeline import TrainConfig, make_split

    retrieval, full_retrieval_tag = load_retrieval(retrieval_tag)
    ranker, full_ranking_tag = load_ranker(ranking_tag)
    import bentoml

    meta = bentoml.models.get(full_ranking_tag).info.metadata
    saved = meta.get("config", {})
    config = TrainConfig.split_of(saved)
    interactions, catalog = _load(data, movielens)
    clean = validate_dataset(interactions, catalog, saved.get("max_reject_ratio", 0.05))
    split = make_split(clean.interactions, config)
    evaluation = held_out_relevance(split.test, retrieval, max_users=config.max_eval_users)
    metrics = evaluate_models(
        retrieval, ranker, evaluation, config.ks, retrieval.config.num_candidates
    )
    promotable, reasons = promotion_decision(metrics)
    out.mkdir(parents=True, exist_ok=True)
    result = {
        "retrieval_tag": full_retrieval_tag,
        "ranking_tag": full_ranking_tag,
        "metrics": metrics,
        "promotable": promotable,
        "promotion_reasons": reasons,
    }
    (out / "metrics.json").write_text(json.dumps(result, indent=2))
    console.print(_metrics_table(metrics))
    console.print(f"metrics: {out / 'metrics.json'}")


@app.command("serve")
def serve(
    port: Annotated[int, typer.Option(min=1, max=65535, help="Gateway port")] = 3000,
    data: DataDir = Path("data"),
    train_if_missing: Annotated[
        bool, typer.Option(help="Generate data and train when no model is stored yet")
    ] = True,
    report: Annotated[Path, typer.Option(help="Report directory when training")] = Path(
        "reports/latest"
    ),
    ready_timeout: Annotated[
        float, typer.Option(min=1, help="Seconds to wait for every stage to become ready")
    ] = 180.0,
) -> None:
    """Serve the whole stack (gateway + retrieval + ranking) on 127.0.0.1:PORT."""
    import time

    from recsys.errors import ModelMissingError, StackNotReadyError
    from recsys.model.artifacts import RANKING_MODEL, RETRIEVAL_MODEL, model_path
    from recsys.ops.stack import start_stack
    from recsys.serving.settings import ServingSettings

    settings = ServingSettings()
    try:
        model_path(settings.retrieval_model_tag, RETRIEVAL_MODEL)
        model_path(settings.ranking_model_tag, RANKING_MODEL)
    except ModelMissingError:
        if not train_if_missing:
            raise
        console.print("no stored models yet: generating data (if needed) and training first")
        if (
            not (data / "interactions.parquet").exists()
            and not (data / "interactions.csv").exists()
        ):
            data_synth(out=data)
        train(data=data, out=report)
    import signal

    def stop_on_sigterm(signum, frame) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop_on_sigterm)  # stop the stack's process group too
    started = time.monotonic()
    server = start_stack(port, log_dir=Path("reports/logs"))
    try:
        with console.status(f"starting the stack on {server.url} (log: {server.log_path})"):
            server.wait_ready(ready_timeout)
            server.wait_stages(ready_timeout)
        elapsed = time.monotonic() - started
        console.print(f"[green]ready[/] on {server.url} in {elapsed:.1f} s; try:")
        console.print(
            f"  curl -s -X POST {server.url}/recommend -H 'content-type: application/json' "
            '-d \'{"user_id": "u42", "k": 10}\'',
            soft_wrap=True,
            highlight=False,
            markup=False,
        )
        console.print(f"  OpenAPI docs: {server.url}/docs   metrics: {server.url}/metrics")
        console.print("Ctrl+C stops the stack.")
        if (code := server.wait()) != 0:
            raise StackNotReadyError(f"the stack exited with code {code} (log: {server.log_path})")
    except KeyboardInterrupt:
        console.print("stopping")
    finally:
        server.stop()


@app.command("traces")
def traces(
    port: Annotated[int, typer.Option(min=0, max=65535, help="OTLP/HTTP port to listen on")] = 4318,
    host: Annotated[str, typer.Option(help="Address to bind")] = "127.0.0.1",
) -> None:
    """Receive OTLP/HTTP traces and print each span (a local stand-in for Jaeger or Tempo)."""
    import threading

    from recsys.ops.otlp import format_span, run_receiver

    def show(spans) -> None:
        for span in spans:
            console.print(format_span(span), highlight=False, markup=False, soft_wrap=True)

    with run_receiver(port, host, on_spans=show) as receiver:
        console.print(
            f"listening on {receiver.endpoint}/v1/traces; serve with "
            f"OTEL_EXPORTER_OTLP_ENDPOINT={receiver.endpoint} RECSYS_TRACE_SAMPLE_RATE=1 "
            "(Ctrl+C stops)"
        )
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            console.print("stopped")


@models_app.command("list")
def models_list(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON")] = False,
) -> None:
    """List stored recsys model versions, newest first."""
    from recsys.model.artifacts import list_models

    rows = list_models()
    if as_json:
        console.print_json(json.dumps(rows))
        return
    table = Table(title="recsys models")
    for column in ("tag", "stage", "created", "data_hash", "promotable", "ndcg@10"):
        table.add_column(column)
    for row in rows:
        ndcg = row["ndcg@10"]
        table.add_row(
            *(str(row[c]) for c in ("tag", "stage", "created", "data_hash", "promotable")),
            f"{ndcg:.4f}" if isinstance(ndcg, float) else "-",
        )
    console.print(table)


def main() -> None:
    """Entry point: typed errors become one clear line and exit code 2."""
    try:
        app()
    except RecsysError as exc:
        err_console.print(f"[red]error:[/] {exc}")
        sys.exit(2)
    except ValueError as exc:
        err_console.print(f"[red]error:[/] {exc}")
        sys.exit(2)
