"""Audio front-end of IndexTTS-2: decoding, resampling and the three feature extractors.

Plain functions, no torchaudio or librosa: every one takes a 1-D numpy waveform (or (1, N)) and returns
numpy arrays, float32 (masks int64). What each one reproduces:
- `soxr_resample`: the resampling inside librosa.load (the `soxr` package at its HQ quality, the length
  fixed to ceil(N * new / old));
- `resample`: torchaudio.functional.resample (windowed-sinc, Hann window, width 6, rolloff 0.99), in
  float64 numpy;
- `kaldi_fbank`: torchaudio.compliance.kaldi.fbank (25/10 ms Povey frames, DC removal, pre-emphasis
  0.97, 512-point power spectrum, kaldi mel bank from 20 Hz, floor at float32 eps, log), in float32 torch
  operations because torchaudio does (its float32 rounding is visible in the log of quiet bins);
- `campplus_features`: the CAMPPlus input of infer_v2 (fbank of the [-1, 1] waveform minus its mean);
- `seamless_m4t_features`: transformers' SeamlessM4TFeatureExtractor itself, with the w2v-BERT 2.0
  config (the w2v-BERT input);
- `mel_spectrogram`: the s2mel `mel_spectrogram` (reference mel for the CFM prompt), in float64 numpy.

How infer_v2 prepares a reference prompt (`prompt_waveforms`): librosa.load reads the file at 22050 Hz
(soxr, `soxr_resample` here), that is cut to 15 s, and the 16 kHz copy is resampled from the 22050 Hz
copy with torchaudio (`resample` here). An emotion prompt is loaded by librosa at 16 kHz directly (soxr)
and cut to 15 s (`emotion_waveform`).

Uploads are untrusted: `decode_audio` reads the header first, refuses odd rates and channel counts, and
decodes only the first 16 s (the 15 s used plus a margin), so no file can make it hold more.
"""

from __future__ import annotations

import functools
import io
import math
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
import soundfile
import soxr
import torch
import torch.nn.functional as F

from indextts2.defaults import FEATURE_SAMPLE_RATE, MAX_PROMPT_SECONDS
from indextts2.defaults import OUTPUT_SAMPLE_RATE as S2MEL_SAMPLE_RATE

# What an upload may declare in its header. Outside this the file is refused before any sample is decoded:
# a 1 Hz header on a small WAV would otherwise stand for hours of audio.
MIN_SAMPLE_RATE, MAX_SAMPLE_RATE = 8000, 192_000
MAX_CHANNELS = 8  # 7.1 surround; every channel is read (then averaged), so this bounds the work per frame
# Decoded past the 15 s the service uses: one second, far more than the resampling filters reach (soxr's
# HQ filter spans a few ms), so the kept output samples equal those of resampling the whole file.
DECODE_MARGIN_SECONDS = 1.0
# The longest upload accepted, by its header: a minute is more than any reference recording needs (only
# 15 s are used), and refusing longer files turns an hour of compressed silence into a clear 422.
MAX_DECLARED_SECONDS = 60.0
_DECODE_BLOCK_FRAMES = 65536  # frames read (all channels) per step of the streaming decode

# torch.finfo(torch.float32).eps: the floor torchaudio and transformers put under the mel energies.
_FLOAT32_EPS = 1.1920928955078125e-07
# The largest kernel (output phases x taps) `resample` builds: 8 MB of float64. The service only converts
# 22050 -> 16000 Hz with it (1.5e5); an odd pair such as 44101 -> 16000 Hz would need 1e9. Files at any
# rate are converted by soxr, which has no such limit.
_MAX_RESAMPLE_KERNEL = 1_000_000
_RESAMPLE_BLOCK_VALUES = 1_000_000  # input values gathered per matrix product (8 MB), bounds the peak
SOXR_QUALITY = "soxr_hq"  # librosa.load's default `res_type`


class AudioDecodeError(ValueError):
    """The uploaded bytes are not audio this front-end accepts; `limit` names the limit it broke, if any."""

    def __init__(self, message: str, limit: str | None = None) -> None:
        super().__init__(message)
        self.limit = limit


