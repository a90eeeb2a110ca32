"""Run the chart's pods with `docker run`, the way the kubelet would, on one machine's loopback.

`PodPlan.from_manifests` turns rendered manifests into docker run plans: each Deployment's
(or test Pod's) container with its image, command/args, env (valueFrom resolved against the
rendered ConfigMaps/Secrets), runAsUser/runAsGroup (+ fsGroup as a supplementary group), a
read-only root filesystem with every emptyDir mount as a tmpfs of its sizeLimit, all
capabilities dropped, no-new-privileges, and the CPU/memory limits.

What differs from a cluster, on purpose and only this: every pod shares the host network, so
each container port gets a distinct host port (the container's `--port` argument is rewritten),
and every in-cluster URL in the environment (`http://<service>.<namespace>.svc[...]:<port>`) is
rewritten to `http://127.0.0.1:<host port of a pod behind that Service>`. Service URLs of
things the chart does not run (an OpenTelemetry collector) point at a closed loopback port, so
no traffic ever leaves the machine.

`Probe.check` runs an httpGet probe as the kubelet does (status 200..399 within timeoutSeconds);
`wait_until_ready` applies the startup probe's budget (period x failureThreshold), then the
readiness probe's.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import random
import re
import secrets
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

CLUSTER_URL = re.compile(
    r"(?P<scheme>https?)://(?P<host>[a-z0-9-]+)\.(?P<ns>[a-z0-9-]+)\.svc(?:\.[a-z0-9.-]+)?(?::(?P<port>\d+))?"
)
QUANTITY = re.compile(r"^(?P<number>[0-9.]+)(?P<unit>[a-zA-Z]*)$")
BINARY_UNITS = {"": 1, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
DECIMAL_UNITS = {"k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}


# Host ports for the pods come from below the kernel's ephemeral range (32768-60999 here), where
# every container's BentoML takes the ports of its process manager at start: a port chosen from
# that range could be taken by another starting container before its own server binds it (seen:
# `ZMQError: Address already in use` in a canary pod). Each is handed out once per session.
_HOST_PORTS = iter(random.Random().sample(range(20000, 30000), 10000))


def free_port() -> int:
    """A TCP port on 127.0.0.1, outside the ephemeral range, that nothing listens on now."""
    for port in _HOST_PORTS:
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise RuntimeError("no free host port left in 20000-29999")


def closed_port() -> int:
    """A loopback port kept closed: calls to it are refused at once."""
    return free_port()


def memory_bytes(quantity: str | int) -> int:
    """Kubernetes memory quantity ("512Mi", "1G", 1024) in bytes."""
    match = QUANTITY.match(str(quantity))
    if not match:
        raise ValueError(f"unparsable memory quantity {quantity!r}")
    unit = match["unit"]
    scale = BINARY_UNITS.get(unit) or DECIMAL_UNITS.get(unit)
    if scale is None:
        raise ValueError(f"unknown memory unit in {quantity!r}")
    return int(float(match["number"]) * scale)


def cpu_cores(quantity: str | int | float) -> float:
    """Kubernetes CPU quantity ("500m", "2", 1.5) in cores."""
    text = str(quantity)
    return int(text[:-1]) / 1000 if text.endswith("m") else float(text)


def pod_template(obj: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(pod metadata, pod spec) of a Deployment, Job, CronJob or Pod."""
    if obj["kind"] == "Pod":
        return obj["metadata"], obj["spec"]
    if obj["kind"] == "CronJob":
        obj = obj["spec"]["jobTemplate"]
    return obj["spec"]["template"]["metadata"], obj["spec"]["template"]["spec"]


