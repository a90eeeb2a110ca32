"""The traffic mix and the response checks of the load test, free of Locust.

Who asks (known users with power-law activity, cold users), what they ask (top-k, the next page
with the first page excluded, the same request again, a batch, similar items) and what a correct
answer looks like. Standard library only (see gate_checks.py for why).
"""

from __future__ import annotations

import bisect
import itertools
import os
import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

# Relative weights of the simulated user's tasks (Locust @task weights) and the endpoint each hits.
# Top-k requests dominate; the shares roughly follow the throughput floors of slo.yaml
# (150 : 20 : 5 req/s for recommend : similar_items : recommend_batch).
TASKS: dict[str, tuple[int, str]] = {
    "known_user": (55, "recommend"),
    "cold_user": (10, "recommend"),
    "repeat_request": (10, "recommend"),
    "next_page": (10, "recommend"),
    "similar_items": (11, "similar_items"),
    "batch": (4, "recommend_batch"),
}
ENDPOINT_PATHS = {
    "recommend": "/recommend",
    "recommend_batch": "/recommend_batch",
    "similar_items": "/similar_items",
}
DEFAULT_USER_COUNT = 20_000  # u0..u19999: the synthetic data's ids when no list is given
USER_EXPONENT = 1.0  # Zipf exponent of user activity: the r-th most active user ~ 1 / r
K_CHOICES = (10, 10, 10, 20)  # most pages show 10 items, some 20
BATCH_SIZES = (2, 4, 6, 8, 10)  # ~9 ms per user here: p95 <= 150 ms holds for small batches


def endpoint_shares() -> dict[str, float]:
    """Share of all requests each endpoint gets under the task weights."""
    total = sum(weight for weight, _ in TASKS.values())
    shares: dict[str, float] = {}
    for weight, endpoint in TASKS.values():
        shares[endpoint] = shares.get(endpoint, 0.0) + weight / total
    return shares


def planned_rps(users: int, user_rate: float) -> dict[str, float] | None:
    """Offered req/s per endpoint of a paced run; None for an unpaced (closed-loop) one."""
    if user_rate <= 0:
        return None
    return {name: users * user_rate * share for name, share in endpoint_shares().items()}


def read_user_ids(path: str | os.PathLike[str] | None) -> list[str]:
    """Known user ids, one per line; u0..u19999 when no file is given (the in-cluster Job).

    Raises:
        ValueError: the file exists but holds no id.
    """
    if not path:
        return [f"u{i}" for i in range(DEFAULT_USER_COUNT)]
    ids = [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]
    if not ids:
        raise ValueError(f"{path}: no user id in the file")
    return ids


class PowerLawUsers:
    """Picks known users with Zipf-like activity: a few users make most of the requests.

    The ids are shuffled with a fixed seed first, so the most active users are not simply the
    first ids of the file.
    """

    def __init__(self, ids: Sequence[str], exponent: float = USER_EXPONENT, seed: int = 7) -> None:
        if not ids:
            raise ValueError("no user ids")
        self.ids = list(ids)
        random.Random(seed).shuffle(self.ids)
        weights = (1.0 / (rank + 1) ** exponent for rank in range(len(self.ids)))
        self.cumulative = list(itertools.accumulate(weights))

    def pick(self, rng: random.Random) -> str:
        point = rng.random() * self.cumulative[-1]
        return self.ids[min(bisect.bisect_right(self.cumulative, point), len(self.ids) - 1)]


def cold_user_id(rng: random.Random) -> str:
    """A user id no model has seen (a new visitor)."""
    return f"cold-{rng.getrandbits(48):012x}"


# --------------------------------------------------------------------------- response checks


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def item_list_problems(items: Any, k: int, excluded: Sequence[str] = ()) -> list[str]:
    """Problems of a list of recommended items: its length, fields, duplicates and exclusions."""
    if not isinstance(items, list):
        return [f"items is {type(items).__name__}, not a list"]
    problems = []
    if len(items) != k:
        problems.append(f"{len(items)} items instead of k={k}")
    ids = []
    for position, item in enumerate(items):
        if not isinstance(item, Mapping):
            problems.append(f"items[{position}] is not an object")
            continue
        if not isinstance(item.get("item_id"), str) or not item.get("item_id"):
            problems.append(f"items[{position}].item_id missing or not a string")
        else:
            ids.append(item["item_id"])
        if not _is_number(item.get("score")):
            problems.append(f"items[{position}].score missing or not a number")
        if not isinstance(item.get("category"), str):
            problems.append(f"items[{position}].category missing or not a string")
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        problems.append(f"duplicate items {duplicates[:3]}")
    leaked = sorted(set(ids) & set(excluded))
    if leaked:
        problems.append(f"excluded items returned {leaked[:3]}")
    return problems


def _common_problems(answer: Mapping[str, Any]) -> list[str]:
    problems = []
    if not isinstance(answer.get("model_versions"), Mapping) or not answer.get("model_versions"):
        problems.append("model_versions missing")
    if not isinstance(answer.get("degraded"), bool):
        problems.append("degraded missing or not a boolean")
    if not isinstance(answer.get("degraded_reasons"), list):
        problems.append("degraded_reasons missing or not a list")
    if not isinstance(answer.get("track"), str):
        problems.append("track missing or not a string")
    return problems


def recommendation_problems(
    answer: Any, user_id: str, k: int, excluded: Sequence[str] = ()
) -> list[str]:
    """Problems of a `/recommend` answer (or one result of a batch); empty when it is valid."""
    if not isinstance(answer, Mapping):
        return ["answer is not a JSON object"]
    problems = []
    if answer.get("user_id") != user_id:
        problems.append(f"user_id {answer.get('user_id')!r} instead of {user_id!r}")
    return (
        problems + item_list_problems(answer.get("items"), k, excluded) + _common_problems(answer)
    )


def batch_problems(
    answer: Any, user_ids: Sequence[str], k: int, excluded: Sequence[str] = ()
) -> list[str]:
    """Problems of a `/recommend_batch` answer: one valid result per user, in order."""
    if not isinstance(answer, Mapping) or not isinstance(answer.get("results"), list):
        return ["answer has no results list"]
    results = answer["results"]
    if len(results) != len(user_ids):
        return [f"{len(results)} results for {len(user_ids)} users"]
    for position, (result, user_id) in enumerate(zip(results, user_ids, strict=True)):
        problems = recommendation_problems(result, user_id, k, excluded)
        if problems:
            return [f"results[{position}]: {p}" for p in problems]
    return []


def similar_items_problems(answer: Any, item_id: str, k: int) -> list[str]:
    """Problems of a `/similar_items` answer; the query item must not be among its neighbours."""
    if not isinstance(answer, Mapping):
        return ["answer is not a JSON object"]
    problems = []
    if answer.get("item_id") != item_id:
        problems.append(f"item_id {answer.get('item_id')!r} instead of {item_id!r}")
    if answer.get("source") not in ("ann", "popular"):
        problems.append(f"source {answer.get('source')!r} is neither 'ann' nor 'popular'")
    problems += item_list_problems(answer.get("items"), k, excluded=(item_id,))
    return problems + _common_problems(answer)


def degraded_count(endpoint: str, answer: Mapping[str, Any]) -> int:
    """How many of the answers in a valid response were served by a fallback."""
    if endpoint == "recommend_batch":
        return sum(1 for result in answer["results"] if result.get("degraded"))
    return int(bool(answer.get("degraded")))
