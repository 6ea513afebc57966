"""An official IndexTTS-2 checkpoint directory and its external parts, loaded into our networks.

Two versions share the layout: IndexTTS-2.0 and IndexTTS-2.5 (`detect_version`). This module loads
2.0 (`load_networks`); `indextts2.checkpoint_dir_2_5` loads 2.5, and `load_any_networks` picks by the
directory's version.

The official directory holds `config.yaml`, `gpt.pth`, `s2mel.pth`, `bpe.model`,
`wav2vec2bert_stats.pt`, `feat1.pt`, `feat2.pt` (names from config.yaml). The external parts are the
w2v-BERT 2.0 directory, the MaskGCT semantic codec safetensors, `campplus_cn_common.bin` and the
BigVGAN directory; by default they are looked up where the official downloader puts them,
`<model_dir>/hf_cache/...`, and each can be given explicitly. Nothing is ever downloaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from indextts2.checkpoint import CheckpointError
from indextts2.checkpoint_version import (
    CODEC_2_5_FILE,
    TIKTOKEN_2_5_FILE,
    VERSION_2_0,
    VERSION_2_5,
    detect_version,
)
from indextts2.config import load_config
from indextts2.emotion import EmotionBank, load_emotion_bank
from indextts2.frontend.text import TextFrontend
from indextts2.networks.bigvgan import BigVGAN, load_bigvgan
from indextts2.networks.campplus import CAMPPlus, load_campplus
from indextts2.networks.gpt import UnifiedVoice, load_gpt
from indextts2.networks.s2mel import S2Mel, load_s2mel
from indextts2.networks.semantic_codec import RepCodec, load_semantic_codec
from indextts2.networks.semantic_encoder import SemanticEncoder, load_semantic_encoder

# Where the official downloader (`indextts/utils/model_download.py`) puts the external parts.
DEFAULT_W2V_BERT_DIR = "hf_cache/w2v-bert-2.0"
DEFAULT_SEMANTIC_CODEC = "hf_cache/semantic_codec_model.safetensors"
DEFAULT_CAMPPLUS = "hf_cache/campplus_cn_common.bin"
DEFAULT_BIGVGAN_DIR = "hf_cache/bigvgan"


@dataclass(frozen=True)
class CheckpointPaths:
    model_dir: Path
    w2v_bert_dir: Path
    semantic_codec: Path
    campplus: Path
    bigvgan_dir: Path
    version: str = VERSION_2_0

    @classmethod
    def from_model_dir(
        cls,
        model_dir: str | Path,
        w2v_bert_dir: str | Path | None = None,
        semantic_codec: str | Path | None = None,
        campplus: str | Path | None = None,
        bigvgan_dir: str | Path | None = None,
    ) -> CheckpointPaths:
        model_dir = Path(model_dir)
        if not (model_dir / "config.yaml").is_file():
            raise CheckpointError(f"{model_dir} is not an IndexTTS-2 checkpoint directory: it has no config.yaml")
        return cls(
            model_dir=model_dir,
            w2v_bert_dir=Path(w2v_bert_dir or model_dir / DEFAULT_W2V_BERT_DIR),
            semantic_codec=Path(semantic_codec or model_dir / DEFAULT_SEMANTIC_CODEC),
            campplus=Path(campplus or model_dir / DEFAULT_CAMPPLUS),
            bigvgan_dir=Path(bigvgan_dir or model_dir / DEFAULT_BIGVGAN_DIR),
            version=detect_version(model_dir),
        )

    @property
    def config_path(self) -> Path:
        return self.model_dir / "config.yaml"

    def model_file(self, config: dict[str, Any], key: str) -> Path:
        """A file of the model directory named by config.yaml (`gpt_checkpoint`, `w2v_stat`, ...)."""
        if key not in config:
            raise CheckpointError(f"{self.config_path}: missing key {key!r}")
        return self.model_dir / str(config[key])

    def bpe_model(self, config: dict[str, Any]) -> Path:
        return self.model_dir / str(config.get("dataset", {}).get("bpe_model", "bpe.model"))

    @property
    def codec_2_5(self) -> Path:
        """IndexTTS-2.5's semantic codec (EnhancedCodec), a fixed name in the model directory."""
        return self.model_dir / CODEC_2_5_FILE

    @property
    def tiktoken_2_5(self) -> Path:
        """IndexTTS-2.5's tokenizer vocabulary, a fixed name in the model directory."""
        return self.model_dir / TIKTOKEN_2_5_FILE


