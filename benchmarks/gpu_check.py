"""GPU check: the official-size IndexTTS-2 networks with random weights on one GPU, torch only, no Triton.

    python3 -m benchmarks.gpu_check                  # on the GPU machine, from the repository root
    python3 -m benchmarks.gpu_check --quick          # a subset
    .venv/bin/python -m benchmarks.gpu_check --preset demo --device cpu --quick --out /tmp/check   # smoke test

Four parts, each with its own time budget, within a limit for the whole run (450 s; --quick 165 s). A
measurement that fails records its error and the next one runs; one out of time records that it was skipped
and why. Estimated on an H200 (from FLOP counts, not yet measured): ~3-5 minutes, --quick ~1-1.5.

1. `decoder` (the continuous-batching GPT engine, float16 on CUDA):
   - greedy codes with CUDA graphs against without (same requests, `compare_steps` codes, batch 1 and 16);
   - float16 against float32 greedy codes (first divergence per sequence) and hidden-state (latent) error
     over the steps whose inputs still agree;
   - the decode step (runner + mel_head) against batch (1, 8, 32, 64, 128) and cache position (10, 500,
     1500), with and without CUDA graphs; the sampling cost per batch; the engine's own codes/s per batch
     (official sampling, prefills included and excluded);
   - KV-cache bytes per slot (computed, and the CUDA memory an engine takes per slot).
2. `s2mel` (DiT 512 x 13, 25 steps, classifier-free guidance, through our `S2MelBatcher`): float32,
   float16 / bfloat16 under autocast (as the official code runs it) and with cast weights; mel error
   against float32 at batch 1; time per segment at batch 1, 4 and 16, eager, with the DiT velocity in a CUDA
   graph, and (full run) with `torch.compile`; the winner per batch.
3. `bigvgan`: BigVGAN v2 22 kHz 80-band 256x, float32 (as the official code) and under autocast: time per
   second of audio.
4. `end_to_end`: our engines in one process (the GPT engine on its own thread, continuous batching;
   `S2MelBatcher` in batches of up to 8 as the served s2mel; BigVGAN) against the eager official way
   (`EagerPipeline.synthesize_segment`: batch 1, the second GPT pass, one stream at a time), at 1, 16 and
   64 concurrent streams of two segments with a fixed code count (min_codes = max_codes): RTF,
   audio seconds per second, time to the first audio chunk (and, ours, to the first chunk of codes).
   The eager way serves one stream at a time, so its N-stream figures follow from one queue of the largest
   N; streams it had no time for are extrapolated from the measured ones, and the report says how many.

Precision: our GPT engine float16 (its CUDA default), s2mel and vocoder float32 (the served configs);
the eager way float32 throughout (the official default, `use_fp16=False`).

Writes `gpu_check_<preset>_<device>[_quick].json` and `.md` into `--out` (default: $OUT when set, else
benchmarks/results/), with the GPU name, driver, torch and CUDA versions. Exit status 1 when a part failed.

Imports: the Python standard library, torch, numpy, and this repository's `indextts2`, which brings pyyaml,
safetensors, sentencepiece and scipy (all on the GPU machine's stock Python: torch 2.11 + CUDA 13, numpy
2). `main` first puts stand-ins in place of what `indextts2` imports at module level but the check never
uses (`install_import_stand_ins`): always the w2v-BERT semantic encoder and transformers (no features are
extracted; the machine's transformers is 5.x, ours 4.57), and soundfile and soxr where they are missing
(no audio is decoded or resampled). Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import gc
import importlib
import json
import os
import platform
import queue
import statistics
import subprocess
import sys
import threading
import time
import traceback
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from indextts2.engine import (
    DecodeEvent,
    DecoderEngine,
    DecodeRequest,
    DecodeResult,
    SamplingConfig,
    StopReason,
)
from indextts2.engine.cache import KVCacheManager
from indextts2.engine.runner import ModelRunner
from indextts2.engine.sampler import SequenceSampler, sample_next_codes
from indextts2.networks.bigvgan import build_bigvgan
from indextts2.networks.flow_matching import VelocityFn
from indextts2.networks.gpt import Conv1D, UnifiedVoice, build_gpt
from indextts2.networks.s2mel import build_s2mel
from indextts2.networks.semantic_codec import build_semantic_codec

REPO_ROOT = Path(__file__).resolve().parent.parent
PARTS = ("decoder", "s2mel", "bigvgan", "end_to_end")
NETWORKS_OF_PART = {
    "decoder": ("gpt",),
    "s2mel": ("s2mel", "codec"),
    "bigvgan": ("bigvgan",),
    "end_to_end": ("gpt", "s2mel", "codec", "bigvgan"),
}
TEXT_TOKENS = 40  # text ids per segment: a sentence of ~10 words
S2MEL_MAX_BATCH = 8  # model_repository/s2mel/config.pbtxt max_batch_size
# Greedy, with the official repetition penalty: deterministic, and a random GPT does not fall into
# repeating one code (which would make "the codes agree" say little).
GREEDY = SamplingConfig(do_sample=False, repetition_penalty=10.0)
# s2mel precision modes: (weights dtype, autocast dtype or None).
S2MEL_MODES: dict[str, tuple[torch.dtype, torch.dtype | None]] = {
    "float32": (torch.float32, None),
    "float16-autocast": (torch.float32, torch.float16),
    "bfloat16-autocast": (torch.float32, torch.bfloat16),
    "float16-weights": (torch.float16, None),
    "bfloat16-weights": (torch.bfloat16, None),
}
VOCODER_MODES = ("float32", "float16-autocast", "bfloat16-autocast")


def say(line: str) -> None:
    print(f"[gpu_check {time.strftime('%H:%M:%S')}] {line}", flush=True)


# ---------------------------------------------------------------------------------------------------
# Settings: what a run measures
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    tier: str  # "full", "quick" (both for a GPU) or "cpu" (tiny: the smoke test)
    time_limit_s: float  # the whole run; each part gets min(its budget, what is left)
    budgets_s: dict[str, float]
    compare_steps: int  # greedy codes per sequence in the graph and float16 comparisons
    compare_batches: tuple[int, ...]
    step_batches: tuple[int, ...]
    step_positions: tuple[int, ...]  # cache positions; clipped to the engine's max_seq_len
    step_repeat: int
    engine_codes: int  # codes per request in the engine codes/s runs
    s2mel_modes: tuple[str, ...]
    s2mel_batches: tuple[int, ...]
    s2mel_codes: int  # GPT codes per s2mel segment
    prompt_frames: int  # speaker prompt mel frames (259 = 3 s)
    diffusion_steps: int
    compile_batches: tuple[int, ...]  # s2mel batches also measured with torch.compile
    vocoder_seconds: float
    vocoder_batches: tuple[int, ...]
    e2e_streams: tuple[int, ...]
    e2e_codes: int  # codes per segment
    e2e_segments: int  # segments per stream


FULL = Settings(
    tier="full", time_limit_s=450.0,
    budgets_s={"decoder": 60.0, "s2mel": 160.0, "bigvgan": 20.0, "end_to_end": 150.0},
    compare_steps=200, compare_batches=(1, 16), step_batches=(1, 8, 32, 64, 128),
    step_positions=(10, 500, 1500), step_repeat=10, engine_codes=64,
    s2mel_modes=tuple(S2MEL_MODES), s2mel_batches=(1, 4, 16), s2mel_codes=150, prompt_frames=259,
    diffusion_steps=25, compile_batches=(16,), vocoder_seconds=5.0, vocoder_batches=(1, 8),
    e2e_streams=(1, 16, 64), e2e_codes=100, e2e_segments=2,
)
QUICK = dataclasses.replace(
    FULL, tier="quick", time_limit_s=165.0,
    budgets_s={"decoder": 35.0, "s2mel": 40.0, "bigvgan": 10.0, "end_to_end": 40.0},
    compare_steps=100, step_batches=(1, 16, 64), step_positions=(10, 1500), step_repeat=5, engine_codes=32,
    s2mel_modes=("float32", "float16-autocast", "bfloat16-autocast"), s2mel_batches=(1, 16),
    compile_batches=(), vocoder_batches=(1,), e2e_streams=(1, 16), e2e_codes=50,
)
CPU = dataclasses.replace(
    FULL, tier="cpu", time_limit_s=300.0,
    budgets_s={"decoder": 60.0, "s2mel": 60.0, "bigvgan": 30.0, "end_to_end": 60.0},
    compare_steps=20, compare_batches=(1, 4), step_batches=(1, 4), step_repeat=3, engine_codes=8,
    s2mel_batches=(1, 2), s2mel_codes=8, prompt_frames=20, diffusion_steps=3, compile_batches=(),
    vocoder_seconds=0.5, vocoder_batches=(1,), e2e_streams=(1, 4), e2e_codes=8,
)


def settings_for(device: torch.device, quick: bool) -> Settings:
    if device.type != "cuda":
        return CPU
    return QUICK if quick else FULL


def clip_positions(positions: tuple[int, ...], max_seq_len: int) -> list[int]:
    """Cache positions the engine can hold (each < max_seq_len), sorted, without duplicates."""
    return sorted({min(p, max_seq_len - 1) for p in positions})


class Budget:
    """Seconds one part may still spend."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.started = time.perf_counter()

    def left(self) -> float:
        return self.seconds - (time.perf_counter() - self.started)

    def allows(self, estimate_s: float = 0.0) -> bool:
        return self.left() > estimate_s


