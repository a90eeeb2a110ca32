"""Candidate retrieval: ALS/BPR embeddings, ScaNN indexes, trending popularity for cold users.

`RetrievalModel` is plain Python + NumPy + ScaNN (no serving framework): the Retrieval service,
training and evaluation all call the same `retrieve` code.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import scann
import scipy.sparse as sp

from recsys.model.data import schema
from recsys.model.data.validate import to_epoch_seconds
from recsys.model.vocab import Vocabulary
from recsys.tracing import set_attributes, tracer

SOURCE_ANN = "ann"
SOURCE_POPULAR = "popular"
POPULAR_FILE = "popular.json"
_DAY_S = 86_400.0


@dataclass(frozen=True)
class EmbeddingConfig:
    """Matrix-factorisation settings."""

    algorithm: Literal["als", "bpr"] = "als"
    factors: int = 64
    iterations: int = 15
    regularization: float = 0.05
    alpha: float = 10.0
    learning_rate: float = 0.01
    seed: int = 0


@dataclass(frozen=True)
class IndexConfig:
    """ScaNN settings; `brute_force_below` follows ScaNN's advice for small catalogs."""

    brute_force_below: int = 20_000
    leaves_per_sqrt_n: float = 1.0
    leaves_to_search_share: float = 0.2
    dims_per_block: int = 2
    anisotropic_threshold: float = 0.2
    reorder: int = 250
    training_sample_size: int = 250_000
    recall_sample: int = 1000
    recall_k: int = 10


@dataclass(frozen=True)
class RetrievalConfig:
    """How candidates are gathered at request time."""

    num_candidates: int = 200
    popular_share: float = 0.2
    cold_user_max_events: int = 2
    trending_days: float = 14.0
    trending_half_life_days: float = 3.0
    # The window widens (half-life alike) until it holds this share of the log's events.
    trending_min_share: float = 0.1
    popular_list_size: int = 2000


def interaction_matrix(
    history: pd.DataFrame, users: Vocabulary, items: Vocabulary
) -> sp.csr_matrix:
    """User x item matrix of log-scaled summed event weights (unknown ids ignored)."""
    user_idx = users.lookup(history[schema.USER_ID])
    item_idx = items.lookup(history[schema.ITEM_ID])
    keep = (user_idx >= 0) & (item_idx >= 0)
    weights = history[schema.WEIGHT].to_numpy(dtype=np.float32)[keep]
    matrix = sp.csr_matrix(
        (weights, (user_idx[keep], item_idx[keep])),
        shape=(len(users), len(items)),
        dtype=np.float32,
    )
    matrix.sum_duplicates()
    matrix.data = np.log1p(matrix.data)
    return matrix


def train_embeddings(
    user_items: sp.csr_matrix, config: EmbeddingConfig
) -> tuple[np.ndarray, np.ndarray]:
    """Fit ALS (or BPR) with `implicit`; returns float32 (user_factors, item_factors)."""
    from threadpoolctl import threadpool_limits

    # implicit parallelises over users itself; a multi-threaded BLAS underneath only slows it.
    with threadpool_limits(limits=1, user_api="blas"):
        if config.algorithm == "als":
            from implicit.cpu.als import AlternatingLeastSquares

            model = AlternatingLeastSquares(
                factors=config.factors,
                regularization=config.regularization,
                alpha=config.alpha,
                iterations=config.iterations,
                random_state=config.seed,
                calculate_training_loss=False,
            )
        else:
            from implicit.cpu.bpr import BayesianPersonalizedRanking

            model = BayesianPersonalizedRanking(
                factors=config.factors,
                learning_rate=config.learning_rate,
                regularization=config.regularization,
                iterations=config.iterations * 10,
                random_state=config.seed,
            )
        model.fit(user_items, show_progress=False)
    return (
        np.ascontiguousarray(model.user_factors, dtype=np.float32),
        np.ascontiguousarray(model.item_factors, dtype=np.float32),
    )


