import numpy as np
import pandas as pd
import pytest

from recsys.data import schema
from recsys.data.synth import SynthConfig, generate
from tests.conftest import TINY_SYNTH


def test_same_seed_gives_same_rows(tiny_data):
    again = generate(TINY_SYNTH)
    pd.testing.assert_frame_equal(tiny_data.interactions, again.interactions)
    pd.testing.assert_frame_equal(tiny_data.catalog, again.catalog)


def test_other_seed_gives_other_rows(tiny_data):
    other = generate(SynthConfig(**{**TINY_SYNTH.__dict__, "seed": 8}))
    assert not tiny_data.interactions[schema.ITEM_ID].equals(other.interactions[schema.ITEM_ID])


def test_sizes_and_schema(tiny_data):
    events, catalog = tiny_data.interactions, tiny_data.catalog
    assert len(events) == TINY_SYNTH.n_events
    assert len(catalog) == TINY_SYNTH.n_items
    assert list(events.columns) == [*schema.INTERACTION_COLUMNS, schema.WEIGHT]
    assert set(events[schema.EVENT]) <= set(schema.EVENT_WEIGHTS)
    assert events[schema.TIMESTAMP].is_monotonic_increasing
    assert set(events[schema.ITEM_ID]) <= set(catalog[schema.ITEM_ID])


def test_no_event_before_its_item_exists(tiny_data):
    created = tiny_data.catalog.set_index(schema.ITEM_ID)[schema.CREATED_AT]
    events = tiny_data.interactions
    assert (
        events[schema.TIMESTAMP].to_numpy() >= created.loc[events[schema.ITEM_ID]].to_numpy()
    ).all()


def test_popularity_is_heavy_tailed(tiny_data):
    counts = tiny_data.interactions[schema.ITEM_ID].value_counts().to_numpy()
    top_share = counts[: max(1, len(counts) // 100)].sum() / counts.sum()
    assert top_share > 0.1  # the top 1% of items take far more than 1% of events


def test_new_items_and_users_arrive_during_the_span(tiny_data):
    events, catalog = tiny_data.interactions, tiny_data.catalog
    start = events[schema.TIMESTAMP].min()
    assert (catalog[schema.CREATED_AT] > start).mean() > 0.1
    first_seen = events.groupby(schema.USER_ID)[schema.TIMESTAMP].min()
    assert (first_seen > start + pd.Timedelta(days=7)).mean() > 0.05


def test_tastes_drift_over_time(tiny_data):
    events = tiny_data.interactions.merge(tiny_data.catalog, on=schema.ITEM_ID)
    middle = events[schema.TIMESTAMP].quantile(0.5)
    early = events[events[schema.TIMESTAMP] < middle].groupby(schema.USER_ID)[schema.CATEGORY]
    late = events[events[schema.TIMESTAMP] >= middle].groupby(schema.USER_ID)[schema.CATEGORY]
    early_top, late_top = early.agg(lambda s: s.mode()[0]), late.agg(lambda s: s.mode()[0])
    both = early_top.index.intersection(late_top.index)
    changed = (early_top[both] != late_top[both]).mean()
    assert 0.05 < changed < 0.95


@pytest.mark.parametrize("field", ["n_users", "n_items", "n_events"])
def test_bad_sizes_are_rejected(field):
    with pytest.raises(ValueError, match=field):
        SynthConfig(**{field: 0})


def test_item_vectors_are_unit_length(tiny_data):
    norms = np.linalg.norm(tiny_data.item_vectors, axis=1)
    assert np.allclose(norms, 1.0, atol=1e-5)