@dataclass
class Probe:
    """One httpGet probe of a container spec, against the container's host port."""

    path: str
    port: int
    period_s: float
    failure_threshold: int
    timeout_s: float
    initial_delay_s: float = 0.0

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any], ports: Mapping[str | int, int]) -> Probe:
        http = spec["httpGet"]
        return cls(
            path=http["path"],
            port=ports[http["port"]],
            period_s=spec.get("periodSeconds", 10),
            failure_threshold=spec.get("failureThreshold", 3),
            timeout_s=spec.get("timeoutSeconds", 1),
            initial_delay_s=spec.get("initialDelaySeconds", 0),
        )

    @property
    def budget_s(self) -> float:
        """How long the kubelet waits before it gives up on the container."""
        return self.initial_delay_s + self.period_s * self.failure_threshold

    def check(self) -> tuple[bool, str]:
        """(passed, what happened): HTTP 200-399 within timeoutSeconds passes."""
        url = f"http://127.0.0.1:{self.port}{self.path}"
        try:
            with urllib.request.urlopen(url, timeout=self.timeout_s) as response:
                return 200 <= response.status < 400, f"HTTP {response.status}"
        except urllib.error.HTTPError as error:
            return False, f"HTTP {error.code}"
        except (OSError, urllib.error.URLError) as error:
            return False, f"{type(error).__name__}: {error}"


@dataclass
class ContainerPlan:
    """One container of one pod, ready for `docker run`."""

    pod: str  # Deployment (or Pod) name
    name: str
    image: str
    entrypoint: str | None
    args: list[str]
    env: dict[str, str]
    user: str
    group_add: list[str]
    read_only: bool
    tmpfs: dict[str, str]  # mount path -> tmpfs options
    cap_drop: list[str]
    no_new_privileges: bool
    cpus: float | None
    memory: int | None
    stop_timeout: int
    ports: dict[str | int, int]  # container port (number and name) -> host port
    probes: dict[str, Probe] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    pre_stop: list[str] | None = None  # lifecycle.preStop.exec.command
    working_dir: str | None = None
    # mount path -> (host directory, read-only): a PersistentVolumeClaim, or an emptyDir that
    # several containers of the pod share (an init container filling it)
    binds: dict[str, tuple[str, bool]] = field(default_factory=dict)
    init: list[ContainerPlan] = field(default_factory=list)  # run to completion first, in order

    @property
    def host_port(self) -> int:
        """The host port of the container's first port."""
        return next(iter(self.ports.values()))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.host_port}"

    def docker_args(
        self, container_name: str, extra_env: Mapping[str, str] | None = None
    ) -> list[str]:
        """`docker run` arguments (without the leading `docker run`)."""
        args = ["--detach", "--name", container_name, "--network", "host"]
        args += ["--user", self.user]
        for group in self.group_add:
            args += ["--group-add", group]
        if self.read_only:
            args.append("--read-only")
        for path, options in self.tmpfs.items():
            args += ["--tmpfs", f"{path}:{options}"]
        for path, (host, read_only) in self.binds.items():
            args += ["--volume", f"{host}:{path}:{'ro' if read_only else 'rw'}"]
        if self.working_dir:
            args += ["--workdir", self.working_dir]
        for capability in self.cap_drop:
            args += ["--cap-drop", capability]
        if self.no_new_privileges:
            args += ["--security-opt", "no-new-privileges"]
        if self.cpus:
            args += ["--cpus", f"{self.cpus:g}"]
        if self.memory:
            # No swap beyond the limit, like a kubelet on a node without swap.
            args += ["--memory", str(self.memory), "--memory-swap", str(self.memory)]
        args += ["--stop-timeout", str(self.stop_timeout)]
        for key, value in {**self.env, **(extra_env or {})}.items():
            args += ["--env", f"{key}={value}"]
        for key, value in self.labels.items():
            args += ["--label", f"{key}={value}"]
        if self.entrypoint is not None:
            args += ["--entrypoint", self.entrypoint]
        return [*args, self.image, *self.args]


class PlanError(Exception):
    """The manifests ask for something this runner cannot reproduce."""


