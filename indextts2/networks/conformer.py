"""The Conformer encoder that turns w2v-BERT features into the GPT's speaker / emotion conditioning.

IndexTTS-2 uses the WeNet-style Conformer (`indextts/gpt/conformer_encoder.py`) with:
conv2d2 subsampling (one stride-2 Conv2d over (time, feature)), "relative" positional encoding,
pre-norm blocks of [self-attention, convolution module, feed-forward] (no macaron half-step),
SiLU activations and a final LayerNorm.

The "relative" attention is not Transformer-XL's: the official code removed `rel_shift`, so the
position term is `(q + pos_bias_v) . linear_pos(pe[j])`, a learned bias per *absolute* key position j.
We reproduce it as trained.

Attribute names follow the official checkpoint keys (`embed.conv.0`, `embed.out.0`, `embed.pos_enc.pe`,
`encoders.N.self_attn.linear_q`, ..., `after_norm`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def sinusoid_table(max_len: int, dim: int) -> torch.Tensor:
    """(1, max_len, dim) table: sin on even channels, cos on odd ones (ESPnet / WeNet layout)."""
    position = torch.arange(max_len, dtype=torch.float32).unsqueeze(1)
    inv_freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * -(math.log(10000.0) / dim))
    table = torch.zeros(max_len, dim)
    table[:, 0::2] = torch.sin(position * inv_freq)
    table[:, 1::2] = torch.cos(position * inv_freq)
    return table.unsqueeze(0)


class RelativePositionalEncoding(nn.Module):
    """Scales the input by sqrt(dim) and hands out the first T rows of the sinusoid table.

    The table `pe` is a buffer that the official checkpoints store; we keep it persistent so that
    loading stays strict and uses the file's values.
    """

    def __init__(self, dim: int, max_len: int = 5000):
        super().__init__()
        self.scale = math.sqrt(dim)
        self.register_buffer("pe", sinusoid_table(max_len, dim))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x * self.scale, self.pe[:, : x.shape[1]].to(x.dtype)


class Conv2dSubsampling2(nn.Module):
    """Conv2d(1 -> dim, 3x3, stride 2) + ReLU over (time, feature), then Linear to dim.

    Output frame t covers input frames 2t..2t+2, so it is valid only when frame 2t+2 is.
    """

    def __init__(self, input_dim: int, dim: int):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(1, dim, 3, 2), nn.ReLU())
        self.out = nn.Sequential(nn.Linear(dim * ((input_dim - 1) // 2), dim))
        self.pos_enc = RelativePositionalEncoding(dim)

    def forward(
        self, x: torch.Tensor, valid: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.conv(x.unsqueeze(1))  # (B, dim, T', F')
        batch, channels, frames, freqs = x.shape
        x = self.out(x.transpose(1, 2).reshape(batch, frames, channels * freqs))
        x, pos_emb = self.pos_enc(x)
        return x, pos_emb, valid[:, 2::2]


class RelPositionMultiHeadedAttention(nn.Module):
    def __init__(self, heads: int, dim: int):
        super().__init__()
        self.heads = heads
        self.head_dim = dim // heads
        self.linear_q = nn.Linear(dim, dim)
        self.linear_k = nn.Linear(dim, dim)
        self.linear_v = nn.Linear(dim, dim)
        self.linear_out = nn.Linear(dim, dim)
        self.linear_pos = nn.Linear(dim, dim, bias=False)
        self.pos_bias_u = nn.Parameter(torch.zeros(heads, self.head_dim))
        self.pos_bias_v = nn.Parameter(torch.zeros(heads, self.head_dim))

    def forward(self, x: torch.Tensor, key_valid: torch.Tensor, pos_emb: torch.Tensor) -> torch.Tensor:
        """x (B, T, dim); key_valid (B, T) bool; pos_emb (1, T, dim)."""
        batch, frames, _ = x.shape
        q = self.linear_q(x).view(batch, frames, self.heads, self.head_dim)
        k = self.linear_k(x).view(batch, frames, self.heads, self.head_dim).transpose(1, 2)
        v = self.linear_v(x).view(batch, frames, self.heads, self.head_dim).transpose(1, 2)
        p = self.linear_pos(pos_emb).view(1, frames, self.heads, self.head_dim).transpose(1, 2)

        q_u = (q + self.pos_bias_u).transpose(1, 2)  # (B, H, T, hd)
        q_v = (q + self.pos_bias_v).transpose(1, 2)
        scores = (q_u @ k.transpose(-2, -1) + q_v @ p.transpose(-2, -1)) / math.sqrt(self.head_dim)

        masked = ~key_valid[:, None, None, :]
        scores = scores.masked_fill(masked, float("-inf"))
        # Zeroing after the softmax keeps a fully padded row (length 0) at 0 instead of NaN.
        attn = torch.softmax(scores, dim=-1).masked_fill(masked, 0.0)
        out = (attn @ v).transpose(1, 2).reshape(batch, frames, self.heads * self.head_dim)
        return self.linear_out(out)


class ConvolutionModule(nn.Module):
    """Pointwise conv + GLU, depthwise conv, LayerNorm, SiLU, pointwise conv (non-causal).

    Padding: the official module zeroes padded frames *before* the first pointwise conv, whose bias
    then makes them non-zero again, so the depthwise conv leaks `glu(bias)` from the padding into the
    last kernel_size//2 valid frames. `zero_padding_after_glu=True` also zeroes them after the GLU,
    so a padded row gives exactly what the same frames give unpadded (what the official inference
    computes, since it never pads). False reproduces the official masked computation.
    """

    def __init__(self, dim: int, kernel_size: int = 15):
        super().__init__()
        self.pointwise_conv1 = nn.Conv1d(dim, 2 * dim, 1)
        self.depthwise_conv = nn.Conv1d(dim, dim, kernel_size, padding=(kernel_size - 1) // 2, groups=dim)
        self.norm = nn.LayerNorm(dim)
        self.pointwise_conv2 = nn.Conv1d(dim, dim, 1)

    def forward(self, x: torch.Tensor, valid: torch.Tensor, zero_padding_after_glu: bool) -> torch.Tensor:
        """x (B, T, dim); valid (B, T) bool."""
        padded = ~valid[:, None, :]
        x = x.transpose(1, 2).masked_fill(padded, 0.0)
        x = F.glu(self.pointwise_conv1(x), dim=1)
        if zero_padding_after_glu:
            x = x.masked_fill(padded, 0.0)
        x = self.depthwise_conv(x)
        x = F.silu(self.norm(x.transpose(1, 2))).transpose(1, 2)
        x = self.pointwise_conv2(x).masked_fill(padded, 0.0)
        return x.transpose(1, 2)


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.w_1 = nn.Linear(dim, hidden)
        self.w_2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w_2(F.silu(self.w_1(x)))


class ConformerBlock(nn.Module):
    def __init__(self, dim: int, heads: int, linear_units: int, kernel_size: int = 15):
        super().__init__()
        self.self_attn = RelPositionMultiHeadedAttention(heads, dim)
        self.feed_forward = FeedForward(dim, linear_units)
        self.conv_module = ConvolutionModule(dim, kernel_size)
        self.norm_ff = nn.LayerNorm(dim)
        self.norm_mha = nn.LayerNorm(dim)
        self.norm_conv = nn.LayerNorm(dim)
        self.norm_final = nn.LayerNorm(dim)

    def forward(
        self, x: torch.Tensor, valid: torch.Tensor, pos_emb: torch.Tensor, zero_padding_after_glu: bool
    ) -> torch.Tensor:
        x = x + self.self_attn(self.norm_mha(x), valid, pos_emb)
        x = x + self.conv_module(self.norm_conv(x), valid, zero_padding_after_glu)
        x = x + self.feed_forward(self.norm_ff(x))
        return self.norm_final(x)


class ConformerEncoder(nn.Module):
    """(B, T, input_dim) features + lengths -> (B, T', dim) encodings + (B, T') validity, T' = (T-1)//2.

    Built from a config `condition_module` dict (`output_size`, `linear_units`, `attention_heads`,
    `num_blocks`, `input_layer`); only `input_layer: conv2d2` is used by IndexTTS-2 and supported here.
    `input_dim` is the w2v-BERT feature width (1024, hard-coded in the official code).
    """

    def __init__(
        self,
        input_dim: int = 1024,
        output_size: int = 256,
        attention_heads: int = 4,
        linear_units: int = 2048,
        num_blocks: int = 6,
        input_layer: str = "conv2d2",
        cnn_module_kernel: int = 15,
        zero_padding_after_glu: bool = True,
    ):
        super().__init__()
        if input_layer != "conv2d2":
            raise ValueError(f"unsupported conformer input_layer {input_layer!r} (IndexTTS-2 uses 'conv2d2')")
        self.zero_padding_after_glu = zero_padding_after_glu
        self.embed = Conv2dSubsampling2(input_dim, output_size)
        self.encoders = nn.ModuleList(
            ConformerBlock(output_size, attention_heads, linear_units, cnn_module_kernel) for _ in range(num_blocks)
        )
        self.after_norm = nn.LayerNorm(output_size)

    def forward(self, features: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """features (B, T, input_dim); lengths (B,) valid frame counts (values >= T mean all valid)."""
        frames = features.shape[1]
        valid = torch.arange(frames, device=features.device)[None, :] < lengths[:, None]
        x, pos_emb, valid = self.embed(features, valid)
        for block in self.encoders:
            x = block(x, valid, pos_emb, self.zero_padding_after_glu)
        return self.after_norm(x), valid
