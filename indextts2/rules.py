"""Rules of IndexTTS-2 inference that the eager pipeline, the served stack and the baseline share: pure
functions of plain values (numpy at most), no networks, no I/O."""

from __future__ import annotations

import numpy as np

from indextts2.defaults import CODES_TO_MEL_FRAMES, OUTPUT_SAMPLE_RATE, SEGMENT_SILENCE_MS

# IndexTTS-2.5's codec decodes each 25 Hz GPT code into this many 50 Hz frames (EnhancedCodec.decode).
CODEC_2_5_FRAMES_PER_CODE = 2


def target_mel_frames(num_codes: int, duration_ratio: float = 1.0) -> int:
    """Mel frames the s2mel stage produces for `num_codes` GPT codes: round(T_codes * 1.72 * ratio).

    (infer_v2 truncates T_codes * 1.72 instead; the two differ by at most one frame, 11.6 ms.)
    """
    return max(1, round(num_codes * CODES_TO_MEL_FRAMES * duration_ratio))


def target_mel_frames_2_5(num_codes: int, duration_ratio: float = 1.0) -> int:
    """Mel frames of `num_codes` IndexTTS-2.5 GPT codes: int(2N * 1.72 * ratio), truncated as infer_v2_5
    computes it on the codec's 2N decoded frames (`target_lengths`)."""
    return max(1, int(CODEC_2_5_FRAMES_PER_CODE * num_codes * CODES_TO_MEL_FRAMES * duration_ratio))


def mel_frames_for_codes(num_codes: int, duration_ratio: float, version: str) -> int:
    """The mel length rule of model version `version` ("2.0" or "2.5"): what s2mel renders for
    `num_codes` codes, and what the chunked stream adds up. 0 for no codes."""
    if num_codes <= 0:
        return 0
    if version == "2.5":
        return target_mel_frames_2_5(num_codes, duration_ratio)
    return target_mel_frames(num_codes, duration_ratio)


def segment_silence() -> np.ndarray:
    """The silence put between two spoken segments."""
    return np.zeros(int(OUTPUT_SAMPLE_RATE * SEGMENT_SILENCE_MS / 1000), dtype=np.float32)


def segment_seed(seed: int | None, index: int) -> int | None:
    """The seed of text segment `index` (GPT sampling and s2mel noise): the request's seed + index."""
    return None if seed is None else seed + index


def chunk_seed(seed: int | None, chunk: int) -> int | None:
    """The s2mel noise seed of chunk `chunk` of a segment streamed in chunks, from the segment's seed:
    chunk 0 uses the segment's own (so one chunk renders what the whole segment would), later chunks
    draw fresh noise."""
    if seed is None or chunk == 0:
        return seed
    return (seed * 1_000_003 + chunk) % 2**62
