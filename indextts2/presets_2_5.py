"""`demo-2.5`: a tiny random IndexTTS-2.5 checkpoint in the official 2.5 layout, written in seconds.

What differs from the 2.0 `demo` preset (whose w2v-BERT, CAMPPlus, BigVGAN, statistics and emotion
matrices it shares, at the same sizes):
- config.yaml says `version: 2.5` and has no `dataset.bpe_model`; its semantic codec section has
  `downsample_scale: 2`;
- gpt.pth is the campplus-mode GPT (spk_emb_proj, lang_embedding; no speaker conformer/perceiver, no
  speed_emb), with a text table that holds the tokenizer's ids;
- codec.pth is an EnhancedCodec (`{'model': state_dict}`, weight-normed VQ projections);
- s2mel.pth has no gpt_layer;
- multilingual_zh_ja_yue_char_del.tiktoken is a byte-level vocabulary (the 256 single bytes, no merges:
  every text encodes, CJK characters as 3 ids); the official special tokens follow its ranks.
The networks are random: the speech is noise-like.
"""

from __future__ import annotations

import base64
import copy
import json
from pathlib import Path
from typing import Any

import torch
import yaml

from indextts2.checkpoint_dir import (
    DEFAULT_BIGVGAN_DIR,
    DEFAULT_CAMPPLUS,
    DEFAULT_W2V_BERT_DIR,
    TIKTOKEN_2_5_FILE,
    CheckpointPaths,
)
from indextts2.frontend.text_2_5 import special_token_names
from indextts2.networks.bigvgan import bigvgan_official_checkpoint, build_bigvgan
from indextts2.networks.campplus import CAMPPlus
from indextts2.networks.codec_2_5 import build_codec_2_5, codec_2_5_official_checkpoint
from indextts2.networks.gpt_2_5 import build_gpt_2_5
from indextts2.networks.s2mel import build_s2mel, s2mel_official_checkpoint
from indextts2.networks.semantic_encoder import write_tiny_w2v_bert
from indextts2.presets import (
    DEMO_BIGVGAN_CONFIG,
    DEMO_CAMPPLUS_CONFIG,
    DEMO_CONFIG,
    DEMO_W2V_BERT,
    _perturb_,
    _randomise_batch_norm_stats_,
)

BYTE_VOCAB = 256  # the demo tokenizer's mergeable ranks: one per byte
DEMO_2_5_TEXT_TOKENS = 2048  # >= 256 + the official special tokens (1929 ids in all)


def demo_2_5_config() -> dict[str, Any]:
    config = copy.deepcopy(DEMO_CONFIG)
    config.pop("dataset", None)
    config["gpt"]["number_text_tokens"] = DEMO_2_5_TEXT_TOKENS
    config["semantic_codec"].update({"num_quantizers": 1, "downsample_scale": 2})
    config["version"] = 2.5
    return config


DEMO_2_5_CONFIG: dict[str, Any] = demo_2_5_config()


def write_byte_tiktoken(path: Path) -> None:
    """A byte-level `.tiktoken` vocabulary: `base64(byte) rank` for the 256 bytes."""
    path.write_text("".join(f"{base64.b64encode(bytes([b])).decode()} {b}\n" for b in range(BYTE_VOCAB)))


def write_demo_checkpoint_2_5(out_dir: str | Path, seed: int = 0) -> CheckpointPaths:
    """Write the demo-2.5 checkpoint into `out_dir` (created if needed) and return its paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config = DEMO_2_5_CONFIG
    vocab = BYTE_VOCAB + len(special_token_names())
    if vocab > int(config["gpt"]["number_text_tokens"]) + 1:
        raise ValueError(f"the tokenizer's {vocab} ids do not fit the GPT's text table")
    semantic_dim = int(config["semantic_codec"]["hidden_size"])
    model_dim = int(config["gpt"]["model_dim"])
    style_dim = int(config["s2mel"]["style_encoder"]["dim"])
    generator = torch.Generator().manual_seed(seed)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        with (out_dir / "config.yaml").open("w") as f:
            yaml.safe_dump(config, f, sort_keys=False)
        write_byte_tiktoken(out_dir / TIKTOKEN_2_5_FILE)

        gpt = build_gpt_2_5(config["gpt"], feature_dim=semantic_dim)
        _perturb_(gpt, generator)
        torch.save(gpt.state_dict(), out_dir / config["gpt_checkpoint"])

        s2mel = build_s2mel(config["s2mel"], with_gpt_layer=False)
        _perturb_(s2mel, generator)
        torch.save(s2mel_official_checkpoint(s2mel), out_dir / config["s2mel_checkpoint"])

        codec = build_codec_2_5(config["semantic_codec"])
        _perturb_(codec, generator)
        torch.save(codec_2_5_official_checkpoint(codec), out_dir / "codec.pth")

        torch.save({"mean": 0.1 * torch.randn(semantic_dim, generator=generator),
                    "var": 0.5 + torch.rand(semantic_dim, generator=generator)}, out_dir / config["w2v_stat"])
        rows = sum(config["emo_num"])
        torch.save(torch.randn(rows, style_dim, generator=generator), out_dir / config["spk_matrix"])
        torch.save(torch.randn(rows, model_dim, generator=generator), out_dir / config["emo_matrix"])

        write_tiny_w2v_bert(out_dir / DEFAULT_W2V_BERT_DIR, seed=seed, **DEMO_W2V_BERT)

        (out_dir / DEFAULT_CAMPPLUS).parent.mkdir(parents=True, exist_ok=True)
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
