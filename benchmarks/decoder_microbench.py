"""Microbenchmark of the `gpt_decoder` engine on random GPTs of a few sizes.

    .venv/bin/python benchmarks/decoder_microbench.py --json out.json --markdown out.md
    .venv/bin/python benchmarks/decoder_microbench.py --device cuda --models demo,mid,official

Two measurements per model size:

1. Step time vs sequence length (batch 1): one decode step of the engine (KV cache; the median of
   the engine's own per-step timings within +-4 positions of the length, sampling included) against
   one full recomputation of the sequence (`UnifiedVoice.decode` over all tokens + `mel_head` on the
   last, what `generate(use_cache=False)` does per step).
2. Codes/s vs batch size: B requests decoded together (official sampling settings: temperature 0.8,
   top_k 30, top_p 0.8, repetition penalty 10), steady-state decode steps only (the step with the
   prefills left out), and end to end (prefills included).

The weights are random (GPT-2 style N(0, 0.02) projections) with the stop code disabled, so every
sequence runs to max_codes; the timings are those of the real shapes. `official` (1280 wide, 24 layers)
is meant for a GPU: on a CPU a sweep takes many minutes.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from indextts2.engine import DecoderEngine, DecodeRequest, SamplingConfig
from indextts2.networks.gpt import Conv1D, UnifiedVoice, build_gpt
from indextts2.presets import DEMO_CONFIG, SEMANTIC_DIM

# GPT sizes: the demo preset, a mid-size one, and the released IndexTTS-2 GPT.
PRESETS: dict[str, dict[str, Any]] = {
    "demo": {
        "model_dim": 64,
        "layers": 2,
        "heads": 4,
        "number_mel_codes": 258,
        "number_text_tokens": 512,
        "max_mel_tokens": 600,
        "max_text_tokens": 120,
    },
    "mid": {
        "model_dim": 512,
        "layers": 8,
        "heads": 8,
        "number_mel_codes": 8194,
        "number_text_tokens": 12000,
        "max_mel_tokens": 1815,
        "max_text_tokens": 600,
    },
    "official": {
        "model_dim": 1280,
        "layers": 24,
        "heads": 20,
        "number_mel_codes": 8194,
        "number_text_tokens": 12000,
        "max_mel_tokens": 1815,
        "max_text_tokens": 600,
    },
}
LENGTHS = {
    "demo": [64, 128, 256, 512],
    "mid": [64, 128, 256, 512, 1024],
    "official": [64, 256, 512, 1024, 2048],
}
BATCH_SIZES = [1, 2, 4, 8, 16]
BATCH_CODES = {"demo": 128, "mid": 48, "official": 128}
TEXT_LEN = 10  # prefix = 32 latents + 2 speed + (10 + 2) text = 46 tokens
OFFICIAL_SAMPLING = {
    "do_sample": True,
    "temperature": 0.8,
    "top_k": 30,
    "top_p": 0.8,
    "repetition_penalty": 10.0,
}


def build_random_gpt(preset: str, seed: int = 0) -> UnifiedVoice:
    config = copy.deepcopy(DEMO_CONFIG["gpt"])
    config.update(PRESETS[preset])
    config["start_mel_token"] = config["number_mel_codes"] - 2
    config["stop_mel_token"] = config["number_mel_codes"] - 1
    torch.manual_seed(seed)
    model = build_gpt(config, feature_dim=SEMANTIC_DIM).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, Conv1D):  # built as zeros: random projections, as GPT-2 initialises them
                module.weight.normal_(0.0, 0.02)
        model.mel_head.bias[model.stop_mel_token] = -1e4  # every sequence runs to max_codes
    return model


def request(model: UnifiedVoice, index: int, max_codes: int, sampling: dict[str, Any]) -> DecodeRequest:
    g = torch.Generator().manual_seed(index)
    return DecodeRequest(
        speaker_latents=torch.randn(32, model.model_dim, generator=g),
        emotion_vector=torch.randn(model.model_dim, generator=g),
        text_ids=torch.randint(2, model.text_embedding.num_embeddings, (TEXT_LEN,), generator=g),
        sampling=SamplingConfig(max_codes=max_codes, seed=index, **sampling),
        request_id=f"r{index}",
        stream_every=10_000,
    )


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def step_time_vs_length(
    model: UnifiedVoice, device: torch.device, lengths: list[int]
) -> list[dict[str, Any]]:
    prefix_len = 32 + 2 + TEXT_LEN + 2
    max_codes = max(lengths) - prefix_len + 8
    engine = DecoderEngine(model, max_slots=1, max_seq_len=prefix_len + max_codes, device=device)
    engine.submit(request(model, 0, max_codes, {}))
    engine.run_until_idle()
    # Record i is the step that prefilled (i = 0) and then decoded one token: the sequence is then
    # prefix_len + i + 2 tokens long.
    step_seconds = {prefix_len + i + 2: r.decode_seconds for i, r in enumerate(engine.stats.records)}

    rows = []
    with torch.inference_mode():
        for length in lengths:
            cached = statistics.median(
                step_seconds[n] for n in range(length - 4, length + 5) if n in step_seconds
            )
            embeds = torch.randn(1, length, model.model_dim, device=device, dtype=engine.dtype)
            timings = []
            for _ in range(2 + (3 if length <= 512 else 1)):
                synchronize(device)
                started = time.perf_counter()
                model.mel_head(model.decode(embeds)[:, -1])
                synchronize(device)
                timings.append(time.perf_counter() - started)
            recomputed = statistics.median(timings[2:])
            rows.append(
                {
                    "length": length,
                    "kv_cache_step_ms": 1e3 * cached,
                    "full_recompute_ms": 1e3 * recomputed,
                    "speedup": recomputed / cached,
                }
            )
            print(
                f"  length {length:5d}: KV cache {1e3 * cached:8.2f} ms, "
                f"full recompute {1e3 * recomputed:8.2f} ms",
                flush=True,
            )
    return rows


def codes_per_second_vs_batch(
    model: UnifiedVoice, device: torch.device, max_codes: int
) -> list[dict[str, Any]]:
    prefix_len = 32 + 2 + TEXT_LEN + 2
    engine = DecoderEngine(
        model, max_slots=max(BATCH_SIZES), max_seq_len=prefix_len + max_codes + 8, device=device
    )
    engine.submit(request(model, 0, 4, OFFICIAL_SAMPLING))  # warm-up
    engine.run_until_idle()
    rows = []
    for batch in BATCH_SIZES:
        engine.stats.reset()
        handles = [engine.submit(request(model, i, max_codes, OFFICIAL_SAMPLING)) for i in range(batch)]
        started = time.perf_counter()
        engine.run_until_idle()
        wall = time.perf_counter() - started
        codes = sum(len(h.result(timeout=0).codes) for h in handles)
        steady = [r for r in engine.stats.records if r.prefills == 0 and r.decode_batch == batch]
        decode_seconds = sum(r.decode_seconds for r in steady)
        rows.append(
            {
                "batch": batch,
                "decode_step_ms": 1e3 * statistics.median(r.decode_seconds for r in steady),
                "decode_codes_per_s": sum(r.decode_batch for r in steady) / decode_seconds,
                "end_to_end_codes_per_s": codes / wall,
                "prefill_ms_per_request": 1e3 * sum(r.prefill_seconds for r in engine.stats.records) / batch,
            }
        )
        row = rows[-1]
        print(
            f"  batch {batch:2d}: step {row['decode_step_ms']:7.2f} ms, "
            f"{row['decode_codes_per_s']:8.1f} codes/s "
            f"(end to end {row['end_to_end_codes_per_s']:8.1f})",
            flush=True,
        )
    return rows


def hardware(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {
        "device": str(device),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        info["cpu"] = platform.processor()
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def markdown(result: dict[str, Any]) -> str:
    hw = result["hardware"]
    where = hw.get("gpu") or f"{hw.get('cpu')}, {hw['cpu_count']} cores"
    lines = [
        "# Decoder engine microbenchmark",
        "",
        (
            f"Hardware: {where}; device `{hw['device']}`, {result['dtype']}, torch {hw['torch']}, "
            f"{hw['torch_threads']} torch threads, load average at start {hw['load_average_at_start']}."
        ),
        f"Command: `{result['command']}`; total {result['seconds']:.0f} s.",
    ]
    for name, model in result["models"].items():
        dims = model["dims"]
        size = f"{dims['model_dim']} wide, {dims['layers']} layers, {dims['heads']} heads"
        lines += [
            "",
            f"## {name}: {size}, {dims['number_mel_codes']} codes",
            "",
            "| sequence length | KV cache step (ms) | full recompute (ms) | speed-up |",
            "|---:|---:|---:|---:|",
        ]
        lines += [
            f"| {r['length']} | {r['kv_cache_step_ms']:.2f} | {r['full_recompute_ms']:.2f} "
            f"| {r['speedup']:.1f}x |"
            for r in model["step_time_vs_length"]
        ]
        lines += [
            "",
            f"{model['batch_codes']} codes per request, official sampling settings.",
            "",
            "| batch | decode step (ms) | codes/s (decode steps) | codes/s (end to end) | prefill (ms/req) |",
            "|---:|---:|---:|---:|---:|",
        ]
        lines += [
            f"| {r['batch']} | {r['decode_step_ms']:.2f} | {r['decode_codes_per_s']:.0f} | "
            f"{r['end_to_end_codes_per_s']:.0f} | {r['prefill_ms_per_request']:.1f} |"
            for r in model["codes_per_second_vs_batch"]
        ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument(
        "--models", default=None, help="comma-separated presets (default: demo,mid on CPU, all on CUDA)"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument("--markdown", type=Path, default=None, help="write the tables here")
    args = parser.parse_args()

    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    names = (
        args.models.split(",")
        if args.models
        else (list(PRESETS) if device.type == "cuda" else ["demo", "mid"])
    )
    started = time.perf_counter()
    result: dict[str, Any] = {
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "hardware": hardware(device),
        "models": {},
    }
    for name in names:
        print(f"{name}:", flush=True)
        model = build_random_gpt(name)
        dtype = torch.float16 if device.type == "cuda" else torch.float32
        result["dtype"] = str(dtype).removeprefix("torch.")
        result["models"][name] = {
            "dims": PRESETS[name],
            "batch_codes": BATCH_CODES[name],
            "step_time_vs_length": step_time_vs_length(model, device, LENGTHS[name]),
            "codes_per_second_vs_batch": codes_per_second_vs_batch(model, device, BATCH_CODES[name]),
        }
    result["seconds"] = time.perf_counter() - started
    table = markdown(result)
    print(table)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    if args.markdown:
        args.markdown.write_text(table)


if __name__ == "__main__":
    main()
