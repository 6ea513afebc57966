"""The s2mel Python model, served by a real local tritonserver: batching concurrent requests of
different lengths gives each what it gets alone, in batches formed by cost within the padding limit;
the served DiT (BLS) gives what the in-process one does; a request whose caller is gone (deadline
passed, call cancelled) is answered at once and stops costing compute."""

from __future__ import annotations

import contextlib
import re
import shutil
import threading
import time

import httpx
import numpy as np
import pytest
import torch

grpcclient = pytest.importorskip("tritonclient.grpc")
from triton_models import inference_statistics
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from export.repository import COMMITTED_REPOSITORY
from indextts2.checkpoint_dir import load_networks
from indextts2.engine.s2mel_batch import S2MelBatcher, S2MelRequest, padding_waste


@pytest.fixture(scope="module")
def s2mel_server(triton_server):
    return triton_server


# On a CPU the served s2mel runs each request alone (frame_budget_cpu 0: see its config.pbtxt). Its
# padded batches are tested on a copy that batches on a CPU too, loaded next to it for this module.
BY_COST = "s2mel_by_cost"
BY_COST_FRAME_BUDGET = 1024


def _served_copy(server, name: str, pattern: str, replacement: str):
    """Load a copy of the session's s2mel as `name`, its config changed where `pattern` (one line) matches;
    unload it on exit."""
    repository = server.model_repository
    shutil.copytree(repository / "s2mel", repository / name, ignore=shutil.ignore_patterns("__pycache__"))
    config = (repository / name / "config.pbtxt").read_text().replace('name: "s2mel"', f'name: "{name}"')
    config, found = re.subn(pattern, replacement, config, flags=re.MULTILINE)
    assert found == 1
    (repository / name / "config.pbtxt").write_text(config)
    client = grpcclient.InferenceServerClient(server.grpc_url)
    client.load_model(name)
    yield name
    client.unload_model(name)


@pytest.fixture(scope="module")
def by_cost_model(s2mel_server) -> str:
    yield from _served_copy(s2mel_server, BY_COST, r'(key: "frame_budget_cpu" value: \{ string_value: )"\d+"',
                            rf'\1"{BY_COST_FRAME_BUDGET}"')


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


def _infer(url: str, request: S2MelRequest, model: str = "s2mel", deadline_unix_ms: int | None = None,
           **options) -> np.ndarray:
    """One call; `options` go to tritonclient's infer (e.g. client_timeout)."""
    arrays = {
        "semantic_codes": request.codes.numpy(), "code_latents": request.latents.numpy(),
        "prompt_condition": request.prompt_condition.numpy(), "ref_mel": request.ref_mel.numpy(),
        "speaker_style": request.style.numpy(),
        "duration_ratio": np.array([request.duration_ratio], dtype=np.float32),
        "diffusion_steps": np.array([request.diffusion_steps], dtype=np.int32),
        "cfg_rate": np.array([request.cfg_rate], dtype=np.float32),
        "seed": np.array([request.seed], dtype=np.int64),
    }
    if deadline_unix_ms is not None:
        arrays["deadline_unix_ms"] = np.array([deadline_unix_ms], dtype=np.int64)
    inputs = []
    for name, array in arrays.items():
        tensor = grpcclient.InferInput(name, [1, *array.shape], np_to_triton_dtype(array.dtype))
        tensor.set_data_from_numpy(array[None])
        inputs.append(tensor)
    client = grpcclient.InferenceServerClient(url)
    return client.infer(model, inputs, **options).as_numpy("mel")[0]


def _s2mel_metrics(server, model: str = "s2mel") -> dict[str, float]:
    """The s2mel series of `model` on Triton's /metrics, keyed by name and labels other than model/version."""
    values = {}
    for line in httpx.get(server.metrics_url, timeout=10).text.splitlines():
        match = re.match(r'^(s2mel_\w+)\{(.*)\} (\S+)$', line)
        if match and f'model="{model}"' in match[2].split(","):
            labels = ",".join(sorted(label for label in match[2].split(",")
                                     if not label.startswith(("model=", "version="))))
            values[f"{match[1]}{{{labels}}}"] = float(match[3])
    return values


def _grown(before: dict[str, float], after: dict[str, float], key: str) -> float:
    return after.get(key, 0.0) - before.get(key, 0.0)


