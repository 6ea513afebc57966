"""s2mel for a batch of concurrent requests: GPT codes + latents -> generated mel, one padded batch.

Each request brings its own codes, GPT latents (the decoder's hidden states), speaker prompt (prompt
condition, reference mel, style) and settings. Requests with the same number of diffusion steps and
guidance rate run as one padded batch through the length regulator and the flow-matching solver;
per-row lengths and masks make every row equal what it computes alone (given the same noise, which
is drawn per request from its own seed).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from indextts2.networks.flow_matching import VelocityFn
from indextts2.networks.s2mel import S2Mel
from indextts2.networks.semantic_codec import RepCodec
from indextts2.pipeline import target_mel_frames


@dataclass
class S2MelRequest:
    codes: torch.Tensor  # (n,) int64 GPT codes, without the stop code
    latents: torch.Tensor  # (n, d) GPT final hidden state at each code's step
    prompt_condition: torch.Tensor  # (T_ref, C) length-regulated codec embedding of the speaker prompt
    ref_mel: torch.Tensor  # (80, T_ref) log mel of the speaker prompt
    style: torch.Tensor  # (192,) CAMPPlus style
    duration_ratio: float = 1.0
    diffusion_steps: int = 25
    cfg_rate: float = 0.7
    seed: int | None = None

    def validate(self) -> None:
        n = self.codes.shape[0]
        if self.codes.dim() != 1 or n == 0:
            raise ValueError(f"semantic_codes must be a non-empty 1-D tensor, got shape {tuple(self.codes.shape)}")
        if self.latents.dim() != 2 or self.latents.shape[0] != n:
            raise ValueError(f"code_latents must be ({n}, d) for {n} codes, got {tuple(self.latents.shape)}")
        if self.ref_mel.dim() != 2 or self.prompt_condition.dim() != 2:
            raise ValueError("ref_mel must be (80, T) and prompt_condition (T, C)")
        if self.ref_mel.shape[1] != self.prompt_condition.shape[0]:
            raise ValueError(
                f"ref_mel has {self.ref_mel.shape[1]} frames but prompt_condition {self.prompt_condition.shape[0]}"
            )
        if self.diffusion_steps < 1:
            raise ValueError(f"diffusion_steps must be at least 1, got {self.diffusion_steps}")


class S2MelBatcher:
    def __init__(self, s2mel: S2Mel, codec: RepCodec, device: str | torch.device = "cpu"):
        self.s2mel = s2mel
        self.codec = codec
        self.device = torch.device(device)
        self.dtype = next(s2mel.parameters()).dtype

    @torch.inference_mode()
    def run(self, requests: Sequence[S2MelRequest], velocity_fn: VelocityFn | None = None) -> list[torch.Tensor]:
        """Generated mel (80, T_i) per request (prompt frames cropped), in request order."""
        for request in requests:
            request.validate()
        results: list[torch.Tensor | None] = [None] * len(requests)
        groups: dict[tuple[int, float], list[int]] = {}
        for index, request in enumerate(requests):
            groups.setdefault((request.diffusion_steps, float(request.cfg_rate)), []).append(index)
        for (steps, cfg_rate), indices in groups.items():
            mels = self._run_group([requests[i] for i in indices], steps, cfg_rate, velocity_fn)
            for index, mel in zip(indices, mels):
                results[index] = mel
        return results  # type: ignore[return-value]

    def _pad_stack(self, tensors: list[torch.Tensor], axis: int) -> torch.Tensor:
        longest = max(t.shape[axis] for t in tensors)
        padded = []
        for t in tensors:
            shape = list(t.shape)
            shape[axis] = longest - t.shape[axis]
            padded.append(torch.cat([t, t.new_zeros(shape)], dim=axis))
        return torch.stack(padded)

    def _run_group(
        self, requests: list[S2MelRequest], steps: int, cfg_rate: float, velocity_fn: VelocityFn | None
    ) -> list[torch.Tensor]:
        device, dtype = self.device, self.dtype
        code_lens = torch.tensor([r.codes.shape[0] for r in requests], device=device)
        codes = self._pad_stack([r.codes.to(device) for r in requests], 0)
        latents = self._pad_stack([r.latents.to(device, dtype) for r in requests], 0)
        content = self.codec.vq2emb(codes) + self.s2mel.gpt_layer(latents)

        targets = [target_mel_frames(r.codes.shape[0], r.duration_ratio) for r in requests]
        target_lens = torch.tensor(targets, device=device)
        condition, _ = self.s2mel.length_regulator(content, target_lens, x_lens=code_lens)

        # Each row: [its prompt condition | its generated condition], then padding.
        prompt_lens = [r.prompt_condition.shape[0] for r in requests]
        rows = [
            torch.cat([r.prompt_condition.to(device, dtype), condition[i, : targets[i]]], dim=0)
            for i, r in enumerate(requests)
        ]
        mu = self._pad_stack(rows, 0)
        x_lens = torch.tensor([p + t for p, t in zip(prompt_lens, targets)], device=device)
        prompt = self._pad_stack([r.ref_mel.to(device, dtype) for r in requests], 1)
        style = torch.stack([r.style.to(device, dtype) for r in requests])

        mel_bands, total = prompt.shape[1], mu.shape[1]
        noise = torch.zeros(len(requests), mel_bands, total, device=device, dtype=dtype)
        for i, r in enumerate(requests):
            generator = torch.Generator(device="cpu")
            generator.manual_seed(r.seed if r.seed is not None else int(torch.seed() % 2**63))
            noise[i, :, : int(x_lens[i])] = torch.randn(mel_bands, int(x_lens[i]), generator=generator).to(device, dtype)

        mel = self.s2mel.cfm.inference(
            mu, x_lens, prompt, style, steps, cfg_rate=cfg_rate, noise=noise,
            prompt_lens=torch.tensor(prompt_lens, device=device), velocity_fn=velocity_fn,
        )
        return [mel[i, :, prompt_lens[i] : int(x_lens[i])].float() for i in range(len(requests))]
