"""The `gpt_decoder` engine: continuous-batching decoding of the IndexTTS-2 GPT over a KV cache.

    engine = DecoderEngine(load_gpt(...), max_slots=8)
    handle = engine.submit(DecodeRequest(speaker_latents, emotion_vector, text_ids, SamplingConfig(...)))
    engine.run_until_idle()            # or engine.start() ... engine.stop()
    for event in handle: ...           # chunks of codes + latents, then a final event

Parts (vLLM's split): `cache` (KV cache slots), `scheduler` (admission, cancellation, the bounded
queue), `runner` (prefill and the batched decode step), `sampler` (per-sequence sampling), `engine`.
"""

from indextts2.engine.engine import DecoderEngine, EngineStats, StepRecord
from indextts2.engine.requests import (
    DecodeEvent,
    DecodeRequest,
    DecodeResult,
    EngineClosedError,
    EngineOverloadedError,
    RequestHandle,
    StopReason,
)
from indextts2.networks.gpt import SamplingConfig

__all__ = [
    "DecodeEvent",
    "DecodeRequest",
    "DecodeResult",
    "DecoderEngine",
    "EngineClosedError",
    "EngineOverloadedError",
    "EngineStats",
    "RequestHandle",
    "SamplingConfig",
    "StepRecord",
    "StopReason",
]
