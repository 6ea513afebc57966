"""Perceiver resampler: a fixed set of learned latents cross-attends to a variable-length context.

IndexTTS-2 uses it (`indextts/gpt/perceiver.py`, after lucidrains' naturalspeech2) twice: 32 latents
of the GPT width summarise the speaker Conformer output, and 1 latent of width 1024 summarises the
emotion Conformer output. Each of the `depth` layers is
    latents += Attention(latents, context = [latents; proj_context(x)])
    latents += GEGLU feed-forward(latents)
followed by an RMSNorm. The latents attend to themselves as well as to the context
(`cross_attn_include_queries`), so the key mask is [all-valid latents; context validity].

Attribute names follow the official checkpoint keys: `latents`, `proj_context`, `layers.N.0.to_q`,
`layers.N.0.to_kv`, `layers.N.0.to_out`, `layers.N.1.0` / `layers.N.1.2` (the feed-forward Linears),
`norm.gamma`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    """x / ||x|| * sqrt(dim) * gamma (F.normalize's eps of 1e-12 guards the zero vector)."""

    def __init__(self, dim: int):
        super().__init__()
        self.scale = dim**0.5
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=-1) * self.scale * self.gamma


class GEGLU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, gate = x.chunk(2, dim=-1)
        return F.gelu(gate) * x


def feed_forward(dim: int, mult: float) -> nn.Sequential:
    """Linear(dim, 2*inner), GEGLU, Linear(inner, dim) with inner = int(dim * mult * 2/3).

    A Sequential so that the checkpoint keys are `.0` and `.2`, as in the official files.
    """
    inner = int(dim * mult * 2 / 3)
    return nn.Sequential(nn.Linear(dim, inner * 2), GEGLU(), nn.Linear(inner, dim))


class PerceiverAttention(nn.Module):
    def __init__(self, dim: int, heads: int, dim_head: int):
        super().__init__()
        self.heads = heads
        self.dim_head = dim_head
        inner = heads * dim_head
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, inner * 2, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def forward(self, latents: torch.Tensor, context: torch.Tensor, key_valid: torch.Tensor) -> torch.Tensor:
        """latents (B, N, dim); context (B, T, dim); key_valid (B, N + T) bool."""
        batch, n_queries, _ = latents.shape
        keys_in = torch.cat([latents, context], dim=1)
        q = self.to_q(latents)
        k, v = self.to_kv(keys_in).chunk(2, dim=-1)
        q, k, v = (t.reshape(batch, t.shape[1], self.heads, self.dim_head).transpose(1, 2) for t in (q, k, v))

        scores = (q @ k.transpose(-2, -1)) * self.dim_head**-0.5
        # The official code fills with -max (not -inf); the latents are always valid keys, so
        # every row keeps at least one key and both give the same softmax.
        scores = scores.masked_fill(~key_valid[:, None, None, :], -torch.finfo(scores.dtype).max)
        out = torch.softmax(scores, dim=-1) @ v
        return self.to_out(out.transpose(1, 2).reshape(batch, n_queries, self.heads * self.dim_head))


class PerceiverResampler(nn.Module):
    """(B, T, dim_context) context + (B, T) validity -> (B, num_latents, dim)."""

    def __init__(
        self,
        dim: int,
        dim_context: int,
        num_latents: int = 32,
        heads: int = 8,
        dim_head: int = 64,
        ff_mult: float = 4,
        depth: int = 2,
    ):
        super().__init__()
        self.proj_context = nn.Linear(dim_context, dim) if dim_context != dim else nn.Identity()
        self.latents = nn.Parameter(torch.zeros(num_latents, dim))
        self.layers = nn.ModuleList(
            nn.ModuleList([PerceiverAttention(dim, heads, dim_head), feed_forward(dim, ff_mult)])
            for _ in range(depth)
        )
        self.norm = RMSNorm(dim)

    def forward(self, context: torch.Tensor, context_valid: torch.Tensor) -> torch.Tensor:
        batch = context.shape[0]
        context = self.proj_context(context)
        latents = self.latents.unsqueeze(0).expand(batch, -1, -1)
        latents_valid = torch.ones(batch, latents.shape[1], dtype=torch.bool, device=context.device)
        key_valid = torch.cat([latents_valid, context_valid], dim=1)
        for attention, ff in self.layers:
            latents = latents + attention(latents, context, key_valid)
            latents = latents + ff(latents)
        return self.norm(latents)
