"""Row-level validation of interaction logs and catalogs.

Every rejected row is counted under one problem (the first it has) and written aside with that
problem, so nothing disappears silently. When the rejected share passes a threshold the pipeline
stops with a message listing the counts.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from recsys.errors import DataValidationError
from recsys.model.data import schema

_EPOCH = pd.Timestamp(0, tz="UTC")


@dataclass
class TableReport:
    """What validation did to one table."""

    rows_in: int
    rows_kept: int
    rejected: dict[str, int] = field(default_factory=dict)
    filled: dict[str, int] = field(default_factory=dict)

    @property
    def rows_rejected(self) -> int:
        return self.rows_in - self.rows_kept

    @property
    def rejected_share(self) -> float:
        return self.rows_rejected / self.rows_in if self.rows_in else 0.0


@dataclass
class ValidationReport:
    """Validation of a whole data set, with where the rejected rows went."""

    interactions: TableReport
    catalog: TableReport
    max_reject_ratio: float
    rejects_dir: str | None = None

    def to_dict(self) -> dict:
        out = asdict(self)
        for name in ("interactions", "catalog"):
            table: TableReport = getattr(self, name)
            out[name]["rows_rejected"] = table.rows_rejected
            out[name]["rejected_share"] = round(table.rejected_share, 6)
        return out

    def summary_lines(self) -> list[str]:
        lines = []
        for name in ("catalog", "interactions"):
            table: TableReport = getattr(self, name)
            problems = ", ".join(f"{k}={v}" for k, v in table.rejected.items() if v) or "none"
            lines.append(
                f"{name}: {table.rows_kept}/{table.rows_in} rows kept "
                f"({table.rejected_share:.2%} rejected: {problems})"
            )
            filled = ", ".join(f"{k}={v}" for k, v in table.filled.items() if v)
            if filled:
                lines.append(f"{name}: filled {filled}")
        return lines


@dataclass
class ValidatedData:
    """Clean tables ready for training."""

    interactions: pd.DataFrame
    catalog: pd.DataFrame
    report: ValidationReport


def parse_timestamps(values: pd.Series) -> pd.Series:
    """Parse datetimes, ISO strings or epoch numbers (seconds, or milliseconds when huge) as UTC."""
    if pd.api.types.is_datetime64_any_dtype(values):
        parsed = pd.to_datetime(values, utc=True)
    elif pd.api.types.is_numeric_dtype(values):
        numbers = pd.to_numeric(values, errors="coerce")
        unit = "ms" if numbers.abs().median() > 1e11 else "s"
        parsed = pd.to_datetime(numbers, unit=unit, utc=True, errors="coerce")
    else:
        text = values.astype("string")
        parsed = pd.to_datetime(text, utc=True, errors="coerce", format="ISO8601")
        retry = parsed.isna() & text.notna()
        if retry.any():
            parsed[retry] = pd.to_datetime(text[retry], utc=True, errors="coerce", format="mixed")
    return parsed.astype("datetime64[us, UTC]")


def to_epoch_seconds(timestamps: pd.Series) -> np.ndarray:
    """UTC timestamps as int64 seconds since the epoch."""
    return ((timestamps - _EPOCH) // pd.Timedelta(seconds=1)).to_numpy(dtype=np.int64)


def _blank(values: pd.Series) -> pd.Series:
    return values.isna() | (values.astype("string").str.strip() == "")


def _first_problem(checks: list[tuple[str, pd.Series]], n: int) -> np.ndarray:
    """Label each row with the first failing check ('' when it passes all)."""
    problem = np.full(n, "", dtype=object)
    for name, failed in checks:
        mask = failed.to_numpy(dtype=bool) & (problem == "")
        problem[mask] = name
    return problem


def _write_rejects(frame: pd.DataFrame, problem: np.ndarray, path: Path) -> None:
    rejected = frame.loc[problem != ""].copy()
    rejected.insert(0, "problem", problem[problem != ""])
    path.parent.mkdir(parents=True, exist_ok=True)
    rejected.to_csv(path, index=False)


def validate_catalog(catalog: pd.DataFrame) -> tuple[pd.DataFrame, TableReport, np.ndarray]:
    """Validate an item catalog; returns the clean catalog, its report and per-row problems."""
    frame = catalog.reset_index(drop=True)
    item_ids = frame[schema.ITEM_ID].astype("string").str.strip()
    created = parse_timestamps(frame[schema.CREATED_AT])
    missing_id = _blank(frame[schema.ITEM_ID])
    checks = [
        ("missing_item_id", missing_id),
        ("duplicate_item_id", item_ids.duplicated(keep="first") & ~missing_id),
        ("bad_created_at", created.isna()),
    ]
    problem = _first_problem(checks, len(frame))
    keep = problem == ""
    clean = frame.loc[keep].copy()
    clean[schema.ITEM_ID] = item_ids[keep].astype(str)
    clean[schema.CREATED_AT] = created[keep]
    missing_category = _blank(clean[schema.CATEGORY])
    clean[schema.CATEGORY] = clean[schema.CATEGORY].astype("string").fillna("unknown").astype(str)
    clean.loc[missing_category.to_numpy(), schema.CATEGORY] = "unknown"
    report = TableReport(
        rows_in=len(frame),
        rows_kept=int(keep.sum()),
        rejected={name: int((problem == name).sum()) for name, _ in checks},
        filled={"category_unknown": int(missing_category.sum())},
    )
    return clean.reset_index(drop=True), report, problem


def validate_interactions(
    interactions: pd.DataFrame, known_items: pd.Series
) -> tuple[pd.DataFrame, TableReport, np.ndarray]:
    """Validate an interaction log against the clean catalog's item ids."""
    frame = interactions.reset_index(drop=True)
    user_ids = frame[schema.USER_ID].astype("string").str.strip()
    item_ids = frame[schema.ITEM_ID].astype("string").str.strip()
    timestamps = parse_timestamps(frame[schema.TIMESTAMP])
    events = frame[schema.EVENT].astype("string").str.strip().str.lower()
    if schema.WEIGHT in frame.columns:
        weights = pd.to_numeric(frame[schema.WEIGHT], errors="coerce")
        bad_weight = weights.isna() | ~np.isfinite(weights.fillna(0)) | (weights < 0)
    else:
        weights = events.map(schema.EVENT_WEIGHTS).fillna(schema.DEFAULT_EVENT_WEIGHT)
        bad_weight = pd.Series(False, index=frame.index)
    missing_user, missing_item = _blank(frame[schema.USER_ID]), _blank(frame[schema.ITEM_ID])
    keys = pd.DataFrame({"u": user_ids, "i": item_ids, "t": timestamps, "e": events})
    checks = [
        ("missing_user_id", missing_user),
        ("missing_item_id", missing_item),
        ("bad_timestamp", timestamps.isna()),
        ("missing_event", _blank(frame[schema.EVENT])),
        ("bad_weight", bad_weight),
        ("unknown_item", ~item_ids.isin(known_items) & ~missing_item),
        ("duplicate", keys.duplicated(keep="first")),
    ]
    problem = _first_problem(checks, len(frame))
    keep = problem == ""
    clean = pd.DataFrame(
        {
            schema.USER_ID: user_ids[keep].astype(str),
            schema.ITEM_ID: item_ids[keep].astype(str),
            schema.TIMESTAMP: timestamps[keep],
            schema.EVENT: events[keep].astype(str),
            schema.WEIGHT: weights[keep].astype(np.float32),
        }
    )
    clean = clean.sort_values(schema.TIMESTAMP, kind="stable").reset_index(drop=True)
    report = TableReport(
        rows_in=len(frame),
        rows_kept=int(keep.sum()),
        rejected={name: int((problem == name).sum()) for name, _ in checks},
    )
    return clean, report, problem


