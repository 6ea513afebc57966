"""s2mel for a batch of concurrent requests: GPT codes + latents -> generated mel, one padded batch.

Each request brings its own codes, GPT latents (the decoder's hidden states), speaker prompt (prompt
condition, reference mel, style) and settings. Requests with the same number of diffusion steps and
guidance rate run as one padded batch through the length regulator and the flow-matching solver;
per-row lengths and masks make every row equal what it computes alone (given the same noise, which
is drawn per request from its own seed).

Which requests share a batch is `plan_s2mel_batches`' decision (by cost, not by arrival): padding a
short row to a long one is work thrown away, so a batch is only formed where it stays small.

IndexTTS-2.5 (an s2mel without gpt_layer, with the EnhancedCodec): each request's codes go through
the codec's decode on their own (N codes -> 2N frames; its convolutions would read a padded
neighbour's codes), there are no GPT latents, and the mel length is the 2.5 rule
(`indextts2.rules.mel_frames_for_codes`).

Precision (`s2mel_autocast_dtype`): float32, or the networks under torch.autocast in float16 / bfloat16
as the official infer_v2 runs s2mel with use_fp16 (the weights stay float32).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass

import torch

from indextts2 import defaults
from indextts2.engine.device import OutOfMemoryInjection
from indextts2.networks.codec_2_5 import EnhancedCodec
from indextts2.networks.flow_matching import VelocityFn
from indextts2.networks.s2mel import S2Mel
from indextts2.networks.semantic_codec import RepCodec
from indextts2.rules import mel_frames_for_codes

logger = logging.getLogger(__name__)

PRECISIONS = {"float32": None, "float16": torch.float16, "bfloat16": torch.bfloat16}


def s2mel_autocast_dtype(precision: str, device: str | torch.device) -> torch.dtype | None:
    """The autocast dtype for s2mel's `precision` on `device`; None: plain float32.

    float16 and bfloat16 run the s2mel networks (GPT layer, length regulator, DiT) under torch.autocast
    with that dtype, as the official infer_v2 does with use_fp16: matmuls and convolutions in half
    precision, what autocast keeps in float32 (norms, softmax) in float32, the weights float32. The
    vocoder is a model of its own and stays float32. float16 on a CPU falls back to float32 with a log
    line, so that one repository configured for its GPUs still loads on a CPU server (device "auto"):
    CPUs have few float16 kernels, so it would be slower there and it was never measured; bfloat16 is
    CPU autocast's own dtype and is kept.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"s2mel precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    dtype = PRECISIONS[precision]
    if dtype == torch.float16 and torch.device(device).type != "cuda":
        logger.warning("s2mel: precision float16 is for CUDA; on %s s2mel runs in float32", device)
        return None
    return dtype


