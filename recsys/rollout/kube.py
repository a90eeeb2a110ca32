"""`recsys rollout status`: what runs, read from the Kubernetes API with the `kubernetes` client.

platform kubernetes: the `<prefix>-<component>` and `<prefix>-<component>-canary` Deployments of
the release (image, version label, model-tag annotation, ready/desired pods); the canary's share
is its ready pods over all ready pods, or the HTTPRoute's backend weights when Gateway API routes
the component. platform kserve: each component's InferenceService: the predictor's
`canaryTrafficPercent`, the revisions in `status.components.predictor` and their traffic, and the
`Ready` condition.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from recsys.rollout.analysis import COMPONENTS
from recsys.rollout.errors import KubernetesError, ReleaseNotFoundError

COMPONENT_LABEL = "app.kubernetes.io/component"
VERSION_LABEL = "app.kubernetes.io/version"
MODEL_ANNOTATION = "recsys.io/model-tag"
KSERVE = ("serving.kserve.io", "v1beta1", "inferenceservices")
HTTPROUTE = ("gateway.networking.k8s.io", "v1", "httproutes")
# Every read gives up after this many seconds (connect, read).
REQUEST_TIMEOUT = (5, 20)


@dataclass
class TrackStatus:
    """One track of one component."""

    track: str
    name: str
    image: str = ""
    version: str = ""
    model_tag: str = ""
    desired: int | None = None
    ready: int | None = None
    weight: float | None = None
    is_ready: bool = False
    detail: str = ""


@dataclass
class ComponentStatus:
    """Both tracks of one component and how its traffic is split."""

    component: str
    platform: str
    stable: TrackStatus | None = None
    canary: TrackStatus | None = None
    split: str = ""
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def api_client(kubeconfig: str | None = None, context: str | None = None):
    """A kubernetes ApiClient from a kubeconfig (or the in-cluster service account)."""
    from kubernetes import client, config
    from kubernetes.config.config_exception import ConfigException

    try:
        if kubeconfig or context or not _in_cluster():
            return config.new_client_from_config(config_file=kubeconfig, context=context)
        config.load_incluster_config()
        return client.ApiClient()
    except (ConfigException, OSError, TypeError) as exc:
        raise KubernetesError(f"no usable Kubernetes configuration: {exc}") from exc


def _in_cluster() -> bool:
    import os

    return bool(os.environ.get("KUBERNETES_SERVICE_HOST"))


FORBIDDEN = object()


def _call(what: str, function, *args, optional: bool = False, **kwargs):
    """Run one API read; turn transport and HTTP failures into KubernetesError.

    A 404 (kind not installed, e.g. no Gateway API CRDs) gives None; with `optional`, a 403
    gives FORBIDDEN instead of an error.
    """
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    try:
        return function(*args, _request_timeout=REQUEST_TIMEOUT, **kwargs)
    except ApiException as exc:
        if exc.status == 404:
            return None
        if exc.status == 403 and optional:
            return FORBIDDEN
        raise KubernetesError(
            f"Kubernetes API refused to list {what}: {exc.status} {exc.reason}"
        ) from exc
    except (HTTPError, OSError) as exc:
        raise KubernetesError(f"cannot reach the Kubernetes API ({what}): {exc}") from exc


def _selector(release: str) -> str:
    return f"app.kubernetes.io/instance={release},app.kubernetes.io/part-of=recsys"


def _deployment_track(deployment) -> TrackStatus:
    labels = deployment.metadata.labels or {}
    template = deployment.spec.template
    pod_labels = template.metadata.labels or {}
    annotations = template.metadata.annotations or {}
    containers = template.spec.containers or []
    desired = deployment.spec.replicas
    ready = (deployment.status.ready_replicas or 0) if deployment.status else 0
    return TrackStatus(
        track=labels.get("track", pod_labels.get("track", "stable")),
        name=deployment.metadata.name,
        image=containers[0].image if containers else "",
        version=pod_labels.get(VERSION_LABEL, ""),
        model_tag=annotations.get(MODEL_ANNOTATION, ""),
        desired=desired,
        ready=ready,
        is_ready=desired is not None and ready >= desired and desired > 0,
    )


def _route_weights(routes: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """{component: {"stable": w, "canary": w}} from the release's HTTPRoutes."""
    weights: dict[str, dict[str, int]] = {}
    for route in routes:
        component = (route.get("metadata", {}).get("labels") or {}).get(COMPONENT_LABEL)
        if not component:
            continue
        for rule in route.get("spec", {}).get("rules", []):
            for ref in rule.get("backendRefs", []):
                name = ref.get("name", "")
                track = "canary" if name.endswith("-canary") else "stable"
                weights.setdefault(component, {})[track] = int(ref.get("weight", 1))
    return weights


