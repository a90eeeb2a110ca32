import pandas as pd
import pytest

from recsys.errors import DataError
from recsys.model.data import schema
from recsys.model.data.split import chronological_split, label_folds, random_split, temporal_split


def test_chronological_windows_are_ordered_and_disjoint(tiny_data):
    split = chronological_split(tiny_data.interactions, validation_days=10, test_days=10)
    ts = schema.TIMESTAMP
    assert split.train[ts].max() < split.validation_start <= split.validation[ts].min()
    assert split.validation[ts].max() < split.test_start <= split.test[ts].min()
    assert len(split.train) + len(split.validation) + len(split.test) == len(tiny_data.interactions)
    assert split.test_start - split.validation_start == pd.Timedelta(days=10)


def test_chronological_rejects_too_short_logs(tiny_data):
    with pytest.raises(DataError, match="too short"):
        chronological_split(tiny_data.interactions, validation_days=40, test_days=40)


def test_random_holdout_per_user(tiny_data):
    split = random_split(tiny_data.interactions, ratio=0.75, seed=1)
    events = tiny_data.interactions
    assert len(split.train) + len(split.validation) + len(split.test) == len(events)
    per_user = events.groupby(schema.USER_ID).size()
    held = split.test.groupby(schema.USER_ID).size().reindex(per_user.index, fill_value=0)
    big = per_user >= 20
    share = held[big] / per_user[big]
    assert share.between(0.15, 0.3).all()
    # every user keeps at least one event in history
    history_users = set(split.history_before_test[schema.USER_ID])
    assert history_users == set(events[schema.USER_ID])


def test_random_split_is_seeded(tiny_data):
    a = random_split(tiny_data.interactions, seed=3).test
    b = random_split(tiny_data.interactions, seed=3).test
    c = random_split(tiny_data.interactions, seed=4).test
    assert a.equals(b) and not a.equals(c)


@pytest.mark.parametrize("ratio", [0, 1, 1.5])
def test_random_split_bad_ratio(tiny_data, ratio):
    with pytest.raises(DataError, match="ratio"):
        random_split(tiny_data.interactions, ratio=ratio)


def _row_keys(frame: pd.DataFrame) -> set[tuple]:
    columns = [schema.USER_ID, schema.ITEM_ID, schema.TIMESTAMP]
    return set(map(tuple, frame[columns].astype(str).to_numpy().tolist()))


def test_random_label_folds_cross_fit_the_history_before_test(tiny_data):
    from recsys.model.data.split import label_folds

    split = random_split(tiny_data.interactions, seed=1)
    assert [fold.own for fold in label_folds(split, 1)] == [True]
    folds = label_folds(split, 5, seed=0)
    history = split.history_before_test
    assert len(folds) == 5 and not any(fold.own for fold in folds)
    assert sum(len(fold.labels) for fold in folds) == len(history)
    for fold in folds:
        assert len(fold.train) + len(fold.labels) == len(history)
        assert _row_keys(fold.labels).isdisjoint(_row_keys(split.test))
    # Each user's events spread over the folds: a heavy user is labelled in every fold.
    heavy = history[schema.USER_ID].value_counts().index[0]
    assert all((fold.labels[schema.USER_ID] == heavy).any() for fold in folds)
    again = label_folds(split, 5, seed=0)
    assert all(a.labels.equals(b.labels) for a, b in zip(folds, again, strict=True))


def test_chronological_label_folds_move_back_in_time_and_never_reach_test(tiny_data):
    from recsys.model.data.split import label_folds

    split = chronological_split(tiny_data.interactions, validation_days=5, test_days=5)
    folds = label_folds(split, 3)
    assert folds[0].own and len(folds) == 3
    ts = schema.TIMESTAMP
    for earlier, later in zip(folds[1:], folds[:-1], strict=True):
        assert earlier.cutoff < later.cutoff
        assert earlier.labels[ts].max() < later.labels[ts].min()
    for fold in folds:
        assert fold.train[ts].max() < fold.cutoff <= fold.labels[ts].min()
        assert fold.labels[ts].max() < split.test_start


def _events(counts: dict[str, int], ties: bool = False) -> pd.DataFrame:
    """Each user's events one day apart (all at one instant with `ties`), item ids in time order."""
    rows = [
        (user, f"{user}-{n}", pd.Timestamp("2024-01-01") + pd.Timedelta(days=0 if ties else n))
        for user, count in counts.items()
        for n in range(count)
    ]
    frame = pd.DataFrame(rows, columns=[schema.USER_ID, schema.ITEM_ID, schema.TIMESTAMP])
    frame[schema.EVENT] = "view"
    return frame


def _by_user(frame: pd.DataFrame) -> pd.Series:
    return frame.groupby(schema.USER_ID)[schema.TIMESTAMP]


