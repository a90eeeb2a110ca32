"""String id <-> dense index maps shared by retrieval, ranking and the services."""

from __future__ import annotations

from collections.abc import Iterable
from itertools import repeat
from pathlib import Path

import numpy as np
import pandas as pd

_DICT_LOOKUP_MAX = 5000


class Vocabulary:
    """An ordered set of string ids; the position of an id is its dense index."""

    def __init__(self, ids: Iterable[str]):
        self.ids = np.asarray(ids if isinstance(ids, np.ndarray) else list(ids), dtype=object)
        self._index = pd.Index(self.ids)
        if not self._index.is_unique:
            raise ValueError("vocabulary ids must be unique")
        self._lookup = {item: i for i, item in enumerate(self.ids)}

    @classmethod
    def from_values(cls, values: Iterable[str]) -> Vocabulary:
        """Distinct values in sorted order (deterministic whatever the input order)."""
        distinct = pd.Series(values, dtype="string").dropna().unique()
        return cls(np.sort(np.asarray(distinct, dtype=str)).astype(object))

    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, key: str) -> bool:
        return key in self._lookup

    def index_of(self, key: str) -> int:
        """Index of one id, or -1 when unknown."""
        return self._lookup.get(key, -1)

    def lookup(self, keys: Iterable[str]) -> np.ndarray:
        """Indices of many ids (-1 for unknown ones)."""
        if isinstance(keys, list | tuple) and len(keys) <= _DICT_LOOKUP_MAX:
            # A request's few hundred ids: dict lookups take a fifth of pandas' fixed cost, and
            # map() over the bound get two thirds of a generator's (200 ids: 14 vs 21 us).
            found = map(self._lookup.get, keys, repeat(-1))
            return np.fromiter(found, np.int64, len(keys))
        return self._index.get_indexer(pd.Index(keys)).astype(np.int64)

    def save(self, path: str | Path) -> None:
        np.save(path, self.ids.astype(str))

    @classmethod
    def load(cls, path: str | Path) -> Vocabulary:
        return cls(np.load(path, allow_pickle=False).astype(object))
