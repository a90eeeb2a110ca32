"""Where the training job reads its data: a directory or an object-store URL, through fsspec.

Layout (local path, `file://`, or e.g. `s3://bucket/prefix` with s3fs installed):

    items.parquet | items.csv                 the catalog, replaced whole each day
    interactions.parquet | interactions.csv   optional: the log up to some day
    interactions/<name>.parquet | .csv        optional: one file per day, appended over time

Files are read in name order (name daily files so that they sort by date). Each file's columns
are kept, so the window checks can say which file lost a column. Nothing is unpickled: only
Parquet and CSV are read.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import pandas as pd

from recsys.errors import DataError
from recsys.model.data import schema
from recsys.model.data.loaders import read_table, require_columns

_SUFFIXES = (".parquet", ".csv")


@dataclass
class Part:
    """One file of the interaction log."""

    name: str
    rows: int
    columns: list[str]


@dataclass
class SourceData:
    """The raw tables of a source and the files they came from."""

    interactions: pd.DataFrame
    catalog: pd.DataFrame
    parts: list[Part] = field(default_factory=list)


def _filesystem(url: str):
    import fsspec

    try:
        fs, root = fsspec.core.url_to_fs(url)
    except (ImportError, ValueError) as exc:  # e.g. s3:// without s3fs installed
        raise DataError(f"cannot open data source {url}: {exc}") from exc
    return fs, root.rstrip("/")


def _read(fs, path: str) -> pd.DataFrame:
    from fsspec.implementations.local import LocalFileSystem

    if isinstance(fs, LocalFileSystem):
        return read_table(path)
    try:
        with fs.open(path, "rb") as handle:
            raw = io.BytesIO(handle.read())
        if path.endswith(".parquet"):
            return pd.read_parquet(raw)
        return pd.read_csv(raw, dtype={schema.USER_ID: str, schema.ITEM_ID: str})
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from exc


def _find(fs, root: str, stem: str) -> str | None:
    for suffix in _SUFFIXES:
        path = f"{root}/{stem}{suffix}"
        if fs.isfile(path):
            return path
    return None


def log_files(url: str) -> list[str]:
    """The interaction log's files of a source, in the order they are read."""
    fs, root = _filesystem(url)
    files = []
    single = _find(fs, root, "interactions")
    if single:
        files.append(single)
    if fs.isdir(f"{root}/interactions"):
        daily = [p for p in fs.ls(f"{root}/interactions", detail=False) if p.endswith(_SUFFIXES)]
        files.extend(sorted(daily))
    return files


def load_source(url: str) -> SourceData:
    """Read the catalog and every log file of a source (see the module docstring)."""
    fs, root = _filesystem(url)
    if not fs.isdir(root):
        raise DataError(f"data source not found: {url}")
    catalog_path = _find(fs, root, "items")
    if catalog_path is None:
        raise DataError(f"{url} has no items.parquet or items.csv")
    files = log_files(url)
    if not files:
        raise DataError(f"{url} has no interactions.parquet/.csv nor interactions/ files")
    catalog = _read(fs, catalog_path)
    require_columns(catalog, schema.CATALOG_COLUMNS, "item catalog", catalog_path)
    frames, parts = [], []
    for path in files:
        frame = _read(fs, path)
        require_columns(frame, schema.INTERACTION_COLUMNS, "interaction log", path)
        if schema.WEIGHT not in frame.columns and "rating" in frame.columns:
            frame = frame.rename(columns={"rating": schema.WEIGHT})
        frames.append(frame)
        parts.append(Part(path.rsplit("/", 1)[-1], len(frame), [str(c) for c in frame.columns]))
    interactions = pd.concat(frames, ignore_index=True, sort=False)
    return SourceData(interactions, catalog, parts)
