import numpy as np
import pandas as pd
import pytest

from recsys.model.data import schema
from recsys.model.features import FEATURE_NAMES, build_feature_tables
from recsys.model.ranking import Ranker
from recsys.model.sources import SIGNAL_NAMES
from recsys.model.vocab import Vocabulary


def _vocabs(events, catalog):
    return (
        Vocabulary.from_values(events[schema.USER_ID]),
        Vocabulary(catalog[schema.ITEM_ID].to_numpy()),
        Vocabulary.from_values(catalog[schema.CATEGORY]),
    )


def test_history_after_cutoff_is_refused(tiny_data):
    events, catalog = tiny_data.interactions, tiny_data.catalog
    users, items, cats = _vocabs(events, catalog)
    cutoff = events[schema.TIMESTAMP].iloc[len(events) // 2]
    with pytest.raises(ValueError, match="leakage"):
        build_feature_tables(events, catalog, users, items, cats, cutoff)


def test_tables_reflect_only_the_past(tiny_data):
    events, catalog = tiny_data.interactions, tiny_data.catalog
    cutoff = events[schema.TIMESTAMP].iloc[len(events) // 2]
    past = events[events[schema.TIMESTAMP] < cutoff]
    users, items, cats = _vocabs(past, catalog)
    tables = build_feature_tables(past, catalog, users, items, cats, cutoff)
    counts = past[schema.ITEM_ID].value_counts()
    top = counts.index[0]
    # Counts are relative to the mean item's, so tables of shorter and longer histories agree.
    mean_count = counts.sum() / len(items)
    assert tables.item_log_pop_all[items.index_of(top)] == pytest.approx(
        np.log1p(counts.iloc[0] / mean_count)
    )
    last_week = past[past[schema.TIMESTAMP] >= cutoff - pd.Timedelta(days=7)]
    week = (last_week[schema.ITEM_ID] == top).sum()
    week_mean = last_week[schema.ITEM_ID].isin(items.ids).sum() / len(items)
    assert tables.item_log_pop_7d[items.index_of(top)] == pytest.approx(np.log1p(week / week_mean))
    shares = tables.user_category_share
    active = shares.sum(axis=1) > 0
    assert np.allclose(shares[active].sum(axis=1), 1.0)


def test_serving_features_equal_training_features(tiny_result, tmp_path):
    """The Ranking service path (ids in, loaded artifact) equals the training path (indices)."""
    from recsys.model.ranking import candidate_features

    retrieval, ranker = tiny_result.retrieval, tiny_result.ranker
    ranker.save(tmp_path / "ranker")
    served = Ranker.load(tmp_path / "ranker")
    warm_user = next(u for u in range(len(retrieval.users)) if not retrieval.is_cold(u))
    for user_idx in (warm_user, -1):
        user_id = retrieval.users.ids[user_idx] if user_idx >= 0 else "never-seen-user"
        candidates = retrieval.retrieve_indices(user_idx, 50)
        training = candidate_features(ranker.tables, user_idx, candidates)
        columns = retrieval.columns(candidates)
        serving, known = served.features_for(user_id, columns)
        assert known.all()
        np.testing.assert_array_equal(serving, training)
        assert training.shape == (len(candidates), len(FEATURE_NAMES))
        np.testing.assert_allclose(
            served.score_columns(user_id, columns), ranker.predict(training), rtol=1e-6
        )


def test_missing_signal_columns_are_missing_features(tiny_result):
    """A caller that sends no source signals gets NaN features, not an error or zeros."""
    retrieval, ranker = tiny_result.retrieval, tiny_result.ranker
    columns = retrieval.retrieve_columns(str(retrieval.users.ids[0]), 20)
    bare = {name: columns[name] for name in ("item_ids", "scores", "sources", "categories")}
    features, known = ranker.features_for(str(retrieval.users.ids[0]), bare)
    assert known.all()
    signal_columns = [FEATURE_NAMES.index(name) for name in SIGNAL_NAMES]
    assert np.isnan(features[:, signal_columns]).all()
    assert np.isfinite(ranker.score_columns(str(retrieval.users.ids[0]), bare)).all()


def test_served_rows_equal_the_training_assembly_with_unknown_items_and_missing_signals(
    tiny_result,
):
    """`features_for` fills one matrix in place; its rows equal `candidate_features` (the
    training path) of the known candidates bit for bit, ranks counting unknown ones."""
    from recsys.model.features import ITEM_FEATURES, SIGNAL_FEATURES
    from recsys.model.ranking import candidate_features

    retrieval, ranker = tiny_result.retrieval, tiny_result.ranker
    assert FEATURE_NAMES[SIGNAL_FEATURES] == SIGNAL_NAMES
    assert FEATURE_NAMES[ITEM_FEATURES][0] == "item_log_pop_7d"
    assert FEATURE_NAMES[-4:] == (
        "user_log_activity",
        "user_days_since_last",
        "user_category_share",
        "user_category_share_14d",
    )
    warm_user = next(u for u in range(len(retrieval.users)) if not retrieval.is_cold(u))
    for user_idx in (warm_user, -1):
        user_id = retrieval.users.ids[user_idx] if user_idx >= 0 else "never-seen-user"
        candidates = retrieval.retrieve_indices(user_idx, 40)
        columns = retrieval.columns(candidates)
        columns["item_ids"] = list(columns["item_ids"])
        columns["item_ids"][1] = columns["item_ids"][7] = "not-in-the-catalog"
        columns["item_score"] = None
        columns.pop("popular_rank")
        known = np.ones(len(candidates), dtype=bool)
        known[[1, 7]] = False
        signals = candidates.signals.copy()
        signals[:, [SIGNAL_NAMES.index("item_score"), SIGNAL_NAMES.index("popular_rank")]] = np.nan
        reference = candidate_features(
            ranker.tables,
            ranker.users.index_of(user_id),
            type(candidates)(
                candidates.item_idx[known],
                candidates.scores[known],
                candidates.sources[known],
                signals[known],
            ),
        )
        reference[:, FEATURE_NAMES.index("retrieval_rank")] = np.flatnonzero(known)
        served, served_known = ranker.features_for(user_id, columns)
        assert np.array_equal(served_known, known)
        assert served.dtype == np.float32 and served.shape == reference.shape
        assert np.array_equal(served, reference, equal_nan=True)
    empty = {name: [] for name in ("item_ids", "scores", "sources", "categories")}
    features, known = ranker.features_for("never-seen-user", empty)
    assert features.shape == (0, len(FEATURE_NAMES)) and not len(known)
