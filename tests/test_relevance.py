"""Relevance on the shared MovieLens set (read in place, never copied) and `make relevance`'s
command line."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from recsys import REPO_ROOT
from recsys.model.data import schema
from recsys.model.data.loaders import load_movielens
from recsys.model.data.split import random_split
from recsys.model.metrics import evaluate_lists
from recsys.model.retrieval import interaction_matrix
from recsys.model.sources import ItemItemConfig, fit_item_item, top_items
from recsys.model.vocab import Vocabulary

pytestmark = pytest.mark.integration

MOVIELENS = REPO_ROOT.parent / "shared" / "data" / "ml-latest-small"


@pytest.fixture(scope="module")
def movielens() -> Path:
    if not (MOVIELENS / "ratings.csv").exists():
        if os.environ.get("CI", "").lower() not in ("", "0", "false"):
            pytest.fail(f"CI promises the shared MovieLens set at {MOVIELENS}")
        pytest.skip(f"no shared MovieLens set at {MOVIELENS}")
    return MOVIELENS


def test_ease_source_on_movielens_random_holdout(movielens):
    """The item-item source (dense EASE here) as served, on the real data: well above
    all-time popularity and near the independent EASE figure (0.406 at lambda 200)."""
    interactions, catalog = load_movielens(movielens)
    split = random_split(interactions, ratio=0.75, seed=0)
    history = split.history_before_test
    users = Vocabulary.from_values(history[schema.USER_ID])
    items = Vocabulary(catalog[schema.ITEM_ID].to_numpy())
    seen = interaction_matrix(history, users, items)
    model = fit_item_item(seen, ItemItemConfig())
    assert model.method == "ease" and 3000 < len(model.active) <= 6000
    test = interaction_matrix(split.test, users, items)
    popularity = np.bincount(seen.indices, minlength=len(items)).astype(np.float64)
    ease_lists, popular_lists, relevant = [], [], []
    for user in range(len(users)):
        history_items = seen.indices[seen.indptr[user] : seen.indptr[user + 1]]
        wanted = set(test.indices[test.indptr[user] : test.indptr[user + 1]].tolist())
        wanted -= set(history_items.tolist())
        if not wanted:
            continue
        scores = model.scores(history_items, np.ones(len(history_items)))
        ease_lists.append(top_items(scores, history_items, 10))
        popular_lists.append(top_items(popularity, history_items, 10))
        relevant.append(wanted)
    ease = evaluate_lists(ease_lists, relevant, [10], len(items))["ndcg@10"]
    popular = evaluate_lists(popular_lists, relevant, [10], len(items))["ndcg@10"]
    assert len(relevant) == 610
    assert popular > 0.2 and ease > 0.38 and ease > 1.7 * popular, (ease, popular)


def test_relevance_command_refuses_missing_data_in_one_line(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "recsys.ops.relevance", "--movielens", str(tmp_path / "none")],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=120,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"error: relevance: MovieLens data not found at {tmp_path / 'none' / 'ratings.csv'}"
    ]
