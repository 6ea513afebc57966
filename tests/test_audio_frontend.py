"""Audio front-end: decoding, resampling and the feature extractors against the official goldens."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile
import soxr
from audio_bombs import silent_flac, wav_declaring_1_hz
from golden import load_golden

from indextts2.config import load_config
from indextts2.frontend.audio import (
    MAX_DECLARED_SECONDS,
    AudioDecodeError,
    campplus_features,
    check_audio_header,
    decode_audio,
    emotion_waveform,
    kaldi_fbank,
    mel_spectrogram,
    prompt_waveforms,
    resample,
    resampling_kernel_size,
    s2mel_mel_args,
    seamless_m4t_features,
    soxr_resample,
)


def _encode(samples: np.ndarray, sample_rate: int, audio_format: str, subtype: str | None = None) -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, sample_rate, format=audio_format, subtype=subtype)
    return buffer.getvalue()


def _sine(frequency: float, sample_rate: int, seconds: float, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(sample_rate * seconds)) / sample_rate
    return (amplitude * np.sin(2 * np.pi * frequency * t)).astype(np.float32)


# --- features against the official goldens ---


def _assert_log_energies_close(actual: np.ndarray, expected_log: np.ndarray, reference_log: np.ndarray) -> None:
    """Log mel energies compared where float32 can resolve them.

    A float32 power spectrum carries rounding of about eps x the frame's whole energy in every bin, and
    which rounding depends on the SIMD path of the FFT (Intel and AMD differ). In the log of a bin that
    is a relative error of eps x (frame energy / bin energy): invisible in loud bins, up to ~3e-3 in the
    quietest ones of the golden clip. So the tolerance is 1e-4 in the log plus 64 x that float32
    resolution limit (the golden set itself, made in float32, sits up to ~64 x from the float64 truth).
    """
    reference_log = reference_log.astype(np.float64)
    frame_energy_log = np.log(np.exp(reference_log).sum(axis=1, keepdims=True))
    resolution = np.finfo(np.float32).eps * np.exp(frame_energy_log - reference_log)
    error = np.abs(actual.astype(np.float64) - expected_log.astype(np.float64))
    allowed = 1e-4 + 64 * resolution
    worst = np.unravel_index(np.argmax(error - allowed), error.shape)
    assert np.all(error <= allowed), (
        f"log energy off by {error[worst]:.3g} at frame {worst[0]}, bin {worst[1]} (allowed {allowed[worst]:.3g})"
    )


def test_kaldi_fbank_matches_torchaudio(golden_tiny):
    golden = load_golden(golden_tiny, "campplus")
    fbank = kaldi_fbank(golden["wav_16k"][0], num_mel_bins=golden["fbank"].shape[1], sample_frequency=16000,
                        dither=0.0)
    assert fbank.shape == golden["fbank"].shape and fbank.dtype == np.float32
    _assert_log_energies_close(fbank, golden["fbank"], golden["fbank"])


def test_campplus_features_are_the_mean_centred_fbank(golden_tiny):
    golden = load_golden(golden_tiny, "campplus")
    features = campplus_features(golden["wav_16k"])  # (1, N) is accepted as infer_v2 holds it
    # Centring subtracts a per-bin time mean, which averages the rounding away: the same bound holds.
    _assert_log_energies_close(features, golden["fbank_centered"], golden["fbank"])


def test_log_energy_comparison_refuses_an_error_in_a_loud_bin(golden_tiny):
    golden = load_golden(golden_tiny, "campplus")
    fbank = kaldi_fbank(golden["wav_16k"][0])
    frame = int(np.argmax(golden["fbank"].max(axis=1)))
    fbank[frame, int(np.argmax(golden["fbank"][frame]))] += 1e-3  # a loud bin: float32 resolves it to ~1e-7
    with pytest.raises(AssertionError, match="log energy off"):
        _assert_log_energies_close(fbank, golden["fbank"], golden["fbank"])


@pytest.mark.parametrize("padding_value, suffix", [(0.0, "default"), (1.0, "w2vbert_cfg")])
def test_seamless_m4t_features_match_transformers(golden_tiny, padding_value, suffix):
    golden = load_golden(golden_tiny, "w2vbert_features")
    features, mask = seamless_m4t_features(golden["wav_16k"][0], padding_value=padding_value)
    assert features.dtype == np.float32 and mask.dtype == np.int64
    # It is transformers' own extractor, so only float64 FFT rounding could differ.
    np.testing.assert_allclose(features, golden[f"input_features_{suffix}"][0], atol=1e-6, rtol=0)
    np.testing.assert_array_equal(mask, golden[f"attention_mask_{suffix}"][0])


def test_seamless_m4t_features_of_an_even_frame_count_need_no_padding():
    wav = np.random.default_rng(0).standard_normal(400 + 159 * 160).astype(np.float32) * 0.1  # 160 frames
    features, mask = seamless_m4t_features(wav)
    assert features.shape == (80, 160)
    assert mask.tolist() == [1] * 80



# In a fresh interpreter: transformers is imported on the extractor's first use, and that first use must
# hold when it comes from several threads at once (the service extracts features in threads; before the
# lock, 5 of 5 runs of this script lost a thread to "cannot import name 'SeamlessM4TFeatureExtractor'").
_FIRST_USE_IN_THREADS_SCRIPT = """
import json, sys, threading
import numpy as np
from indextts2.frontend.audio import seamless_m4t_features
assert "transformers" not in sys.modules
wav = np.sin(np.arange(16000, dtype=np.float32) * 0.05) * 0.3
start = threading.Barrier(4)
failures, shapes = [], []
def first_use():
    start.wait()
    try:
        shapes.append(seamless_m4t_features(wav)[0].shape)
    except Exception as error:
        failures.append(repr(error))