@dataclass(frozen=True)
class DecodedAudio:
    """The decoded start of an upload: mono float32 `samples` (at most the `max_seconds` asked for) and
    the whole file's length as its header declares it (`declared_seconds`), of which only the start was
    decoded."""

    samples: np.ndarray
    sample_rate: int
    declared_seconds: float


def decode_audio(data: bytes, max_seconds: float = MAX_PROMPT_SECONDS + DECODE_MARGIN_SECONDS) -> DecodedAudio:
    """Encoded audio (WAV, FLAC, OGG/Vorbis, ... whatever libsndfile reads) -> its first `max_seconds`.

    The header is read first: a sample rate outside [MIN_SAMPLE_RATE, MAX_SAMPLE_RATE], more than
    MAX_CHANNELS channels or a length over MAX_DECLARED_SECONDS is refused before decoding. Then only
    the first `max_seconds` of frames are decoded, block by block, each block averaged to mono as
    librosa.load does: memory stays bounded by `max_seconds` at the declared rate, whatever the file's
    length or compression ratio. Integer PCM comes out in [-1, 1); float files are passed through unchanged
    (the official loader does not clip either).
    """
    if not data:
        raise AudioDecodeError("empty audio data")
    try:
        with soundfile.SoundFile(io.BytesIO(data)) as sound:
            sample_rate, channels, frames = int(sound.samplerate), int(sound.channels), int(sound.frames)
            check_audio_header(sample_rate, channels)
            check_audio_length(frames, sample_rate)
            wanted = int(max_seconds * sample_rate)
            pieces, kept = [], 0
            while kept < wanted:
                block = sound.read(min(_DECODE_BLOCK_FRAMES, wanted - kept), dtype="float32", always_2d=True)
                if block.shape[0] == 0:
                    break
                mono = block.mean(axis=1, dtype=np.float32) if channels > 1 else block[:, 0].copy()
                if not np.all(np.isfinite(mono)):
                    raise AudioDecodeError("the audio holds NaN or infinite samples")
                pieces.append(mono)
                kept += mono.shape[0]
    except (soundfile.SoundFileError, RuntimeError, TypeError) as error:
        # libsndfile's own words, without the repr of the in-memory stream
        reason = getattr(error, "error_string", None) or str(error)
        raise AudioDecodeError(f"cannot decode audio ({len(data)} bytes): {reason}") from None
    if kept == 0:
        raise AudioDecodeError("the audio holds no samples")
    samples = np.concatenate(pieces) if len(pieces) > 1 else pieces[0]
    # The header's frame count, where it gives a plausible one (a stream may not know its length).
    declared_frames = frames if kept <= frames < 2**62 else kept
    return DecodedAudio(np.ascontiguousarray(samples, dtype=np.float32), sample_rate, declared_frames / sample_rate)


def check_audio_length(declared_frames: int, sample_rate: int) -> None:
    if 0 < declared_frames < 2**62 and declared_frames / sample_rate > MAX_DECLARED_SECONDS:
        raise AudioDecodeError(
            f"the audio is {declared_frames / sample_rate:.1f} s long; at most {MAX_DECLARED_SECONDS:.0f} s is "
            f"accepted (only the first {MAX_PROMPT_SECONDS:.0f} s are used)", limit=f"<= {MAX_DECLARED_SECONDS:.0f} s",
        )


def check_audio_header(sample_rate: int, channels: int) -> None:
    """Raise AudioDecodeError (with the limit) for a header this front-end does not take."""
    if not MIN_SAMPLE_RATE <= sample_rate <= MAX_SAMPLE_RATE:
        raise AudioDecodeError(f"sample rate {sample_rate} Hz is outside {MIN_SAMPLE_RATE}-{MAX_SAMPLE_RATE} Hz",
                               limit=f"{MIN_SAMPLE_RATE} to {MAX_SAMPLE_RATE} Hz")
    if not 1 <= channels <= MAX_CHANNELS:
        raise AudioDecodeError(f"{channels} channels; at most {MAX_CHANNELS} are accepted",
                               limit=f"1 to {MAX_CHANNELS} channels")
    # Any rate in the range converts: soxr takes every rate pair (`soxr_resample`).


