"""What tests/test_deploy.py and tests/test_deploy_multi_model.py share: where the deployment files are,
the metric names the services export, and reading PromQL out of the dashboard, the alerting rules and
the autoscaler."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
DEPLOY = REPO_ROOT / "deploy"
K8S = DEPLOY / "k8s"
MONITORING = DEPLOY / "monitoring"
DASHBOARD = MONITORING / "indextts2-dashboard.json"
PROMETHEUS_RULE = MONITORING / "prometheus-rule.yaml"
KUSTOMIZE_TARGETS = ["base", "overlays/production", "overlays/shared-gpu", "overlays/s3"]
NAMESPACE = "indextts2"  # overlays/production


def _load_shared_gpu():
    """deploy/shared_gpu.py (a script, not a package module)."""
    spec = importlib.util.spec_from_file_location("deploy_shared_gpu", DEPLOY / "shared_gpu.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


shared_gpu = _load_shared_gpu()

# Triton's metrics that the dashboard, the alerts and the autoscaler read. Those in TRITON_CPU_METRICS are
# on the local tritonserver's /metrics as well (tests/test_deploy_multi_model.py checks them there);
# the GPU ones exist only on a server that sees a GPU (Triton's docs, "Metrics": GPU metrics).
TRITON_CPU_METRICS = frozenset({
    "nv_inference_request_success", "nv_inference_request_failure", "nv_inference_count",
    "nv_inference_exec_count", "nv_inference_request_duration_us", "nv_inference_queue_duration_us",
    "nv_inference_compute_input_duration_us", "nv_inference_compute_infer_duration_us",
    "nv_inference_compute_output_duration_us", "nv_inference_pending_request_count",
})
TRITON_GPU_METRICS = frozenset({"nv_gpu_utilization", "nv_gpu_memory_total_bytes", "nv_gpu_memory_used_bytes"})
# The s2mel model's own metrics (model_repository/s2mel/1/model.py), on Triton's /metrics.
S2MEL_METRICS = frozenset({
    "s2mel_batch_padding_waste_bucket", "s2mel_batch_padding_waste_sum", "s2mel_batch_padding_waste_count",
    "s2mel_batch_frames_total", "s2mel_requests_stopped_total",
})
# Not ours: Prometheus' own `up`, and kube-state-metrics' container state (the OOM-kill alert).
EXTERNAL_METRICS = frozenset({
    "up", "kube_pod_container_status_last_terminated_reason", "kube_pod_container_status_restarts_total",
})


def orchestrator_metric_names() -> set[str]:
    """The sample names the orchestrator exports (orchestrator/metrics.py), by metric type."""
    from orchestrator.metrics import ServiceMetrics

    suffixes = {"counter": ["_total", "_created"], "histogram": ["_bucket", "_sum", "_count", "_created"],
                "gauge": [""], "summary": ["", "_sum", "_count", "_created"]}
    return {family.name + suffix for family in ServiceMetrics().registry.collect()
            for suffix in suffixes[family.type]}


def known_metric_names() -> set[str]:
    return orchestrator_metric_names() | TRITON_CPU_METRICS | TRITON_GPU_METRICS | S2MEL_METRICS | EXTERNAL_METRICS


# --- PromQL in the deployment files ----------------------------------------------------------------------

GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m"}


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, expr) of every target of every panel, Grafana's interval variables substituted."""
    dashboard = json.loads(DASHBOARD.read_text())
    queries = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for variable, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(variable, value)
            queries.append((panel["title"], expr))
    return queries


def rule_queries() -> list[tuple[str, str]]:
    rule = yaml.safe_load(PROMETHEUS_RULE.read_text())
    return [(entry.get("alert") or entry.get("record"), entry["expr"])
            for group in rule["spec"]["groups"] for entry in group["rules"]]


def scaledobject_queries(documents: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(f'{document["metadata"]["name"]}/{trigger.get("name")}', trigger["metadata"]["query"])
            for document in documents if document.get("kind") == "ScaledObject"
            for trigger in document["spec"]["triggers"] if trigger["type"] == "prometheus"]


def metric_names(expr: str) -> set[str]:
    """Every metric an expression selects (parsed by promql-parser, which raises on a syntax error)."""
    import promql_parser

    names: set[str] = set()

    def visit(node: Any) -> bool:
        if isinstance(node, promql_parser.VectorSelector):
            name = node.name or next((m.value for m in node.matchers.matchers if m.name == "__name__"), None)
            names.add(name)
        return True

    promql_parser.walk(promql_parser.parse(expr), visit)
    return names


# --- Kubernetes manifests ------------------------------------------------------------------------------------

def yaml_documents(path: Path) -> list[dict[str, Any]]:
    return [document for document in yaml.safe_load_all(path.read_text()) if document]


def patch_files() -> set[Path]:
    """Files the kustomizations apply as patches (partial objects, checked in their built form)."""
    patches = set()
    for kustomization in [*K8S.rglob("kustomization.yaml"), MONITORING / "kustomization.yaml"]:
        for patch in yaml.safe_load(kustomization.read_text()).get("patches", []):
            if "path" in patch:
                patches.add((kustomization.parent / patch["path"]).resolve())
    return patches


def manifest_files() -> Iterator[Path]:
    """Every Kubernetes object file under deploy/k8s and deploy/monitoring (kustomization and patch files
    aside)."""
    patches = patch_files()
    for root in (K8S, MONITORING):
        for path in sorted(root.rglob("*.yaml")):
            if path.name != "kustomization.yaml" and path.resolve() not in patches:
                yield path


def kustomize_command() -> list[str] | None:
    """`kustomize build` or `kubectl kustomize` (kubectl bundles kustomize), whichever is installed."""
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    return None


def kustomize_build(target: str) -> list[dict[str, Any]]:
    command = kustomize_command()
    assert command is not None
    result = subprocess.run([*command, str(K8S / target)], check=False, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"{' '.join(command)} {target} failed:\n{result.stderr}"
    return [document for document in yaml.safe_load_all(result.stdout) if document]


def triton_container(documents: list[dict[str, Any]]) -> dict[str, Any]:
    deployment = next(d for d in documents if d["kind"] == "Deployment" and d["metadata"]["name"] == "indextts2-triton")
    return next(c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "triton")


def shared_gpu_triton_args() -> list[str]:
    """The arguments components/shared-gpu adds to tritonserver's (read from its JSON patch)."""
    component = yaml.safe_load((K8S / "components" / "shared-gpu" / "kustomization.yaml").read_text())
    operations = yaml.safe_load(component["patches"][0]["patch"])
    return [operation["value"] for operation in operations
            if operation["op"] == "add" and operation["path"].endswith("/args/-")]


def base_triton_args() -> list[str]:
    deployment = yaml_documents(K8S / "base" / "triton-deployment.yaml")[0]
    return list(deployment["spec"]["template"]["spec"]["containers"][0]["args"])


def flag_value(args: list[str], flag: str) -> str | None:
    values = [arg.split("=", 1)[1] for arg in args if arg.startswith(flag + "=")]
    return values[-1] if values else None


def seconds(duration: str) -> float:
    """A compose duration ("150s", "1m30s", "2gb" is not one) in seconds."""
    total, units = 0.0, {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", duration)
    assert parts and "".join(a + b for a, b in parts) == duration, f"not a duration: {duration!r}"
    for amount, unit in parts:
        total += float(amount) * units[unit]
    return total
