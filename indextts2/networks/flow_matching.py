"""Conditional flow matching decoder: Euler integration of the DiT velocity from noise (t=0) to mel (t=1).

Each request's mel is [prompt (reference mel) | generated]; the prompt frames are given to the DiT as
`prompt_x` and held at zero in x, and the returned mel has them zeroed too (the caller crops them).

Classifier-free guidance runs the conditional and the unconditional branch (zero prompt, style and
condition; same x and t) as one batch of 2B rows and mixes them as (1 + r) * cond - r * uncond.

Batching: the official call is batch 1 with one prompt length. Here every row has its own total
length `x_lens[b]` and prompt length `prompt_lens[b]`, and each row of a padded batch comes out equal
to what it gives alone (given the same noise): the DiT masks keys per row and reflects its WaveNet
padding at each row's own end. Frames past x_lens[b] are returned as zeros.

Because of that, rows may also leave a batch between steps (`rows_gone`): a row whose caller went away
stops costing compute, the batch is cut to its longest remaining row, and the others are unchanged.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from indextts2 import defaults
from indextts2.networks.dit import DiT, sequence_mask

# (x, prompt_x, x_lens, t, style, mu) -> velocity: the DiT, or a served copy of it (Triton BLS).
VelocityFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
                      torch.Tensor]
# () -> (B,) bool, True for each row (of the batch as called) whose result is no longer wanted.
RowsGoneFn = Callable[[], torch.Tensor]


class CFM(nn.Module):
    def __init__(self, estimator: DiT) -> None:
        super().__init__()
        self.estimator = estimator
        self.in_channels = estimator.in_channels

    def guided_velocity(
        self,
        x: torch.Tensor,
        prompt_x: torch.Tensor,
        x_lens: torch.Tensor,
        t: torch.Tensor,
        style: torch.Tensor,
        mu: torch.Tensor,
        cfg_rate: float,
        velocity_fn: VelocityFn | None = None,
    ) -> torch.Tensor:
        """One velocity evaluation, with classifier-free guidance when cfg_rate > 0. t: (B,).

        velocity_fn replaces the in-process DiT (e.g. by the same DiT served by Triton)."""
        estimate = velocity_fn or self._estimate
        if cfg_rate <= 0:
            return estimate(x, prompt_x, x_lens, t, style, mu)
        both = estimate(
            torch.cat([x, x]),
            torch.cat([prompt_x, torch.zeros_like(prompt_x)]),
            torch.cat([x_lens, x_lens]),
            torch.cat([t, t]),
            torch.cat([style, torch.zeros_like(style)]),
            torch.cat([mu, torch.zeros_like(mu)]),
        )
        cond, uncond = both.chunk(2, dim=0)
        return (1.0 + cfg_rate) * cond - cfg_rate * uncond

    def _estimate(self, x, prompt_x, x_lens, t, style, mu) -> torch.Tensor:
        return self.estimator(x, prompt_x, x_lens, t, style, mu, reflect_at_row_end=True)

    @torch.no_grad()
    def inference(
        self,
        mu: torch.Tensor,
        x_lens: torch.Tensor,
        prompt: torch.Tensor,
        style: torch.Tensor,
        n_timesteps: int,
        temperature: float = 1.0,
        cfg_rate: float = defaults.CFG_RATE,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        prompt_lens: torch.Tensor | None = None,
        velocity_fn: VelocityFn | None = None,
        rows_gone: RowsGoneFn | None = None,
    ) -> torch.Tensor:
        """mu (B, T, C) condition, x_lens (B,), prompt (B, 80, Tp) reference mel, style (B, 192) -> mel (B, 80, T).

        noise: (B, 80, T) standard normal draw (scaled by temperature here); None draws it with
        `generator` (or the global torch RNG, as the official code does). prompt_lens: (B,) prompt
        frames per row; None means all Tp frames of `prompt` for every row (the official call).
        The returned mel is zero on each row's prompt frames and past its x_lens.
        rows_gone: asked before each step; rows it marks leave the batch and come back all zeros.
        """
        batch, length = mu.shape[0], mu.shape[1]
        if noise is None:
            noise = torch.randn(
                (batch, self.in_channels, length), generator=generator, device=mu.device, dtype=mu.dtype
            )
        if prompt_lens is None:
            prompt_lens = torch.full((batch,), prompt.shape[-1], dtype=torch.long, device=mu.device)
        x_lens = x_lens.to(mu.device).expand(batch)
        prompt_lens = prompt_lens.to(mu.device)

        # keep = 1 on generated frames (prompt_lens[b] <= i < x_lens[b]), 0 on prompt frames and padding.
        in_prompt = sequence_mask(prompt_lens, length)[:, None, :]
        keep = (~in_prompt & sequence_mask(x_lens, length)[:, None, :]).to(mu.dtype)
        prompt_frames = min(prompt.shape[-1], length)
        prompt_x = torch.zeros_like(noise)
        prompt_x[..., :prompt_frames] = prompt[..., :prompt_frames]
        prompt_x = prompt_x * in_prompt.to(mu.dtype)

        x = noise * temperature * keep
        running, lens = torch.arange(batch, device=mu.device), x_lens  # rows (of the call) still in the batch
        t_span = torch.linspace(0, 1, n_timesteps + 1, device=mu.device)
        t = t_span[0]
        for step in range(1, n_timesteps + 1):
            if rows_gone is not None:
                stay = ~rows_gone().to(mu.device)[running]
                if not stay.all():
                    if not stay.any():
                        return torch.zeros_like(noise)
                    running, lens = running[stay], lens[stay]
                    # Padding past the longest remaining row is dropped too: rows do not depend on it.
                    length = int(lens.max())
                    x, prompt_x, keep = x[stay, :, :length], prompt_x[stay, :, :length], keep[stay, :, :length]
                    mu, style = mu[stay, :length], style[stay]
            dt = t_span[step] - t_span[step - 1]
            velocity = self.guided_velocity(x, prompt_x, lens, t.expand(len(running)), style, mu, cfg_rate, velocity_fn)
            # Accumulating t (rather than reading t_span[step]) is what the official solver does.
            x = (x + dt * velocity) * keep
            t = t + dt
        if len(running) == batch:
            return x
        out = torch.zeros_like(noise)
        out[running, :, : x.shape[-1]] = x
        return out
