"""The KServe peer's process: our two-stage pipeline served as one KServe `ModelServer` model.

`TwoStageModel.predict` (`bench.kserve_model`) runs retrieve -> rank -> top k with the same
RetrievalModel and Ranker objects and the same functions as the in-process measurement
(`bench.inprocess`), so the peer differs from our single-process gateway only in the serving
framework around it.

Run as its own process (the benchmark starts it):

    python -m bench.kserve_peer --port 8085 --retrieval-dir DIR --ranking-dir DIR \\
        [--server-workers N]

With N > 1 the process supervises N spawned KServe workers sharing the port, each with its own
copy of the models (see `bench.kserve_model`): N processes serve, as in our `-wN` forms.

Request (KServe v1 protocol): POST /v1/models/recsys:predict
`{"instances": [{"user_id": "u1", "k": 10}]}` -> `{"predictions": [{"user_id", "items"}]}`.

For a like-for-like comparison with our services (started with RECSYS_ACCESS_LOG=false), the
peer logs no line per request either (KServe's latency and access logs are turned off), freezes
the garbage collector's heap after loading the models as our services do, serves HTTP only (no
gRPC server) and listens on 127.0.0.1 only (KServe binds 0.0.0.0 by default).
"""

from __future__ import annotations

import argparse
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
        "--server-workers",
        type=int,
        default=1,
        help="Worker processes serving requests (default 1; more: KServe spawns them).",
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


def main(argv: list[str] | None = None) -> None:
    options = build_parser().parse_args(argv)
    # KServe parses sys.argv when imported; it must not see (or mis-read) our options. Spawned
    # workers inherit this reset argv, so they import kserve safely too.
    sys.argv = sys.argv[:1]
    import kserve  # after the reset above, for the reason above

    from bench.kserve_model import TwoStageModel, bind_loopback_only

    bind_loopback_only()
    model = TwoStageModel(
        options.model_name,
        options.retrieval_dir,
        options.ranking_dir,
        options.num_candidates,
        options.category_cap,
        gc_freeze=not options.no_gc_freeze,
    )
    model.load()  # KServe registers ready models only; each worker loads its own copy again
    server = kserve.ModelServer(
        http_port=options.port,
        workers=options.server_workers,
        enable_grpc=False,
        enable_latency_logging=False,
    )
    logging.getLogger("kserve.trace").setLevel(logging.WARNING)
    server.start([model])


if __name__ == "__main__":
    main()
