"""Audio front-end: decoding, resampling and the feature extractors against the official goldens."""

from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile
from golden import load_golden

from indextts2.config import load_config
from indextts2.frontend.audio import (
    AudioDecodeError,
    campplus_features,
    decode_audio,
    kaldi_fbank,
    mel_spectrogram,
    prompt_waveforms,
    resample,
    s2mel_mel_args,
    seamless_m4t_features,
)


def _encode(samples: np.ndarray, sample_rate: int, audio_format: str, subtype: str | None = None) -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, sample_rate, format=audio_format, subtype=subtype)
    return buffer.getvalue()


def _sine(frequency: float, sample_rate: int, seconds: float, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(sample_rate * seconds)) / sample_rate
    return (amplitude * np.sin(2 * np.pi * frequency * t)).astype(np.float32)


# --- features against the official goldens ---


def test_kaldi_fbank_matches_torchaudio(golden_tiny):
    golden = load_golden(golden_tiny, "campplus")
    fbank = kaldi_fbank(golden["wav_16k"][0], num_mel_bins=80, sample_frequency=16000, dither=0.0)
    assert fbank.shape == golden["fbank"].shape and fbank.dtype == np.float32
    np.testing.assert_allclose(fbank, golden["fbank"], atol=1e-4, rtol=0)


def test_campplus_features_are_the_mean_centred_fbank(golden_tiny):
    golden = load_golden(golden_tiny, "campplus")
    features = campplus_features(golden["wav_16k"])  # (1, N) is accepted as infer_v2 holds it
    np.testing.assert_allclose(features, golden["fbank_centered"], atol=1e-4, rtol=0)


@pytest.mark.parametrize("padding_value, suffix", [(0.0, "default"), (1.0, "w2vbert_cfg")])
def test_seamless_m4t_features_match_transformers(golden_tiny, padding_value, suffix):
    golden = load_golden(golden_tiny, "w2vbert_features")
    features, mask = seamless_m4t_features(golden["wav_16k"][0], padding_value=padding_value)
    assert features.dtype == np.float32 and mask.dtype == np.int64
    np.testing.assert_allclose(features, golden[f"input_features_{suffix}"][0], atol=1e-4, rtol=0)
    np.testing.assert_array_equal(mask, golden[f"attention_mask_{suffix}"][0])


def test_seamless_m4t_features_of_an_even_frame_count_need_no_padding():
    wav = np.random.default_rng(0).standard_normal(400 + 159 * 160).astype(np.float32) * 0.1  # 160 frames
    features, mask = seamless_m4t_features(wav)
    assert features.shape == (80, 160)
    assert mask.tolist() == [1] * 80


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


@pytest.mark.parametrize("orig_sr, new_sr", [(22050, 16000), (16000, 22050), (48000, 22050), (44100, 16000)])
def test_resampling_keeps_a_sine_frequency_and_amplitude(orig_sr, new_sr):
    wav = _sine(440.0, orig_sr, 1.0)
    out = resample(wav, orig_sr, new_sr)
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


def test_prompt_waveforms_cut_to_15_seconds_at_22050_then_resample_to_16k():
    wav_22k, wav_16k = prompt_waveforms(np.zeros(20 * 16000, dtype=np.float32), 16000)
    assert wav_22k.shape == (15 * 22050,)
    assert wav_16k.shape == (15 * 16000,)


# --- decoding ---


@pytest.mark.parametrize("audio_format, subtype", [("WAV", "PCM_16"), ("FLAC", None), ("OGG", "VORBIS")])
def test_decode_audio_reads_common_formats(audio_format, subtype):
    wav = _sine(440.0, 16000, 0.5)
    samples, sample_rate = decode_audio(_encode(wav, 16000, audio_format, subtype))
    assert sample_rate == 16000 and samples.dtype == np.float32 and samples.ndim == 1
    assert abs(len(samples) - len(wav)) <= 64  # Vorbis may trim a few samples
    tolerance = 0.05 if audio_format == "OGG" else 1e-4  # Vorbis is lossy
    np.testing.assert_allclose(samples[1000:7000], wav[1000:7000], atol=tolerance, rtol=0)


def test_decode_audio_averages_channels_to_mono():
    left, right = _sine(440.0, 22050, 0.2), np.zeros(int(22050 * 0.2), np.float32)
    samples, sample_rate = decode_audio(_encode(np.stack([left, right], axis=1), 22050, "WAV", "FLOAT"))
    assert sample_rate == 22050
    np.testing.assert_allclose(samples, left / 2, atol=1e-7, rtol=0)


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
    whole_22k = resample(wav, 24000, 22050)[: 15 * 22050]
    np.testing.assert_allclose(wav_22k, whole_22k, atol=1e-6, rtol=0)
    np.testing.assert_allclose(wav_16k, resample(whole_22k, 22050, 16000), atol=1e-6, rtol=0)
