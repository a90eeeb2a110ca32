"""`make retrain-demo`: the continuous-training loop on one machine, in about three minutes.

1. Synthetic data at the default size whose last day ends now; every day but the last is
   "yesterday's" log, the last day is held back as the new day.
2. Yesterday's model: `recsys retrain` on yesterday's log (first run: no stable to compare).
3. Yesterday's model serves (single-process stack on 127.0.0.1); its freshness gauge is read.
4. The new day arrives as interactions/<day>.parquet; `recsys retrain` checks it, trains,
   gates, preflights against the serving model and starts a canary (dry-run helm steps).
5. The candidate serves (as its canary pods would); the freshness gauge has reset.
6. A broken day (a dropped column, then 10x duplicated rows) is refused with a clear reason,
   and the model store is unchanged.

Everything lives under --workdir (default reports/retrain-demo), BENTOML_HOME included when the
Makefile sets it. Exit code 0 only when every step behaved as described.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import time
import urllib.request
from pathlib import Path

import pandas as pd

from recsys import REPO_ROOT

DAY = pd.Timedelta(days=1)


_STARTED = time.perf_counter()


def _say(text: str) -> None:
    print(f"\n=== [{time.perf_counter() - _STARTED:5.0f} s] {text}", flush=True)


def _ages(url: str) -> dict[str, float]:
    """recsys_model_age_seconds per component from a server's /metrics."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as response:
        text = response.read().decode()
    ages: dict[str, float] = {}
    for line in text.splitlines():
        match = re.match(r"recsys_model_age_seconds\{(.*)\} (\S+)", line)
        if match:
            component = re.search(r'component="([^"]+)"', match.group(1))
            ages[component.group(1) if component else "?"] = float(match.group(2))
    return ages


