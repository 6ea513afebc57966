"""What the routes call: turns a validated request into an audio stream, and manages voices.

The routers stay thin (parse, call one method here, build the response); the pipeline does the stages.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field

import numpy as np
from fastapi import UploadFile

from orchestrator.admission import CHUNKED, WHOLE, Admission
from orchestrator.assets import ModelAssets
from orchestrator.errors import (
    InvalidRequestError,
    PayloadTooLargeError,
    ServiceOverloadedError,
    UnsupportedFormatError,
    VoiceExistsError,
)
from orchestrator.metrics import ServiceMetrics
from orchestrator.pipeline import (
    SAMPLE_RATE,
    EmotionConditioning,
    ReferenceAudio,
    SynthesisOptions,
    SynthesisPipeline,
    Usage,
    gather_all,
)
from orchestrator.reporting import Reporter, current_request
from orchestrator.schemas import SPEECH_FORMATS, SpeechRequest, TtsForm, VoiceForm, VoiceResponse
from orchestrator.settings import Settings
from orchestrator.triton_client import Readiness, TritonStages, pipeline_models
from orchestrator.voices import VoiceRecord, VoiceStore


@dataclass
class AudioStream:
    """Waveform pieces of one synthesis; `prefetch` runs up to the first piece, so that a failure in
    any stage before the first audio still becomes a proper HTTP error (nothing has been sent yet).
    Failures while iterating propagate; the response code reports those of a started stream."""

    pieces: AsyncGenerator[np.ndarray, None]
    metrics: ServiceMetrics
    route: str
    sample_rate: int = SAMPLE_RATE
    usage: Usage = field(default_factory=Usage)
    _first: np.ndarray | None = None
    _prefetched: bool = False

    async def prefetch(self) -> None:
        self._first = await anext(self.pieces, None)
        self._prefetched = True

    async def __aiter__(self) -> AsyncIterator[np.ndarray]:
        if not self._prefetched:
            await self.prefetch()
        try:
            if self._first is not None:
                self._count(self._first)
                yield self._first
            async for piece in self.pieces:
                self._count(piece)
                yield piece
        finally:
            await self.pieces.aclose()

    async def collect(self) -> np.ndarray:
        pieces = [piece async for piece in self]
        return np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.float32)

    def _count(self, piece: np.ndarray) -> None:
        self.metrics.audio_seconds.labels(self.route).inc(piece.shape[0] / self.sample_rate)


def synthesis_options(form: TtsForm, max_codes_limit: int, default_max_codes: int,
                      language: str | None = None) -> SynthesisOptions:
    """The form's synthesis controls, with the checks that depend on the model (the eager baseline
    validates with this too)."""
    if form.max_codes is not None and form.max_codes > max_codes_limit:
        raise InvalidRequestError(f"max_codes must be at most {max_codes_limit} for this model, got {form.max_codes}",
                                  field="max_codes", limit=f"1 to {max_codes_limit}")
    max_codes = form.max_codes or default_max_codes
    if form.min_codes is not None and form.min_codes > max_codes:
        raise InvalidRequestError(f"min_codes must be at most max_codes ({max_codes}), got {form.min_codes}",
                                  field="min_codes", limit=f"0 to {max_codes}")
    return SynthesisOptions(
        emo_alpha=form.emo_alpha, emotion_weights=form.emotion_vector, duration_ratio=form.duration_ratio,
        do_sample=form.do_sample, temperature=form.temperature, top_k=form.top_k, top_p=form.top_p,
        repetition_penalty=form.repetition_penalty, max_codes=max_codes, min_codes=form.min_codes or 0,
        seed=form.seed, diffusion_steps=form.diffusion_steps, cfg_rate=form.cfg_rate, language=language,
    )


async def read_upload(upload: UploadFile, field: str, limit: int) -> bytes:
    """An uploaded file's bytes, refused (413) by its declared size before reading when it is over `limit`;
    at most limit + 1 bytes are read otherwise (`decode_reference_audio` refuses those)."""
    if upload.size is not None and upload.size > limit:
        raise PayloadTooLargeError(f"{field} is {upload.size} bytes; the limit is {limit} bytes",
                                   field=field, limit=f"{limit} bytes")
    return await upload.read(limit + 1)


class TtsService:
    def __init__(
        self, settings: Settings, assets: ModelAssets, triton: TritonStages, reporter: Reporter,
        metrics: ServiceMetrics, admission: Admission | None = None,
    ) -> None:
        self.admission = admission
        self.settings = settings
        self.assets = assets
        self.triton = triton
        self.reporter = reporter
        self.metrics = metrics
        self.pipeline = SynthesisPipeline(settings, assets, triton, reporter, metrics)
        self.voices = VoiceStore(settings.voices_dir)

    # --- synthesis ---------------------------------------------------------------------------------

    async def tts(self, form: TtsForm, route: str) -> AudioStream:
        pipeline = self.pipeline
        pipeline.protect(form.text)
        chunked = form.stream and (form.stream_mode or self.settings.stream_mode) == "chunk"
        pipeline.describe_request(text_chars=len(form.text), duration_ratio=form.duration_ratio,
                                  diffusion_steps=form.diffusion_steps, stream=form.stream,
                                  stream_mode=("chunk" if chunked else "segment") if form.stream else None)
        language = pipeline.language(form.text, form.language)
        segments = await pipeline.segment_text(form.text, self._first_segment_tokens(form.stream, chunked), language)
        self._admit_segments(len(segments), chunked)
        options = self._options(form, language)
        speaker_audio = await self._reference(form.speaker_audio, form.voice, "speaker_audio", "voice")
        emotion_audio = await self._reference(
            form.emotion_audio, form.emotion_voice, "emotion_audio", "emotion_voice", required=False
        )
        if options.emotion_weights is not None and emotion_audio is not None:
            # infer_v2: an emotion vector overrides the emotion audio.
            self.reporter.breadcrumb("emotion_vector overrides the emotion reference", category="emotion")
            emotion_audio = None
        return await self._synthesize(segments, speaker_audio, emotion_audio, options, route, chunked)

    async def speech(self, request: SpeechRequest, route: str) -> AudioStream:
        """The OpenAI-shaped request: a registered voice, speed -> duration_ratio = 1 / speed."""
        pipeline = self.pipeline
        pipeline.protect(request.input)
        if request.response_format not in SPEECH_FORMATS:
            raise UnsupportedFormatError(
                f"response_format {request.response_format!r} is not supported; use 'wav' or 'pcm'",
                field="response_format", limit="wav | pcm",
            )
        language = pipeline.language(request.input, request.language)
        options = SynthesisOptions(duration_ratio=1.0 / request.speed, max_codes=self.assets.default_max_codes,
                                   diffusion_steps=self.settings.speech_diffusion_steps, language=language)
        chunked = (request.stream_mode or self.settings.stream_mode) == "chunk"
        pipeline.describe_request(text_chars=len(request.input), duration_ratio=options.duration_ratio, stream=True,
                                  stream_mode="chunk" if chunked else "segment", stream_format=request.stream_format)
        segments = await pipeline.segment_text(request.input, self._first_segment_tokens(True, chunked), language)
        self._admit_segments(len(segments), chunked)
        speaker_audio = await self._reference(None, request.voice, "voice", "voice")
        return await self._synthesize(segments, speaker_audio, None, options, route, chunked)

    def _admit_segments(self, segments: int, chunked: bool) -> None:
        """Admission's second look, now that the text's size (and kind of work) is known and before any audio
        is decoded or Triton is called: 503 if the work in flight and this request's do not fit its budget."""
        context = current_request()
        if self.admission is None or context is None or context.admission_ticket is None:
            return
        refusal = self.admission.resize(context.admission_ticket, segments, context.time_left_s() or 0.0,
                                        CHUNKED if chunked else WHOLE)
        if refusal is not None:
            self.metrics.refused.labels(refusal.reason).inc()
            raise ServiceOverloadedError(refusal.message, retry_after_s=refusal.retry_after_s)

    def _first_segment_tokens(self, streamed: bool, chunked: bool) -> int:
        """A short first segment for streams by segment (a chunked stream starts early anyway, and an extra
        segment break would cost it a pause and the GPT's context)."""
        return self.settings.stream_first_segment_tokens if streamed and not chunked else 0

    async def _synthesize(
        self, segments: list[list[int]], speaker_audio: ReferenceAudio, emotion_audio: ReferenceAudio | None,
        options: SynthesisOptions, route: str, chunked: bool = False,
    ) -> AudioStream:
        pipeline = self.pipeline
        pipeline.describe_request(
            text_segments=len(segments), text_tokens=sum(len(ids) for ids in segments),
            speaker_audio_seconds=round(speaker_audio.duration_s, 3),
            emotion_audio_seconds=round(emotion_audio.duration_s, 3) if emotion_audio else None,
        )
        jobs = [pipeline.speaker_conditioning(speaker_audio)]
        if emotion_audio is not None:
            jobs.append(pipeline.emotion_conditioning(emotion_audio))
        conditionings = await gather_all(*jobs)
        speaker = conditionings[0]
        emotion: EmotionConditioning | None = conditionings[1] if len(conditionings) > 1 else None
        emotion_vector = pipeline.emotion_vector(speaker, emotion, options)
        usage = Usage(input_tokens=sum(len(ids) for ids in segments))
        stream = AudioStream(
            pipeline.synthesize(segments, speaker, emotion_vector, options, chunked, usage), self.metrics, route,
            usage=usage,
        )
        await stream.prefetch()
        return stream

    def _options(self, form: TtsForm, language: str | None = None) -> SynthesisOptions:
        return synthesis_options(form, self.assets.max_codes_limit, self.assets.default_max_codes, language)

    async def _reference(
        self, upload: UploadFile | None, voice: str | None, upload_field: str, voice_field: str,
        required: bool = True,
    ) -> ReferenceAudio | None:
        """The reference audio from an upload or a registered voice (exactly one of them)."""
        if upload is not None and voice:
            raise InvalidRequestError(f"give {upload_field} or {voice_field}, not both", field=upload_field)
        if upload is not None:
            data = await read_upload(upload, upload_field, self.settings.max_upload_bytes)
            return await self.pipeline.decode_reference(upload_field, data)
        if voice:
            record = self.voices.get(voice)
            return await self.pipeline.decode_reference(voice_field, self.voices.audio(record))
        if required:
            raise InvalidRequestError(f"{upload_field} or {voice_field} is required", field=upload_field)
        return None

    # --- voices ------------------------------------------------------------------------------------

    async def register_voice(self, form: VoiceForm) -> VoiceResponse:
        if self.voices.exists(form.name):  # before the (costly) conditioning; add() checks again
            raise VoiceExistsError(f"voice {form.name!r} already exists; DELETE it first", field="name")
        data = await read_upload(form.audio, "audio", self.settings.max_upload_bytes)
        audio = await self.pipeline.decode_reference("audio", data)
        conditioning = await self.pipeline.speaker_conditioning(audio)
        record = await self.voices.add(form.name, audio.sha256, data, audio.duration_s, audio.sample_rate)
        return self._voice_response(record, list(conditioning.warnings))

    def list_voices(self) -> list[VoiceResponse]:
        return [self._voice_response(record) for record in self.voices.list()]

    async def delete_voice(self, name: str) -> None:
        await self.voices.remove(name)

    @staticmethod
    def _voice_response(record: VoiceRecord, warnings: list[str] | None = None) -> VoiceResponse:
        return VoiceResponse(
            name=record.name, sha256=record.sha256, duration_s=record.duration_s, sample_rate=record.sample_rate,
            created_at=record.created_at, warnings=warnings or [],
        )

    # --- health ------------------------------------------------------------------------------------

    async def readiness(self) -> Readiness:
        return await self.triton.readiness(pipeline_models(self.assets.version))

