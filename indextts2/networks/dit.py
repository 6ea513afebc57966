"""s2mel DiT: the velocity estimator of the flow-matching mel decoder (`cfm.estimator`).

    x (B, 80, T) noisy mel, prompt_x (B, 80, T) reference mel (zeros past the prompt),
    cond (B, T, content_dim) length-regulated semantics, style (B, 192) CAMPPlus speaker vector,
    t (B,) flow time in [0, 1], x_lens (B,) valid frames  ->  velocity (B, 80, T)

1. Every frame concatenates [x, prompt_x, cond_projection(cond), style] and a Linear merges it to the
   hidden width.
2. A gpt-fast style transformer without a causal mask: attention keys past x_lens are masked, RoPE
   rotates interleaved (even, odd) channel pairs, and every norm is an adaptive RMSNorm
   `w * RMSNorm(h) + b` whose (w, b) come from a Linear of the timestep embedding. U-ViT skips: the
   output of each block in the first half is fed (LIFO) into the mirrored block of the second half.
3. A long skip merges the transformer output with the input noise x.
4. A WaveNet (gated dilated convs, conditioned on a second timestep embedding) refines it; its
   convolutions pad by reflection, as the official `SConv1d` does whatever padding it is given.
5. A final layer (LayerNorm modulated by the *transformer* timestep embedding, then a Linear) and a
   1x1 conv give the 80 mel channels.

Attribute names follow the official `DiT` state dict. The official module also stores
`input_pos` (arange(16384)) and the timestep-embedding `freqs`; these are computed here (see the s2mel
loader), so `.half()` never rounds them. `cond_embedder` and `content_mask_embedder` belong to paths
IndexTTS-2 never runs (discrete content, training dropout) and are kept for strict loading.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

# Widths and constants the official code hard-codes; kept as constructor defaults.
ROPE_MAX_POSITIONS = 16384
ROPE_BASE = 10000.0
TIMESTEP_FREQUENCY_SIZE = 256
TIMESTEP_MAX_PERIOD = 10000.0
TIMESTEP_SCALE = 1000.0


def sequence_mask(lengths: torch.Tensor, max_length: int | torch.Tensor) -> torch.Tensor:
    """(B, max_length) bool, True on the first lengths[b] positions."""
    positions = torch.arange(max_length, device=lengths.device)
    return positions[None, :] < lengths[:, None]


def ffn_width(dim: int, multiple_of: int = 256) -> int:
    """gpt-fast's default FFN width: 2/3 of 4*dim, rounded up to a multiple of 256."""
    hidden = int(2 * 4 * dim / 3)
    return hidden if hidden % multiple_of == 0 else hidden + multiple_of - hidden % multiple_of


class TimestepEmbedder(nn.Module):
    """t (B,) -> MLP([cos, sin](scale * t * freqs)) (B, hidden)."""

    def __init__(self, hidden_size: int, frequency_size: int = TIMESTEP_FREQUENCY_SIZE) -> None:
        super().__init__()
        self.frequency_size = frequency_size
        self.mlp = nn.Sequential(
            nn.Linear(frequency_size, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size)
        )

    def frequencies(self, device: torch.device | None = None) -> torch.Tensor:
        half = self.frequency_size // 2
        steps = torch.arange(0, half, dtype=torch.float32, device=device)
        return torch.exp(-math.log(TIMESTEP_MAX_PERIOD) * steps / half)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        # float32 whatever the weights: at scale 1000 an fp16 angle would be off by up to 0.5 rad.
        angles = TIMESTEP_SCALE * t.float()[:, None] * self.frequencies(t.device)[None, :]
        embedding = torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)
        return self.mlp(embedding.to(self.mlp[0].weight.dtype))


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        normed = xf * torch.rsqrt(torch.mean(xf * xf, dim=-1, keepdim=True) + self.eps)
        return normed.to(x.dtype) * self.weight