def validate_dataset(
    interactions: pd.DataFrame,
    catalog: pd.DataFrame,
    max_reject_ratio: float = 0.05,
    rejects_dir: str | Path | None = None,
) -> ValidatedData:
    """Validate both tables, write rejected rows aside and stop when too many were rejected.

    Args:
        interactions: raw interaction log.
        catalog: raw item catalog.
        max_reject_ratio: largest tolerated share of rejected rows in either table.
        rejects_dir: where `*_rejected.csv` and `validation.json` go (nothing written when None).

    Raises:
        DataValidationError: when a table's rejected share exceeds `max_reject_ratio`.
    """
    clean_catalog, catalog_report, catalog_problem = validate_catalog(catalog)
    clean_events, events_report, events_problem = validate_interactions(
        interactions, clean_catalog[schema.ITEM_ID]
    )
    report = ValidationReport(
        interactions=events_report,
        catalog=catalog_report,
        max_reject_ratio=max_reject_ratio,
        rejects_dir=str(rejects_dir) if rejects_dir is not None else None,
    )
    if rejects_dir is not None:
        out = Path(rejects_dir)
        _write_rejects(
            catalog.reset_index(drop=True), catalog_problem, out / "catalog_rejected.csv"
        )
        _write_rejects(
            interactions.reset_index(drop=True), events_problem, out / "interactions_rejected.csv"
        )
        (out / "validation.json").write_text(json.dumps(report.to_dict(), indent=2))
    for name, table in (("catalog", catalog_report), ("interactions", events_report)):
        if table.rejected_share > max_reject_ratio:
            where = f"; rejected rows are in {rejects_dir}" if rejects_dir is not None else ""
            raise DataValidationError(
                f"{name}: {table.rejected_share:.2%} of rows rejected, above the "
                f"{max_reject_ratio:.2%} threshold ({', '.join(report.summary_lines())}){where}"
            )
    return ValidatedData(clean_events, clean_catalog, report)
