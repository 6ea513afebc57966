"""Export every ONNX stage of a random IndexTTS-2 checkpoint at the official size, and measure it.

    .venv/bin/python benchmarks/export_official_size.py --json out.json --markdown out.md
    .venv/bin/python benchmarks/export_official_size.py --stages vocoder campplus
    .venv/bin/python benchmarks/export_official_size.py --checkpoint /path/to/IndexTTS-2   # real weights

Step 1 writes a random checkpoint with the dimensions of the released IndexTTS-2 (config.yaml below,
w2v-BERT 2.0, MaskGCT semantic codec, CAMPPlus, BigVGAN v2 22 kHz 80-band 256x) in the official
layout, so the same loaders and exporter run on it as on the real download. Step 2 exports each ONNX
stage (float32) with `export.onnx_export.export_stage`, each in its own subprocess, so that the peak
resident memory of one stage (the child's ru_maxrss, Python and torch included) is measured alone. Each
child loads only the networks its stage reads; the others are built on the meta device, which costs no
memory, so that `export.stages.build_onnx_stages` sees a complete set. Every heavy step runs in a child;
the parent never imports torch.

Recorded: per stage the ONNX size (external data included), export and verification time (ONNX Runtime
against PyTorch, as the repository export does), largest absolute error, peak RSS; the checkpoint's
write time and sizes; the whole run's wall time; the hardware and library versions.

The weights are random: sizes, times and memory are those of the real model, the errors are only
indicative (a trained network has other activation ranges).
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

ONNX_FILE = "model.onnx"
PROTOBUF_LIMIT = 2**31  # a single ONNX protobuf cannot exceed 2 GiB; bigger models need external data
GIB = 2**30
MIB = 2**20

# ---------------------------------------------------------------------------------------------------
# The official dimensions
# ---------------------------------------------------------------------------------------------------

# The released IndexTTS-2 checkpoints/config.yaml (IndexTeam/IndexTTS-2 on the HF hub), value for value.
OFFICIAL_CONFIG: dict[str, Any] = {
    "dataset": {
        "bpe_model": "bpe.model",
        "sample_rate": 24000,
        "squeeze": False,
        "mel": {"sample_rate": 24000, "n_fft": 1024, "hop_length": 256, "win_length": 1024, "n_mels": 100,
                "mel_fmin": 0, "normalize": False},
    },
    "gpt": {
        "model_dim": 1280,
        "max_mel_tokens": 1815,
        "max_text_tokens": 600,
        "heads": 20,
        "use_mel_codes_as_input": True,
        "mel_length_compression": 1024,
        "layers": 24,
        "number_text_tokens": 12000,
        "number_mel_codes": 8194,
        "start_mel_token": 8192,
        "stop_mel_token": 8193,
        "start_text_token": 0,
        "stop_text_token": 1,
        "train_solo_embeddings": False,
        "condition_type": "conformer_perceiver",
        "condition_module": {"output_size": 512, "linear_units": 2048, "attention_heads": 8, "num_blocks": 6,
                             "input_layer": "conv2d2", "perceiver_mult": 2},
        "emo_condition_module": {"output_size": 512, "linear_units": 1024, "attention_heads": 4, "num_blocks": 4,
                                 "input_layer": "conv2d2", "perceiver_mult": 2},
    },
    "semantic_codec": {"codebook_size": 8192, "hidden_size": 1024, "codebook_dim": 8, "vocos_dim": 384,
                       "vocos_intermediate_dim": 2048, "vocos_num_layers": 12},
    "s2mel": {
        "preprocess_params": {
            "sr": 22050,
            "spect_params": {"n_fft": 1024, "win_length": 1024, "hop_length": 256, "n_mels": 80, "fmin": 0,
                             "fmax": "None"},
        },
        "dit_type": "DiT",
        "reg_loss_type": "l1",
        "style_encoder": {"dim": 192},
        "length_regulator": {"channels": 512, "is_discrete": False, "in_channels": 1024,
                             "content_codebook_size": 2048, "sampling_ratios": [1, 1, 1, 1],
                             "vector_quantize": False, "n_codebooks": 1, "quantizer_dropout": 0.0,
                             "f0_condition": False, "n_f0_bins": 512},
        "DiT": {"hidden_dim": 512, "num_heads": 8, "depth": 13, "class_dropout_prob": 0.1, "block_size": 8192,
                "in_channels": 80, "style_condition": True, "final_layer_type": "wavenet", "target": "mel",
                "content_dim": 512, "content_codebook_size": 1024, "content_type": "discrete",
                "f0_condition": False, "n_f0_bins": 512, "content_codebooks": 1, "is_causal": False,
                "long_skip_connection": True, "zero_prompt_speech_token": False, "time_as_token": False,
                "style_as_token": False, "uvit_skip_connection": True, "add_resblock_in_transformer": False},
        "wavenet": {"hidden_dim": 512, "num_layers": 8, "kernel_size": 5, "dilation_rate": 1, "p_dropout": 0.2,
                    "style_condition": True},
    },
    "gpt_checkpoint": "gpt.pth",
    "w2v_stat": "wav2vec2bert_stats.pt",
    "s2mel_checkpoint": "s2mel.pth",
    "emo_matrix": "feat2.pt",
    "spk_matrix": "feat1.pt",
    "emo_num": [3, 17, 2, 8, 4, 5, 10, 24],
    "qwen_emo_path": "qwen0.6bemo4-merge/",
    "vocoder": {"type": "bigvgan", "name": "nvidia/bigvgan_v2_22khz_80band_256x"},
    "version": 2.0,
}

# nvidia/bigvgan_v2_22khz_80band_256x config.json (the hyper-parameters that shape the generator, and
# the audio ones).
OFFICIAL_BIGVGAN_CONFIG: dict[str, Any] = {
    "resblock": "1",
    "upsample_rates": [4, 4, 2, 2, 2, 2],
    "upsample_kernel_sizes": [8, 8, 4, 4, 4, 4],
    "upsample_initial_channel": 1536,
    "resblock_kernel_sizes": [3, 7, 11],
    "resblock_dilation_sizes": [[1, 3, 5], [1, 3, 5], [1, 3, 5]],
    "use_tanh_at_final": False,
    "use_bias_at_final": False,
    "activation": "snakebeta",
    "snake_logscale": True,
    "num_mels": 80,
    "num_freq": 1025,
    "n_fft": 1024,
    "hop_size": 256,
    "win_size": 1024,
    "sampling_rate": 22050,
    "fmin": 0,
    "fmax": None,
}

# facebook/w2v-bert-2.0: transformers' Wav2Vec2BertConfig defaults are that model's config; these are the
# widths `write_tiny_w2v_bert` takes, at their real values. All 24 layers are written, as in the real
# model.safetensors; the loader reads the first 17.
OFFICIAL_W2V_BERT: dict[str, Any] = {
    "hidden_size": 1024, "num_layers": 24, "num_attention_heads": 16, "intermediate_size": 4096,
    "conv_depthwise_kernel_size": 31,
}

# funasr/campplus campplus_cn_common.bin is CAMPPlus(feat_dim=80, embedding_size=192): our defaults.
OFFICIAL_CAMPPLUS: dict[str, Any] = {}

# The official bpe.model has 12000 pieces; the demo corpus trains at most ~3500. The ONNX stages never
# read it; any vocabulary up to number_text_tokens fits the GPT.
BPE_VOCAB = 2048


@dataclass(frozen=True)
class CheckpointPreset:
    name: str
    config: dict[str, Any]
    bigvgan: dict[str, Any]
    campplus: dict[str, Any]
    w2v_bert: dict[str, Any]
    bpe_vocab: int


def preset(name: str) -> CheckpointPreset:
    """`official` (the released sizes) or `tiny` (the demo preset's sizes, for tests of this script)."""
    if name == "official":
        return CheckpointPreset("official", copy.deepcopy(OFFICIAL_CONFIG), copy.deepcopy(OFFICIAL_BIGVGAN_CONFIG),
                                dict(OFFICIAL_CAMPPLUS), dict(OFFICIAL_W2V_BERT), BPE_VOCAB)
    if name == "tiny":
        from indextts2 import demo

        return CheckpointPreset(
            "tiny", copy.deepcopy(demo.DEMO_CONFIG), copy.deepcopy(demo.DEMO_BIGVGAN_CONFIG),
            dict(demo.DEMO_CAMPPLUS_CONFIG), {"hidden_size": demo.SEMANTIC_DIM, "num_layers": 17},
            demo.TEXT_VOCAB,
        )
    raise ValueError(f"unknown preset {name!r}: official or tiny")


# ---------------------------------------------------------------------------------------------------
# Step 1 (child): the random checkpoint
# ---------------------------------------------------------------------------------------------------


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _perturb_(module, generator) -> None:
    """Add noise to every parameter so that no gain is exactly 1 and no bias or zero-initialised
    embedding exactly 0 (an inert path would make the verification error meaningless). Matrices get
    0.1 / sqrt(fan_in) * N(0, 1): at 1024-1536 channels an unscaled 0.1 would multiply the activations
    by several per layer, far from what a trained network computes."""
    import torch

    with torch.no_grad():
        for parameter in module.parameters():
            scale = 0.1
            if parameter.dim() >= 2:
                scale /= (parameter.numel() // parameter.shape[0]) ** 0.5
            parameter.add_(scale * torch.randn(parameter.shape, generator=generator))


def _randomise_batch_norm_stats_(module, generator) -> None:
    import torch

    with torch.no_grad():
        for layer in module.modules():
            if isinstance(layer, torch.nn.modules.batchnorm._BatchNorm) and layer.running_var is not None:
                layer.running_mean.copy_(0.1 * torch.randn(layer.running_mean.shape, generator=generator))
                layer.running_var.copy_(1.0 + 0.1 * torch.rand(layer.running_var.shape, generator=generator))


def _file_sizes(root: Path, relative_to: Path) -> dict[str, int]:
    return {str(p.relative_to(relative_to)): p.stat().st_size for p in sorted(root.rglob("*")) if p.is_file()}


def write_random_checkpoint(out_dir: Path, checkpoint_preset: CheckpointPreset, seed: int = 0) -> list[dict]:
    """Write a complete random checkpoint in the official layout (the external parts under hf_cache/,
    as the official downloader places them); one network at a time, each freed before the next.

    Returns one record per part: files written (path -> bytes), parameter count, seconds.
    """
    import gc

    import torch
    import yaml
    from safetensors.torch import save_file

    from indextts2.checkpoint_dir import (
        DEFAULT_BIGVGAN_DIR,
        DEFAULT_CAMPPLUS,
        DEFAULT_SEMANTIC_CODEC,
        DEFAULT_W2V_BERT_DIR,
    )
    from indextts2.frontend.text import train_demo_bpe
    from indextts2.networks.bigvgan import bigvgan_official_checkpoint, build_bigvgan
    from indextts2.networks.campplus import CAMPPlus
    from indextts2.networks.gpt import build_gpt
    from indextts2.networks.s2mel import build_s2mel, s2mel_official_checkpoint
    from indextts2.networks.semantic_codec import build_semantic_codec, semantic_codec_official_state_dict
    from indextts2.networks.semantic_encoder import write_tiny_w2v_bert

    out_dir.mkdir(parents=True, exist_ok=True)
    config = checkpoint_preset.config
    semantic_dim = int(config["semantic_codec"]["hidden_size"])
    model_dim = int(config["gpt"]["model_dim"])
    style_dim = int(config["s2mel"]["style_encoder"]["dim"])
    generator = torch.Generator().manual_seed(seed)
    records: list[dict] = []

    def part(name: str, write) -> None:
        _say(f"  writing {name} ...")
        before = _file_sizes(out_dir, out_dir)
        started = time.perf_counter()
        parameters = write()
        seconds = time.perf_counter() - started
        gc.collect()
        files = {k: v for k, v in _file_sizes(out_dir, out_dir).items() if before.get(k) != v}
        records.append({"part": name, "files": files, "bytes": sum(files.values()), "parameters": parameters,
                        "seconds": seconds})
        _say(f"  wrote {name}: {sum(files.values()) / MIB:.1f} MiB in {seconds:.1f} s")

    def count(module) -> int:
        return sum(p.numel() for p in module.parameters())

    def write_config_and_bpe() -> None:
        with (out_dir / "config.yaml").open("w") as f:
            yaml.safe_dump(config, f, sort_keys=False)
        vocab = min(checkpoint_preset.bpe_vocab, int(config["gpt"]["number_text_tokens"]))
        train_demo_bpe(out_dir / config["dataset"]["bpe_model"], vocab_size=vocab)

    def write_gpt() -> int:
        gpt = build_gpt(config["gpt"], feature_dim=semantic_dim)
        _perturb_(gpt, generator)
        torch.save(gpt.state_dict(), out_dir / config["gpt_checkpoint"])
        return count(gpt)

    def write_s2mel() -> int:
        s2mel = build_s2mel(config["s2mel"], gpt_latent_dim=model_dim)
        _perturb_(s2mel, generator)
        torch.save(s2mel_official_checkpoint(s2mel), out_dir / config["s2mel_checkpoint"])
        return count(s2mel)

    def write_stats_and_matrices() -> None:
        torch.save({"mean": 0.1 * torch.randn(semantic_dim, generator=generator),
                    "var": 0.5 + torch.rand(semantic_dim, generator=generator)}, out_dir / config["w2v_stat"])
        rows = sum(config["emo_num"])
        torch.save(torch.randn(rows, style_dim, generator=generator), out_dir / config["spk_matrix"])
        torch.save(torch.randn(rows, model_dim, generator=generator), out_dir / config["emo_matrix"])

    def write_w2v_bert() -> int:
        directory = write_tiny_w2v_bert(out_dir / DEFAULT_W2V_BERT_DIR, seed=seed, **checkpoint_preset.w2v_bert)
        from safetensors import safe_open

        with safe_open(str(directory / "model.safetensors"), framework="pt") as f:
            return sum(_numel(f.get_slice(key).get_shape()) for key in f.keys())  # noqa: SIM118

    def write_semantic_codec() -> int:
        codec = build_semantic_codec(config["semantic_codec"])
        _perturb_(codec, generator)
        save_file(semantic_codec_official_state_dict(codec), str(out_dir / DEFAULT_SEMANTIC_CODEC))
        return count(codec)

    def write_campplus() -> int:
        campplus = CAMPPlus(**checkpoint_preset.campplus).eval()
        _perturb_(campplus, generator)
        _randomise_batch_norm_stats_(campplus, generator)
        (out_dir / DEFAULT_CAMPPLUS).parent.mkdir(parents=True, exist_ok=True)
        torch.save(campplus.state_dict(), out_dir / DEFAULT_CAMPPLUS)
        return count(campplus)

    def write_bigvgan() -> int:
        bigvgan_dir = out_dir / DEFAULT_BIGVGAN_DIR
        bigvgan_dir.mkdir(parents=True, exist_ok=True)
        (bigvgan_dir / "config.json").write_text(json.dumps(checkpoint_preset.bigvgan, indent=2))
        bigvgan = build_bigvgan(checkpoint_preset.bigvgan)
        _perturb_(bigvgan, generator)
        torch.save(bigvgan_official_checkpoint(bigvgan), bigvgan_dir / "bigvgan_generator.pt")
        return count(bigvgan)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # write_tiny_w2v_bert and the builders' own initialisation
        part("config.yaml + bpe.model", write_config_and_bpe)
        part("gpt.pth", write_gpt)
        part("s2mel.pth", write_s2mel)
        part("stats + feat1/feat2", write_stats_and_matrices)
        part("w2v-bert-2.0", write_w2v_bert)
        part("semantic codec", write_semantic_codec)
        part("campplus", write_campplus)
        part("bigvgan", write_bigvgan)
    return records


def _numel(shape) -> int:
    total = 1
    for size in shape:
        total *= int(size)
    return total


# ---------------------------------------------------------------------------------------------------
# Step 2 (child): one ONNX stage
# ---------------------------------------------------------------------------------------------------

NETWORK_FIELDS = ("semantic_encoder", "semantic_codec", "campplus", "gpt", "s2mel", "bigvgan")


def _build_network(field_name: str, paths, config: dict[str, Any], real: bool):
    """One network of the checkpoint: loaded from its files (`real`), or built on the meta device, which
    holds shapes but no memory. The semantic encoder is None where the checkpoint has no w2v-BERT."""
    import torch
    from transformers import Wav2Vec2BertConfig

    from indextts2.networks.bigvgan import build_bigvgan, load_bigvgan
    from indextts2.networks.campplus import CAMPPlus, load_campplus
    from indextts2.networks.gpt import build_gpt, load_gpt
    from indextts2.networks.s2mel import build_s2mel, load_s2mel
    from indextts2.networks.semantic_codec import build_semantic_codec, load_semantic_codec
    from indextts2.networks.semantic_encoder import CONFIG_FILE, SemanticEncoder, load_semantic_encoder

    semantic_dim = int(config["semantic_codec"]["hidden_size"])
    if field_name == "semantic_encoder":
        if not (paths.w2v_bert_dir / CONFIG_FILE).is_file():
            return None
        if real:
            return load_semantic_encoder(paths.w2v_bert_dir, paths.model_file(config, "w2v_stat"))
        w2v_config = Wav2Vec2BertConfig.from_json_file(str(paths.w2v_bert_dir / CONFIG_FILE))
        with torch.device("meta"):
            return SemanticEncoder(w2v_config, torch.zeros(w2v_config.hidden_size), torch.ones(w2v_config.hidden_size))
    if real:
        loaders = {
            "semantic_codec": lambda: load_semantic_codec(config["semantic_codec"], paths.semantic_codec),
            "campplus": lambda: load_campplus(paths.campplus),
            "gpt": lambda: load_gpt(config["gpt"], paths.model_file(config, "gpt_checkpoint"), feature_dim=semantic_dim),
            "s2mel": lambda: load_s2mel(config["s2mel"], paths.model_file(config, "s2mel_checkpoint")),
            "bigvgan": lambda: load_bigvgan(paths.bigvgan_dir),
        }
        return loaders[field_name]()
    with torch.device("meta"):
        if field_name == "semantic_codec":
            return build_semantic_codec(config["semantic_codec"])
        if field_name == "campplus":
            return CAMPPlus()
        if field_name == "gpt":
            return build_gpt(config["gpt"], feature_dim=semantic_dim)
        if field_name == "s2mel":
            return build_s2mel(config["s2mel"], gpt_latent_dim=int(config["gpt"]["model_dim"]))
        if field_name == "bigvgan":
            with (paths.bigvgan_dir / "config.json").open() as f:
                return build_bigvgan(json.load(f))
    raise ValueError(field_name)


def _networks(paths, config: dict[str, Any], real_fields: set[str]):
    from indextts2.checkpoint_dir import IndexTTS2Networks

    parts = {name: _build_network(name, paths, config, name in real_fields) for name in NETWORK_FIELDS}
    return IndexTTS2Networks(config=config, emotion_bank=None, text_frontend=None, **parts)


def _fields_read_by(module, networks) -> set[str]:
    """The networks whose parameters or buffers the stage module holds."""
    held = {id(t) for t in [*module.parameters(), *module.buffers()]}
    fields = set()
    for name in NETWORK_FIELDS:
        network = getattr(networks, name)
        if network is not None and any(id(t) in held for t in [*network.parameters(), *network.buffers()]):
            fields.add(name)
    return fields


def _stage_names(checkpoint_dir: Path) -> list[str]:
    from export.stages import build_onnx_stages
    from indextts2.checkpoint_dir import CheckpointPaths
    from indextts2.config import load_config

    paths = CheckpointPaths.from_model_dir(checkpoint_dir)
    return [stage.name for stage in build_onnx_stages(_networks(paths, load_config(paths.config_path), set()))]


def export_one_stage(checkpoint_dir: Path, stage_name: str, onnx_dir: Path) -> dict[str, Any]:
    """Load what `stage_name` reads, export it (float32) into `onnx_dir`, verify it; the measurements."""
    import torch

    from export.onnx_export import ExportVerificationError, export_stage
    from export.stages import build_onnx_stages
    from indextts2.checkpoint_dir import CheckpointPaths
    from indextts2.config import load_config

    started = time.perf_counter()
    paths = CheckpointPaths.from_model_dir(checkpoint_dir)
    config = load_config(paths.config_path)

    def pick(networks):
        stages = {stage.name: stage for stage in build_onnx_stages(networks)}
        if stage_name not in stages:
            raise ValueError(f"unknown stage {stage_name!r}; stages are {list(stages)}")
        return stages[stage_name]

    meta_networks = _networks(paths, config, set())
    needed = _fields_read_by(pick(meta_networks).module, meta_networks)
    del meta_networks
    _say(f"  {stage_name}: loading {', '.join(sorted(needed))}")
    stage = pick(_networks(paths, config, needed))
    load_seconds = time.perf_counter() - started

    if onnx_dir.exists():
        shutil.rmtree(onnx_dir)
    path = onnx_dir / ONNX_FILE
    result: dict[str, Any] = {"networks_loaded": sorted(needed), "load_seconds": load_seconds,
                              "tolerance": stage.tolerance}
    _say(f"  {stage_name}: exporting and verifying ...")
    call_started = time.perf_counter()
    try:
        with torch.no_grad():
            report = export_stage(stage, path)
    except ExportVerificationError as error:
        result.update(status="verification failed", error=str(error))
    else:
        result.update(status="ok", export_seconds=report.export_seconds, max_abs_error=report.max_abs_error,
                      tolerance=report.tolerance)
    call_seconds = time.perf_counter() - call_started
    if "export_seconds" in result:
        result["verify_seconds"] = call_seconds - result["export_seconds"]
    else:
        result["export_and_verify_seconds"] = call_seconds
    files = _file_sizes(onnx_dir, onnx_dir) if onnx_dir.exists() else {}
    result.update(
        onnx_files=files,
        onnx_bytes=sum(files.values()),
        model_onnx_bytes=files.get(ONNX_FILE, 0),
        external_data_bytes=sum(size for name, size in files.items() if name != ONNX_FILE),
    )
    return result


def _child_main(args: argparse.Namespace) -> int:
    if args.child == "write-checkpoint":
        records = write_random_checkpoint(args.child_dir, preset(args.preset), seed=args.seed)
        result = {"parts": records, "stages": _stage_names(args.child_dir)}
    elif args.child == "list-stages":
        result = {"stages": _stage_names(args.checkpoint)}
    elif args.child == "export-stage":
        result = export_one_stage(args.checkpoint, args.stage, args.child_dir)
    else:
        raise ValueError(args.child)
    args.child_result.write_text(json.dumps(result, indent=2))
    return 0


# ---------------------------------------------------------------------------------------------------
# The parent: subprocesses, measurements, report
# ---------------------------------------------------------------------------------------------------


@dataclass
class ChildRun:
    returncode: int
    wall_seconds: float
    peak_rss_bytes: int
    result: dict[str, Any] = field(default_factory=dict)


def _run_child(child_args: list[str], result_path: Path) -> ChildRun:
    """Run this script as a child; its stderr goes to ours. Peak RSS from the kernel's rusage of that
    one child (wait4), so a child killed for memory is measured too."""
    result_path.unlink(missing_ok=True)
    command = [sys.executable, str(Path(__file__).resolve()), *child_args, "--child-result", str(result_path)]
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=sys.stderr)
    try:
        _, status, usage = os.wait4(process.pid, 0)
    except BaseException:
        process.kill()
        process.wait()
        raise
    wall = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    result = json.loads(result_path.read_text()) if process.returncode == 0 and result_path.is_file() else {}
    return ChildRun(process.returncode, wall, usage.ru_maxrss * 1024, result)


def hardware() -> dict[str, Any]:
    cpu_model = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    ram_bytes = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                ram_bytes = int(line.split()[1]) * 1024
                break
    except OSError:
        pass

    def version(package: str) -> str | None:
        try:
            return metadata.version(package)
        except metadata.PackageNotFoundError:
            return None

    return {
        "cpu_model": cpu_model,
        "cpu_cores": os.cpu_count(),
        "cpu_cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "ram_bytes": ram_bytes,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": version("torch"),
        "onnxruntime": version("onnxruntime"),
        "onnx": version("onnx"),
        "transformers": version("transformers"),
    }


def _fmt_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    return f"{n / GIB:.2f} GiB" if n >= GIB else f"{n / MIB:.1f} MiB"


def _fmt_seconds(s: float | None) -> str:
    return "-" if s is None else f"{s:.1f}"


def markdown(report: dict[str, Any]) -> str:
    hw = report["hardware"]
    lines = [
        f"# ONNX export at the {report['preset']} IndexTTS-2 size",
        "",
        (f"Run {report['started_utc']} on {hw['cpu_model']}, {hw['cpu_cores_usable']} cores "
         f"({hw['cpu_cores']} online), {_fmt_bytes(hw['ram_bytes'])} RAM; Python {hw['python']}, "
         f"torch {hw['torch']}, onnxruntime {hw['onnxruntime']}, onnx {hw['onnx']}, "
         f"transformers {hw['transformers']}. float32 export and verification on the CPU."),
        "",
    ]
    checkpoint = report["checkpoint"]
    if checkpoint.get("written"):
        lines += [
            (f"## Random checkpoint (written in {_fmt_seconds(checkpoint['seconds'])} s, "
             f"{_fmt_bytes(checkpoint['bytes'])}, peak RSS {_fmt_bytes(checkpoint['peak_rss_bytes'])})"),
            "",
            "| Part | Parameters | Size | Write (s) |",
            "|---|---:|---:|---:|",
        ]
        for part in checkpoint["parts"]:
            parameters = f"{part['parameters'] / 1e6:.1f} M" if part.get("parameters") else "-"
            lines.append(f"| {part['part']} | {parameters} | {_fmt_bytes(part['bytes'])} | "
                         f"{_fmt_seconds(part['seconds'])} |")
        lines.append("")
    else:
        lines += [f"Checkpoint: existing directory `{checkpoint['path']}` ({_fmt_bytes(checkpoint['bytes'])}).", ""]

    lines += [
        "## ONNX stages (each exported in its own process)",
        "",
        ("| Stage | Loads | ONNX size | External data | Load (s) | Export (s) | Verify (s) | Process wall (s) "
         "| Peak RSS | Max abs error | Tolerance | Status |"),
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for stage in report["stages"]:
        error = stage.get("max_abs_error")
        loads = ", ".join(stage.get("networks_loaded", [])) or "-"
        lines.append(
            f"| {stage['name']} | {loads} | {_fmt_bytes(stage.get('onnx_bytes'))} | "
            f"{_fmt_bytes(stage.get('external_data_bytes')) if stage.get('external_data_bytes') else 'none'} | "
            f"{_fmt_seconds(stage.get('load_seconds'))} | {_fmt_seconds(stage.get('export_seconds'))} | "
            f"{_fmt_seconds(stage.get('verify_seconds'))} | {_fmt_seconds(stage['wall_seconds'])} | "
            f"{_fmt_bytes(stage['peak_rss_bytes'])} | {'-' if error is None else f'{error:.2e}'} | "
            f"{stage['tolerance']:.0e} | {stage['status']} |"
            if stage.get("tolerance") is not None else
            f"| {stage['name']} | {loads} | - | - | - | - | - | {_fmt_seconds(stage['wall_seconds'])} | "
            f"{_fmt_bytes(stage['peak_rss_bytes'])} | - | - | {stage['status']} |"
        )
    total_onnx = sum(stage.get("onnx_bytes") or 0 for stage in report["stages"])
    largest = max(report["stages"], key=lambda stage: stage.get("onnx_bytes") or 0, default=None)
    lines += [
        "",
        (f"Total ONNX size {_fmt_bytes(total_onnx)}; whole run {_fmt_seconds(report['wall_seconds'])} s wall "
         "(checkpoint, stage listing and every stage process)."),
    ]
    if largest is not None and largest.get("onnx_bytes"):
        over = [stage["name"] for stage in report["stages"] if (stage.get("onnx_bytes") or 0) >= PROTOBUF_LIMIT]
        lines.append(
            f"Largest model: {largest['name']}, {_fmt_bytes(largest['onnx_bytes'])}; "
            + (f"over the {_fmt_bytes(PROTOBUF_LIMIT)} protobuf limit, so written with external data: "
               f"{', '.join(over)}." if over else f"every model fits one protobuf ({_fmt_bytes(PROTOBUF_LIMIT)} limit).")
        )
    lines += [
        "",
        ("Load: reading the networks the stage uses. Export: `torch.onnx.export`. Verify: ONNX Runtime vs "
         "PyTorch on two other batch/length shapes. Process wall: the whole stage process, imports included. "
         "Peak RSS: the stage process's ru_maxrss (interpreter, torch and the loaded networks included)."),
    ]
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    report: dict[str, Any] = {
        "preset": args.preset if args.checkpoint is None else "checkpoint",
        "started_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "hardware": hardware(),
    }
    scratch = None
    if args.work_dir is None:
        scratch = Path(tempfile.mkdtemp(prefix="indextts2-export-bench-"))
    work_dir = Path(args.work_dir or scratch)
    work_dir.mkdir(parents=True, exist_ok=True)
    result_path = work_dir / "child-result.json"
    failures = 0
    try:
        if args.checkpoint is None:
            checkpoint_dir = work_dir / "checkpoint"
            if checkpoint_dir.exists():
                shutil.rmtree(checkpoint_dir)
            _say(f"[checkpoint] writing a random {args.preset}-size checkpoint into {checkpoint_dir} ...")
            run_ = _run_child(["--child", "write-checkpoint", "--child-dir", str(checkpoint_dir),
                               "--preset", args.preset, "--seed", str(args.seed)], result_path)
            if run_.returncode != 0:
                _say(f"[checkpoint] failed (exit status {run_.returncode})")
                return 1
            parts = run_.result["parts"]
            chosen = preset(args.preset)
            report["dimensions"] = {"config.yaml": chosen.config, "bigvgan config.json": chosen.bigvgan,
                                    "campplus": chosen.campplus or "CAMPPlus defaults", "w2v-bert": chosen.w2v_bert}
            report["checkpoint"] = {
                "written": True, "path": str(checkpoint_dir), "parts": parts,
                "bytes": sum(part["bytes"] for part in parts), "seconds": sum(part["seconds"] for part in parts),
                "process_wall_seconds": run_.wall_seconds, "peak_rss_bytes": run_.peak_rss_bytes,
            }
            _say(f"[checkpoint] {_fmt_bytes(report['checkpoint']['bytes'])} in {run_.wall_seconds:.1f} s, "
                 f"peak RSS {_fmt_bytes(run_.peak_rss_bytes)}")
            all_stages = run_.result["stages"]
        else:
            checkpoint_dir = Path(args.checkpoint)
            files = _file_sizes(checkpoint_dir, checkpoint_dir)
            report["checkpoint"] = {"written": False, "path": str(checkpoint_dir), "bytes": sum(files.values())}
            run_ = _run_child(["--child", "list-stages", "--checkpoint", str(checkpoint_dir)], result_path)
            if run_.returncode != 0:
                _say(f"[stages] listing failed (exit status {run_.returncode})")
                return 1
            all_stages = run_.result["stages"]

        stages = all_stages
        if args.stages:
            unknown = sorted(set(args.stages) - set(all_stages))
            if unknown:
                _say(f"unknown stage(s) {unknown}; stages are {all_stages}")
                return 2
            stages = [name for name in all_stages if name in args.stages]

        report["stages"] = []
        for index, name in enumerate(stages, start=1):
            _say(f"[{index}/{len(stages)}] {name} ...")
            run_ = _run_child(["--child", "export-stage", "--checkpoint", str(checkpoint_dir), "--stage", name,
                               "--child-dir", str(work_dir / "onnx" / name)], result_path)
            stage = {"name": name, **run_.result, "wall_seconds": run_.wall_seconds,
                     "peak_rss_bytes": run_.peak_rss_bytes, "exit_status": run_.returncode}
            if run_.returncode != 0:
                stage.setdefault("status", f"process failed (exit status {run_.returncode})")
            if stage.get("status") != "ok":
                failures += 1
            report["stages"].append(stage)
            error = stage.get("max_abs_error")
            _say(
                f"[{index}/{len(stages)}] {name}: {stage['status']}, ONNX {_fmt_bytes(stage.get('onnx_bytes'))}, "
                f"export {_fmt_seconds(stage.get('export_seconds'))} s, verify "
                f"{_fmt_seconds(stage.get('verify_seconds'))} s, max abs error "
                f"{'-' if error is None else f'{error:.2e}'}, peak RSS {_fmt_bytes(run_.peak_rss_bytes)}, "
                f"process {run_.wall_seconds:.1f} s"
            )
    finally:
        result_path.unlink(missing_ok=True)
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)

    report["wall_seconds"] = time.perf_counter() - started
    text = markdown(report)
    print(text, end="")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(text)
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work-dir", type=Path,
                        help="where the checkpoint and ONNX files go, kept (default: a temporary folder, removed)")
    parser.add_argument("--checkpoint", type=Path,
                        help="export an existing checkpoint directory instead of writing a random one")
    parser.add_argument("--stages", nargs="+", metavar="STAGE", help="export only these stages")
    parser.add_argument("--json", type=Path, help="write the measurements as JSON here")
    parser.add_argument("--markdown", type=Path, help="write the Markdown report here (it is also printed)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    # For tests: the demo preset's dimensions instead of the official ones.
    parser.add_argument("--preset", choices=("official", "tiny"), default="official", help=argparse.SUPPRESS)
    # The child processes: this script runs itself for every heavy step.
    parser.add_argument("--child", choices=("write-checkpoint", "list-stages", "export-stage"),
                        help=argparse.SUPPRESS)
    parser.add_argument("--child-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--child-result", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--stage", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return _child_main(args)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
