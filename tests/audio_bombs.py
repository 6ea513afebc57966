"""Uploads that once expanded without bound (issue: no upload can take the service down), made here."""

from __future__ import annotations

import io

import numpy as np
import soundfile


def wav_declaring_1_hz(samples: int = 132_300) -> bytes:
    """A 264 KB 16-bit WAV whose header says 1 Hz: 36 hours of audio, 23 GB once resampled to 16 kHz."""
    buffer = io.BytesIO()
    noise = np.random.default_rng(0).uniform(-0.5, 0.5, samples).astype(np.float32)
    soundfile.write(buffer, noise, 1, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def silent_flac(seconds: float, channels: int = 1, sample_rate: int = 16000) -> bytes:
    """`seconds` of silence as FLAC, written block by block (an hour compresses to well under 2 MB)."""
    buffer = io.BytesIO()
    block = np.zeros((sample_rate * 10, channels), dtype=np.int16)
    with soundfile.SoundFile(buffer, "w", sample_rate, channels, format="FLAC", subtype="PCM_16") as sound:
        left = int(seconds * sample_rate)
        while left > 0:
            sound.write(block[: min(left, block.shape[0])])
            left -= block.shape[0]
    return buffer.getvalue()
