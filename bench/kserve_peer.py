"""The KServe peer: our two-stage pipeline served as one KServe Python `ModelServer` model.

`TwoStageModel.predict` runs retrieve -> rank -> top k with the same RetrievalModel and Ranker
objects and the same functions as the in-process measurement (`bench.inprocess`), so the
peer differs from our single-process gateway only in the serving framework around it.

Run as its own process (the benchmark starts it):

    python -m bench.kserve_peer --port 8085 --retrieval-dir DIR --ranking-dir DIR

Request (KServe v1 protocol): POST /v1/models/recsys:predict
`{"instances": [{"user_id": "u1", "k": 10}]}` -> `{"predictions": [{"user_id", "items"}]}`.

For a like-for-like comparison with our services (started with RECSYS_ACCESS_LOG=false), the
peer logs no line per request either (KServe's latency and access logs are turned off), freezes
the garbage collector's heap after loading the models as our services do, serves HTTP only (no
gRPC server) and listens on 127.0.0.1 only (KServe binds 0.0.0.0 by default).
"""

from __future__ import annotations

import argparse
import gc
import logging
import sys

MODEL_NAME = "recsys"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.kserve_peer",
        description="Serve retrieve -> rank -> top k as one KServe model on 127.0.0.1.",
    )
    parser.add_argument("--port", type=int, required=True, help="HTTP port on 127.0.0.1.")
    parser.add_argument("--retrieval-dir", required=True, help="Stored retrieval model dir.")
    parser.add_argument("--ranking-dir", required=True, help="Stored ranking model dir.")
    parser.add_argument("--model-name", default=MODEL_NAME, help="KServe model name.")
    parser.add_argument(
        "--server-workers", type=int, default=1, help="Uvicorn worker processes (default 1)."
    )
    parser.add_argument(
        "--num-candidates", type=int, default=200, help="Candidates retrieved per request."
    )
    parser.add_argument(
        "--category-cap", type=int, default=3, help="Most items per category in a top-k list."
    )
    parser.add_argument(
        "--no-gc-freeze",
        action="store_true",
        help="Leave the loaded models in the garbage collector's reach (our services freeze it).",
    )
    return parser


def make_model_class():
    """The kserve.Model subclass (built on demand: importing kserve reads sys.argv)."""
    import kserve
    from kserve.errors import InvalidInput

    from bench.inprocess import recommend_in_process
    from recsys.model.artifacts import load_ranker_dir, load_retrieval_dir

    class TwoStageModel(kserve.Model):
        """retrieve -> rank -> top k for each instance `{"user_id": str, "k": int}`."""

        def __init__(
            self,
            name: str,
            retrieval_dir: str,
            ranking_dir: str,
            num_candidates: int,
            category_cap: int,
        ) -> None:
            super().__init__(name)
            self.retrieval_dir = retrieval_dir
            self.ranking_dir = ranking_dir
            self.num_candidates = num_candidates
            self.category_cap = category_cap
            self.retrieval = None
            self.ranker = None

        def load(self) -> bool:
            self.retrieval = load_retrieval_dir(self.retrieval_dir)
            self.ranker = load_ranker_dir(self.ranking_dir)
            self.ready = True
            return self.ready

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
                items = recommend_in_process(
                    self.retrieval,
                    self.ranker,
                    user_id,
                    k,
                    self.num_candidates,
                    self.category_cap,
                )
                predictions.append({"user_id": user_id, "items": items})
            return {"predictions": predictions}

    return TwoStageModel


def bind_loopback_only() -> None:
    """Make KServe's REST server listen on 127.0.0.1 instead of its fixed 0.0.0.0."""
    from kserve import model_server
    from kserve.protocol.rest import server as rest_server
    from kserve.protocol.rest.multiprocess import server as multiprocess_server

    class LoopbackRESTServer(rest_server.RESTServer):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            self.config.host = "127.0.0.1"

    model_server.RESTServer = LoopbackRESTServer
    multiprocess_server.RESTServer = LoopbackRESTServer


def main(argv: list[str] | None = None) -> None:
    options = build_parser().parse_args(argv)
    # KServe parses sys.argv when imported; it must not see (or mis-read) our options.
    sys.argv = sys.argv[:1]
    import kserve

    bind_loopback_only()
    model_class = make_model_class()
    model = model_class(
        options.model_name,
        options.retrieval_dir,
        options.ranking_dir,
        options.num_candidates,
        options.category_cap,
    )
    model.load()
    if not options.no_gc_freeze:  # as recsys.serving.models.BackgroundModel does after loading
        gc.collect()
        gc.freeze()
    server = kserve.ModelServer(
        http_port=options.port,
        workers=options.server_workers,
        enable_grpc=False,
        enable_latency_logging=False,
    )
    for name in ("kserve.trace", "uvicorn.access"):
        logging.getLogger(name).setLevel(logging.WARNING)
    server.start([model])


if __name__ == "__main__":
    main()
