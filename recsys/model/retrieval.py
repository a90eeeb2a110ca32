"""Candidate retrieval: ALS/BPR embeddings in ScaNN indexes, an item-item source and
popularity, merged by shares and ordered by reciprocal-rank fusion; cold and unknown users get
the popular list.

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
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import scann
import scipy.sparse as sp

from recsys.model.data import schema
from recsys.model.sources import (
    SIGNAL_NAMES,
    SOURCE_ANN,
    SOURCE_ITEM,
    SOURCE_POPULAR,
    ActiveScores,
    CatalogPositions,
    ItemItemConfig,
    ItemItemModel,
    PopularityDefinition,
    Positions,
    fit_item_item,
    merge_lists,
    popularity_scores,
    recent_items,
    user_profiles,
)
from recsys.model.vocab import Vocabulary
from recsys.tracing import set_attributes, tracer

POPULAR_FILE = "popular.json"


@dataclass(frozen=True)
class EmbeddingConfig:
    """Matrix-factorisation settings."""

    algorithm: Literal["als", "bpr"] = "als"
    weighting: Literal["log", "bm25"] = "log"
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
    """How candidates are gathered at request time, and the popularity list's definition.

    Each source proposes up to `num_candidates` items. The ALS index gives the first
    `ann_share` of the candidates, item-item the next `item_share`, popularity the rest
    (`merge_lists`); they are ordered by weighted reciprocal-rank fusion (weight / (rrf_k +
    rank)). Popularity: `PopularityDefinition` from the `trending_*` and all-time fields.
    """

    num_candidates: int = 200
    cold_user_max_events: int = 2
    ann_share: float = 0.6
    item_share: float = 0.2
    ann_weight: float = 1.0
    item_weight: float = 1.0
    popular_weight: float = 0.5
    rrf_k: float = 60.0
    trending_days: float = 14.0
    trending_half_life_days: float = 3.0
    # The window widens (half-life alike) until it holds this share of the log's events.
    trending_min_share: float = 0.1
    popular_all_time_weight: float = 0.0
    popular_list_size: int = 2000

    @property
    def fusion_weights(self) -> dict[str, float]:
        return {
            SOURCE_ANN: self.ann_weight,
            SOURCE_ITEM: self.item_weight,
            SOURCE_POPULAR: self.popular_weight,
        }

    @property
    def shares(self) -> dict[str, float]:
        return {SOURCE_ANN: self.ann_share, SOURCE_ITEM: self.item_share}

    @property
    def popularity(self) -> PopularityDefinition:
        return PopularityDefinition(
            self.trending_days,
            self.trending_half_life_days,
            self.trending_min_share,
            self.popular_all_time_weight,
        )


def interaction_matrix(
    history: pd.DataFrame, users: Vocabulary, items: Vocabulary
) -> sp.csr_matrix:
    """User x item matrix of log-scaled summed event weights (unknown ids ignored): what ALS
    learns from (`embedding_input` may re-weight it) and the seen items retrieval leaves out."""
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


def embedding_input(user_items: sp.csr_matrix, weighting: str) -> sp.csr_matrix:
    """The matrix ALS fits: log-scaled weights as they are, or BM25-weighted (long histories
    and very popular items count less)."""
    if weighting == "bm25":
        from implicit.nearest_neighbours import bm25_weight

        return bm25_weight(user_items, K1=100, B=0.8).tocsr().astype(np.float32)
    return user_items


def train_embeddings(
    user_items: sp.csr_matrix, config: EmbeddingConfig
) -> tuple[np.ndarray, np.ndarray]:
    """Fit ALS (or BPR) with `implicit`; returns float32 (user_factors, item_factors)."""
    from threadpoolctl import threadpool_limits

    user_items = embedding_input(user_items, config.weighting)

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


def popular_ranking(scores: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The `size` most popular items, best first, with scores scaled to the best one's."""
    order = np.argsort(-scores, kind="stable")[:size]
    order = order[scores[order] > 0]
    if not len(order):
        return order.astype(np.int64), np.empty(0, dtype=np.float32)
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
    """Retrieved items for one user, in fused retrieval order.

    `sources` is each candidate's provenance (the source that ranked it highest, weighted);
    `signals` holds every source's view of it, columns `SIGNAL_NAMES`.
    """

    item_idx: np.ndarray
    scores: np.ndarray
    sources: np.ndarray
    signals: np.ndarray

    def __len__(self) -> int:
        return len(self.item_idx)

    @property
    def from_popular(self) -> np.ndarray:
        return self.sources == SOURCE_POPULAR


