"""Out of memory fails the requests of the step that ran out, not the server: the decoder engine first runs
the step again on half its batch (down to one sequence), then fails the step's requests with an error
starting "out of memory"; the orchestrator answers 503 for it and the Sentry events carry gpu_model,
total_memory and current_batch_size; the next request is served. On the CPU the error is injected (the
models' `inject_oom_steps` test hook); a real CPU allocation failure is recognised too. Also here: where a
Python model instance runs (`instance_device`) and s2mel's `precision` parameter."""

from __future__ import annotations

import logging

import pytest
import sentry_sdk
import torch
from sentry_sdk.transport import Transport
from triton_models import model_event_on_trace, model_reconfigured

from indextts2.config import load_config
from indextts2.engine import DecoderEngine, DecodeRequest, SamplingConfig, StopReason
from indextts2.engine.cache import KVCacheManager
from indextts2.engine.device import (
    OUT_OF_MEMORY,
    OutOfMemoryInjection,
    instance_device,
    is_out_of_memory,
    out_of_memory_message,
    out_of_memory_tags,
)
from indextts2.engine.runner import ModelRunner
from indextts2.engine.s2mel_batch import S2MelBatcher, S2MelRequest, s2mel_autocast_dtype
from indextts2.engine.telemetry import ModelTelemetry
from indextts2.networks.gpt import UnifiedVoice, load_gpt
from orchestrator.testing import speech_like_wav

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def gpt(demo_checkpoint) -> UnifiedVoice:
    config = load_config(demo_checkpoint.model_dir / "config.yaml")
    return load_gpt(config["gpt"], demo_checkpoint.model_dir / "gpt.pth",
                    feature_dim=config["semantic_codec"]["hidden_size"])


def _request(model: UnifiedVoice, seed: int, codes: int = 12) -> DecodeRequest:
    """Sampled, exactly `codes` codes long (min_codes = max_codes), with its own seed."""
    g = torch.Generator().manual_seed(seed)
    dim = model.model_dim
    return DecodeRequest(
        speaker_latents=torch.randn(model.perceiver_encoder.latents.shape[0], dim, generator=g),
        emotion_vector=0.5 * torch.randn(dim, generator=g),
        text_ids=torch.randint(2, model.text_embedding.num_embeddings, (5 + seed % 7,), generator=g),
        sampling=SamplingConfig(do_sample=True, seed=seed, max_codes=codes, min_codes=codes),
        request_id=f"request-{seed}",
    )


def _alone(model: UnifiedVoice, request: DecodeRequest) -> list[int]:
    engine = DecoderEngine(model, max_slots=1)
    handle = engine.submit(request)
    engine.run_until_idle()
    return handle.result(timeout=0).codes.tolist()


# --- what counts as out of memory, and what the error says -------------------------------------------


