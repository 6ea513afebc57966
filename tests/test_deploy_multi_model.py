"""Our repository merged into one that holds another team's model, on the real local tritonserver started
with the arguments of the Kubernetes deployment for a shared GPU (deploy/k8s: base + components/shared-gpu):
Triton loads our models' configs/shared_gpu.pbtxt (written by deploy/shared_gpu.py) (rate limiter resources, memory caps, a smaller decoder
cache) and the other model's config.pbtxt, runs both side by side, each answering correctly, with the
rate limiter on; and the service's graceful shutdown (SIGTERM: requests in flight finish, new connections
are refused) that the deployment's grace periods rely on.

The local server is tritonserver 2.51 on the CPU (nvidia-pytriton): the rate limiter's resources are
accepted and scheduling runs through it, but what it buys on a GPU is not measured here."""

from __future__ import annotations

import io
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request

import httpx
import numpy as np
import pytest
import soundfile
from deploy_checks import (
    TRITON_CPU_METRICS,
    base_triton_args,
    dashboard_queries,
    metric_names,
    rule_queries,
    shared_gpu,
    shared_gpu_triton_args,
)
from service_client import demo_settings, service_client

pytest.importorskip("pytriton", reason="nvidia-pytriton (which ships tritonserver) is not installed")
grpcclient = pytest.importorskip("tritonclient.grpc")
onnx = pytest.importorskip("onnx")

from indextts2.checkpoint_dir import load_networks
from indextts2.networks.gpt import SamplingConfig
from indextts2.pipeline import EagerPipeline
from local_triton import LocalTritonServer, find_free_port
from orchestrator.testing import speech_like_wav
from orchestrator.triton_client import PIPELINE_MODELS

OTHER_MODEL = "other_team_scorer"
OTHER_CONFIG = f"""
name: "{OTHER_MODEL}"
backend: "onnxruntime"
max_batch_size: 4
input [ {{ name: "features" data_type: TYPE_FP32 dims: [ 6 ] }} ]
output [ {{ name: "scores" data_type: TYPE_FP32 dims: [ 3 ] }} ]
dynamic_batching {{ max_queue_delay_microseconds: 1000 }}
# Another team's model taking turns on the GPU with ours: it asks for the same resource.
instance_group [ {{ count: 1 rate_limiter {{ resources [ {{ name: "{shared_gpu.RESOURCE}" count: 1 }} ] priority: 1 }} }} ]
"""
WEIGHTS = np.arange(18, dtype=np.float32).reshape(6, 3) / 10 - 0.8
BIAS = np.array([0.5, -0.25, 0.1], dtype=np.float32)
# The connection age the test server uses: short, so that the requests below outlive several connections.
TEST_MAX_CONNECTION_AGE_MS = 1000
# Flags LocalTritonServer sets itself (repository, control mode, models to load).
LAUNCHER_FLAGS = ("--model-repository", "--model-control-mode", "--load-model")

TEXT = "Hello there. This is one request, said twice."
SEED, CODES, STEPS = 11, 30, 3
WAVEFORM_TOLERANCE = 2e-3  # as tests/test_served_equals_eager.py


def _write_other_model(directory) -> None:
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("MatMul", ["features", "W"], ["h"]), helper.make_node("Add", ["h", "B"], ["a"]),
         helper.make_node("Relu", ["a"], ["scores"])],
        "scorer",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, [None, 6])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [None, 3])],
        [numpy_helper.from_array(WEIGHTS, "W"), numpy_helper.from_array(BIAS, "B")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    (directory / "1").mkdir(parents=True)
    onnx.save(model, str(directory / "1" / "model.onnx"))
    (directory / "config.pbtxt").write_text(OTHER_CONFIG)


def _server_args() -> list[str]:
    """tritonserver's arguments in deploy/k8s (base Deployment + the shared-gpu component), less those the
    launcher sets, with the connection age shortened for the test."""
    args = [arg for arg in base_triton_args()[1:] + shared_gpu_triton_args() if not arg.startswith(LAUNCHER_FLAGS)]
    return [f"--grpc-max-connection-age={TEST_MAX_CONNECTION_AGE_MS}" if arg.startswith("--grpc-max-connection-age=")
            else arg for arg in args]


@pytest.fixture(scope="module")
def merged_repository(demo_repository, tmp_path_factory):
    repository = tmp_path_factory.mktemp("merged") / "models"
    shutil.copytree(demo_repository.repository, repository,
                    ignore=shutil.ignore_patterns("s2mel_bls", "gpt_decoder_one_slot", "__pycache__"))
    _write_other_model(repository / OTHER_MODEL)
    assert shared_gpu.main([str(repository)]) == 0  # README: deploy/shared_gpu.py on the exported repository
    assert not (repository / OTHER_MODEL / "configs").exists()
    return repository


@pytest.fixture(scope="module")
def server(merged_repository):
    args = _server_args()
    assert "--model-config-name=shared_gpu" in args and "--rate-limit=execution_count" in args
    server = LocalTritonServer(merged_repository, model_control_mode="explicit", load_models=["*"], extra_args=args)
    with server.start(timeout_s=240):  # start() returns the server, whose `with` stops it
        yield server


@pytest.fixture(scope="module")
def triton(server):
    return grpcclient.InferenceServerClient(server.grpc_url)


def _score(triton, rows: np.ndarray) -> np.ndarray:
    features = grpcclient.InferInput("features", list(rows.shape), "FP32")
    features.set_data_from_numpy(rows)
    return triton.infer(OTHER_MODEL, [features]).as_numpy("scores")


def test_the_server_accepts_the_deployments_arguments_and_loads_every_model(server, triton):
    for model in [*PIPELINE_MODELS, "s2mel_estimator", OTHER_MODEL]:
        assert triton.is_model_ready(model), model
    assert server.log_errors() == ""


def test_our_models_run_their_shared_gpu_configs_and_the_other_model_its_own(triton):
    for model, settings in shared_gpu.SETTINGS.items():
        config = triton.get_model_config(model, as_json=True)["config"]
        limiter = [group.get("rate_limiter") for group in config["instance_group"]]
        if settings.priority is None:
            assert limiter == [None], model
        else:
            assert limiter == [{"resources": [{"name": shared_gpu.RESOURCE, "count": 1}], "priority": settings.priority}], model
        if settings.gpu_mem_limit is not None:
            assert config["parameters"]["gpu_mem_limit"]["string_value"] == str(settings.gpu_mem_limit)
    assert triton.get_model_config("gpt_decoder", as_json=True)["config"]["parameters"]["max_slots"] == {"string_value": "8"}
    other = triton.get_model_config(OTHER_MODEL, as_json=True)["config"]
    assert other["instance_group"][0]["rate_limiter"]["resources"] == [{"name": shared_gpu.RESOURCE, "count": 1}]


def test_the_other_teams_model_answers_correctly_under_concurrent_load(server):
    rng = np.random.default_rng(0)
    inputs = [rng.standard_normal((int(rng.integers(1, 4)), 6)).astype(np.float32) for _ in range(24)]
    results: list[np.ndarray | None] = [None] * len(inputs)

    def call(index: int) -> None:
        results[index] = _score(grpcclient.InferenceServerClient(server.grpc_url), inputs[index])

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(inputs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    for rows, scores in zip(inputs, results, strict=False):
        np.testing.assert_allclose(scores, np.maximum(rows @ WEIGHTS + BIAS, 0), rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def client(server, demo_checkpoint, tmp_path_factory):
    settings = demo_settings(server, demo_checkpoint, tmp_path_factory.mktemp("voices"))
    with service_client(settings) as client:
        yield client


def test_our_pipeline_on_the_merged_server_equals_the_eager_pipeline_while_the_other_model_runs(
        client, server, demo_checkpoint):
    assert client.get("/readyz").status_code == 200
    stop = threading.Event()
    other_calls = []

    def other_team_traffic() -> None:
        other = grpcclient.InferenceServerClient(server.grpc_url)
        rows = np.ones((2, 6), dtype=np.float32)
        while not stop.is_set():
            np.testing.assert_allclose(_score(other, rows), np.maximum(rows @ WEIGHTS + BIAS, 0), rtol=1e-5)
            other_calls.append(1)
            time.sleep(0.05)

    traffic = threading.Thread(target=other_team_traffic, daemon=True)
    traffic.start()
    audio = speech_like_wav(6.0, seed=5)
    fields = {"text": TEXT, "do_sample": "false", "max_codes": str(CODES), "min_codes": str(CODES),
              "diffusion_steps": str(STEPS), "seed": str(SEED)}
    try:
        first = client.post("/v1/tts", data=fields, files={"speaker_audio": ("voice.wav", audio, "audio/wav")})
        # Past the server's maximum connection age: the service's channel was closed (GOAWAY) and reopened.
        time.sleep(2.5 * TEST_MAX_CONNECTION_AGE_MS / 1000)
        second = client.post("/v1/tts", data=fields, files={"speaker_audio": ("voice.wav", audio, "audio/wav")})
    finally:
        stop.set()
        traffic.join(timeout=30)
    assert first.status_code == 200, first.text
    assert second.status_code == 200, second.text
    assert len(other_calls) > 0
    served, rate = soundfile.read(io.BytesIO(first.content), dtype="float32")
    again, _ = soundfile.read(io.BytesIO(second.content), dtype="float32")
    np.testing.assert_array_equal(served, again)

    samples, sample_rate = soundfile.read(io.BytesIO(audio), dtype="float32")
    eager = EagerPipeline(load_networks(demo_checkpoint)).synthesize(
        TEXT, samples, sample_rate, sampling=SamplingConfig(do_sample=False, max_codes=CODES, min_codes=CODES),
        diffusion_steps=STEPS, seed=SEED)
    quantised = np.round(np.clip(eager.waveform, -1.0, 1.0) * 32767.0) / 32768.0
    assert rate == 22050 and served.shape == quantised.shape
    assert np.abs(served - quantised).max() <= WAVEFORM_TOLERANCE


def test_the_triton_metrics_the_dashboard_alerts_and_autoscaler_read_are_exported(server, triton):
    _score(triton, np.zeros((1, 6), dtype=np.float32))
    text = urllib.request.urlopen(server.metrics_url, timeout=10).read().decode()
    exported = {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")}
    referenced = set().union(*(metric_names(expr) for _, expr in dashboard_queries() + rule_queries()))
    triton_metrics = {name for name in referenced if name.startswith("nv_") and not name.startswith("nv_gpu_")}
    assert triton_metrics <= TRITON_CPU_METRICS
    assert triton_metrics <= exported, triton_metrics - exported
    s2mel = {name for name in referenced if name.startswith("s2mel_")}
    assert s2mel and s2mel <= exported, s2mel - exported
    assert f'model="{OTHER_MODEL}"' in text


def test_orchestrator_sigterm_finishes_the_request_in_flight_and_refuses_new_connections(server, demo_checkpoint,
                                                                                           tmp_path):
    """What the deployments' preStop hooks and grace periods assume of `python -m orchestrator`."""
    port = find_free_port()
    environment = dict(os.environ, TRITON_GRPC_URL=server.grpc_url, CHECKPOINT_DIR=str(demo_checkpoint.model_dir),
                       VOICES_DIR=str(tmp_path / "voices"), HOST="127.0.0.1", PORT=str(port), SENTRY_DSN="")
    process = subprocess.Popen([sys.executable, "-m", "orchestrator"], env=environment,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert process.poll() is None and time.monotonic() < deadline, "the orchestrator did not become ready"
            time.sleep(0.2)
        result: dict[str, object] = {}

        def synthesize() -> None:
            response = httpx.post(url + "/v1/tts", timeout=120, data={
                "text": TEXT, "do_sample": "false", "max_codes": "200", "min_codes": "200", "diffusion_steps": "20",
            }, files={"speaker_audio": ("voice.wav", speech_like_wav(6.0, seed=3), "audio/wav")})
            result["status"], result["bytes"] = response.status_code, len(response.content)

        request = threading.Thread(target=synthesize)
        request.start()
        time.sleep(1.0)  # the request is in flight (it takes several seconds on the CPU)
        assert "status" not in result, "the request finished before SIGTERM: make it longer"
        process.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        with pytest.raises(httpx.ConnectError):
            httpx.get(url + "/healthz", timeout=5)
        request.join(timeout=120)
        assert result.get("status") == 200 and result["bytes"] > 44, result
        assert process.wait(timeout=60) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal once done
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