def test_temporal_holds_out_each_users_latest_events(tiny_data):
    events = tiny_data.interactions.assign(row=range(len(tiny_data.interactions)))
    split = temporal_split(events, holdout=0.2)
    rows = [set(part["row"]) for part in (split.train, split.validation, split.test)]
    assert sum(len(part) for part in rows) == len(events)
    assert len(set().union(*rows)) == len(events)  # disjoint, every event placed
    # per user: train <= validation <= test in time (ties may straddle, never reverse)
    first_test, first_validation = _by_user(split.test).min(), _by_user(split.validation).min()
    last_history = _by_user(split.history_before_test).max()
    last_train = _by_user(split.train).max()
    assert (first_test >= last_history.reindex(first_test.index)).all()
    assert (first_validation >= last_train.reindex(first_validation.index)).all()
    assert split.validation_start == split.train[schema.TIMESTAMP].max() + pd.Timedelta(seconds=1)
    assert split.test_start > split.history_before_test[schema.TIMESTAMP].max()


def test_temporal_share_and_small_users():
    events = _events({"a": 10, "b": 25, "c": 5, "d": 4, "e": 1})
    split = temporal_split(events, holdout=0.2, min_events=5)
    test = split.test.groupby(schema.USER_ID).size().to_dict()
    validation = split.validation.groupby(schema.USER_ID).size().to_dict()
    # floor(20%), at least one: 10 -> 2 then 8 -> 1; 25 -> 5 then 20 -> 4; 5 -> 1 then 4 -> none
    assert test == {"a": 2, "b": 5, "c": 1}
    assert validation == {"a": 1, "b": 4}
    train = split.train.groupby(schema.USER_ID).size().to_dict()
    assert train == {"a": 7, "b": 16, "c": 4, "d": 4, "e": 1}
    assert set(split.test[schema.ITEM_ID]) >= {"a-8", "a-9", "c-4"}


def test_temporal_is_deterministic_and_breaks_ties_by_row_order():
    events = _events({"a": 10}, ties=True)
    first, again = temporal_split(events), temporal_split(events.copy())
    assert first.test.equals(again.test) and first.train.equals(again.train)
    # one instant: the last rows are the latest
    assert list(first.test[schema.ITEM_ID]) == ["a-8", "a-9"]
    assert list(first.validation[schema.ITEM_ID]) == ["a-7"]


@pytest.mark.parametrize("holdout", [0, 1, 1.5])
def test_temporal_split_bad_share(holdout):
    with pytest.raises(DataError, match="holdout"):
        temporal_split(_events({"a": 10}), holdout=holdout)


def test_temporal_label_folds_move_back_in_each_users_history():
    events = _events({"a": 20, "b": 10, "c": 3})
    split = temporal_split(events, holdout=0.2)
    # a: test 4, validation 3, train 13; b: test 2, validation 1, train 7; c: all train (3)
    folds = label_folds(split, count=3)
    assert len(folds) == 3
    assert folds[0].labels.equals(split.validation)
    items = [set(fold.labels[schema.ITEM_ID]) for fold in folds]
    assert items[1] == {"a-10", "a-11", "a-12", "b-6"}
    assert items[2] == {"a-7", "a-8", "a-9", "b-5"}
    for fold in folds[1:]:
        labels, train = fold.labels, fold.train
        assert not set(labels[schema.ITEM_ID]) & set(train[schema.ITEM_ID])
        assert not set(labels[schema.ITEM_ID]) & set(split.test[schema.ITEM_ID])
        # a labelled user's train ends before their labels start
        last_train = _by_user(train).max().reindex(_by_user(labels).min().index)
        assert (last_train <= _by_user(labels).min()).all()
        assert set(train[schema.USER_ID]) == {"a", "b", "c"}
        assert fold.cutoff == train[schema.TIMESTAMP].max() + pd.Timedelta(seconds=1)
    # a user whose window cannot move back further leaves; the folds stop when none is left
    # (a moves 4 times, down to one train event; b, with a window of 1, moves 6 times)
    many = label_folds(split, count=50)
    assert len(many) == 7
    assert set(many[4].labels[schema.USER_ID]) == {"a", "b"}
    assert set(many[-1].labels[schema.ITEM_ID]) == {"b-1"}
    assert len(many[-1].train) == 1 + 13 + 3  # b-0, then a's and c's whole train


def test_temporal_label_folds_on_tiny_data(tiny_data):
    split = temporal_split(tiny_data.interactions)
    folds = label_folds(split, count=3)
    assert len(folds) == 3
    history = split.history_before_test
    for fold in folds:
        assert len(fold.train) + len(fold.labels) <= len(history)
        assert fold.cutoff <= split.test_start
