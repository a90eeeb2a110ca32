"""Versioned model artifacts in the BentoML model store, and the loading API the services use.

Each artifact directory carries `manifest.json` with the SHA-256 of every file; loading checks it,
so a truncated or altered artifact fails with `ModelCorruptError` instead of serving garbage.
BentoML is imported lazily: training and tests that never touch the store do not pay for it.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from recsys import REPO_ROOT
from recsys.errors import ModelCorruptError, ModelMissingError

if TYPE_CHECKING:
    from recsys.model.health import TrainingSnapshot
    from recsys.model.pipeline import TrainResult
    from recsys.model.ranking import Ranker
    from recsys.model.retrieval import RetrievalModel

RETRIEVAL_MODEL = "recsys-retrieval"
RANKING_MODEL = "recsys-ranking"
MANIFEST = "manifest.json"


def code_revision() -> str:
    """The git commit of the working tree (with `-dirty` when it has changes), or `unknown`."""
    try:
        root = REPO_ROOT
        rev = subprocess.run(
            ["git", "-C", str(root), "describe", "--always", "--dirty", "--abbrev=12"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        return rev or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(directory: Path) -> None:
    files = sorted(p for p in directory.rglob("*") if p.is_file() and p.name != MANIFEST)
    manifest = {str(p.relative_to(directory)): _sha256(p) for p in files}
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True))


def verify_manifest(directory: Path, what: str) -> None:
    """Raise ModelCorruptError when a file listed in the manifest is missing or altered."""
    manifest_path = directory / MANIFEST
    if not manifest_path.exists():
        raise ModelCorruptError(f"{what}: {MANIFEST} is missing in {directory}")
    try:
        manifest = json.loads(manifest_path.read_text())
    except json.JSONDecodeError as exc:
        raise ModelCorruptError(f"{what}: {MANIFEST} is not valid JSON ({exc})") from exc
    for name, expected in manifest.items():
        path = directory / name
        if not path.exists():
            raise ModelCorruptError(f"{what}: file {name} is missing")
        if _sha256(path) != expected:
            raise ModelCorruptError(f"{what}: file {name} does not match its checksum")


def _flat(value: object) -> object:
    """Metadata BentoML accepts: plain JSON types, tuples as lists, no None values."""

    def drop_none(node: object) -> object:
        if isinstance(node, dict):
            return {k: drop_none(v) for k, v in node.items() if v is not None}
        if isinstance(node, list):
            return [drop_none(v) for v in node if v is not None]
        return node

    return drop_none(json.loads(json.dumps(value, default=str)))


def save_models(
    result: TrainResult,
    report_dir: str | None = None,
    snapshot: TrainingSnapshot | None = None,
) -> dict[str, str]:
    """Store the retrieval and ranking models as new BentoML model versions; returns their tags.

    A training snapshot (recsys.model.health) is saved in both model directories, under the
    manifest.
    """
    import bentoml

    revision = code_revision()
    models = result.metrics["models"]
    labels = {
        "project": "recsys",
        "data_hash": result.data_hash,
        "promotable": str(result.promotable).lower(),
        "split": result.config.split,
    }
    common = {
        "data_hash": result.data_hash,
        "code_revision": revision,
        "split": result.split,
        "config": result.config.to_dict(),
        "promotable": result.promotable,
        "promotion_reasons": result.promotion_reasons,
        "report_dir": report_dir,
        "data_end": snapshot.data_end if snapshot is not None else None,
    }
    tags: dict[str, str] = {}
    with bentoml.models.create(
        RETRIEVAL_MODEL,
        labels={**labels, "stage": "retrieval"},
        metadata=_flat(
            {
                **common,
                "index": result.retrieval.stats,
                "metrics": {"retrieval": result.metrics["models"]["retrieval"]},
            }
        ),
    ) as model:
        result.retrieval.save(model.path)
        if snapshot is not None:
            snapshot.save(model.path)
        write_manifest(Path(model.path))
        tags["retrieval"] = str(model.tag)
    with bentoml.models.create(
        RANKING_MODEL,
        labels={
            **labels,
            "stage": "ranking",
            "retrieval_tag": tags["retrieval"],
            "serving_order": result.ranker.serving_order,
        },
        metadata=_flat(
            {
                **common,
                "metrics": {
                    "two_stage": models["two_stage"],
                    "served": models["served"],
                    "models": models,
                },
                "ranker": result.ranker.info,
            }
        ),
    ) as model:
        result.ranker.save(model.path)
        if snapshot is not None:
            snapshot.save(model.path)
        write_manifest(Path(model.path))
        tags["ranking"] = str(model.tag)
    return tags


def model_store(directory: str | Path):
    """A BentoML model store rooted at `directory` (`<name>/<version>/` inside), created if
    missing: where `recsys models import --into` puts models and RECSYS_MODEL_DIR points."""
    # bentoml.models.get/import_model take the store as `_model_store`; only the class is
    # internal to BentoML.
    from bentoml._internal.models.model import ModelStore

    root = Path(directory).resolve()
    root.mkdir(parents=True, exist_ok=True)
    return ModelStore(root)


@dataclass(frozen=True)
class StoredModel:
    """Where a stored model's files are, its full tag and when it was created (Unix time)."""

    path: Path
    tag: str
    created: float


