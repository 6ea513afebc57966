"""Streaming in chunks: which codes the next chunk renders, and how its mel becomes seamless waveform.

Pure bookkeeping (numpy only); `SynthesisPipeline.chunked_segment` makes the Triton calls.

How a segment is rendered while its GPT still decodes:

- **s2mel, by in-context continuation.** Chunk 0 renders the first codes with the speaker prompt, cut to
  its first STREAM_PROMPT_SECONDS (2 s: the prompt is most of s2mel's work, and chunk 0 is what the
  listener waits for; measured on `small`, 2 CPU cores, it is 4.6 s of a 7.5 s time to first audio with
  a whole 3-10 s prompt, and the time to first audio is 2.4 s with 2 s, 3.1 s with 3 s). Every later
  chunk takes as its prompt the mel already rendered for the last `context_codes` codes before it (and
  those codes, so s2mel knows what that mel says), plus the speaker style vector; it generates only the
  new frames. The DiT was trained to continue a prompt mel of the same voice, so the new frames continue
  the old ones without a seam, and no mel is cross-faded. The speaker's own reference mel is left out of
  later chunks on purpose: it is the longest part of every s2mel row (3-15 s), so repeating it per chunk
  would multiply the s2mel work of a segment (measured in benchmarks/results/streaming.md); the rendered
  context is in the same voice already.
- **Vocoder, by left context and held-back frames.** BigVGAN is convolutional with a receptive field of
  a few mel frames on each side: a window is vocoded from `VOCODER_LEFT_FRAMES` before the first new
  frame, and its last `VOCODER_HELD_FRAMES` frames are not sent yet (their right context is still to
  come); the next window renders them again, and the first `CROSSFADE_SAMPLES` of it are cross-faded
  with the previous window's rendering of the same samples, which hides the last rounding differences.
- **One chunk is the whole segment.** A chunk size at least the segment's length renders the segment in
  one s2mel call with the whole speaker prompt and one vocoder call on all of its mel: the same calls,
  and so the same samples, as without streaming.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from indextts2.defaults import MEL_HOP_SAMPLES
from indextts2.rules import mel_frames_for_codes

VOCODER_LEFT_FRAMES = 32  # frames of mel before a window's first new frame (~370 ms)
VOCODER_HELD_FRAMES = 8  # frames at a window's end rendered again, with right context, by the next window
CROSSFADE_SAMPLES = 512  # old and new rendering of the same samples, blended linearly (~23 ms)


def parse_chunk_codes(value: str) -> tuple[int, ...]:
    """'20,40,80' -> (20, 40, 80): the fewest new codes of chunk 0, 1, 2, ... (the last repeats)."""
    try:
        sizes = tuple(int(part) for part in value.split(","))
    except ValueError:
        raise ValueError(f"must be comma-separated whole numbers, got {value!r}") from None
    if not sizes or min(sizes) < 1:
        raise ValueError(f"must be numbers of codes >= 1, got {value!r}")
    return sizes


def frames_at(codes: int, duration_ratio: float, version: str = "2.0") -> int:
    """Mel frames of a segment's first `codes` codes (0 for none), by the mel length rule of IndexTTS
    `version`: the one s2mel applies (`indextts2.rules.mel_frames_for_codes`), so chunks add up."""
    return mel_frames_for_codes(codes, duration_ratio, version)


@dataclass
class ChunkPlan:
    """Which codes of one segment the next chunk renders.

    A chunk starts where the last one ended and takes every code decoded so far, once there are at
    least `chunk_codes[k]` new ones (or the segment is finished): chunks grow on their own when s2mel is
    slower than the GPT, so a busy server makes fewer, larger chunks."""

    chunk_codes: tuple[int, ...]
    context_codes: int
    rendered: int = 0  # codes whose mel exists
    chunks: int = 0

    def next_chunk(self, decoded: int, finished: bool) -> tuple[int, int] | None:
        """(first code, end code) of the next chunk to render, or None to wait for more codes."""
        new = decoded - self.rendered
        wanted = self.chunk_codes[min(self.chunks, len(self.chunk_codes) - 1)]
        if new <= 0 or (not finished and new < wanted):
            return None
        return self.rendered, decoded

    def context_start(self, first: int) -> int:
        """The first code of the context a chunk starting at `first` sends along (its mel is the prompt)."""
        return max(0, first - self.context_codes) if first else 0

    def done(self, end: int) -> None:
        self.rendered = end
        self.chunks += 1


@dataclass
class ChunkedVocoding:
    """Mel arriving chunk by chunk -> waveform pieces that concatenate to one seamless waveform."""

    left_frames: int = VOCODER_LEFT_FRAMES
    held_frames: int = VOCODER_HELD_FRAMES
    crossfade_samples: int = CROSSFADE_SAMPLES
    hop: int = MEL_HOP_SAMPLES
    mel: np.ndarray = field(default_factory=lambda: np.zeros((80, 0), dtype=np.float32))  # (80, F) so far
    sent_frames: int = 0  # waveform sent for frames [0, sent_frames)
    _tail: np.ndarray | None = None  # the last window's rendering of the samples after sent_frames

    def add(self, mel: np.ndarray) -> None:
        self.mel = np.concatenate([self.mel, mel.astype(np.float32)], axis=1)

    def window(self, final: bool) -> tuple[int, int] | None:
        """(first, end) mel frames to vocode now, or None when nothing can be sent yet."""
        stop = self._stop(final)
        if stop <= self.sent_frames:
            return None
        return max(0, self.sent_frames - self.left_frames), self.mel.shape[1]

    def take(self, waveform: np.ndarray, first: int, final: bool) -> np.ndarray:
        """The samples to send from the vocoded window mel[:, first:] (its waveform, hop samples a frame)."""
        stop = self._stop(final)
        begin = (self.sent_frames - first) * self.hop
        end = (stop - first) * self.hop
        piece = np.array(waveform[begin:end], dtype=np.float32)
        if self._tail is not None:
            n = min(self._tail.shape[0], piece.shape[0])
            ramp = (np.arange(1, n + 1, dtype=np.float32) / (n + 1))
            piece[:n] = self._tail[:n] * (1.0 - ramp) + piece[:n] * ramp
        self._tail = None if final else np.array(waveform[end:end + self.crossfade_samples], dtype=np.float32)
        self.sent_frames = stop
        return piece

    def _stop(self, final: bool) -> int:
        return self.mel.shape[1] if final else self.mel.shape[1] - self.held_frames