def _parameters(server, model: str) -> dict[str, str]:
    client = grpcclient.InferenceServerClient(server.grpc_url)
    config = client.get_model_config(model, as_json=True)["config"]
    return {key: value["string_value"] for key, value in config["parameters"].items()}


# A request whose full run takes many minutes on any CPU (the demo DiT, ~400 frames, 20000 steps): a
# test that sees it end within seconds sees it stopped.
LONG_STEPS = 20_000


def _long_request(seed: int) -> S2MelRequest:
    request = _request(np.random.default_rng(seed), codes=150, prompt_frames=140, seed=seed)
    request.diffusion_steps = LONG_STEPS
    return request


def _abandoned_call(url: str, request: S2MelRequest, after_s: float, model: str = "s2mel") -> threading.Thread:
    """A call (on its own thread) whose client gives up after `after_s` seconds (its gRPC deadline)."""
    def call() -> None:
        with contextlib.suppress(InferenceServerException):
            _infer(url, request, model, client_timeout=after_s)

    thread = threading.Thread(target=call)
    thread.start()
    return thread


def _infer_together(url: str, requests: list[S2MelRequest], model: str) -> tuple[list[np.ndarray], S2MelRequest]:
    """Send `requests` at once while a blocker holds the model until its client gives up, so that all of
    them wait and reach the model in one `execute`. Returns their mel and the blocker (which ran too)."""
    blocker = _long_request(seed=99)
    blocking = _abandoned_call(url, blocker, after_s=2.0, model=model)
    time.sleep(0.5)
    served: dict[int, np.ndarray] = {}
    threads = [threading.Thread(target=lambda i=i: served.__setitem__(i, _infer(url, requests[i], model)))
               for i in range(len(requests))]
    for thread in threads:
        thread.start()
    for thread in [blocking, *threads]:
        thread.join(timeout=300)
    return [served[i] for i in range(len(requests))], blocker


def test_served_s2mel_equals_the_batcher_run_in_process(s2mel_server, demo_networks):
    request = _request(np.random.default_rng(0), codes=17, prompt_frames=40, seed=3)
    expected = S2MelBatcher(demo_networks.s2mel, demo_networks.semantic_codec).run([request])[0]
    served = _infer(s2mel_server.grpc_url, request)
    assert served.shape == (80, round(17 * 1.72))
    np.testing.assert_allclose(served, expected.numpy(), atol=1e-4)


def test_concurrent_requests_of_different_lengths_each_get_what_they_get_alone(s2mel_server, by_cost_model, demo_networks):
    rng = np.random.default_rng(1)
    requests = [_request(rng, codes=10 + 7 * i, prompt_frames=30 + 11 * i, seed=i) for i in range(4)]
    requests[2].duration_ratio = 1.25
    batcher = S2MelBatcher(demo_networks.s2mel, demo_networks.semantic_codec)
    alone = [batcher.run([r])[0].numpy() for r in requests]
    before = inference_statistics(s2mel_server, by_cost_model)
    served, _ = _infer_together(s2mel_server.grpc_url, requests, by_cost_model)
    after = inference_statistics(s2mel_server, by_cost_model, int(before.get("inference_count", 0)) + 1 + len(requests))
    for i, expected in enumerate(alone):
        np.testing.assert_allclose(served[i], expected, atol=1e-4, err_msg=f"request {i}")
    assert served[2].shape[1] == round(24 * 1.72 * 1.25)
    executions = int(after["execution_count"]) - int(before.get("execution_count", 0))
    assert executions < 1 + len(requests), "s2mel was handed every request alone"


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


def test_batcher_gives_none_for_a_request_gone_mid_run_and_the_others_their_solo_result(demo_networks):
    rng = np.random.default_rng(5)
    requests = [_request(rng, codes=14 + 3 * i, prompt_frames=25 + 9 * i, seed=i) for i in range(3)]
    batcher = S2MelBatcher(demo_networks.s2mel, demo_networks.semantic_codec)
    alone = [batcher.run([r])[0] for r in requests]
    asked = []

    def rows_gone() -> list[bool]:
        asked.append(1)
        return [False, len(asked) > 2, False]  # request 1's caller leaves after two steps

    results = batcher.run(requests, rows_gone=rows_gone)
    assert results[1] is None
    for i in (0, 2):
        np.testing.assert_allclose(results[i].numpy(), alone[i].numpy(), atol=1e-4)