def test_cuda_cpu_allocator_and_cublas_failures_are_out_of_memory_and_others_are_not():
    assert is_out_of_memory(torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert is_out_of_memory(RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling cublasCreate"))
    assert is_out_of_memory(MemoryError())
    with pytest.raises(RuntimeError) as real:  # a real failure of torch's CPU allocator
        torch.empty(2**60, dtype=torch.uint8)
    assert "can't allocate memory" in str(real.value) and is_out_of_memory(real.value)
    assert not is_out_of_memory(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
    assert not is_out_of_memory(ValueError("out of memory"))  # not an error torch raises for it


def test_the_error_starts_with_out_of_memory_and_says_the_batch_early():
    error = torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB. " + "x" * 500 + "\nmore")
    message = out_of_memory_message(8, "cuda:1", error)
    assert message.startswith(f"{OUT_OF_MEMORY} (current_batch_size=8, cuda:1): CUDA out of memory. Tried")
    assert "more" not in message and len(message) < 300  # the orchestrator keeps the first 300 characters


def test_out_of_memory_tags_on_the_cpu_name_no_gpu_and_the_ram():
    tags = out_of_memory_tags("cpu", 3)
    assert tags["gpu_model"] == "none (cpu)" and tags["current_batch_size"] == "3"
    assert tags["total_memory"].endswith(" MiB") and int(tags["total_memory"].split()[0]) > 0


def test_the_injection_raises_for_the_next_n_checks_only():
    injection = OutOfMemoryInjection(2)
    for _ in range(2):
        with pytest.raises(torch.cuda.OutOfMemoryError, match="injected"):
            injection.check("step")
    injection.check("step")  # the third runs
    with pytest.raises(ValueError):
        injection.arm(-1)


# --- the decoder engine -------------------------------------------------------------------------------


def test_decode_step_out_of_memory_runs_again_on_half_the_batch_and_every_request_gets_its_codes(gpt):
    requests = [_request(gpt, seed) for seed in range(4)]
    engine = DecoderEngine(gpt, max_slots=4)
    handles = [engine.submit(request) for request in requests]
    engine.out_of_memory_injection.arm(2)  # the first decode step: batch 4 and batch 2 run out
    engine.run_until_idle()
    # Step 1 decoded one sequence (4 -> 2 -> 1), the other three waited; then all four together.
    assert engine.stats.decode_batch_sizes[:2] == [1, 4]
    for request, handle in zip(requests, handles, strict=True):
        result = handle.result(timeout=0)
        assert result.stop_reason == StopReason.MAX_CODES, result.error
        # Waiting a step changed nothing: each sequence has the codes it gets alone.
        assert result.codes.tolist() == _alone(gpt, request)


def test_decode_step_out_of_memory_even_for_one_sequence_fails_the_steps_requests_and_the_engine_serves_on(gpt):
    engine = DecoderEngine(gpt, max_slots=4)
    handles = [engine.submit(_request(gpt, seed)) for seed in range(3)]
    engine.out_of_memory_injection.arm(3)  # batch 3, then 1 (half of 3): both run out, one injection is left
    engine.step()
    for handle in handles:
        result = handle.result(timeout=0)
        assert result.stop_reason == StopReason.ERROR
        assert result.error.startswith("out of memory (current_batch_size=3, cpu): CUDA out of memory (injected")
        assert len(result.codes) == 1  # the prefill's code was still delivered
    assert engine.num_running == 0 and engine.num_waiting == 0
    assert engine.out_of_memory_injection.remaining == 1  # 3 -> 1 -> failed: two attempts

    engine.out_of_memory_injection.arm(0)
    request = _request(gpt, seed=7)
    after = engine.submit(request)
    engine.run_until_idle()
    assert after.result(timeout=0).codes.tolist() == _alone(gpt, request)


def test_the_final_event_of_an_out_of_memory_step_carries_the_steps_batch_size(gpt):
    engine = DecoderEngine(gpt, max_slots=2)
    handles = [engine.submit(_request(gpt, seed)) for seed in range(2)]
    engine.out_of_memory_injection.arm(2)
    engine.step()
    for handle in handles:
        final = next(event for event in handle if event.finished)
        assert final.failed_batch_size == 2 and final.error.startswith(OUT_OF_MEMORY)


def test_a_real_allocation_failure_in_the_prefill_fails_that_request_as_out_of_memory(gpt, monkeypatch):
    engine = DecoderEngine(gpt, max_slots=2)

    def prefill(*args, **kwargs):
        return torch.empty(2**60, dtype=torch.uint8)  # torch's CPU allocator refuses

    monkeypatch.setattr(engine._runner, "prefill", prefill)
    failed = engine.submit(_request(gpt, seed=1))
    engine.step()
    result = failed.result(timeout=0)
    assert result.stop_reason == StopReason.ERROR
    assert result.error.startswith("out of memory (current_batch_size=1, cpu)") and "can't allocate" in result.error
    monkeypatch.undo()
    request = _request(gpt, seed=2)
    after = engine.submit(request)
    engine.run_until_idle()
    assert after.result(timeout=0).codes.tolist() == _alone(gpt, request)


def test_a_step_that_fails_otherwise_is_not_run_again(gpt, monkeypatch):
    engine = DecoderEngine(gpt, max_slots=2)
    handles = [engine.submit(_request(gpt, seed)) for seed in range(2)]
    calls = []

    def broken(*args, **kwargs):
        calls.append(1)
        raise RuntimeError("injected fault")

    monkeypatch.setattr(engine._runner, "decode", broken)
    engine.step()
    assert len(calls) == 1
    for handle in handles:
        assert handle.result(timeout=0).error == "decode step failed: injected fault"


# --- the runner: a partial step ------------------------------------------------------------------------


class _RecordingGraphs:
    """Stands in for CudaDecodeGraphs on the CPU: records that it ran."""

    def __init__(self):
        self.calls = 0

    def run(self, codes, mel_positions, cache_positions, lengths):
        self.calls += 1
        return torch.zeros(codes.shape[0], 4), codes.shape[0]


@torch.inference_mode()
def test_a_partial_step_takes_the_lowest_slots_and_never_the_cuda_graph(gpt):
    cache = KVCacheManager(gpt, 4, 64, torch.float32, "cpu")
    runner = ModelRunner(gpt, cache)
    assert runner.cuda_graphs is None  # off by default (and on a CPU in any case)
    prefix = torch.zeros(3, gpt.model_dim)
    slots = [cache.allocate() for _ in range(3)]
    for slot in slots:
        runner.prefill(slot, prefix)
    graphs = runner.cuda_graphs = _RecordingGraphs()
    # Slots 0 and 1 of the three: rows [0, 2), eagerly (the graph would pad with slot 2's row).
    hidden, rows = runner.decode([0, 1], [1, 1], [1, 1], [4, 4])
    assert rows == 2 and hidden.shape == (2, gpt.model_dim) and graphs.calls == 0
    runner.decode([0, 1, 2], [1, 1, 1], [2, 2, 2], [5, 5, 5])  # the whole span: the graph
    assert graphs.calls == 1
    # Slot 1 left out while slot 2 runs: its row would be computed as free, its cache overwritten.
    with pytest.raises(ValueError, match=r"slots \[1\] are in use"):
        runner.decode([0, 2], [1, 1], [3, 3], [6, 6])


# --- s2mel ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def s2mel_networks(demo_checkpoint):
    from indextts2.checkpoint_dir import load_networks

    networks = load_networks(demo_checkpoint)
    return networks.s2mel, networks.semantic_codec


def _s2mel_request(seed: int, codes: int = 20, prompt_frames: int = 30, steps: int = 4) -> S2MelRequest:
    g = torch.Generator().manual_seed(seed)
    return S2MelRequest(
        codes=torch.randint(0, 256, (codes,), generator=g), latents=torch.randn(codes, 64, generator=g),
        prompt_condition=torch.randn(prompt_frames, 32, generator=g),
        ref_mel=torch.randn(80, prompt_frames, generator=g), style=torch.randn(192, generator=g),
        diffusion_steps=steps, seed=seed,
    )


def test_s2mel_batch_out_of_memory_raises_once_and_the_next_batch_runs(s2mel_networks):
    batcher = S2MelBatcher(*s2mel_networks)
    batcher.out_of_memory_injection.arm(1)
    request = _s2mel_request(1, steps=2)
    with pytest.raises(torch.cuda.OutOfMemoryError):
        batcher.run([request])
    (mel,) = batcher.run([request])
    assert mel.shape == (80, request.target_frames)


def test_precision_parameter_float32_bfloat16_and_float16_only_on_cuda(caplog):
    assert s2mel_autocast_dtype("float32", "cuda:0") is None
    assert s2mel_autocast_dtype("float16", "cuda:1") == torch.float16
    assert s2mel_autocast_dtype("bfloat16", "cuda:0") == torch.bfloat16
    assert s2mel_autocast_dtype("bfloat16", "cpu") == torch.bfloat16
    with caplog.at_level(logging.WARNING, logger="indextts2.engine.s2mel_batch"):
        assert s2mel_autocast_dtype("float16", "cpu") is None  # falls back, and says so
    assert "float16 is for CUDA; on cpu s2mel runs in float32" in caplog.text
    with pytest.raises(ValueError, match="float32, float16, bfloat16"):
        s2mel_autocast_dtype("fp16", "cuda")


def test_s2mel_under_bfloat16_autocast_runs_the_dit_in_bfloat16_and_stays_close_to_float32(s2mel_networks):
    s2mel, codec = s2mel_networks
    requests = [_s2mel_request(1, codes=20, prompt_frames=30), _s2mel_request(2, codes=26, prompt_frames=24)]
    float32 = S2MelBatcher(s2mel, codec).run(requests)
    seen: list[torch.dtype] = []
    linear = next(module for module in s2mel.cfm.estimator.modules() if isinstance(module, torch.nn.Linear))
    hook = linear.register_forward_hook(lambda module, inputs, output: seen.append(output.dtype))
    try:
        bfloat16 = S2MelBatcher(s2mel, codec, autocast_dtype=torch.bfloat16).run(requests)
    finally:
        hook.remove()
    assert seen and set(seen) == {torch.bfloat16}  # the DiT ran in bfloat16, its weights untouched
    assert next(s2mel.parameters()).dtype == torch.float32

    def relative_rms(a: torch.Tensor, b: torch.Tensor) -> float:
        return float((a - b).pow(2).mean().sqrt() / b.pow(2).mean().sqrt())

    other_noise = S2MelBatcher(s2mel, codec).run([_s2mel_request(99, codes=20, prompt_frames=30)])[0]
    for half, full in zip(bfloat16, float32, strict=True):
        assert half.dtype == torch.float32 and half.shape == full.shape
        # bfloat16 keeps 8 bits of mantissa (0.4 % per value): the mel moves by about that, not more (1.7e-3
        # measured on the demo preset), while another noise seed moves it by over 100 %.
        assert 0 < relative_rms(half, full) < 0.02
    assert relative_rms(other_noise, float32[0]) > 0.5


# --- where a model instance runs ------------------------------------------------------------------------


@pytest.mark.parametrize(("args", "requested", "cuda", "expected"), [
    ({"model_instance_kind": "GPU", "model_instance_device_id": "1"}, "auto", True, "cuda:1"),
    ({"model_instance_kind": "GPU", "model_instance_device_id": "0"}, "auto", True, "cuda:0"),
    ({"model_instance_kind": "GPU", "model_instance_device_id": "1"}, "auto", False, "cpu"),  # CPU-only torch
    ({"model_instance_kind": "CPU", "model_instance_device_id": "0"}, "auto", True, "cpu"),
    ({}, "auto", True, "cpu"),
    ({"model_instance_kind": "GPU", "model_instance_device_id": "3"}, "cuda", True, "cuda:3"),
    ({"model_instance_kind": "CPU", "model_instance_device_id": "0"}, "cuda", True, "cuda:0"),
    ({"model_instance_kind": "GPU", "model_instance_device_id": "1"}, "cpu", True, "cpu"),
    ({"model_instance_kind": "GPU", "model_instance_device_id": "1"}, "cuda:0", True, "cuda:0"),  # as given
    ({"model_instance_kind": "GPU", "model_instance_device_id": "1"}, " AUTO ", True, "cuda:1"),
])
def test_each_instance_runs_on_the_gpu_triton_gave_it(args, requested, cuda, expected):
    assert instance_device(args, requested, cuda_available=cuda) == expected


def test_an_unknown_device_parameter_is_refused():
    with pytest.raises(ValueError, match="auto, cpu, cuda or cuda:<n>"):
        instance_device({}, "gpu0", cuda_available=True)


# --- what reaches Sentry and the orchestrator ---------------------------------------------------------


class _CapturingTransport(Transport):
    def __init__(self):
        super().__init__()
        self.events: list[dict] = []

    def capture_envelope(self, envelope):
        self.events.extend(item.payload.json for item in envelope.items if item.type == "event")


def test_the_models_out_of_memory_event_carries_the_gpu_its_memory_and_the_batch(monkeypatch):
    monkeypatch.setenv("SENTRY_DSN", "http://public@127.0.0.1:9/1")
    transport = _CapturingTransport()
    sentry_sdk.init(dsn="http://public@127.0.0.1:9/1", transport=transport, default_integrations=False)
    try:
        telemetry = ModelTelemetry("gpt_decoder", "1", "cpu")
        message = out_of_memory_message(4, "cpu", torch.cuda.OutOfMemoryError("CUDA out of memory."))
        telemetry.report(RuntimeError(message), {}, {"batch_size": 4}, out_of_memory_tags("cpu", 4))
        sentry_sdk.flush()
    finally:
        sentry_sdk.init()
    (event,) = transport.events
    assert event["tags"]["gpu_model"] == "none (cpu)" and event["tags"]["current_batch_size"] == "4"
    assert event["tags"]["total_memory"].endswith(" MiB") and event["tags"]["stage"] == "gpt_decoder"
    assert event["fingerprint"] == ["gpt_decoder", "out_of_memory"]


@pytest.mark.parametrize(("upstream", "batch"), [
    ("out of memory (current_batch_size=4, cuda:0): CUDA out of memory. Tried to allocate 2.00 GiB", 4),
    ("s2mel: out of memory (current_batch_size=2, cpu): DefaultCPUAllocator: can't allocate memory", 2),
    ("[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory: you tried", 5),
])
def test_the_orchestrator_maps_a_models_out_of_memory_to_503_with_the_models_batch(upstream, batch):
    from tritonclient.utils import InferenceServerException

    from orchestrator.errors import ModelOutOfMemoryError
    from orchestrator.metrics import ServiceMetrics
    from orchestrator.triton_client import TritonStages

    stages = TritonStages("127.0.0.1:1", ServiceMetrics(), 1.0, 1.0)
    stages.in_flight["s2mel"] = 5  # what the orchestrator knows when the model does not say
    error = stages.stage_error("s2mel", "s2mel", InferenceServerException(upstream))
    assert isinstance(error, ModelOutOfMemoryError) and error.http_status == 503
    assert error.current_batch_size == batch


# --- against the real tritonserver, through the orchestrator --------------------------------------------

ONE_SEGMENT = {"text": "Hello there.", "diffusion_steps": "3", "seed": "7", "max_codes": "30", "min_codes": "10"}


@pytest.mark.parametrize("model", ["gpt_decoder", "s2mel"])
def test_out_of_memory_in_a_model_is_503_with_the_gpu_tags_and_the_next_request_is_served(
    service, triton_server, bugsink_server, model
):
    def inject_one(config: dict) -> None:
        config["parameters"]["inject_oom_steps"] = {"string_value": "1"}

    audio = {"speaker_audio": ("voice.wav", speech_like_wav(6.0, seed=51), "audio/wav")}
    with model_reconfigured(triton_server, model, inject_one):
        failed = service.post("/v1/tts", data=ONE_SEGMENT, files=audio)
        served = service.post("/v1/tts", data=ONE_SEGMENT, files=audio)  # the same model instance, serving on
    assert failed.status_code == 503, failed.text
    error = failed.json()["error"]
    assert (error["type"], error["stage"]) == ("out_of_memory", model)
    assert "out of memory (current_batch_size=1, cpu)" in error["message"]
    assert int(failed.headers["retry-after"]) >= 1
    assert served.status_code == 200, served.text

    sentry_sdk.flush(timeout=5)
    stored = bugsink_server.events(wait_for=1, timeout_s=20, tags={"request_id": failed.headers["X-Request-ID"]})
    (event,) = [event for event in stored if event["level"] == "error"]
    assert event["fingerprint"] == [model, "out_of_memory"]
    assert event["tags"]["current_batch_size"] == "1"  # the model's batch, from its error
    assert {"gpu_model", "total_memory"} <= event["tags"].keys()
    # The model's own event, on the same trace: its device, its memory, its batch.
    model_event = model_event_on_trace(bugsink_server, model, event["contexts"]["trace"]["trace_id"])
    assert model_event["tags"]["gpu_model"] == "none (cpu)" and model_event["tags"]["current_batch_size"] == "1"
    assert model_event["tags"]["total_memory"].endswith(" MiB")
