"""MaskGCT semantic codec (RepCodec): w2v-BERT features (B, T, 1024) -> semantic codes and embeddings.

IndexTTS-2 uses it twice:
- `quantize(spk_cond_emb)` gives `S_ref`, the quantized reference features that the s2mel length
  regulator turns into the prompt condition;
- `vq2emb(codes)` turns the GPT's semantic codes back into 1024-d embeddings (`S_infer`).

Structure (encoder half only): Vocos backbone (Conv1d k7 embed, LayerNorm, ConvNeXt blocks, final
LayerNorm) -> Linear back to the hidden width -> one factorized vector quantizer: a 1x1 conv projects
to `codebook_dim`, the code is the codebook row of highest cosine similarity, and a 1x1 conv projects
the RAW (not normalised) codebook row back to the hidden width.

Attribute names follow the official state dict (`encoder.0.convnext.N.dwconv`, `encoder.1`,
`quantizer.quantizers.0.codebook`, ...). The official file (`semantic_codec_model.safetensors`) also
holds a `decoder.*` half (same shapes as the encoder) that inference never runs: the loader drops that
prefix explicitly, and anything else unexpected is still an error. The in/out projections are stored
weight-normed (`weight_g`/`weight_v`); this network holds the folded weights.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from indextts2.checkpoint import CheckpointError, fold_weight_norm, load_state_dict_strict, unfold_weight_norm

# Inference never runs the reconstruction half of the official RepCodec.
UNUSED_PREFIX = "decoder."
# The tensors that the official files of both codecs (RepCodec, 2.5's EnhancedCodec) store weight-normed.
WEIGHT_NORMED = ("quantizer.quantizers.0.in_project.weight", "quantizer.quantizers.0.out_project.weight")


class ConvNeXtBlock(nn.Module):
    """Depthwise conv k7 -> LayerNorm -> Linear -> GELU -> Linear, scaled by `gamma`, plus the input."""

    def __init__(self, dim: int, intermediate_dim: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv1d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, intermediate_dim)
        self.pwconv2 = nn.Linear(intermediate_dim, dim)
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, C, T)
        h = self.dwconv(x).transpose(1, 2)
        h = self.pwconv2(F.gelu(self.pwconv1(self.norm(h))))
        return x + (self.gamma * h).transpose(1, 2)


class VocosBackbone(nn.Module):
    """(B, input_channels, T) -> (B, T, dim). Note the layout change: the output is time-major."""

    def __init__(self, input_channels: int, dim: int, intermediate_dim: int, num_layers: int) -> None:
        super().__init__()
        self.embed = nn.Conv1d(input_channels, dim, kernel_size=7, padding=3)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.convnext = nn.ModuleList([ConvNeXtBlock(dim, intermediate_dim) for _ in range(num_layers)])
        self.final_layer_norm = nn.LayerNorm(dim, eps=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(self.embed(x).transpose(1, 2)).transpose(1, 2)
        for block in self.convnext:
            x = block(x)
        return self.final_layer_norm(x.transpose(1, 2))


class FactorizedVectorQuantizer(nn.Module):
    """Projects to a small code space, picks the nearest codebook row by cosine, projects back."""

    def __init__(self, hidden_size: int, codebook_size: int, codebook_dim: int) -> None:
        super().__init__()
        self.in_project = nn.Conv1d(hidden_size, codebook_dim, kernel_size=1)
        self.out_project = nn.Conv1d(codebook_dim, hidden_size, kernel_size=1)
        self.codebook = nn.Embedding(codebook_size, codebook_dim)

    def project_in(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, hidden) -> z_e (B, T, codebook_dim)."""
        return self.in_project(x.transpose(1, 2)).transpose(1, 2)

    def nearest_code(self, z_e: torch.Tensor) -> torch.Tensor:
        """(B, T, codebook_dim) -> (B, T) int64 codebook indices."""
        z = F.normalize(z_e, dim=-1)
        codebook = F.normalize(self.codebook.weight, dim=-1)
        # The official code ranks by squared euclidean distance between the unit vectors; written the
        # same way so that rounding, and therefore near-ties, resolve as it does.
        distance = z.pow(2).sum(-1, keepdim=True) - 2 * z @ codebook.t() + codebook.pow(2).sum(-1)
        return torch.argmax(-distance, dim=-1)

    def embed(self, codes: torch.Tensor) -> torch.Tensor:
        """(B, T) codes -> (B, T, hidden): the raw codebook row through `out_project`."""
        rows = F.embedding(codes, self.codebook.weight)
        return self.out_project(rows.transpose(1, 2)).transpose(1, 2)

    def quantize(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T, hidden) -> (codes (B, T) int64, quantized embeddings (B, T, hidden))."""
        codes = self.nearest_code(self.project_in(x))
        return codes, self.embed(codes)


class ResidualQuantizer(nn.Module):
    """Holds the official `quantizers` list. IndexTTS-2 uses exactly one quantizer, so nothing is residual."""

    def __init__(self, hidden_size: int, codebook_size: int, codebook_dim: int) -> None:
        super().__init__()
        self.quantizers = nn.ModuleList([FactorizedVectorQuantizer(hidden_size, codebook_size, codebook_dim)])


@dataclass(frozen=True)
class CodecSizes:
    """The sizes of a semantic codec (RepCodec, or 2.5's EnhancedCodec), from the `semantic_codec`
    section of config.yaml (the official values in comments)."""

    codebook_size: int  # 8192
    hidden_size: int  # 1024
    codebook_dim: int  # 8
    vocos_dim: int  # 384
    vocos_intermediate_dim: int  # 2048
    vocos_num_layers: int  # 12

    @classmethod
    def from_config(cls, codec_config: Mapping[str, Any]) -> CodecSizes:
        """The sizes of the config section. The official codecs also read `num_quantizers`; IndexTTS-2
        uses 1 (the default), and anything else is refused rather than silently ignored."""
        num_quantizers = int(codec_config.get("num_quantizers", 1))
        if num_quantizers != 1:
            raise ValueError(f"semantic_codec.num_quantizers={num_quantizers}: only 1 is supported")
        return cls(**{field.name: int(codec_config[field.name]) for field in fields(cls)})

    def vocos(self) -> nn.Sequential:
        """Vocos backbone -> Linear back to the hidden width: RepCodec's encoder (and EnhancedCodec's
        encoder and decoder)."""
        return nn.Sequential(
            VocosBackbone(self.hidden_size, self.vocos_dim, self.vocos_intermediate_dim, self.vocos_num_layers),
            nn.Linear(self.vocos_dim, self.hidden_size),
        )

    def quantizer(self) -> ResidualQuantizer:
        return ResidualQuantizer(self.hidden_size, self.codebook_size, self.codebook_dim)


class RepCodec(nn.Module):
    def __init__(self, sizes: CodecSizes) -> None:
        super().__init__()
        self.codebook_size = sizes.codebook_size
        self.hidden_size = sizes.hidden_size
        self.encoder = sizes.vocos()
        self.quantizer = sizes.quantizer()

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, hidden) -> encoder output (B, T, hidden), the quantizer's input."""
        return self.encoder(x.transpose(1, 2))

    def quantize(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T, hidden) features -> (codes (B, T) int64, quantized embeddings (B, T, hidden))."""
        return self.quantizer.quantizers[0].quantize(self.encode(x))

    def vq2emb(self, codes: torch.Tensor) -> torch.Tensor:
        """(B, T) codes -> (B, T, hidden).

        The official `quantizer.vq2emb(codes.unsqueeze(1))` reads the batch axis as the quantizer axis,
        so it returns batch row 0 only, channel-major. This is the per-row version; for B=1 it equals
        the official output transposed to (B, T, hidden), which is how infer_v2 uses it.
        """
        return self.quantizer.quantizers[0].embed(codes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Same as `quantize`: the graph that gets exported."""
        return self.quantize(x)


