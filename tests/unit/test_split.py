import pandas as pd
import pytest

from recsys.data import schema
from recsys.data.split import chronological_split, random_split
from recsys.errors import DataError


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
