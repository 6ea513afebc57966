"""The s2mel Python model, served by a real local tritonserver: batching concurrent requests of
different lengths gives each what it gets alone; the served DiT (BLS) gives what the in-process one does."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

grpcclient = pytest.importorskip("tritonclient.grpc")
from tritonclient.utils import np_to_triton_dtype

from indextts2.checkpoint_dir import load_networks
from indextts2.engine.s2mel_batch import S2MelBatcher, S2MelRequest


@pytest.fixture(scope="module")
def s2mel_server(triton_server):
    return triton_server


@pytest.fixture(scope="module")
def demo_networks(demo_checkpoint):
    return load_networks(demo_checkpoint)


def _request(rng: np.random.Generator, codes: int, prompt_frames: int, seed: int) -> S2MelRequest:
    return S2MelRequest(
        codes=torch.from_numpy(rng.integers(0, 256, codes)),
        latents=torch.from_numpy(rng.standard_normal((codes, 64)).astype(np.float32)),
        prompt_condition=torch.from_numpy(rng.standard_normal((prompt_frames, 32)).astype(np.float32)),
        ref_mel=torch.from_numpy(rng.standard_normal((80, prompt_frames)).astype(np.float32)),
        style=torch.from_numpy(rng.standard_normal(192).astype(np.float32)),
        diffusion_steps=4, seed=seed,
    )


def _infer(url: str, request: S2MelRequest, model: str = "s2mel") -> np.ndarray:
    arrays = {
        "semantic_codes": request.codes.numpy(), "code_latents": request.latents.numpy(),
        "prompt_condition": request.prompt_condition.numpy(), "ref_mel": request.ref_mel.numpy(),
        "speaker_style": request.style.numpy(),
        "duration_ratio": np.array([request.duration_ratio], dtype=np.float32),
        "diffusion_steps": np.array([request.diffusion_steps], dtype=np.int32),
        "cfg_rate": np.array([request.cfg_rate], dtype=np.float32),
        "seed": np.array([request.seed], dtype=np.int64),
    }
    inputs = []
    for name, array in arrays.items():
        tensor = grpcclient.InferInput(name, [1, *array.shape], np_to_triton_dtype(array.dtype))
        tensor.set_data_from_numpy(array[None])
        inputs.append(tensor)
    client = grpcclient.InferenceServerClient(url)
    return client.infer(model, inputs).as_numpy("mel")[0]


def test_served_s2mel_equals_the_batcher_run_in_process(s2mel_server, demo_networks):
    request = _request(np.random.default_rng(0), codes=17, prompt_frames=40, seed=3)
    expected = S2MelBatcher(demo_networks.s2mel, demo_networks.semantic_codec).run([request])[0]
    served = _infer(s2mel_server.grpc_url, request)
    assert served.shape == (80, round(17 * 1.72))
    np.testing.assert_allclose(served, expected.numpy(), atol=1e-4)


def test_concurrent_requests_of_different_lengths_each_get_what_they_get_alone(s2mel_server, demo_networks):
    rng = np.random.default_rng(1)
    requests = [_request(rng, codes=10 + 7 * i, prompt_frames=30 + 11 * i, seed=i) for i in range(4)]
    requests[2].duration_ratio = 1.25
    batcher = S2MelBatcher(demo_networks.s2mel, demo_networks.semantic_codec)
    alone = [batcher.run([r])[0].numpy() for r in requests]
    client = grpcclient.InferenceServerClient(s2mel_server.grpc_url)
    before = client.get_inference_statistics("s2mel", as_json=True)["model_stats"][0]
    served: dict[int, np.ndarray] = {}
    threads = [threading.Thread(target=lambda i=i: served.__setitem__(i, _infer(s2mel_server.grpc_url, requests[i])))
               for i in range(len(requests))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    after = client.get_inference_statistics("s2mel", as_json=True)["model_stats"][0]
    for i, expected in enumerate(alone):
        np.testing.assert_allclose(served[i], expected, atol=1e-4, err_msg=f"request {i}")
    assert served[2].shape[1] == round(24 * 1.72 * 1.25)
    executions = int(after["execution_count"]) - int(before.get("execution_count", 0))
    assert executions < len(requests), "s2mel ran every request alone"


def test_a_bad_request_gets_an_error_and_the_server_keeps_serving(s2mel_server):
    rng = np.random.default_rng(2)
    bad = _request(rng, codes=12, prompt_frames=20, seed=0)
    bad.latents = bad.latents[:5]
    with pytest.raises(Exception, match="code_latents must be"):
        _infer(s2mel_server.grpc_url, bad)
    good = _request(rng, codes=12, prompt_frames=20, seed=0)
    assert _infer(s2mel_server.grpc_url, good).shape == (80, round(12 * 1.72))


def test_served_estimator_gives_the_in_process_result(s2mel_server):
    request = _request(np.random.default_rng(4), codes=15, prompt_frames=33, seed=9)
    in_process = _infer(s2mel_server.grpc_url, request, "s2mel")
    via_bls = _infer(s2mel_server.grpc_url, request, "s2mel_bls")
    np.testing.assert_allclose(via_bls, in_process, atol=1e-4)
