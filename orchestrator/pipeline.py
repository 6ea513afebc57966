"""IndexTTS-2 inference over Triton: the stages of `indextts2.pipeline.EagerPipeline`, in its order and
with its rules, each model call going to Triton instead of an in-process network.

    text ──front-end──▶ segments of ≤120 token ids
    speaker audio ──features (in-process numpy)──▶ semantic_encoder ─┬─▶ semantic_codec ─▶ length_regulator  (prompt condition)
                                                                     ├─▶ speaker_conditioner                 (speaker latents)
                                                                     └─▶ emotion_conditioner                 (base emotion vector)
                          fbank ─▶ campplus (style)     log-mel (reference mel, in-process)
    speaker audio ──emotion features (16 kHz straight)──▶ semantic_encoder ─▶ emotion_conditioner          (own emotion vector)
    emotion audio ──emotion features──▶ semantic_encoder ─▶ emotion_conditioner                             (emotion vector)
    per segment: gpt_decoder (streamed codes + latents) ─▶ s2mel (mel) ─▶ vocoder (waveform)
    segments joined with 200 ms of silence

IndexTTS-2.5 (the checkpoint directory's version, `ModelAssets.version`) differs in four calls: the
text front-end takes the request's `language`; the prompt condition is length_regulator on the raw
semantic features (no semantic_codec); speaker_conditioner takes the CAMPPlus style (one speaker row,
so it runs after campplus); gpt_decoder gets `language`, and s2mel gets no GPT latents and applies
the 2.5 mel length rule, which the chunked stream shares (`indextts2.rules.mel_frames_for_codes`).

Conditionings (everything derived from one reference audio) are cached in an LRU keyed by the sha256 of
the uploaded bytes, so a voice used again skips every encoder. The emotion rules are infer_v2's (see
`emotion_vector`). No model math happens here beyond that mixing.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import math
import time
from collections import OrderedDict
from collections.abc import AsyncGenerator, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import sentry_sdk
import torch

from indextts2 import defaults
from indextts2.defaults import MEL_HOP_SAMPLES
from indextts2.emotion import gpt_emotion_vector, uses_emotion_audio
from indextts2.frontend.audio import (
    MAX_PROMPT_SECONDS,
    AudioDecodeError,
    PromptFeatures,
    decode_audio,
    emotion_prompt_features,
    prompt_features,
)
from indextts2.frontend.text import TextError
from indextts2.frontend.text_2_5 import TextError25, detect_language, lang_to_token
from indextts2.rules import chunk_seed, mel_frames_for_codes, segment_seed, segment_silence
from orchestrator.assets import ModelAssets
from orchestrator.chunking import ChunkedVocoding, ChunkPlan, frames_at
from orchestrator.errors import (
    InvalidRequestError,
    ModelUnavailableError,
    PayloadTooLargeError,
    ServiceBugError,
)
from orchestrator.metrics import ServiceMetrics
from orchestrator.reporting import Reporter, current_request
from orchestrator.settings import Settings
from orchestrator.triton_client import TritonStages

SAMPLE_RATE = defaults.OUTPUT_SAMPLE_RATE  # 22050 Hz
MIN_REFERENCE_SECONDS = 0.5  # below this the encoders have (almost) nothing to read: refused
SHORT_REFERENCE_SECONDS = 5.0  # below this the clone is served, and reported as a warning
DEGENERATE_EMOTION_MEAN_ABS = 1e-4  # an emotion embedding this close to zero carries no emotion
# A segment whose GPT stopped after fewer codes than this per text token (~40 ms of speech per token,
# well under any language's pace) produced less speech than its text calls for.
MIN_CODES_PER_TEXT_TOKEN = 2.0

T = TypeVar("T")


@dataclass(frozen=True)
class ReferenceAudio:
    """A decoded upload: mono float32 samples and what the reports may say about it."""

    field: str  # the form field (or voice) it came from, for error messages
    samples: np.ndarray  # the decoded start (at most 16 s: decode_audio reads no more)
    sample_rate: int
    sha256: str
    duration_s: float  # of the whole upload, as its header declares it


@dataclass(frozen=True)
class SpeakerConditioning:
    """Everything derived from a speaker reference. The semantic features themselves are not kept:
    no later stage reads them (the emotion vectors are computed here), and at 15 s of a real
    checkpoint they would be the largest item (750 x 1024 floats)."""

    speaker_latents: np.ndarray  # (32, d) GPT conditioning; IndexTTS-2.5: (1, d), spk_emb_proj(style)
    base_emotion_vector: np.ndarray  # (d,) emotion_conditioner on the speaker prompt's features
    # (d,) emotion_conditioner on the speaker's audio read as an emotion reference (16 kHz straight, as
    # infer_v2 reads it again): the emotion reference when there is no emotion audio
    own_emotion_vector: np.ndarray
    prompt_condition: np.ndarray  # (T_ref, C) length-regulated codec embedding (2.5: raw features) of the prompt
    ref_mel: np.ndarray  # (80, T_ref) log mel of the (≤15 s) prompt
    style: np.ndarray  # (192,) CAMPPlus
    duration_s: float  # of the upload
    used_duration_s: float  # after the 15 s cut
    warnings: tuple[str, ...] = ()  # reported once, when computed; flagged on every response using it


@dataclass(frozen=True)
class EmotionConditioning:
    emotion_vector: np.ndarray  # (d,) emotion_conditioner on the emotion reference
    duration_s: float
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class SynthesisOptions:
    """Validated per-request controls (limits are in orchestrator.schemas)."""

    emo_alpha: float = 1.0
    emotion_weights: tuple[float, ...] | None = None
    duration_ratio: float = defaults.DURATION_RATIO
    do_sample: bool = defaults.DO_SAMPLE
    temperature: float = defaults.TEMPERATURE
    top_k: int = defaults.TOP_K
    top_p: float = defaults.TOP_P
    repetition_penalty: float = defaults.REPETITION_PENALTY
    max_codes: int | None = None  # None: min(defaults.MAX_CODES, the GPT's limit)
    min_codes: int = 0  # no stop code before this many codes
    seed: int | None = None
    diffusion_steps: int = defaults.DIFFUSION_STEPS
    cfg_rate: float = defaults.CFG_RATE
    language: str | None = None  # IndexTTS-2.5: the text's language code (`SynthesisPipeline.language`)


@dataclass
class Usage:
    """What a synthesis used (the SSE `speech.audio.done` event's usage): text tokens in, GPT codes out."""

    input_tokens: int = 0
    output_tokens: int = 0


class ConditioningCache:
    """A small LRU of conditionings, keyed by (kind, sha256 of the uploaded bytes)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._items: OrderedDict[tuple[str, str], Any] = OrderedDict()

    def get(self, key: tuple[str, str]) -> Any | None:
        value = self._items.get(key)
        if value is not None:
            self._items.move_to_end(key)
        return value

    def put(self, key: tuple[str, str], value: Any) -> None:
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self.capacity:
            self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)


async def gather_all(*coroutines: Coroutine[Any, Any, Any]) -> list[Any]:
    """Run concurrently; on the first failure cancel the others and raise that failure."""
    tasks = [asyncio.ensure_future(coroutine) for coroutine in coroutines]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in tasks:
            if task.done() and not task.cancelled() and task.exception() is not None:
                raise task.exception()
        return [task.result() for task in tasks]
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def refuse_language_for_2_0(requested: str | None) -> None:
    """IndexTTS-2.0's tokenizer has no languages: anything but 'auto' (or none) is refused (the eager
    baseline checks with this too)."""
    if requested not in (None, "auto"):
        raise InvalidRequestError(
            f"language {requested!r}: this service runs IndexTTS-2.0, whose tokenizer has no languages; "
            "send 'auto' or leave it out", field="language", limit="auto (IndexTTS-2.0)",
        )


def nothing_to_speak() -> InvalidRequestError:
    """The error for a text the front-end leaves nothing of (the eager baseline answers with this too)."""
    return InvalidRequestError("text has nothing to speak after normalisation (only punctuation, symbols or spaces)",
                               field="text")


def check_text_length(text: str, limit: int) -> None:
    """The API's text limits (the eager baseline checks with this too); never echoes the text."""
    if not text or not text.strip():
        raise InvalidRequestError("text is empty", field="text", limit=f"1 to {limit} characters")
    if len(text) > limit:
        raise InvalidRequestError(
            f"text is {len(text)} characters long; the limit is {limit}", field="text",
            limit=f"1 to {limit} characters",
        )


