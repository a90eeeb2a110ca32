"""Valid calls of each service's main API, for tests that probe them (auth, fuzzing)."""

from __future__ import annotations

ONE_CANDIDATE = {"item_ids": ["i1"], "scores": [0.0], "sources": ["ann"], "categories": [""]}

# service -> (path, a small valid body)
VALID_CALLS = {
    "Recommender": ("/recommend", {"user_id": "u1", "k": 3}),
    "Retrieval": ("/retrieve", {"user_id": "u1", "k": 3}),
    "Ranking": ("/rank", {"user_id": "u1", "candidates": ONE_CANDIDATE}),
}
