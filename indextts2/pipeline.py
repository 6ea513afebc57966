"""The whole IndexTTS-2 inference in eager PyTorch, one request at a time, as `infer_v2` runs it.

This is the reference the served stack is checked and measured against: same networks, same order of
stages, no batching across requests. `official_second_pass=True` also recomputes the s2mel latents with
a second teacher-forced GPT pass, as the official code does; by default the latents come out of the
decoding pass itself (our GPT decodes at the trained positions, so the two are equal).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from indextts2 import defaults, rules
from indextts2.checkpoint_dir import IndexTTS2Networks
from indextts2.emotion import gpt_emotion_vector, uses_emotion_audio
from indextts2.frontend.audio import emotion_prompt_features, prompt_features, s2mel_mel_args
from indextts2.networks.gpt import SamplingConfig
from indextts2.rules import segment_silence, target_mel_frames

# The official sampling defaults of infer_v2 (its beam search aside: it samples with num_beams=3).
OFFICIAL_SAMPLING = SamplingConfig(
    do_sample=defaults.DO_SAMPLE, temperature=defaults.TEMPERATURE, top_k=defaults.TOP_K, top_p=defaults.TOP_P,
    repetition_penalty=defaults.REPETITION_PENALTY, max_codes=defaults.MAX_CODES,
)


@dataclass
class SpeakerPrompt:
    """Everything the pipeline derives from the speaker reference audio (cacheable per voice)."""

    semantic_features: torch.Tensor  # (1, T, D) normalised w2v-BERT layer 17
    prompt_condition: torch.Tensor  # (1, T_ref, C) length-regulated codec embedding of the prompt
    ref_mel: torch.Tensor  # (1, 80, T_ref)
    style: torch.Tensor  # (1, 192) CAMPPlus
    speaker_latents: torch.Tensor  # (1, 32, d) GPT conditioning


@dataclass
class SynthesisResult:
    waveform: np.ndarray  # float32 in [-1, 1] at OUTPUT_SAMPLE_RATE
    codes: list[torch.Tensor] = field(default_factory=list)  # per segment
    mel_frames: list[int] = field(default_factory=list)  # per segment


class EagerPipeline:
    def __init__(self, networks: IndexTTS2Networks, device: str = "cpu"):
        if networks.semantic_encoder is None or networks.text_frontend is None:
            raise ValueError("the eager pipeline needs the semantic encoder and the text front-end")
        self.networks = networks
        self.device = torch.device(device)
        self.mel_args = s2mel_mel_args(networks.config["s2mel"])

    @torch.inference_mode()
    def speaker_prompt(self, samples: np.ndarray, sample_rate: int) -> SpeakerPrompt:
        nets = self.networks
        prompt = prompt_features(samples, sample_rate, self.mel_args)
        features = semantic_features(nets, prompt.input_features, prompt.attention_mask, self.device)
        lengths = torch.tensor([features.shape[1]], device=self.device)
        _, codec_embedding = nets.semantic_codec.quantize(features)
        ref_mel = torch.from_numpy(prompt.ref_mel)[None].to(self.device)
        prompt_condition, _ = nets.s2mel.length_regulator(
            codec_embedding, torch.tensor([ref_mel.shape[-1]], device=self.device)
        )
        style = nets.campplus(torch.from_numpy(prompt.fbank)[None].to(self.device))
        return SpeakerPrompt(
            semantic_features=features,
            prompt_condition=prompt_condition,
            ref_mel=ref_mel,
            style=style,
            speaker_latents=nets.gpt.get_conditioning(features, lengths),
        )

    @torch.inference_mode()
    def emotion_features(self, samples: np.ndarray, sample_rate: int) -> torch.Tensor:
        """An emotion reference (or, without one, the speaker's audio) is read at 16 kHz and cut to 15 s,
        as infer_v2 does."""
        return semantic_features(self.networks, *emotion_prompt_features(samples, sample_rate), self.device)

    @torch.inference_mode()
    def synthesize_segment(
        self,
        speaker: SpeakerPrompt,
        emovec: torch.Tensor,
        text_ids: list[int],
        sampling: SamplingConfig,
        duration_ratio: float = 1.0,
        diffusion_steps: int = defaults.DIFFUSION_STEPS,
        cfg_rate: float = defaults.CFG_RATE,
        official_second_pass: bool = False,
        generator: torch.Generator | None = None,
    ) -> tuple[np.ndarray, torch.Tensor, int]:
        """One text segment -> (waveform float32, codes, mel frames)."""
        nets = self.networks
        gpt = nets.gpt
        ids = torch.tensor(text_ids, dtype=torch.long, device=self.device)
        output = gpt.generate(speaker.speaker_latents, emovec, ids, within_position_table(sampling, gpt))
        codes, latents = output.codes, output.latents
        if codes.numel() == 0:
            # The stop code came first: the segment says nothing (the service warns about it).
            return np.zeros(0, dtype=np.float32), codes, 0
        if official_second_pass:
            latents = gpt(
                speaker.speaker_latents,
                ids[None],
                torch.tensor([ids.numel()], device=self.device),
                codes[None],
                torch.tensor([codes.numel()], device=self.device),
                emovec,
            )[0]
        content = nets.semantic_codec.vq2emb(codes[None]) + nets.s2mel.gpt_layer(latents[None])
        mel_frames = target_mel_frames(codes.numel(), duration_ratio)
        waveform = content_to_waveform(nets, speaker, content, mel_frames, diffusion_steps, cfg_rate, generator)
        return waveform, codes, mel_frames

    def synthesize_segments(
        self,
        text: str,
        speaker_samples: np.ndarray,
        speaker_sample_rate: int,
        emotion_samples: np.ndarray | None = None,
        emotion_sample_rate: int | None = None,
        emo_alpha: float = 1.0,
        emo_weights: list[float] | None = None,
        duration_ratio: float = 1.0,
        sampling: SamplingConfig = OFFICIAL_SAMPLING,
        diffusion_steps: int = defaults.DIFFUSION_STEPS,
        max_text_tokens_per_segment: int = defaults.MAX_TEXT_TOKENS_PER_SEGMENT,
        official_second_pass: bool = False,
        seed: int | None = None,
        cfg_rate: float = defaults.CFG_RATE,
    ) -> Iterator[tuple[np.ndarray, torch.Tensor, int]]:
        """`synthesize` one segment at a time, as infer_v2's `stream_return` does: yields (waveform,
        codes, mel frames) per text segment, in order, without the silences between them."""
        speaker = self.speaker_prompt(speaker_samples, speaker_sample_rate)
        emovec = emotion_vector_of_request(self, speaker, speaker_samples, speaker_sample_rate, emotion_samples,
                                           emotion_sample_rate, emo_alpha, emo_weights)
        segments = self.networks.text_frontend.split_segments(text, max_text_tokens_per_segment)
        for index, text_ids in enumerate(segments):
            segment_sampling, generator = sampling_of_segment(sampling, seed, index)
            yield self.synthesize_segment(
                speaker, emovec, text_ids, segment_sampling, duration_ratio, diffusion_steps, cfg_rate,
                official_second_pass=official_second_pass, generator=generator,
            )

    def synthesize(self, text: str, speaker_samples: np.ndarray, speaker_sample_rate: int,
                   **options: Any) -> SynthesisResult:
        """Text + reference audio -> 22.05 kHz waveform, segments joined with 200 ms of silence.
        `options` are those of `synthesize_segments`."""
        return join_segments(self.synthesize_segments(text, speaker_samples, speaker_sample_rate, **options))


@torch.inference_mode()
def eager_emotion_vector(
    pipeline: Any, speaker: Any, reference_features: torch.Tensor, from_emotion_audio: bool = False,
    emo_alpha: float = 1.0, emo_weights: list[float] | None = None,
) -> torch.Tensor:
    """The GPT's emotion vector (1, d) in an eager pipeline (2.0 or 2.5), by infer_v2's rules
    (`gpt_emotion_vector`, which the served pipeline calls too). `reference_features`: the pipeline's
    `emotion_features` of the emotion audio (`from_emotion_audio`), or of the speaker's own audio when there
    is none or emotion weights are given (`uses_emotion_audio`)."""
    gpt = pipeline.networks.gpt

    def emotion_encoder(features: torch.Tensor) -> torch.Tensor:
        return gpt.get_emovec(features, torch.tensor([features.shape[1]], device=pipeline.device))

    return gpt_emotion_vector(
        emotion_encoder(speaker.semantic_features), emotion_encoder(reference_features), from_emotion_audio,
        emo_alpha, emo_weights, pipeline.networks.emotion_bank, speaker.style,
    )


def emotion_vector_of_request(
    pipeline: Any, speaker: Any, speaker_samples: np.ndarray, speaker_sample_rate: int,
    emotion_samples: np.ndarray | None, emotion_sample_rate: int | None, emo_alpha: float,
    emo_weights: list[float] | None,
) -> torch.Tensor:
    """A request's emotion vector in an eager pipeline (2.0 or 2.5): its emotion reference read as infer_v2
    reads it (`uses_emotion_audio`), then `eager_emotion_vector`."""
    from_emotion_audio = uses_emotion_audio(emotion_samples is not None, emo_weights)
    if from_emotion_audio:
        reference = pipeline.emotion_features(emotion_samples, emotion_sample_rate or speaker_sample_rate)
    else:
        reference = pipeline.emotion_features(speaker_samples, speaker_sample_rate)
    return eager_emotion_vector(pipeline, speaker, reference, from_emotion_audio, emo_alpha, emo_weights)


def semantic_features(
    networks: Any, input_features: np.ndarray, attention_mask: np.ndarray, device: torch.device
) -> torch.Tensor:
    """The normalised w2v-BERT features (1, T, D) of one utterance's SeamlessM4T input features."""
    features = torch.from_numpy(input_features)[None].to(device)
    mask = torch.from_numpy(attention_mask)[None].to(device)
    return networks.semantic_encoder(features, mask)