def trending_window_days(age_days: np.ndarray, config: RetrievalConfig) -> float:
    """The trending window: `trending_days`, widened until it holds `trending_min_share` of
    the events, so a sparse log (MovieLens: a few ratings a day over 22 years) still ranks on
    enough events; a dense one (the synthetic log) keeps the configured window."""
    past = age_days[age_days >= 0]
    if not len(past):
        return config.trending_days
    return max(config.trending_days, float(np.quantile(past, config.trending_min_share)))


def trending_items(
    history: pd.DataFrame, items: Vocabulary, as_of: pd.Timestamp, config: RetrievalConfig
) -> tuple[np.ndarray, np.ndarray]:
    """Items ranked by recency-decayed event weight over the trending window, best first.

    The half-life scales with the window (`trending_window_days`), keeping its shape.
    """
    seconds = to_epoch_seconds(history[schema.TIMESTAMP])
    as_of_s = to_epoch_seconds(pd.Series([as_of]))[0]
    age_days = (as_of_s - seconds) / _DAY_S
    window = trending_window_days(age_days, config)
    half_life = config.trending_half_life_days * window / config.trending_days
    recent = age_days <= window
    item_idx = items.lookup(history[schema.ITEM_ID])
    recent &= item_idx >= 0
    decay = np.exp2(-age_days[recent] / half_life)
    weights = history[schema.WEIGHT].to_numpy(dtype=np.float64)[recent] * decay
    scores = np.bincount(item_idx[recent], weights=weights, minlength=len(items))
    if not recent.any():  # no event in the window at all: all-time counts
        scores = np.bincount(item_idx[item_idx >= 0], minlength=len(items)).astype(np.float64)
    order = np.argsort(-scores, kind="stable")[: config.popular_list_size]
    order = order[scores[order] > 0]
    return order.astype(np.int64), (scores[order] / max(scores[order[0]], 1e-12)).astype(np.float32)


