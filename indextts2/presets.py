"""Random IndexTTS-2 checkpoints in the official layout, at named sizes.

- `demo`: tiny (~17 MB, written in seconds on a CPU). The tests and the default service run on it, so
  nothing is downloaded. Its speech is noise-like: the networks are random.
- `small`: between the two (a 384-wide, 6-layer GPT; a 192-wide DiT), for CPU benchmarks whose
  requests take seconds rather than milliseconds (`benchmarks/run_benchmarks.py`).
- `official`: the released IndexTTS-2 dimensions, for measuring sizes, export times, memory and speed
  without the real weights.

Every file the official code reads (config.yaml, gpt.pth, s2mel.pth, bpe.model, wav2vec2bert_stats.pt,
feat1.pt, feat2.pt and the hf_cache/ parts) is written with the official keys. The widths that the
official code hard-codes (the 1024-d semantic features, the 1280-d GPT latents that s2mel reads) are
small in the demo; our loaders read them from the files. The same seed gives the same files.
"""

from __future__ import annotations

import copy
import gc
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors import safe_open
from safetensors.torch import save_file

from indextts2.checkpoint_dir import (
    DEFAULT_BIGVGAN_DIR,
    DEFAULT_CAMPPLUS,
    DEFAULT_SEMANTIC_CODEC,
    DEFAULT_W2V_BERT_DIR,
    CheckpointPaths,
)
from indextts2.frontend.demo_bpe import train_demo_bpe
from indextts2.networks.bigvgan import bigvgan_official_checkpoint, build_bigvgan
from indextts2.networks.campplus import CAMPPlus
from indextts2.networks.gpt import build_gpt
from indextts2.networks.s2mel import build_s2mel, s2mel_official_checkpoint
from indextts2.networks.semantic_codec import build_semantic_codec, semantic_codec_official_state_dict
from indextts2.networks.semantic_encoder import write_tiny_w2v_bert

# ---------------------------------------------------------------------------------------------------
# official
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