@dataclass
class PodPlan:
    """Every Deployment's container of one rendered release, plus the test hook pods."""

    containers: dict[str, ContainerPlan]  # by Deployment name
    tests: dict[str, ContainerPlan]  # helm test pods, by Pod name
    services: dict[str, dict[str, Any]]
    jobs: dict[str, ContainerPlan] = field(default_factory=dict)  # CronJobs' pods, by name

    @classmethod
    def from_manifests(
        cls,
        objects: Iterable[Mapping[str, Any]],
        secret_values: dict[tuple[str, str], str] | None = None,
        claims: Mapping[str, str] | None = None,
    ) -> PodPlan:
        """Plan every Deployment and helm test Pod of the rendered objects.

        Args:
            objects: the rendered manifests.
            secret_values: values of Secret keys the chart references but does not render
                (created by the operator); filled in with random values when missing, the same
                value for every container referencing the same (secret, key).
            claims: host directory of each PersistentVolumeClaim the pods mount, by claim name.

        Returns:
            The plan; host ports are assigned, URLs not yet rewritten (see `rewrite_urls`).
        """
        objects = list(objects)
        by_kind: dict[str, dict[str, Mapping[str, Any]]] = {}
        for obj in objects:
            by_kind.setdefault(obj["kind"], {})[obj["metadata"]["name"]] = obj
        secrets_given = secret_values if secret_values is not None else {}
        workloads = by_kind.get("Deployment", {})
        hooks = {
            name: pod
            for name, pod in by_kind.get("Pod", {}).items()
            if "test" in pod["metadata"].get("annotations", {}).get("helm.sh/hook", "")
        }
        plan = cls(
            containers={
                name: _plan(obj, by_kind, secrets_given, claims) for name, obj in workloads.items()
            },
            tests={name: _plan(obj, by_kind, secrets_given) for name, obj in hooks.items()},
            services=dict(by_kind.get("Service", {})),
            jobs={
                name: _plan(obj, by_kind, secrets_given, claims)
                for name, obj in by_kind.get("CronJob", {}).items()
            },
        )
        plan.rewrite_urls({**by_kind.get("Deployment", {})})
        return plan

    def backends(
        self, service_name: str, deployments: Mapping[str, Mapping[str, Any]]
    ) -> list[str]:
        """Deployments whose pods a Service selects, stable track first."""
        service = self.services.get(service_name)
        if service is None:
            return []
        selector = service["spec"].get("selector") or {}
        chosen = []
        for name, deployment in deployments.items():
            labels = pod_template(deployment)[0].get("labels", {})
            if selector and all(labels.get(k) == v for k, v in selector.items()):
                chosen.append(name)
        return sorted(
            chosen,
            key=lambda n: (pod_template(deployments[n])[0]["labels"].get("track") != "stable", n),
        )

    def service_url(
        self, service_name: str, port: int | None, deployments: Mapping[str, Any]
    ) -> str | None:
        """Loopback URL of the first pod behind a Service port, or None if the chart runs none."""
        backends = self.backends(service_name, deployments)
        if not backends:
            return None
        service = self.services[service_name]
        ports = service["spec"].get("ports", [])
        entry = next(
            (p for p in ports if port is None or p["port"] == port), ports[0] if ports else None
        )
        target = (entry or {}).get("targetPort", port)
        container = self.containers[backends[0]]
        host_port = container.ports.get(target) or container.host_port
        return f"http://127.0.0.1:{host_port}"

    def rewrite_urls(self, deployments: Mapping[str, Any]) -> None:
        """Point every in-cluster Service URL in the containers' env at loopback."""
        dead = f"http://127.0.0.1:{closed_port()}"

        def replace(match: re.Match) -> str:
            port = int(match["port"]) if match["port"] else None
            return self.service_url(match["host"], port, deployments) or dead

        every = [*self.containers.values(), *self.tests.values(), *self.jobs.values()]
        for container in [*every, *(init for c in every for init in c.init)]:
            container.env = {k: CLUSTER_URL.sub(replace, v) for k, v in container.env.items()}


