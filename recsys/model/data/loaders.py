"""Readers for interaction logs and item catalogs: CSV, Parquet and MovieLens files on disk.

Loaders only read and rename; they do not judge rows. Validation (`recsys.model.data.validate`)
decides what is kept, so that every rejected row is counted and written aside.
Nothing here downloads anything.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from recsys.errors import DataError
from recsys.model.data import schema


def read_table(path: str | Path) -> pd.DataFrame:
    """Read a CSV or Parquet file, chosen by its suffix."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"file not found: {path}")
    suffixes = "".join(path.suffixes).lower()
    try:
        if suffixes.endswith(".parquet") or suffixes.endswith(".pq"):
            return pd.read_parquet(path)
        if suffixes.endswith((".csv", ".csv.gz", ".tsv")):
            sep = "\t" if ".tsv" in suffixes else ","
            return pd.read_csv(path, sep=sep, dtype={schema.USER_ID: str, schema.ITEM_ID: str})
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from exc
    raise DataError(f"unsupported file type {path.suffix!r} for {path}: use .csv, .tsv or .parquet")


def require_columns(frame: pd.DataFrame, required: tuple[str, ...], what: str, path) -> None:
    """Raise DataError naming the file and the missing columns (and those it has)."""
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise DataError(
            f"{path}: {what} is missing column(s) {', '.join(missing)}; "
            f"found {', '.join(map(str, frame.columns))}"
        )


def load_interactions(path: str | Path) -> pd.DataFrame:
    """Load an interaction log with columns user_id, item_id, timestamp, event (+ weight/rating)."""
    frame = read_table(path)
    require_columns(frame, schema.INTERACTION_COLUMNS, "interaction log", Path(path))
    if schema.WEIGHT not in frame.columns and "rating" in frame.columns:
        frame = frame.rename(columns={"rating": schema.WEIGHT})
    return frame


def load_catalog(path: str | Path) -> pd.DataFrame:
    """Load an item catalog with columns item_id, category, created_at (+ any attributes)."""
    frame = read_table(path)
    require_columns(frame, schema.CATALOG_COLUMNS, "item catalog", Path(path))
    return frame


def load_dataset(directory: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Load `interactions.*` and `items.*` from a directory (Parquet preferred, then CSV)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise DataError(f"data directory not found: {directory} (run `recsys data synth` first)")

    def find(stem: str) -> Path:
        for suffix in (".parquet", ".csv", ".csv.gz"):
            candidate = directory / f"{stem}{suffix}"
            if candidate.exists():
                return candidate
        raise DataError(f"{directory} has no {stem}.parquet or {stem}.csv")

    return load_interactions(find("interactions")), load_catalog(find("items"))


_ML100K_GENRES = [
    "unknown",
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
]


def load_movielens(directory: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Load MovieLens files already on disk: ml-100k (`u.data`, `u.item`) or newer (`ratings.csv`).

    Ratings become `rating` events weighted by the rating. The category is the first genre. The
    catalog's `created_at` is the release date where the files give one (ml-100k), otherwise the
    item's first rating time.
    """
    directory = Path(directory)
    if (directory / "u.data").exists():
        ratings = pd.read_csv(
            directory / "u.data",
            sep="\t",
            names=[schema.USER_ID, schema.ITEM_ID, "rating", "unix"],
            dtype={schema.USER_ID: str, schema.ITEM_ID: str},
        )
        catalog = _ml100k_catalog(directory / "u.item", ratings)
    elif (directory / "ratings.csv").exists():
        ratings = pd.read_csv(directory / "ratings.csv", dtype={"userId": str, "movieId": str})
        ratings = ratings.rename(
            columns={"userId": schema.USER_ID, "movieId": schema.ITEM_ID, "timestamp": "unix"}
        )
        catalog = _ml_csv_catalog(directory / "movies.csv", ratings)
    else:
        raise DataError(f"{directory} holds neither u.data (ml-100k) nor ratings.csv (ml-latest)")
    interactions = pd.DataFrame(
        {
            schema.USER_ID: ratings[schema.USER_ID],
            schema.ITEM_ID: ratings[schema.ITEM_ID],
            schema.TIMESTAMP: pd.to_datetime(ratings["unix"], unit="s", utc=True, errors="coerce"),
            schema.EVENT: "rating",
            schema.WEIGHT: pd.to_numeric(ratings["rating"], errors="coerce").astype(np.float32),
        }
    )
    return interactions, catalog


def _first_seen(ratings: pd.DataFrame) -> pd.Series:
    first = ratings.groupby(schema.ITEM_ID)["unix"].min()
    return pd.to_datetime(first, unit="s", utc=True)


def _ml100k_catalog(path: Path, ratings: pd.DataFrame) -> pd.DataFrame:
    if not path.exists():
        first = _first_seen(ratings)
        return pd.DataFrame(
            {
                schema.ITEM_ID: first.index,
                schema.CATEGORY: "unknown",
                schema.CREATED_AT: first.values,
            }
        )
    columns = ["item_id", "title", "release", "video_release", "url", *_ML100K_GENRES]
    items = pd.read_csv(
        path, sep="|", names=columns, encoding="latin-1", dtype={"item_id": str}, header=None
    )
    genre_flags = items[_ML100K_GENRES].to_numpy()
    first_genre = np.where(genre_flags.any(axis=1), genre_flags.argmax(axis=1), 0)
    created = pd.to_datetime(items["release"], format="%d-%b-%Y", utc=True, errors="coerce")
    created = created.fillna(items["item_id"].map(_first_seen(ratings)))
    return pd.DataFrame(
        {
            schema.ITEM_ID: items["item_id"],
            schema.CATEGORY: np.asarray(_ML100K_GENRES)[first_genre],
            schema.CREATED_AT: created,
            "title": items["title"],
        }
    )


def _ml_csv_catalog(path: Path, ratings: pd.DataFrame) -> pd.DataFrame:
    first = _first_seen(ratings)
    if not path.exists():
        return pd.DataFrame(
            {
                schema.ITEM_ID: first.index,
                schema.CATEGORY: "unknown",
                schema.CREATED_AT: first.values,
            }
        )
    movies = pd.read_csv(path, dtype={"movieId": str})
    return pd.DataFrame(
        {
            schema.ITEM_ID: movies["movieId"],
            schema.CATEGORY: movies["genres"].str.split("|").str[0].fillna("unknown"),
            schema.CREATED_AT: movies["movieId"].map(first),
            "title": movies["title"],
        }
    )


def save_dataset(interactions: pd.DataFrame, catalog: pd.DataFrame, directory: str | Path) -> Path:
    """Write a data set as Parquet files in a directory; returns the directory."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    interactions.to_parquet(directory / schema.INTERACTIONS_FILE, index=False)
    catalog.to_parquet(directory / schema.CATALOG_FILE, index=False)
    return directory
