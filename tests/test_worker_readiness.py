"""A server is ready only when every worker is: two real worker processes sharing one
Prometheus multiprocess directory, as BentoML runs them, one of them still loading."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

# One worker: its own readiness is "the file <flags>/<worker> exists"; it answers each line
# read from stdin with its WorkerReadiness verdict.
WORKER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    import bentoml
    index, flags = int(sys.argv[1]), Path(sys.argv[2])
    bentoml.server_context.worker_index = index
    from services.stages import WorkerReadiness
    readiness = WorkerReadiness("Retrieval", lambda: (flags / str(index)).exists())
    print("started", flush=True)
    for line in sys.stdin:
        time.sleep(0.3)  # the publisher thread polls every 0.1 s
        print("ready" if readiness() else "unready", flush=True)
    """
)


def test_ready_only_once_every_worker_has_loaded(tmp_path: Path):
    multiproc, flags = tmp_path / "prometheus", tmp_path / "flags"
    multiproc.mkdir()
    flags.mkdir()
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(multiproc), "RECSYS_WORKERS": "2"}
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, str(index), str(flags)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        for index in (1, 2)
    ]
    try:
        for worker in workers:
            assert worker.stdout.readline().strip() == "started"

        def verdicts() -> list[str]:
            for worker in workers:
                worker.stdin.write("?\n")
                worker.stdin.flush()
            return [worker.stdout.readline().strip() for worker in workers]

        assert verdicts() == ["unready", "unready"]
        (flags / "1").touch()  # worker 1 loaded; a probe reaching it must still say unready
        assert verdicts() == ["unready", "unready"]
        (flags / "2").touch()
        assert verdicts() == ["ready", "ready"]
    finally:
        for worker in workers:
            worker.kill()
            worker.wait()
