"""Rich tables and lines for `recsys rollout` (analysis, status, decisions, helm commands)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.table import Table
from rich.text import Text

if TYPE_CHECKING:
    from recsys.rollout.analysis import AnalysisReport
    from recsys.rollout.kube import ComponentStatus
    from recsys.rollout.plan import HelmCommand
    from recsys.rollout.preflight import PreflightResult
    from recsys.rollout.progressive import Decision

VERDICT_STYLE = {"pass": "bold green", "fail": "bold red", "inconclusive": "bold yellow"}
STATUS_STYLE = {"pass": "green", "fail": "red", "no data": "yellow", "n/a": "dim"}


def _num(value: float | None, kind: str) -> str:
    if value is None:
        return "-"
    if kind == "ms":
        return f"{value:.1f}"
    if kind == "ratio":
        return f"{value:.2%}"
    return f"{value:,.0f}"


def analysis_table(report: AnalysisReport) -> Table:
    """Numbers per track, then every check with its limit and outcome."""
    window = f"{report.window_s:.0f}s"
    table = Table(title=f"{report.component} canary vs stable, last {window}", title_justify="left")
    table.add_column("signal")
    table.add_column("stable", justify="right")
    table.add_column("canary", justify="right")
    rows = [
        ("requests", "requests", "count"),
        ("p95 latency (ms)", "p95_ms", "ms"),
        ("p99 latency (ms)", "p99_ms", "ms"),
        ("5xx ratio", "error_ratio", "ratio"),
    ]
    if report.component == "gateway":
        rows.append(("fallback ratio", "fallback_ratio", "ratio"))
    for label, attribute, kind in rows:
        table.add_row(
            label,
            _num(getattr(report.stable, attribute), kind),
            _num(getattr(report.canary, attribute), kind),
        )
    return table


def checks_table(report: AnalysisReport) -> Table:
    table = Table(title="checks (limits from slo.yaml)", title_justify="left")
    table.add_column("check")
    table.add_column("result")
    table.add_column("evidence")
    for check in report.checks:
        style = STATUS_STYLE.get(check.status.value, "")
        table.add_row(check.name, Text(check.status.value, style=style), check.detail)
    return table


def verdict_line(report: AnalysisReport) -> Text:
    style = VERDICT_STYLE[report.verdict.value]
    line = Text("verdict: ")
    line.append(report.verdict.value.upper(), style=style)
    line.append(f"  {report.reason}")
    return line


def status_table(components: list[ComponentStatus]) -> Table:
    table = Table(title="recsys rollout status", title_justify="left")
    for column in ("component", "track", "version / image", "model", "ready", "traffic", "split"):
        table.add_column(column)
    for status in components:
        for track in (status.stable, status.canary):
            if track is None:
                continue
            ready = (
                f"{track.ready}/{track.desired}"
                if track.desired is not None
                else ("yes" if track.is_ready else "no")
            )
            ready_text = Text(ready, style="green" if track.is_ready else "red")
            weight = "-" if track.weight is None else f"{track.weight:.0f}%"
            version = track.version or track.image or track.name
            table.add_row(
                status.component,
                track.track,
                version,
                track.model_tag or "-",
                ready_text,
                weight,
                status.split if track.track == "stable" else "",
            )
        for note in status.notes:
            table.add_row(status.component, "", Text(note, style="yellow"), "", "", "", "")
    return table


def preflight_table(result: PreflightResult) -> Table:
    table = Table(
        title=f"preflight: two-stage NDCG@10 on the window from "
        f"{result.window.get('test_start', '?')}",
        title_justify="left",
    )
    for column in ("pair", "retrieval", "ranking", "users", "NDCG@10", "at training"):
        table.add_column(column, justify="right" if column in {"users", "NDCG@10"} else "left")
    for name, pair in (("stable", result.stable), ("candidate", result.candidate)):
        trained = "-" if pair.trained_ndcg is None else f"{pair.trained_ndcg:.4f}"
        table.add_row(
            name, pair.retrieval_tag, pair.ranking_tag, str(pair.users), f"{pair.ndcg:.4f}", trained
        )
    return table


def command_line(command: HelmCommand, dry_run: bool) -> Text:
    line = Text("dry-run: " if dry_run else "run: ", style="cyan" if dry_run else "magenta")
    line.append(command.shell())
    return line


def decision_line(decision: Decision) -> Text:
    style = {"rollback": "bold red", "promote": "bold green", "hold": "bold yellow"}.get(
        decision.action, "bold"
    )
    line = Text(f"[{decision.elapsed_s:6.1f}s] step {decision.step} ({decision.weight}%) ")
    line.append(decision.action, style=style)
    if decision.verdict:
        line.append(" ")
        line.append(decision.verdict, style=VERDICT_STYLE.get(decision.verdict, ""))
    line.append(f": {decision.reason}")
    return line