def test_a_mix_of_prompt_lengths_is_batched_by_cost_within_the_padding_limit(s2mel_server, by_cost_model, demo_networks):
    limit = float(_parameters(s2mel_server, by_cost_model)["max_padding_waste"])
    # Prompts of three lengths, long and short interleaved: one batch in arrival order pads too much.
    rng = np.random.default_rng(6)
    requests = [_request(rng, codes=20, prompt_frames=p, seed=i) for i, p in enumerate([100, 30, 104, 60, 32, 62])]
    assert padding_waste([r.frames for r in requests]) > limit
    batcher = S2MelBatcher(demo_networks.s2mel, demo_networks.semantic_codec)
    alone = [batcher.run([r])[0].numpy() for r in requests]
    before = _s2mel_metrics(s2mel_server, by_cost_model)
    served, blocker = _infer_together(s2mel_server.grpc_url, requests, by_cost_model)
    after = _s2mel_metrics(s2mel_server, by_cost_model)
    for i, expected in enumerate(alone):
        np.testing.assert_allclose(served[i], expected, atol=1e-4, err_msg=f"request {i}")
    batches = _grown(before, after, "s2mel_batch_padding_waste_count{}")
    assert 1 + 2 <= batches < 1 + len(requests), "the six ran as one padded batch, or each alone"
    assert _grown(before, after, f's2mel_batch_padding_waste_bucket{{le="{limit:g}"}}') == batches, \
        "a batch padded beyond the limit"
    padded = _grown(before, after, 's2mel_batch_frames_total{kind="padded"}')
    real = _grown(before, after, 's2mel_batch_frames_total{kind="real"}')
    assert real == blocker.frames + sum(r.frames for r in requests)
    assert padded / real - 1 <= limit


