"""Window-vs-window checks of an interaction log before training.

The newest window (the last daily file when the log comes in daily files, otherwise the last
`window_days` by time) is compared with the window before it: schema, row count, rejected and
null shares, and the distribution shift (PSI) of events per user, events per item (popularity)
and the category mix. A broken window is refused with one message that lists every problem;
moderate shifts are reported as warnings.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

from recsys.errors import DataValidationError
from recsys.model.data import schema
from recsys.model.data.source import SourceData
from recsys.model.data.validate import parse_timestamps, validate_catalog, validate_interactions
from recsys.model.health import psi

# Count bins (1, 2, 3-4, 5-8, ..., 129+) for events per user and per item.
_COUNT_EDGES = np.array([1, 2, 4, 8, 16, 32, 64, 128])


class DataDriftError(DataValidationError):
    """The newest window of the log differs too much from the previous one to train on."""


@dataclass(frozen=True)
class WindowLimits:
    """When a new window is refused (or warned about)."""

    max_reject_ratio: float = 0.05
    max_row_ratio: float = 3.0  # new/previous row count outside [1/x, x] is refused
    max_psi: float = 0.5  # any distribution shift above this is refused
    warn_psi: float = 0.2


@dataclass
class WindowStats:
    """One window of raw log rows."""

    label: str
    rows: int
    rejected_share: float
    rejected: dict[str, int]
    null_shares: dict[str, float]


@dataclass
class WindowReport:
    """Comparison of the newest window with the previous one."""

    new: WindowStats
    previous: WindowStats | None
    psi: dict[str, float] = field(default_factory=dict)
    row_ratio: float | None = None
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict:
        return asdict(self)

    def summary_lines(self) -> list[str]:
        prev = self.previous
        lines = [
            f"new window {self.new.label}: {self.new.rows} rows, "
            f"{self.new.rejected_share:.2%} rejected"
            + (
                f"; previous {prev.label}: {prev.rows} rows, {prev.rejected_share:.2%} rejected"
                if prev
                else ""
            )
        ]
        if self.psi:
            lines.append("shift (PSI): " + ", ".join(f"{k} {v:.3f}" for k, v in self.psi.items()))
        lines += [f"warning: {w}" for w in self.warnings]
        lines += [f"problem: {p}" for p in self.problems]
        return lines


def _count_bins(counts: np.ndarray) -> np.ndarray:
    return np.bincount(np.searchsorted(_COUNT_EDGES, counts, side="right"), minlength=9)


def _stats(
    label: str, raw: pd.DataFrame, known_items: pd.Series
) -> tuple[WindowStats, pd.DataFrame]:
    clean, report, _ = validate_interactions(raw, known_items)
    nulls = {
        column: round(float(raw[column].isna().mean()), 6) if len(raw) else 0.0
        for column in schema.INTERACTION_COLUMNS
        if column in raw.columns
    }
    stats = WindowStats(
        label,
        len(raw),
        round(report.rejected_share, 6),
        {k: v for k, v in report.rejected.items() if v},
        nulls,
    )
    return stats, clean


def split_windows(
    source: SourceData, window_days: float
) -> tuple[pd.DataFrame, pd.DataFrame, str, str]:
    """(previous raw rows, newest raw rows, their labels): by daily file, else by time."""
    parts = source.parts
    if len(parts) >= 2 and parts[-1].rows and parts[-2].rows:
        ends = np.cumsum([p.rows for p in parts])
        new = source.interactions.iloc[ends[-2] : ends[-1]]
        previous = source.interactions.iloc[ends[-3] if len(parts) > 2 else 0 : ends[-2]]
        if len(parts) == 2:
            # The first file may be the whole history: compare with its last window only.
            times = parse_timestamps(previous[schema.TIMESTAMP])
            end = times.max()
            previous = previous.loc[(times > end - pd.Timedelta(days=window_days)).to_numpy()]
            return previous, new, f"last {window_days:g} day(s) of {parts[0].name}", parts[-1].name
        return previous, new, parts[-2].name, parts[-1].name
    times = parse_timestamps(source.interactions[schema.TIMESTAMP])
    end = times.max()
    width = pd.Timedelta(days=window_days)
    new_mask = (times > end - width).to_numpy()
    prev_mask = ((times > end - 2 * width) & (times <= end - width)).to_numpy()
    return (
        source.interactions.loc[prev_mask],
        source.interactions.loc[new_mask],
        f"{window_days:g} day(s) before",
        f"last {window_days:g} day(s)",
    )


def compare_windows(
    source: SourceData, window_days: float = 1.0, limits: WindowLimits | None = None
) -> WindowReport:
    """Compare the newest window of `source`'s log with the previous one (never raises)."""
    limits = limits or WindowLimits()
    catalog, _, _ = validate_catalog(source.catalog)
    known = catalog[schema.ITEM_ID]
    previous_raw, new_raw, prev_label, new_label = split_windows(source, window_days)
    new_stats, new_clean = _stats(new_label, new_raw, known)
    report = WindowReport(new_stats, None)
    if len(source.parts) >= 2:
        before, last = source.parts[-2], source.parts[-1]
        lost = [c for c in before.columns if c not in last.columns]
        if lost:
            report.problems.append(
                f"{last.name} lacks column(s) {', '.join(lost)} that {before.name} has"
            )
        added = [c for c in last.columns if c not in before.columns]
        if added:
            report.warnings.append(f"{last.name} adds column(s) {', '.join(added)}")
    if new_stats.rows == 0:
        report.problems.append(f"the new window ({new_label}) has no rows")
        return report
    if new_stats.rejected_share > limits.max_reject_ratio:
        problems = ", ".join(f"{k}={v}" for k, v in new_stats.rejected.items())
        report.problems.append(
            f"{new_stats.rejected_share:.1%} of the new window's rows are rejected ({problems}), "
            f"above {limits.max_reject_ratio:.1%}"
        )
    if len(previous_raw) == 0:
        report.warnings.append("no previous window to compare with (first run?)")
        return report
    prev_stats, prev_clean = _stats(prev_label, previous_raw, known)
    report.previous = prev_stats
    report.row_ratio = round(new_stats.rows / prev_stats.rows, 4)
    if not 1 / limits.max_row_ratio <= report.row_ratio <= limits.max_row_ratio:
        report.problems.append(
            f"the new window has {report.row_ratio:.2f}x the previous window's rows "
            f"({new_stats.rows} vs {prev_stats.rows}; allowed 1/{limits.max_row_ratio:g}x to "
            f"{limits.max_row_ratio:g}x)"
        )
    if len(new_clean) and len(prev_clean):
        category = catalog.set_index(schema.ITEM_ID)[schema.CATEGORY]
        for name, new_dist, prev_dist in (
            (
                "events_per_user",
                _count_bins(new_clean[schema.USER_ID].value_counts().to_numpy()),
                _count_bins(prev_clean[schema.USER_ID].value_counts().to_numpy()),
            ),
            (
                "events_per_item",
                _count_bins(new_clean[schema.ITEM_ID].value_counts().to_numpy()),
                _count_bins(prev_clean[schema.ITEM_ID].value_counts().to_numpy()),
            ),
            ("categories", *_category_counts(new_clean, prev_clean, category)),
        ):
            value = round(psi(prev_dist, new_dist), 4)
            report.psi[name] = value
            if value > limits.max_psi:
                report.problems.append(f"{name} shifted: PSI {value:.3f} above {limits.max_psi:g}")
            elif value > limits.warn_psi:
                report.warnings.append(f"{name} shifted: PSI {value:.3f} above {limits.warn_psi:g}")
    return report


def _category_counts(
    new: pd.DataFrame, previous: pd.DataFrame, category: pd.Series
) -> tuple[np.ndarray, np.ndarray]:
    new_mix = new[schema.ITEM_ID].map(category).value_counts()
    prev_mix = previous[schema.ITEM_ID].map(category).value_counts()
    names = sorted(set(new_mix.index) | set(prev_mix.index))
    return (
        new_mix.reindex(names, fill_value=0).to_numpy(),
        prev_mix.reindex(names, fill_value=0).to_numpy(),
    )


def check_windows(
    source: SourceData, window_days: float = 1.0, limits: WindowLimits | None = None
) -> WindowReport:
    """`compare_windows`, raising DataDriftError with every problem in one line when refused."""
    report = compare_windows(source, window_days, limits)
    if not report.passed:
        raise DataDriftError(
            f"refusing to train on {report.new.label}: " + "; ".join(report.problems)
        )
    return report