def _ranks_in(
    positions: Positions, found: np.ndarray, ranked: np.ndarray | None, missing: int
) -> np.ndarray:
    """Position of each `found` item in `ranked` (best first), `missing` where absent."""
    position = positions(found, ranked)
    return np.where(position >= 0, position, missing).astype(np.float32)


@dataclass
class SourceLists:
    """Each source's list for one user, best first, and the item-item score vectors."""

    lists: dict[str, np.ndarray]
    item_scores: ActiveScores | None
    recent_scores: ActiveScores | None


@dataclass
class RetrievalModel:
    """Embeddings and ScaNN indexes, the item-item source, history and popularity: everything
    retrieval serves from."""

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
    popularity: np.ndarray | None = None
    item_item: ItemItemModel | None = None
    profiles: sp.csr_matrix | None = None
    recent: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.history_counts = np.diff(self.seen.indptr)
        norms = np.linalg.norm(self.item_factors, axis=1, keepdims=True)
        self._unit_items = (self.item_factors / np.maximum(norms, 1e-12)).astype(np.float32)
        if self.popularity is None:
            self.popularity = np.zeros(len(self.items), dtype=np.float32)
            self.popularity[self.popular_idx] = self.popular_scores
        top = float(self.popularity.max()) if len(self.popularity) else 0.0
        self._popularity_scaled = (self.popularity / max(top, 1e-12)).astype(np.float32)
        self._positions = CatalogPositions(len(self.items))

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
            **self.stats,
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

    def item_item_scores(self, user_idx: int) -> tuple[ActiveScores | None, ActiveScores | None]:
        """Item-item scores of the active items from the user's profile, and from their
        `recent_items` last items alone (None, None without history or item-item source)."""
        if self.item_item is None or self.profiles is None or user_idx < 0:
            return None, None
        start, end = self.profiles.indptr[user_idx], self.profiles.indptr[user_idx + 1]
        if start == end:
            return None, None
        profile = self.item_item.active_scores(
            self.profiles.indices[start:end], self.profiles.data[start:end]
        )
        recent = self.recent[user_idx] if self.recent is not None else np.empty(0, np.int32)
        recent = recent[recent >= 0]
        ones = np.ones(len(recent), dtype=np.float32)
        return profile, self.item_item.active_scores(recent, ones)

    def source_lists(self, user_idx: int, k: int, blocked: np.ndarray) -> SourceLists:
        """Up to k items from each source that applies, none of them in `blocked`.

        ANN for warm users, item-item for users with a profile, popularity for everyone.
        """
        lists: dict[str, np.ndarray] = {}
        mask = np.zeros(len(self.items), dtype=bool)
        mask[blocked] = True
        if not self.is_cold(user_idx):
            with tracer.start_as_current_span("ann_search") as span:
                found, _ = self._ann(self.user_factors[user_idx], k + len(blocked))
                lists[SOURCE_ANN] = found[~mask[found]][:k]
                set_attributes(span, requested=k, searched=len(found), found=len(lists[SOURCE_ANN]))
        with tracer.start_as_current_span("item_item_candidates") as span:
            item_scores, recent_scores = self.item_item_scores(user_idx)
            if item_scores is not None:
                lists[SOURCE_ITEM] = item_scores.top(mask, k)
            set_attributes(span, found=len(lists.get(SOURCE_ITEM, ())))
        with tracer.start_as_current_span("popular_candidates") as span:
            lists[SOURCE_POPULAR] = self.popular_idx[~mask[self.popular_idx]][:k]
            set_attributes(
                span,
                requested=k,
                found=len(lists[SOURCE_POPULAR]),
                cold_user=self.is_cold(user_idx),
            )
        return SourceLists(lists, item_scores, recent_scores)

    def signals(self, user_idx: int, item_idx: np.ndarray, found: SourceLists, k: int):
        """Every source's score and rank of each candidate (`SIGNAL_NAMES` columns); a rank
        of k means the source did not propose it, a score of 0 that it has no view."""
        n = len(item_idx)
        zeros = np.zeros(n, dtype=np.float32)
        ann_score = (
            self.item_factors[item_idx] @ self.user_factors[user_idx] if user_idx >= 0 else zeros
        )
        columns = {
            "ann_score": ann_score,
            "ann_rank": _ranks_in(self._positions, item_idx, found.lists.get(SOURCE_ANN), k),
            "item_score": zeros if found.item_scores is None else found.item_scores.at(item_idx),
            "item_rank": _ranks_in(self._positions, item_idx, found.lists.get(SOURCE_ITEM), k),
            "recent_item_score": zeros
            if found.recent_scores is None
            else found.recent_scores.at(item_idx),
            "popular_score": self._popularity_scaled[item_idx],
            "popular_rank": _ranks_in(
                self._positions, item_idx, found.lists.get(SOURCE_POPULAR), k
            ),
        }
        return np.column_stack([columns[name] for name in SIGNAL_NAMES]).astype(np.float32)

    def blocked_items(
        self, user_idx: int, exclude: np.ndarray | None, exclude_seen: bool
    ) -> np.ndarray:
        blocked = np.empty(0, dtype=np.int64) if exclude is None else np.asarray(exclude, np.int64)
        if exclude_seen:
            blocked = np.concatenate([blocked, self.seen_items(user_idx)])
        return blocked

    def fuse(self, user_idx: int, found: SourceLists, k: int) -> Candidates:
        """The merged k candidates of a user's source lists, with provenance and signals."""
        item_idx, scores, provenance = merge_lists(
            found.lists,
            self.config.shares,
            self.config.fusion_weights,
            k,
            self.config.rrf_k,
            self._positions,
        )
        return Candidates(item_idx, scores, provenance, self.signals(user_idx, item_idx, found, k))

    def retrieve_indices(
        self,
        user_idx: int,
        k: int,
        exclude: np.ndarray | None = None,
        exclude_seen: bool = True,
    ) -> Candidates:
        """Up to k candidates: every applicable source's list, fused by reciprocal rank.

        Cold or unknown users (index -1) get popular items only (and item-item ones when they
        have a little history).
        """
        blocked = self.blocked_items(user_idx, exclude, exclude_seen)
        return self.fuse(user_idx, self.source_lists(user_idx, k, blocked), k)

    def retrieve_columns(
        self,
        user_id: str,
        k: int,
        exclude_items: list[str] | tuple[str, ...] = (),
        exclude_seen: bool = True,
    ) -> dict[str, list]:
        """Served candidates for a user id (unknown users allowed), as columns.

        `item_ids`, `scores`, `sources`, `categories` and one column per `SIGNAL_NAMES`: one
        list entry per candidate, in retrieval order. This is what crosses the gateway-retrieval
        hop and what `Ranker.score_columns` reads; a column added here travels to the ranker.
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
        """Candidates as the columns `item_ids`, `scores`, `sources`, `categories` and the
        `SIGNAL_NAMES`."""
        columns = {
            "item_ids": self.items.ids[found.item_idx].tolist(),
            "scores": found.scores.tolist(),
            "sources": [str(source) for source in found.sources],
            "categories": self.category_of(found.item_idx),
        }
        for position, name in enumerate(SIGNAL_NAMES):
            columns[name] = found.signals[:, position].tolist()
        return columns

    def popular_list(self, k: int) -> list[dict]:
        """The first k popular items, for callers that must answer without this model."""
        top = self.popular_idx[:k]
        found = Candidates(
            top,
            self.popular_scores[:k],
            np.full(len(top), SOURCE_POPULAR, dtype=object),
            np.zeros((len(top), len(SIGNAL_NAMES)), dtype=np.float32),
        )
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
        np.save(directory / "popularity.npy", self.popularity)
        if self.item_categories is not None:
            np.save(directory / "item_categories.npy", self.item_categories.astype(str))
        if self.item_item is not None and self.profiles is not None:
            self.item_item.save(directory / "item_item.npz")
            sp.save_npz(directory / "profiles.npz", self.profiles)
            np.save(directory / "recent.npy", self.recent)
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
        unknown = set(meta["config"]) - {f.name for f in fields(RetrievalConfig)}
        if unknown:
            raise ValueError(
                "the retrieval model was saved by another version of recsys (settings this "
                f"code does not know: {', '.join(sorted(unknown))}): retrain, or deploy the "
                "code it was trained with"
            )

        def optional(name: str, read):
            return read(directory / name) if (directory / name).exists() else None

        model = cls(
            users=Vocabulary.load(directory / "users.npy"),
            items=Vocabulary.load(directory / "items.npy"),
            user_factors=np.load(directory / "user_factors.npy"),
            item_factors=np.load(directory / "item_factors.npy"),
            seen=sp.load_npz(directory / "seen.npz").tocsr(),
            popular_idx=np.load(directory / "popular_idx.npy"),
            popular_scores=np.load(directory / "popular_scores.npy"),
            item_categories=optional(
                "item_categories.npy", lambda path: np.load(path).astype(object)
            ),
            config=RetrievalConfig(**meta["config"]),
            index_config=IndexConfig(**meta["index_config"]),
            stats=meta["stats"],
            popularity=optional("popularity.npy", np.load),
            item_item=optional("item_item.npz", ItemItemModel.load),
            profiles=optional("profiles.npz", lambda path: sp.load_npz(path).tocsr()),
            recent=optional("recent.npy", np.load),
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
    item_item: ItemItemConfig | None = None,
    fitted: tuple[np.ndarray, np.ndarray, ItemItemModel] | None = None,
) -> RetrievalModel:
    """Fit embeddings and the item-item source on `history`, rank popularity at `as_of`,
    build the ScaNN indexes.

    `fitted` (user factors, item factors, item-item model) are models already fitted on this
    very history with these settings (the tuning search's): used instead of refitting.
    """
    item_item = item_item or ItemItemConfig()
    users = Vocabulary.from_values(history[schema.USER_ID])
    matrix = interaction_matrix(history, users, items)
    start = time.perf_counter()
    if fitted is None:
        user_factors, item_factors = train_embeddings(matrix, embedding)
        neighbours = fit_item_item(matrix, item_item)
    else:
        user_factors, item_factors, neighbours = fitted
        if user_factors.shape[0] != len(users) or neighbours.n_items != len(items):
            raise ValueError("fitted models do not match this history")
    popularity = popularity_scores(history, items, as_of, config.popularity).astype(np.float32)
    popular_idx, popular_scores = popular_ranking(popularity, config.popular_list_size)
    item_item_stats = {
        "item_item": neighbours.method,
        "item_item_active_items": len(neighbours.active),
        "item_item_stored_weights": neighbours.stored_values,
        "fit_seconds": round(time.perf_counter() - start, 3),
        "fit_reused_from_tuning": fitted is not None,
    }
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
        stats=item_item_stats,
        popularity=popularity,
        item_item=neighbours,
        profiles=user_profiles(history, users, items, as_of, item_item.profile_half_life_days),
        recent=recent_items(history, users, items, item_item.recent_items),
    )
    model.build_indexes(seed=embedding.seed)
    return model
