"""The `demo` preset: a complete tiny random IndexTTS-2 checkpoint in the official layout.

It lets the tests and the default service run without downloading anything: every file the official
code reads (config.yaml, gpt.pth, s2mel.pth, bpe.model, wav2vec2bert_stats.pt, feat1.pt, feat2.pt and
the hf_cache/ parts) is written with the official keys, written in a few seconds on a CPU. The
weights are seeded, so the same seed gives the same networks and the same audio.

The widths that the official code hard-codes (the 1024-d semantic features, the 1280-d GPT latents
that s2mel reads) are small here; our loaders read them from the files. The speech is noise-like:
the networks are random.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors.torch import save_file

from indextts2.checkpoint_dir import (
    DEFAULT_BIGVGAN_DIR,
    DEFAULT_CAMPPLUS,
    DEFAULT_SEMANTIC_CODEC,
    DEFAULT_W2V_BERT_DIR,
    CheckpointPaths,
)
from indextts2.frontend.text import train_demo_bpe
from indextts2.networks.bigvgan import bigvgan_official_checkpoint, build_bigvgan
from indextts2.networks.campplus import CAMPPlus
from indextts2.networks.gpt import build_gpt
from indextts2.networks.s2mel import build_s2mel, s2mel_official_checkpoint
from indextts2.networks.semantic_codec import build_semantic_codec, semantic_codec_official_state_dict
from indextts2.networks.semantic_encoder import write_tiny_w2v_bert

SEMANTIC_DIM = 64  # w2v-BERT width = codec width = GPT conditioner input (1024 in the real model)
TEXT_VOCAB = 512
MEL_CODEBOOK = 256
EMO_NUM = [3, 17, 2, 8, 4, 5, 10, 24]  # the official grouping of feat1/feat2 rows by emotion
STYLE_DIM = 192  # CAMPPlus embedding width, which the s2mel DiT takes as is

DEMO_CONFIG: dict[str, Any] = {
    "dataset": {"bpe_model": "bpe.model", "sample_rate": 24000, "squeeze": False},
    "gpt": {
        "model_dim": 64,
        # A random GPT has no notion of the text's end: it stops when it happens to sample the stop
        # code, or after max_mel_tokens - 1 codes (5 s of audio).
        "max_mel_tokens": 250,
        "max_text_tokens": 120,
        "heads": 4,
        "use_mel_codes_as_input": True,
        "mel_length_compression": 1024,
        "layers": 2,
        "number_text_tokens": TEXT_VOCAB,
        "number_mel_codes": MEL_CODEBOOK + 2,
        "start_mel_token": MEL_CODEBOOK,
        "stop_mel_token": MEL_CODEBOOK + 1,
        "start_text_token": 0,
        "stop_text_token": 1,
        "train_solo_embeddings": False,
        "condition_type": "conformer_perceiver",
        "condition_module": {"output_size": 32, "linear_units": 64, "attention_heads": 2, "num_blocks": 1,
                             "input_layer": "conv2d2", "perceiver_mult": 2},
        "emo_condition_module": {"output_size": 32, "linear_units": 64, "attention_heads": 2, "num_blocks": 1,
                                 "input_layer": "conv2d2", "perceiver_mult": 0.125},
    },
    "semantic_codec": {"codebook_size": MEL_CODEBOOK, "hidden_size": SEMANTIC_DIM, "codebook_dim": 8,
                       "vocos_dim": 32, "vocos_intermediate_dim": 64, "vocos_num_layers": 1},
    "s2mel": {
        "preprocess_params": {
            "sr": 22050,
            "spect_params": {"n_fft": 1024, "win_length": 1024, "hop_length": 256, "n_mels": 80, "fmin": 0,
                             "fmax": "None"},
        },
        "dit_type": "DiT",
        "reg_loss_type": "l1",
        "style_encoder": {"dim": STYLE_DIM},
        "length_regulator": {"channels": 32, "is_discrete": False, "in_channels": SEMANTIC_DIM,
                             "content_codebook_size": 2048, "sampling_ratios": [1, 1, 1, 1],
                             "vector_quantize": False, "n_codebooks": 1, "quantizer_dropout": 0.0,
                             "f0_condition": False, "n_f0_bins": 512},
        "DiT": {"hidden_dim": 32, "num_heads": 2, "depth": 2, "class_dropout_prob": 0.1, "block_size": 8192,
                "in_channels": 80, "style_condition": True, "final_layer_type": "wavenet", "target": "mel",
                "content_dim": 32, "content_codebook_size": 1024, "content_type": "discrete",
                "f0_condition": False, "n_f0_bins": 512, "content_codebooks": 1, "is_causal": False,
                "long_skip_connection": True, "zero_prompt_speech_token": False, "time_as_token": False,
                "style_as_token": False, "uvit_skip_connection": True, "add_resblock_in_transformer": False},
        "wavenet": {"hidden_dim": 32, "num_layers": 2, "kernel_size": 5, "dilation_rate": 1, "p_dropout": 0.2,
                    "style_condition": True},
    },
    "gpt_checkpoint": "gpt.pth",
    "w2v_stat": "wav2vec2bert_stats.pt",
    "s2mel_checkpoint": "s2mel.pth",
    "emo_matrix": "feat2.pt",
    "spk_matrix": "feat1.pt",
    "emo_num": EMO_NUM,
    "qwen_emo_path": "qwen0.6bemo4-merge/",
    "vocoder": {"type": "bigvgan", "name": "nvidia/bigvgan_v2_22khz_80band_256x"},
    "version": 2.0,
}

# BigVGAN v2 22 kHz 80-band 256x, with narrow channels and one resblock kernel.
DEMO_BIGVGAN_CONFIG: dict[str, Any] = {
    "resblock": "1",
    "upsample_rates": [4, 4, 2, 2, 2, 2],
    "upsample_kernel_sizes": [8, 8, 4, 4, 4, 4],
    "upsample_initial_channel": 64,
    "resblock_kernel_sizes": [3],
    "resblock_dilation_sizes": [[1, 3, 5]],
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

# CAMPPlus keeps its structure (FCM head, three dense TDNN blocks) with far fewer channels.
DEMO_CAMPPLUS_CONFIG: dict[str, Any] = {
    "feat_dim": 80,
    "embedding_size": STYLE_DIM,
    "growth_rate": 8,
    "bn_size": 2,
    "init_channels": 32,
    "block_layers": (2, 2, 2),
    "m_channels": 8,
}


def _perturb_(module: torch.nn.Module, generator: torch.Generator) -> None:
    """Add 0.1*N(0,1) to every parameter (buffers such as filters and position tables stay as built).

    Constant initialisations (norm gains of 1, zero biases, the zero-initialised speed embedding)
    would otherwise leave whole paths of the network inert, and a wrongly wired tensor unnoticed.
    """
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.add_(0.1 * torch.randn(parameter.shape, generator=generator))


def _randomise_batch_norm_stats_(module: torch.nn.Module, generator: torch.Generator) -> None:
    with torch.no_grad():
        for layer in module.modules():
            if isinstance(layer, torch.nn.modules.batchnorm._BatchNorm) and layer.running_var is not None:
                layer.running_mean.copy_(0.1 * torch.randn(layer.running_mean.shape, generator=generator))
                layer.running_var.copy_(1.0 + 0.1 * torch.rand(layer.running_var.shape, generator=generator))


def write_demo_checkpoint(out_dir: str | Path, seed: int = 0, max_mel_tokens: int | None = None) -> CheckpointPaths:
    """Write the demo checkpoint into `out_dir` (created if needed) and return its paths.

    `max_mel_tokens` overrides the GPT's longest sequence (its mel position table), e.g. for tests that
    need a request to run for a long time.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config = copy.deepcopy(DEMO_CONFIG)
    if max_mel_tokens is not None:
        config["gpt"]["max_mel_tokens"] = int(max_mel_tokens)
    generator = torch.Generator().manual_seed(seed)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)

        with (out_dir / "config.yaml").open("w") as f:
            yaml.safe_dump(config, f, sort_keys=False)
        train_demo_bpe(out_dir / config["dataset"]["bpe_model"], vocab_size=TEXT_VOCAB)

        gpt = build_gpt(config["gpt"], feature_dim=SEMANTIC_DIM)
        _perturb_(gpt, generator)
        torch.save(gpt.state_dict(), out_dir / config["gpt_checkpoint"])

        s2mel = build_s2mel(config["s2mel"], gpt_latent_dim=config["gpt"]["model_dim"])
        _perturb_(s2mel, generator)
        torch.save(s2mel_official_checkpoint(s2mel), out_dir / config["s2mel_checkpoint"])

        torch.save(
            {"mean": 0.1 * torch.randn(SEMANTIC_DIM, generator=generator),
             "var": 0.5 + torch.rand(SEMANTIC_DIM, generator=generator)},
            out_dir / config["w2v_stat"],
        )
        rows = sum(EMO_NUM)
        torch.save(torch.randn(rows, STYLE_DIM, generator=generator), out_dir / config["spk_matrix"])
        torch.save(torch.randn(rows, config["gpt"]["model_dim"], generator=generator), out_dir / config["emo_matrix"])

        write_tiny_w2v_bert(out_dir / DEFAULT_W2V_BERT_DIR, hidden_size=SEMANTIC_DIM, num_layers=17, seed=seed)

        codec = build_semantic_codec(config["semantic_codec"])
        _perturb_(codec, generator)
        save_file(semantic_codec_official_state_dict(codec), str(out_dir / DEFAULT_SEMANTIC_CODEC))

        campplus = CAMPPlus(**DEMO_CAMPPLUS_CONFIG).eval()
        _perturb_(campplus, generator)
        _randomise_batch_norm_stats_(campplus, generator)
        torch.save(campplus.state_dict(), out_dir / DEFAULT_CAMPPLUS)

        bigvgan_dir = out_dir / DEFAULT_BIGVGAN_DIR
        bigvgan_dir.mkdir(parents=True, exist_ok=True)
        (bigvgan_dir / "config.json").write_text(json.dumps(DEMO_BIGVGAN_CONFIG, indent=2))
        bigvgan = build_bigvgan(DEMO_BIGVGAN_CONFIG)
        _perturb_(bigvgan, generator)
        torch.save(bigvgan_official_checkpoint(bigvgan), bigvgan_dir / "bigvgan_generator.pt")

    return CheckpointPaths.from_model_dir(out_dir)
