"""Request and response schemas. Every field says what it is and its limits: this is the OpenAPI page.

Limits that depend on the deployment (MAX_TEXT_CHARS, MAX_UPLOAD_BYTES, the GPT's longest code sequence)
are checked by the pipeline and named in the descriptions with their default values.
"""

from __future__ import annotations

import json
import math
from typing import Annotated, Any, Literal

from fastapi import UploadFile
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema

from indextts2 import defaults
from orchestrator.voices import VOICE_NAME_PATTERN

EMOTIONS = ("happy", "angry", "sad", "afraid", "disgusted", "melancholic", "surprised", "calm")
MIN_DURATION_RATIO, MAX_DURATION_RATIO = 0.75, 1.25
SPEECH_FORMATS = ("wav", "pcm")
StreamMode = Literal["chunk", "segment"]
LANGUAGES = ("auto", *defaults.SERVED_LANGUAGES_2_5)
Language = Literal[LANGUAGES]  # type: ignore[valid-type]
LANGUAGE_DESCRIPTION = (
    "IndexTTS-2.5: the language of the text (its language tag and embedding): 'auto' (default) detects it "
    "(kana: ja, Han characters: zh, Arabic script: ar, Spanish letters or marks: es, otherwise en). "
    "An IndexTTS-2.0 model takes only 'auto' or no value (422 otherwise): its tokenizer has no languages."
)


MAX_EMOTION_VECTOR_CHARS = 512  # 8 numbers with room for spaces and digits; also bounds JSON nesting


def check_text(value: str) -> str:
    """Text the front-end can take. Refused (not repaired) when it is not valid Unicode: a JSON body can
    carry lone surrogates ("\\ud800"), which no tokenizer reads and no normaliser should guess at."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("holds characters that are not valid Unicode (lone surrogates); send UTF-8 text") from None
    return value


Text = Annotated[str, AfterValidator(check_text)]


def parse_emotion_vector(value: Any) -> tuple[float, ...] | None:
    """'0,0,0.5,0,0,0,0,0' or '[0, 0, 0.5, ...]' (or a list) -> 8 floats in [0, 1] with sum <= 1."""
    if isinstance(value, list | tuple) and len(value) == 1:
        value = value[0]  # a form sends one string (FastAPI reads sequence fields as lists)
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, str) and len(value) > MAX_EMOTION_VECTOR_CHARS:
        raise ValueError(f"must be 8 numbers, at most {MAX_EMOTION_VECTOR_CHARS} characters")
    items = value if isinstance(value, list | tuple) else None
    try:
        if items is None:
            text = str(value).strip()
            items = json.loads(text) if text.startswith("[") else text.split(",")
        if not isinstance(items, list | tuple) or len(items) > 64:
            raise ValueError
        numbers = [float(item) for item in items]
    except (ValueError, TypeError, OverflowError, RecursionError):
        raise ValueError("must be 8 numbers, comma-separated or a JSON array") from None
    if len(numbers) != len(EMOTIONS):
        raise ValueError(f"must have {len(EMOTIONS)} weights ({', '.join(EMOTIONS)}), got {len(numbers)}")
    for name, number in zip(EMOTIONS, numbers, strict=False):
        if not math.isfinite(number) or not 0.0 <= number <= 1.0:
            raise ValueError(f"weight for {name} must be in [0, 1], got {number}")
    if sum(numbers) > 1.0 + 1e-6:
        raise ValueError(f"weights must sum to at most 1, got {sum(numbers):.4g}")
    return tuple(numbers)


EmotionVector = Annotated[
    tuple[float, ...] | None,
    BeforeValidator(parse_emotion_vector),
    WithJsonSchema({"type": "string", "examples": ["0,0,0,0,0,0,0.6,0"]}),
]


class TtsForm(BaseModel):
    """POST /v1/tts (multipart/form-data)."""

    model_config = ConfigDict(extra="forbid")

    text: Text = Field(description="Text to speak. 1 to MAX_TEXT_CHARS characters (2000 by default); cut into "
                                  "segments of at most 120 tokens, joined with 200 ms of silence.")
    speaker_audio: UploadFile | None = Field(
        None, description="Reference voice: WAV, FLAC or OGG, at least 0.5 s, at most MAX_UPLOAD_BYTES (20 MiB "
                          "by default). Under 5 s it is served and reported as a warning; past 15 s only the "
                          "first 15 s are used. Give this or `voice`.")
    voice: str | None = Field(None, pattern=VOICE_NAME_PATTERN,
                              description="A registered voice (POST /v1/voices), instead of speaker_audio.")
    emotion_audio: UploadFile | None = Field(
        None, description="Emotion reference (same formats and limits): the speaker's voice is kept, the "
                          "emotion taken from this audio, weighted by emo_alpha.")
    emotion_voice: str | None = Field(None, pattern=VOICE_NAME_PATTERN,
                                      description="A registered voice used as the emotion reference, "
                                                  "instead of emotion_audio.")
    emotion_vector: EmotionVector = Field(
        None, description="8 emotion weights in [0, 1], sum at most 1, in the order happy, angry, sad, afraid, "
                          "disgusted, melancholic, surprised, calm; comma-separated or a JSON array. Overrides "
                          "the emotion reference (as in the official implementation).")
    emo_alpha: float = Field(1.0, ge=0.0, le=1.0, allow_inf_nan=False,
                             description="Strength of the emotion reference or of the emotion vector.")
    duration_ratio: float = Field(defaults.DURATION_RATIO, ge=MIN_DURATION_RATIO, le=MAX_DURATION_RATIO, allow_inf_nan=False,
                                  description="Scales the length of the speech: mel frames = codes x 1.72 x "
                                              "ratio (IndexTTS-2.5: int(2 x codes x 1.72 x ratio)); 0.75 "
                                              "faster ... 1.25 slower.")
    language: Language | None = Field(None, description=LANGUAGE_DESCRIPTION)
    do_sample: bool = Field(defaults.DO_SAMPLE, description="Sample the GPT's codes (false: greedy).")
    temperature: float = Field(defaults.TEMPERATURE, gt=0.0, le=2.0, allow_inf_nan=False, description="GPT sampling temperature.")
    top_k: int = Field(defaults.TOP_K, ge=0, le=1000, description="GPT top-k (0: off).")
    top_p: float = Field(defaults.TOP_P, gt=0.0, le=1.0, allow_inf_nan=False, description="GPT nucleus sampling mass.")
    repetition_penalty: float = Field(defaults.REPETITION_PENALTY, ge=1.0, le=20.0, allow_inf_nan=False,
                                      description="GPT repetition penalty on codes already produced.")
    max_codes: int | None = Field(None, ge=1, le=10000,
                                  description="Most codes per segment (50 per second of speech; 25 for "
                                              "IndexTTS-2.5); default min(1500, the GPT's limit), which also "
                                              "caps it.")
    min_codes: int | None = Field(None, ge=0, le=10000,
                                  description="Fewest codes per segment: the GPT may not stop before this many "
                                              "(HF's min_new_tokens). At most max_codes; with min_codes = "
                                              "max_codes every segment has exactly that many codes. Default 0.")
    seed: int | None = Field(None, ge=0, le=2**62,
                             description="Seed for sampling and diffusion noise (segment i uses seed + i); "
                                         "unset: random.")
    diffusion_steps: int = Field(defaults.DIFFUSION_STEPS, ge=1, le=100, description="s2mel flow-matching steps.")
    cfg_rate: float = Field(defaults.CFG_RATE, ge=0.0, le=1.0, allow_inf_nan=False,
                            description="s2mel classifier-free guidance rate.")
    stream: bool = Field(False, description="Streamed WAV: a header with unknown length first, then PCM as it "
                                            "is rendered; the pieces concatenate to a valid WAV.")
    stream_mode: StreamMode | None = Field(
        None, description="With stream=true: 'chunk' sends audio in chunks while the model still decodes the "
                          "segment (first audio after ~20 codes); 'segment' sends each finished text segment. "
                          "Default: the STREAM_MODE setting ('chunk').")


class VoiceForm(BaseModel):
    """POST /v1/voices (multipart/form-data)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=VOICE_NAME_PATTERN, description="1-64 characters: letters, digits, '_', '-', '.'.")
    audio: UploadFile = Field(description="Reference voice: WAV, FLAC or OGG, at least 0.5 s, at most "
                                          "MAX_UPLOAD_BYTES. Its conditioning is computed now and cached.")


