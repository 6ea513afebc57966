"""The demo preset and the checkpoint-directory loader: official layout, strict loading, and the whole
pipeline end to end in PyTorch."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from golden import load_golden, load_golden_config

from indextts2.checkpoint import CheckpointError
from indextts2.checkpoint_dir import CheckpointPaths, load_networks
from indextts2.defaults import OUTPUT_SAMPLE_RATE, SEGMENT_SILENCE_MS
from indextts2.pipeline import EagerPipeline, SamplingConfig, eager_emotion_vector
from indextts2.presets import write_demo_checkpoint

OFFICIAL_FILES = [
    "config.yaml", "gpt.pth", "s2mel.pth", "bpe.model", "wav2vec2bert_stats.pt", "feat1.pt", "feat2.pt",
    "hf_cache/w2v-bert-2.0/config.json", "hf_cache/w2v-bert-2.0/model.safetensors",
    "hf_cache/w2v-bert-2.0/preprocessor_config.json", "hf_cache/semantic_codec_model.safetensors",
    "hf_cache/campplus_cn_common.bin", "hf_cache/bigvgan/config.json", "hf_cache/bigvgan/bigvgan_generator.pt",
]


def _reference_audio(seconds: float, sample_rate: int = 24000, seed: int = 0) -> np.ndarray:
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    noise = np.random.default_rng(seed).standard_normal(t.size)
    return (0.3 * np.sin(2 * np.pi * 180 * t * (1 + 0.2 * t)) + 0.03 * noise).astype(np.float32)


def _flatten(state: dict, prefix: str = "") -> dict[str, torch.Tensor]:
    flat: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def test_demo_checkpoint_has_the_official_layout_and_is_small(demo_checkpoint):
    for name in OFFICIAL_FILES:
        assert (demo_checkpoint.model_dir / name).is_file(), name
    total = sum(p.stat().st_size for p in demo_checkpoint.model_dir.rglob("*") if p.is_file())
    assert total < 40 * 2**20


def test_demo_checkpoint_is_deterministic_for_a_seed(tmp_path, demo_checkpoint):
    again = write_demo_checkpoint(tmp_path / "again")
    for name in ("gpt.pth", "s2mel.pth", "hf_cache/campplus_cn_common.bin"):
        first = torch.load(demo_checkpoint.model_dir / name, weights_only=True)
        second = torch.load(again.model_dir / name, weights_only=True)
        a, b = _flatten(first), _flatten(second)
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), name
    other = write_demo_checkpoint(tmp_path / "other", seed=1)
    assert not torch.equal(
        torch.load(demo_checkpoint.model_dir / "gpt.pth", weights_only=True)["mel_head.weight"],
        torch.load(other.model_dir / "gpt.pth", weights_only=True)["mel_head.weight"],
    )


def test_missing_external_part_names_the_file(tmp_path, demo_checkpoint):
    copy = tmp_path / "ckpt"
    shutil.copytree(demo_checkpoint.model_dir, copy)
    (copy / "hf_cache" / "campplus_cn_common.bin").unlink()
    with pytest.raises(CheckpointError, match="campplus_cn_common.bin"):
        load_networks(CheckpointPaths.from_model_dir(copy))


def test_mis_shaped_tensor_in_the_directory_names_file_key_and_shapes(tmp_path, demo_checkpoint):
    copy = tmp_path / "ckpt"
    shutil.copytree(demo_checkpoint.model_dir, copy)
    state = torch.load(copy / "gpt.pth", weights_only=True)
    codes, width = state["mel_head.weight"].shape
    state["mel_head.weight"] = state["mel_head.weight"][:-1]
    torch.save(state, copy / "gpt.pth")
    with pytest.raises(CheckpointError) as error:
        load_networks(CheckpointPaths.from_model_dir(copy))
    message = str(error.value)
    assert "gpt.pth" in message and "mel_head.weight" in message
    assert f"({codes - 1}, {width})" in message and f"({codes}, {width})" in message


def test_not_a_checkpoint_directory_is_refused(tmp_path):
    with pytest.raises(CheckpointError, match="no config.yaml"):
        CheckpointPaths.from_model_dir(tmp_path)


def test_golden_checkpoint_loads_through_the_directory_loader(golden_tiny):
    networks = load_networks(
        CheckpointPaths.from_model_dir(golden_tiny),
        with_semantic_encoder=False, with_text_frontend=False, check_latent_width=False,
    )
    assert networks.gpt.model_dim == load_golden_config(golden_tiny)["gpt"]["model_dim"]
    assert networks.dims()["semantic_dim"] == load_golden(golden_tiny, "semantic_codec")["x"].shape[-1]


@pytest.fixture(scope="module")
def demo_pipeline(demo_checkpoint):
    return EagerPipeline(load_networks(demo_checkpoint))


def test_demo_end_to_end_text_and_reference_audio_to_waveform(demo_pipeline):
    text = "Hello there. This sentence is long enough to make a few codes, and then some more."
    result = demo_pipeline.synthesize(text, _reference_audio(3.0), 24000, seed=11)
    spoken = sum(1 for frames in result.mel_frames if frames)
    assert spoken >= 1
    silence = int(OUTPUT_SAMPLE_RATE * SEGMENT_SILENCE_MS / 1000)
    hop = demo_pipeline.networks.bigvgan.hop_length
    expected = sum(frames * hop for frames in result.mel_frames) + silence * (spoken - 1)
    assert result.waveform.shape == (expected,)
    assert result.waveform.dtype == np.float32
    assert np.all(np.isfinite(result.waveform)) and np.abs(result.waveform).max() <= 1.0
    assert np.abs(result.waveform).max() > 0
    for codes, frames in zip(result.codes, result.mel_frames, strict=True):
        assert frames == (round(codes.numel() * 1.72) if codes.numel() else 0)


def test_demo_end_to_end_is_reproducible_with_a_seed(demo_pipeline):
    audio = _reference_audio(2.0)
    first = demo_pipeline.synthesize("Same seed, same audio.", audio, 24000, seed=5)
    second = demo_pipeline.synthesize("Same seed, same audio.", audio, 24000, seed=5)
    np.testing.assert_array_equal(first.waveform, second.waveform)


def test_duration_ratio_scales_the_mel_length(demo_pipeline):
    audio = _reference_audio(2.0)
    greedy = SamplingConfig(do_sample=False, max_codes=40)
    normal = demo_pipeline.synthesize("Speed test.", audio, 24000, sampling=greedy, seed=1)
    slow = demo_pipeline.synthesize("Speed test.", audio, 24000, sampling=greedy, seed=1, duration_ratio=1.25)
    assert [c.tolist() for c in normal.codes] == [c.tolist() for c in slow.codes]
    n = normal.codes[0].numel()
    assert normal.mel_frames[0] == round(n * 1.72) and slow.mel_frames[0] == round(n * 1.72 * 1.25)


def test_emotion_audio_and_emotion_vector_change_the_conditioning(demo_pipeline):
    speaker = demo_pipeline.speaker_prompt(_reference_audio(2.0), 24000)
    own = demo_pipeline.emotion_features(_reference_audio(2.0), 24000)
    base = eager_emotion_vector(demo_pipeline, speaker, own)
    other = demo_pipeline.emotion_features(_reference_audio(2.5, seed=3) * 0.5, 24000)
    from_audio = eager_emotion_vector(demo_pipeline, speaker, other, from_emotion_audio=True, emo_alpha=0.8)
    from_weights = eager_emotion_vector(demo_pipeline, speaker, own, emo_weights=[0.5, 0, 0, 0, 0, 0, 0, 0.2])
    assert not torch.allclose(base, from_audio) and not torch.allclose(base, from_weights)