# ---------------------------------------------------------------------------------------------------
# Import stand-ins, networks, timing
# ---------------------------------------------------------------------------------------------------


class _StandInModule(types.ModuleType):
    """A module whose every public name is a placeholder that refuses to be used (called or instantiated).

    Placeholders are Exception subclasses, so they also work where a name is only an annotation, a base of
    isinstance or an `except` clause."""

    def __init__(self, name: str, reason: str):
        super().__init__(name, f"stand-in put in place by benchmarks/gpu_check.py: {reason}")
        self.reason = reason

    def __getattr__(self, attribute: str) -> type:
        if attribute.startswith("__"):
            raise AttributeError(attribute)
        qualified, reason = f"{self.__name__}.{attribute}", self.reason

        def refuse(*args: Any, **kwargs: Any) -> None:
            raise RuntimeError(f"{qualified} is not available in the GPU check: {reason}")

        placeholder = type(attribute, (Exception,), {"__init__": refuse, "__module__": self.__name__})
        setattr(self, attribute, placeholder)
        return placeholder


# Modules that indextts2 imports at module level and this check never uses: always replaced (importing
# transformers takes seconds, and the GPU machine's is 5.x, not the 4.57 our w2v-BERT code is written
# against), or replaced where they are not installed.
ALWAYS_STAND_IN = {
    "indextts2.networks.semantic_encoder": "the check builds no w2v-BERT (it needs transformers)",
    "transformers": "the check runs no w2v-BERT and extracts no features",
}
STAND_IN_IF_MISSING = {
    "soundfile": "not installed here; the check decodes no audio",
    "soxr": "not installed here; the check resamples no audio",
}


def install_import_stand_ins() -> list[str]:
    """Put stand-ins in place of the modules above (see the module docstring). Returns the names replaced.
    Call before importing indextts2.presets, .pipeline, .checkpoint_dir or .engine.s2mel_batch."""
    replaced = []
    for name, reason in ALWAYS_STAND_IN.items():
        if name not in sys.modules:
            sys.modules[name] = _StandInModule(name, reason)
            replaced.append(name)
    for name, reason in STAND_IN_IF_MISSING.items():
        if name in sys.modules:
            continue
        try:
            importlib.import_module(name)
        except ImportError:
            sys.modules[name] = _StandInModule(name, reason)
            replaced.append(name)
    return replaced