def test_on_a_cpu_the_default_runs_each_request_alone(s2mel_server, demo_networks):
    assert _parameters(s2mel_server, "s2mel")["frame_budget_cpu"] == "0"
    rng = np.random.default_rng(13)
    requests = [_request(rng, codes=20, prompt_frames=p, seed=i) for i, p in enumerate([60, 30, 62, 32])]
    batcher = S2MelBatcher(demo_networks.s2mel, demo_networks.semantic_codec)
    alone = [batcher.run([r])[0].numpy() for r in requests]
    before = _s2mel_metrics(s2mel_server)
    served: dict[int, np.ndarray] = {}
    threads = [threading.Thread(target=lambda i=i: served.__setitem__(i, _infer(s2mel_server.grpc_url, requests[i])))
               for i in range(len(requests))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    after = _s2mel_metrics(s2mel_server)
    for i, expected in enumerate(alone):
        np.testing.assert_allclose(served[i], expected, atol=1e-4, err_msg=f"request {i}")
    assert _grown(before, after, "s2mel_batch_padding_waste_count{}") == len(requests)
    assert _grown(before, after, 's2mel_batch_frames_total{kind="padded"}') == sum(r.frames for r in requests)


def test_a_request_past_its_deadline_is_refused_at_once_and_never_runs(s2mel_server):
    request = _request(np.random.default_rng(7), codes=30, prompt_frames=50, seed=1)
    before = _s2mel_metrics(s2mel_server)
    started = time.monotonic()
    with pytest.raises(InferenceServerException, match="s2mel: deadline exceeded"):
        _infer(s2mel_server.grpc_url, request, deadline_unix_ms=int(time.time() * 1000) - 1)
    assert time.monotonic() - started < 5
    after = _s2mel_metrics(s2mel_server)
    assert _grown(before, after, 's2mel_requests_stopped_total{reason="deadline_exceeded"}') == 1
    assert _grown(before, after, 's2mel_batch_frames_total{kind="real"}') == 0  # no diffusion step ran


def test_a_request_whose_deadline_passes_mid_run_stops_at_the_next_step(s2mel_server):
    request = _long_request(seed=8)
    before = _s2mel_metrics(s2mel_server)
    started = time.monotonic()
    with pytest.raises(InferenceServerException, match="s2mel: deadline exceeded"):
        _infer(s2mel_server.grpc_url, request, deadline_unix_ms=int(time.time() * 1000) + 1500, client_timeout=60)
    assert time.monotonic() - started < 30, f"a {LONG_STEPS}-step run was not stopped"
    after = _s2mel_metrics(s2mel_server)
    assert _grown(before, after, 's2mel_batch_frames_total{kind="real"}') == request.frames  # it had started
    assert _grown(before, after, 's2mel_requests_stopped_total{reason="deadline_exceeded"}') == 1


def test_a_cancelled_call_frees_the_model_at_the_next_step(s2mel_server):
    before = _s2mel_metrics(s2mel_server)
    with pytest.raises(InferenceServerException, match="Deadline Exceeded"):  # the client's gRPC deadline
        _infer(s2mel_server.grpc_url, _long_request(seed=9), client_timeout=1.5)
    # One model instance: the next request runs only once the abandoned one has stopped.
    started = time.monotonic()
    small = _request(np.random.default_rng(10), codes=12, prompt_frames=20, seed=0)
    assert _infer(s2mel_server.grpc_url, small, client_timeout=60).shape == (80, round(12 * 1.72))
    assert time.monotonic() - started < 30, f"the abandoned {LONG_STEPS}-step run kept the model"
    after = _s2mel_metrics(s2mel_server)
    assert _grown(before, after, 's2mel_requests_stopped_total{reason="cancelled"}') == 1


def test_a_client_timeout_rejects_a_request_still_waiting_in_the_queue(s2mel_server):
    # Triton's queue policy (allow_timeout_override): the request's own `timeout`, in microseconds.
    before = _s2mel_metrics(s2mel_server)
    blocker = _long_request(seed=11)
    blocking = _abandoned_call(s2mel_server.grpc_url, blocker, after_s=4.0)
    time.sleep(0.5)
    waiting = _request(np.random.default_rng(12), codes=12, prompt_frames=20, seed=0)
    with pytest.raises(InferenceServerException, match="Request timeout expired"):
        _infer(s2mel_server.grpc_url, waiting, timeout=200_000)
    blocking.join(timeout=60)
    after = _s2mel_metrics(s2mel_server)
    # Only the blocker ran: the waiting request never reached the model.
    assert _grown(before, after, 's2mel_batch_frames_total{kind="real"}') == blocker.frames


# --- the shipped config: two instances ---

TWO_INSTANCES = "s2mel_two_instances"
SHIPPED_CONFIG = COMMITTED_REPOSITORY / "s2mel" / "config.pbtxt"


@pytest.fixture(scope="module")
def two_instance_model(s2mel_server) -> str:
    """A copy of the session's s2mel (one instance, see conftest) with the shipped instance_group."""
    shipped = [line for line in SHIPPED_CONFIG.read_text().splitlines() if line.startswith("instance_group")]
    assert shipped == ["instance_group [ { count: 2 } ]"]
    yield from _served_copy(s2mel_server, TWO_INSTANCES, r"^instance_group .*$", shipped[0])


def test_the_shipped_second_instance_serves_while_the_first_is_held(s2mel_server, two_instance_model, demo_networks):
    """With one instance, a request that waits behind a long one is rejected unrun when its queue timeout
    runs out (test_a_client_timeout_rejects_a_request_still_waiting_in_the_queue). With the shipped two, it
    runs on the other instance meanwhile and gets its solo result; both instances count in s2mel's
    metrics."""
    blocker = _long_request(seed=21)
    request = _request(np.random.default_rng(22), codes=12, prompt_frames=20, seed=0)
    alone = S2MelBatcher(demo_networks.s2mel, demo_networks.semantic_codec).run([request])[0].numpy()
    before = _s2mel_metrics(s2mel_server, two_instance_model)
    blocking = _abandoned_call(s2mel_server.grpc_url, blocker, after_s=15.0, model=two_instance_model)
    time.sleep(1.0)
    served = _infer(s2mel_server.grpc_url, request, two_instance_model, timeout=5_000_000, client_timeout=60)
    blocking.join(timeout=60)
    np.testing.assert_allclose(served, alone, atol=1e-4)
    deadline = time.monotonic() + 30  # the held instance stops at its next diffusion step
    while True:
        after = _s2mel_metrics(s2mel_server, two_instance_model)
        stopped = _grown(before, after, 's2mel_requests_stopped_total{reason="cancelled"}')
        if stopped or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert stopped == 1
    assert _grown(before, after, 's2mel_batch_frames_total{kind="real"}') == blocker.frames + request.frames