@dataclass
class CheckpointNetworks:
    """The networks of a checkpoint directory that both versions have, in eval mode on the CPU, float32;
    `IndexTTS2Networks` and `IndexTTS25Networks` add their version's semantic codec."""

    config: dict[str, Any]
    semantic_encoder: SemanticEncoder | None  # None where the checkpoint has no w2v-BERT weights
    campplus: CAMPPlus
    gpt: UnifiedVoice  # UnifiedVoice25 in 2.5
    s2mel: S2Mel  # without gpt_layer in 2.5
    bigvgan: BigVGAN
    emotion_bank: EmotionBank
    text_frontend: Any | None  # TextFrontend (2.0) or TextFrontend25 (2.5); None where not loaded

    @property
    def version(self) -> str:
        return self.gpt.version

    def dims(self) -> dict[str, int]:
        """The widths that connect the stages, read from the config and the loaded GPT (2.0 or 2.5)."""
        return {
            "w2v_feature_dim": 160,
            "semantic_dim": int(self.config["semantic_codec"]["hidden_size"]),
            "gpt_dim": int(self.gpt.model_dim),
            "mel_bands": int(self.config["s2mel"]["DiT"]["in_channels"]),
            "style_dim": int(self.config["s2mel"]["style_encoder"]["dim"]),
            "condition_dim": int(self.config["s2mel"]["length_regulator"]["channels"]),
        }


@dataclass
class IndexTTS2Networks(CheckpointNetworks):
    """Every network of the 2.0 pipeline."""

    semantic_codec: RepCodec


def require_version(paths: CheckpointPaths, version: str) -> None:
    """Refuse a directory of another IndexTTS version than the loader's own."""
    if paths.version != version:
        raise CheckpointError(
            f"{paths.model_dir} is an IndexTTS-{paths.version} checkpoint directory, not an IndexTTS-{version} "
            "one (load_any_networks picks the loader by the directory's version)"
        )


def load_checked_semantic_encoder(paths: CheckpointPaths, config: dict[str, Any]) -> SemanticEncoder:
    """w2v-BERT with the directory's feature statistics; its width must be semantic_codec.hidden_size,
    since its features feed the codec and the GPT's conditioners."""
    semantic_dim = int(config["semantic_codec"]["hidden_size"])
    semantic_encoder = load_semantic_encoder(paths.w2v_bert_dir, paths.model_file(config, "w2v_stat"))
    encoder_dim = int(semantic_encoder.mean.shape[0])
    if encoder_dim != semantic_dim:
        raise CheckpointError(
            f"{paths.w2v_bert_dir}: w2v-BERT width {encoder_dim} differs from "
            f"semantic_codec.hidden_size {semantic_dim} in {paths.config_path}"
        )
    return semantic_encoder


def load_directory_emotion_bank(paths: CheckpointPaths, config: dict[str, Any]) -> EmotionBank:
    """The emotion bank of the files config.yaml names (`spk_matrix`, `emo_matrix`, `emo_num`)."""
    return load_emotion_bank(
        paths.model_file(config, "spk_matrix"), paths.model_file(config, "emo_matrix"), config["emo_num"]
    )


def load_networks(
    paths: CheckpointPaths,
    with_semantic_encoder: bool = True,
    with_text_frontend: bool = True,
    check_latent_width: bool = True,
) -> IndexTTS2Networks:
    """Load every network strictly; any missing, unexpected or mis-shaped tensor is a CheckpointError.

    `with_semantic_encoder=False` / `with_text_frontend=False` skip the w2v-BERT weights / bpe.model,
    for checkpoints that ship without them (the golden set has neither). `check_latent_width=False`
    accepts an s2mel `gpt_layer` whose input is not the GPT's width: only the golden set, whose 64-d
    GPT feeds a 1280-d stand-in (its quirk 7), needs it.
    """
    require_version(paths, VERSION_2_0)
    config = load_config(paths.config_path)
    semantic_dim = int(config["semantic_codec"]["hidden_size"])
    semantic_encoder = load_checked_semantic_encoder(paths, config) if with_semantic_encoder else None
    gpt = load_gpt(config["gpt"], paths.model_file(config, "gpt_checkpoint"), feature_dim=semantic_dim)
    s2mel = load_s2mel(config["s2mel"], paths.model_file(config, "s2mel_checkpoint"))
    latent_width = s2mel.gpt_layer[0].in_features
    if check_latent_width and latent_width != gpt.model_dim:
        raise CheckpointError(
            f"{paths.model_file(config, 's2mel_checkpoint')}: gpt_layer takes {latent_width}-d latents, "
            f"the GPT in {paths.model_file(config, 'gpt_checkpoint')} is {gpt.model_dim} wide"
        )
    return IndexTTS2Networks(
        config=config,
        semantic_encoder=semantic_encoder,
        semantic_codec=load_semantic_codec(config["semantic_codec"], paths.semantic_codec),
        campplus=load_campplus(paths.campplus),
        gpt=gpt,
        s2mel=s2mel,
        bigvgan=load_bigvgan(paths.bigvgan_dir),
        emotion_bank=load_directory_emotion_bank(paths, config),
        text_frontend=TextFrontend(paths.bpe_model(config)) if with_text_frontend else None,
    )


def load_any_networks(paths: CheckpointPaths, **options: Any) -> Any:
    """The networks of either version, by `paths.version`: IndexTTS2Networks for 2.0, IndexTTS25Networks
    for 2.5. `options` go to the version's loader."""
    if paths.version == VERSION_2_5:
        from indextts2.checkpoint_dir_2_5 import load_networks_2_5

        return load_networks_2_5(paths, **options)
    return load_networks(paths, **options)