def _resolve_env(
    items: list[Mapping[str, Any]],
    by_kind: Mapping[str, Mapping[str, Mapping[str, Any]]],
    secret_values: dict[tuple[str, str], str],
    pod_meta: Mapping[str, Any],
    pod_name: str,
) -> dict[str, str]:
    env: dict[str, str] = {}
    for item in items:
        name = item["name"]
        if "value" in item:
            env[name] = str(item["value"])
            continue
        source = item.get("valueFrom") or {}
        if "configMapKeyRef" in source:
            ref = source["configMapKeyRef"]
            config_map = by_kind.get("ConfigMap", {}).get(ref["name"])
            if config_map is None or ref["key"] not in config_map.get("data", {}):
                if ref.get("optional"):
                    continue
                raise PlanError(f"{name}: ConfigMap {ref['name']}/{ref['key']} is not rendered")
            env[name] = config_map["data"][ref["key"]]
        elif "secretKeyRef" in source:
            ref = source["secretKeyRef"]
            secret = by_kind.get("Secret", {}).get(ref["name"])
            if secret is not None and ref["key"] in (secret.get("stringData") or {}):
                env[name] = secret["stringData"][ref["key"]]
            elif secret is not None and ref["key"] in (secret.get("data") or {}):
                env[name] = base64.b64decode(secret["data"][ref["key"]]).decode()
            elif secret is not None:
                # A rendered Secret without the key: optional refs are left unset; otherwise
                # the kubelet refuses to create the container (CreateContainerConfigError).
                if ref.get("optional"):
                    continue
                raise PlanError(f"{name}: Secret {ref['name']} has no key {ref['key']}")
            else:
                # Created by the operator outside the chart: one random value per (secret, key).
                env[name] = secret_values.setdefault(
                    (ref["name"], ref["key"]), secrets.token_urlsafe(24)
                )
        elif "fieldRef" in source:
            path = source["fieldRef"]["fieldPath"]
            values = {
                "metadata.name": pod_name,
                "metadata.namespace": pod_meta.get("namespace", "default"),
                "status.podIP": "127.0.0.1",
                "status.hostIP": "127.0.0.1",
                "spec.nodeName": "localhost",
            }
            if path.startswith("metadata.labels['"):
                values[path] = pod_meta.get("labels", {}).get(path[17:-2], "")
            if path not in values:
                raise PlanError(f"{name}: fieldRef {path} is not supported")
            env[name] = values[path]
        else:
            raise PlanError(f"{name}: unsupported valueFrom {source}")
    return env


def _plan(
    obj: Mapping[str, Any],
    by_kind: Mapping[str, Mapping[str, Mapping[str, Any]]],
    secret_values: dict[tuple[str, str], str],
    claims: Mapping[str, str] | None = None,
) -> ContainerPlan:
    """The pod's one container, with its init containers (`.init`), planned for docker run.

    Volumes: an emptyDir only one container mounts is a tmpfs of its sizeLimit; one several
    containers share (an init container filling it) is a fresh host directory, bind-mounted into
    each (no size limit); a PersistentVolumeClaim is the host directory `claims` names for it.
    """
    name = obj["metadata"]["name"]
    meta, spec = pod_template(obj)
    meta = {**meta, "namespace": obj["metadata"].get("namespace", "default")}
    containers = spec["containers"]
    if len(containers) != 1:
        raise PlanError(f"{name}: only single-container pods are planned")
    every = [*spec.get("initContainers", []), containers[0]]
    volumes = {volume["name"]: volume for volume in spec.get("volumes", [])}
    mounted_by: dict[str, int] = {}
    for container in every:
        for mount in container.get("volumeMounts", []):
            mounted_by[mount["name"]] = mounted_by.get(mount["name"], 0) + 1
    host_dirs: dict[str, str] = {}
    for volume_name, count in mounted_by.items():
        volume = volumes[volume_name]
        if "persistentVolumeClaim" in volume:
            claim = volume["persistentVolumeClaim"]["claimName"]
            if claim not in (claims or {}):
                raise PlanError(f"{name}: no host directory given for claim {claim}")
            host_dirs[volume_name] = str(claims[claim])
        elif "emptyDir" in volume and count > 1:
            shared = tempfile.mkdtemp(prefix=f"recsys-pod-{name}-{volume_name}-")
            os.chmod(shared, 0o777)  # an emptyDir is world-writable
            host_dirs[volume_name] = shared
        elif "emptyDir" not in volume:
            raise PlanError(f"{name}: volume {volume_name} is neither an emptyDir nor a claim")

    def env(container: Mapping[str, Any]) -> dict[str, str]:
        return _resolve_env(container.get("env", []), by_kind, secret_values, meta, name)

    plan = _container_plan(name, spec, containers[0], volumes, host_dirs, env(containers[0]))
    plan.init = [
        _container_plan(name, spec, c, volumes, host_dirs, env(c), serving=False)
        for c in spec.get("initContainers", [])
    ]
    return plan


