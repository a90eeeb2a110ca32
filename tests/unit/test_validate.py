import json

import pandas as pd
import pytest

from recsys.data import schema
from recsys.data.validate import parse_timestamps, validate_dataset
from recsys.errors import DataValidationError


def _catalog():
    return pd.DataFrame(
        {
            "item_id": ["i1", "i2", "i3", "i3", None, "i5"],
            "category": ["a", "b", None, "c", "d", "e"],
            "created_at": [
                "2026-01-01",
                "2026-01-02",
                "2026-01-03",
                "2026-01-04",
                "2026-01-05",
                "not a date",
            ],
        }
    )


def _events():
    return pd.DataFrame(
        {
            "user_id": ["u1", "u1", None, "u2", "u2", "u3", "u3", "u4", "u1"],
            "item_id": ["i1", "i2", "i1", "", "i1", "i9", "i2", "i1", "i1"],
            "timestamp": [
                "2026-02-01T00:00:00Z",
                "2026-02-01T01:00:00Z",
                "2026-02-01",
                "2026-02-01",
                "yesterday",
                "2026-02-02",
                "2026-02-02",
                "2026-02-03",
                "2026-02-01T00:00:00Z",
            ],
            "event": ["view", "click", "view", "view", "view", "view", "purchase", "view", "view"],
            "weight": [1, 2, 1, 1, 1, 1, -4, 1, 1],
        }
    )


def test_every_problem_is_counted_and_written_aside(tmp_path):
    result = validate_dataset(_events(), _catalog(), max_reject_ratio=1.0, rejects_dir=tmp_path)
    cat, ev = result.report.catalog, result.report.interactions
    assert cat.rejected == {"missing_item_id": 1, "duplicate_item_id": 1, "bad_created_at": 1}
    assert cat.filled == {"category_unknown": 1}
    assert ev.rejected == {
        "missing_user_id": 1,
        "missing_item_id": 1,
        "bad_timestamp": 1,
        "missing_event": 0,
        "bad_weight": 1,
        "unknown_item": 1,
        "duplicate": 1,
    }
    assert ev.rows_kept == 3 and len(result.interactions) == 3
    rejected = pd.read_csv(tmp_path / "interactions_rejected.csv")
    assert len(rejected) == 6 and ev.rows_in == ev.rows_kept + len(rejected)
    assert set(rejected["problem"]) == set(k for k, v in ev.rejected.items() if v)
    assert len(pd.read_csv(tmp_path / "catalog_rejected.csv")) == 3
    report = json.loads((tmp_path / "validation.json").read_text())
    assert report["interactions"]["rows_rejected"] == 6
    assert result.catalog.set_index("item_id").loc["i3", "category"] == "unknown"


def test_threshold_stops_with_counts(tmp_path):
    with pytest.raises(
        DataValidationError, match=r"interactions: 66\.67% of rows rejected.*unknown_item=1"
    ):
        validate_dataset(_events(), _catalog(), max_reject_ratio=0.5, rejects_dir=tmp_path)
    # rows are written aside even when the run stops
    assert (tmp_path / "interactions_rejected.csv").exists()


def test_clean_data_passes_untouched(tiny_data):
    result = validate_dataset(tiny_data.interactions, tiny_data.catalog)
    assert result.report.interactions.rows_rejected == 0
    assert len(result.interactions) == len(tiny_data.interactions)


def test_timestamp_formats():
    seconds = parse_timestamps(pd.Series([1_700_000_000, 1_700_000_060]))
    millis = parse_timestamps(pd.Series([1_700_000_000_000, 1_700_000_060_000]))
    assert seconds.equals(millis)
    text = parse_timestamps(
        pd.Series(["2023-11-14T22:13:20Z", "2023-11-14 22:14:20+00:00", "junk"])
    )
    assert text.iloc[0] == seconds.iloc[0] and text.iloc[1] == seconds.iloc[1]
    assert pd.isna(text.iloc[2])


def test_weight_defaults_from_event_type():
    events = _events().drop(columns=["weight"]).iloc[[0, 1, 6]]
    result = validate_dataset(events, _catalog(), max_reject_ratio=1.0)
    weights = dict(
        zip(result.interactions[schema.EVENT], result.interactions[schema.WEIGHT], strict=True)
    )
    assert weights == {"view": 1.0, "click": 2.0, "purchase": 4.0}
