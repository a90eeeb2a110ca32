"""`recsys retrain` and `recsys models import|export`: the continuous-training commands.

Only typer is imported at module level, so `recsys --help` stays fast.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from recsys.errors import RecsysError


def retrain(
    source: Annotated[
        str,
        typer.Option(
            envvar="RECSYS_TRAINING_SOURCE",
            help="Data directory or URL (s3://... with s3fs): items.* and interactions.* "
            "and/or interactions/<day>.*",
        ),
    ],
    out: Annotated[Path, typer.Option(help="Run directory (run.json, reports)")] = Path(
        "reports/retrain"
    ),
    window_days: Annotated[
        float, typer.Option(min=0.01, help="New window (when the log is not in daily files)")
    ] = 1.0,
    max_reject_ratio: Annotated[float, typer.Option(min=0, max=1)] = 0.05,
    max_row_ratio: Annotated[float, typer.Option(min=1, help="Refused new/previous rows")] = 3.0,
    max_psi: Annotated[float, typer.Option(min=0, help="Refused window shift (PSI)")] = 0.5,
    stable_ranking: Annotated[
        str, typer.Option(envvar="RECSYS_RANKING_MODEL_TAG", help="Stable ranking model tag")
    ] = "latest",
    tolerance: Annotated[float, typer.Option(help="Preflight: allowed NDCG@10 drop")] = 0.02,
    model_store: Annotated[
        str | None,
        typer.Option(envvar="RECSYS_MODEL_STORE", help="Shared model store (directory or URL)"),
    ] = None,
    canary: Annotated[
        str, typer.Option(envvar="RECSYS_RETRAIN_CANARY", help="record, start or run")
    ] = "record",
    component: Annotated[str, typer.Option(help="Canary component")] = "ranking",
    image_tag: Annotated[
        str | None, typer.Option(envvar="RECSYS_IMAGE_TAG", help="Image tag of the canary")
    ] = None,
    rollout_arg: Annotated[
        list[str] | None,
        typer.Option("--rollout-arg", help="Extra argument for `recsys rollout` (repeatable)"),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Canary: print the helm steps instead")
    ] = False,
    metrics_file: Annotated[
        Path | None,
        typer.Option(envvar="RECSYS_RETRAIN_METRICS_FILE", help="Prometheus text file to write"),
    ] = None,
    pushgateway: Annotated[
        str | None, typer.Option(envvar="RECSYS_PUSHGATEWAY_URL", help="Pushgateway base URL")
    ] = None,
    train_config: Annotated[
        str | None,
        typer.Option(
            envvar="RECSYS_TRAIN_CONFIG",
            help='JSON overrides of TrainConfig, e.g. {"embedding": {"iterations": 8}}',
        ),
    ] = None,
) -> None:
    """Continuous training: check the new data, train, gate, preflight, publish, canary."""
    from recsys.training_job import RetrainConfig, run_retrain

    try:
        overrides = json.loads(train_config) if train_config else {}
    except json.JSONDecodeError as exc:
        raise RecsysError(f"--train-config is not valid JSON: {exc}") from exc
    config = RetrainConfig(
        source=source,
        out=out,
        window_days=window_days,
        max_reject_ratio=max_reject_ratio,
        max_row_ratio=max_row_ratio,
        max_psi=max_psi,
        stable_ranking=stable_ranking,
        tolerance=tolerance,
        model_store=model_store,
        canary=canary,
        component=component,
        image_tag=image_tag,
        rollout_args=list(rollout_arg or []),
        dry_run=dry_run,
        metrics_file=metrics_file,
        pushgateway=pushgateway,
        train_overrides=overrides,
    )
    result = run_retrain(config, echo=lambda line: typer.echo(line))
    raise typer.Exit(result.exit_code)


def models_import(
    tags: Annotated[
        list[str], typer.Argument(help="Model tags, e.g. recsys-ranking:abc123", min=1)
    ],
    model_store: Annotated[
        str, typer.Option("--from", envvar="RECSYS_MODEL_STORE", help="Shared model store")
    ],
    into: Annotated[
        Path | None,
        typer.Option(
            envvar="RECSYS_MODEL_DIR",
            help="Model store directory to import into (a serving pod's RECSYS_MODEL_DIR); "
            "default: the BentoML store (BENTOML_HOME)",
        ),
    ] = None,
) -> None:
    """Import models exported by `recsys retrain` into the local BentoML store (or `--into`)."""
    from recsys.training_job import import_model

    for tag in tags:
        typer.echo(f"imported {import_model(tag, model_store, into)}")
