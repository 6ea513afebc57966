"""s2mel length regulator: semantic features (B, T_in, 1024) -> DiT condition (B, T_mel, channels).

A Linear projects the features to `channels`, every row is stretched to the mel frame count by
nearest-neighbour interpolation, then `len(sampling_ratios)` blocks of [Conv1d k3, GroupNorm(1), Mish]
and a 1x1 Conv1d smooth it, and frames past each row's target length are zeroed.

Official behaviour (what the goldens hold): the whole padded batch is interpolated from T_in to
`ylens.max()` and only then masked, so a row whose target is shorter than the longest is squeezed from
the wrong ratio, and its conv/GroupNorm see the frames past its end. Passing `x_lens` (the valid input
frames per row) switches to per-row semantics instead: row b is interpolated from `x_lens[b]` to
`ylens[b]` frames, and the convs and GroupNorm statistics see only its own frames, so every row equals
what it gives alone.

Attribute names follow the official `InterpolateRegulator` state dict (`content_in_proj`, `model.N`).
`embedding` and `mask_token` belong to the discrete-input / training paths that IndexTTS-2 never
runs; they are kept so that official checkpoints load strictly.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def nearest_source_indices(in_lens: torch.Tensor, out_lens: torch.Tensor, out_size: int | torch.Tensor) -> torch.Tensor:
    """(B, out_size) source frame per output frame, as torch's legacy 'nearest' interpolation picks it.

    torch computes `min(floor(i * (float32(in) / out)), in - 1)` in float32; doing the same float32
    arithmetic here gives the same indices (including at exact ratio boundaries) on every backend, and
    lets each row have its own input and output length.
    """
    scale = in_lens.to(torch.float32) / out_lens.to(torch.float32)
    positions = torch.arange(out_size, device=in_lens.device).to(torch.float32)
    index = torch.floor(positions[None, :] * scale[:, None]).to(torch.long)
    return torch.minimum(index, (in_lens[:, None] - 1).to(torch.long)).clamp(min=0)


def masked_group_norm(
    x: torch.Tensor, frame_mask: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float
) -> torch.Tensor:
    """GroupNorm with one group whose statistics cover only the frames where `frame_mask` (B, 1, T) is 1.

    With an all-ones mask this is `F.group_norm(x, 1, ...)`. Statistics are taken in float32: with
    fp16 activations a sum over channels x frames would overflow.
    """
    xf = x.float()
    count = frame_mask.sum(dim=(1, 2), keepdim=True) * x.shape[1]
    mean = (xf * frame_mask).sum(dim=(1, 2), keepdim=True) / count
    var = (((xf - mean) * frame_mask) ** 2).sum(dim=(1, 2), keepdim=True) / count
    normed = ((xf - mean) * torch.rsqrt(var + eps)).to(x.dtype)
    return normed * weight[None, :, None] + bias[None, :, None]


class LengthRegulator(nn.Module):
    def __init__(
        self,
        channels: int,
        in_channels: int,
        num_blocks: int,
        codebook_size: int,
        out_channels: int | None = None,
    ) -> None:
        super().__init__()
        out_channels = out_channels or channels
        self.content_in_proj = nn.Linear(in_channels, channels)
        layers: list[nn.Module] = []
        for _ in range(num_blocks):
            layers += [nn.Conv1d(channels, channels, 3, 1, 1), nn.GroupNorm(1, channels), nn.Mish()]
        layers.append(nn.Conv1d(channels, out_channels, 1))
        # A Sequential only to keep the official `model.N` key numbering; forward walks it explicitly.
        self.model = nn.Sequential(*layers)
        self.embedding = nn.Embedding(codebook_size, channels)  # unused: discrete input only
        self.mask_token = nn.Parameter(torch.zeros(1, channels))  # unused: training only

    def forward(
        self, x: torch.Tensor, ylens: torch.Tensor, x_lens: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (B, T_in, in_channels), ylens: (B,) target frames -> (y (B, max(ylens), out), ylens).

        x_lens: (B,) valid input frames per row; None gives the official whole-batch interpolation.
        """
        out_frames = ylens.max()
        positions = torch.arange(out_frames, device=x.device)
        valid = (positions[None, :] < ylens[:, None]).to(x.dtype)[:, None, :]  # (B, 1, T_out)

        if x_lens is None:
            in_lens = torch.ones_like(ylens) * x.shape[1]
            out_lens = torch.ones_like(ylens) * out_frames
            conv_mask = torch.ones_like(valid)
        else:
            in_lens, out_lens, conv_mask = x_lens, ylens, valid

        h = self.content_in_proj(x)  # (B, T_in, C)
        index = nearest_source_indices(in_lens, out_lens, out_frames)  # (B, T_out)
        h = torch.gather(h, 1, index[:, :, None].expand(-1, -1, h.shape[-1])).transpose(1, 2)

        for layer in self.model:
            if isinstance(layer, nn.Conv1d):
                h = layer(h * conv_mask)
            elif isinstance(layer, nn.GroupNorm):
                h = masked_group_norm(h, conv_mask, layer.weight, layer.bias, layer.eps)
            else:
                h = layer(h)
        return (h * valid).transpose(1, 2), ylens


def build_length_regulator(config: dict[str, Any]) -> LengthRegulator:
    """From the `s2mel.length_regulator` section of config.yaml (continuous input only, as IndexTTS-2)."""
    unsupported = {
        "is_discrete": config.get("is_discrete", False),
        "vector_quantize": config.get("vector_quantize", False),
        "f0_condition": config.get("f0_condition", False),
        "n_codebooks > 1": config.get("n_codebooks", 1) > 1,
        "empty sampling_ratios": len(config["sampling_ratios"]) == 0,
    }
    bad = [name for name, value in unsupported.items() if value]
    if bad:
        raise ValueError(f"length_regulator options not supported (IndexTTS-2 uses none of them): {bad}")
    return LengthRegulator(
        channels=config["channels"],
        in_channels=config["in_channels"],
        num_blocks=len(config["sampling_ratios"]),
        codebook_size=config["content_codebook_size"],
    )