def within_position_table(sampling: SamplingConfig, gpt: Any) -> SamplingConfig:
    """`sampling` with max_codes cut to what the GPT's mel position table holds: the official default of
    1500 codes can exceed a small model's table."""
    longest = gpt.max_mel_tokens - 1
    if sampling.max_codes is None or sampling.max_codes > longest:
        return SamplingConfig(**{**sampling.__dict__, "max_codes": longest})
    return sampling


def sampling_of_segment(
    sampling: SamplingConfig, seed: int | None, index: int
) -> tuple[SamplingConfig, torch.Generator | None]:
    """The GPT sampling and the s2mel noise generator of text segment `index` of a request with `seed`
    (None: the global RNGs). s2mel's noise is drawn as the served s2mel draws it: from a CPU generator
    of the segment's seed."""
    segment_seed = rules.segment_seed(seed, index)
    if segment_seed is None:
        return sampling, None
    generator = torch.Generator(device="cpu").manual_seed(segment_seed)
    return SamplingConfig(**{**sampling.__dict__, "seed": segment_seed}), generator


def content_to_waveform(
    networks: Any,
    speaker: Any,
    content: torch.Tensor,
    mel_frames: int,
    diffusion_steps: int,
    cfg_rate: float,
    generator: torch.Generator | None = None,
    noise: torch.Tensor | None = None,
) -> np.ndarray:
    """The s2mel and vocoder stages of one segment (2.0 or 2.5): content (1, n, C) length-regulated to
    `mel_frames`, after the speaker's prompt condition, through the flow matching (from `noise`, or
    noise drawn from `generator`), the prompt's frames cut off, then BigVGAN. -> waveform float32."""
    s2mel = networks.s2mel
    device = content.device
    condition, _ = s2mel.length_regulator(content, torch.tensor([mel_frames], device=device))
    full_condition = torch.cat([speaker.prompt_condition, condition], dim=1)
    mel = s2mel.cfm.inference(
        full_condition,
        torch.tensor([full_condition.shape[1]], device=device),
        speaker.ref_mel,
        speaker.style,
        diffusion_steps,
        cfg_rate=cfg_rate,
        generator=generator,
        noise=noise,
    )
    mel = mel[:, :, speaker.ref_mel.shape[-1]:]
    return networks.bigvgan(mel)[0, 0].float().cpu().numpy()


def join_segments(segments: Iterable[tuple[np.ndarray, torch.Tensor, int]]) -> SynthesisResult:
    """(waveform, codes, mel frames) per segment -> one result, the spoken segments joined with silence."""
    result = SynthesisResult(waveform=np.zeros(0, dtype=np.float32))
    pieces: list[np.ndarray] = []
    for waveform, codes, frames in segments:
        if waveform.size:
            if pieces:
                pieces.append(segment_silence())
            pieces.append(waveform)
        result.codes.append(codes)
        result.mel_frames.append(frames)
    result.waveform = np.concatenate(pieces) if pieces else result.waveform
    return result