def _as_waveform(wav: np.ndarray) -> np.ndarray:
    wav = np.asarray(wav)
    if wav.ndim == 2 and wav.shape[0] == 1:
        wav = wav[0]
    if wav.ndim != 1:
        raise ValueError(f"expected a mono waveform of shape (N,) or (1, N), got {wav.shape}")
    return wav.astype(np.float64)


def soxr_resample(wav: np.ndarray, orig_sr: int, new_sr: int) -> np.ndarray:
    """Resampling as librosa.load(path, sr=new_sr) does it, the official loader's step from the file's
    rate: soxr at librosa's default quality ("soxr_hq") on the float32 waveform, then cut or zero-padded
    to ceil(N * new_sr / orig_sr) samples as librosa's fix_length does. Returns float32; equal rates
    return the waveform unchanged, as librosa does.
    """
    wav = np.ascontiguousarray(_as_waveform(wav), dtype=np.float32)
    orig_sr, new_sr = int(orig_sr), int(new_sr)
    if orig_sr <= 0 or new_sr <= 0:
        raise ValueError(f"sample rates must be positive, got {orig_sr} -> {new_sr}")
    if orig_sr == new_sr:
        return wav
    # librosa's own length arithmetic (a float ratio), so a length it rounds up we round up too.
    target_length = int(np.ceil(wav.shape[0] * (float(new_sr) / orig_sr)))
    out = soxr.resample(wav, orig_sr, new_sr, quality=SOXR_QUALITY)[:target_length]
    return np.pad(out, (0, target_length - out.shape[0]))


