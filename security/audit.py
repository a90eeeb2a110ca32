"""Dependency audit: pip-audit over the project's and the image's resolved requirements.

    python security/audit.py [--allowlist security/audit-allowlist.yaml] [--only venv|image]

Two sets are audited:

- venv:  every package installed in the running environment (the project's resolved
         requirements with the test/dev extras; the editable project itself is skipped);
- image: the Bento image's Python packages (pyproject.toml's dependencies), resolved by pip's
         own resolver (`pip install --dry-run --report`) to exact versions, then audited pinned.

A known vulnerability fails the audit unless security/audit-allowlist.yaml lists it (its id or
one of its aliases, for that package) with a reason and an expiry date that has not passed; an
expired entry fails the audit by itself, so every exception is looked at again.

Exit codes: 0 passed, 1 a vulnerability not allowed (or an expired entry), 2 usage or tool
error, 3 the vulnerability service answered for no package at all (the audit could not run,
e.g. no route to PyPI's JSON API): never reported as a pass.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import sys
import tempfile
import tomllib
from dataclasses import dataclass
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
ALLOWLIST = REPO_ROOT / "security" / "audit-allowlist.yaml"
PYPROJECT = REPO_ROOT / "pyproject.toml"
PASSED, FAILED, TOOL_ERROR, NOT_AUDITED = 0, 1, 2, 3


@dataclass(frozen=True)
class Finding:
    """One known vulnerability of one installed package version."""

    target: str  # venv / image
    package: str
    version: str
    id: str
    aliases: tuple[str, ...]
    fix_versions: tuple[str, ...]

    @property
    def ids(self) -> set[str]:
        return {self.id, *self.aliases}


@dataclass(frozen=True)
class AllowEntry:
    """An accepted vulnerability: why, and until when."""

    id: str
    package: str
    reason: str
    expires: dt.date


@dataclass
class AuditResult:
    audited: int  # packages the service answered for
    skipped: dict[str, str]  # package -> why it was not audited
    findings: list[Finding]


def load_allowlist(path: Path) -> list[AllowEntry]:
    """The allowlist file: a YAML list of {id, package, reason, expires}; all four required."""
    raw = yaml.safe_load(path.read_text()) if path.exists() else None
    entries = []
    for number, item in enumerate(raw or [], start=1):
        missing = {"id", "package", "reason", "expires"} - set(item or {})
        if missing:
            raise ValueError(f"{path.name} entry {number}: missing {', '.join(sorted(missing))}")
        expires = item["expires"]
        if not isinstance(expires, dt.date):
            expires = dt.date.fromisoformat(str(expires))
        if not str(item["reason"]).strip():
            raise ValueError(f"{path.name} entry {number}: the reason is empty")
        entries.append(
            AllowEntry(str(item["id"]), str(item["package"]).lower(), str(item["reason"]), expires)
        )
    return entries


def parse_pip_audit(report: dict, target: str) -> AuditResult:
    """Findings and skipped packages from `pip-audit --format json`."""
    findings, skipped, audited = [], {}, 0
    for dep in report.get("dependencies", []):
        if "skip_reason" in dep:
            skipped[dep["name"]] = dep["skip_reason"]
            continue
        audited += 1
        for vuln in dep.get("vulns", []):
            findings.append(
                Finding(
                    target,
                    dep["name"].lower(),
                    dep["version"],
                    vuln["id"],
                    tuple(vuln.get("aliases", [])),
                    tuple(vuln.get("fix_versions", [])),
                )
            )
    return AuditResult(audited, skipped, findings)


def judge(
    findings: list[Finding], allowlist: list[AllowEntry], today: dt.date
) -> tuple[list[Finding], list[Finding], list[AllowEntry]]:
    """(refused findings, allowed findings, expired entries)."""
    expired = [entry for entry in allowlist if entry.expires < today]
    live = [entry for entry in allowlist if entry.expires >= today]
    refused, allowed = [], []
    for finding in findings:
        ok = any(e.package == finding.package and e.id in finding.ids for e in live)
        (allowed if ok else refused).append(finding)
    return refused, allowed, expired


def _pip_audit(args: list[str], target: str, service: str) -> AuditResult:
    command = [
        sys.executable, "-m", "pip_audit", "--format", "json", "--progress-spinner", "off",
        "--vulnerability-service", service, *args,
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=900, check=False)
    if done.returncode not in (0, 1) or not done.stdout.strip():
        raise RuntimeError(f"pip-audit failed ({done.returncode}): {done.stderr[-2000:]}")
    return parse_pip_audit(json.loads(done.stdout), target)


def image_requirements() -> list[str]:
    """The Bento's Python packages (the project's dependencies, as `bentoml build` reads them
    from pyproject.toml) resolved to `name==version` by pip's resolver."""
    with PYPROJECT.open("rb") as handle:
        packages = tomllib.load(handle)["project"]["dependencies"]
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        command = [
            sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed",
            "--quiet", "--report", str(report), *packages,
        ]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True, timeout=900, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"resolving the image's packages failed: {done.stderr[-2000:]}")
        installs = json.loads(report.read_text())["install"]
    return sorted(f"{i['metadata']['name']}=={i['metadata']['version']}" for i in installs)


def audit_venv(service: str) -> AuditResult:
    return _pip_audit(["--skip-editable"], "venv", service)


def audit_image(service: str) -> AuditResult:
    with tempfile.TemporaryDirectory() as tmp:
        requirements = Path(tmp) / "image-requirements.txt"
        requirements.write_text("\n".join(image_requirements()) + "\n")
        return _pip_audit(
            ["--requirement", str(requirements), "--no-deps", "--disable-pip"], "image", service
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--allowlist", type=Path, default=ALLOWLIST)
    parser.add_argument("--only", choices=["venv", "image"], help="audit one set only")
    parser.add_argument(
        "--vulnerability-service", default="pypi", choices=["pypi", "osv"], dest="service"
    )
    args = parser.parse_args(argv)
    try:
        allowlist = load_allowlist(args.allowlist)
        targets = {"venv": audit_venv, "image": audit_image}
        if args.only:
            targets = {args.only: targets[args.only]}
        results = {name: run(args.service) for name, run in targets.items()}
    except (RuntimeError, ValueError, subprocess.TimeoutExpired) as exc:
        print(f"audit: {exc}", file=sys.stderr)
        return TOOL_ERROR
    findings = [f for result in results.values() for f in result.findings]
    refused, allowed, expired = judge(findings, allowlist, dt.date.today())
    for name, result in results.items():
        print(
            f"{name}: {result.audited} packages audited, {len(result.skipped)} not audited, "
            f"{len(result.findings)} known vulnerabilities"
        )
    for finding in allowed:
        print(f"  allowed  {finding.package} {finding.version} {finding.id} ({finding.target})")
    for finding in refused:
        fix = ", ".join(finding.fix_versions) or "no fixed version"
        print(
            f"  REFUSED  {finding.package} {finding.version} {finding.id} "
            f"aliases={','.join(finding.aliases)} fix: {fix} ({finding.target})"
        )
    for entry in expired:
        print(f"  EXPIRED  allowlist entry {entry.id} ({entry.package}) expired {entry.expires}")
    if refused or expired:
        return FAILED
    if not any(result.audited for result in results.values()):
        reasons = {why for result in results.values() for why in result.skipped.values()}
        print(
            "audit: the vulnerability service answered for no package, nothing was audited "
            f"(e.g. {sorted(reasons)[:1]})",
            file=sys.stderr,
        )
        return NOT_AUDITED
    print("audit passed")
    return PASSED


if __name__ == "__main__":
    sys.exit(main())
