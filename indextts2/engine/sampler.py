"""Per-sequence sampling over a batch of logits, with the semantics of `UnifiedVoice.generate`.

Each sequence has its own `SamplingConfig`, its own set of codes already seen (for the HF
repetition penalty) and its own `torch.Generator`. The penalty and the warpers run batched (their
controls are per-row tensors); each sampling row then draws from its own generator, so a sequence
gets the same codes whatever else shares its decode steps, and the same as `generate` with its seed.
"""

from __future__ import annotations

import torch

from indextts2.networks.gpt import (
    SamplingConfig,
    apply_repetition_penalty,
    apply_sampling_warpers,
    suppress_stop_code,
    without_start_code,
)

# HF `generate` sees the official dummy prompt id 1 (and the start code) as already generated.
_OFFICIAL_DUMMY_PROMPT_ID = 1


def check_sampling_config(sampling: SamplingConfig) -> None:
    """Raise ValueError for a value HF would reject or that would make every code impossible."""
    if sampling.do_sample and not sampling.temperature > 0:
        raise ValueError(f"temperature must be > 0, got {sampling.temperature}")
    if sampling.top_k < 0:
        raise ValueError(f"top_k must be >= 0 (0 = off), got {sampling.top_k}")
    if not 0 < sampling.top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {sampling.top_p}")
    if not sampling.repetition_penalty > 0:
        raise ValueError(f"repetition_penalty must be > 0, got {sampling.repetition_penalty}")
    if sampling.seed is not None and not isinstance(sampling.seed, int):
        raise ValueError(f"seed must be an int or None, got {sampling.seed!r}")
    if not isinstance(sampling.min_codes, int) or sampling.min_codes < 0:
        raise ValueError(f"min_codes must be an int >= 0, got {sampling.min_codes!r}")


class SequenceSampler:
    """Sampling state of one sequence.

    `seed=None` draws the sequence's seed from the global torch RNG when the sampler is made (at
    submission): reproducible under `torch.manual_seed`, whichever thread later decodes it.
    `stop_code` is needed for `config.min_codes` (the stop code is barred until that many codes exist).
    """

    def __init__(
        self, config: SamplingConfig, vocab_size: int, start_code: int, device: torch.device,
        stop_code: int | None = None,
    ):
        if config.min_codes > 0 and stop_code is None:
            raise ValueError("min_codes needs the sampler to know the stop code")
        self.config = config
        self.start_code = start_code
        self.stop_code = stop_code
        self.num_codes = 0  # codes kept so far (the stop code is never kept)
        self.seen = torch.zeros(vocab_size, dtype=torch.bool, device=device)
        if config.penalize_prompt_ids:
            self.seen[[_OFFICIAL_DUMMY_PROMPT_ID, start_code]] = True
        seed = config.seed if config.seed is not None else int(torch.randint(0, 2**62, ()).item())
        self.generator = torch.Generator(device=device).manual_seed(seed)

    def observe(self, code: int) -> None:
        self.seen[code] = True
        self.num_codes += 1

    @property
    def too_short(self) -> bool:
        """True while the stop code is barred (fewer than `min_codes` codes so far)."""
        return self.num_codes < self.config.min_codes


def sample_next_codes(logits: torch.Tensor, samplers: list[SequenceSampler]) -> torch.Tensor:
    """logits (B, V) raw `mel_head` output, row i for samplers[i] -> (B,) int64 next codes."""
    device = logits.device
    scores = logits.float()
    penalty = torch.tensor([s.config.repetition_penalty for s in samplers], device=device)
    scores = without_start_code(scores, samplers[0].start_code)
    scores = apply_repetition_penalty(scores, torch.stack([s.seen for s in samplers]), penalty)
    too_short = [s.too_short for s in samplers]
    if any(too_short):
        stop_code = next(s.stop_code for s in samplers if s.too_short)
        scores = suppress_stop_code(scores, stop_code, torch.tensor(too_short, device=device))
    chosen = scores.argmax(dim=-1)

    sampling_rows = [i for i, s in enumerate(samplers) if s.config.do_sample]
    if sampling_rows:
        configs = [samplers[i].config for i in sampling_rows]
        warped = apply_sampling_warpers(
            scores[sampling_rows],
            torch.tensor([c.temperature for c in configs], device=device),
            torch.tensor([c.top_k for c in configs], device=device),
            torch.tensor([c.top_p for c in configs], device=device),
        )
        for row, i in enumerate(sampling_rows):
            # One row at a time, with the sequence's own generator, exactly as `generate` draws.
            probs = warped[row : row + 1].softmax(dim=-1)
            chosen[i] = torch.multinomial(probs, 1, generator=samplers[i].generator)[0, 0]
    return chosen