threads = [threading.Thread(target=first_use) for _ in range(4)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
print(json.dumps({"failures": failures, "shapes": shapes}))
"""


def test_the_first_feature_extractions_from_several_threads_at_once_all_succeed():
    result = subprocess.run([sys.executable, "-c", _FIRST_USE_IN_THREADS_SCRIPT], check=False, capture_output=True,
                            text=True, timeout=300, cwd=Path(__file__).resolve().parent.parent)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["failures"] == [] and len(report["shapes"]) == 4, report

def test_mel_spectrogram_matches_official(golden_tiny):
    golden = load_golden(golden_tiny, "ref_mel")
    args = s2mel_mel_args(load_config(golden_tiny / "config.yaml")["s2mel"])
    mel = mel_spectrogram(golden["wav_22k"][0], **args)
    assert mel.shape == golden["mel"].shape[1:] and mel.dtype == np.float32
    np.testing.assert_allclose(mel, golden["mel"][0], atol=1e-4, rtol=0)


def test_s2mel_mel_args_map_fmax_as_infer_v2_does():
    spect = {"n_fft": 1024, "win_length": 1024, "hop_length": 256, "n_mels": 80, "fmin": 0}
    config = {"preprocess_params": {"sr": 22050, "spect_params": {**spect, "fmax": "None"}}}
    assert s2mel_mel_args(config)["fmax"] is None
    config["preprocess_params"]["spect_params"]["fmax"] = 11025
    assert s2mel_mel_args(config)["fmax"] == 8000.0


def test_too_short_audio_is_refused_with_a_clear_error():
    with pytest.raises(ValueError, match="too short"):
        campplus_features(np.zeros(500, dtype=np.float32))
    with pytest.raises(ValueError, match="too short"):
        seamless_m4t_features(np.zeros(500, dtype=np.float32))
    assert kaldi_fbank(np.zeros(399, dtype=np.float32)).shape == (0, 80)


# --- resampling ---


@pytest.mark.parametrize("resampler", [resample, soxr_resample])
@pytest.mark.parametrize("orig_sr, new_sr", [(22050, 16000), (16000, 22050), (48000, 22050), (44100, 16000)])
def test_resampling_keeps_a_sine_frequency_and_amplitude(resampler, orig_sr, new_sr):
    wav = _sine(440.0, orig_sr, 1.0)
    out = resampler(wav, orig_sr, new_sr)
    assert out.dtype == np.float32
    assert len(out) == -(-len(wav) * new_sr // orig_sr)
    expected = _sine(440.0, new_sr, len(out) / new_sr)
    middle = slice(len(out) // 10, -len(out) // 10)  # away from the zero-padded edges
    np.testing.assert_allclose(out[middle], expected[middle], atol=1e-3, rtol=0)


def test_resampling_22050_16000_lengths():
    assert len(resample(np.zeros(22050, np.float32), 22050, 16000)) == 16000
    assert len(resample(np.zeros(22051, np.float32), 22050, 16000)) == 16001  # ceil
    assert len(resample(np.zeros(16000, np.float32), 16000, 22050)) == 22050
    assert len(resample(np.zeros(0, np.float32), 22050, 16000)) == 0


def test_resampling_to_the_same_rate_is_the_identity_and_odd_rates_are_refused():
    wav = _sine(100.0, 16000, 0.1)
    np.testing.assert_array_equal(resample(wav, 16000, 16000), wav)
    with pytest.raises(ValueError, match="too small a factor"):
        resample(wav, 44101, 16000)
    assert resampling_kernel_size(16000, 16000) == 0


@pytest.mark.parametrize("orig_sr", [8000, 11025, 16000, 22050, 24000, 32000, 44100, 44101, 48000, 96000, 192000])
def test_every_sample_rate_in_the_range_is_accepted(orig_sr):
    check_audio_header(orig_sr, 2)  # raises if the rate were refused; soxr converts any pair


@pytest.mark.parametrize("orig_sr", [8000, 22050, 44100, 44101, 48000])
def test_prompt_waveforms_load_with_soxr_then_resample_like_torchaudio(orig_sr):
    """infer_v2: librosa.load(path) (soxr_hq to 22050 Hz), cut to 15 s, torchaudio 22050 -> 16000 Hz; the
    emotion prompt: librosa.load(path, sr=16000) (soxr_hq), cut to 15 s."""
    wav = np.random.default_rng(orig_sr).standard_normal(int(2.5 * orig_sr)).astype(np.float32) * 0.1
    wav_22k, wav_16k = prompt_waveforms(wav, orig_sr)
    loaded_22k = wav if orig_sr == 22050 else soxr.resample(wav, orig_sr, 22050, quality="soxr_hq")
    np.testing.assert_array_equal(wav_22k, loaded_22k[: len(wav_22k)])
    np.testing.assert_array_equal(wav_16k, resample(wav_22k, 22050, 16000))
    emotion = emotion_waveform(wav, orig_sr)
    np.testing.assert_array_equal(emotion, soxr.resample(wav, orig_sr, 16000, quality="soxr_hq")[: len(emotion)])


@pytest.mark.parametrize("orig_sr, length", [(44100, 44101), (48000, 48000), (11025, 12345), (8000, 1)])
def test_soxr_resample_has_librosas_length(orig_sr, length):
    out = soxr_resample(np.ones(length, np.float32), orig_sr, 22050)
    assert out.dtype == np.float32
    assert len(out) == int(np.ceil(length * (22050 / orig_sr)))  # librosa.resample's fix_length


def test_prompt_waveforms_cut_to_15_seconds_at_22050_then_resample_to_16k():
    wav_22k, wav_16k = prompt_waveforms(np.zeros(20 * 16000, dtype=np.float32), 16000)
    assert wav_22k.shape == (15 * 22050,)
    assert wav_16k.shape == (15 * 16000,)


# --- decoding ---


@pytest.mark.parametrize("audio_format, subtype", [("WAV", "PCM_16"), ("FLAC", None), ("OGG", "VORBIS")])
def test_decode_audio_reads_common_formats(audio_format, subtype):
    wav = _sine(440.0, 16000, 0.5)
    decoded = decode_audio(_encode(wav, 16000, audio_format, subtype))
    samples, sample_rate = decoded.samples, decoded.sample_rate
    assert abs(decoded.declared_seconds - 0.5) < 0.01
    assert sample_rate == 16000 and samples.dtype == np.float32 and samples.ndim == 1
    assert abs(len(samples) - len(wav)) <= 64  # Vorbis may trim a few samples
    tolerance = 0.05 if audio_format == "OGG" else 1e-4  # Vorbis is lossy
    np.testing.assert_allclose(samples[1000:7000], wav[1000:7000], atol=tolerance, rtol=0)


def test_decode_audio_averages_channels_to_mono():
    left, right = _sine(440.0, 22050, 0.2), np.zeros(int(22050 * 0.2), np.float32)
    decoded = decode_audio(_encode(np.stack([left, right], axis=1), 22050, "WAV", "FLOAT"))
    assert decoded.sample_rate == 22050
    np.testing.assert_allclose(decoded.samples, left / 2, atol=1e-7, rtol=0)


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"", "empty"),
        (b"this is not audio" * 20, "cannot decode"),
        (b"RIFF" + b"\x00" * 40, "cannot decode"),
    ],
)
def test_decode_audio_rejects_garbage(data, reason):
    with pytest.raises(AudioDecodeError, match=reason):
        decode_audio(data)


def test_decode_audio_rejects_audio_without_samples():
    with pytest.raises(AudioDecodeError, match="no samples"):
        decode_audio(_encode(np.zeros(0, np.float32), 16000, "WAV", "PCM_16"))


def test_prompt_waveforms_of_a_long_upload_equal_resampling_it_whole():
    wav = np.random.default_rng(1).standard_normal(20 * 24000).astype(np.float32) * 0.1
    wav_22k, wav_16k = prompt_waveforms(wav, 24000)
    whole_22k = soxr_resample(wav, 24000, 22050)[: 15 * 22050]
    np.testing.assert_allclose(wav_22k, whole_22k, atol=1e-6, rtol=0)
    np.testing.assert_allclose(wav_16k, resample(whole_22k, 22050, 16000), atol=1e-6, rtol=0)


def test_emotion_waveform_of_a_long_upload_equals_resampling_it_whole():
    wav = np.random.default_rng(2).standard_normal(20 * 44100).astype(np.float32) * 0.1
    np.testing.assert_allclose(emotion_waveform(wav, 44100), soxr_resample(wav, 44100, 16000)[: 15 * 16000],
                               atol=1e-6, rtol=0)


# --- untrusted uploads: header limits and bounded decoding ---


@pytest.mark.parametrize(
    "data, limit",
    [
        (wav_declaring_1_hz(), "8000 to 192000 Hz"),
        (_encode(np.zeros(16000, np.float32), 384000, "WAV", "PCM_16"), "8000 to 192000 Hz"),
        (_encode(np.zeros((16000, 9), np.float32), 16000, "WAV", "PCM_16"), "1 to 8 channels"),
    ],
    ids=["1_hz", "384_khz", "9_channels"],
)
def test_decode_audio_refuses_a_header_outside_the_limits_naming_the_limit(data, limit):
    with pytest.raises(AudioDecodeError) as error:
        decode_audio(data)
    assert limit in error.value.limit


def test_an_upload_at_an_odd_rate_is_decoded_and_converted():
    decoded = decode_audio(_encode(_sine(440.0, 44101, 1.0), 44101, "WAV", "PCM_16"))
    wav_22k, wav_16k = prompt_waveforms(decoded.samples, decoded.sample_rate)
    assert len(wav_22k) == 22050 and len(wav_16k) == 16000
    middle = slice(2000, -2000)
    np.testing.assert_allclose(wav_22k[middle], _sine(440.0, 22050, 1.0)[middle], atol=1e-3, rtol=0)


def test_decode_audio_reads_only_the_first_seconds_of_a_long_file():
    decoded = decode_audio(silent_flac(MAX_DECLARED_SECONDS, channels=2))
    assert decoded.declared_seconds == MAX_DECLARED_SECONDS
    assert decoded.samples.shape == (16 * 16000,)  # the 15 s the service uses plus a 1 s margin
    assert decode_audio(silent_flac(20.0), max_seconds=2.0).samples.shape == (2 * 16000,)


def test_decode_audio_refuses_a_file_longer_than_the_limit_before_decoding_it():
    with pytest.raises(AudioDecodeError, match="3600.0 s long") as error:
        decode_audio(silent_flac(3600.0))
    assert error.value.limit == f"<= {MAX_DECLARED_SECONDS:.0f} s"


# Decodes each upload that once blew up (and what the pipeline does next with it) in a fresh interpreter,
# whose peak RSS is then its own. Before bounded decoding these took +23 GB, +2.0 GB and +6.1 GB.
_PEAK_MEMORY_SCRIPT = """
import json, resource, sys
from indextts2.frontend.audio import (AudioDecodeError, campplus_features, decode_audio, emotion_waveform,
                                      prompt_waveforms, seamless_m4t_features)
paths = sys.argv[1:]
uploads = [open(path, "rb").read() for path in paths]
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
outcome = []
for data in uploads:
    try:
        audio = decode_audio(data)  # the hour-long files are refused by their header
    except AudioDecodeError as error:
        outcome.append(error.limit)
        continue
    wav_22k, wav_16k = prompt_waveforms(audio.samples, audio.sample_rate)
    seamless_m4t_features(wav_16k), campplus_features(wav_16k)
    seamless_m4t_features(emotion_waveform(audio.samples, audio.sample_rate))
    outcome.append(audio.declared_seconds)
grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
print(json.dumps({"grown_mb": grown_mb, "outcome": outcome}))
"""
PEAK_RSS_GROWTH_LIMIT_MB = 200


def test_decoding_the_upload_bombs_keeps_peak_memory_bounded(tmp_path):
    bombs = {"wav_1_hz": wav_declaring_1_hz(), "flac_hour": silent_flac(3600.0),
             "flac_hour_8_channels": silent_flac(3600.0, channels=8),
             "flac_minute_192_khz_8_channels": silent_flac(60.0, channels=8, sample_rate=192000)}
    paths = []
    for name, data in bombs.items():
        paths.append(tmp_path / name)
        paths[-1].write_bytes(data)
    result = subprocess.run([sys.executable, "-c", _PEAK_MEMORY_SCRIPT, *map(str, paths)], check=False, capture_output=True,
                            text=True, timeout=300, cwd=Path(__file__).resolve().parent.parent)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["outcome"] == ["8000 to 192000 Hz", "<= 60 s", "<= 60 s", 60.0]
    assert report["grown_mb"] < PEAK_RSS_GROWTH_LIMIT_MB, report
