"""The whole IndexTTS-2.5 inference in eager PyTorch, one request at a time, as `infer_v2_5` runs it.

Stage by stage, what differs from the 2.0 `EagerPipeline`:
- the GPT's speaker row is `spk_emb_proj(CAMPPlus style)` (no speaker perceiver), and the prefix's
  text rows carry the language embedding;
- the codes (25 Hz) go through `EnhancedCodec.decode` (N codes -> 2N frames at 50 Hz); there is no
  gpt_layer and no GPT latent;
- the s2mel prompt condition is the length-regulated *raw* normalised w2v-BERT features;
- the mel length is `int(2N * 1.72 * duration_ratio)` (truncated, as the official code does).
The emotion rules are 2.0's (`emotion_vector_of_request`).
The GPT decodes at the official KV-cached mel positions by default: 2.5 uses no GPT latent, so nothing
needs the trained positions, and the official ones reproduce the official codes.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from indextts2 import defaults, rules
from indextts2.checkpoint_dir_2_5 import IndexTTS25Networks
from indextts2.frontend.audio import emotion_prompt_features, prompt_features, s2mel_mel_args
from indextts2.networks.gpt import SamplingConfig
from indextts2.pipeline import (
    OFFICIAL_SAMPLING,
    SynthesisResult,
    content_to_waveform,
    emotion_vector_of_request,
    join_segments,
    sampling_of_segment,
    semantic_features,
    within_position_table,
)


def target_mel_frames_2_5(decoded_frames: int, duration_ratio: float = 1.0) -> int:
    """Mel frames of a 2.5 segment from its decoded frames (2 per GPT code): `rules.target_mel_frames_2_5`."""
    return rules.target_mel_frames_2_5(decoded_frames // rules.CODEC_2_5_FRAMES_PER_CODE, duration_ratio)


@dataclass
class SpeakerPrompt25:
    """Everything the 2.5 pipeline derives from the speaker reference audio (cacheable per voice)."""

    semantic_features: torch.Tensor  # (1, T, D) normalised w2v-BERT layer 17 of the 22.05k->16k audio
    prompt_condition: torch.Tensor  # (1, T_ref, C) length-regulated raw semantic features
    ref_mel: torch.Tensor  # (1, 80, T_ref)
    style: torch.Tensor  # (1, 192) CAMPPlus
    speaker_latents: torch.Tensor  # (1, 1, d) spk_emb_proj(style): the GPT's speaker row


class EagerPipeline25:
    def __init__(self, networks: IndexTTS25Networks, device: str = "cpu"):
        if networks.semantic_encoder is None:
            raise ValueError("the eager pipeline needs the semantic encoder")
        self.networks = networks
        self.device = torch.device(device)
        self.mel_args = s2mel_mel_args(networks.config["s2mel"])

    @torch.inference_mode()
    def speaker_prompt(self, samples: np.ndarray, sample_rate: int) -> SpeakerPrompt25:
        nets = self.networks
        prompt = prompt_features(samples, sample_rate, self.mel_args)
        features = semantic_features(nets, prompt.input_features, prompt.attention_mask, self.device)
        ref_mel = torch.from_numpy(prompt.ref_mel)[None].to(self.device)
        prompt_condition, _ = nets.s2mel.length_regulator(
            features, torch.tensor([ref_mel.shape[-1]], device=self.device)
        )
        style = nets.campplus(torch.from_numpy(prompt.fbank)[None].to(self.device))
        return SpeakerPrompt25(
            semantic_features=features,
            prompt_condition=prompt_condition,
            ref_mel=ref_mel,
            style=style,
            speaker_latents=nets.gpt.speaker_conditioning(style),
        )

    @torch.inference_mode()
    def emotion_features(self, samples: np.ndarray, sample_rate: int) -> torch.Tensor:
        """An emotion reference (or, without one, the speaker's audio) read at 16 kHz and cut to 15 s."""
        return semantic_features(self.networks, *emotion_prompt_features(samples, sample_rate), self.device)

    @torch.inference_mode()
    def generate_codes(
        self,
        speaker: SpeakerPrompt25,
        emovec: torch.Tensor,
        text_ids: list[int] | torch.Tensor,
        language: int | None,
        sampling: SamplingConfig,
        official_positions: bool = True,
    ) -> torch.Tensor:
        """The GPT's semantic codes of one segment (without the stop code). (n,) int64."""
        gpt = self.networks.gpt
        ids = torch.as_tensor(text_ids, dtype=torch.long, device=self.device)
        output = gpt.generate(
            speaker.speaker_latents, emovec, ids, within_position_table(sampling, gpt),
            official_positions=official_positions, language=language,
        )
        return output.codes

    @torch.inference_mode()
    def codes_to_waveform(
        self,
        speaker: SpeakerPrompt25,
        codes: torch.Tensor,
        duration_ratio: float = 1.0,
        diffusion_steps: int = defaults.DIFFUSION_STEPS,
        cfg_rate: float = defaults.CFG_RATE,
        generator: torch.Generator | None = None,
        noise: torch.Tensor | None = None,
    ) -> tuple[np.ndarray, int]:
        """Codes (n,) -> (waveform float32, mel frames). `noise` (1, 80, prompt + mel frames): the
        flow-matching start, for reproducing a recorded run; None draws it (from `generator`)."""
        nets = self.networks
        content = nets.codec.decode(codes.reshape(1, -1).to(self.device))
        mel_frames = target_mel_frames_2_5(content.shape[1], duration_ratio)
        waveform = content_to_waveform(nets, speaker, content, mel_frames, diffusion_steps, cfg_rate, generator, noise)
        return waveform, mel_frames

    def synthesize_segments(
        self,
        text: str,
        speaker_samples: np.ndarray,
        speaker_sample_rate: int,
        language: str = "auto",
        emotion_samples: np.ndarray | None = None,
        emotion_sample_rate: int | None = None,
        emo_alpha: float = 1.0,
        emo_weights: list[float] | None = None,
        duration_ratio: float = 1.0,
        sampling: SamplingConfig = OFFICIAL_SAMPLING,
        diffusion_steps: int = defaults.DIFFUSION_STEPS,
        max_text_tokens_per_segment: int = defaults.MAX_TEXT_TOKENS_PER_SEGMENT,
        seed: int | None = None,
        cfg_rate: float = defaults.CFG_RATE,
    ) -> Iterator[tuple[np.ndarray, torch.Tensor, int]]:
        """Text + reference audio, one segment at a time: yields (waveform, codes, mel frames)."""
        frontend = self.networks.text_frontend
        if frontend is None:
            raise ValueError("the checkpoint was loaded without its text front-end")
        speaker = self.speaker_prompt(speaker_samples, speaker_sample_rate)
        emovec = emotion_vector_of_request(self, speaker, speaker_samples, speaker_sample_rate, emotion_samples,
                                           emotion_sample_rate, emo_alpha, emo_weights)
        prepared = frontend.prepare(text, language, max_text_tokens_per_segment)
        for index, text_ids in enumerate(prepared.segments):
            segment_sampling, generator = sampling_of_segment(sampling, seed, index)
            codes = self.generate_codes(speaker, emovec, text_ids, prepared.language_id, segment_sampling)
            if codes.numel() == 0:  # the stop code came first: the segment says nothing
                yield np.zeros(0, dtype=np.float32), codes, 0
                continue
            waveform, mel_frames = self.codes_to_waveform(
                speaker, codes, duration_ratio, diffusion_steps, cfg_rate, generator
            )
            yield waveform, codes, mel_frames

    def synthesize(self, text: str, speaker_samples: np.ndarray, speaker_sample_rate: int,
                   **options: Any) -> SynthesisResult:
        """Text + reference audio -> 22.05 kHz waveform, segments joined with 200 ms of silence."""
        return join_segments(self.synthesize_segments(text, speaker_samples, speaker_sample_rate, **options))
