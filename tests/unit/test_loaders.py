import pandas as pd
import pytest

from recsys.data import schema
from recsys.data.loaders import load_dataset, load_interactions, load_movielens, save_dataset
from recsys.errors import DataError


def test_parquet_and_csv_round_trip(tiny_data, tmp_path):
    save_dataset(tiny_data.interactions.head(500), tiny_data.catalog, tmp_path / "pq")
    events, catalog = load_dataset(tmp_path / "pq")
    assert len(events) == 500 and len(catalog) == len(tiny_data.catalog)
    (tmp_path / "csv").mkdir()
    tiny_data.interactions.head(500).to_csv(tmp_path / "csv" / "interactions.csv", index=False)
    tiny_data.catalog.to_csv(tmp_path / "csv" / "items.csv", index=False)
    events_csv, _ = load_dataset(tmp_path / "csv")
    assert events_csv[schema.USER_ID].tolist() == events[schema.USER_ID].tolist()


def test_missing_column_is_named(tmp_path):
    path = tmp_path / "interactions.csv"
    pd.DataFrame({"user_id": ["a"], "item_id": ["b"], "event": ["view"]}).to_csv(path, index=False)
    with pytest.raises(DataError, match=r"missing column.*timestamp"):
        load_interactions(path)


def test_unsupported_suffix(tmp_path):
    path = tmp_path / "interactions.xlsx"
    path.write_text("x")
    with pytest.raises(DataError, match="unsupported file type"):
        load_interactions(path)


def test_rating_column_becomes_weight(tmp_path):
    path = tmp_path / "interactions.csv"
    pd.DataFrame(
        {"user_id": ["a"], "item_id": ["b"], "timestamp": [1], "event": ["rating"], "rating": [4]}
    ).to_csv(path, index=False)
    assert load_interactions(path)[schema.WEIGHT].tolist() == [4]


def test_movielens_100k_files(tmp_path):
    (tmp_path / "u.data").write_text(
        "1\t10\t4\t881250949\n2\t20\t3\t891717742\n1\t20\t5\t878887116\n"
    )
    genres = ["0"] * 19
    action, comedy = genres.copy(), genres.copy()
    action[1], comedy[5] = "1", "1"
    (tmp_path / "u.item").write_text(
        "10|Film A (1995)|01-Jan-1995||http://x|" + "|".join(action) + "\n"
        "20|Film B (1996)|01-Jan-1996||http://y|" + "|".join(comedy) + "\n",
        encoding="latin-1",
    )
    events, catalog = load_movielens(tmp_path)
    assert events[schema.USER_ID].tolist() == ["1", "2", "1"]
    assert events[schema.WEIGHT].tolist() == [4, 3, 5]
    assert events[schema.TIMESTAMP].iloc[0] == pd.Timestamp(881250949, unit="s", tz="UTC")
    assert dict(zip(catalog[schema.ITEM_ID], catalog[schema.CATEGORY], strict=True)) == {
        "10": "Action",
        "20": "Comedy",
    }


def test_movielens_ratings_csv(tmp_path):
    pd.DataFrame(
        {
            "userId": [1, 1, 2],
            "movieId": [5, 6, 5],
            "rating": [4.0, 2.5, 5.0],
            "timestamp": [100, 200, 300],
        }
    ).to_csv(tmp_path / "ratings.csv", index=False)
    pd.DataFrame(
        {"movieId": [5, 6], "title": ["A", "B"], "genres": ["Drama|War", "Comedy"]}
    ).to_csv(tmp_path / "movies.csv", index=False)
    events, catalog = load_movielens(tmp_path)
    assert len(events) == 3
    assert catalog.set_index(schema.ITEM_ID)[schema.CATEGORY].to_dict() == {
        "5": "Drama",
        "6": "Comedy",
    }
    assert catalog.set_index(schema.ITEM_ID)[schema.CREATED_AT]["6"] == pd.Timestamp(
        200, unit="s", tz="UTC"
    )


def test_movielens_missing_files(tmp_path):
    with pytest.raises(DataError, match=r"u\.data"):
        load_movielens(tmp_path)
