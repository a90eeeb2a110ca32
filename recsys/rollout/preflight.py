"""`recsys rollout preflight`: offline check of a candidate model before it gets any traffic.

Both model pairs (retrieval + ranking) are evaluated on the same data set's latest held-out
window, split exactly as the stable ranking model was trained (its stored config), with the
same code `recsys evaluate` uses. The candidate is refused when its two-stage NDCG@10 is below
`stable x (1 - tolerance)`.

A ranking model records the retrieval model it was trained with (`retrieval_tag` label), so a
pair can be named by its ranking tag alone.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from recsys.rollout.errors import RolloutError

METRIC = "ndcg@10"


@dataclass
class PairScore:
    """Offline score of one retrieval + ranking pair on the preflight window."""

    retrieval_tag: str
    ranking_tag: str
    ndcg: float
    users: int
    trained_ndcg: float | None = None
    data_hash: str = ""


@dataclass
class PreflightResult:
    """The comparison and its verdict."""

    stable: PairScore
    candidate: PairScore
    tolerance: float
    min_allowed: float
    passed: bool
    reason: str
    window: dict[str, Any] = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        return 0 if self.passed else 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "metric": METRIC,
            "passed": self.passed,
            "reason": self.reason,
            "tolerance": self.tolerance,
            "min_allowed": self.min_allowed,
            "stable": asdict(self.stable),
            "candidate": asdict(self.candidate),
            "window": self.window,
        }


def compare_ndcg(stable: float, candidate: float, tolerance: float) -> tuple[bool, float, str]:
    """Candidate may be at most `tolerance` (relative) below stable.

    Args:
        stable: NDCG@10 of the stable pair.
        candidate: NDCG@10 of the candidate pair.
        tolerance: allowed relative drop, 0..1 (0.02 = 2%).

    Returns:
        (passed, lowest allowed candidate NDCG@10, one-line reason).
    """
    if not 0 <= tolerance < 1:
        raise RolloutError(f"--tolerance must be within 0..1 (relative drop), got {tolerance}")
    floor = stable * (1.0 - tolerance)
    change = (candidate - stable) / stable if stable > 0 else 0.0
    if candidate + 1e-12 >= floor:
        return (
            True,
            floor,
            (
                f"candidate {METRIC} {candidate:.4f} vs stable {stable:.4f} ({change:+.1%}); "
                f"allowed down to {floor:.4f} (tolerance {tolerance:.1%})"
            ),
        )
    return (
        False,
        floor,
        (
            f"candidate {METRIC} {candidate:.4f} is {-change:.1%} below stable {stable:.4f}, "
            f"beyond the {tolerance:.1%} tolerance (needs >= {floor:.4f})"
        ),
    )


def linked_retrieval(ranking_tag: str) -> str:
    """The retrieval model a ranking model was trained with (its `retrieval_tag` label)."""
    import bentoml

    from recsys.model.artifacts import RANKING_MODEL, resolve_tag

    full = resolve_tag(ranking_tag, RANKING_MODEL)
    linked = bentoml.models.get(full).info.labels.get("retrieval_tag")
    if not linked:
        raise RolloutError(
            f"ranking model {full} does not name its retrieval model: pass the "
            "retrieval tag explicitly"
        )
    return linked


def _score(
    retrieval_tag: str, ranking_tag: str, test_window, max_users: int, num_candidates: int | None
) -> PairScore:
    import bentoml

    from recsys.model.artifacts import load_ranker, load_retrieval
    from recsys.model.evaluate import evaluate_models, held_out_relevance

    retrieval, full_retrieval = load_retrieval(retrieval_tag)
    ranker, full_ranking = load_ranker(ranking_tag)
    evaluation = held_out_relevance(test_window, retrieval, max_users=max_users)
    if not evaluation.user_ids:
        raise RolloutError(f"no user of the preflight window is known to {full_retrieval}")
    candidates = num_candidates or retrieval.config.num_candidates
    metrics = evaluate_models(retrieval, ranker, evaluation, (10,), candidates)
    meta = bentoml.models.get(full_ranking).info.metadata
    saved = meta.get("metrics", {})
    # The served pipeline's figure; a model saved before the served order existed: its ranker's.
    trained = (saved.get("served") or saved.get("two_stage") or {}).get(METRIC)
    return PairScore(
        retrieval_tag=full_retrieval,
        ranking_tag=full_ranking,
        ndcg=float(metrics["models"]["served"][METRIC]),
        users=int(metrics["users"]),
        trained_ndcg=float(trained) if trained is not None else None,
        data_hash=str(meta.get("data_hash", "")),
    )


def run_preflight(
    data: Path,
    stable_ranking: str,
    candidate_ranking: str,
    *,
    stable_retrieval: str | None = None,
    candidate_retrieval: str | None = None,
    tolerance: float = 0.02,
    movielens: bool = False,
) -> PreflightResult:
    """Evaluate stable and candidate pairs on `data`'s latest window and compare NDCG@10.

    Args:
        data: data set directory (as for `recsys evaluate`).
        stable_ranking, candidate_ranking: ranking model tags.
        stable_retrieval, candidate_retrieval: retrieval tags; default the ranking model's own.
        tolerance: allowed relative NDCG@10 drop.
        movielens: read MovieLens files.

    Returns:
        The result; `passed` False means refuse the rollout.
    """
    import bentoml

    from recsys.model.artifacts import RANKING_MODEL, resolve_tag
    from recsys.model.data.loaders import load_dataset, load_movielens
    from recsys.model.data.validate import validate_dataset
    from recsys.model.pipeline import TrainConfig, make_split

    compare_ndcg(1.0, 1.0, tolerance)  # validates the tolerance before the slow part
    stable_full = resolve_tag(stable_ranking, RANKING_MODEL)
    saved = bentoml.models.get(stable_full).info.metadata.get("config", {})
    config = TrainConfig.split_of(saved)
    interactions, catalog = load_movielens(data) if movielens else load_dataset(data)
    clean = validate_dataset(interactions, catalog, saved.get("max_reject_ratio", 0.05))
    split = make_split(clean.interactions, config)
    max_users = int(saved.get("max_eval_users", config.max_eval_users))
    stable = _score(
        stable_retrieval or linked_retrieval(stable_full), stable_full, split.test, max_users, None
    )
    candidate = _score(
        candidate_retrieval or linked_retrieval(candidate_ranking),
        candidate_ranking,
        split.test,
        max_users,
        None,
    )
    passed, floor, reason = compare_ndcg(stable.ndcg, candidate.ndcg, tolerance)
    window = {
        "split": config.split,
        "test_start": str(split.test_start),
        "test_events": len(split.test),
        "data": str(data),
    }
    return PreflightResult(stable, candidate, tolerance, floor, passed, reason, window)
