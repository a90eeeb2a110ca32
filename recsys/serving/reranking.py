"""After ranking: the category cap and the top-k answer items."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence


def cap_categories(categories: Sequence[str], k: int, cap: int) -> list[int]:
    """Positions of the top k of a ranked list with at most `cap` items per category.

    `categories` is the ranked list's category column. Items over the cap are set aside and
    used, in rank order, only when the list would otherwise be shorter than k: diversity never
    costs the caller items. `cap=0` disables it.
    """
    if cap <= 0:
        return list(range(min(k, len(categories))))
    taken: list[int] = []
    overflow: list[int] = []
    per_category: Counter[str] = Counter()
    for position, category in enumerate(categories):
        if len(taken) == k:
            break
        if category and per_category[category] >= cap:
            overflow.append(position)
            continue
        per_category[category] += 1
        taken.append(position)
    if len(taken) < k:
        taken.extend(overflow[: k - len(taken)])
    return taken


def top_k_items(
    candidates: dict[str, list], order: Sequence[int], scores: Sequence[float], k: int, cap: int
) -> list[dict]:
    """The answer's items: candidates in `order` (with their `scores`), category-capped, top k."""
    item_ids, categories = candidates["item_ids"], candidates["categories"]
    ranked_categories = [categories[position] for position in order]
    return [
        {
            "item_id": item_ids[order[rank]],
            "score": scores[rank],
            "category": ranked_categories[rank],
        }
        for rank in cap_categories(ranked_categories, k, cap)
    ]
