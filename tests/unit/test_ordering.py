"""The served order: source orders, per-list NDCG, the bootstrap choice and the gate."""

import dataclasses

import numpy as np
import pytest

from recsys.model.evaluate import MODELS, promotion_decision
from recsys.model.features import FEATURE_NAMES
from recsys.model.metrics import ndcg_at_k
from recsys.model.ordering import RANKER, choose_order, list_ndcg, order_scores
from recsys.model.ranking import Ranker, rank_columns


def _features(**columns: list[float]) -> np.ndarray:
    n = len(next(iter(columns.values())))
    features = np.zeros((n, len(FEATURE_NAMES)), dtype=np.float32)
    for name, values in columns.items():
        features[:, FEATURE_NAMES.index(name)] = values
    return features


def test_a_source_order_puts_what_it_did_not_propose_last_in_arrival_order():
    features = _features(item_rank=[200, 1, np.nan, 0, 200], retrieval_rank=[0, 1, 2, 3, 4])
    order = np.argsort(-order_scores("item", features), kind="stable")
    assert order.tolist() == [3, 1, 0, 4, 2]
    retrieval = np.argsort(-order_scores("retrieval", features), kind="stable")
    assert retrieval.tolist() == [0, 1, 2, 3, 4]


def test_list_ndcg_is_the_metric_when_every_relevant_item_is_in_the_list():
    rng = np.random.default_rng(3)
    labels = (rng.random(60) < 0.2).astype(np.float32)
    labels[[0, 30]] = 1.0
    scores = rng.random(60)
    query = np.repeat([0, 1], 30)
    values = list_ndcg(scores, labels, query)
    for q in (0, 1):
        rows = np.flatnonzero(query == q)
        ranked = rows[np.argsort(-scores[rows], kind="stable")]
        expected = ndcg_at_k(ranked.tolist(), set(rows[labels[rows] > 0].tolist()), 10)
        assert values[q] == pytest.approx(expected)


def test_the_better_order_wins_with_an_interval_that_covers_its_lead():
    rng = np.random.default_rng(0)
    users = np.repeat(np.arange(300), 2)  # two lists per user, resampled together
    ranker = rng.uniform(0.2, 0.4, size=len(users))
    item = ranker + 0.05 + rng.normal(0, 0.02, size=len(users))
    choice = choose_order({RANKER: ranker, "item": item, "popular": ranker - 0.1}, users)
    assert choice.served == "item"
    low, high = choice.versus_ranker["item"]["ci95"]
    assert 0 < low < 0.05 < high
    assert choice.versus_ranker["popular"]["ci95"][1] < 0
    assert (choice.users, choice.lists) == (300, 600)


def test_a_tie_keeps_the_ranker():
    values = np.full(10, 0.3)
    choice = choose_order({RANKER: values, "item": values.copy()}, np.arange(10))
    assert choice.served == RANKER


def _metrics(served: float, selection: dict | None) -> dict:
    models = {name: {"ndcg@10": 0.2} for name in MODELS}
    models["served"] = {"ndcg@10": served}
    return {"models": models, **({"selection": selection} if selection else {})}


def _selection(served: str, values: dict[str, float]) -> dict:
    best = max(("ann", "item", "popular"), key=lambda name: values[name])
    return {"served": served, "ndcg@10": values, "best_single_source": best}


def test_the_gate_refuses_a_pipeline_below_its_best_single_source_on_validation():
    values = {"ranker": 0.30, "retrieval": 0.31, "ann": 0.28, "item": 0.33, "popular": 0.2}
    promotable, reasons = promotion_decision(_metrics(0.25, _selection("ranker", values)))
    assert not promotable
    assert reasons == [
        "served order (ranker) validation NDCG@10 0.3000 is below its best single source "
        "(item) 0.3300"
    ]
    assert promotion_decision(_metrics(0.25, _selection("item", values))) == (True, [])


def test_the_gate_judges_the_served_pipeline_on_test():
    assert promotion_decision(_metrics(0.25, None)) == (True, [])
    promotable, reasons = promotion_decision(_metrics(0.2, None))
    assert not promotable and "does not beat popularity" in reasons[0]
    metrics = _metrics(0.25, None)
    metrics["models"]["retrieval"] = {"ndcg@10": 0.26}
    assert promotion_decision(metrics)[1] == [
        "served pipeline ndcg@10 0.2500 is below retrieval 0.2600"
    ]


@pytest.mark.parametrize("order", ["item", "ann", "retrieval", "popular"])
def test_a_ranker_that_serves_a_source_order_answers_it(tiny_result, order):
    retrieval = tiny_result.retrieval
    ranker = dataclasses.replace(
        tiny_result.ranker, info={**tiny_result.ranker.info, "serving_order": order}
    )
    user = str(retrieval.users.ids[0])
    columns = retrieval.retrieve_columns(user, 100)
    verdict = rank_columns(ranker, user, columns)
    if order == "retrieval":
        assert verdict["order"] == list(range(len(columns["item_ids"])))
        return
    ranks = np.asarray(columns[f"{order}_rank"])
    assert np.all(np.diff(ranks[verdict["order"]]) >= 0)  # the source's own order first
    assert ranker.order_label.endswith("ranker off")


def test_an_unknown_serving_order_is_refused(tiny_result):
    with pytest.raises(ValueError, match="unknown order"):
        dataclasses.replace(tiny_result.ranker, info={"serving_order": "magic"})
    assert isinstance(tiny_result.ranker, Ranker)
