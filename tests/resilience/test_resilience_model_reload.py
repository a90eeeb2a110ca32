"""Model reload as a Kubernetes rolling update (maxUnavailable 0, readiness-gated), under load.

No cluster runs here, so a small load balancer on 127.0.0.1 (resilience_support.
ReadinessBalancer) stands in for the Ranking Service: it routes only to replicas whose /readyz
answers 200 and takes a replica out of rotation, then drains it, before it is stopped. The
gateway reaches Ranking through it; Locust keeps sending requests throughout.

1. Old tag -> new tag: a new replica starts (and is kept unready for a few seconds more than
   its load takes), joins once ready, the old one is drained and stopped. Zero client errors,
   zero fallbacks, and every answer names either the old or the new ranking model.
2. New tag -> a corrupt tag and a missing tag: those replicas never become ready and say why
   in their log; nothing is routed to them, the current version keeps serving, zero errors.
"""

from __future__ import annotations

import time

import pytest
from resilience_support import ReadinessBalancer, report

from loadtests.request_log import (
    dropped_calls,
    failures,
    in_window,
    latency_figures,
    start_load,
    timed_out,
)
from recsys.ops.polling import wait_for
from recsys.ops.topology import Topology
from recsys.stack import http_status

pytestmark = [pytest.mark.serving, pytest.mark.loadtest, pytest.mark.timeout(600)]

LOAD_DELAY_S = 3  # the new replica stays unready this much longer than its load takes
UNREADY_LINE = "ranking model failed to load, staying unready:"


@pytest.fixture(scope="module")
def rollout(model_versions, tmp_path_factory):
    """Retrieval, one Ranking replica on the old tag behind the balancer, and the gateway."""
    versions = model_versions
    stack = Topology(
        versions.path, tmp_path_factory.mktemp("rollout"), env=versions.env(versions.new)
    )
    old_ranking = {**versions.new, "ranking": versions.old["ranking"]}
    with ReadinessBalancer() as balancer:
        try:
            retrieval = stack._start("Retrieval")
            old = stack.start_replica("Ranking", versions.env(old_ranking))
            retrieval.wait_ready(120)
            old.wait_ready(120)
            balancer.add(old.url)
            wait_for(lambda: balancer.routable(), 30, 0.1, "old replica routable")
            gateway = stack._start(
                "Recommender", depends={"Retrieval": retrieval.url, "Ranking": balancer.url}
            )
            gateway.wait_ready(120)
            gateway.wait_stages(60)
            yield stack, balancer, old
        finally:
            stack.stop()