@contextlib.contextmanager
def _native_stderr_captured() -> Iterator[None]:
    """Hold back what native code (ScaNN's absl INFO lines) writes to fd 2; replay on failure."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        except BaseException:
            os.dup2(saved, 2)
            capture.seek(0)
            sys.stderr.write(capture.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def build_index(vectors: np.ndarray, config: IndexConfig, num_neighbors: int = 10):
    """A ScaNN searcher for maximum inner product over `vectors`, sized from the catalog."""
    with _native_stderr_captured():
        return _build_index(vectors, config, num_neighbors)


def _build_index(vectors: np.ndarray, config: IndexConfig, num_neighbors: int):
    n = len(vectors)
    builder = scann.scann_ops_pybind.builder(vectors, num_neighbors, "dot_product")
    if n < config.brute_force_below:
        return builder.score_brute_force().build()
    num_leaves = max(2, int(math.sqrt(n) * config.leaves_per_sqrt_n))
    leaves_to_search = max(1, int(num_leaves * config.leaves_to_search_share))
    return (
        builder.tree(
            num_leaves=num_leaves,
            num_leaves_to_search=leaves_to_search,
            training_sample_size=min(n, config.training_sample_size),
            # k-means++ seeding is unseeded in ScaNN; the deterministic init keeps builds
            # reproducible (same data and seed -> same index -> same metrics).
            random_init=False,
        )
        .score_ah(
            config.dims_per_block, anisotropic_quantization_threshold=config.anisotropic_threshold
        )
        .reorder(config.reorder)
        .build()
    )


def index_kind(n_items: int, config: IndexConfig) -> str:
    return "brute_force" if n_items < config.brute_force_below else "tree_ah_reorder"


def measure_recall(
    searcher, vectors: np.ndarray, queries: np.ndarray, k: int
) -> tuple[float, float, float]:
    """Recall@k of `searcher` against exact search, and both query rates (queries/s)."""
    start = time.perf_counter()
    approx, _ = searcher.search_batched(queries, final_num_neighbors=k)
    ann_qps = len(queries) / max(time.perf_counter() - start, 1e-9)
    start = time.perf_counter()
    scores = queries @ vectors.T
    exact = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    exact_qps = len(queries) / max(time.perf_counter() - start, 1e-9)
    hits = sum(len(set(a.tolist()) & set(e.tolist())) for a, e in zip(approx, exact, strict=True))
    return hits / (k * len(queries)), ann_qps, exact_qps


_ASSET_PATH = re.compile(r'asset_path: "([^"]*)"')


def save_searcher(searcher, directory: Path) -> None:
    """Serialize a ScaNN searcher with asset paths relative to its directory.

    ScaNN writes absolute paths into scann_assets.pbtxt, which break as soon as the artifact
    is moved (into the model store, a Bento, an image).
    """
    directory = Path(directory).resolve()
    directory.mkdir(parents=True, exist_ok=True)
    searcher.serialize(str(directory))
    assets = directory / "scann_assets.pbtxt"
    text = _ASSET_PATH.sub(lambda m: f'asset_path: "{Path(m.group(1)).name}"', assets.read_text())
    assets.write_text(text)


def load_searcher(directory: Path):
    """Load a searcher saved by `save_searcher`, wherever its directory now is.

    ScaNN joins each asset path onto the directory it is given, so both must be absolute: a
    relative directory would be applied twice.
    """
    directory = Path(directory).resolve()
    text = (directory / "scann_assets.pbtxt").read_text()
    text = _ASSET_PATH.sub(lambda m: f'asset_path: "{directory / Path(m.group(1)).name}"', text)
    pybind = scann.scann_ops_pybind
    return pybind.ScannSearcher(pybind.scann_pybind.ScannNumpy(str(directory), text), None)


def candidate_rows(columns: dict[str, list]) -> list[dict]:
    """Candidate columns as one dict `{item_id, score, source, category}` per candidate."""
    return [
        {"item_id": item, "score": score, "source": source, "category": category}
        for item, score, source, category in zip(
            columns["item_ids"],
            columns["scores"],
            columns["sources"],
            columns["categories"],
            strict=True,
        )
    ]


@dataclass
class Candidates:
    """Retrieved items for one user, in retrieval order."""

    item_idx: np.ndarray
    scores: np.ndarray
    from_popular: np.ndarray

    def __len__(self) -> int:
        return len(self.item_idx)


@dataclass
class RetrievalModel:
    """Embeddings, ScaNN indexes, history and trending list: everything retrieval serves from."""

    users: Vocabulary
    items: Vocabulary
    user_factors: np.ndarray
    item_factors: np.ndarray
    seen: sp.csr_matrix
    popular_idx: np.ndarray
    popular_scores: np.ndarray
    config: RetrievalConfig
    index_config: IndexConfig
    item_categories: np.ndarray | None = None
    mips: object = None
    similar: object = None
    stats: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.history_counts = np.diff(self.seen.indptr)
        norms = np.linalg.norm(self.item_factors, axis=1, keepdims=True)
        self._unit_items = (self.item_factors / np.maximum(norms, 1e-12)).astype(np.float32)

    # ---- building -------------------------------------------------------------------------
    def build_indexes(self, seed: int = 0) -> None:
        """Build both ScaNN indexes and record their recall against exact search."""
        start = time.perf_counter()
        self.mips = build_index(self.item_factors, self.index_config)
        self.similar = build_index(self._unit_items, self.index_config)
        build_s = time.perf_counter() - start
        rng = np.random.default_rng(seed)
        warm = np.flatnonzero(self.history_counts > 0)
        sample = rng.choice(
            warm, size=min(len(warm), self.index_config.recall_sample), replace=False
        )
        k = min(self.index_config.recall_k, len(self.items))
        recall, ann_qps, exact_qps = measure_recall(
            self.mips, self.item_factors, self.user_factors[sample], k
        )
        self.stats = {
            "index": index_kind(len(self.items), self.index_config),
            "items": len(self.items),
            "build_seconds": round(build_s, 3),
            f"recall_at_{k}_vs_exact": round(recall, 4),
            "ann_queries_per_s": round(ann_qps, 1),
            "exact_queries_per_s": round(exact_qps, 1),
            "recall_queries": len(sample),
        }

    # ---- queries ---------------------------------------------------------------------------
    def is_cold(self, user_idx: int) -> bool:
        return user_idx < 0 or bool(
            self.history_counts[user_idx] <= self.config.cold_user_max_events
        )

    def seen_items(self, user_idx: int) -> np.ndarray:
        if user_idx < 0:
            return np.empty(0, dtype=np.int64)
        return self.seen.indices[self.seen.indptr[user_idx] : self.seen.indptr[user_idx + 1]]

    def _ann(self, query: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
        count = min(count, len(self.items))
        neighbours, scores = self.mips.search(
            query, final_num_neighbors=count, pre_reorder_num_neighbors=max(count * 2, 1)
        )
        return neighbours.astype(np.int64), scores

    def retrieve_indices(
        self,
        user_idx: int,
        k: int,
        exclude: np.ndarray | None = None,
        exclude_seen: bool = True,
    ) -> Candidates:
        """Up to k candidates: ANN for warm users, then trending items to fill the popular share.

        Cold or unknown users (index -1) get trending items only.
        """
        blocked = np.empty(0, dtype=np.int64) if exclude is None else np.asarray(exclude, np.int64)
        if exclude_seen:
            blocked = np.concatenate([blocked, self.seen_items(user_idx)])
        cold = self.is_cold(user_idx)
        n_popular = k if cold else round(k * self.config.popular_share)
        n_ann = k - n_popular
        ann_idx = np.empty(0, dtype=np.int64)
        ann_scores = np.empty(0, dtype=np.float32)
        if n_ann > 0:
            with tracer.start_as_current_span("ann_search") as span:
                found, scores = self._ann(self.user_factors[user_idx], n_ann + len(blocked))
                keep = ~np.isin(found, blocked)
                ann_idx, ann_scores = found[keep][:n_ann], scores[keep][:n_ann]
                set_attributes(span, requested=n_ann, searched=len(found), found=len(ann_idx))
        with tracer.start_as_current_span("popular_candidates") as span:
            fill = k - len(ann_idx)
            taken = np.concatenate([blocked, ann_idx])
            popular_keep = np.flatnonzero(~np.isin(self.popular_idx, taken))[:fill]
            pop_idx = self.popular_idx[popular_keep]
            if not cold:
                pop_scores = self.item_factors[pop_idx] @ self.user_factors[user_idx]
            else:
                pop_scores = self.popular_scores[popular_keep]
            set_attributes(span, requested=fill, found=len(pop_idx), cold_user=cold)
        return Candidates(
            np.concatenate([ann_idx, pop_idx]),
            np.concatenate([ann_scores, pop_scores]).astype(np.float32),
            np.concatenate([np.zeros(len(ann_idx), bool), np.ones(len(pop_idx), bool)]),
        )

    def retrieve_columns(
        self,
        user_id: str,
        k: int,
        exclude_items: list[str] | tuple[str, ...] = (),
        exclude_seen: bool = True,
    ) -> dict[str, list]:
        """Served candidates for a user id (unknown users allowed), as columns.

        `item_ids`, `scores`, `sources`, `categories`: one list entry per candidate, in retrieval
        order. This is what crosses the gateway-retrieval hop and what `Ranker.score_columns`
        reads; a column added here travels to the ranker untouched.
        """
        exclude = self.items.lookup(list(exclude_items)) if exclude_items else None
        if exclude is not None:
            exclude = exclude[exclude >= 0]
        found = self.retrieve_indices(self.users.index_of(user_id), k, exclude, exclude_seen)
        return self.columns(found)

    def retrieve(
        self,
        user_id: str,
        k: int,
        exclude_items: list[str] | tuple[str, ...] = (),
        exclude_seen: bool = True,
    ) -> list[dict]:
        """`retrieve_columns` as one dict `{item_id, score, source, category}` per candidate."""
        return candidate_rows(self.retrieve_columns(user_id, k, exclude_items, exclude_seen))

    def category_of(self, item_idx: np.ndarray) -> list[str]:
        if self.item_categories is None:
            return [""] * len(item_idx)
        return self.item_categories[item_idx].tolist()

    def columns(self, found: Candidates) -> dict[str, list]:
        """Candidates as the columns `item_ids`, `scores`, `sources`, `categories`."""
        return {
            "item_ids": self.items.ids[found.item_idx].tolist(),
            "scores": found.scores.tolist(),
            "sources": np.where(found.from_popular, SOURCE_POPULAR, SOURCE_ANN).tolist(),
            "categories": self.category_of(found.item_idx),
        }

    def popular_list(self, k: int) -> list[dict]:
        """The first k trending items, for callers that must answer without this model."""
        top = self.popular_idx[:k]
        found = Candidates(top, self.popular_scores[:k], np.ones(len(top), dtype=bool))
        return candidate_rows(self.columns(found))

    def similar_items(self, item_id: str, k: int) -> list[dict] | None:
        """Items closest to `item_id` by cosine of item embeddings; None for an unknown item."""
        item_idx = self.items.index_of(item_id)
        if item_idx < 0:
            return None
        count = min(k + 1, len(self.items))
        found, scores = self.similar.search(self._unit_items[item_idx], final_num_neighbors=count)
        keep = [pos for pos, i in enumerate(found.tolist()) if i != item_idx][:k]
        found = found[keep].astype(np.int64)
        categories = self.category_of(found)
        return [
            {"item_id": self.items.ids[i], "score": score, "category": category}
            for i, score, category in zip(
                found.tolist(), scores[keep].tolist(), categories, strict=True
            )
        ]

    # ---- persistence -------------------------------------------------------------------------
    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.users.save(directory / "users.npy")
        self.items.save(directory / "items.npy")
        np.save(directory / "user_factors.npy", self.user_factors)
        np.save(directory / "item_factors.npy", self.item_factors)
        sp.save_npz(directory / "seen.npz", self.seen)
        np.save(directory / "popular_idx.npy", self.popular_idx)
        np.save(directory / "popular_scores.npy", self.popular_scores)
        if self.item_categories is not None:
            np.save(directory / "item_categories.npy", self.item_categories.astype(str))
        # A small, dependency-free fallback list the gateway reads without loading the model.
        (directory / POPULAR_FILE).write_text(json.dumps(self.popular_list(500)))
        (directory / "retrieval.json").write_text(
            json.dumps(
                {
                    "config": asdict(self.config),
                    "index_config": asdict(self.index_config),
                    "stats": self.stats,
                },
                indent=2,
            )
        )
        save_searcher(self.mips, directory / "scann_mips")
        save_searcher(self.similar, directory / "scann_similar")

    @classmethod
    def load(cls, directory: str | Path) -> RetrievalModel:
        directory = Path(directory).resolve()
        meta = json.loads((directory / "retrieval.json").read_text())
        model = cls(
            users=Vocabulary.load(directory / "users.npy"),
            items=Vocabulary.load(directory / "items.npy"),
            user_factors=np.load(directory / "user_factors.npy"),
            item_factors=np.load(directory / "item_factors.npy"),
            seen=sp.load_npz(directory / "seen.npz").tocsr(),
            popular_idx=np.load(directory / "popular_idx.npy"),
            popular_scores=np.load(directory / "popular_scores.npy"),
            item_categories=np.load(directory / "item_categories.npy").astype(object)
            if (directory / "item_categories.npy").exists()
            else None,
            config=RetrievalConfig(**meta["config"]),
            index_config=IndexConfig(**meta["index_config"]),
            stats=meta["stats"],
        )
        model.mips = load_searcher(directory / "scann_mips")
        model.similar = load_searcher(directory / "scann_similar")
        return model


def train_retrieval(
    history: pd.DataFrame,
    items: Vocabulary,
    item_categories: np.ndarray | None,
    as_of: pd.Timestamp,
    embedding: EmbeddingConfig,
    index: IndexConfig,
    config: RetrievalConfig,
) -> RetrievalModel:
    """Fit embeddings on `history`, compute trending items at `as_of`, build the ScaNN indexes."""
    users = Vocabulary.from_values(history[schema.USER_ID])
    matrix = interaction_matrix(history, users, items)
    user_factors, item_factors = train_embeddings(matrix, embedding)
    popular_idx, popular_scores = trending_items(history, items, as_of, config)
    model = RetrievalModel(
        users=users,
        items=items,
        user_factors=user_factors,
        item_factors=item_factors,
        seen=matrix,
        popular_idx=popular_idx,
        popular_scores=popular_scores,
        config=config,
        index_config=index,
        item_categories=item_categories,
    )
    model.build_indexes(seed=embedding.seed)
    return model