class SpeechRequest(BaseModel):
    """POST /v1/audio/speech (JSON), the OpenAI shape."""

    model: str = Field("indextts-2", max_length=64,
                       description="Accepted for compatibility; the service runs the IndexTTS model it was "
                                   "deployed with (2.0 or 2.5: GET /readyz says which).")
    input: Text = Field(description="Text to speak, 1 to MAX_TEXT_CHARS characters.")
    voice: str = Field(description="A registered voice name (POST /v1/voices).")
    response_format: str = Field("wav", description="wav (22.05 kHz 16-bit mono, streamed) or pcm (raw 16-bit "
                                                    "little-endian mono at 22.05 kHz). Others are refused (400).")
    speed: float = Field(1.0, ge=0.8, le=4 / 3, allow_inf_nan=False,
                         description="Speaking speed; duration_ratio = 1 / speed, so 0.8 to 1.333 (refused "
                                     "outside, not clamped).")
    stream_format: Literal["audio", "sse"] = Field(
        "audio", description="audio: the bytes of response_format, streamed. sse: server-sent events, "
                             "`speech.audio.delta` events carrying base64 audio (their bytes concatenate to the "
                             "whole file) and a final `speech.audio.done` with usage; a failure after the first "
                             "event is an `error` event.")
    stream_mode: StreamMode | None = Field(None, description="As on /v1/tts: 'chunk' or 'segment'.")
    language: Language | None = Field(None, description=LANGUAGE_DESCRIPTION)


class VoiceResponse(BaseModel):
    name: str
    sha256: str = Field(description="SHA-256 of the stored audio bytes (the conditioning cache key).")
    duration_s: float = Field(description="Length of the stored audio in seconds (only 15 s are used).")
    sample_rate: int
    created_at: str = Field(description="ISO 8601, UTC.")
    warnings: list[str] = Field(default_factory=list,
                                description="e.g. short_reference_audio (under 5 s).")


class VoiceListResponse(BaseModel):
    voices: list[VoiceResponse]


class HealthResponse(BaseModel):
    status: Literal["ok"] = "ok"


class ReadinessResponse(BaseModel):
    ready: bool
    indextts_version: str = Field(description="The IndexTTS version of the loaded model: '2.0' or '2.5'.")
    triton_live: bool
    models: dict[str, bool] = Field(description="Each model the pipeline calls, and whether Triton has it ready.")
    not_ready: list[str]


class ErrorBody(BaseModel):
    type: str = Field(description="invalid_request, payload_too_large, unsupported_format, voice_not_found, "
                                  "voice_exists, triton_unavailable, model_unavailable, overloaded, "
                                  "out_of_memory, model_error, timeout, internal_error, not_found, ...")
    message: str
    field: str | None = Field(None, description="The request field at fault.")
    limit: str | None = Field(None, description="The limit the field broke.")
    stage: str | None = Field(None, description="The pipeline stage that failed (5xx).")
    request_id: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody
