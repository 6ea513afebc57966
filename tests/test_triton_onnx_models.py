"""The ONNX models of the demo repository, served by a real local tritonserver, compute what ONNX
Runtime computes on the same files."""

from __future__ import annotations

import threading

import numpy as np
import onnxruntime as ort
import pytest

grpcclient = pytest.importorskip("tritonclient.grpc")
from triton_models import inference_statistics
from tritonclient.utils import np_to_triton_dtype

ONNX_MODELS = [
    "semantic_encoder", "semantic_codec", "campplus", "speaker_conditioner", "emotion_conditioner",
    "length_regulator", "s2mel_estimator", "vocoder",
]


@pytest.fixture(scope="module")
def onnx_server(triton_server):
    return triton_server


def _inputs(name: str, rng: np.random.Generator, dims: dict[str, int]) -> dict[str, np.ndarray]:
    """One request's inputs (batch 1), shaped as the orchestrator sends them."""
    frames = 29
    semantic = rng.standard_normal((1, frames, dims["semantic"])).astype(np.float32)
    lengths = np.array([[frames]], dtype=np.int64)
    if name == "semantic_encoder":
        return {"input_features": rng.standard_normal((1, frames, 160)).astype(np.float32),
                "attention_mask": np.ones((1, frames), dtype=np.int64)}
    if name == "semantic_codec":
        return {"semantic_features": semantic}
    if name == "campplus":
        return {"fbank": rng.standard_normal((1, 120, 80)).astype(np.float32)}
    if name in ("speaker_conditioner", "emotion_conditioner"):
        return {"semantic_features": semantic, "feature_lengths": lengths}
    if name == "length_regulator":
        return {"semantic_content": semantic, "content_lengths": lengths,
                "target_lengths": np.array([[50]], dtype=np.int64)}
    if name == "s2mel_estimator":
        return {"noisy_mel": rng.standard_normal((1, 80, frames)).astype(np.float32),
                "prompt_mel": rng.standard_normal((1, 80, frames)).astype(np.float32),
                "mel_lengths": lengths, "timestep": np.array([[0.4]], dtype=np.float32),
                "speaker_style": rng.standard_normal((1, 192)).astype(np.float32),
                "mel_condition": rng.standard_normal((1, frames, dims["condition"])).astype(np.float32)}
    if name == "vocoder":
        return {"mel": rng.standard_normal((1, 80, 13)).astype(np.float32)}
    raise KeyError(name)


def _infer(client, model: str, inputs: dict[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]:
    tensors = []
    for name, array in inputs.items():
        tensor = grpcclient.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
        tensor.set_data_from_numpy(array)
        tensors.append(tensor)
    result = client.infer(model, tensors, outputs=[grpcclient.InferRequestedOutput(n) for n in outputs])
    return {name: result.as_numpy(name) for name in outputs}


def _direct(path, inputs: dict[str, np.ndarray]) -> tuple[list[str], list[np.ndarray]]:
    """ONNX Runtime on the same file; (B, 1) lengths become the (B,) vectors the graph takes."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {}
    for node in session.get_inputs():
        array = inputs[node.name]
        feeds[node.name] = array.reshape(-1) if len(node.shape) == 1 else array
    names = [node.name for node in session.get_outputs()]
    return names, session.run(names, feeds)


@pytest.mark.parametrize("model", ONNX_MODELS)
def test_served_onnx_model_matches_onnxruntime(onnx_server, demo_repository, model):
    dims = {"semantic": 64, "condition": 32}  # the demo preset's widths
    inputs = _inputs(model, np.random.default_rng(7), dims)
    names, expected = _direct(demo_repository.repository / model / "1" / "model.onnx", inputs)
    client = grpcclient.InferenceServerClient(onnx_server.grpc_url)
    served = _infer(client, model, inputs, names)
    for name, want in zip(names, expected, strict=True):
        np.testing.assert_allclose(served[name], want, rtol=1e-5, atol=1e-5, err_msg=f"{model}/{name}")


def test_concurrent_requests_are_batched_by_the_dynamic_batcher(onnx_server):
    model = "vocoder"
    rng = np.random.default_rng(3)
    mels = [rng.standard_normal((1, 80, 13)).astype(np.float32) for _ in range(8)]
    before = inference_statistics(onnx_server, model)
    results: dict[int, np.ndarray] = {}

    def call(index: int) -> None:
        client = grpcclient.InferenceServerClient(onnx_server.grpc_url)
        results[index] = _infer(client, model, {"mel": mels[index]}, ["waveform"])["waveform"]

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(mels))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    after = inference_statistics(onnx_server, model, int(before.get("inference_count", 0)) + len(mels))

    session = ort.InferenceSession(str(onnx_server.model_repository / model / "1" / "model.onnx"))
    for index, mel in enumerate(mels):
        np.testing.assert_allclose(results[index], session.run(None, {"mel": mel})[0], atol=1e-5)
    inferences = int(after["inference_count"]) - int(before.get("inference_count", 0))
    executions = int(after["execution_count"]) - int(before.get("execution_count", 0))
    assert inferences == len(mels)
    assert executions < inferences, "the dynamic batcher ran every request alone"