@dataclass
class S2MelRequest:
    codes: torch.Tensor  # (n,) int64 GPT codes, without the stop code
    latents: torch.Tensor | None  # (n, d) GPT final hidden state at each code's step; None for 2.5
    prompt_condition: torch.Tensor  # (T_ref, C) length-regulated codec embedding (2.5: raw features) of the prompt
    ref_mel: torch.Tensor  # (80, T_ref) log mel of the speaker prompt
    style: torch.Tensor  # (192,) CAMPPlus style
    duration_ratio: float = 1.0
    diffusion_steps: int = defaults.DIFFUSION_STEPS
    cfg_rate: float = defaults.CFG_RATE
    seed: int | None = None
    # Streaming in chunks (orchestrator/streaming.py): this request holds codes [code_offset, code_offset + n)
    # of its segment, and ref_mel may continue past the speaker prompt with `context_frames` of the mel
    # already rendered for the first codes of that window. Those frames are prompt (kept, not generated),
    # so the new frames continue them; their condition comes from this window's own codes.
    code_offset: int = 0
    version: str = "2.0"  # the IndexTTS version, whose mel length rule applies

    @property
    def context_frames(self) -> int:
        return int(self.ref_mel.shape[1]) - int(self.prompt_condition.shape[0])

    @property
    def target_frames(self) -> int:
        """Condition frames of this window's codes: the segment's frame count at its end minus at its start,
        so that the windows of one segment add up to the whole segment's frames."""
        end = self.code_offset + int(self.codes.shape[0])
        start = mel_frames_for_codes(self.code_offset, self.duration_ratio, self.version)
        return mel_frames_for_codes(end, self.duration_ratio, self.version) - start

    def validate(self) -> None:
        n = self.codes.shape[0]
        if self.codes.dim() != 1 or n == 0:
            raise ValueError(f"semantic_codes must be a non-empty 1-D tensor, got shape {tuple(self.codes.shape)}")
        if self.version == "2.5":
            if self.latents is not None:
                raise ValueError("IndexTTS-2.5's s2mel takes no code_latents")
        elif self.latents is None or self.latents.dim() != 2 or self.latents.shape[0] != n:
            raise ValueError(f"code_latents must be ({n}, d) for {n} codes, got {tuple(self.latents.shape)}")
        if self.ref_mel.dim() != 2 or self.prompt_condition.dim() != 2:
            raise ValueError("ref_mel must be (80, T) and prompt_condition (T, C)")
        if self.code_offset < 0:
            raise ValueError(f"code_offset must not be negative, got {self.code_offset}")
        if not 0 <= self.context_frames < self.target_frames:
            raise ValueError(
                f"ref_mel has {self.ref_mel.shape[1]} frames and prompt_condition {self.prompt_condition.shape[0]}: "
                f"ref_mel must hold the prompt's frames plus fewer than the {self.target_frames} frames of these codes"
            )
        if self.prompt_condition.shape[0] + self.context_frames == 0:
            raise ValueError("no prompt: send the speaker prompt or the mel already rendered (ref_mel)")
        if self.diffusion_steps < 1:
            raise ValueError(f"diffusion_steps must be at least 1, got {self.diffusion_steps}")

    @property
    def frames(self) -> int:
        """The row length the DiT runs on: prompt frames + generated frames (its cost per step)."""
        return int(self.prompt_condition.shape[0]) + self.target_frames

    @property
    def batch_key(self) -> tuple[int, float]:
        """Requests share a batch only when these agree: one Euler loop, one guidance rate."""
        return self.diffusion_steps, float(self.cfg_rate)


def padding_waste(costs: Sequence[int]) -> float:
    """Frames a padded batch computes beyond its rows' own: rows x longest / sum of rows - 1."""
    return len(costs) * max(costs) / sum(costs) - 1.0


def plan_s2mel_batches(
    costs: Sequence[int],
    frame_budget: int,
    max_padding_waste: float,
    keys: Sequence[Hashable] | None = None,
) -> list[list[int]]:
    """Group requests (by index) into padded batches, the cheapest batch first.

    costs: each request's row length (`S2MelRequest.frames`). A batch holds only requests of one key
    (`S2MelRequest.batch_key`), pads to at most `frame_budget` frames in all (rows x longest) and to at
    most `max_padding_waste` beyond its real frames (see `padding_waste`). A request over the budget
    on its own runs alone. Greedy over requests sorted by cost: neighbours in that order pad least.
    """
    keys = keys if keys is not None else [None] * len(costs)
    by_key: dict[Hashable, list[int]] = {}
    for index in sorted(range(len(costs)), key=lambda i: (costs[i], i)):
        by_key.setdefault(keys[index], []).append(index)
    batches: list[list[int]] = []
    for indices in by_key.values():
        batch: list[int] = []
        real = 0
        for index in indices:
            # Sorted: this request is the longest so far, so the padded size becomes rows x its cost.
            padded = (len(batch) + 1) * costs[index]
            if batch and (padded > frame_budget or padded > (1.0 + max_padding_waste) * (real + costs[index])):
                batches.append(batch)
                batch, real = [], 0
            batch.append(index)
            real += costs[index]
        batches.append(batch)
    # Cheapest first (padded frames): short requests do not wait behind long ones.
    return sorted(batches, key=lambda batch: (len(batch) * max(costs[i] for i in batch), batch[0]))


