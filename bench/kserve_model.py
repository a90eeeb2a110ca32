"""The KServe peer's model and REST server classes (the peer's process is `bench.kserve_peer`).

Importing this module imports kserve, which parses `sys.argv` on import: `bench.kserve_peer`
resets `sys.argv` before importing it.

Both classes live at module level because KServe's multi-worker server (`workers > 1`) starts
each worker with multiprocessing's *spawn* context and pickles its `RESTServer`, which holds
the data plane and so every registered model. A pickled `TwoStageModel` carries only where its
models are stored (the ScaNN searcher does not pickle): each worker loads its own copy of both
models in `LoopbackRESTServer.run`, before it serves, as our BentoML workers do.

Timing matters there: KServe pings every worker from the parent and kills one that does not
answer within 5 s, and a worker's answering thread starts only after its `RESTServer` has been
unpickled. So unpickling must be quick: the models load later, in `run`, and the heavy model
libraries (xgboost pulls in sklearn: ~2 s of imports) are imported in `load`, not here.
"""

from __future__ import annotations

import gc
from collections.abc import Callable

import kserve
from kserve import model_server
from kserve.errors import InvalidInput
from kserve.protocol.rest import server as rest_server
from kserve.protocol.rest.multiprocess import server as multiprocess_server

LOOPBACK = "127.0.0.1"
# What `load` sets: left out of the pickled state, loaded again in each worker.
_LOADED = ("retrieval", "ranker", "recommend")


class TwoStageModel(kserve.Model):
    """retrieve -> rank -> top k for each instance `{"user_id": str, "k": int}`."""

    def __init__(
        self,
        name: str,
        retrieval_dir: str,
        ranking_dir: str,
        num_candidates: int,
        category_cap: int,
        gc_freeze: bool = True,
    ) -> None:
        super().__init__(name)
        self.retrieval_dir = retrieval_dir
        self.ranking_dir = ranking_dir
        self.num_candidates = num_candidates
        self.category_cap = category_cap
        self.gc_freeze = gc_freeze
        self.retrieval = None
        self.ranker = None
        self.recommend: Callable[..., list[dict]] | None = None
        self.load_in_worker = False  # True in the copy a spawned worker unpickles

    def load(self) -> bool:
        """Load both stored models; freeze the GC heap after it as our services do."""
        # Imported here, not at the top: see the module docstring (worker start-up time).
        from bench.inprocess import recommend_in_process
        from recsys.model.artifacts import load_ranker_dir, load_retrieval_dir

        self.recommend = recommend_in_process
        self.retrieval = load_retrieval_dir(self.retrieval_dir)
        self.ranker = load_ranker_dir(self.ranking_dir)
        if self.gc_freeze:  # as recsys.serving.models.BackgroundModel does after loading
            gc.collect()
            gc.freeze()
        self.ready = True
        return self.ready

    def __getstate__(self) -> dict:
        """The pickled model (sent to a spawned worker): settings only, to be loaded there."""
        state = self.__dict__.copy()
        state.update(dict.fromkeys(_LOADED), ready=False, load_in_worker=self.ready)
        return state

    async def predict(self, payload: dict, headers: dict | None = None) -> dict:
        instances = payload.get("instances") if isinstance(payload, dict) else None
        if not isinstance(instances, list) or not instances:
            raise InvalidInput('expected {"instances": [{"user_id": ..., "k": ...}, ...]}')
        predictions = []
        for instance in instances:
            user_id = instance.get("user_id") if isinstance(instance, dict) else None
            k = instance.get("k", 10) if isinstance(instance, dict) else None
            if not isinstance(user_id, str) or not isinstance(k, int) or not 1 <= k <= 100:
                raise InvalidInput("each instance needs a string user_id and 1 <= k <= 100")
            items = self.recommend(
                self.retrieval, self.ranker, user_id, k, self.num_candidates, self.category_cap
            )
            predictions.append({"user_id": user_id, "items": items})
        return {"predictions": predictions}


class LoopbackRESTServer(rest_server.RESTServer):
    """KServe's REST server on 127.0.0.1 (its own host is a fixed 0.0.0.0), no access log.

    uvicorn's access log is turned off in the config rather than by logger level: spawned
    workers configure their logging afresh, the config travels with the pickled server.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.config.host = LOOPBACK
        self.config.access_log = False

    def run(self, sockets: list | None = None) -> None:
        """A spawned worker's entry: load its own models, then serve (never unloaded ones)."""
        for model in self.dataplane.model_registry.get_models().values():
            if getattr(model, "load_in_worker", False):
                model.load()
        super().run(sockets=sockets)


def bind_loopback_only() -> None:
    """Make both of KServe's REST server paths (one worker, several) build LoopbackRESTServer."""
    model_server.RESTServer = LoopbackRESTServer
    multiprocess_server.RESTServer = LoopbackRESTServer
