"""Service settings, read from the environment (plain parsing: no extra dependency).

Every setting has an environment variable of the same name in upper case; `Settings.from_env()` reads
them and fails with one message naming every variable that does not parse. Tests build `Settings(...)`
directly.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from indextts2 import defaults
from indextts2.model_names import check_model_prefix
from orchestrator.chunking import parse_chunk_codes

STREAM_MODES = ("chunk", "segment")

MIB = 1024 * 1024


class SettingsError(ValueError):
    """An environment variable holds a value the service cannot use."""


@dataclass(frozen=True)
class Settings:
    # --- where things are -------------------------------------------------------------------------
    # The official checkpoint directory (or the demo preset). The orchestrator reads four small files
    # from it and no weights: config.yaml (emotion groups, GPT limits, mel parameters), bpe.model (text
    # front-end), feat1.pt and feat2.pt (the emotion bank for emotion vectors).
    checkpoint_dir: Path = Path("checkpoints/IndexTTS-2")
    triton_grpc_url: str = "127.0.0.1:8001"
    # Triton serves our models as <prefix><name> (`python -m export --model-prefix`), so that our repository
    # can be merged into one holding other models. Metrics, Sentry events and /readyz keep the plain names.
    triton_model_prefix: str = ""
    voices_dir: Path = Path("voices")  # registered voices: one audio file per voice + index.json

    # --- HTTP server (python -m orchestrator) ------------------------------------------------------
    host: str = "127.0.0.1"
    port: int = 8000
    # How long an idle keep-alive connection stays open. Longer than the idle timeout of what usually
    # stands in front (load balancers close theirs after 60 s): a server that closes first races the
    # client's next request on that connection, which then fails with a reset (uvicorn's default is 5 s,
    # shorter than a client's usual wait on Retry-After).
    http_keep_alive_s: int = 75

    # --- request limits ----------------------------------------------------------------------------
    max_upload_bytes: int = 20 * MIB  # per audio file
    max_text_chars: int = 2000
    max_text_tokens_per_segment: int = defaults.MAX_TEXT_TOKENS_PER_SEGMENT  # capped by the GPT's text positions
    # Segments after normalisation (2000 digits read out one by one make ~80): each costs a GPT decode and
    # an s2mel pass, so this bounds how long one request can hold the service.
    max_text_segments: int = 20

    # --- load ----------------------------------------------------------------------------------------
    # Each request's time budget (a request may ask for less with the X-Request-Timeout header, seconds).
    # Every Triton call gets the time left; a request the service cannot finish in time is refused at the
    # door (503, Retry-After). 120 s covers a 20-segment text on the official model on one GPU.
    request_timeout_s: float = 120.0
    max_in_flight_requests: int = 64  # synthesis requests accepted at once, whatever the estimate says

    # --- Triton calls ------------------------------------------------------------------------------
    triton_timeout_s: float = 60.0  # one unary stage call outside a request (start-up probes); requests use their budget
    gpt_stream_timeout_s: float = 300.0  # one code stream outside a request; requests use their budget
    gpt_stream_every: int = 16  # codes per streamed gpt_decoder response
    segment_concurrency: int = 2  # segments of one request in flight at once (pipelines GPT and s2mel)
    conditioning_cache_size: int = 64  # speaker/emotion conditionings kept (LRU, by audio sha256)
    overload_retry_after_s: int = 2  # Retry-After sent with 503 "overloaded"
    speech_diffusion_steps: int = defaults.DIFFUSION_STEPS  # for /v1/audio/speech, which has no such field

    # --- streaming (stream=true, /v1/audio/speech) ----------------------------------------------------
    # "chunk": audio in chunks while the GPT still decodes (orchestrator/chunking.py); "segment": audio per
    # finished text segment. A request may choose with its own `stream_mode` field.
    stream_mode: str = "chunk"
    # Fewest new codes (50 per second of speech) before chunk 0, 1, 2, ... is rendered; the last repeats.
    # A chunk takes every code decoded by then, so chunks grow when s2mel is the slower stage.
    stream_chunk_codes: str = "20,40,80"
    # Codes before a chunk whose rendered mel is its s2mel prompt (continuity from one chunk to the next).
    stream_context_codes: int = 50
    # The speaker prompt of a segment's first chunk is cut to its first this many seconds (0: not cut) when
    # the segment takes more than one chunk: s2mel's cost grows with its prompt (3-15 s of reference, the
    # largest part of its work), and the first chunk is what the listener waits for. A segment rendered in
    # one chunk keeps the whole prompt, as without streaming. Measured on `small` (2 CPU cores, concurrency
    # 1, 150-code segments, 6 requests each): time to first audio p50 2.40 s with 2 s, 3.06 s with 3 s,
    # against 8.01 s streamed by segment.
    stream_prompt_seconds: float = 2.0
    # In "segment" mode, the first segment ends at the first punctuation break once it holds this many
    # tokens, so the first audio comes from a short segment (e.g. 24). 0, the default: segmented as without
    # streaming, since an extra segment costs a pause and the GPT's context, and chunks start early anyway.
    stream_first_segment_tokens: int = 0

    # --- Sentry ------------------------------------------------------------------------------------
    sentry_dsn: str = ""  # empty: Sentry off
    sentry_environment: str = "production"
    sentry_traces_sample_rate: float = 0.0
    sentry_release: str = ""  # empty: "indextts2-orchestrator@<version>+indextts<2.0|2.5>.models.<triton versions>"
    warning_events_per_minute: int = 30  # per warning kind and process; more are counted, not sent
    # What the events say about the hardware. device empty: "gpu" or "cpu" from the instance kind Triton
    # gives gpt_decoder at start-up. gpu_model / gpu_total_memory empty: from `nvidia-smi` where the
    # orchestrator runs next to the GPU, else "unknown" (Triton's API does not name the GPU).
    device: str = ""
    gpu_model: str = ""
    gpu_total_memory: str = ""

    # Not from the environment: a sentry_sdk Transport for tests that capture envelopes in-process.
    sentry_transport: Any = field(default=None, compare=False, repr=False)

    @property
    def max_request_bytes(self) -> int:
        """Whole request body: two audio files and the form fields."""
        return 2 * self.max_upload_bytes + MIB

    def validate(self) -> Settings:
        problems = []
        if self.max_upload_bytes < 1024:
            problems.append(f"MAX_UPLOAD_BYTES must be at least 1024, got {self.max_upload_bytes}")
        if self.max_text_chars < 1:
            problems.append(f"MAX_TEXT_CHARS must be at least 1, got {self.max_text_chars}")
        if not 1 <= self.max_text_tokens_per_segment <= 1000:
            problems.append(f"MAX_TEXT_TOKENS_PER_SEGMENT must be in [1, 1000], got {self.max_text_tokens_per_segment}")
        if not (math.isfinite(self.sentry_traces_sample_rate) and 0.0 <= self.sentry_traces_sample_rate <= 1.0):
            problems.append(f"SENTRY_TRACES_SAMPLE_RATE must be in [0, 1], got {self.sentry_traces_sample_rate}")
        for name in ("triton_timeout_s", "gpt_stream_timeout_s", "request_timeout_s"):
            if not getattr(self, name) > 0:
                problems.append(f"{name.upper()} must be positive, got {getattr(self, name)}")
        for name in ("gpt_stream_every", "segment_concurrency", "conditioning_cache_size", "port",
                     "speech_diffusion_steps", "warning_events_per_minute", "max_text_segments",
                     "max_in_flight_requests", "http_keep_alive_s"):
            if getattr(self, name) < 1:
                problems.append(f"{name.upper()} must be at least 1, got {getattr(self, name)}")
        if self.stream_mode not in STREAM_MODES:
            problems.append(f"STREAM_MODE must be one of {', '.join(STREAM_MODES)}, got {self.stream_mode!r}")
        try:
            parse_chunk_codes(self.stream_chunk_codes)
        except ValueError as error:
            problems.append(f"STREAM_CHUNK_CODES {error}")
        if self.stream_context_codes < 1:
            problems.append(f"STREAM_CONTEXT_CODES must be at least 1, got {self.stream_context_codes}")
        if not (math.isfinite(self.stream_prompt_seconds) and self.stream_prompt_seconds >= 0):
            problems.append(f"STREAM_PROMPT_SECONDS must be 0 or more, got {self.stream_prompt_seconds}")
        if self.stream_first_segment_tokens < 0:
            problems.append(f"STREAM_FIRST_SEGMENT_TOKENS must be at least 0, got {self.stream_first_segment_tokens}")
        try:
            check_model_prefix(self.triton_model_prefix)
        except ValueError as error:
            problems.append(f"TRITON_MODEL_PREFIX: {error}")
        if problems:
            raise SettingsError("; ".join(problems))
        return self

    @property
    def chunk_codes(self) -> tuple[int, ...]:
        return parse_chunk_codes(self.stream_chunk_codes)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Settings from environment variables named after the fields (CHECKPOINT_DIR, TRITON_GRPC_URL,
        SENTRY_DSN, MAX_UPLOAD_BYTES, ...); unset variables keep the defaults."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        problems = []
        for spec in fields(cls):
            if spec.name == "sentry_transport":
                continue
            raw = environ.get(spec.name.upper())
            if raw is None or raw.strip() == "":
                continue
            kind = type(spec.default)
            try:
                values[spec.name] = Path(raw) if isinstance(spec.default, Path) else kind(raw.strip())
            except ValueError:
                problems.append(f"{spec.name.upper()}={raw!r} is not a valid {kind.__name__}")
        if problems:
            raise SettingsError("; ".join(problems))
        return cls(**values).validate()