def decode_reference_audio(field: str, data: bytes, max_upload_bytes: int) -> ReferenceAudio:
    """Uploaded bytes -> samples, with the API's size, format and length checks (the eager baseline
    decodes with this too)."""
    if len(data) > max_upload_bytes:
        raise PayloadTooLargeError(
            f"{field} is {len(data)} bytes; the limit is {max_upload_bytes} bytes", field=field,
            limit=f"{max_upload_bytes} bytes",
        )
    if not data:
        raise InvalidRequestError(f"{field} is empty", field=field)
    try:
        decoded = decode_audio(data)
    except AudioDecodeError as error:
        if error.limit is not None:  # a header this service does not take: say which limit
            raise InvalidRequestError(f"{field}: {error}", field=field, limit=error.limit) from None
        raise InvalidRequestError(
            f"{field} is not audio this service can decode; send WAV, FLAC or OGG", field=field,
            limit="WAV, FLAC or OGG (Vorbis/Opus), mono or multi-channel",
        ) from None
    decoded_seconds = decoded.samples.shape[0] / decoded.sample_rate
    if decoded_seconds < MIN_REFERENCE_SECONDS:
        raise InvalidRequestError(
            f"{field} is {decoded_seconds:.2f} s long; at least {MIN_REFERENCE_SECONDS} s is needed",
            field=field, limit=f">= {MIN_REFERENCE_SECONDS} s",
        )
    return ReferenceAudio(field, decoded.samples, decoded.sample_rate, hashlib.sha256(data).hexdigest(),
                          decoded.declared_seconds)


class SynthesisPipeline:
    def __init__(
        self, settings: Settings, assets: ModelAssets, triton: TritonStages, reporter: Reporter,
        metrics: ServiceMetrics,
    ) -> None:
        self.settings = settings
        self.assets = assets
        self.triton = triton
        self.reporter = reporter
        self.metrics = metrics
        self.cache = ConditioningCache(settings.conditioning_cache_size)

    # --- in-process stages -------------------------------------------------------------------------

    async def _in_process(self, stage: str, function: Callable[..., T], *args: Any) -> T:
        """CPU work off the event loop, timed as a stage."""
        started = time.perf_counter()
        try:
            with sentry_sdk.start_span(op="tts.stage", name=stage):
                return await asyncio.to_thread(function, *args)
        finally:
            self.metrics.stage_seconds.labels(stage).observe(time.perf_counter() - started)

    @property
    def version(self) -> str:
        return self.assets.version

    def mel_frames(self, codes: int, duration_ratio: float) -> int:
        """Mel frames s2mel renders for `codes` codes: the loaded version's rule."""
        return mel_frames_for_codes(codes, duration_ratio, self.version)

    def language(self, text: str, requested: str | None) -> str | None:
        """The language code the text is spoken in (IndexTTS-2.5: `requested`, or for 'auto'/None the
        front-end's detection); None for an IndexTTS-2.0 model, which refuses any other than 'auto'."""
        if not self.assets.is_2_5:
            refuse_language_for_2_0(requested)
            return None
        return detect_language(text) if requested in (None, "auto") else requested

    async def segment_text(self, text: str, first_segment_tokens: int = 0, language: str | None = None) -> list[list[int]]:
        """Text -> token ids per segment, off the event loop (the official normaliser takes up to seconds
        on a long text). Errors name the field, never echo the text. first_segment_tokens: see
        `split_pieces` (a short first segment for streaming; IndexTTS-2.0 only). language: IndexTTS-2.5's
        language code (`language`), whose tag starts every segment."""
        check_text_length(text, self.settings.max_text_chars)
        max_tokens = self.assets.segment_tokens(self.settings.max_text_tokens_per_segment)
        try:
            segments = await self._in_process("text_frontend", self.assets.text_segments, text, max_tokens,
                                              language or self.language(text, None), first_segment_tokens)
        except (TextError, TextError25):
            raise nothing_to_speak() from None
        segments = [segment for segment in segments if segment]
        most = self.settings.max_text_segments
        if len(segments) > most:
            raise InvalidRequestError(
                f"text makes {len(segments)} segments of up to {max_tokens} tokens after normalisation; the limit "
                f"is {most} (numbers are read out digit by digit or in words, which lengthens them)",
                field="text", limit=f"at most {most} segments",
            )
        return segments

    async def decode_reference(self, field: str, data: bytes) -> ReferenceAudio:
        """Uploaded bytes -> samples, with the size, format and length checks of the API."""
        return await self._in_process("audio_decode", decode_reference_audio, field, data,
                                      self.settings.max_upload_bytes)

    def _check_reference_length(self, audio: ReferenceAudio) -> list[str]:
        if audio.duration_s < SHORT_REFERENCE_SECONDS:
            self.reporter.warning(
                "short_reference_audio",
                f"{audio.field}: reference audio shorter than {SHORT_REFERENCE_SECONDS:.0f} s",
                stage="reference_audio", tags={"field": audio.field},
                data={"actual_duration": round(audio.duration_s, 3), "min_recommended_duration": SHORT_REFERENCE_SECONDS},
            )
            return ["short_reference_audio"]
        if audio.duration_s > MAX_PROMPT_SECONDS:
            self.reporter.breadcrumb(
                f"{audio.field}: reference audio truncated to {MAX_PROMPT_SECONDS:.0f} s",
                category="reference_audio",
                data={"actual_duration": round(audio.duration_s, 3), "used_duration": MAX_PROMPT_SECONDS},
            )
        return []

    def _check_emotion_embedding(self, vector: np.ndarray, source: str) -> list[str]:
        mean_abs = float(np.mean(np.abs(vector))) if vector.size else 0.0
        if not math.isfinite(mean_abs) or mean_abs < DEGENERATE_EMOTION_MEAN_ABS:
            self.reporter.warning(
                "degenerate_emotion_embedding",
                f"emotion embedding of the {source} is (almost) zero: the emotion is lost",
                stage="emotion_conditioner", model="emotion_conditioner",
                tags={"module": "emotion_encoder"}, data={"mean_abs": mean_abs, "source": source},
            )
            return ["degenerate_emotion_embedding"]
        return []

    @staticmethod
    def _flag(warnings: tuple[str, ...]) -> None:
        context = current_request()
        if context is not None:
            context.warnings.extend(kind for kind in warnings if kind not in context.warnings)

    async def _features(self, audio: ReferenceAudio, compute: Callable[..., T], *args: Any) -> T:
        """compute(samples, sample_rate, *args) off the event loop, its failures as the API's errors."""
        try:
            return await self._in_process("features", compute, audio.samples, audio.sample_rate, *args)
        except ValueError:
            # Too few frames for an extractor.
            raise InvalidRequestError(
                f"{audio.field}: cannot compute features at {audio.sample_rate} Hz and "
                f"{audio.duration_s:.2f} s", field=audio.field,
            ) from None
        except Exception as error:
            raise ServiceBugError(f"feature extraction failed: {type(error).__name__}", stage="features") from error

    # --- conditioning ------------------------------------------------------------------------------

    async def _semantic_features(self, input_features: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        result = await self.triton.infer(
            "semantic_encoder", {"input_features": input_features[None], "attention_mask": attention_mask[None]},
            ["semantic_features"],
        )
        return result["semantic_features"]  # (1, T, D)

    async def _prompt_conditioning(
        self, audio: ReferenceAudio,
    ) -> tuple[PromptFeatures, np.ndarray, dict, dict, dict]:
        """What the speaker prompt gives: its features, the prompt condition, the style, the GPT's speaker
        latents and its base emotion vector (the emotion_conditioner on the prompt's own features)."""
        features = await self._features(audio, prompt_features, self.assets.mel_args)
        semantic = await self._semantic_features(features.input_features, features.attention_mask)
        lengths = np.array([[semantic.shape[1]]], dtype=np.int64)
        ref_mel = features.ref_mel

        async def prompt_condition() -> np.ndarray:
            codec = await self.triton.infer("semantic_codec", {"semantic_features": semantic}, ["semantic_embedding"])
            embedding = codec["semantic_embedding"]
            regulated = await self.triton.infer(
                "length_regulator",
                {"semantic_content": embedding, "content_lengths": np.array([[embedding.shape[1]]], dtype=np.int64),
                 "target_lengths": np.array([[ref_mel.shape[-1]]], dtype=np.int64)},
                ["mel_condition"],
            )
            return regulated["mel_condition"][0]

        async def raw_prompt_condition() -> np.ndarray:
            # IndexTTS-2.5: the raw semantic features, length-regulated to the reference mel.
            regulated = await self.triton.infer(
                "length_regulator",
                {"semantic_content": semantic, "content_lengths": lengths,
                 "target_lengths": np.array([[ref_mel.shape[-1]]], dtype=np.int64)},
                ["mel_condition"],
            )
            return regulated["mel_condition"][0]

        async def style_and_latents_2_5() -> tuple[dict, dict]:
            # IndexTTS-2.5: the GPT's speaker row is spk_emb_proj(CAMPPlus style).
            style = await self.triton.infer("campplus", {"fbank": features.fbank[None]}, ["speaker_style"])
            latents = await self.triton.infer(
                "speaker_conditioner", {"speaker_style": style["speaker_style"]}, ["speaker_latents"]
            )
            return style, latents

        conditioner_inputs = {"semantic_features": semantic, "feature_lengths": lengths}
        if self.assets.is_2_5:
            condition, (style, latents), base = await gather_all(
                raw_prompt_condition(),
                style_and_latents_2_5(),
                self.triton.infer("emotion_conditioner", conditioner_inputs, ["emotion_vector"]),
            )
        else:
            condition, style, latents, base = await gather_all(
                prompt_condition(),
                self.triton.infer("campplus", {"fbank": features.fbank[None]}, ["speaker_style"]),
                self.triton.infer("speaker_conditioner", conditioner_inputs, ["speaker_latents"]),
                self.triton.infer("emotion_conditioner", conditioner_inputs, ["emotion_vector"]),
            )
        return features, condition, style, latents, base

    def _cached(self, kind: str, audio: ReferenceAudio) -> tuple[tuple[str, str], Any]:
        """(cache key, the cached conditioning of `kind` for this audio or None); a hit flags its warnings
        on the request again."""
        key = (kind, audio.sha256)
        cached = self.cache.get(key)
        self.metrics.conditioning_cache.labels(kind, "hit" if cached else "miss").inc()
        if cached is not None:
            self._flag(cached.warnings)
        return key, cached

    async def speaker_conditioning(self, audio: ReferenceAudio) -> SpeakerConditioning:
        key, cached = self._cached("speaker", audio)
        if cached is not None:
            return cached
        warnings = self._check_reference_length(audio)
        # The emotion reference (the same audio read again at 16 kHz) does not wait for the prompt's
        # features: its semantic_encoder call runs beside the prompt's.
        (features, condition, style, latents, base), own = await gather_all(
            self._prompt_conditioning(audio), self._emotion_reference_vector(audio)
        )
        conditioning = SpeakerConditioning(
            speaker_latents=latents["speaker_latents"][0],
            base_emotion_vector=base["emotion_vector"][0],
            own_emotion_vector=own,
            prompt_condition=condition,
            ref_mel=features.ref_mel,
            style=style["speaker_style"][0],
            duration_s=audio.duration_s,
            used_duration_s=features.used_samples_22k / SAMPLE_RATE,
        )
        warnings += self._check_emotion_embedding(conditioning.own_emotion_vector, "speaker reference")
        conditioning = dataclasses.replace(conditioning, warnings=tuple(warnings))
        self.cache.put(key, conditioning)
        return conditioning

    async def emotion_conditioning(self, audio: ReferenceAudio) -> EmotionConditioning:
        key, cached = self._cached("emotion", audio)
        if cached is not None:
            return cached
        # A short emotion reference still carries its emotion: only the cut is noted.
        warnings = self._check_reference_length(audio) if audio.duration_s > MAX_PROMPT_SECONDS else []
        vector = await self._emotion_reference_vector(audio)
        warnings += self._check_emotion_embedding(vector, "emotion reference")
        conditioning = EmotionConditioning(vector, audio.duration_s, tuple(warnings))
        self.cache.put(key, conditioning)
        return conditioning

    async def _emotion_reference_vector(self, audio: ReferenceAudio) -> np.ndarray:
        """emotion_conditioner on `audio` read as an emotion reference (16 kHz straight, 15 s)."""
        semantic = await self._semantic_features(*await self._features(audio, emotion_prompt_features))
        lengths = np.array([[semantic.shape[1]]], dtype=np.int64)
        result = await self.triton.infer(
            "emotion_conditioner", {"semantic_features": semantic, "feature_lengths": lengths}, ["emotion_vector"]
        )
        return result["emotion_vector"][0]

    def emotion_vector(
        self, speaker: SpeakerConditioning, emotion: EmotionConditioning | None, options: SynthesisOptions
    ) -> np.ndarray:
        """The GPT's emotion vector, by infer_v2's rules (`gpt_emotion_vector`, as the eager pipelines')."""
        from_emotion_audio = uses_emotion_audio(emotion is not None, options.emotion_weights)
        reference = emotion.emotion_vector if from_emotion_audio else speaker.own_emotion_vector
        vector = gpt_emotion_vector(
            torch.from_numpy(speaker.base_emotion_vector.astype(np.float32))[None],
            torch.from_numpy(reference.astype(np.float32))[None], from_emotion_audio,
            options.emo_alpha, options.emotion_weights, self.assets.emotion_bank,
            torch.from_numpy(speaker.style.astype(np.float32))[None],  # a copy: the cached conditioning is read-only
        )
        return np.ascontiguousarray(vector[0].float().numpy(), dtype=np.float32)

    # --- synthesis ---------------------------------------------------------------------------------

    def _gpt_inputs(
        self, speaker: SpeakerConditioning, emotion_vector: np.ndarray, text_ids: list[int],
        options: SynthesisOptions, seed: int | None,
    ) -> dict[str, np.ndarray]:
        max_codes = options.max_codes or self.assets.default_max_codes
        inputs = {
            "speaker_latents": speaker.speaker_latents.astype(np.float32),
            "emotion_vector": emotion_vector,
            "text_ids": np.asarray(text_ids, dtype=np.int64),
            "do_sample": np.array([options.do_sample], dtype=bool),
            "temperature": np.array([options.temperature], dtype=np.float32),
            "top_k": np.array([options.top_k], dtype=np.int32),
            "top_p": np.array([options.top_p], dtype=np.float32),
            "repetition_penalty": np.array([options.repetition_penalty], dtype=np.float32),
            "max_codes": np.array([max_codes], dtype=np.int32),
            "stream_every": np.array([self.settings.gpt_stream_every], dtype=np.int32),
        }
        if options.min_codes:
            # Sent only when asked for, so a repository without this (optional) input still serves.
            inputs["min_codes"] = np.array([options.min_codes], dtype=np.int32)
        if seed is not None:
            inputs["seed"] = np.array([seed], dtype=np.int64)
        if options.language is not None:
            inputs["language"] = np.array([lang_to_token(options.language)], dtype=np.int64)
        return inputs

    def _check_decoded(self, codes: int, finish_reason: str, model_version: str, text_ids: list[int],
                       options: SynthesisOptions, index: int) -> None:
        """A finished code stream: fail a cancelled one, warn about one cut at max_codes or too short."""
        if finish_reason == "cancelled":
            raise ModelUnavailableError(
                "gpt_decoder cancelled the sequence (shutting down?)", stage="gpt_decoder", model="gpt_decoder",
                model_version=model_version,
            )
        max_codes = options.max_codes or self.assets.default_max_codes
        # With min_codes = max_codes the caller asked for exactly that many codes: nothing was cut.
        if finish_reason == "max_codes" and options.min_codes < max_codes:
            self.reporter.warning(
                "max_codes_reached", "gpt_decoder stopped at max_codes before the stop code: speech may be cut",
                stage="gpt_decoder", model="gpt_decoder",
                data={"segment": index, "codes": codes, "text_tokens": len(text_ids)},
            )
        # IndexTTS-2.5's codes are 25 Hz: half as many per second of speech.
        expected_codes = len(text_ids) * MIN_CODES_PER_TEXT_TOKEN / (2 if self.assets.is_2_5 else 1)
        if codes < expected_codes:
            self.reporter.warning(
                "short_mel", "generated mel is shorter than the text and duration_ratio call for",
                stage="s2mel", model="gpt_decoder",
                data={"segment": index, "codes": codes, "text_tokens": len(text_ids),
                      "mel_frames": self.mel_frames(codes, options.duration_ratio),
                      "min_expected_mel_frames": self.mel_frames(math.ceil(expected_codes), options.duration_ratio),
                      "duration_ratio": options.duration_ratio},
            )

    async def _s2mel(
        self, codes: np.ndarray, latents: np.ndarray, prompt_condition: np.ndarray, prompt_mel: np.ndarray,
        style: np.ndarray, options: SynthesisOptions, seed: int | None, code_offset: int = 0,
    ) -> np.ndarray:
        """Mel (80, T) for `codes` (codes [code_offset, code_offset + n) of their segment). IndexTTS-2.5's
        s2mel takes no GPT latents."""
        inputs = {
            "semantic_codes": codes[None],
            **({} if self.assets.is_2_5 else {"code_latents": latents[None]}),
            "prompt_condition": prompt_condition[None].astype(np.float32),
            "ref_mel": prompt_mel[None].astype(np.float32),
            "speaker_style": style[None].astype(np.float32),
            "duration_ratio": np.array([[options.duration_ratio]], dtype=np.float32),
            "diffusion_steps": np.array([[options.diffusion_steps]], dtype=np.int32),
            "cfg_rate": np.array([[options.cfg_rate]], dtype=np.float32),
        }
        if seed is not None:
            inputs["seed"] = np.array([[seed]], dtype=np.int64)
        if code_offset:
            inputs["code_offset"] = np.array([[code_offset]], dtype=np.int64)
        return (await self.triton.infer("s2mel", inputs, ["mel"]))["mel"][0]

    async def _vocoder(self, mel: np.ndarray) -> np.ndarray:
        waveform = (await self.triton.infer("vocoder", {"mel": mel[None].astype(np.float32)}, ["waveform"]))["waveform"]
        return waveform.reshape(-1).astype(np.float32)

    async def synthesize_segment(
        self, speaker: SpeakerConditioning, emotion_vector: np.ndarray, text_ids: list[int],
        options: SynthesisOptions, index: int, usage: Usage | None = None,
    ) -> np.ndarray:
        """One text segment -> float32 waveform at 22.05 kHz (empty when the GPT produced no code)."""
        seed = segment_seed(options.seed, index)
        decoded = await self.triton.decode(
            self._gpt_inputs(speaker, emotion_vector, text_ids, options, seed), self.assets.gpt_dim
        )
        codes = decoded.codes
        if usage is not None:
            usage.output_tokens += int(codes.size)
        self._check_decoded(int(codes.size), decoded.finish_reason, decoded.model_version, text_ids, options, index)
        if codes.size == 0:
            # The stop code came first: this segment says nothing (EagerPipeline would feed the stop code
            # to s2mel, whose codebook does not hold it).
            return np.zeros(0, dtype=np.float32)
        mel = await self._s2mel(codes, decoded.latents, speaker.prompt_condition, speaker.ref_mel, speaker.style,
                                options, seed)
        wanted = self.mel_frames(int(codes.size), options.duration_ratio)
        if mel.shape[-1] < wanted:
            self.reporter.warning(
                "short_mel", "s2mel returned fewer mel frames than the codes and duration_ratio call for",
                stage="s2mel", model="s2mel",
                data={"segment": index, "mel_frames": int(mel.shape[-1]), "expected_mel_frames": wanted,
                      "duration_ratio": options.duration_ratio},
            )
        return await self._vocoder(mel)

    async def chunked_segment(
        self, speaker: SpeakerConditioning, emotion_vector: np.ndarray, text_ids: list[int],
        options: SynthesisOptions, index: int, usage: Usage | None = None,
    ) -> AsyncGenerator[np.ndarray, None]:
        """One text segment as waveform pieces rendered while its GPT still decodes (orchestrator/chunking.py
        says how). The codes are read by a task of their own, so the decoder's stream never waits for
        s2mel; this generator renders one chunk at a time, in order. Closing it cancels the code stream."""
        seed = segment_seed(options.seed, index)
        plan = ChunkPlan(self.settings.chunk_codes, self.settings.stream_context_codes)
        vocoding = ChunkedVocoding()
        codes: list[np.ndarray] = []
        latents: list[np.ndarray] = []
        arrived = asyncio.Event()
        finish: list[tuple[str, str]] = []  # (finish_reason, model_version) once the stream ends
        inputs = self._gpt_inputs(speaker, emotion_vector, text_ids, options, seed)
        # Codes come as soon as chunk 0 can start, then as often: a chunk starts within one response of
        # its minimum.
        inputs["stream_every"] = np.array([self.settings.chunk_codes[0]], dtype=np.int32)

        async def read_codes() -> None:
            async for chunk in self.triton.decode_stream(inputs, self.assets.gpt_dim):
                codes.append(chunk.codes)
                latents.append(chunk.latents)
                if chunk.finish_reason is not None:
                    finish.append((chunk.finish_reason, chunk.model_version))
                arrived.set()

        reader = asyncio.ensure_future(read_codes())
        try:
            while True:
                decoded = sum(c.size for c in codes)
                span = plan.next_chunk(decoded, finished=bool(finish))
                if span is None:
                    if finish:
                        break
                    arrived.clear()
                    # Wait for more codes, or for the reader to fail (its error is raised here).
                    waiter = asyncio.ensure_future(arrived.wait())
                    await asyncio.wait([reader, waiter], return_when=asyncio.FIRST_COMPLETED)
                    waiter.cancel()
                    if reader.done() and not finish:
                        reader.result()
                    continue
                first, end = span
                all_codes, all_latents = np.concatenate(codes), np.concatenate(latents)
                final = bool(finish) and end == decoded
                if plan.chunks == 0:
                    # A first chunk that is the whole segment renders exactly as without streaming. Otherwise
                    # its speaker prompt is cut (STREAM_PROMPT_SECONDS): s2mel's cost grows with the prompt,
                    # and this chunk is what the listener waits for.
                    keep = speaker.ref_mel.shape[1] if final else self._stream_prompt_frames(speaker)
                    prompt_condition, prompt_mel, offset = speaker.prompt_condition[:keep], speaker.ref_mel[:, :keep], 0
                else:
                    offset = plan.context_start(first)
                    context = vocoding.mel[:, frames_at(offset, options.duration_ratio, self.version):]
                    prompt_condition = np.zeros((0, speaker.prompt_condition.shape[1]), dtype=np.float32)
                    prompt_mel = context
                mel = await self._s2mel(all_codes[offset:end], all_latents[offset:end], prompt_condition, prompt_mel,
                                        speaker.style, options, chunk_seed(seed, plan.chunks), offset)
                plan.done(end)
                vocoding.add(mel)
                window = vocoding.window(final)
                if window is not None:
                    waveform = await self._vocoder(vocoding.mel[:, window[0]:window[1]])
                    yield vocoding.take(waveform, window[0], final)
            reason, model_version = finish[0]
            if usage is not None:
                usage.output_tokens += plan.rendered
            self._check_decoded(plan.rendered, reason, model_version, text_ids, options, index)
            # Frames held back for right context that no later chunk came to release.
            window = vocoding.window(final=True)
            if window is not None:
                waveform = await self._vocoder(vocoding.mel[:, window[0]:window[1]])
                yield vocoding.take(waveform, window[0], final=True)
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)

    def _stream_prompt_frames(self, speaker: SpeakerConditioning) -> int:
        seconds = self.settings.stream_prompt_seconds
        frames = speaker.ref_mel.shape[1]
        return frames if seconds <= 0 else min(frames, max(1, round(seconds * SAMPLE_RATE / MEL_HOP_SAMPLES)))

    async def synthesize(
        self, segments: list[list[int]], speaker: SpeakerConditioning, emotion_vector: np.ndarray,
        options: SynthesisOptions, chunked: bool = False, usage: Usage | None = None,
    ) -> AsyncGenerator[np.ndarray, None]:
        """Waveform pieces in order: each segment's audio (whole, or in chunks), 200 ms of silence between
        segments.

        Up to `segment_concurrency` segments are in flight, so the next segment's GPT decodes while
        this one is in s2mel and the vocoder (in chunks: once segment 0's first chunk is out). Closing the
        iterator early cancels what is in flight."""
        silence = segment_silence()
        slots = asyncio.Semaphore(self.settings.segment_concurrency)
        queues = [asyncio.Queue() for _ in segments]
        done = object()
        first_chunk_out = asyncio.Event()

        async def run(index: int, text_ids: list[int]) -> None:
            if chunked and index > 0:
                # The listener waits for segment 0's first chunk: the later segments' GPT starts once it is
                # rendered, not alongside it (on the small preset, c=1, that cut a 3-segment text's time to
                # first audio by about a fifth at the same throughput).
                await first_chunk_out.wait()
            try:
                async with slots:
                    if chunked:
                        async for piece in self.chunked_segment(speaker, emotion_vector, text_ids, options, index,
                                                                usage):
                            await queues[index].put(piece)
                            if index == 0:
                                first_chunk_out.set()
                    else:
                        await queues[index].put(
                            await self.synthesize_segment(speaker, emotion_vector, text_ids, options, index, usage))
                await queues[index].put(done)
            finally:
                first_chunk_out.set()  # segment 0 ended (or failed) without audio

        tasks = [asyncio.ensure_future(run(index, ids)) for index, ids in enumerate(segments)]
        spoken = False
        try:
            for index, task in enumerate(tasks):
                started = False
                while True:
                    getter = asyncio.ensure_future(queues[index].get())
                    await asyncio.wait([getter, task], return_when=asyncio.FIRST_COMPLETED)
                    if not getter.done() and task.exception() is not None:  # failed before its next piece
                        getter.cancel()
                        raise task.exception()
                    piece = await getter
                    if piece is done:
                        break
                    if piece.size == 0:
                        continue
                    if spoken and not started:
                        yield silence
                    spoken = started = True
                    yield piece
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def describe_request(self, **meta: Any) -> None:
        """Request metadata for events (never the text or audio themselves)."""
        context = current_request()
        if context is not None:
            context.meta.update({key: value for key, value in meta.items() if value is not None})

    def protect(self, *secrets: str) -> None:
        """Strings no event may contain, whatever path they take (the text)."""
        context = current_request()
        if context is not None:
            context.secrets.extend(secret for secret in secrets if secret)