class AdaptiveRMSNorm(nn.Module):
    """w * RMSNorm(x) + b, with (w, b) = Linear(condition)."""

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.project_layer = nn.Linear(dim, 2 * dim)
        self.norm = RMSNorm(dim, eps)

    def forward(self, x: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        weight, bias = self.project_layer(condition).chunk(2, dim=-1)
        return weight * self.norm(x) + bias


def rope_cos_sin(length: int | torch.Tensor, head_dim: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(T, head_dim/2) cos and sin of position * base^(-2i/head_dim), in float32."""
    inv_freq = 1.0 / (ROPE_BASE ** (torch.arange(0, head_dim, 2, device=device)[: head_dim // 2].float() / head_dim))
    angles = torch.arange(length, device=device).float()[:, None] * inv_freq[None, :]
    return torch.cos(angles), torch.sin(angles)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (B, T, H, D): rotate the interleaved pairs (x[2i], x[2i+1]) by the position angle."""
    pairs = x.float().reshape(*x.shape[:-1], -1, 2)
    even, odd = pairs[..., 0], pairs[..., 1]
    cos, sin = cos[None, :, None, :], sin[None, :, None, :]
    rotated = torch.stack([even * cos - odd * sin, odd * cos + even * sin], dim=-1)
    return rotated.flatten(3).to(x.dtype)


class Attention(nn.Module):
    def __init__(self, dim: int, n_heads: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.head_dim = dim // n_heads
        self.wqkv = nn.Linear(dim, 3 * dim, bias=False)
        self.wo = nn.Linear(dim, dim, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        """key_mask: (B or 1, 1, 1, T) bool, True where a key may be attended to."""
        batch, length, dim = x.shape
        q, k, v = self.wqkv(x).view(batch, length, 3, self.n_heads, self.head_dim).unbind(2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask)
        return self.wo(y.transpose(1, 2).reshape(batch, length, dim))


class FeedForward(nn.Module):
    """SwiGLU: w2(silu(w1 x) * w3 x)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class TransformerBlock(nn.Module):
    def __init__(self, dim: int, n_heads: int, ffn_hidden: int, uvit_skip: bool, eps: float = 1e-5) -> None:
        super().__init__()
        self.attention = Attention(dim, n_heads)
        self.feed_forward = FeedForward(dim, ffn_hidden)
        self.ffn_norm = AdaptiveRMSNorm(dim, eps)
        self.attention_norm = AdaptiveRMSNorm(dim, eps)
        if uvit_skip:
            # Every block has one, but only the second-half blocks that receive a skip use it.
            self.skip_in_linear = nn.Linear(2 * dim, dim)

    def forward(
        self,
        x: torch.Tensor,
        t_emb: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        key_mask: torch.Tensor,
        skip: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if skip is not None:
            x = self.skip_in_linear(torch.cat([x, skip], dim=-1))
        h = x + self.attention(self.attention_norm(x, t_emb), cos, sin, key_mask)
        return h + self.feed_forward(self.ffn_norm(h, t_emb))


class Transformer(nn.Module):
    def __init__(self, dim: int, n_layers: int, n_heads: int, ffn_hidden: int, uvit_skip: bool) -> None:
        super().__init__()
        self.head_dim = dim // n_heads
        self.layers = nn.ModuleList(TransformerBlock(dim, n_heads, ffn_hidden, uvit_skip) for _ in range(n_layers))
        self.norm = AdaptiveRMSNorm(dim)
        # U-ViT: blocks before the middle emit, blocks after it receive (the middle one does neither).
        self.emit_skip = [i < n_layers // 2 and uvit_skip for i in range(n_layers)]
        self.receive_skip = [i > n_layers // 2 and uvit_skip for i in range(n_layers)]

    def forward(self, x: torch.Tensor, t_emb: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        """x (B, T, D), t_emb (B, 1, D), key_mask (B or 1, 1, 1, T)."""
        cos, sin = rope_cos_sin(x.shape[1], self.head_dim, x.device)
        skips: list[torch.Tensor] = []
        for i, layer in enumerate(self.layers):
            skip = skips.pop() if self.receive_skip[i] else None
            x = layer(x, t_emb, cos, sin, key_mask, skip)
            if self.emit_skip[i]:
                skips.append(x)
        return self.norm(x, t_emb)


def reflect_pad_rows(x: torch.Tensor, lengths: torch.Tensor, left: int, right: int) -> torch.Tensor:
    """Reflect-pad (B, C, T) to T + left + right, reflecting each row at its own end lengths[b].

    Frames past a row's end are replaced by the reflection of its last frames, so a conv sees at each
    row's end exactly what it would see if the row were alone (unpadded) in the batch.
    lengths: (B,) or (1,).
    """
    positions = torch.arange(-left, x.shape[-1] + right, device=x.device)[None, :]
    last = lengths[:, None] - 1
    index = torch.where(positions <= last, positions.abs(), 2 * last - positions)
    index = index.clamp(min=0, max=x.shape[-1] - 1)  # frames past last + right feed no valid output
    return torch.gather(x, 2, index[:, None, :].expand(x.shape[0], x.shape[1], -1))


class NormConv1d(nn.Module):
    """Holds the conv as `.conv`, only to mirror the official `SConv1d.conv.conv` key nesting."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, dilation: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(in_channels, out_channels, kernel_size, dilation=dilation)


class ReflectPadConv1d(nn.Module):
    """Stride-1 Conv1d padded by reflection to keep the length (the official `SConv1d`); its weight is
    stored weight-normed in official checkpoints."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, dilation: int = 1) -> None:
        super().__init__()
        self.conv = NormConv1d(in_channels, out_channels, kernel_size, dilation)
        total = (kernel_size - 1) * dilation
        self.pad_right = total // 2
        self.pad_left = total - self.pad_right

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """lengths: reflect at each row's own end instead of at the padded end (see DiT.forward)."""
        if self.pad_left + self.pad_right == 0:
            return self.conv.conv(x)
        if lengths is not None:
            return self.conv.conv(reflect_pad_rows(x, lengths, self.pad_left, self.pad_right))
        return self.conv.conv(F.pad(x, (self.pad_left, self.pad_right), mode="reflect"))


class WaveNet(nn.Module):
    """Gated dilated conv stack (the official `WN`) conditioned on a global vector g."""

    def __init__(self, hidden: int, kernel_size: int, dilation_rate: int, n_layers: int, cond_channels: int) -> None:
        super().__init__()
        self.hidden = hidden
        self.cond_layer = ReflectPadConv1d(cond_channels, 2 * hidden * n_layers, 1)
        self.in_layers = nn.ModuleList(
            ReflectPadConv1d(hidden, 2 * hidden, kernel_size, dilation=dilation_rate**i) for i in range(n_layers)
        )
        # The last layer only feeds the skip output, so it has half the channels.
        self.res_skip_layers = nn.ModuleList(
            ReflectPadConv1d(hidden, 2 * hidden if i < n_layers - 1 else hidden, 1) for i in range(n_layers)
        )

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor, g: torch.Tensor, reflect_lengths: torch.Tensor | None = None
    ) -> torch.Tensor:
        """x (B, hidden, T), mask (B or 1, 1, T), g (B, cond_channels, 1)."""
        g = self.cond_layer(g)
        output = torch.zeros_like(x)
        last = len(self.in_layers) - 1
        for i, (in_layer, res_skip_layer) in enumerate(zip(self.in_layers, self.res_skip_layers, strict=True)):
            a = in_layer(x, reflect_lengths) + g[:, 2 * i * self.hidden : 2 * (i + 1) * self.hidden]
            acts = torch.tanh(a[:, : self.hidden]) * torch.sigmoid(a[:, self.hidden :])
            res_skip = res_skip_layer(acts)
            if i < last:
                x = (x + res_skip[:, : self.hidden]) * mask
                output = output + res_skip[:, self.hidden :]
            else:
                output = output + res_skip
        return output * mask


class FinalLayer(nn.Module):
    """LayerNorm (no affine) modulated by shift/scale from the timestep embedding, then a Linear."""

    def __init__(self, hidden: int, out_channels: int, cond_dim: int) -> None:
        super().__init__()
        self.hidden = hidden
        self.linear = nn.Linear(hidden, out_channels)  # weight-normed in official checkpoints
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(cond_dim, 2 * hidden))

    def forward(self, x: torch.Tensor, t_emb: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(t_emb).chunk(2, dim=1)
        x = F.layer_norm(x, (self.hidden,), eps=1e-6)
        return self.linear(x * (1 + scale[:, None, :]) + shift[:, None, :])


class DiT(nn.Module):
    def __init__(
        self,
        in_channels: int,
        hidden: int,
        n_heads: int,
        depth: int,
        content_dim: int,
        content_codebook_size: int,
        style_dim: int,
        wavenet_hidden: int,
        wavenet_layers: int,
        wavenet_kernel_size: int,
        wavenet_dilation_rate: int,
        style_condition: bool = True,
        uvit_skip_connection: bool = True,
        long_skip_connection: bool = True,
        max_positions: int = ROPE_MAX_POSITIONS,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.style_condition = style_condition
        self.long_skip_connection = long_skip_connection
        # Length of the official `input_pos` buffer; the loader checks it, RoPE itself has no limit.
        self.max_positions = max_positions

        self.transformer = Transformer(hidden, depth, n_heads, ffn_width(hidden), uvit_skip_connection)
        self.x_embedder = nn.Linear(in_channels, hidden)  # unused by forward; weight-normed in the file
        self.cond_embedder = nn.Embedding(content_codebook_size, hidden)  # unused: discrete content
        self.cond_projection = nn.Linear(content_dim, hidden)
        self.t_embedder = TimestepEmbedder(hidden)
        self.t_embedder2 = TimestepEmbedder(wavenet_hidden)
        self.conv1 = nn.Linear(hidden, wavenet_hidden)
        self.conv2 = nn.Conv1d(wavenet_hidden, in_channels, 1)
        self.wavenet = WaveNet(wavenet_hidden, wavenet_kernel_size, wavenet_dilation_rate, wavenet_layers, wavenet_hidden)
        self.final_layer = FinalLayer(wavenet_hidden, wavenet_hidden, hidden)
        self.res_projection = nn.Linear(hidden, wavenet_hidden)
        self.content_mask_embedder = nn.Embedding(1, hidden)  # unused: training-time content dropout
        self.skip_linear = nn.Linear(hidden + in_channels, hidden)
        merged = hidden + 2 * in_channels + (style_dim if style_condition else 0)
        self.cond_x_merge_linear = nn.Linear(merged, hidden)

    def forward(
        self,
        x: torch.Tensor,
        prompt_x: torch.Tensor,
        x_lens: torch.Tensor,
        t: torch.Tensor,
        style: torch.Tensor,
        cond: torch.Tensor,
        reflect_at_row_end: bool = False,
    ) -> torch.Tensor:
        """x, prompt_x: (B, 80, T); x_lens: (B,) or (1,) shared; t: (B,); style: (B, 192); cond: (B, T, C).

        reflect_at_row_end=False is the official computation: the WaveNet convs reflect at the padded
        end T, so the last frames of a row with x_lens < T see its padding frames. True makes every row
        equal to what it gives alone (cropped to x_lens); both agree when x_lens == T.
        """
        batch, _, length = x.shape
        t_emb = self.t_embedder(t)
        x = x.transpose(1, 2)
        parts = [x, prompt_x.transpose(1, 2), self.cond_projection(cond)]
        if self.style_condition:
            parts.append(style[:, None, :].expand(batch, length, style.shape[-1]))
        h = self.cond_x_merge_linear(torch.cat(parts, dim=-1))

        valid = sequence_mask(x_lens, length)  # (B or 1, T)
        h = self.transformer(h, t_emb[:, None, :], valid[:, None, None, :])
        if self.long_skip_connection:
            h = self.skip_linear(torch.cat([h, x], dim=-1))

        mask = valid[:, None, :].to(h.dtype)
        g = self.t_embedder2(t)[:, :, None]
        w = self.wavenet(self.conv1(h).transpose(1, 2), mask, g, x_lens if reflect_at_row_end else None)
        y = self.final_layer(w.transpose(1, 2) + self.res_projection(h), t_emb)
        return self.conv2(y.transpose(1, 2))


def build_dit(s2mel_config: dict[str, Any]) -> DiT:
    """From the `s2mel` section of config.yaml (its `DiT`, `wavenet` and `style_encoder` parts)."""
    dit, wavenet = s2mel_config["DiT"], s2mel_config["wavenet"]
    unsupported = {
        "time_as_token": dit.get("time_as_token", False),
        "style_as_token": dit.get("style_as_token", False),
        "is_causal": dit.get("is_causal", False),
        "final_layer_type != wavenet": dit.get("final_layer_type") != "wavenet",
        "zero_prompt_speech_token": dit.get("zero_prompt_speech_token", False),
        "DiT/wavenet style_condition differ": dit.get("style_condition") != wavenet.get("style_condition"),
    }
    bad = [name for name, value in unsupported.items() if value]
    if bad:
        raise ValueError(f"DiT options not supported (IndexTTS-2 uses none of them): {bad}")
    return DiT(
        in_channels=dit["in_channels"],
        hidden=dit["hidden_dim"],
        n_heads=dit["num_heads"],
        depth=dit["depth"],
        content_dim=dit["content_dim"],
        content_codebook_size=dit["content_codebook_size"],
        style_dim=s2mel_config["style_encoder"]["dim"],
        wavenet_hidden=wavenet["hidden_dim"],
        wavenet_layers=wavenet["num_layers"],
        wavenet_kernel_size=wavenet["kernel_size"],
        wavenet_dilation_rate=wavenet["dilation_rate"],
        style_condition=bool(dit.get("style_condition", False)),
        uvit_skip_connection=bool(dit.get("uvit_skip_connection", False)),
        long_skip_connection=bool(dit.get("long_skip_connection", False)),
    )
