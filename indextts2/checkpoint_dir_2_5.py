"""An official IndexTTS-2.5 checkpoint directory, loaded into our networks.

The directory holds `config.yaml`, `gpt.pth`, `s2mel.pth`, `codec.pth` (the EnhancedCodec, a name the
official code hard-codes), `multilingual_zh_ja_yue_char_del.tiktoken` (likewise), `wav2vec2bert_stats.pt`,
`feat1.pt`, `feat2.pt`; the external parts (w2v-BERT 2.0, CAMPPlus, BigVGAN) are the 2.0 ones, found
where `CheckpointPaths` says. Every file is loaded strictly: a 2.0 file in a 2.5 directory is refused
with a message naming the file and the keys.
"""

from __future__ import annotations

from dataclasses import dataclass

from indextts2.checkpoint import CheckpointError
from indextts2.checkpoint_dir import (
    VERSION_2_5,
    CheckpointNetworks,
    CheckpointPaths,
    load_checked_semantic_encoder,
    load_directory_emotion_bank,
    require_version,
)
from indextts2.config import load_config
from indextts2.networks.bigvgan import load_bigvgan
from indextts2.networks.campplus import load_campplus
from indextts2.networks.codec_2_5 import EnhancedCodec, load_codec_2_5
from indextts2.networks.gpt_2_5 import load_gpt_2_5
from indextts2.networks.s2mel import load_s2mel


@dataclass
class IndexTTS25Networks(CheckpointNetworks):
    """Every network of the 2.5 pipeline."""

    codec: EnhancedCodec


def load_networks_2_5(
    paths: CheckpointPaths,
    with_semantic_encoder: bool = True,
    with_text_frontend: bool = True,
    text_normalization: bool = True,
) -> IndexTTS25Networks:
    """Load every 2.5 network strictly; any missing, unexpected or mis-shaped tensor is a CheckpointError.

    `with_semantic_encoder=False` / `with_text_frontend=False` skip the w2v-BERT weights / the tiktoken
    tokenizer (the golden set has no w2v-BERT weights). `text_normalization=False` builds the text
    front-end without the WeTextProcessing normaliser (the official `text_normalization=False`).
    """
    require_version(paths, VERSION_2_5)
    config = load_config(paths.config_path)
    semantic_dim = int(config["semantic_codec"]["hidden_size"])
    semantic_encoder = load_checked_semantic_encoder(paths, config) if with_semantic_encoder else None
    s2mel_path = paths.model_file(config, "s2mel_checkpoint")
    s2mel = load_s2mel(config["s2mel"], s2mel_path, with_gpt_layer=False)
    # 2.5 feeds the length regulator both the codec's output and the raw w2v-BERT features.
    lr_width = int(s2mel.length_regulator.content_in_proj.in_features)
    if lr_width != semantic_dim:
        raise CheckpointError(
            f"{s2mel_path}: the length regulator takes {lr_width}-d features, the codec and w2v-BERT give "
            f"{semantic_dim} (semantic_codec.hidden_size in {paths.config_path})"
        )
    text_frontend = None
    if with_text_frontend:
        from indextts2.frontend.text_2_5 import TextFrontend25

        normalizer = None
        if text_normalization:
            from indextts2.frontend.normalizer import load_normalizer

            normalizer = load_normalizer().normalize
        text_frontend = TextFrontend25(
            paths.tiktoken_2_5, max_text_tokens=int(config["gpt"]["max_text_tokens"]), normalizer=normalizer
        )
    return IndexTTS25Networks(
        config=config,
        semantic_encoder=semantic_encoder,
        codec=load_codec_2_5(config["semantic_codec"], paths.codec_2_5),
        campplus=load_campplus(paths.campplus),
        gpt=load_gpt_2_5(config["gpt"], paths.model_file(config, "gpt_checkpoint"), feature_dim=semantic_dim),
        s2mel=s2mel,
        bigvgan=load_bigvgan(paths.bigvgan_dir),
        emotion_bank=load_directory_emotion_bank(paths, config),
        text_frontend=text_frontend,
    )
