"""Fixtures shared by the Helm chart tests (tests/helm/test_chart_*.py).

Tools: helm is taken from PATH or from .tools/bin/helm (scripts/install-helm.sh puts it there),
promtool from PATH (scripts/install-prometheus.sh). A missing tool skips the tests that need it,
except under CI=true, where the project promises these tests run: there it fails them.

Rendering is cached per argument set for the whole session, and so are the Kubernetes JSON
schema validators (kubernetes-validate ships the upstream schemas; loading one is the slow part).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
CHART_DIR = REPO_ROOT / "helm" / "recsys"
SCENARIO_FILES = sorted((CHART_DIR / "ci").glob("*-values.yaml"))
CRD_SCHEMA_DIR = Path(__file__).resolve().parent / "crd_schemas"
RELEASE = "recsys"
NAMESPACE = "recsys"
COMPONENTS = ("gateway", "retrieval", "ranking")
# Deployed by default: Ranking runs inside the gateway's process unless ranking.separate=true.
DEFAULT_COMPONENTS = ("gateway", "retrieval")
# Oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and the newest schemas shipped.
KUBE_VERSIONS = ("1.29.0", "1.35.0")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "helm: tests of the Helm chart, manifests and alert rules")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Run every test that takes a `scenario` argument once per helm/recsys/ci/*-values.yaml."""
    if "scenario" in metafunc.fixturenames:
        metafunc.parametrize(
            "scenario",
            SCENARIO_FILES,
            ids=[path.name.removesuffix("-values.yaml") for path in SCENARIO_FILES],
        )


def in_ci() -> bool:
    """True when running under CI (CI=true), where missing tools are failures."""
    return os.environ.get("CI", "").strip().lower() in {"true", "1", "yes"}