def resample(
    wav: np.ndarray, orig_sr: int, new_sr: int, lowpass_filter_width: int = 6, rolloff: float = 0.99
) -> np.ndarray:
    """Band-limited resampling as torchaudio.functional.resample ("sinc_interp_hann"). Returns float32.

    Both rates are reduced by their gcd to `orig` input and `new` output samples per period. Output
    phase j of each period is a dot product of the input with a Hann-windowed sinc, cut off at
    `rolloff * min(orig, new) / 2` and `lowpass_filter_width` zero crossings wide. The output has
    ceil(N * new_sr / orig_sr) samples.
    """
    wav = _as_waveform(wav)
    orig_sr, new_sr = int(orig_sr), int(new_sr)
    if orig_sr <= 0 or new_sr <= 0:
        raise ValueError(f"sample rates must be positive, got {orig_sr} -> {new_sr}")
    if orig_sr == new_sr:
        return wav.astype(np.float32)
    if resampling_kernel_size(orig_sr, new_sr, lowpass_filter_width, rolloff) > _MAX_RESAMPLE_KERNEL:
        raise ValueError(f"cannot resample {orig_sr} Hz -> {new_sr} Hz: the rates share too small a factor")
    orig, new, width, base_freq = _resampling_geometry(orig_sr, new_sr, lowpass_filter_width, rolloff)
    taps = 2 * width + orig

    # t[j, k]: distance, in input periods scaled to the cut-off, from output phase j to input tap k.
    t = (np.arange(-width, width + orig) / orig)[None, :] - (np.arange(new) / new)[:, None]
    t = np.clip(t * base_freq, -lowpass_filter_width, lowpass_filter_width)
    window = np.cos(t * math.pi / lowpass_filter_width / 2) ** 2
    t = t * math.pi
    safe_t = np.where(t == 0, 1.0, t)
    sinc = np.where(t == 0, 1.0, np.sin(safe_t) / safe_t)
    kernel_t = (sinc * window * (base_freq / orig)).T  # (taps, new)

    padded = np.pad(wav, (width, width + orig))
    periods = np.lib.stride_tricks.sliding_window_view(padded, taps)[::orig]  # (num_periods, taps), a view
    # The product gathers its input into a dense (rows, taps) matrix: a block of periods at a time keeps
    # that copy small (at 40 taps per period of 3 samples, the whole input at once is 13x its size).
    rows = max(1, _RESAMPLE_BLOCK_VALUES // taps)
    out = np.empty((periods.shape[0], new))
    for start in range(0, periods.shape[0], rows):
        out[start : start + rows] = periods[start : start + rows] @ kernel_t
    target_length = -(-new * wav.shape[0] // orig)
    return out.reshape(-1)[:target_length].astype(np.float32)


def _resampling_geometry(
    orig_sr: int, new_sr: int, lowpass_filter_width: int, rolloff: float
) -> tuple[int, int, int, float]:
    """(input samples per period, output samples per period, filter half-width in input samples, cut-off)."""
    gcd = math.gcd(orig_sr, new_sr)
    orig, new = orig_sr // gcd, new_sr // gcd
    base_freq = min(orig, new) * rolloff
    return orig, new, math.ceil(lowpass_filter_width * orig / base_freq), base_freq


def resampling_kernel_size(orig_sr: int, new_sr: int, lowpass_filter_width: int = 6, rolloff: float = 0.99) -> int:
    """Output phases x taps of the kernel `resample` builds for this pair of rates (0 for equal rates)."""
    if orig_sr == new_sr:
        return 0
    orig, new, width, _ = _resampling_geometry(orig_sr, new_sr, lowpass_filter_width, rolloff)
    return new * (2 * width + orig)


def prompt_waveforms(
    samples: np.ndarray, sample_rate: int, max_seconds: float = MAX_PROMPT_SECONDS
) -> tuple[np.ndarray, np.ndarray]:
    """A decoded speaker prompt -> (wav_22k, wav_16k) float32, as infer_v2 prepares it: librosa.load to
    22050 Hz (soxr), keep the first `max_seconds`, resample that to 16 kHz as torchaudio does."""
    samples = _first_seconds(samples, sample_rate, max_seconds)
    wav_22k = soxr_resample(samples, sample_rate, S2MEL_SAMPLE_RATE)[: int(max_seconds * S2MEL_SAMPLE_RATE)]
    return wav_22k, resample(wav_22k, S2MEL_SAMPLE_RATE, FEATURE_SAMPLE_RATE)


def emotion_waveform(samples: np.ndarray, sample_rate: int, max_seconds: float = MAX_PROMPT_SECONDS) -> np.ndarray:
    """A decoded emotion prompt -> wav_16k float32, as infer_v2 prepares it: librosa.load directly at
    16 kHz (soxr) and cut to `max_seconds` (no 22050 Hz step, unlike the speaker prompt)."""
    samples = _first_seconds(samples, sample_rate, max_seconds)
    return soxr_resample(samples, sample_rate, FEATURE_SAMPLE_RATE)[: int(max_seconds * FEATURE_SAMPLE_RATE)]


def _first_seconds(samples: np.ndarray, sample_rate: int, max_seconds: float) -> np.ndarray:
    """Cut the input before resampling (with DECODE_MARGIN_SECONDS of margin, far more than the filter
    reaches), so that a long input is never resampled whole; the kept output samples are the same."""
    return _as_waveform(samples)[: int((max_seconds + DECODE_MARGIN_SECONDS) * sample_rate)]


def _kaldi_mel_banks(
    num_bins: int, fft_size: int, sample_rate: float, low_freq: float, high_freq: float, dtype: torch.dtype
) -> torch.Tensor:
    """Kaldi mel filters (num_bins, fft_size // 2 + 1): triangles in mel space (mel = 1127 ln(1 + f/700)),
    evenly spaced between low_freq and high_freq; the Nyquist bin gets weight 0.

    Computed in `dtype` with torchaudio's operation order: the float32 rounding of these weights is
    visible (up to 3e-4 in the log) where a loud tone sits on the thin edge of a filter.
    """
    if high_freq <= 0.0:
        high_freq += sample_rate / 2
    mel_low = 1127.0 * math.log(1.0 + low_freq / 700.0)
    mel_high = 1127.0 * math.log(1.0 + high_freq / 700.0)
    delta = (mel_high - mel_low) / (num_bins + 1)
    index = torch.arange(num_bins, dtype=dtype).unsqueeze(1)
    left = mel_low + index * delta
    center = mel_low + (index + 1.0) * delta
    right = mel_low + (index + 2.0) * delta
    bin_freq = (sample_rate / fft_size) * torch.arange(fft_size // 2, dtype=dtype)
    bin_mel = (1127.0 * (1.0 + bin_freq / 700.0).log()).unsqueeze(0)
    rising = (bin_mel - left) / (center - left)
    falling = (right - bin_mel) / (right - center)
    banks = torch.clamp(torch.minimum(rising, falling), min=0.0)
    return F.pad(banks, (0, 1))


def _kaldi_log_mel(
    wav: np.ndarray,
    num_mel_bins: int,
    sample_frequency: float,
    dtype: torch.dtype,
    frame_length_ms: float = 25.0,
    frame_shift_ms: float = 10.0,
    preemphasis: float = 0.97,
    low_freq: float = 20.0,
    high_freq: float = 0.0,
    dither: float = 0.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Kaldi log mel filterbank (frames, num_mel_bins), computed in `dtype` (float32 reproduces
    torchaudio, which computes in the waveform's dtype)."""
    window_size = int(sample_frequency * frame_length_ms * 0.001)
    window_shift = int(sample_frequency * frame_shift_ms * 0.001)
    fft_size = 1 << (window_size - 1).bit_length()
    samples = torch.from_numpy(np.ascontiguousarray(wav)).to(dtype)
    if samples.shape[0] < window_size:  # snip_edges: only whole frames
        return torch.zeros((0, num_mel_bins), dtype=dtype)
    frames = samples.unfold(0, window_size, window_shift)
    if dither != 0.0:
        frames = frames + dither * torch.randn(frames.shape, dtype=dtype, generator=generator)
    frames = frames - frames.mean(dim=1, keepdim=True)
    # Pre-emphasis; the first sample is emphasised against itself (kaldi's replicate padding).
    previous = torch.cat([frames[:, :1], frames[:, :-1]], dim=1)
    frames = frames - preemphasis * previous
    povey = torch.hann_window(window_size, periodic=False, dtype=dtype).pow(0.85)
    frames = F.pad(frames * povey, (0, fft_size - window_size))
    power = torch.fft.rfft(frames).abs().pow(2.0)
    banks = _kaldi_mel_banks(num_mel_bins, fft_size, sample_frequency, low_freq, high_freq, dtype)
    return torch.clamp(power @ banks.T, min=_FLOAT32_EPS).log()


def kaldi_fbank(
    wav_16k: np.ndarray,
    num_mel_bins: int = 80,
    sample_frequency: float = 16000,
    dither: float = 0.0,
    frame_length_ms: float = 25.0,
    frame_shift_ms: float = 10.0,
    preemphasis: float = 0.97,
    low_freq: float = 20.0,
    high_freq: float = 0.0,
    generator: torch.Generator | None = None,
) -> np.ndarray:
    """torchaudio.compliance.kaldi.fbank with its defaults (snip_edges, no energy, power spectrum,
    log): (N,) waveform -> (frames, num_mel_bins) float32, frames = 1 + (N - 400) // 160 at 16 kHz.

    The waveform is used as given (infer_v2 passes the [-1, 1] float waveform, not int16 values) and,
    like torchaudio on a float32 waveform, processed in float32 torch operations in torchaudio's order:
    at that scale the quiet bins carry float32 rounding of up to ~1e-3 in the log, which this
    reproduces rather than corrects.
    """
    fbank = _kaldi_log_mel(
        _as_waveform(wav_16k), num_mel_bins, sample_frequency, torch.float32, frame_length_ms, frame_shift_ms,
        preemphasis, low_freq, high_freq, dither, generator,
    )
    return fbank.numpy()


def campplus_features(wav_16k: np.ndarray) -> np.ndarray:
    """CAMPPlus input: 80-bin kaldi fbank of the [-1, 1] 16 kHz waveform minus its time mean,
    (frames, 80) float32. Needs at least 3 frames (0.04 s) for the network's std pooling."""
    fbank = torch.from_numpy(kaldi_fbank(wav_16k))
    if fbank.shape[0] < 3:
        raise ValueError(f"audio too short for CAMPPlus: {fbank.shape[0]} fbank frames, need at least 3")
    return (fbank - fbank.mean(dim=0, keepdim=True)).numpy()


_EXTRACTOR_LOCK = threading.Lock()


def _seamless_m4t_extractor(padding_value: float) -> Any:
    # transformers' lazy import is not thread-safe: two first uses at once (two new voices reaching a fresh
    # service together, or a speaker's prompt and its emotion reference) fail with "cannot import name
    # 'SeamlessM4TFeatureExtractor'". One at a time builds it once; later calls only take the cached one.
    with _EXTRACTOR_LOCK:
        return _build_seamless_m4t_extractor(padding_value)


@functools.cache
def _build_seamless_m4t_extractor(padding_value: float) -> Any:
    """The extractor of the w2v-bert-2.0 `preprocessor_config.json` (built from its values, no download)."""
    # Imported here, on first use: importing transformers costs seconds and ~65 MB, which the service's
    # start-up (and anything that only needs the decoder or the constants) should not pay.
    from transformers import SeamlessM4TFeatureExtractor

    return SeamlessM4TFeatureExtractor(
        feature_size=80, num_mel_bins=80, sampling_rate=FEATURE_SAMPLE_RATE, stride=2, padding_value=padding_value,
        return_attention_mask=True,
    )


def seamless_m4t_features(wav_16k: np.ndarray, padding_value: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """w2v-BERT 2.0 input from transformers' SeamlessM4TFeatureExtractor on one waveform:
    (N,) 16 kHz waveform -> (features (ceil(F/2), 160) float32, attention_mask (ceil(F/2),) int64).

    The extractor scales the waveform to int16 range, takes the 80-bin kaldi log mel (F frames), normalises
    each mel bin over time, pads an odd F with one frame of `padding_value` and concatenates frame pairs.
    The real w2v-bert-2.0 config pads with 1.0 (the extractor's default is 0.0); the mask is 0 only for a
    pair that holds the padding frame.
    """
    wav = _as_waveform(wav_16k).astype(np.float32)
    num_frames = 1 + (wav.shape[0] - 400) // 160 if wav.shape[0] >= 400 else 0  # 25 ms frames every 10 ms
    if num_frames < 2:
        raise ValueError(f"audio too short for w2v-BERT features: {num_frames} frames, need at least 2")
    extracted = _seamless_m4t_extractor(float(padding_value))(
        wav, sampling_rate=FEATURE_SAMPLE_RATE, return_tensors="np"
    )
    features = extracted["input_features"][0].astype(np.float32, copy=False)
    return features, extracted["attention_mask"][0].astype(np.int64)


def mel_filterbank_slaney(
    sample_rate: int, n_fft: int, num_mels: int, fmin: float, fmax: float | None
) -> np.ndarray:
    """librosa.filters.mel defaults (slaney mel scale, slaney area normalisation): (num_mels, n_fft//2+1)."""
    fmax = sample_rate / 2 if fmax is None else float(fmax)
    min_log_hz, min_log_mel, log_step = 1000.0, 15.0, math.log(6.4) / 27.0

    def hz_to_mel(hz):
        hz = np.asarray(hz, dtype=np.float64)
        linear = hz * 3.0 / 200.0
        logarithmic = min_log_mel + np.log(np.maximum(hz, min_log_hz) / min_log_hz) / log_step
        return np.where(hz >= min_log_hz, logarithmic, linear)

    def mel_to_hz(mel):
        linear = mel * 200.0 / 3.0
        logarithmic = min_log_hz * np.exp(log_step * (np.maximum(mel, min_log_mel) - min_log_mel))
        return np.where(mel >= min_log_mel, logarithmic, linear)

    edges_hz = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), num_mels + 2))
    fft_hz = np.linspace(0, sample_rate / 2, n_fft // 2 + 1)
    widths = np.diff(edges_hz)
    ramps = edges_hz[:, None] - fft_hz[None, :]
    rising = -ramps[:-2] / widths[:-1, None]
    falling = ramps[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(rising, falling))
    return weights * (2.0 / (edges_hz[2:] - edges_hz[:-2]))[:, None]


def mel_spectrogram(
    wav_22k: np.ndarray,
    n_fft: int,
    num_mels: int,
    sampling_rate: int,
    hop_size: int,
    win_size: int,
    fmin: float,
    fmax: float | None,
) -> np.ndarray:
    """The s2mel log mel: (N,) waveform -> (num_mels, frames) float32, frames = (N - hop) // hop + 1
    for n_fft 1024 / hop 256.

    Reflect-pad (n_fft - hop) / 2 on each side, frames of n_fft every hop without centring, periodic
    Hann window of win_size (centred in n_fft), magnitude sqrt(re^2 + im^2 + 1e-9), slaney mel,
    log(max(., 1e-5)).
    """
    wav = _as_waveform(wav_22k)
    pad = (n_fft - hop_size) // 2
    if wav.shape[0] <= pad:
        raise ValueError(f"audio too short for the mel spectrogram: {wav.shape[0]} samples")
    wav = np.pad(wav, (pad, pad), mode="reflect")
    if wav.shape[0] < n_fft:
        raise ValueError(f"audio too short for the mel spectrogram: {wav_22k.shape[-1]} samples")
    frames = np.lib.stride_tricks.sliding_window_view(wav, n_fft)[::hop_size]
    hann = 0.5 - 0.5 * np.cos(2 * math.pi * np.arange(win_size) / win_size)
    window = np.zeros(n_fft)
    offset = (n_fft - win_size) // 2
    window[offset : offset + win_size] = hann
    spectrum = np.fft.rfft(frames * window, n=n_fft)
    magnitude = np.sqrt(spectrum.real**2 + spectrum.imag**2 + 1e-9)
    mel = mel_filterbank_slaney(sampling_rate, n_fft, num_mels, fmin, fmax) @ magnitude.T
    return np.log(np.maximum(mel, 1e-5)).astype(np.float32)


@dataclass(frozen=True)
class PromptFeatures:
    """What the speaker prompt's encoders read, from the decoded audio as infer_v2 prepares it: the
    served pipeline (orchestrator) and the eager one both start from these."""

    input_features: np.ndarray  # (T, 160) SeamlessM4T features of the 16 kHz prompt (w2v-BERT's input)
    attention_mask: np.ndarray  # (T,)
    fbank: np.ndarray  # (T', 80) Kaldi fbank of the 16 kHz prompt (CAMPPlus's input)
    ref_mel: np.ndarray  # (80, T_ref) s2mel's log mel of the 22.05 kHz prompt
    used_samples_22k: int  # the 22.05 kHz prompt's length after the 15 s cut


def prompt_features(samples: np.ndarray, sample_rate: int, mel_args: dict[str, Any]) -> PromptFeatures:
    """A decoded speaker reference -> the features of its (first 15 s) prompt."""
    wav_22k, wav_16k = prompt_waveforms(samples, sample_rate)
    features, mask = seamless_m4t_features(wav_16k)
    return PromptFeatures(features, mask, campplus_features(wav_16k), mel_spectrogram(wav_22k, **mel_args),
                          int(wav_22k.shape[0]))


def emotion_prompt_features(samples: np.ndarray, sample_rate: int) -> tuple[np.ndarray, np.ndarray]:
    """A decoded emotion reference -> SeamlessM4T (features, attention mask) of its 16 kHz, 15 s prompt."""
    return seamless_m4t_features(emotion_waveform(samples, sample_rate))


def s2mel_mel_args(s2mel_config: dict[str, Any]) -> dict[str, Any]:
    """`mel_spectrogram` keyword arguments from the `s2mel` config section, as infer_v2 builds them.

    infer_v2 maps `fmax` = the string "None" (or absent) to None (= sample_rate / 2) and ANY other
    value to 8000 Hz, whatever the number says.
    """
    params = s2mel_config["preprocess_params"]
    spect = params["spect_params"]
    fmax = spect.get("fmax", "None")
    return {
        "n_fft": int(spect["n_fft"]),
        "win_size": int(spect["win_length"]),
        "hop_size": int(spect["hop_length"]),
        "num_mels": int(spect["n_mels"]),
        "sampling_rate": int(params["sr"]),
        "fmin": float(spect.get("fmin", 0)),
        "fmax": None if fmax == "None" else 8000.0,
    }