def test_rolling_update_then_a_bad_version_under_load(
    rollout, model_versions, known_users, tmp_path
):
    stack, balancer, old = rollout
    versions = model_versions
    old_tag, new_tag = versions.old["ranking"], versions.new["ranking"]
    load = start_load(
        stack.gateway.url, tmp_path, users=8, rate=5, run_time_s=180, known_users=known_users
    )
    try:
        time.sleep(3)
        # 1. Surge one replica with the new tag; it joins only once its readiness probe passes.
        surge_at = time.time()
        new = stack.start_replica(
            "Ranking",
            {"RECSYS_RANKING_MODEL_TAG": new_tag, "RECSYS_FAULT_LOAD_DELAY_S": str(LOAD_DELAY_S)},
        )
        new_backend = balancer.add(new.url)
        wait_for(lambda: new_backend.ready, 120, 0.05, "new replica ready")
        new_ready_at = new_backend.ready_since
        time.sleep(2)  # both versions serve
        drain_at = time.time()
        left_in_flight = balancer.drain(old.url)
        old.stop()
        old_gone_at = time.time()
        balancer.remove(old.url)
        time.sleep(3)  # the new version alone

        # 2. Roll on to a corrupt and a missing artifact: neither may ever become ready.
        bad = {
            tag: stack.start_replica("Ranking", {"RECSYS_RANKING_MODEL_TAG": tag})
            for tag in (versions.corrupt_ranking, versions.missing_ranking)
        }
        bad_backends = {tag: balancer.add(server.url) for tag, server in bad.items()}
        wait_for(
            lambda: all(UNREADY_LINE in s.log() for s in bad.values()),
            120,
            0.2,
            "load failure logged",
        )
        time.sleep(3)  # progress deadline: the rollout stalls, traffic goes on
        bad_ready = {tag: http_status(f"{s.url}/readyz") for tag, s in bad.items()}
        bad_alive = {tag: s.alive() for tag, s in bad.items()}
        bad_logs = {tag: s.log() for tag, s in bad.items()}
        for server in bad.values():  # the rollout is aborted
            balancer.remove(server.url)
            server.stop()
        time.sleep(1)
    finally:
        load.stop()

    records = load.records()
    # Answers the ranking stage took part in (a timed-out call leaves the retrieval order).
    ranked = [r for r in records if r["ep"] == "/recommend" and "ranking" in r.get("versions", {})]
    tags = [r["versions"].get("ranking") for r in ranked]
    # Answers completed before the balancer first found the new replica ready.
    before_ready = [r for r in ranked if r["t"] + r["ms"] / 1000 < new_ready_at]
    after_old_gone = in_window(ranked, old_gone_at, float("inf"))

    assert failures(records) == [], "callers must never see an error"
    assert dropped_calls(records) == [], "no ranking call may be dropped"
    # A stage call past its 0.5 s timeout is latency, not a drop; on two shared cores it happens.
    assert len(timed_out(records)) <= 0.01 * len(records)
    assert set(tags) == {old_tag, new_tag}
    assert {r["versions"]["ranking"] for r in before_ready} == {old_tag}, "half-loaded replica"
    assert {r["versions"]["ranking"] for r in after_old_gone} == {new_tag}
    assert left_in_flight == 0
    assert balancer.no_endpoint == 0
    assert all(b.upstream_errors == 0 for b in balancer.backends.values())
    for tag, backend in bad_backends.items():
        assert backend.served == 0 and not backend.ready, tag
        assert bad_ready[tag] == 503 and bad_alive[tag], tag
    corrupt_log = bad_logs[versions.corrupt_ranking]
    missing_log = bad_logs[versions.missing_ranking]
    assert "booster.ubj does not match its checksum" in corrupt_log
    assert f"{versions.missing_ranking!r} is not in the BentoML model store" in missing_log

    roll = in_window(records, surge_at, old_gone_at + 1)
    bad_roll = in_window(records, old_gone_at + 3, float("inf"))
    report(
        "rolling update of Ranking behind a readiness-gated balancer (8 users x 5 req/s)",
        {
            "requests": len(records),
            "errors": len(failures(records)),
            "degraded": sum(bool(r.get("degraded")) for r in records),
            "of which stage timeouts": len(timed_out(records)),
            "answers from old tag": tags.count(old_tag),
            "answers from new tag": tags.count(new_tag),
            "answers from any other tag": len(tags) - tags.count(old_tag) - tags.count(new_tag),
            "new replica: start -> ready (s)": round(new_ready_at - surge_at, 1),
            "answers from it before ready": sum(
                r["versions"]["ranking"] == new_tag for r in before_ready
            ),
            "old replica: drain + stop (s)": round(old_gone_at - drain_at, 2),
            **latency_figures(roll, "during roll: "),
            "bad versions: replicas ready": sum(b.ready for b in bad_backends.values()),
            "bad versions: requests routed": sum(b.served for b in bad_backends.values()),
            **latency_figures(bad_roll, "during bad roll: "),
            "corrupt tag log": _line(corrupt_log),
            "missing tag log": _line(missing_log),
        },
    )


def _line(log: str) -> str:
    line = next(line for line in log.splitlines() if UNREADY_LINE in line)
    return line[line.index(UNREADY_LINE) :][:160]
