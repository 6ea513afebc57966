"""IndexTTS-2.5's semantic codec, `EnhancedCodec` (official `indextts/codec/models.py`, file `codec.pth`).

The 2.0 RepCodec runs at the w2v-BERT frame rate (50 Hz); EnhancedCodec halves it (25 Hz codes, so
half the GPT steps) and has a decoder half that 2.5 inference runs:

    quantize(x):  (B, T, 1024) -> Conv1d(k3, s2, p1) `down` -> GELU -> encoder (Vocos backbone +
                  Linear) -> factorized VQ  => codes (B, ceil(T/2)), quantized (B, ceil(T/2), 1024)
    decode(codes): (B, N) -> raw codebook row -> `out_project` -> decoder (Vocos backbone + Linear)
                  -> nearest x2 -> Conv1d(k3, p1) `up`  => S_infer (B, 2N, 1024), 50 Hz again

Inference only runs `decode` (the official `get_scode`, the quantize path, is dead code); `quantize`
is kept for completeness and for checking. The official `downsample_scale` only switches the down/up
convolutions on (any value > 1 means x2: the stride and the interpolation factor are fixed); without
them the official `decode` fails, so a value <= 1 is refused here.

`codec.pth` is `{'model': state_dict}`; the VQ in/out projections are stored weight-normed
(`weight_g`/`weight_v`) and held folded here. The official loader silently keeps random init values for
missing or mis-shaped tensors; this one refuses them, naming the file and the key.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from indextts2.checkpoint import (
    CheckpointError,
    fold_weight_norm,
    load_state_dict_strict,
    torch_load,
    unfold_weight_norm,
)
from indextts2.networks.semantic_codec import WEIGHT_NORMED, CodecSizes

CODEC_FILE = "codec.pth"
# The codec changes the frame rate by exactly this factor (stride-2 conv, nearest x2 interpolation).
FRAME_RATE_FACTOR = 2


class EnhancedCodec(nn.Module):
    def __init__(self, sizes: CodecSizes) -> None:
        super().__init__()
        hidden_size = sizes.hidden_size
        self.codebook_size = sizes.codebook_size
        self.hidden_size = hidden_size
        self.down = nn.Conv1d(hidden_size, hidden_size, kernel_size=3, stride=2, padding=1)
        self.up = nn.Conv1d(hidden_size, hidden_size, kernel_size=3, stride=1, padding=1)
        self.encoder = sizes.vocos()
        self.decoder = sizes.vocos()
        self.quantizer = sizes.quantizer()

    # --- quantize (25 Hz codes of 50 Hz features) -----------------------------------------------------

    def downsample(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, hidden) -> gelu(down(x)) (B, ceil(T/2), hidden)."""
        return F.gelu(self.down(x.transpose(1, 2))).transpose(1, 2)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, hidden) features -> the quantizer's input (B, ceil(T/2), hidden)."""
        return self.encoder(self.downsample(x).transpose(1, 2))

    def quantize(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T, hidden) -> (codes (B, ceil(T/2)) int64, quantized embeddings (B, ceil(T/2), hidden))."""
        return self.quantizer.quantizers[0].quantize(self.encode(x))

    # --- decode (what inference runs) --------------------------------------------------------------

    def vq2emb(self, codes: torch.Tensor) -> torch.Tensor:
        """(B, N) codes -> (B, N, hidden): the raw codebook row through `out_project` (per row)."""
        return self.quantizer.quantizers[0].embed(codes)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """(B, N) codes -> S_infer (B, 2N, hidden) at the w2v-BERT frame rate."""
        x = self.decoder(self.vq2emb(codes).transpose(1, 2))  # (B, N, hidden)
        x = F.interpolate(x.transpose(1, 2), scale_factor=FRAME_RATE_FACTOR, mode="nearest")
        return self.up(x).transpose(1, 2)

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        """Same as `decode`: the graph that gets exported."""
        return self.decode(codes)


def build_codec_2_5(codec_config: Mapping[str, Any]) -> EnhancedCodec:
    """EnhancedCodec from the `semantic_codec` section of config.yaml, in eval mode."""
    sizes = CodecSizes.from_config(codec_config)
    downsample = codec_config.get("downsample_scale", 2)  # the official constructor's default
    if downsample is None or float(downsample) <= 1:
        raise ValueError(
            f"semantic_codec.downsample_scale={downsample}: IndexTTS-2.5's codec needs a value > 1 "
            "(the official decode fails without its down/up convolutions)"
        )
    return EnhancedCodec(sizes).eval()


def codec_2_5_state_dict_from_official(official: Mapping[str, Any], source: str | Path) -> dict[str, torch.Tensor]:
    """The official `codec.pth` content -> this network's tensors (weight norm folded)."""
    state_dict = official.get("model") if isinstance(official, Mapping) else None
    if not isinstance(state_dict, Mapping):
        raise CheckpointError(f"{source}: expected a dict {{'model': state_dict}} (the official codec.pth layout)")
    try:
        return fold_weight_norm(state_dict)
    except CheckpointError as error:
        raise CheckpointError(f"{source}: {error}") from None


def load_codec_2_5(codec_config: Mapping[str, Any], path: str | Path) -> EnhancedCodec:
    """Build from the config section and load the official `codec.pth`, strictly."""
    state_dict = codec_2_5_state_dict_from_official(torch_load(path), path)
    model = build_codec_2_5(codec_config)
    try:
        load_state_dict_strict(model, state_dict, path)
    except CheckpointError as error:
        if "down.weight" not in state_dict and "encoder.0.embed.weight" in state_dict:
            raise CheckpointError(
                f"{error}\n  (this looks like the IndexTTS-2.0 RepCodec, which has no down/up convolutions; "
                "IndexTTS-2.5 needs its EnhancedCodec)"
            ) from None
        raise
    return model.eval()


def codec_2_5_official_checkpoint(model: EnhancedCodec) -> dict[str, dict[str, torch.Tensor]]:
    """`model` in the official codec.pth layout (weight_g/weight_v pairs), for `torch.save`."""
    ours = {key: tensor.detach().cpu().clone().contiguous() for key, tensor in model.state_dict().items()}
    return {"model": unfold_weight_norm(ours, list(WEIGHT_NORMED))}
