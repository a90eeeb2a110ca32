import threading

import numpy as np

from recsys.model.dense_predict import DensePredictor
from recsys.model.features import FEATURE_NAMES


def _rows(seed: int, n: int) -> np.ndarray:
    rows = np.random.default_rng(seed).normal(size=(n, len(FEATURE_NAMES))).astype(np.float32)
    rows[::3, 2] = np.nan  # a signal the caller left out: missing
    return rows


def test_scores_equal_inplace_predict_bit_for_bit(tiny_result):
    booster = tiny_result.ranker.booster
    iterations = (0, int(booster.best_iteration) + 1)
    predictor = DensePredictor(booster, iterations)
    for seed, n in ((0, 1), (1, 200), (2, 37)):
        rows = _rows(seed, n)
        expected = booster.inplace_predict(rows, iteration_range=iterations)
        assert np.array_equal(predictor(rows), expected)
        margin = np.linspace(-2, 0, n, dtype=np.float32)
        with_margin = booster.inplace_predict(rows, iteration_range=iterations, base_margin=margin)
        assert np.array_equal(predictor(rows, margin), with_margin)
        # A margin on one call is not carried into the next one without.
        assert np.array_equal(predictor(rows), expected)
        assert np.array_equal(predictor(np.asfortranarray(rows.astype(np.float64))), expected)


def test_threads_each_get_their_own_scores(tiny_result):
    booster = tiny_result.ranker.booster
    iterations = (0, int(booster.best_iteration) + 1)
    predictor = DensePredictor(booster, iterations)
    inputs = [_rows(seed, 50 + seed) for seed in range(4)]
    expected = [booster.inplace_predict(rows, iteration_range=iterations) for rows in inputs]
    mismatches = []

    def score(index: int) -> None:
        for _ in range(50):
            if not np.array_equal(predictor(inputs[index]), expected[index]):
                mismatches.append(index)

    threads = [threading.Thread(target=score, args=(i,)) for i in range(len(inputs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not mismatches