class S2MelBatcher:
    """autocast_dtype: run the networks under torch.autocast with it (`s2mel_autocast_dtype`); None:
    in the weights' dtype."""

    def __init__(
        self, s2mel: S2Mel, codec: RepCodec | EnhancedCodec, device: str | torch.device = "cpu",
        autocast_dtype: torch.dtype | None = None,
    ):
        self.s2mel = s2mel
        self.codec = codec
        # IndexTTS-2.5: no gpt_layer, and the codec decodes (EnhancedCodec) instead of embedding codes.
        self.version = "2.5" if isinstance(codec, EnhancedCodec) else "2.0"
        if (s2mel.gpt_layer is None) != (self.version == "2.5"):
            raise ValueError("an IndexTTS-2.5 s2mel (no gpt_layer) goes with the 2.5 codec, a 2.0 one with RepCodec")
        self.device = torch.device(device)
        self.dtype = next(s2mel.parameters()).dtype
        self.autocast_dtype = autocast_dtype
        # Test hook (the s2mel model's `inject_oom_steps`): `.arm(n)` makes the next n runs raise
        # torch.OutOfMemoryError before they start.
        self.out_of_memory_injection = OutOfMemoryInjection()

    def _precision(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    @torch.inference_mode()
    def run(
        self,
        requests: Sequence[S2MelRequest],
        velocity_fn: VelocityFn | None = None,
        rows_gone: Callable[[], Sequence[bool]] | None = None,
    ) -> list[torch.Tensor | None]:
        """Generated mel (80, T_i) per request (prompt frames cropped), in request order.

        Requests of one `batch_key` run as one padded batch. rows_gone, asked between diffusion steps,
        says per request whether its caller is gone: such a request stops costing compute at once,
        and its result is None.
        """
        for request in requests:
            if request.version != self.version:
                raise ValueError(f"an IndexTTS-{request.version} request sent to an IndexTTS-{self.version} s2mel")
            request.validate()
        self.out_of_memory_injection.check(f"s2mel batch of {len(requests)}")
        results: list[torch.Tensor | None] = [None] * len(requests)
        groups: dict[tuple[int, float], list[int]] = {}
        for index, request in enumerate(requests):
            groups.setdefault(request.batch_key, []).append(index)
        for (steps, cfg_rate), indices in groups.items():
            group_gone = None
            if rows_gone is not None:
                def group_gone(indices=indices) -> torch.Tensor:
                    gone = rows_gone()
                    return torch.tensor([bool(gone[i]) for i in indices])
            with self._precision():
                mels = self._run_group([requests[i] for i in indices], steps, cfg_rate, velocity_fn, group_gone)
            for index, mel in zip(indices, mels, strict=False):
                results[index] = mel
        return results

    def _pad_stack(self, tensors: list[torch.Tensor], axis: int) -> torch.Tensor:
        longest = max(t.shape[axis] for t in tensors)
        padded = []
        for t in tensors:
            shape = list(t.shape)
            shape[axis] = longest - t.shape[axis]
            padded.append(torch.cat([t, t.new_zeros(shape)], dim=axis))
        return torch.stack(padded)

    def _run_group(
        self,
        requests: list[S2MelRequest],
        steps: int,
        cfg_rate: float,
        velocity_fn: VelocityFn | None,
        rows_gone: Callable[[], torch.Tensor] | None,
    ) -> list[torch.Tensor | None]:
        device, dtype = self.device, self.dtype
        if self.version == "2.5":
            decoded = [self.codec.decode(r.codes.to(device)[None])[0] for r in requests]
            code_lens = torch.tensor([d.shape[0] for d in decoded], device=device)
            content = self._pad_stack(decoded, 0)
        else:
            code_lens = torch.tensor([r.codes.shape[0] for r in requests], device=device)
            codes = self._pad_stack([r.codes.to(device) for r in requests], 0)
            latents = self._pad_stack([r.latents.to(device, dtype) for r in requests], 0)
            content = self.codec.vq2emb(codes) + self.s2mel.gpt_layer(latents)

        targets = [r.target_frames for r in requests]
        target_lens = torch.tensor(targets, device=device)
        condition, _ = self.s2mel.length_regulator(content, target_lens, x_lens=code_lens)

        # Each row: [its prompt condition | its codes' condition], then padding. The prompt mel covers the
        # speaker prompt and, when streaming, the first context frames of the codes' condition too.
        rows = [
            torch.cat([r.prompt_condition.to(device, dtype), condition[i, : targets[i]]], dim=0)
            for i, r in enumerate(requests)
        ]
        prompt_lens = [r.ref_mel.shape[1] for r in requests]
        mu = self._pad_stack(rows, 0)
        x_lens = torch.tensor([r.prompt_condition.shape[0] + t for r, t in zip(requests, targets, strict=False)], device=device)
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
            prompt_lens=torch.tensor(prompt_lens, device=device), velocity_fn=velocity_fn, rows_gone=rows_gone,
        )
        # Asked once more: a row that left the batch came back as zeros, which is no result.
        gone = rows_gone() if rows_gone is not None else torch.zeros(len(requests), dtype=torch.bool)
        return [None if gone[i] else mel[i, :, prompt_lens[i] : int(x_lens[i])].float() for i in range(len(requests))]
