"""Synthetic data, training and the benchmark's own BentoML model store.

Models are trained once per data/training configuration and reused by later runs: the
configuration's fingerprint is kept next to the stored tags in `models.json`.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from bench.config import BenchConfig

MODELS_FILE = "models.json"
USERS_FILE = "request_users.txt"


@dataclass(frozen=True)
class TrainedModels:
    """Tags of the stored models, where they live, and how they were made."""

    retrieval_tag: str
    ranking_tag: str
    bentoml_home: str
    fingerprint: str
    reused: bool
    train_seconds: float
    index_stats: dict

    def service_env(self) -> dict[str, str]:
        """Environment that makes a service load exactly these models."""
        return {
            "BENTOML_HOME": self.bentoml_home,
            "RECSYS_RETRIEVAL_MODEL_TAG": self.retrieval_tag,
            "RECSYS_RANKING_MODEL_TAG": self.ranking_tag,
        }


def synth_and_train_configs(config: BenchConfig):
    """The SynthConfig and TrainConfig a benchmark run trains with."""
    from recsys.model.data.synth import SynthConfig
    from recsys.model.pipeline import TrainConfig

    synth = SynthConfig(
        n_users=config.users, n_items=config.items, n_events=config.events, seed=config.seed
    )
    base = TrainConfig()
    train = replace(
        base,
        max_eval_users=config.max_eval_users,
        ranker=replace(base.ranker, max_training_users=config.ranker_training_users),
    )
    if config.quick:
        train = replace(
            train,
            validation_days=14,
            test_days=14,
            embedding=replace(base.embedding, iterations=6),
            ranker=replace(train.ranker, n_estimators=60),
        )
    return synth, train


def fingerprint(synth, train) -> str:
    text = json.dumps({"synth": asdict(synth), "train": train.to_dict()}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _stored(tag: str) -> bool:
    import bentoml
    from bentoml.exceptions import NotFound

    try:
        bentoml.models.get(tag)
    except NotFound:
        return False
    return True


def prepare_models(config: BenchConfig, out: Path, log=print) -> TrainedModels:
    """Train and store models for `config`, or reuse the ones a previous run stored.

    BENTOML_HOME is pointed at `out/bentoml_home` for this process (before BentoML is
    imported) so the benchmark never touches the developer's own model store.
    """
    home = (out / "bentoml_home").resolve()
    home.mkdir(parents=True, exist_ok=True)
    os.environ["BENTOML_HOME"] = str(home)
    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")
    synth, train = synth_and_train_configs(config)
    key = fingerprint(synth, train)
    record_path = out / MODELS_FILE
    if record_path.exists():
        record = json.loads(record_path.read_text())
        if (
            record.get("fingerprint") == key
            and _stored(record["retrieval_tag"])
            and _stored(record["ranking_tag"])
        ):
            log(f"reusing models {record['retrieval_tag']}, {record['ranking_tag']}")
            return TrainedModels(**{**record, "bentoml_home": str(home), "reused": True})

    from recsys.model.artifacts import save_models
    from recsys.model.data.synth import generate
    from recsys.model.pipeline import train_pipeline

    start = time.perf_counter()
    log(f"generating {synth.n_items} items, {synth.n_users} users, {synth.n_events} events")
    data = generate(synth)
    log("training (first run for this configuration; later runs reuse the models)")
    result = train_pipeline(
        data.interactions,
        data.catalog,
        train,
        on_stage=lambda name, s: log(f"  train stage {name}: {'...' if s is None else f'{s}s'}"),
    )
    tags = save_models(result)
    record = {
        "retrieval_tag": tags["retrieval"],
        "ranking_tag": tags["ranking"],
        "fingerprint": key,
        "train_seconds": round(time.perf_counter() - start, 1),
        "index_stats": result.retrieval.stats,
    }
    record_path.write_text(json.dumps(record, indent=2))
    return TrainedModels(**record, bentoml_home=str(home), reused=False)


def load_models(models: TrainedModels):
    """The stored RetrievalModel and Ranker, loaded the way the services load them."""
    from recsys.model.artifacts import load_ranker, load_retrieval

    retrieval, _ = load_retrieval(models.retrieval_tag)
    ranker, _ = load_ranker(models.ranking_tag)
    return retrieval, ranker


def request_users(retrieval, count: int, seed: int, out: Path) -> tuple[list[str], Path]:
    """A seeded sample of known user ids (cold ones included), written one per line for wrk."""
    rng = np.random.default_rng(seed)
    ids = retrieval.users.ids
    picked = rng.choice(len(ids), size=min(count, len(ids)), replace=False)
    users = [str(ids[i]) for i in picked]
    path = out / USERS_FILE
    path.write_text("\n".join(users) + "\n")
    return users, path