def stored_model(
    tag: str, name: str, what: str | None = None, store_dir: str | Path | None = None
) -> StoredModel:
    """A stored model (`latest` and bare versions resolved): from `store_dir` when that store
    holds the tag, else from the default store (BENTOML_HOME, or the Bento's own models)."""
    import bentoml
    from bentoml.exceptions import BentoMLException, NotFound

    full = tag if ":" in tag else f"{name}:{tag}"
    stores = [{"_model_store": model_store(store_dir)}] if store_dir else []
    for options in [*stores, {}]:
        try:
            model = bentoml.models.get(full, **options)
        except NotFound:
            continue
        except BentoMLException as exc:
            raise ModelCorruptError(f"{what or name} model {full!r} cannot be read: {exc}") from exc
        created = model.info.creation_time.timestamp()
        return StoredModel(Path(model.path).resolve(), str(model.tag), created)
    where = (
        f"{store_dir} nor in the BentoML model store" if store_dir else "the BentoML model store"
    )
    raise ModelMissingError(
        f"{what or name} model {full!r} is not in {where} "
        "(train one with `recsys train`, or check RECSYS_*_MODEL_TAG and BENTOML_HOME)"
    )


def resolve_tag(tag: str, name: str) -> str:
    """Full `name:version` tag of a model (resolves `latest` and bare versions)."""
    return stored_model(tag, name).tag


def model_path(
    tag: str, name: str, what: str | None = None, store_dir: str | Path | None = None
) -> tuple[Path, str]:
    """Directory and full tag of a stored model (`latest` and bare versions resolved)."""
    model = stored_model(tag, name, what, store_dir)
    return model.path, model.tag


def load_retrieval_dir(directory: str | Path) -> RetrievalModel:
    from recsys.model.retrieval import RetrievalModel

    directory = Path(directory).resolve()
    verify_manifest(directory, "retrieval model")
    try:
        return RetrievalModel.load(directory)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise ModelCorruptError(f"retrieval model in {directory} cannot be loaded: {exc}") from exc


def load_ranker_dir(directory: str | Path) -> Ranker:
    from recsys.model.ranking import Ranker

    directory = Path(directory).resolve()
    verify_manifest(directory, "ranking model")
    try:
        return Ranker.load(directory)
    except Exception as exc:  # xgboost raises its own XGBoostError among others
        raise ModelCorruptError(f"ranking model in {directory} cannot be loaded: {exc}") from exc


def load_retrieval(
    tag: str = "latest", store_dir: str | Path | None = None
) -> tuple[RetrievalModel, str]:
    """Load a retrieval model from the store; returns it with its full tag."""
    path, full = model_path(tag, RETRIEVAL_MODEL, "retrieval", store_dir)
    return load_retrieval_dir(path), full


def load_ranker(tag: str = "latest", store_dir: str | Path | None = None) -> tuple[Ranker, str]:
    """Load a ranking model from the store; returns it with its full tag."""
    path, full = model_path(tag, RANKING_MODEL, "ranking", store_dir)
    return load_ranker_dir(path), full


def list_models() -> list[dict]:
    """Every recsys model version in the store, newest first."""
    import bentoml

    rows = []
    for name in (RETRIEVAL_MODEL, RANKING_MODEL):
        for model in bentoml.models.list(name):
            info = model.info
            metrics = info.metadata.get("metrics", {})
            figures = metrics.get("served") or metrics.get("two_stage") or metrics.get("retrieval")
            ndcg = (figures or {}).get("ndcg@10")
            rows.append(
                {
                    "tag": str(model.tag),
                    "stage": info.labels.get("stage", ""),
                    "created": info.creation_time.isoformat(timespec="seconds"),
                    "data_hash": info.labels.get("data_hash", ""),
                    "promotable": info.labels.get("promotable", ""),
                    "ndcg@10": ndcg,
                }
            )
    return sorted(rows, key=lambda r: r["created"], reverse=True)