def resized(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """A deep copy of `base` with `changes` merged in: a dict merges key by key, any other value replaces.
    The smaller presets are the official configuration with fewer and narrower layers."""
    config = copy.deepcopy(base)
    for key, value in changes.items():
        nested = isinstance(value, dict) and isinstance(config.get(key), dict)
        config[key] = resized(config[key], value) if nested else copy.deepcopy(value)
    return config


# ---------------------------------------------------------------------------------------------------
# demo
# ---------------------------------------------------------------------------------------------------

SEMANTIC_DIM = 64  # w2v-BERT width = codec width = GPT conditioner input (1024 in the real model)
TEXT_VOCAB = 512
MEL_CODEBOOK = 256

DEMO_CONFIG: dict[str, Any] = resized(OFFICIAL_CONFIG, {
    "gpt": {
        "model_dim": 64,
        # A random GPT has no notion of the text's end: it stops when it happens to sample the stop
        # code, or after max_mel_tokens - 1 codes (5 s of audio).
        "max_mel_tokens": 250,
        "max_text_tokens": 120,
        "heads": 4,
        "layers": 2,
        "number_text_tokens": TEXT_VOCAB,
        "number_mel_codes": MEL_CODEBOOK + 2,
        "start_mel_token": MEL_CODEBOOK,
        "stop_mel_token": MEL_CODEBOOK + 1,
        "condition_module": {"output_size": 32, "linear_units": 64, "attention_heads": 2, "num_blocks": 1},
        "emo_condition_module": {"output_size": 32, "linear_units": 64, "attention_heads": 2, "num_blocks": 1,
                                 "perceiver_mult": 0.125},
    },
    "semantic_codec": {"codebook_size": MEL_CODEBOOK, "hidden_size": SEMANTIC_DIM, "vocos_dim": 32,
                       "vocos_intermediate_dim": 64, "vocos_num_layers": 1},
    "s2mel": {
        "length_regulator": {"channels": 32, "in_channels": SEMANTIC_DIM},
        "DiT": {"hidden_dim": 32, "num_heads": 2, "depth": 2, "content_dim": 32},
        "wavenet": {"hidden_dim": 32, "num_layers": 2},
    },
})

# BigVGAN v2 22 kHz 80-band 256x, with narrow channels and one resblock kernel.
DEMO_BIGVGAN_CONFIG: dict[str, Any] = {
    **OFFICIAL_BIGVGAN_CONFIG,
    "upsample_initial_channel": 64,
    "resblock_kernel_sizes": [3],
    "resblock_dilation_sizes": [[1, 3, 5]],
}

# CAMPPlus keeps its structure (FCM head, three dense TDNN blocks) with far fewer channels.
DEMO_CAMPPLUS_CONFIG: dict[str, Any] = {
    "feat_dim": 80,
    "embedding_size": 192,  # the style width the s2mel DiT takes as is
    "growth_rate": 8,
    "bn_size": 2,
    "init_channels": 32,
    "block_layers": (2, 2, 2),
    "m_channels": 8,
}

DEMO_W2V_BERT: dict[str, Any] = {"hidden_size": SEMANTIC_DIM, "num_layers": 17}

# ---------------------------------------------------------------------------------------------------
# small
# ---------------------------------------------------------------------------------------------------

# Between demo and official, for benchmarks on a CPU: every network has real work to do (a 384-wide,
# 6-layer GPT over the official 8194 codes, a 192-wide DiT, a BigVGAN with 256 initial channels), and
# one request of ~1 s of speech still runs in a few seconds on two cores. Same structure as the demo.
SMALL_SEMANTIC_DIM = 256
SMALL_CONFIG: dict[str, Any] = resized(DEMO_CONFIG, {
    "gpt": {
        "model_dim": 384, "layers": 6, "heads": 6, "max_mel_tokens": 1000, "number_text_tokens": 2048,
        "number_mel_codes": 8194, "start_mel_token": 8192, "stop_mel_token": 8193,
        "condition_module": {"output_size": 128, "linear_units": 256, "num_blocks": 2},
        "emo_condition_module": {"output_size": 128, "linear_units": 256},
    },
    "semantic_codec": {"codebook_size": 8192, "hidden_size": SMALL_SEMANTIC_DIM, "vocos_dim": 128,
                       "vocos_intermediate_dim": 256, "vocos_num_layers": 2},
    "s2mel": {
        "length_regulator": {"channels": 192, "in_channels": SMALL_SEMANTIC_DIM},
        "DiT": {"hidden_dim": 192, "num_heads": 4, "depth": 4, "content_dim": 192},
        "wavenet": {"hidden_dim": 192, "num_layers": 4},
    },
})

SMALL_BIGVGAN_CONFIG: dict[str, Any] = {
    **DEMO_BIGVGAN_CONFIG,
    "upsample_initial_channel": 256,
    "resblock_kernel_sizes": [3, 7],
    "resblock_dilation_sizes": [[1, 3, 5], [1, 3, 5]],
}
SMALL_CAMPPLUS_CONFIG: dict[str, Any] = {**DEMO_CAMPPLUS_CONFIG, "growth_rate": 16, "init_channels": 64,
                                         "block_layers": (4, 8, 6), "m_channels": 16}
SMALL_W2V_BERT: dict[str, Any] = {"hidden_size": SMALL_SEMANTIC_DIM, "num_layers": 17, "num_attention_heads": 4}

# The official bpe.model has 12000 pieces; the demo corpus trains at most ~3500. The ONNX stages never
# read it; any vocabulary up to number_text_tokens fits the GPT.
BPE_VOCAB = 2048


@dataclass(frozen=True)
class RandomCheckpointPreset:
    name: str
    config: dict[str, Any]  # config.yaml
    bigvgan: dict[str, Any]  # the BigVGAN config.json
    campplus: dict[str, Any]  # CAMPPlus constructor arguments
    w2v_bert: dict[str, Any]  # `write_tiny_w2v_bert` arguments
    bpe_vocab: int


PRESETS: dict[str, RandomCheckpointPreset] = {
    "demo": RandomCheckpointPreset("demo", DEMO_CONFIG, DEMO_BIGVGAN_CONFIG, DEMO_CAMPPLUS_CONFIG, DEMO_W2V_BERT,
                                   TEXT_VOCAB),
    "small": RandomCheckpointPreset("small", SMALL_CONFIG, SMALL_BIGVGAN_CONFIG, SMALL_CAMPPLUS_CONFIG, SMALL_W2V_BERT,
                                    BPE_VOCAB),
    "official": RandomCheckpointPreset("official", OFFICIAL_CONFIG, OFFICIAL_BIGVGAN_CONFIG, OFFICIAL_CAMPPLUS,
                                       OFFICIAL_W2V_BERT, BPE_VOCAB),
}


@dataclass
class PartRecord:
    """What writing one part of a checkpoint produced."""

    name: str
    files: dict[str, int] = field(default_factory=dict)  # path relative to the checkpoint -> bytes
    parameters: int | None = None
    seconds: float = 0.0


def _perturb_(module: torch.nn.Module, generator: torch.Generator) -> None:
    """Add noise to every parameter (buffers such as filters and position tables stay as built).

    Constant initialisations (norm gains of 1, zero biases, the zero-initialised speed embedding)
    would otherwise leave whole paths of the network inert, and a wrongly wired tensor unnoticed.
    Matrices get 0.1 / sqrt(fan_in) * N(0, 1): at 1024-1536 channels an unscaled 0.1 would multiply
    the activations by several per layer, far from what a trained network computes.
    """
    with torch.no_grad():
        for parameter in module.parameters():
            scale = 0.1
            if parameter.dim() >= 2:
                scale /= (parameter.numel() // parameter.shape[0]) ** 0.5
            parameter.add_(scale * torch.randn(parameter.shape, generator=generator))


def _randomise_batch_norm_stats_(module: torch.nn.Module, generator: torch.Generator) -> None:
    with torch.no_grad():
        for layer in module.modules():
            if isinstance(layer, torch.nn.modules.batchnorm._BatchNorm) and layer.running_var is not None:
                layer.running_mean.copy_(0.1 * torch.randn(layer.running_mean.shape, generator=generator))
                layer.running_var.copy_(1.0 + 0.1 * torch.rand(layer.running_var.shape, generator=generator))


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _file_sizes(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_size for p in sorted(root.rglob("*")) if p.is_file()}


def write_random_checkpoint(
    out_dir: str | Path,
    preset: RandomCheckpointPreset,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> tuple[CheckpointPaths, list[PartRecord]]:
    """Write a complete random checkpoint of `preset` into `out_dir`, one network at a time (each
    freed before the next), the external parts under hf_cache/ as the official downloader places them.

    Returns the paths and one record per part (files written, parameter count, seconds).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config = preset.config
    semantic_dim = int(config["semantic_codec"]["hidden_size"])
    model_dim = int(config["gpt"]["model_dim"])
    style_dim = int(config["s2mel"]["style_encoder"]["dim"])
    generator = torch.Generator().manual_seed(seed)
    records: list[PartRecord] = []

    def config_and_bpe() -> None:
        with (out_dir / "config.yaml").open("w") as f:
            yaml.safe_dump(config, f, sort_keys=False)
        vocab = min(preset.bpe_vocab, int(config["gpt"]["number_text_tokens"]))
        train_demo_bpe(out_dir / config["dataset"]["bpe_model"], vocab_size=vocab)

    def gpt() -> int:
        network = build_gpt(config["gpt"], feature_dim=semantic_dim)
        _perturb_(network, generator)
        torch.save(network.state_dict(), out_dir / config["gpt_checkpoint"])
        return _count(network)

    def s2mel() -> int:
        network = build_s2mel(config["s2mel"], gpt_latent_dim=model_dim)
        _perturb_(network, generator)
        torch.save(s2mel_official_checkpoint(network), out_dir / config["s2mel_checkpoint"])
        return _count(network)

    def stats_and_emotion_matrices() -> None:
        torch.save({"mean": 0.1 * torch.randn(semantic_dim, generator=generator),
                    "var": 0.5 + torch.rand(semantic_dim, generator=generator)}, out_dir / config["w2v_stat"])
        rows = sum(config["emo_num"])
        torch.save(torch.randn(rows, style_dim, generator=generator), out_dir / config["spk_matrix"])
        torch.save(torch.randn(rows, model_dim, generator=generator), out_dir / config["emo_matrix"])

    def w2v_bert() -> int:
        directory = write_tiny_w2v_bert(out_dir / DEFAULT_W2V_BERT_DIR, seed=seed, **preset.w2v_bert)
        with safe_open(str(directory / "model.safetensors"), framework="pt") as f:
            total = 0
            for key in f.keys():  # noqa: SIM118 - safe_open handles are not iterable
                shape = f.get_slice(key).get_shape()
                total += int(torch.tensor(shape).prod()) if shape else 1
            return total

    def semantic_codec() -> int:
        network = build_semantic_codec(config["semantic_codec"])
        _perturb_(network, generator)
        save_file(semantic_codec_official_state_dict(network), str(out_dir / DEFAULT_SEMANTIC_CODEC))
        return _count(network)

    def campplus() -> int:
        network = CAMPPlus(**preset.campplus).eval()
        _perturb_(network, generator)
        _randomise_batch_norm_stats_(network, generator)
        torch.save(network.state_dict(), out_dir / DEFAULT_CAMPPLUS)
        return _count(network)

    def bigvgan() -> int:
        bigvgan_dir = out_dir / DEFAULT_BIGVGAN_DIR
        bigvgan_dir.mkdir(parents=True, exist_ok=True)
        (bigvgan_dir / "config.json").write_text(json.dumps(preset.bigvgan, indent=2))
        network = build_bigvgan(preset.bigvgan)
        _perturb_(network, generator)
        torch.save(bigvgan_official_checkpoint(network), bigvgan_dir / "bigvgan_generator.pt")
        return _count(network)

    parts = [("config.yaml + bpe.model", config_and_bpe), ("gpt.pth", gpt), ("s2mel.pth", s2mel),
             ("stats + feat1/feat2", stats_and_emotion_matrices), ("w2v-bert-2.0", w2v_bert),
             ("semantic codec", semantic_codec), ("campplus", campplus), ("bigvgan", bigvgan)]
    (out_dir / DEFAULT_CAMPPLUS).parent.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # the builders' own initialisation and write_tiny_w2v_bert
        for name, write in parts:
            if progress:
                progress(f"  writing {name} ...")
            before = _file_sizes(out_dir)
            started = time.perf_counter()
            parameters = write()
            record = PartRecord(name, parameters=parameters, seconds=time.perf_counter() - started)
            gc.collect()
            record.files = {k: v for k, v in _file_sizes(out_dir).items() if before.get(k) != v}
            records.append(record)
            if progress:
                progress(f"  wrote {name}: {sum(record.files.values()) / 2**20:.1f} MiB in {record.seconds:.1f} s")
    return CheckpointPaths.from_model_dir(out_dir), records


def write_demo_checkpoint(out_dir: str | Path, seed: int = 0, max_mel_tokens: int | None = None) -> CheckpointPaths:
    """Write the demo checkpoint into `out_dir` (created if needed) and return its paths.

    `max_mel_tokens` overrides the GPT's longest sequence (its mel position table), e.g. for tests that
    need a request to run for a long time.
    """
    preset = PRESETS["demo"]
    if max_mel_tokens is not None:
        config = copy.deepcopy(preset.config)
        config["gpt"]["max_mel_tokens"] = int(max_mel_tokens)
        preset = RandomCheckpointPreset(preset.name, config, preset.bigvgan, preset.campplus, preset.w2v_bert,
                                        preset.bpe_vocab)
    paths, _ = write_random_checkpoint(out_dir, preset, seed)
    return paths