def _container_plan(
    name: str,
    spec: Mapping[str, Any],
    container: Mapping[str, Any],
    volumes: Mapping[str, Mapping[str, Any]],
    host_dirs: Mapping[str, str],
    env: dict[str, str],
    serving: bool = True,
) -> ContainerPlan:
    pod_security = spec.get("securityContext") or {}
    security = {**pod_security, **(container.get("securityContext") or {})}
    user, group = security.get("runAsUser"), security.get("runAsGroup")
    if security.get("runAsNonRoot") and user in (None, 0):
        raise PlanError(f"{name}: runAsNonRoot without a non-zero runAsUser")
    tmpfs, binds = {}, {}
    for mount in container.get("volumeMounts", []):
        if mount["name"] in host_dirs:
            binds[mount["mountPath"]] = (host_dirs[mount["name"]], bool(mount.get("readOnly")))
            continue
        volume = volumes[mount["name"]]
        # An emptyDir is a world-writable directory, executable, of at most sizeLimit.
        options = ["rw", "exec", "nosuid", "nodev", "mode=0777"]
        limit = (volume["emptyDir"] or {}).get("sizeLimit")
        if limit:
            options.append(f"size={memory_bytes(limit)}")
        tmpfs[mount["mountPath"]] = ",".join(options)
    limits = (container.get("resources") or {}).get("limits") or {}
    ports: dict[str | int, int] = {}
    for port in container.get("ports", []) if serving else []:
        host_port = free_port()
        ports[port["containerPort"]] = host_port
        if "name" in port:
            ports[port["name"]] = host_port
    args = [str(a) for a in container.get("args", [])]
    # One host network for all pods: the server listens on its own host port.
    if "--port" in args and ports:
        index = args.index("--port") + 1
        args[index] = str(ports[int(args[index])])
    command = [str(c) for c in container.get("command", [])]
    entrypoint = command[0] if command else None
    args = command[1:] + args if command else args
    capabilities = (security.get("capabilities") or {}).get("drop", [])
    plan = ContainerPlan(
        pod=name if serving else f"{name}-{container['name']}",
        name=container["name"],
        image=container["image"],
        entrypoint=entrypoint,
        args=args,
        env=env,
        user=f"{user}:{group}" if group is not None else str(user),
        group_add=[str(pod_security["fsGroup"])] if "fsGroup" in pod_security else [],
        read_only=bool(security.get("readOnlyRootFilesystem")),
        tmpfs=tmpfs,
        cap_drop=["ALL"] if "ALL" in capabilities else list(capabilities),
        no_new_privileges=security.get("allowPrivilegeEscalation") is False,
        cpus=cpu_cores(limits["cpu"]) if "cpu" in limits else None,
        memory=memory_bytes(limits["memory"]) if "memory" in limits else None,
        stop_timeout=int(spec.get("terminationGracePeriodSeconds", 30)),
        ports=ports,
        labels={"recsys.test/pod": name},
        working_dir=container.get("workingDir"),
        binds=binds,
    )
    pre_stop = ((container.get("lifecycle") or {}).get("preStop") or {}).get("exec")
    if pre_stop:
        plan.pre_stop = [str(part) for part in pre_stop["command"]]
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        if kind in container:
            plan.probes[kind] = Probe.from_spec(container[kind], ports)
    return plan


