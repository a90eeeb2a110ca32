import pandas as pd
import pytest

from recsys.errors import DataError
from recsys.model.data import schema
from recsys.model.data.split import chronological_split, random_split


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
