import numpy as np

from recsys.model.ranking import Ranker


def test_ranker_round_trip_and_unknown_items(tiny_result, tmp_path):
    ranker, retrieval = tiny_result.ranker, tiny_result.retrieval
    ranker.save(tmp_path / "r")
    loaded = Ranker.load(tmp_path / "r")
    ids = retrieval.items.ids[retrieval.popular_idx[:20]].tolist()
    scores = [0.1] * 20
    expected = ranker.score("u1", ids, scores, [True] * 20)
    np.testing.assert_allclose(loaded.score("u1", ids, scores, [True] * 20), expected, rtol=1e-6)
    mixed = loaded.score("u1", [*ids[:3], "unknown-item"], scores[:4], [True] * 4)
    assert np.isneginf(mixed[3]) and np.isfinite(mixed[:3]).all()


def test_ranker_uses_early_stopping(tiny_result):
    info = tiny_result.ranker.info
    assert 0 <= info["best_iteration"] < tiny_result.config.ranker.n_estimators
    assert info["training_queries"] > 0 and info["valid_ndcg_at_10"] > 0
    # Boosting from zero and from the best source order compete on the early-stopping users.
    trials = info["prior_trials"]
    assert "none" in trials and len(trials) == 2
    assert info["prior"] == max(trials, key=lambda name: trials[name])
    assert info["valid_ndcg_at_10"] == trials[info["prior"]]


def test_selection_users_are_split_off_with_all_their_lists():
    from recsys.model.ranking import RankingExamples

    users = np.array(["a", "b", "c", "d", "e", "a", "b", "c", "d", "e"], dtype=object)
    query = np.repeat(np.arange(10), 3)
    examples = RankingExamples(
        np.arange(30, dtype=np.float32).reshape(30, 1), np.ones(30), query, users
    )
    rest, selection = examples.split_users(0.4, seed=0)
    chosen = set(users[np.unique(selection.query)])
    assert len(chosen) == 2 and chosen.isdisjoint(users[np.unique(rest.query)])
    assert len(selection.query) == 12 and len(rest.query) + len(selection.query) == 30
    again = examples.split_users(0.4, seed=0)[1]
    assert np.array_equal(again.query, selection.query)


def test_label_folds_grow_only_where_one_window_holds_few_users():
    from recsys.model.ranking import RankerConfig

    auto = RankerConfig()
    assert auto.folds_for(100) == 5 and auto.folds_for(610) == 5
    assert auto.folds_for(12_000) == 1
    assert RankerConfig(label_folds=3).folds_for(100) == 3
    assert RankerConfig(max_training_users=1000).folds_for(12_000) == 5