def find_tool(name: str, extra_candidates: tuple[Path, ...] = (), install_hint: str = "") -> str:
    """Return the path of a tool, or skip (locally) / fail (CI) the requesting test."""
    on_path = shutil.which(name)
    if on_path:
        return on_path
    for candidate in extra_candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    message = (
        f"{name} not found on PATH{' or in .tools/bin' if extra_candidates else ''}; {install_hint}"
    )
    if in_ci():
        pytest.fail(f"CI=true and {message}", pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def helm_bin() -> str:
    """Path of the helm binary."""
    return find_tool(
        "helm", (REPO_ROOT / ".tools" / "bin" / "helm",), "run scripts/install-helm.sh"
    )


@pytest.fixture(scope="session")
def promtool_bin() -> str:
    """Path of promtool."""
    return find_tool("promtool", (), "run scripts/install-prometheus.sh (as root)")


class RenderError(Exception):
    """`helm template` failed; `stderr` holds helm's message."""

    def __init__(self, stderr: str) -> None:
        super().__init__(stderr)
        self.stderr = stderr


class Chart:
    """Runs helm against helm/recsys; renders are cached by their arguments."""

    def __init__(self, helm: str) -> None:
        self.helm = helm

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run `helm ARGS` and return the finished process (never raises on exit status)."""
        return subprocess.run(
            [self.helm, *args], capture_output=True, text=True, timeout=120, check=False
        )

    def template_args(self, values_files: tuple[Path, ...], sets: tuple[str, ...]) -> list[str]:
        args = ["template", RELEASE, str(CHART_DIR), "--namespace", NAMESPACE]
        for path in values_files:
            args += ["-f", str(path)]
        for item in sets:
            args += ["--set", item]
        return args

    @cache  # noqa: B019 - one Chart per session, the cache lives as long
    def render(
        self, values_files: tuple[Path, ...] = (), sets: tuple[str, ...] = ()
    ) -> tuple[dict[str, Any], ...]:
        """Render the chart and return its objects (test hooks included).

        Raises:
            RenderError: helm refused the values or a template failed.
        """
        result = self.run(*self.template_args(values_files, sets))
        if result.returncode != 0:
            raise RenderError(result.stderr)
        return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)

    def render_error(self, values_files: tuple[Path, ...] = (), sets: tuple[str, ...] = ()) -> str:
        """Render values that must be rejected and return helm's error message."""
        result = self.run(*self.template_args(values_files, sets))
        assert result.returncode != 0, f"helm accepted {values_files} {sets}"
        return result.stderr


@pytest.fixture(scope="session")
def chart(helm_bin: str) -> Chart:
    """The chart runner shared by every test of the session."""
    return Chart(helm_bin)


class KubeSchemas:
    """Strict validators (unknown fields rejected) from kubernetes-validate's bundled schemas."""

    def __init__(self) -> None:
        import kubernetes_validate.utils as kv_utils
        from referencing import Registry, Resource

        self._utils = kv_utils
        self._resource = Resource
        self._registry = Registry
        self._validators: dict[tuple[str, str, str], jsonschema.Validator] = {}
        self._definitions: dict[str, Any] = {}

    def _schema_dir(self, version: str) -> str:
        # The newest bundled schema set not newer than the requested version.
        from packaging.version import Version

        wanted = Version(self._utils.major_minor(version))
        versions = [
            v for v in self._utils.all_versions() if Version(self._utils.major_minor(v)) <= wanted
        ]
        return f"v{versions[-1]}-local-strict"

    def validator(self, version: str, api_version: str, kind: str) -> jsonschema.Validator | None:
        """Validator of one kind, or None when Kubernetes has no schema for it (a CRD)."""
        key = (version, api_version, kind)
        if key not in self._validators:
            schema_dir = self._schema_dir(version)
            group_version = api_version.split("/")
            short = (
                group_version[0]
                if len(group_version) == 1
                else f"{group_version[0].split('.')[0]}-{group_version[1]}"
            )
            try:
                schema = self._utils.schema_contents(
                    f"kubernetes-json-schema/{schema_dir}/{kind.lower()}-{short}.json", version
                )
            except FileNotFoundError:
                self._validators[key] = None
                return None
            if schema_dir not in self._definitions:
                self._definitions[schema_dir] = self._utils.schema_contents(
                    f"kubernetes-json-schema/{schema_dir}/_definitions.json", version
                )
            registry = self._resource.from_contents(schema) @ self._registry()
            registry = self._resource.from_contents(self._definitions[schema_dir]) @ registry
            self._validators[key] = jsonschema.Draft202012Validator(schema, registry=registry)
        return self._validators[key]


@pytest.fixture(scope="session")
def kube_schemas() -> KubeSchemas:
    """Session-wide cache of Kubernetes schema validators."""
    return KubeSchemas()


@pytest.fixture(scope="session")
def crd_validators() -> dict[tuple[str, str], jsonschema.Validator]:
    """Field-set validators of the non-KServe custom resources, keyed by (apiVersion, kind)."""
    validators = {}
    for path in sorted(CRD_SCHEMA_DIR.glob("*.json")):
        schema = json.loads(path.read_text())
        jsonschema.Draft202012Validator.check_schema(schema)
        key = (schema["properties"]["apiVersion"]["const"], schema["properties"]["kind"]["const"])
        validators[key] = jsonschema.Draft202012Validator(schema)
    return validators


def _model_class(name: str) -> type:
    import kserve.models
    import kubernetes.client.models

    for module in (kserve.models, kubernetes.client.models):
        if hasattr(module, name):
            return getattr(module, name)
    raise LookupError(f"no OpenAPI model named {name}")


_PRIMITIVES = {"str": str, "int": int, "float": (int, float), "bool": bool}


def strict_deserialize(data: Any, type_name: str, path: str = "$") -> Any:
    """Build OpenAPI SDK models (kserve, kubernetes) from plain data, rejecting unknown fields.

    The SDKs' own deserializers silently drop unknown keys; this one raises instead, checks
    primitive types, and constructs each model so its client-side validation (required fields,
    enums) runs.

    Args:
        data: the decoded YAML/JSON value.
        type_name: OpenAPI type string, e.g. "V1beta1InferenceService", "list[V1Container]".
        path: where `data` sits, for error messages.

    Returns:
        The model object (or list/dict/primitive).

    Raises:
        ValueError: an unknown field, a wrong type, or a model's own validation error.
    """
    if data is None:
        return None
    # Both generator styles occur: "list[X]" / "dict(str, X)" (kserve) and
    # "List[X]" / "Dict[str, X]" (recent kubernetes clients).
    if type_name.startswith(("list[", "List[")):
        if not isinstance(data, list):
            raise ValueError(f"{path}: expected a list, got {type(data).__name__}")
        inner = type_name[5:-1]
        return [strict_deserialize(item, inner, f"{path}[{i}]") for i, item in enumerate(data)]
    if type_name.startswith(("dict(", "Dict[")):
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a map, got {type(data).__name__}")
        inner = type_name[5:-1].split(", ", 1)[1]
        return {
            key: strict_deserialize(value, inner, f"{path}.{key}") for key, value in data.items()
        }
    if type_name in _PRIMITIVES:
        if (isinstance(data, bool) and type_name != "bool") or not isinstance(
            data, _PRIMITIVES[type_name]
        ):
            raise ValueError(f"{path}: expected {type_name}, got {data!r}")
        return data
    if type_name in {"object", "datetime", "date", "bytes"}:
        return data
    model = _model_class(type_name)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected an object for {type_name}, got {data!r}")
    by_json_name = {json_name: attr for attr, json_name in model.attribute_map.items()}
    unknown = sorted(set(data) - set(by_json_name))
    if unknown:
        raise ValueError(f"{path}: {type_name} has no field(s) {unknown}")
    kwargs = {
        by_json_name[key]: strict_deserialize(
            value, model.openapi_types[by_json_name[key]], f"{path}.{key}"
        )
        for key, value in data.items()
    }
    return model(**kwargs)


@pytest.fixture(scope="session")
def kserve_strict():
    """strict_deserialize for tests (conftest is not importable in every import mode)."""
    return strict_deserialize


@pytest.fixture(scope="session")
def slo() -> dict[str, Any]:
    """The project's SLO file."""
    return yaml.safe_load((REPO_ROOT / "slo.yaml").read_text())


def objects_of(objects: tuple[dict[str, Any], ...], kind: str) -> list[dict[str, Any]]:
    """Objects of one kind."""
    return [obj for obj in objects if obj.get("kind") == kind]


def pod_spec(obj: dict[str, Any]) -> dict[str, Any] | None:
    """The pod spec inside a workload object (Deployment, Job, Pod, InferenceService predictor)."""
    kind = obj["kind"]
    if kind == "Pod":
        return obj["spec"]
    if kind in {"Deployment", "Job"}:
        return obj["spec"]["template"]["spec"]
    if kind == "InferenceService":
        return obj["spec"]["predictor"]
    return None


def components_of(scenario: Path | None = None) -> tuple[str, ...]:
    """Components a values file deploys: ranking only when it sets ranking.separate=true."""
    values = yaml.safe_load(scenario.read_text()) if scenario else None
    separate = ((values or {}).get("ranking") or {}).get("separate", False)
    return COMPONENTS if separate else DEFAULT_COMPONENTS


@pytest.fixture(scope="session")
def helpers():
    """Small helpers for test modules (see objects_of, pod_spec)."""

    class Helpers:
        objects_of = staticmethod(objects_of)
        pod_spec = staticmethod(pod_spec)
        components_of = staticmethod(components_of)
        repo_root = REPO_ROOT
        chart_dir = CHART_DIR
        scenario_files = SCENARIO_FILES
        components = COMPONENTS
        kube_versions = KUBE_VERSIONS
        release = RELEASE
        namespace = NAMESPACE
        render_error_type = RenderError

    return Helpers