def build_semantic_codec(codec_config: Mapping[str, Any]) -> RepCodec:
    """RepCodec from the `semantic_codec` section of config.yaml, in eval mode.

    The official RepCodec also reads `downsample_scale`; IndexTTS-2 uses 1 (none, the default), and
    anything else is refused rather than silently ignored.
    """
    sizes = CodecSizes.from_config(codec_config)
    downsample = codec_config.get("downsample_scale")
    if downsample is not None and int(downsample) > 1:
        raise ValueError(f"semantic_codec.downsample_scale={downsample}: only 1 (none) is supported")
    return RepCodec(sizes).eval()


def semantic_codec_state_dict_from_official(
    official: Mapping[str, torch.Tensor], source: str | Path = "<state dict>"
) -> dict[str, torch.Tensor]:
    """Official RepCodec tensors -> this network's: drop the unused `decoder.*` half, fold weight norm."""
    kept = {key: tensor for key, tensor in official.items() if not key.startswith(UNUSED_PREFIX)}
    try:
        return fold_weight_norm(kept)
    except CheckpointError as error:
        raise CheckpointError(f"{source}: {error}") from None


def load_semantic_codec(codec_config: Mapping[str, Any], path: str | Path) -> RepCodec:
    """Build from the config section and load the official `semantic_codec_model.safetensors`, strictly."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file not found: {path}")
    try:
        official = load_file(str(path))
    except SafetensorError as error:
        raise CheckpointError(f"{path}: not a readable safetensors file ({error})") from None
    model = build_semantic_codec(codec_config)
    load_state_dict_strict(model, semantic_codec_state_dict_from_official(official, path), path)
    return model.eval()


def semantic_codec_official_state_dict(model: RepCodec) -> dict[str, torch.Tensor]:
    """This network's weights in the official file layout, for writing a checkpoint that the official
    `safetensors.torch.load_model` (strict) accepts.

    The official file must also hold the `decoder.*` half. It has exactly the encoder's shapes and
    inference never runs it, so it is filled with copies of the encoder tensors.
    """
    ours = {key: tensor.detach().clone().contiguous() for key, tensor in model.state_dict().items()}
    official = unfold_weight_norm(ours, list(WEIGHT_NORMED))
    for key, tensor in ours.items():
        if key.startswith("encoder."):
            official[UNUSED_PREFIX + key[len("encoder.") :]] = tensor.clone()
    return {key: tensor.contiguous() for key, tensor in official.items()}
