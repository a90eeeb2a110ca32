"""Retrieval, Ranking and the gateway, each its own process as in Kubernetes (the split form).

The resilience scenarios (tests/resilience) kill and restart stages under load on it, and the soak
test (scripts/soak.py) holds load on it for hours. Every server has its own BentoML home sharing
one model store (recsys.ops.bentoml_home).
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from recsys.ops.bentoml_home import private_home
from recsys.ops.processes import kill_tree
from recsys.stack import ServerProcess, free_port, start_service

STAGES = ("Retrieval", "Ranking")


@dataclass
class Topology:
    """Retrieval, Ranking and the gateway, each its own process as in Kubernetes.

    A stage can be killed and started again on the same port, the way a pod is replaced behind
    its Service, so the gateway keeps its `--depends` URLs.
    """

    models: Path
    root: Path
    env: dict[str, str] = field(default_factory=dict)
    servers: dict[str, ServerProcess] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)
    starts: Counter = field(default_factory=Counter)
    started: list[ServerProcess] = field(default_factory=list)  # every process, for stop()

    def _start(self, name: str, extra_env=None, depends=None) -> ServerProcess:
        port = self.ports.setdefault(name, free_port())
        server = self.start_replica(name, extra_env, depends, port)
        self.servers[name] = server
        return server

    def start_replica(self, name: str, extra_env=None, depends=None, port=None) -> ServerProcess:
        """One more process of a service (its own home, log and, unless given, port)."""
        self.starts[name] += 1
        run = f"{name.lower()}-{self.starts[name]}"
        env = {
            **self.env,
            "BENTOML_HOME": str(private_home(self.root / "homes" / run, self.models)),
            **(extra_env or {}),
        }
        port = port or free_port()
        server = start_service(name, port, env, depends, log_dir=self.root / "logs" / run)
        self.started.append(server)
        return server

    def start(self, timeout: float = 120.0, stage_env=None, gateway_env=None) -> None:
        """Both stages (in parallel), then the gateway once they are ready."""
        for stage in STAGES:
            self._start(stage, (stage_env or {}).get(stage))
        for stage in STAGES:
            self.servers[stage].wait_ready(timeout)
        depends = {stage: self.servers[stage].url for stage in STAGES}
        self._start("Recommender", gateway_env, depends).wait_ready(timeout)
        self.gateway.wait_stages(timeout)

    @property
    def gateway(self) -> ServerProcess:
        return self.servers["Recommender"]

    def kill(self, name: str) -> float:
        """SIGKILL every process of the service, as a crashed pod; returns when all are gone."""
        server = self.servers[name]
        kill_tree(server.process.pid)
        server.process.wait(10)
        return time.time()

    def restart(self, name: str, extra_env=None) -> ServerProcess:
        """Start the service again on its old port (not waiting for readiness)."""
        return self._start(name, extra_env)

    def stop(self) -> None:
        for server in reversed(self.started):
            server.stop()
