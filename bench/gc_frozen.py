"""Experiment: the BentoML services with the garbage collector's heap frozen after model load.

A full (generation 2) collection walks every object the loaded models hold (vocabularies,
feature tables, id arrays): about 100 ms on the 100k-item models, during which the worker
answers nothing. `gc.freeze()` right after loading moves those objects out of the collector's
reach. This module applies that to the unchanged services, for the benchmark only:

    bentoml serve bench.gc_frozen:InlineRecommender    (or :Recommender for the split form)
"""

from __future__ import annotations

import gc

from recsys import serving

_original_init = serving.BackgroundModel.__init__


def _init_with_frozen_heap(self, name, load, self_test, delay_s: float = 0.0) -> None:
    def load_then_freeze():
        loaded = load()
        gc.collect()
        gc.freeze()
        return loaded

    _original_init(self, name, load_then_freeze, self_test, delay_s)


serving.BackgroundModel.__init__ = _init_with_frozen_heap

from services.inline import InlineRecommender  # noqa: E402
from services.recommender import Recommender  # noqa: E402

__all__ = ["InlineRecommender", "Recommender"]