def randomise_(module: torch.nn.Module, seed: int) -> None:
    """`indextts2.presets._perturb_`'s rule (every parameter + 0.1 / sqrt(fan_in) * N(0, 1)), drawn on the
    module's own device: drawn on the CPU it takes ~25 s for the official GPT on two cores."""
    device = next(module.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            scale = 0.1
            if parameter.dim() >= 2:
                scale /= (parameter.numel() // parameter.shape[0]) ** 0.5
            noise = torch.randn(parameter.shape, generator=generator, device=device, dtype=parameter.dtype)
            parameter.add_(scale * noise)
        if isinstance(module, UnifiedVoice):
            # The GPT-2 projections are built as zeros, so the rule above leaves them ~0 and the body
            # nearly inert (every request then decodes the same codes); GPT-2's own N(0, 0.02) gives
            # attention real work, as `benchmarks/decoder_microbench.py` does.
            for layer in module.modules():
                if isinstance(layer, Conv1D):
                    layer.weight.normal_(0.0, 0.02, generator=generator)


def build_random_network(name: str, preset: Any, device: torch.device, seed: int) -> torch.nn.Module:
    """One network of `preset` (an `indextts2.presets.RandomCheckpointPreset`), built on `device`, float32."""
    config = preset.config
    semantic_dim = int(config["semantic_codec"]["hidden_size"])
    torch.manual_seed(seed)
    with torch.device(device):
        if name == "gpt":
            network = build_gpt(config["gpt"], feature_dim=semantic_dim)
        elif name == "s2mel":
            network = build_s2mel(config["s2mel"], gpt_latent_dim=int(config["gpt"]["model_dim"]))
        elif name == "codec":
            network = build_semantic_codec(config["semantic_codec"])
        elif name == "bigvgan":
            network = build_bigvgan(preset.bigvgan)
        else:
            raise ValueError(f"unknown network {name!r}")
    network = network.to(device)  # any tensor a builder made outside the default-device context
    randomise_(network, seed)
    return network.eval()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def timed(fn: Callable[[], Any], device: torch.device, warmup: int, repeat: int) -> float:
    """Median seconds of `repeat` calls (each synchronised), after `warmup` calls."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def error_text(error: BaseException) -> str:
    return f"{type(error).__name__}: {str(error)[:500]}"


# ---------------------------------------------------------------------------------------------------
# CUDA graphs for the s2mel velocity (the decoder engine has its own, in indextts2/engine/runner.py)
# ---------------------------------------------------------------------------------------------------

# capture(fn) -> (replay, output): after replay(), `output` holds fn() of the current static inputs.
Capture = Callable[[Callable[[], torch.Tensor]], tuple[Callable[[], None], torch.Tensor]]


def cuda_graph_capture(fn: Callable[[], torch.Tensor], warmup: int = 2) -> tuple[Callable[[], None], torch.Tensor]:
    """Warm `fn` up on a side stream (cuBLAS handles, autotuning, a compiled fn's compilation), then capture
    it in a CUDA graph."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(warmup):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        output = fn()
    return graph.replay, output


def eager_capture(fn: Callable[[], torch.Tensor]) -> tuple[Callable[[], None], torch.Tensor]:
    """What a CUDA graph does, without one: replay recomputes `fn` into the same output tensor (for CPU
    tests of `GraphedVelocity`)."""
    output = fn()
    return (lambda: output.copy_(fn())), output


class GraphedVelocity:
    """A velocity function (x, prompt_x, x_lens, t, style, mu) -> v, replayed from one captured graph per
    input signature (shapes, dtypes, devices). Each call copies its inputs into that graph's static buffers
    and replays; the returned tensor is the graph's static output, overwritten by the next call of the same
    signature (`CFM.guided_velocity` uses it at once). Under autocast, call it inside the autocast region
    with `cache_enabled=False`: the region's cast-weight cache would be freed under the graph."""

    def __init__(self, velocity: VelocityFn, capture: Capture = cuda_graph_capture):
        self.velocity = velocity
        self.capture = capture
        self.graphs: dict[tuple, tuple[list[torch.Tensor], Callable[[], None], torch.Tensor]] = {}

    @staticmethod
    def signature(inputs: tuple[torch.Tensor, ...]) -> tuple:
        return tuple((tuple(t.shape), t.dtype, str(t.device)) for t in inputs)

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        key = self.signature(inputs)
        if key not in self.graphs:
            static = [t.clone() for t in inputs]
            replay, output = self.capture(lambda: self.velocity(*static))
            self.graphs[key] = (static, replay, output)
        static, replay, output = self.graphs[key]
        for buffer, value in zip(static, inputs, strict=True):
            buffer.copy_(value)
        replay()
        return output


def dit_velocity(s2mel: torch.nn.Module) -> VelocityFn:
    """The in-process DiT velocity, as `CFM._estimate` calls it."""
    dit = s2mel.cfm.estimator

    def velocity(x, prompt_x, x_lens, t, style, mu):
        return dit(x, prompt_x, x_lens, t, style, mu, reflect_at_row_end=True)

    return velocity


def precision(device: torch.device, autocast_dtype: torch.dtype | None, graphs: bool = False):
    """The autocast region of a precision mode (none for float32 and cast weights)."""
    if autocast_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=autocast_dtype, cache_enabled=not graphs)


# ---------------------------------------------------------------------------------------------------
# Comparisons
# ---------------------------------------------------------------------------------------------------


def compare_sequences(
    reference_codes: torch.Tensor, reference_latents: torch.Tensor, codes: torch.Tensor, latents: torch.Tensor
) -> dict[str, Any]:
    """How far two decodings of one request agree.

    latents[i] is the hidden state at the input of the step that produced codes[i], so it depends on
    codes[:i] only: where the codes first differ at index d, latents[:d + 1] still had equal inputs, and
    those are the latents compared (a relative error is ||other - reference|| / ||reference||).
    """
    n = min(len(reference_codes), len(codes))
    differ = (reference_codes[:n].cpu() != codes[:n].cpu()).nonzero()
    first: int | None = int(differ[0, 0]) if len(differ) else None
    if first is None and len(reference_codes) != len(codes):
        first = n
    compared = n if first is None else min(first + 1, n)
    reference = reference_latents[:compared].float().cpu()
    difference = latents[:compared].float().cpu() - reference
    return {
        "codes": n,
        "equal": first is None,
        "first_divergence": first,
        "compared_latents": compared,
        "latent_max_abs_error": float(difference.abs().max()) if compared else 0.0,
        "latent_rel_error": float(difference.norm() / reference.norm().clamp_min(1e-12)) if compared else 0.0,
    }


def summarize_comparisons(rows: list[dict[str, Any]]) -> dict[str, Any]:
    divergences = [r["first_divergence"] for r in rows if r["first_divergence"] is not None]
    return {
        "sequences": len(rows),
        "sequences_equal": sum(r["equal"] for r in rows),
        "first_divergence_min": min(divergences) if divergences else None,
        "first_divergence_median": statistics.median(divergences) if divergences else None,
        "latent_max_abs_error": max((r["latent_max_abs_error"] for r in rows), default=0.0),
        "latent_rel_error_max": max((r["latent_rel_error"] for r in rows), default=0.0),
    }


def mel_error(reference: torch.Tensor, other: torch.Tensor) -> dict[str, float]:
    difference = other.float().cpu() - reference.float().cpu()
    return {
        "max_abs_error": float(difference.abs().max()),
        "rel_error": float(difference.norm() / reference.float().cpu().norm().clamp_min(1e-12)),
    }


# ---------------------------------------------------------------------------------------------------
# The run's context
# ---------------------------------------------------------------------------------------------------


class Check:
    """Settings, device, and the random networks (float32, built once on the device)."""

    def __init__(self, preset: Any, device: torch.device, settings: Settings, seed: int):
        self.preset = preset
        self.config = preset.config
        self.device = device
        self.settings = settings
        self.seed = seed
        self.engine_dtype = torch.float16 if device.type == "cuda" else torch.float32
        # Whether the graph measurements run, and how s2mel graphs are captured (CPU tests stand both in).
        self.cuda_graphs = device.type == "cuda"
        self.capture: Capture = cuda_graph_capture
        self.networks: dict[str, torch.nn.Module] = {}
        self._gpt_copies: dict[torch.dtype, UnifiedVoice] = {}

    def build(self, name: str) -> dict[str, Any]:
        started = time.perf_counter()
        self.networks[name] = build_random_network(name, self.preset, self.device, self.seed)
        synchronize(self.device)
        parameters = sum(p.numel() for p in self.networks[name].parameters())
        return {"parameters": parameters, "seconds": time.perf_counter() - started}

    def gpt(self, dtype: torch.dtype) -> UnifiedVoice:
        """The GPT in `dtype`: a copy per dtype, since an engine converts its model in place."""
        if dtype == torch.float32:
            return self.networks["gpt"]
        if dtype not in self._gpt_copies:
            self._gpt_copies[dtype] = copy.deepcopy(self.networks["gpt"]).to(dtype)
        return self._gpt_copies[dtype]


def decode_requests(model: UnifiedVoice, count: int, sampling: SamplingConfig, codes: int, seed: int = 0,
                    stream_every: int = 10_000) -> list[DecodeRequest]:
    """`count` requests with seeded stand-in conditioning and text, each exactly `codes` codes long."""
    requests = []
    dim, vocab = model.model_dim, model.text_embedding.num_embeddings
    latents = model.perceiver_encoder.latents.shape[0]
    for index in range(seed, seed + count):
        g = torch.Generator().manual_seed(index)
        requests.append(DecodeRequest(
            speaker_latents=torch.randn(latents, dim, generator=g),
            emotion_vector=0.5 * torch.randn(dim, generator=g),
            text_ids=torch.randint(2, vocab, (min(TEXT_TOKENS, model.max_text_tokens),), generator=g),
            sampling=dataclasses.replace(sampling, max_codes=codes, min_codes=codes, seed=index),
            request_id=f"r{index}",
            stream_every=stream_every,
        ))
    return requests


def run_engine(engine: DecoderEngine, requests: list[DecodeRequest]) -> list[DecodeResult]:
    handles = [engine.submit(request) for request in requests]
    engine.run_until_idle()
    results = [handle.result(timeout=0) for handle in handles]
    for result in results:
        if result.stop_reason is not StopReason.MAX_CODES:
            raise RuntimeError(f"request {result.request_id} ended with {result.stop_reason}: {result.error}")
    return results


# ---------------------------------------------------------------------------------------------------
# Part 1: the decoder engine
# ---------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def guarded(result: dict[str, Any], name: str) -> Iterator[None]:
    """One measurement of a part: its failure goes to result["errors"][name] and the part goes on."""
    try:
        yield
    except Exception as error:  # noqa: BLE001 - the next measurement may still work
        result.setdefault("errors", {})[name] = error_text(error)
        say(f"{name} failed: {error_text(error)}")


def decoder_part(check: Check, budget: Budget, result: dict[str, Any]) -> None:
    from indextts2.pipeline import OFFICIAL_SAMPLING

    s, device = check.settings, check.device
    dtype = check.engine_dtype
    model = check.gpt(dtype)
    skipped = result["skipped"]
    graphs = check.cuda_graphs  # what the engine does by default on CUDA; off for good if capture fails

    def engine(network: UnifiedVoice, slots: int, use_graphs: bool) -> DecoderEngine:
        return DecoderEngine(network, max_slots=slots, max_waiting=max(slots, 8), device=device,
                             dtype=next(network.parameters()).dtype, use_cuda_graphs=use_graphs)

    # KV cache: bytes per slot, computed; and on CUDA what an engine (cache + graphs) takes per slot. The
    # first engine built also says whether the CUDA-graph capture works at all.
    largest = max(s.compare_batches)
    before = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
    try:
        probe = engine(model, largest, graphs)
    except Exception as error:
        if not graphs:
            raise
        result["cuda_graph_capture_error"] = error_text(error)
        say(f"decoder: CUDA-graph capture failed, going on without graphs: {error_text(error)}")
        graphs = False
        free_memory(device)
        probe = engine(model, largest, False)
    max_seq_len = probe.max_seq_len
    per_slot = {
        str(d).removeprefix("torch."): len(model.gpt.h) * 2 * max_seq_len * model.model_dim * d.itemsize
        for d in (torch.float16, torch.float32)
    }
    result["kv_cache"] = {
        "max_seq_len": max_seq_len,
        "layers": len(model.gpt.h),
        "model_dim": model.model_dim,
        "bytes_per_slot": per_slot,
        "bytes_per_token": {k: v // max_seq_len for k, v in per_slot.items()},
        "engine_bytes_per_slot_measured": (
            (torch.cuda.memory_allocated(device) - before) // largest if device.type == "cuda" else None),
        "free_gpu_bytes": torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else None,
    }
    del probe
    free_memory(device)
    say(f"decoder: KV cache {per_slot[str(dtype).removeprefix('torch.')] / 2**20:.1f} MiB per slot "
        f"({max_seq_len} positions)")

    # Greedy codes: CUDA graphs against none, then float16 against float32.
    requests = decode_requests(model, largest, GREEDY, s.compare_steps)
    default_results: dict[int, list[DecodeResult]] = {}
    result["cuda_graphs_vs_eager"] = []
    if not graphs:
        skipped["cuda_graphs_vs_eager"] = ("no CUDA: the decode step runs in CUDA graphs only on a GPU"
                                           if not check.cuda_graphs else "the CUDA-graph capture failed")
    for batch in s.compare_batches:
        with guarded(result, f"cuda_graphs_vs_eager batch {batch}"):
            started = time.perf_counter()
            default_results[batch] = run_engine(engine(model, batch, graphs), requests[:batch])
            free_memory(device)
            if not graphs:
                continue
            eager = run_engine(engine(model, batch, False), requests[:batch])
            free_memory(device)
            rows = [compare_sequences(e.codes, e.latents, g.codes, g.latents)
                    for e, g in zip(eager, default_results[batch], strict=True)]
            summary = {"batch": batch, "steps": s.compare_steps, **summarize_comparisons(rows)}
            result["cuda_graphs_vs_eager"].append(summary)
            say(f"decoder: batch {batch}, {s.compare_steps} greedy codes: CUDA graphs equal eager in "
                f"{summary['sequences_equal']}/{batch} sequences, latent max abs diff "
                f"{summary['latent_max_abs_error']:.2e} ({time.perf_counter() - started:.1f} s)")

    with guarded(result, "float16_vs_float32"):
        if dtype == torch.float16 and largest in default_results:
            half_results = default_results[largest]
        else:  # on the CPU the engine runs float32 by default: decode a float16 copy too
            half = check.gpt(torch.float16)
            half_results = run_engine(engine(half, largest, graphs), requests[:largest])
        full = run_engine(engine(check.gpt(torch.float32), largest, graphs), requests[:largest])
        free_memory(device)
        rows = [compare_sequences(f.codes, f.latents, h.codes, h.latents) for f, h in zip(full, half_results, strict=True)]
        result["float16_vs_float32"] = {"batch": largest, "steps": s.compare_steps, "cuda_graphs": graphs,
                                        **summarize_comparisons(rows), "per_sequence": rows}
        summary = result["float16_vs_float32"]
        say(f"decoder: float16 vs float32, batch {largest}: {summary['sequences_equal']}/{largest} sequences "
            f"equal, first divergence min {summary['first_divergence_min']}, latent rel error max "
            f"{summary['latent_rel_error_max']:.2e}")

    # The decode step (runner + mel_head) against batch and cache position.
    batches = sorted(s.step_batches)
    result["step_time"] = []
    with guarded(result, "step_time"), torch.inference_mode():
        positions = clip_positions(s.step_positions, max_seq_len)
        prefix_len = model.perceiver_encoder.latents.shape[0] + 2 + min(TEXT_TOKENS, model.max_text_tokens) + 2
        mel_table = model.mel_pos_embedding.emb.num_embeddings
        cache = KVCacheManager(model, max(batches), max_seq_len, dtype, device)
        runners = {"eager": ModelRunner(model, cache, use_cuda_graphs=False)}
        if graphs:
            runners["cuda_graphs"] = ModelRunner(model, cache, use_cuda_graphs=True)
        else:
            skipped["step_time cuda_graphs"] = "no CUDA" if not check.cuda_graphs else "the CUDA-graph capture failed"
        slots: list[int] = []
        for batch in batches:
            while len(slots) < batch:  # the step covers rows [0, span): keep exactly `batch` in use
                slots.append(cache.allocate())
            for position in positions:
                mel_position = max(0, min(position - prefix_len, mel_table - 1))
                for name, runner in runners.items():
                    if not budget.allows():
                        skipped[f"step_time batch {batch} position {position} {name}"] = "time budget"
                        continue

                    def step(runner=runner, batch=batch, position=position, mel_position=mel_position):
                        hidden, _ = runner.decode(slots[:batch], [1] * batch, [mel_position] * batch,
                                                  [position] * batch)
                        return model.mel_head(hidden)

                    seconds = timed(step, device, warmup=2, repeat=s.step_repeat)
                    result["step_time"].append({"batch": batch, "position": position, "runner": name,
                                                "step_ms": 1e3 * seconds, "codes_per_s": batch / seconds})
            row = [r for r in result["step_time"] if r["batch"] == batch]
            say(f"decoder: step batch {batch}: " + ", ".join(
                f"{r['runner']}@{r['position']} {r['step_ms']:.2f} ms" for r in row))
    runners = cache = None
    free_memory(device)

    # Sampling cost per batch (the engine samples each sequence with its own generator).
    result["sampling"] = []
    vocab = model.number_mel_codes
    with guarded(result, "sampling"), torch.inference_mode():
        for batch in batches:
            logits = torch.randn(batch, vocab, device=device)
            row: dict[str, Any] = {"batch": batch}
            for name, config in (("official", OFFICIAL_SAMPLING), ("greedy", GREEDY)):
                samplers = [SequenceSampler(dataclasses.replace(config, seed=i), vocab, model.start_mel_token,
                                            device, stop_code=model.stop_mel_token) for i in range(batch)]
                seconds = timed(lambda logits=logits, samplers=samplers: sample_next_codes(logits, samplers).tolist(),
                                device, warmup=2, repeat=s.step_repeat)
                row[f"{name}_ms"] = 1e3 * seconds
            result["sampling"].append(row)
        say("decoder: sampling " + ", ".join(
            f"batch {r['batch']} {r['official_ms']:.2f} ms (greedy {r['greedy_ms']:.2f})" for r in result["sampling"]))

    # The engine itself: codes/s per batch, official sampling, `engine_codes` codes per request.
    result["engine"] = []
    with guarded(result, "engine"):
        served = engine(model, max(batches), graphs)
        served.submit(decode_requests(model, 1, OFFICIAL_SAMPLING, 4, seed=10_000)[0])  # warm-up
        served.run_until_idle()
        for batch in batches:
            if not budget.allows():
                skipped[f"engine batch {batch}"] = "time budget"
                continue
            served.stats.reset()
            started = time.perf_counter()
            results = run_engine(served, decode_requests(model, batch, OFFICIAL_SAMPLING, s.engine_codes))
            wall = time.perf_counter() - started
            records = served.stats.records
            steady = [r for r in records if r.prefills == 0 and r.decode_batch == batch]
            decode_seconds = sum(r.decode_seconds for r in steady)
            result["engine"].append({
                "batch": batch,
                "codes": s.engine_codes,
                "cuda_graphs": graphs,
                "decode_step_ms": 1e3 * statistics.median(r.decode_seconds for r in steady),
                "decode_codes_per_s": sum(r.decode_batch for r in steady) / decode_seconds,
                "end_to_end_codes_per_s": sum(len(r.codes) for r in results) / wall,
                "prefill_ms_per_request": 1e3 * sum(r.prefill_seconds for r in records) / batch,
            })
            row = result["engine"][-1]
            say(f"decoder: engine batch {batch}: step {row['decode_step_ms']:.2f} ms, "
                f"{row['decode_codes_per_s']:.0f} codes/s in decode steps, {row['end_to_end_codes_per_s']:.0f} "
                f"with prefills")
    served = None
    free_memory(device)
    if device.type != "cuda":
        skipped["out of memory"] = "CUDA only (the CPU suite injects the error: tests/test_out_of_memory.py)"
    elif budget.allows():
        with guarded(result, "out_of_memory"):
            result["out_of_memory"] = provoke_out_of_memory(model, engine(model, largest, False), largest,
                                                            s.engine_codes, device)
    free_memory(device)


def provoke_out_of_memory(model: UnifiedVoice, engine: DecoderEngine, batch: int, codes: int,
                          device: torch.device) -> dict[str, Any]:
    """A real CUDA out-of-memory in the decoder: take (nearly) all free GPU memory, decode a batch, then give
    the memory back and decode the same batch again. Shows the engine's smaller-batch retries, the requests
    it failed, and that it serves on afterwards. Written without a GPU at hand: not run yet."""
    from indextts2.pipeline import OFFICIAL_SAMPLING

    hog: list[torch.Tensor] = []
    chunk = 1 << 30
    while chunk >= 1 << 20:  # fill the device, 1 GiB at a time, then smaller
        try:
            hog.append(torch.empty(chunk, dtype=torch.uint8, device=device))
        except torch.OutOfMemoryError:
            chunk //= 2
    engine.stats.reset()
    handles = [engine.submit(request) for request in decode_requests(model, batch, OFFICIAL_SAMPLING, codes)]
    engine.run_until_idle()
    starved = [handle.result(timeout=0) for handle in handles]
    decode_batches = sorted({record.decode_batch for record in engine.stats.records if record.decode_batch})
    hog.clear()
    free_memory(device)
    again = run_engine(engine, decode_requests(model, batch, OFFICIAL_SAMPLING, codes, seed=20_000))
    row = {
        "batch": batch,
        "hogged_bytes": int(torch.cuda.max_memory_allocated(device)),
        "with_memory_taken": {reason.name: sum(r.stop_reason is reason for r in starved) for reason in StopReason},
        "decode_batches_run": decode_batches,
        "out_of_memory_errors": sorted({r.error for r in starved if r.error and "out of memory" in r.error})[:3],
        "recovered": all(r.stop_reason is StopReason.MAX_CODES for r in again),
    }
    say(f"decoder: out of memory provoked at batch {batch}: {row['with_memory_taken']}, decode batches "
        f"{decode_batches}; afterwards all {batch} served: {row['recovered']}")
    return row


# ---------------------------------------------------------------------------------------------------
# Part 2: s2mel
# ---------------------------------------------------------------------------------------------------


def s2mel_requests(check: Check, count: int, codes: int, prompt_frames: int, steps: int, seed: int = 0) -> list:
    from indextts2.engine.s2mel_batch import S2MelRequest

    config = check.config
    gpt_dim = int(config["gpt"]["model_dim"])
    channels = int(config["s2mel"]["length_regulator"]["channels"])
    mel_bands = int(config["s2mel"]["DiT"]["in_channels"])
    style_dim = int(config["s2mel"]["style_encoder"]["dim"])
    codebook = int(config["semantic_codec"]["codebook_size"])
    requests = []
    for index in range(seed, seed + count):
        g = torch.Generator().manual_seed(index)
        requests.append(S2MelRequest(
            codes=torch.randint(0, codebook, (codes,), generator=g),
            latents=torch.randn(codes, gpt_dim, generator=g),
            prompt_condition=0.5 * torch.randn(prompt_frames, channels, generator=g),
            ref_mel=torch.randn(mel_bands, prompt_frames, generator=g) - 4.0,
            style=torch.randn(style_dim, generator=g),
            diffusion_steps=steps, seed=index,  # cfg_rate: the official default
        ))
    return requests


def s2mel_part(check: Check, budget: Budget, result: dict[str, Any]) -> None:
    from indextts2.engine.s2mel_batch import S2MelBatcher
    from indextts2.pipeline import target_mel_frames

    s, device = check.settings, check.device
    with_graphs = check.cuda_graphs
    skipped, errors = result["skipped"], result.setdefault("errors", {})
    s2mel32, codec32 = check.networks["s2mel"], check.networks["codec"]
    requests = s2mel_requests(check, max(s.s2mel_batches), s.s2mel_codes, s.prompt_frames, s.diffusion_steps)
    result["segment"] = {"codes": s.s2mel_codes, "prompt_frames": s.prompt_frames,
                         "generated_frames": target_mel_frames(s.s2mel_codes),
                         "total_frames": s.prompt_frames + target_mel_frames(s.s2mel_codes),
                         "diffusion_steps": s.diffusion_steps, "cfg_rate": requests[0].cfg_rate}
    result["rows"] = []
    eager_mels: dict[tuple[str, int], torch.Tensor] = {}  # (mode, batch) -> request 0's mel, eager
    runner_kinds = ["eager", "cuda_graph"] if with_graphs else ["eager"]
    if not with_graphs:
        skipped["cuda_graph"] = "no CUDA"
    if not s.compile_batches:
        skipped["torch_compile"] = "no CUDA" if device.type != "cuda" else "not in the quick run"

    def measure(batcher, mode: str, batch: int, kind: str, velocity: VelocityFn | None, graphs: bool,
                warmup: int = 1) -> dict[str, Any]:
        autocast_dtype = S2MEL_MODES[mode][1]
        batch_requests = requests[:batch]
        mels: list[torch.Tensor] = []

        def run() -> None:
            with precision(device, autocast_dtype, graphs):
                mels[:] = batcher.run(batch_requests, velocity_fn=velocity)

        first_started = time.perf_counter()
        run()
        synchronize(device)
        first_s = time.perf_counter() - first_started
        repeat = 2 if batch < 16 or device.type == "cuda" else 1
        seconds = timed(run, device, warmup=warmup - 1, repeat=repeat)
        row = {"mode": mode, "batch": batch, "runner": kind, "batch_ms": 1e3 * seconds,
               "ms_per_segment": 1e3 * seconds / batch, "first_call_s": first_s}
        # Request 0's mel against float32 (eager, same batch) and against eager in the same mode.
        mel = mels[0].cpu()
        if kind == "eager":
            eager_mels[(mode, batch)] = mel
        if ("float32", batch) in eager_mels:
            row["vs_float32"] = mel_error(eager_mels[("float32", batch)], mel)
        if kind != "eager" and (mode, batch) in eager_mels:
            row["vs_eager_same_mode"] = mel_error(eager_mels[(mode, batch)], mel)
        return row

    for mode in s.s2mel_modes:
        weights_dtype = S2MEL_MODES[mode][0]
        try:
            if weights_dtype == torch.float32:
                s2mel, codec = s2mel32, codec32
            else:
                s2mel, codec = copy.deepcopy(s2mel32).to(weights_dtype), copy.deepcopy(codec32).to(weights_dtype)
            batcher = S2MelBatcher(s2mel, codec, device)
        except Exception as error:  # noqa: BLE001 - one mode failing leaves the others
            errors[mode] = error_text(error)
            continue
        for batch in s.s2mel_batches:
            for kind in runner_kinds:
                key = f"{mode} batch {batch} {kind}"
                if not budget.allows():
                    skipped[key] = "time budget"
                    continue
                try:
                    graphs = kind == "cuda_graph"
                    velocity = GraphedVelocity(dit_velocity(s2mel), check.capture) if graphs else None
                    row = measure(batcher, mode, batch, kind, velocity, graphs)
                    del velocity
                except Exception as error:  # noqa: BLE001
                    errors[key] = error_text(error)
                    say(f"s2mel: {key} failed: {error_text(error)}")
                    free_memory(device)
                    continue
                result["rows"].append(row)
                error_note = f", rel error vs float32 {row['vs_float32']['rel_error']:.2e}" if "vs_float32" in row else ""
                say(f"s2mel: {mode} batch {batch} {kind}: {row['ms_per_segment']:.1f} ms/segment{error_note}")
                free_memory(device)
        del batcher, s2mel, codec
        free_memory(device)

    # torch.compile of the DiT velocity, in the fastest half-precision mode at that batch.
    for batch in s.compile_batches:
        candidates = [r for r in result["rows"] if r["batch"] == batch and r["mode"] != "float32"]
        if not candidates:
            skipped[f"torch_compile batch {batch}"] = "no half-precision row measured at this batch"
            continue
        mode = min(candidates, key=lambda r: r["ms_per_segment"])["mode"]
        weights_dtype = S2MEL_MODES[mode][0]
        if not budget.allows(45.0):
            skipped[f"torch_compile batch {batch}"] = "time budget (a compile takes ~30-90 s)"
            continue
        s2mel = s2mel32 if weights_dtype == torch.float32 else copy.deepcopy(s2mel32).to(weights_dtype)
        codec = codec32 if weights_dtype == torch.float32 else copy.deepcopy(codec32).to(weights_dtype)
        batcher = S2MelBatcher(s2mel, codec, device)
        compiled = torch.compile(dit_velocity(s2mel), dynamic=False)
        for kind, velocity, graphs in (("compile", compiled, False),
                                       ("compile+cuda_graph", GraphedVelocity(compiled, check.capture), True)):
            key = f"{mode} batch {batch} {kind}"
            if not budget.allows():
                skipped[key] = "time budget"
                continue
            try:
                row = measure(batcher, mode, batch, kind, velocity, graphs)
                result["rows"].append(row)
                say(f"s2mel: {key}: {row['ms_per_segment']:.1f} ms/segment (first call, compiling: "
                    f"{row['first_call_s']:.0f} s)")
            except Exception as error:  # noqa: BLE001
                errors[key] = error_text(error)
                say(f"s2mel: {key} failed: {error_text(error)}")
        del batcher, compiled, s2mel, codec
        free_memory(device)

    # The winner per batch, and its speed-up over float32 eager.
    result["best"] = []
    for batch in s.s2mel_batches:
        rows = [r for r in result["rows"] if r["batch"] == batch]
        if not rows:
            continue
        best = min(rows, key=lambda r: r["ms_per_segment"])
        float32_eager = next((r for r in rows if r["mode"] == "float32" and r["runner"] == "eager"), None)
        result["best"].append({
            "batch": batch, "mode": best["mode"], "runner": best["runner"], "ms_per_segment": best["ms_per_segment"],
            "speedup_vs_float32_eager": (float32_eager["ms_per_segment"] / best["ms_per_segment"]
                                         if float32_eager else None),
        })


# ---------------------------------------------------------------------------------------------------
# Part 3: BigVGAN
# ---------------------------------------------------------------------------------------------------


def bigvgan_part(check: Check, budget: Budget, result: dict[str, Any]) -> None:
    s, device = check.settings, check.device
    vocoder = check.networks["bigvgan"]
    sample_rate = int(check.preset.bigvgan["sampling_rate"])
    frames = round(s.vocoder_seconds * sample_rate / vocoder.hop_length)
    audio_s = frames * vocoder.hop_length / sample_rate
    mel_bands = vocoder.conv_pre.in_channels
    result["audio_seconds"] = audio_s
    result["rows"] = []
    mel = torch.randn(max(s.vocoder_batches), mel_bands, frames, generator=torch.Generator().manual_seed(0))
    mel = (mel - 4.0).to(device)
    reference: torch.Tensor | None = None
    with torch.inference_mode():
        for mode in VOCODER_MODES:
            for batch in s.vocoder_batches if mode == "float32" else s.vocoder_batches[:1]:
                key = f"{mode} batch {batch}"
                if not budget.allows():
                    result["skipped"][key] = "time budget"
                    continue
                autocast_dtype = {"float32": None, "float16-autocast": torch.float16,
                                  "bfloat16-autocast": torch.bfloat16}[mode]
                out: list[torch.Tensor] = []

                def run(batch=batch, autocast_dtype=autocast_dtype, out=out) -> None:
                    with precision(device, autocast_dtype):
                        out[:] = [vocoder(mel[:batch])]

                with guarded(result, key):
                    seconds = timed(run, device, warmup=1, repeat=3)
                if key in result.get("errors", {}):
                    continue
                row: dict[str, Any] = {"mode": mode, "batch": batch, "ms": 1e3 * seconds,
                                       "ms_per_audio_second": 1e3 * seconds / (batch * audio_s),
                                       "realtime_factor": seconds / (batch * audio_s)}
                wave = out[0][0, 0].float().cpu()
                if mode == "float32" and batch == s.vocoder_batches[0]:
                    reference = wave
                elif reference is not None:
                    noise = (wave - reference).pow(2).sum().clamp_min(1e-20)
                    row["snr_db_vs_float32"] = float(10 * torch.log10(reference.pow(2).sum() / noise))
                result["rows"].append(row)
                say(f"bigvgan: {key}: {row['ms_per_audio_second']:.2f} ms per audio second")


# ---------------------------------------------------------------------------------------------------
# Part 4: end to end
# ---------------------------------------------------------------------------------------------------


@dataclass
class Stream:
    """One client: a speaker prompt, an emotion vector and `segments` texts."""

    index: int
    speaker: Any  # indextts2.pipeline.SpeakerPrompt, batch of 1
    emovec: torch.Tensor  # (1, d)
    texts: list[list[int]]


@dataclass
class StreamTimes:
    """Seconds from the moment every stream arrived (all at once)."""

    first_audio_s: float
    done_s: float
    audio_s: float
    first_codes_s: float | None = None


def make_streams(check: Check, count: int, seed: int = 1000) -> list[Stream]:
    from indextts2.pipeline import SpeakerPrompt

    s, config, device = check.settings, check.config, check.device
    gpt = check.networks["gpt"]
    dim, vocab = gpt.model_dim, gpt.text_embedding.num_embeddings
    channels = int(config["s2mel"]["length_regulator"]["channels"])
    mel_bands = int(config["s2mel"]["DiT"]["in_channels"])
    style_dim = int(config["s2mel"]["style_encoder"]["dim"])
    latents = gpt.perceiver_encoder.latents.shape[0]
    streams = []
    for index in range(count):
        g = torch.Generator().manual_seed(seed + index)
        speaker = SpeakerPrompt(
            semantic_features=torch.zeros(1, 1, int(config["semantic_codec"]["hidden_size"]), device=device),
            prompt_condition=(0.5 * torch.randn(1, s.prompt_frames, channels, generator=g)).to(device),
            ref_mel=(torch.randn(1, mel_bands, s.prompt_frames, generator=g) - 4.0).to(device),
            style=torch.randn(1, style_dim, generator=g).to(device),
            speaker_latents=torch.randn(1, latents, dim, generator=g).to(device),
        )
        texts = [torch.randint(2, vocab, (min(TEXT_TOKENS, gpt.max_text_tokens),), generator=g).tolist()
                 for _ in range(s.e2e_segments)]
        streams.append(Stream(index, speaker, (0.5 * torch.randn(1, dim, generator=g)).to(device), texts))
    return streams


def segment_sampling(check: Check, stream: int, segment: int) -> SamplingConfig:
    from indextts2.pipeline import OFFICIAL_SAMPLING

    codes = check.settings.e2e_codes
    return dataclasses.replace(OFFICIAL_SAMPLING, max_codes=codes, min_codes=codes, seed=1000 * stream + segment)


def fifo_schedule(services: list[float], first_offsets: list[float], audio: list[float],
                  count: int) -> tuple[list[StreamTimes], int]:
    """`count` streams that all arrive at time 0 and are served one at a time, in order (the eager way holds
    one lock from the first stage to the last byte): stream i starts when stream i - 1 is done. Measured:
    each stream's service time, its first chunk's offset from its start, its audio. Streams past those
    measured get the measured means. -> (times per stream, how many were extrapolated)."""
    if not services:
        raise ValueError("no eager stream was measured")
    means = (statistics.fmean(services), statistics.fmean(first_offsets), statistics.fmean(audio))
    times, start = [], 0.0
    for i in range(count):
        service, first, seconds = (services[i], first_offsets[i], audio[i]) if i < len(services) else means
        times.append(StreamTimes(first_audio_s=start + first, done_s=start + service, audio_s=seconds))
        start += service
    return times, max(0, count - len(services))


def stream_summary(times: list[StreamTimes], extrapolated: int = 0) -> dict[str, Any]:
    wall = max(t.done_s for t in times)
    rtf = [t.done_s / t.audio_s for t in times]
    first_codes = [t.first_codes_s for t in times if t.first_codes_s is not None]
    return {
        "streams": len(times),
        "wall_s": wall,
        "audio_s": sum(t.audio_s for t in times),
        "audio_s_per_s": sum(t.audio_s for t in times) / wall,
        "rtf_mean": statistics.fmean(rtf),
        "rtf_p50": statistics.median(rtf),
        "rtf_max": max(rtf),
        "first_audio_p50_s": statistics.median(t.first_audio_s for t in times),
        "first_audio_max_s": max(t.first_audio_s for t in times),
        "first_codes_p50_s": statistics.median(first_codes) if first_codes else None,
        "latency_p50_s": statistics.median(t.done_s for t in times),
        "extrapolated_streams": extrapolated,
    }


def run_eager(check: Check, pipeline: Any, streams: list[Stream], budget: Budget) -> tuple[list, list, list]:
    """Serve `streams` one after the other, each segment as `infer_v2` does (batch 1, second GPT pass), until
    done or out of budget. -> (service seconds, first-chunk offsets, audio seconds) per stream served."""
    s, device = check.settings, check.device
    services: list[float] = []
    first_offsets: list[float] = []
    audio: list[float] = []
    for stream in streams:
        if services and not budget.allows(1.5 * statistics.fmean(services)):
            break
        started = time.perf_counter()
        first: float | None = None
        seconds = 0.0
        generator = torch.Generator(device=device).manual_seed(stream.index)
        for segment, text in enumerate(stream.texts):
            waveform, _, _ = pipeline.synthesize_segment(
                stream.speaker, stream.emovec, text, segment_sampling(check, stream.index, segment),
                diffusion_steps=s.diffusion_steps, official_second_pass=True,
                generator=generator,
            )
            if first is None:
                first = time.perf_counter() - started
            seconds += waveform.size / int(check.preset.bigvgan["sampling_rate"])
        services.append(time.perf_counter() - started)
        first_offsets.append(first or 0.0)
        audio.append(seconds)
    return services, first_offsets, audio


def vocode(vocoder: torch.nn.Module, mels: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """Waveforms (CPU, 1-D) of mels (80, T); one batch when every T is the same."""
    with torch.inference_mode():
        if len({m.shape[-1] for m in mels}) == 1:
            return list(vocoder(torch.stack(mels).to(device))[:, 0].float().cpu())
        return [vocoder(m[None].to(device))[0, 0].float().cpu() for m in mels]


def run_ours(check: Check, engine: DecoderEngine, events: queue.Queue, batcher: Any, streams: list[Stream],
             timeout_s: float) -> list[StreamTimes]:
    """Every stream arrives at once. The GPT engine steps on its own thread (continuous batching); a
    stream's next segment is submitted when its previous one is decoded (as the orchestrator pipelines
    them); this thread runs s2mel on up to S2MEL_MAX_BATCH decoded segments whenever no GPT event is
    waiting, then BigVGAN."""
    from indextts2.engine.s2mel_batch import S2MelRequest

    s, device = check.settings, check.device
    vocoder = check.networks["bigvgan"]
    sample_rate = int(check.preset.bigvgan["sampling_rate"])
    stop = threading.Event()
    failures: list[BaseException] = []

    def drive() -> None:
        try:
            while not stop.is_set():
                if not engine.step():
                    time.sleep(0.0005)
        except BaseException as error:  # noqa: BLE001 - reported by the main thread
            failures.append(error)

    submitted: set[str] = set()
    completed: set[str] = set()

    def submit(stream: Stream, segment: int) -> None:
        submitted.add(f"{stream.index}/{segment}")
        engine.submit(DecodeRequest(
            speaker_latents=stream.speaker.speaker_latents[0], emotion_vector=stream.emovec[0],
            text_ids=torch.tensor(stream.texts[segment]), sampling=segment_sampling(check, stream.index, segment),
            request_id=f"{stream.index}/{segment}",
        ))

    first_codes: dict[int, float] = {}
    first_audio: dict[int, float] = {}
    done: dict[int, float] = {}
    audio = dict.fromkeys(range(len(streams)), 0.0)
    segments_done = dict.fromkeys(range(len(streams)), 0)
    chunks: dict[str, list[DecodeEvent]] = {}
    decoded: list[tuple[int, int, torch.Tensor, torch.Tensor]] = []
    thread = threading.Thread(target=drive, name="gpu-check-engine", daemon=True)
    t0 = time.perf_counter()
    for stream in streams:
        submit(stream, 0)
    thread.start()
    try:
        while len(done) < len(streams):
            if failures:
                raise RuntimeError(f"the engine thread failed: {failures[0]!r}")
            if time.perf_counter() - t0 > timeout_s:
                raise TimeoutError(f"{len(done)} of {len(streams)} streams done after {timeout_s:.0f} s")
            try:
                event = events.get_nowait() if decoded else events.get(timeout=0.5)
            except queue.Empty:
                event = None
            if event is not None:
                index, segment = map(int, event.request_id.split("/"))
                if not event.finished:
                    chunks.setdefault(event.request_id, []).append(event)
                    if segment == 0 and index not in first_codes and len(event.codes):
                        first_codes[index] = time.perf_counter() - t0
                    continue
                completed.add(event.request_id)
                if event.stop_reason is not StopReason.MAX_CODES:
                    raise RuntimeError(f"segment {event.request_id} ended with {event.stop_reason}: {event.error}")
                parts = chunks.pop(event.request_id, [])
                codes = torch.cat([c.codes for c in parts])
                latents = torch.cat([c.latents for c in parts])
                if segment + 1 < s.e2e_segments:
                    submit(streams[index], segment + 1)
                decoded.append((index, segment, codes, latents))
                continue
            if not decoded:
                continue
            batch, decoded = decoded[:S2MEL_MAX_BATCH], decoded[S2MEL_MAX_BATCH:]
            mels = batcher.run([
                S2MelRequest(codes=codes, latents=latents.to(device),
                             prompt_condition=streams[index].speaker.prompt_condition[0],
                             ref_mel=streams[index].speaker.ref_mel[0], style=streams[index].speaker.style[0],
                             diffusion_steps=s.diffusion_steps, seed=1000 * index + segment)
                for index, segment, codes, latents in batch
            ])
            waves = vocode(vocoder, mels, device)
            now = time.perf_counter() - t0
            for (index, segment, _, _), wave in zip(batch, waves, strict=True):
                audio[index] += wave.numel() / sample_rate
                segments_done[index] += 1
                if segment == 0:
                    first_audio[index] = now
                if segments_done[index] == s.e2e_segments:
                    done[index] = now
    finally:
        stop.set()
        thread.join(timeout=60)
        # After a failure: leave the engine empty for the next run (a cancellation ends at the next step).
        for request_id in submitted - completed:
            engine.cancel(request_id)
        engine.run_until_idle(max_steps=10)
        while not events.empty():
            events.get_nowait()
    return [StreamTimes(first_audio_s=first_audio[i], done_s=done[i], audio_s=audio[i],
                        first_codes_s=first_codes.get(i)) for i in range(len(streams))]


def end_to_end_part(check: Check, budget: Budget, result: dict[str, Any]) -> None:
    from indextts2.checkpoint_dir import IndexTTS2Networks
    from indextts2.engine.s2mel_batch import S2MelBatcher
    from indextts2.pipeline import EagerPipeline, target_mel_frames

    s, device = check.settings, check.device
    skipped, errors = result["skipped"], result.setdefault("errors", {})
    nets = check.networks
    streams_max = max(s.e2e_streams)
    segment_audio = target_mel_frames(s.e2e_codes) * nets["bigvgan"].hop_length / int(
        check.preset.bigvgan["sampling_rate"])
    result["setup"] = {
        "codes_per_segment": s.e2e_codes, "segments_per_stream": s.e2e_segments, "text_tokens": TEXT_TOKENS,
        "audio_s_per_stream": s.e2e_segments * segment_audio, "prompt_frames": s.prompt_frames,
        "diffusion_steps": s.diffusion_steps, "sampling": "official (do_sample, T 0.8, "
        "top_k 30, top_p 0.8, repetition penalty 10), min_codes = max_codes",
        "ours": f"GPT engine {str(check.engine_dtype).removeprefix('torch.')}, max_slots {streams_max}; "
                f"s2mel float32 in batches of up to {S2MEL_MAX_BATCH}; BigVGAN float32",
        "eager": "EagerPipeline.synthesize_segment float32, official_second_pass=True, one stream at a time",
    }
    streams = make_streams(check, streams_max)
    result["runs"] = []

    # The eager official way: one queue of the largest N (the smaller N are its first streams).
    networks = IndexTTS2Networks(
        config=check.config, semantic_encoder=_NotLoaded("semantic_encoder"), semantic_codec=nets["codec"],
        campplus=_NotLoaded("campplus"), gpt=check.gpt(torch.float32), s2mel=nets["s2mel"],
        bigvgan=nets["bigvgan"], emotion_bank=_NotLoaded("emotion_bank"), text_frontend=_NotLoaded("text_frontend"),
    )
    pipeline = EagerPipeline(networks, device=str(device))
    eager_budget = Budget(budget.left() * 0.55)
    try:
        run_eager(check, pipeline, make_streams(check, 1, seed=99), eager_budget)  # warm-up
        services, firsts, audio = run_eager(check, pipeline, streams, eager_budget)
        say(f"end_to_end: eager served {len(services)} of {streams_max} streams, "
            f"{statistics.fmean(services):.2f} s each")
        for count in s.e2e_streams:
            times, extrapolated = fifo_schedule(services, firsts, audio, count)
            result["runs"].append({"system": "eager", **stream_summary(times, extrapolated)})
    except Exception as error:  # noqa: BLE001
        errors["eager"] = error_text(error)
        say(f"end_to_end: eager failed: {error_text(error)}")
    free_memory(device)

    # Ours: one engine for every N; each N is one wave of streams arriving together.
    events: queue.Queue[DecodeEvent] = queue.Queue()

    def new_engine(graphs: bool) -> DecoderEngine:
        return DecoderEngine(check.gpt(check.engine_dtype), max_slots=streams_max, max_waiting=2 * streams_max,
                             device=device, dtype=check.engine_dtype, use_cuda_graphs=graphs, events=events)

    ours_graphs = check.cuda_graphs
    try:
        engine = new_engine(ours_graphs)
    except Exception as error:
        if not ours_graphs:
            raise
        ours_graphs = False
        errors["ours: CUDA-graph capture"] = error_text(error)
        say(f"end_to_end: CUDA-graph capture failed, ours goes on without graphs: {error_text(error)}")
        free_memory(device)
        engine = new_engine(graphs=False)
    result["setup"]["ours_cuda_graphs"] = ours_graphs
    batcher = S2MelBatcher(nets["s2mel"], nets["codec"], device)
    with guarded(result, "ours warm-up"):
        run_ours(check, engine, events, batcher, make_streams(check, 1, seed=99), timeout_s=120)
    for count in s.e2e_streams:
        if not budget.allows():
            skipped[f"ours {count} streams"] = "time budget"
            continue
        try:
            times = run_ours(check, engine, events, batcher, streams[:count], timeout_s=max(budget.left(), 10.0))
            result["runs"].append({"system": "ours", **stream_summary(times)})
            row = result["runs"][-1]
            say(f"end_to_end: ours, {count} streams: RTF p50 {row['rtf_p50']:.3f}, "
                f"{row['audio_s_per_s']:.1f} audio s/s, first audio p50 {row['first_audio_p50_s']:.2f} s")
        except Exception as error:  # noqa: BLE001
            errors[f"ours {count} streams"] = error_text(error)
            say(f"end_to_end: ours, {count} streams failed: {error_text(error)}")
    del engine, batcher
    free_memory(device)

    result["ratios"] = []
    for count in s.e2e_streams:
        ours = next((r for r in result["runs"] if r["system"] == "ours" and r["streams"] == count), None)
        eager = next((r for r in result["runs"] if r["system"] == "eager" and r["streams"] == count), None)
        if ours and eager:
            result["ratios"].append({
                "streams": count,
                "audio_s_per_s": ours["audio_s_per_s"] / eager["audio_s_per_s"],
                "rtf_p50": ours["rtf_p50"] / eager["rtf_p50"],
                "first_audio_p50": ours["first_audio_p50_s"] / eager["first_audio_p50_s"],
            })


class _NotLoaded:
    """A network the eager pipeline holds but `synthesize_segment` never reads."""

    def __init__(self, name: str):
        self._name = name

    def __getattr__(self, attribute: str) -> Any:
        raise RuntimeError(f"{self._name} is not loaded in the GPU check (it builds no speaker prompt from audio)")


# ---------------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------------


def hardware(device: torch.device) -> dict[str, Any]:
    import numpy

    info: dict[str, Any] = {
        "device": str(device),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "numpy": numpy.__version__,
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": None,
        "driver": None,
    }
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        info["cpu"] = platform.processor()
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        info.update({
            "gpu": properties.name,
            "gpu_memory_bytes": properties.total_memory,
            "multiprocessors": properties.multi_processor_count,
            "compute_capability": f"{properties.major}.{properties.minor}",
            "cudnn": torch.backends.cudnn.version(),
            "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
            "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
        })
        try:
            query = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                   capture_output=True, text=True, timeout=20, check=True)
            info["driver"] = query.stdout.strip().splitlines()[0]
        except (OSError, subprocess.SubprocessError, IndexError) as error:
            info["driver"] = f"unknown ({error_text(error)})"
    return info


def _f(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}e}" if value and (abs(value) < 10 ** -digits or abs(value) >= 1e6) else f"{value:.{digits}f}"
    return str(value)


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(_f(v) if not isinstance(v, str) else v for v in row) + " |" for row in rows]


def _decoder_markdown(part: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    kv = part.get("kv_cache")
    if kv:
        lines += [f"KV cache: {kv['max_seq_len']} positions x {kv['layers']} layers x {kv['model_dim']} "
                  f"(k and v): " + ", ".join(f"{k} {v / 2**20:.1f} MiB per slot" for k, v in kv["bytes_per_slot"].items())
                  + (f"; an engine took {kv['engine_bytes_per_slot_measured'] / 2**20:.1f} MiB per slot on the GPU"
                     if kv.get("engine_bytes_per_slot_measured") else ""), ""]
    if part.get("cuda_graphs_vs_eager"):
        lines += ["Greedy codes, CUDA graphs against eager (float16):", ""]
        lines += _table(["batch", "steps", "sequences equal", "first divergence (min)", "latent max abs diff"],
                        [[r["batch"], r["steps"], f"{r['sequences_equal']}/{r['sequences']}",
                          r["first_divergence_min"], r["latent_max_abs_error"]] for r in part["cuda_graphs_vs_eager"]])
        lines.append("")
    fp = part.get("float16_vs_float32")
    if fp:
        lines += [(f"Greedy codes, float16 against float32 (batch {fp['batch']}, {fp['steps']} steps): "
                  f"{fp['sequences_equal']}/{fp['sequences']} sequences equal; first divergence min "
                  f"{_f(fp['first_divergence_min'])}, median {_f(fp['first_divergence_median'])}; latents over the "
                  f"agreeing steps: max abs error {_f(fp['latent_max_abs_error'])}, relative error max "
                  f"{_f(fp['latent_rel_error_max'])}."), ""]
    if part.get("step_time"):
        lines += ["Decode step (runner + mel_head, no sampling) against batch and cache position:", ""]
        lines += _table(["batch", "position", "runner", "step (ms)", "codes/s"],
                        [[r["batch"], r["position"], r["runner"], r["step_ms"], r["codes_per_s"]]
                         for r in part["step_time"]])
        lines.append("")
    if part.get("sampling"):
        lines += ["Sampling per step:", ""]
        lines += _table(["batch", "official sampling (ms)", "greedy (ms)"],
                        [[r["batch"], r["official_ms"], r["greedy_ms"]] for r in part["sampling"]])
        lines.append("")
    if part.get("engine"):
        lines += ["The engine, official sampling (steady decode steps; and with the prefills):", ""]
        lines += _table(["batch", "codes/request", "step (ms)", "codes/s (decode)", "codes/s (with prefills)",
                         "prefill (ms/request)"],
                        [[r["batch"], r["codes"], r["decode_step_ms"], r["decode_codes_per_s"],
                          r["end_to_end_codes_per_s"], r["prefill_ms_per_request"]] for r in part["engine"]])
        lines.append("")
    if part.get("out_of_memory"):
        row = part["out_of_memory"]
        lines += [(f"Out of memory provoked (GPU filled, then a batch of {row['batch']} decoded): outcomes "
                  f"{row['with_memory_taken']}, decode batches run {row['decode_batches_run']}; with the memory "
                  f"given back, all served again: {row['recovered']}."), ""]
    return lines


def _s2mel_markdown(part: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    seg = part.get("segment")
    if seg:
        lines += [(f"Segment: {seg['codes']} codes -> {seg['generated_frames']} mel frames after a "
                  f"{seg['prompt_frames']}-frame prompt ({seg['total_frames']} frames), {seg['diffusion_steps']} "
                  f"steps, CFG {seg['cfg_rate']}."), ""]
    if part.get("rows"):
        lines += _table(["mode", "batch", "runner", "ms/segment", "batch (ms)", "rel error vs float32",
                         "max abs vs float32", "vs eager, same mode"],
                        [[r["mode"], r["batch"], r["runner"], r["ms_per_segment"], r["batch_ms"],
                          r.get("vs_float32", {}).get("rel_error"), r.get("vs_float32", {}).get("max_abs_error"),
                          r.get("vs_eager_same_mode", {}).get("max_abs_error")] for r in part["rows"]])
        lines.append("")
    if part.get("best"):
        lines += ["Fastest per batch:", ""]
        lines += _table(["batch", "mode", "runner", "ms/segment", "speed-up vs float32 eager"],
                        [[r["batch"], r["mode"], r["runner"], r["ms_per_segment"], r["speedup_vs_float32_eager"]]
                         for r in part["best"]])
        lines.append("")
    return lines


def _bigvgan_markdown(part: dict[str, Any]) -> list[str]:
    if not part.get("rows"):
        return []
    lines = [f"{part['audio_seconds']:.2f} s of audio per item.", ""]
    lines += _table(["mode", "batch", "ms", "ms per audio second", "SNR vs float32 (dB)"],
                    [[r["mode"], r["batch"], r["ms"], r["ms_per_audio_second"], r.get("snr_db_vs_float32")]
                     for r in part["rows"]])
    return [*lines, ""]


def _end_to_end_markdown(part: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    setup = part.get("setup")
    if setup:
        lines += [(f"Each stream: {setup['segments_per_stream']} segments of {setup['codes_per_segment']} codes "
                  f"({setup['audio_s_per_stream']:.2f} s of audio), {setup['text_tokens']} text tokens per segment, "
                  f"{setup['prompt_frames']}-frame prompt, {setup['diffusion_steps']} diffusion steps. "
                  f"Ours: {setup['ours']} (GPT CUDA graphs: {_f(setup.get('ours_cuda_graphs'))}). "
                  f"Eager: {setup['eager']}."), ""]
    if part.get("runs"):
        lines += _table(["system", "streams", "RTF p50", "RTF mean", "RTF max", "audio s/s", "first audio p50 (s)",
                         "first audio max (s)", "first codes p50 (s)", "wall (s)", "extrapolated streams"],
                        [[r["system"], r["streams"], r["rtf_p50"], r["rtf_mean"], r["rtf_max"], r["audio_s_per_s"],
                          r["first_audio_p50_s"], r["first_audio_max_s"], r["first_codes_p50_s"], r["wall_s"],
                          r["extrapolated_streams"]] for r in part["runs"]])
        lines.append("")
    if part.get("ratios"):
        lines += ["Ours / eager (audio s/s above 1, the others below 1 favour ours):", ""]
        lines += _table(["streams", "audio s/s", "RTF p50", "first audio p50"],
                        [[r["streams"], r["audio_s_per_s"], r["rtf_p50"], r["first_audio_p50"]] for r in part["ratios"]])
        lines.append("")
    return lines


MARKDOWN_SECTIONS = {"decoder": _decoder_markdown, "s2mel": _s2mel_markdown, "bigvgan": _bigvgan_markdown,
                     "end_to_end": _end_to_end_markdown}


def markdown(report: dict[str, Any]) -> str:
    hw = report["hardware"]
    where = (f"{hw['gpu']}, driver {hw['driver']}, CUDA {hw['cuda']}" if hw.get("gpu")
             else f"{hw.get('cpu')}, {hw['cpu_count']} cores, no GPU")
    lines = [
        f"# GPU check: preset `{report['preset']}`, {report['settings']['tier']} run",
        "",
        (f"{where}; torch {hw['torch']}, numpy {hw['numpy']}, Python {hw['python']}. Random weights: times and "
        "memory are those of the real shapes, errors only indicative."),
        f"Command: `{report['command']}`; {report['seconds']:.0f} s in all.",
        "",
        "| part | status | seconds | budget (s) |",
        "|---|---|---:|---:|",
    ]
    setup = report.get("setup", {})
    lines.append(f"| setup | {setup.get('status', '-')} | {_f(setup.get('seconds'))} | - |")
    for name, part in report["parts"].items():
        lines.append(f"| {name} | {part['status']} | {_f(part.get('seconds'))} | {_f(part.get('budget_s'))} |")
    for name, part in report["parts"].items():
        lines += ["", f"## {name}", ""]
        try:
            lines += MARKDOWN_SECTIONS[name](part)
        except Exception as error:  # noqa: BLE001 - the JSON has the numbers
            lines += [f"(this section could not be written: {error_text(error)})", ""]
        if part.get("error"):
            lines += [f"**Failed**: `{part['error']}`", ""]
        for key, message in part.get("errors", {}).items():
            lines.append(f"- error, {key}: `{message}`")
        for key, reason in part.get("skipped", {}).items():
            lines.append(f"- skipped, {key}: {reason}")
    return "\n".join(lines).rstrip() + "\n"


# ---------------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------------

PART_FUNCTIONS: dict[str, Callable[[Check, Budget, dict[str, Any]], None]] = {
    "decoder": decoder_part, "s2mel": s2mel_part, "bigvgan": bigvgan_part, "end_to_end": end_to_end_part,
}


@contextlib.contextmanager
def _part_record(report: dict[str, Any], name: str, budget_s: float) -> Iterator[dict[str, Any]]:
    record: dict[str, Any] = {"status": "running", "budget_s": budget_s, "skipped": {}}
    report["parts"][name] = record
    started = time.perf_counter()
    try:
        yield record
        record["status"] = "ok"
    except Exception as error:  # noqa: BLE001 - one part failing leaves the others' numbers
        record["status"] = "error"
        record["error"] = error_text(error)
        record["traceback"] = traceback.format_exc()[-3000:]
        say(f"{name} failed: {record['error']}")
    finally:
        record["seconds"] = time.perf_counter() - started


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=("official", "small", "demo"), default="official")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--quick", action="store_true", help="a ~3 minute subset (on CUDA)")
    parser.add_argument("--out", type=Path, default=None, help="default: $OUT when set, else benchmarks/results/")
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    parser.add_argument("--time-limit", type=float, default=None,
                        help="seconds for the whole run (default: 450 full, 165 quick, 300 on the CPU)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (default: 1 for the demo preset on a CPU, else torch's)")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    if args.device == "cuda" and not torch.cuda.is_available():
        say("--device cuda, but torch sees no CUDA device")
        return 2
    if args.threads or (args.device == "cpu" and args.preset == "demo"):
        # The demo networks are tiny: on a CPU, OpenMP hand-offs between threads cost more than they save.
        torch.set_num_threads(args.threads or 1)
    replaced = install_import_stand_ins()
    from indextts2.presets import PRESETS

    device = torch.device(args.device)
    settings = settings_for(device, args.quick)
    if args.time_limit:
        settings = dataclasses.replace(settings, time_limit_s=args.time_limit)
    out = args.out or Path(os.environ.get("OUT") or REPO_ROOT / "benchmarks" / "results")
    out.mkdir(parents=True, exist_ok=True)
    name = f"gpu_check_{args.preset}_{device.type}{'_quick' if args.quick else ''}"
    report: dict[str, Any] = {
        "command": " ".join(["python -m benchmarks.gpu_check", *(argv if argv is not None else sys.argv[1:])]),
        "preset": args.preset,
        "settings": dataclasses.asdict(settings),
        "hardware": hardware(device),
        "import_stand_ins": replaced,
        "setup": {},
        "parts": {},
    }
    say(f"preset {args.preset} on {report['hardware'].get('gpu') or 'the CPU'}, {settings.tier} run, "
        f"limit {settings.time_limit_s:.0f} s; parts {', '.join(args.parts)}")
    check = Check(PRESETS[args.preset], device, settings, args.seed)

    def left() -> float:
        return settings.time_limit_s - (time.perf_counter() - started)

    # Setup: the networks the chosen parts need.
    setup = report["setup"]
    setup_started = time.perf_counter()
    setup["networks"] = {}
    failed_networks: dict[str, str] = {}
    for network in dict.fromkeys(n for part in args.parts for n in NETWORKS_OF_PART[part]):
        try:
            setup["networks"][network] = check.build(network)
            say(f"setup: {network}: {setup['networks'][network]['parameters'] / 1e6:.1f} M parameters in "
                f"{setup['networks'][network]['seconds']:.1f} s")
        except Exception as error:  # noqa: BLE001
            failed_networks[network] = error_text(error)
            say(f"setup: {network} failed: {error_text(error)}")
    setup["status"] = "error" if failed_networks else "ok"
    setup["errors"] = failed_networks
    setup["seconds"] = time.perf_counter() - setup_started

    for part in args.parts:
        budget_s = max(0.0, min(settings.budgets_s[part], left()))
        with _part_record(report, part, budget_s) as record:
            missing = [n for n in NETWORKS_OF_PART[part] if n in failed_networks]
            if missing:
                raise RuntimeError(f"networks not built: {', '.join(missing)}")
            if budget_s <= 0:
                record["skipped"]["all"] = "the run's time limit was reached"
            else:
                say(f"{part}: start (budget {budget_s:.0f} s)")
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                PART_FUNCTIONS[part](check, Budget(budget_s), record)
        if device.type == "cuda":
            record["peak_gpu_bytes"] = torch.cuda.max_memory_allocated(device)
        free_memory(device)
        say(f"{part}: {record['status']} in {record['seconds']:.1f} s")

    report["seconds"] = time.perf_counter() - started
    (out / f"{name}.json").write_text(json.dumps(report, indent=2, default=str))
    (out / f"{name}.md").write_text(markdown(report))
    say(f"done in {report['seconds']:.0f} s: {out / name}.json and .md")
    return 1 if any(p["status"] == "error" for p in report["parts"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