def _kubernetes_status(deployments, routes: list[dict[str, Any]]) -> list[ComponentStatus]:
    by_component: dict[str, ComponentStatus] = {}
    for deployment in deployments:
        component = (deployment.metadata.labels or {}).get(COMPONENT_LABEL)
        if component not in COMPONENTS:
            continue
        status = by_component.setdefault(component, ComponentStatus(component, "kubernetes"))
        track = _deployment_track(deployment)
        setattr(status, "canary" if track.track == "canary" else "stable", track)
    weights = _route_weights(routes)
    for component, status in by_component.items():
        if component in weights:
            route = weights[component]
            total = sum(route.values()) or 1
            status.split = "HTTPRoute weights (exact)"
            if status.stable:
                status.stable.weight = 100.0 * route.get("stable", 0) / total
            if status.canary:
                status.canary.weight = 100.0 * route.get("canary", 0) / total
        else:
            stable_ready = (status.stable.ready or 0) if status.stable else 0
            canary_ready = (status.canary.ready or 0) if status.canary else 0
            total = stable_ready + canary_ready
            status.split = "replica ratio (ready pods)"
            if status.stable:
                status.stable.weight = 100.0 * stable_ready / total if total else None
            if status.canary:
                status.canary.weight = 100.0 * canary_ready / total if total else None
        if status.stable is None:
            status.notes.append("no stable Deployment found")
    return [by_component[c] for c in COMPONENTS if c in by_component]


def _condition(status: dict[str, Any], kind: str) -> tuple[bool, str]:
    for condition in status.get("conditions") or []:
        if condition.get("type") == kind:
            ok = condition.get("status") == "True"
            text = condition.get("message") or condition.get("reason") or ""
            return ok, text
    return False, "condition not reported yet"


def _kserve_status(services: list[dict[str, Any]]) -> list[ComponentStatus]:
    by_component: dict[str, ComponentStatus] = {}
    for isvc in services:
        meta = isvc.get("metadata", {})
        component = (meta.get("labels") or {}).get(COMPONENT_LABEL)
        if component not in COMPONENTS:
            continue
        predictor = isvc.get("spec", {}).get("predictor", {})
        containers = predictor.get("containers") or [{}]
        pod_labels = predictor.get("labels") or {}
        annotations = predictor.get("annotations") or {}
        status = isvc.get("status") or {}
        revisions = (status.get("components") or {}).get("predictor") or {}
        traffic = revisions.get("traffic") or []
        ready, ready_text = _condition(status, "Ready")
        latest_ready = revisions.get("latestReadyRevision", "")
        latest_created = revisions.get("latestCreatedRevision", "")
        rolled_out = revisions.get("latestRolledoutRevision", "")
        percent = {t.get("revisionName"): float(t.get("percent") or 0) for t in traffic}
        in_canary = pod_labels.get("track") == "canary"
        result = ComponentStatus(component, "kserve", split="KServe canaryTrafficPercent (exact)")
        spec_track = TrackStatus(
            track="canary" if in_canary else "stable",
            name=latest_created or meta.get("name", ""),
            image=containers[0].get("image", ""),
            version=pod_labels.get("app.kubernetes.io/version", ""),
            model_tag=annotations.get(MODEL_ANNOTATION, ""),
            is_ready=bool(latest_created) and latest_created == latest_ready,
            weight=percent.get(latest_created),
            detail=f"canaryTrafficPercent={predictor.get('canaryTrafficPercent')}"
            if in_canary
            else "",
        )
        if in_canary:
            result.canary = spec_track
            result.stable = TrackStatus(
                track="stable",
                name=rolled_out or revisions.get("previousRolledoutRevision", ""),
                weight=percent.get(rolled_out),
                is_ready=ready,
                detail="image of the last rolled-out revision is in its Knative Revision",
            )
        else:
            spec_track.weight = percent.get(latest_created, 100.0 if traffic else None)
            result.stable = spec_track
        if not ready:
            result.notes.append(f"InferenceService not Ready: {ready_text}")
        by_component[component] = result
    return [by_component[c] for c in COMPONENTS if c in by_component]


def collect_status(client, release: str, namespace: str) -> list[ComponentStatus]:
    """Status of every component of a release.

    Args:
        client: a kubernetes ApiClient (see api_client).
        release: Helm release name (the app.kubernetes.io/instance label).
        namespace: namespace of the release.

    Raises:
        ReleaseNotFoundError: neither Deployments nor InferenceServices carry the release label.
        KubernetesError: the API cannot be reached or refused a read.
    """
    from kubernetes import client as k8s

    selector = _selector(release)
    apps = k8s.AppsV1Api(client)
    custom = k8s.CustomObjectsApi(client)
    listed = _call(
        "deployments", apps.list_namespaced_deployment, namespace, label_selector=selector
    )
    deployments = listed.items if listed is not None else []
    if deployments:
        routes = _call(
            "httproutes",
            custom.list_namespaced_custom_object,
            *HTTPROUTE[:2],
            namespace,
            HTTPROUTE[2],
            label_selector=selector,
            optional=True,
        )
        if routes is FORBIDDEN:
            found = _kubernetes_status(deployments, [])
            for status in found:
                status.notes.append("HTTPRoutes not readable (403): shares shown from ready pods")
            return found
        return _kubernetes_status(deployments, (routes or {}).get("items", []))
    services = _call(
        "inferenceservices",
        custom.list_namespaced_custom_object,
        *KSERVE[:2],
        namespace,
        KSERVE[2],
        label_selector=selector,
    )
    items = (services or {}).get("items", [])
    if items:
        return _kserve_status(items)
    raise ReleaseNotFoundError(
        f"no recsys Deployments or InferenceServices of release {release!r} in namespace "
        f"{namespace!r} (label selector {selector})"
    )