class Docker:
    """Thin wrapper of the docker CLI; every container it starts is removed by `cleanup`."""

    def __init__(self, binary: str, prefix: str) -> None:
        self.binary = binary
        self.prefix = prefix
        self.started: list[str] = []

    def run(
        self, *args: str, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [self.binary, *args], capture_output=True, text=True, timeout=timeout, check=False
        )
        if check and result.returncode != 0:
            raise RuntimeError(
                f"docker {' '.join(args[:3])} failed: {result.stderr.strip()[-2000:]}"
            )
        return result

    def start(
        self, plan: ContainerPlan, suffix: str = "", extra_env: Mapping[str, str] | None = None
    ) -> str:
        """`docker run` the container of a plan; returns the container name."""
        name = f"{self.prefix}-{plan.pod}{suffix}"
        self.run("rm", "--force", name, check=False)
        self.run("run", *plan.docker_args(name, extra_env))
        self.started.append(name)
        return name

    def logs(self, name: str, tail: int = 200) -> str:
        result = self.run("logs", "--tail", str(tail), name, check=False)
        return result.stdout + result.stderr

    def running(self, name: str) -> bool:
        result = self.run("inspect", "--format", "{{.State.Running}}", name, check=False)
        return result.stdout.strip() == "true"

    def memory_mib(self, name: str) -> float:
        """Current memory use of a container (docker stats), MiB."""
        out = self.run("stats", "--no-stream", "--format", "{{json .}}", name).stdout
        usage = json.loads(out.splitlines()[0])["MemUsage"].split("/")[0].strip()
        match = re.match(r"([0-9.]+)\s*([KMG]i?B|B)", usage)
        number, unit = float(match[1]), match[2]
        scale = {
            "B": 1 / 2**20,
            "KiB": 1 / 1024,
            "kB": 1 / 1024,
            "MiB": 1,
            "MB": 1,
            "GiB": 1024,
            "GB": 1024,
        }
        return round(number * scale[unit], 1)

    def wait_exit(self, name: str, timeout: float) -> int:
        result = self.run("wait", name, timeout=timeout)
        return int(result.stdout.strip() or -1)

    def cleanup(self) -> None:
        for name in reversed(self.started):
            self.run("rm", "--force", name, check=False)
        self.started.clear()


@dataclass
class Readiness:
    """What `wait_until_ready` saw."""

    ready: bool
    seconds: float
    detail: str


def wait_until_ready(
    plan: ContainerPlan,
    is_alive: Callable[[], bool],
    started_at: float,
    poll_s: float = 1.0,
    budget_s: float | None = None,
) -> Readiness:
    """The kubelet's startup then readiness probes, polled every `poll_s` (finer than the spec's
    period to measure time to ready) inside the spec's budget: the startup probe may fail for
    period x failureThreshold seconds, then readiness must pass within its own budget.

    Args:
        plan: the container.
        is_alive: False once the container has exited (a crash fails at once).
        started_at: time.monotonic() when `docker run` returned.
        poll_s: seconds between checks.
        budget_s: shorter overall budget (the missing-model test), or None for the spec's.
    """
    startup, readiness = plan.probes.get("startupProbe"), plan.probes["readinessProbe"]
    phases = [("startupProbe", startup)] if startup else []
    phases.append(("readinessProbe", readiness))
    detail = ""
    for kind, probe in phases:
        deadline = time.monotonic() + probe.budget_s
        if budget_s is not None:
            deadline = min(deadline, started_at + budget_s)
        while True:
            passed, detail = probe.check()
            if passed:
                break
            if not is_alive():
                return Readiness(
                    False, time.monotonic() - started_at, f"container exited ({kind}: {detail})"
                )
            if time.monotonic() >= deadline:
                return Readiness(
                    False,
                    time.monotonic() - started_at,
                    f"{kind} {probe.path} still failing: {detail}",
                )
            time.sleep(poll_s)
    return Readiness(True, time.monotonic() - started_at, detail)


# Default-size synthetic data: users u0..u19999 (recsys data synth).
KNOWN_USERS = [f"u{i}" for i in range(20_000)]


class Client:
    """One keep-alive HTTP connection to a gateway, like a service mesh client would hold."""

    def __init__(self, port: int, timeout: float = 10.0) -> None:
        self.port, self.timeout = port, timeout
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)

    def recommend(self, user_id: str, k: int = 10) -> tuple[int, dict]:
        body = json.dumps({"user_id": user_id, "k": k})
        for attempt in (1, 2):
            try:
                self.connection.request(
                    "POST", "/recommend", body, {"Content-Type": "application/json"}
                )
                response = self.connection.getresponse()
                payload = response.read()
                try:
                    answer = json.loads(payload)
                except ValueError:
                    answer = {"raw": payload[:500].decode("utf-8", "replace")}
                return response.status, answer
            except (http.client.HTTPException, OSError):
                # A dropped keep-alive connection is reopened once, as HTTP clients do.
                self.connection.close()
                self.connection = http.client.HTTPConnection(
                    "127.0.0.1", self.port, timeout=self.timeout
                )
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        self.connection.close()
