"""Load shapes, the traffic mix and the response checks, without Locust."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from loadtests import load_shapes, request_mix
from loadtests.load_shapes import Target, users_at


def schedule(shape: str, users: int = 50, run_time: float = 100.0) -> list[Target | None]:
    return [users_at(shape, t, users, 5.0, run_time) for t in range(0, 101)]


@pytest.mark.parametrize("shape", ["constant", "soak"])
def test_constant_shapes_hold_the_users_until_the_end(shape):
    targets = schedule(shape)
    assert set(targets[:100]) == {Target(50, 5.0)}
    assert targets[100] is None


def test_step_shape_climbs_in_equal_steps_to_the_peak():
    targets = schedule("step")
    assert [targets[t].users for t in (0, 19, 20, 40, 60, 80, 99)] == [10, 10, 20, 30, 40, 50, 50]
    assert targets[100] is None
    odd = [users_at("step", t, 7, 1.0, 30.0, steps=3).users for t in (0, 10, 20)]
    assert odd == [3, 5, 7]  # rounded up, never zero


def test_spike_shape_jumps_from_baseline_to_peak_and_back():
    targets = schedule("spike")
    assert targets[0].users == targets[39].users == 10  # a fifth of the peak
    assert targets[40].users == targets[59].users == 50
    assert targets[60].users == 10 and targets[100] is None
    assert targets[40].spawn_rate >= 50  # all spike users within a second


def test_shape_arguments_are_checked():
    with pytest.raises(ValueError, match="unknown shape"):
        users_at("ramp", 0, 1, 1, 1)
    with pytest.raises(ValueError, match="positive"):
        users_at("constant", 0, 0, 1, 1)


def test_default_run_times_exist_for_every_shape():
    assert set(load_shapes.DEFAULT_RUN_TIME_S) == set(load_shapes.SHAPES)


def test_mix_shares_and_planned_load():
    shares = request_mix.endpoint_shares()
    assert set(shares) == set(request_mix.ENDPOINT_PATHS)
    assert sum(shares.values()) == pytest.approx(1.0)
    assert shares["recommend"] > shares["similar_items"] > shares["recommend_batch"] > 0
    planned = request_mix.planned_rps(users=10, user_rate=4.0)
    assert sum(planned.values()) == pytest.approx(40.0)
    assert request_mix.planned_rps(users=10, user_rate=0) is None


def test_power_law_users_concentrate_activity():
    ids = [f"u{i}" for i in range(1000)]
    users = request_mix.PowerLawUsers(ids)
    rng = random.Random(1)
    counts = Counter(users.pick(rng) for _ in range(20_000))
    top_ten = sum(n for _, n in counts.most_common(10))
    assert top_ten / 20_000 > 0.3  # Zipf(1) over 1000 ids: ~39 % from the ten most active
    assert len(counts) > 500  # yet the long tail is visited
    assert set(counts) <= set(ids)
    assert counts.most_common(1)[0][0] != "u0"  # shuffled: activity is not the file order


def test_user_ids_file_and_default(tmp_path):
    assert request_mix.read_user_ids(None)[:2] == ["u0", "u1"]
    assert len(request_mix.read_user_ids("")) == request_mix.DEFAULT_USER_COUNT
    path = tmp_path / "users.txt"
    path.write_text("a\n\nb\n")
    assert request_mix.read_user_ids(path) == ["a", "b"]
    path.write_text("\n")
    with pytest.raises(ValueError, match="no user id"):
        request_mix.read_user_ids(path)


def test_cold_user_ids_are_valid_and_new():
    rng = random.Random(3)
    ids = {request_mix.cold_user_id(rng) for _ in range(100)}
    assert len(ids) == 100 and all(i.startswith("cold-") and i.isascii() for i in ids)


def item(item_id: str, score=0.5, category="c1") -> dict:
    return {"item_id": item_id, "score": score, "category": category}


def answer(user_id="u1", items=None, **overrides) -> dict:
    body = {
        "user_id": user_id,
        "items": items if items is not None else [item("i1"), item("i2"), item("i3")],
        "model_versions": {"retrieval": "r:1", "ranking": "k:1"},
        "degraded": False,
        "degraded_reasons": [],
        "track": "stable",
    }
    return {**body, **overrides}


def test_a_valid_recommendation_has_no_problem():
    assert request_mix.recommendation_problems(answer(), "u1", 3) == []
    assert request_mix.recommendation_problems(answer(), "u1", 3, excluded=["i9"]) == []


@pytest.mark.parametrize(
    ("bad", "k", "excluded", "problem"),
    [
        (answer(items=[item("i1"), item("i2")]), 3, (), "2 items instead of k=3"),
        (answer(items=[item("i1"), item("i1"), item("i2")]), 3, (), "duplicate items ['i1']"),
        (answer(), 3, ("i2",), "excluded items returned ['i2']"),
        (answer(user_id="u2"), 3, (), "user_id 'u2' instead of 'u1'"),
        (answer(items=[item("i1"), item("i2"), item("i3", score=None)]), 3, (), "score"),
        (answer(items=[item("i1"), item("i2"), item("i3", score=True)]), 3, (), "score"),
        (answer(items=[item("i1"), item("i2"), {"score": 1, "category": ""}]), 3, (), "item_id"),
        (answer(items=[item("i1"), item("i2"), item("i3", category=None)]), 3, (), "category"),
        (answer(items="i1,i2,i3"), 3, (), "not a list"),
        (answer(model_versions={}), 3, (), "model_versions"),
        (answer(degraded="no"), 3, (), "degraded"),
        (answer(track=None), 3, (), "track"),
        ([], 3, (), "not a JSON object"),
    ],
)
def test_invalid_recommendations_are_named(bad, k, excluded, problem):
    problems = request_mix.recommendation_problems(bad, "u1", k, excluded)
    assert any(problem in p for p in problems), problems


def test_batch_checks_every_result_in_order():
    good = {"results": [answer("a"), answer("b")]}
    assert request_mix.batch_problems(good, ["a", "b"], 3) == []
    assert request_mix.batch_problems(good, ["b", "a"], 3)[0].startswith("results[0]: user_id")
    assert (
        "1 results for 2 users"
        in request_mix.batch_problems({"results": [answer("a")]}, ["a", "b"], 3)[0]
    )
    assert request_mix.batch_problems({"oops": 1}, ["a"], 3) == ["answer has no results list"]
    leaked = {"results": [answer("a"), answer("b")]}
    assert "excluded" in request_mix.batch_problems(leaked, ["a", "b"], 3, excluded=["i3"])[0]


def test_similar_items_checks_source_and_self_exclusion():
    similar = {**answer(), "item_id": "i9", "source": "ann"}
    similar.pop("user_id")
    assert request_mix.similar_items_problems(similar, "i9", 3) == []
    assert request_mix.similar_items_problems({**similar, "source": "x"}, "i9", 3)
    itself = {**similar, "items": [item("i9"), item("i2"), item("i3")]}
    assert "excluded items returned ['i9']" in request_mix.similar_items_problems(itself, "i9", 3)


def test_degraded_answers_are_counted_per_user_in_batches():
    assert request_mix.degraded_count("recommend", answer(degraded=True)) == 1
    batch = {"results": [answer(degraded=True), answer(), answer(degraded=True)]}
    assert request_mix.degraded_count("recommend_batch", batch) == 2