def _recommend(url: str, user_id: str) -> dict:
    request = urllib.request.Request(
        f"{url}/recommend",
        data=json.dumps({"user_id": user_id, "k": 10}).encode(),
        headers={"content-type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def _serve_and_read_age(tags: dict[str, str], users: list[str], log_dir: Path) -> dict[str, float]:
    from recsys.ops.stack import free_port, start_stack

    env = {
        "RECSYS_RETRIEVAL_MODEL_TAG": tags["retrieval"],
        "RECSYS_RANKING_MODEL_TAG": tags["ranking"],
        "RECSYS_ACCESS_LOG": "false",
    }
    # the single-process form: both stages in the gateway (quickest to start)
    server = start_stack(free_port(), env, log_dir=log_dir, form="single")
    try:
        server.wait_ready(180)
        server.wait_stages(180)
        for user in users:
            _recommend(server.url, user)
        time.sleep(1.1)  # the age gauge is refreshed at most once a second
        _recommend(server.url, users[0])
        ages = _ages(server.url)
        print(f"serving {tags['ranking']} on {server.url}: /recommend answered", flush=True)
        return ages
    finally:
        server.stop()


def _store_versions() -> list[str]:
    from recsys.model.artifacts import list_models

    return sorted(row["tag"] for row in list_models())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("reports/retrain-demo"))
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--items", type=int, default=50_000)
    args = parser.parse_args(argv)

    from recsys.model.data.synth import SynthConfig, generate
    from recsys.ops.training_job import RetrainConfig, run_retrain

    started = time.perf_counter()
    work = args.workdir.resolve()
    source = work / "source"
    shutil.rmtree(source, ignore_errors=True)
    home = Path(os.environ.get("BENTOML_HOME", "")).resolve()
    if home.is_relative_to(work):  # the demo's own store (the Makefile's): start empty
        shutil.rmtree(home / "models", ignore_errors=True)
    (source / "interactions").mkdir(parents=True)
    days = 121
    now = pd.Timestamp.now(tz="UTC").floor("s")
    _say(f"1. synthetic data: {args.events:,} events over {days} days ending now")
    data = generate(
        SynthConfig(
            n_users=args.users,
            n_items=args.items,
            n_events=args.events,
            days=days,
            start=(now - pd.Timedelta(days=days)).isoformat(),
        )
    )
    # The generator keeps the first n_events in time, so the log ends a few days before the
    # span does: shift it so that its last event is now (the catalog with it).
    shift = now - data.interactions["timestamp"].max()
    log = data.interactions.assign(timestamp=data.interactions["timestamp"] + shift)
    data.catalog["created_at"] = data.catalog["created_at"] + shift
    cut = log["timestamp"].max() - DAY
    yesterday, new_day = log[log["timestamp"] <= cut], log[log["timestamp"] > cut]
    data.catalog.to_parquet(source / "items.parquet", index=False)
    yesterday.to_parquet(source / "interactions" / "0000-history.parquet", index=False)
    day_name = f"{new_day['timestamp'].min():%Y-%m-%d}.parquet"
    print(f"yesterday's log: {len(yesterday):,} events; held back: {len(new_day):,} ({day_name})")

    def job(name: str, **extra) -> object:
        config = RetrainConfig(
            source=str(source),
            out=work / "runs" / name,
            metrics_file=work / "runs" / name / "retrain.prom",
            **extra,
        )
        return run_retrain(config)

    _say("2. yesterday's model: first retraining run (no stable model yet)")
    first = job("1-yesterday")
    if first.outcome != "recorded":
        print(f"demo: yesterday's run ended {first.outcome}: {first.reason}")
        return 1
    stable = first.candidate
    some_users = yesterday["user_id"].drop_duplicates().tail(20).tolist()

    _say("3. yesterday's model serving")
    before = _serve_and_read_age(stable, some_users, work / "logs")
    print(f"recsys_model_age_seconds: {before}", flush=True)

    _say(f"4. a new day arrives ({day_name}): retrain, gate, preflight, canary (dry run)")
    new_day.to_parquet(source / "interactions" / day_name, index=False)
    chart_values = REPO_ROOT / "helm" / "recsys" / "values.yaml"
    second = job(
        "2-new-day",
        stable_ranking=stable["ranking"],
        canary="start",
        image_tag="retrain-demo",
        dry_run=True,
        rollout_args=["--values-from", str(chart_values), "--weight", "10"],
    )
    rollout_log = work / "runs" / "2-new-day" / "rollout.log"
    if rollout_log.exists():
        print(rollout_log.read_text().rstrip())
    if second.outcome != "canary_started":
        print(f"demo: the new day's run ended {second.outcome}: {second.reason}")
        return 1

    _say("5. the candidate serving (as its canary pods will): the freshness gauge resets")
    after = _serve_and_read_age(second.candidate, some_users, work / "logs")
    print(f"recsys_model_age_seconds: {after}", flush=True)
    reset = all(after[c] < before[c] - 3600 for c in before if c in after) and after
    print(f"freshness reset: {'yes' if reset else 'NO'} (before {before}, after {after})")

    _say("6. a broken day is refused, nothing changes")
    versions = _store_versions()
    broken_ok = True
    next_day = f"{new_day['timestamp'].max() + DAY:%Y-%m-%d}.parquet"
    broken = new_day.assign(timestamp=new_day["timestamp"] + DAY)
    for label, frame in (
        ("dropped column", broken.drop(columns=["event"])),
        ("10x duplicates", pd.concat([broken] * 10, ignore_index=True)),
    ):
        frame.to_parquet(source / "interactions" / next_day, index=False)
        refused = job(f"3-broken-{label.split()[0]}")
        broken_ok &= refused.outcome == "refused"
        print(f"{label}: outcome {refused.outcome}: {refused.reason}")
    (source / "interactions" / next_day).unlink()
    unchanged = _store_versions() == versions
    print(f"model store unchanged: {'yes' if unchanged else 'NO'} ({len(versions)} versions)")

    total = time.perf_counter() - started
    ok = bool(reset) and broken_ok and unchanged
    print(f"\nretrain demo {'PASSED' if ok else 'FAILED'} in {total:.0f} s (workdir {work})")
    return 0 if ok else 1


if __name__ == "__main__":
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    sys.exit(main())
