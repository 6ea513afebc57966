"""16-bit mono PCM and WAV containers, whole or streamed.

A streamed WAV starts with a header whose RIFF and data sizes are 0xFFFFFFFF ("unknown, read to the
end"), the convention of streaming encoders; libsndfile, Python's `wave` and browsers read such a file
to its end. Then raw PCM follows piece by piece, so the pieces concatenate to one valid file.
"""

from __future__ import annotations

import struct

import numpy as np

UNKNOWN_SIZE = 0xFFFFFFFF


def pcm16(waveform: np.ndarray) -> bytes:
    """float waveform in [-1, 1] -> little-endian 16-bit PCM (values outside are clipped)."""
    clipped = np.clip(np.nan_to_num(np.asarray(waveform, dtype=np.float32)), -1.0, 1.0)
    return np.round(clipped * 32767.0).astype("<i2").tobytes()


def wav_header(sample_rate: int, data_bytes: int | None = None) -> bytes:
    """The 44-byte header of a 16-bit mono PCM WAV; data_bytes None: a streaming header."""
    riff_size = UNKNOWN_SIZE if data_bytes is None else 36 + data_bytes
    data_size = UNKNOWN_SIZE if data_bytes is None else data_bytes
    block_align = 2  # one channel of 16 bits
    return (
        b"RIFF" + struct.pack("<I", riff_size) + b"WAVE"
        + b"fmt " + struct.pack("<IHHIIHH", 16, 1, 1, sample_rate, sample_rate * block_align, block_align, 16)
        + b"data" + struct.pack("<I", data_size)
    )


def wav_bytes(waveform: np.ndarray, sample_rate: int) -> bytes:
    data = pcm16(waveform)
    return wav_header(sample_rate, len(data)) + data
