"""deploy/k8s: the manifests validate against Kubernetes' schemas, checkov finds nothing unexplained,
and what ties them together (ports, selectors, the drain budget, the server's flags) agrees."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from ctxcomp.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
MANIFESTS = ROOT / "deploy" / "k8s"
# The oldest Kubernetes still in upstream support when these were written, and the newest the package knows.
VERSIONS = ("1.31.0", kubernetes_validate.latest_version())
CHECKOV = Path(os.environ.get("CTXCOMP_CHECKOV", ROOT / ".venv" / "checkov" / "bin" / "checkov"))
PREEMPTION_MARGIN_S = 5  # server.py stops grpc at grace + 5 s


def resources() -> list[dict[str, Any]]:
    kustomization = yaml.safe_load((MANIFESTS / "kustomization.yaml").read_text())
    found = []
    for name in kustomization["resources"]:
        found.extend(doc for doc in yaml.safe_load_all((MANIFESTS / name).read_text()) if doc)
    return found


def one(kind: str, name: str) -> dict[str, Any]:
    matches = [r for r in resources() if r["kind"] == kind and r["metadata"]["name"] == name]
    assert len(matches) == 1, f"{kind}/{name}"
    return matches[0]


def server_container() -> dict[str, Any]:
    return one("Deployment", "ctxcomp")["spec"]["template"]["spec"]["containers"][0]


@pytest.mark.parametrize("version", VERSIONS)
def test_every_manifest_validates_strictly(version: str) -> None:
    listed = resources()
    assert {r["kind"] for r in listed} >= {
        "Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "NetworkPolicy"}
    for resource in listed:
        kubernetes_validate.validate(resource, version, strict=True)  # raises ValidationError


def test_checkov_finds_nothing_unexplained() -> None:
    assert CHECKOV.exists(), f"{CHECKOV} is missing: `make test` installs it into .venv/checkov"
    done = subprocess.run(
        [str(CHECKOV), "-d", str(MANIFESTS), "--framework", "kubernetes", "--output", "json", "--skip-download"],
        capture_output=True, text=True, timeout=300,
    )
    report = json.loads(done.stdout)
    results = report["results"]
    failed = [(c["check_id"], c["resource"]) for c in results["failed_checks"]]
    assert failed == [], failed
    assert report["summary"]["passed"] > 100
    for skipped in results["skipped_checks"]:  # each one says why, next to the resource it concerns
        assert len(skipped["check_result"].get("suppress_comment", "")) > 40, skipped["check_id"]


def test_the_server_flags_are_ones_the_server_takes() -> None:
    args = build_parser().parse_args(server_container()["args"])
    assert args.command == "serve" and args.host == "0.0.0.0"
    ports = {p["name"]: p["containerPort"] for p in server_container()["ports"]}
    assert (args.port, args.metrics_port) == (ports["grpc"], ports["metrics"])
    template = one("Deployment", "ctxcomp")["spec"]["template"]
    assert template["metadata"]["annotations"]["prometheus.io/port"] == str(args.metrics_port)
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert server_container()[probe]["grpc"]["port"] == args.port  # the standard gRPC health service
    assert float(server_container()["resources"]["requests"]["cpu"]) == args.threads


def test_sigterm_drain_fits_the_termination_grace_period() -> None:
    args = build_parser().parse_args(server_container()["args"])
    pre_stop = server_container()["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    budget = one("Deployment", "ctxcomp")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert int(pre_stop[1]) + args.grace + PREEMPTION_MARGIN_S < budget


def test_replicas_share_the_redis_kv_store() -> None:
    args = build_parser().parse_args(server_container()["args"])
    redis = one("Service", "ctxcomp-redis")
    assert args.kv_store == f"redis://{redis['metadata']['name']}:{redis['spec']['ports'][0]['port']}/0"


def test_selectors_and_targets_meet() -> None:
    server = one("Deployment", "ctxcomp")
    labels = server["spec"]["template"]["metadata"]["labels"]
    assert server["spec"]["selector"]["matchLabels"] == labels
    for selector in (one("Service", "ctxcomp")["spec"]["selector"], one("Service", "ctxcomp-headless")["spec"]["selector"],
                     one("PodDisruptionBudget", "ctxcomp")["spec"]["selector"]["matchLabels"]):
        assert selector == labels
    target = one("HorizontalPodAutoscaler", "ctxcomp")["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", "ctxcomp")
    redis_pods = one("Deployment", "ctxcomp-redis")["spec"]["template"]["metadata"]["labels"]
    assert one("Service", "ctxcomp-redis")["spec"]["selector"] == redis_pods
    allowed = one("NetworkPolicy", "ctxcomp-redis")["spec"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"]
    assert allowed == labels



def test_metrics_are_scraped_from_the_monitoring_namespace_only_and_the_precision_is_pinned() -> None:
    """/metrics counts every tenant's traffic; replicas of one deployment run one encoder form."""
    rules = one("NetworkPolicy", "ctxcomp-server")["spec"]["ingress"]
    open_ports = [port["port"] for rule in rules if "from" not in rule for port in rule["ports"]]
    assert 9090 not in open_ports and 50051 in open_ports
    (metrics,) = [rule for rule in rules if any(port["port"] == 9090 for port in rule["ports"])]
    assert metrics["from"] == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]
    args = one("Deployment", "ctxcomp")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert any(arg.startswith("--precision=") and arg != "--precision=auto" for arg in args)
