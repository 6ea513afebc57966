"""BigVGAN v2 vocoder against the official outputs (GOLDEN.md: bigvgan.npz, pipeline_s2mel_bigvgan.npz)."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import scipy.signal
import torch
from golden import load_golden, load_golden_config

from indextts2.checkpoint import CheckpointError, fold_weight_norm, torch_load
from indextts2.networks.bigvgan import (
    BigVGAN,
    DownSample,
    UpSample,
    bigvgan_official_checkpoint,
    build_bigvgan,
    kaiser_sinc_filter,
    load_bigvgan,
)

CHAIN_TOLERANCE = 1e-3  # GOLDEN.md: long op chains (bigvgan, pipeline_*)


@pytest.fixture(scope="module")
def bigvgan_dir(golden_tiny: Path) -> Path:
    return golden_tiny / "hf_cache" / "bigvgan"


@pytest.fixture(scope="module")
def vocoder(bigvgan_dir: Path) -> BigVGAN:
    return load_bigvgan(bigvgan_dir)


def _copy_with_generator(bigvgan_dir: Path, out_dir: Path, generator: dict[str, torch.Tensor]) -> Path:
    out_dir.mkdir()
    shutil.copy(bigvgan_dir / "config.json", out_dir / "config.json")
    torch.save({"generator": generator}, out_dir / "bigvgan_generator.pt")
    return out_dir


def test_bigvgan_matches_official_waveform(vocoder: BigVGAN, golden_tiny: Path) -> None:
    golden = load_golden(golden_tiny, "bigvgan")
    with torch.no_grad():
        wav = vocoder(torch.from_numpy(golden["mel"]))
    assert wav.shape == golden["wav"].shape
    np.testing.assert_allclose(wav.numpy(), golden["wav"], rtol=0, atol=CHAIN_TOLERANCE)


def test_bigvgan_reproduces_pipeline_waveform_from_vc_target(vocoder: BigVGAN, golden_tiny: Path) -> None:
    golden = load_golden(golden_tiny, "pipeline_s2mel_bigvgan")
    with torch.no_grad():
        wav = vocoder(torch.from_numpy(golden["vc_target"])).squeeze().unsqueeze(0)
    np.testing.assert_allclose(wav.numpy(), golden["wav"], rtol=0, atol=CHAIN_TOLERANCE)


def test_bigvgan_reads_its_shape_from_config_json(
    vocoder: BigVGAN, bigvgan_dir: Path, golden_tiny: Path
) -> None:
    h = json.loads((bigvgan_dir / "config.json").read_text())
    mel_hop = load_golden_config(golden_tiny)["s2mel"]["preprocess_params"]["spect_params"]["hop_length"]
    assert vocoder.hop_length == int(np.prod(h["upsample_rates"])) == mel_hop
    assert vocoder.conv_pre.out_channels == h["upsample_initial_channel"]
    assert len(vocoder.resblocks) == len(h["upsample_rates"]) * len(h["resblock_kernel_sizes"])
    assert vocoder.conv_post.bias is None  # use_bias_at_final: false
    assert not vocoder.use_tanh_at_final


def test_computed_antialias_filters_equal_the_checkpoint_buffers(bigvgan_dir: Path) -> None:
    generator = torch_load(bigvgan_dir / "bigvgan_generator.pt")["generator"]
    expected = kaiser_sinc_filter(cutoff=0.25, half_width=0.3, kernel_size=12)
    filters = [key for key in generator if key.endswith(".filter")]
    assert filters
    for key in filters:
        torch.testing.assert_close(generator[key], expected, rtol=0, atol=1e-7)


def test_vocoder_with_computed_filters_matches_official_waveform(vocoder: BigVGAN, golden_tiny: Path) -> None:
    computed = copy.deepcopy(vocoder)
    for name, buffer in computed.named_buffers():
        if name.endswith(".filter"):
            buffer.copy_(kaiser_sinc_filter(cutoff=0.25, half_width=0.3, kernel_size=buffer.shape[-1]))
    golden = load_golden(golden_tiny, "bigvgan")
    with torch.no_grad():
        wav = computed(torch.from_numpy(golden["mel"]))
    np.testing.assert_allclose(wav.numpy(), golden["wav"], rtol=0, atol=CHAIN_TOLERANCE)


# --- the anti-alias filter and the resampling around it ---


def _gain_db(taps: np.ndarray, frequencies: np.ndarray) -> np.ndarray:
    _, response = scipy.signal.freqz(taps, worN=frequencies, fs=1.0)
    return 20 * np.log10(np.abs(response))


def test_antialias_filter_is_a_symmetric_low_pass_with_unit_dc_gain() -> None:
    taps = kaiser_sinc_filter(cutoff=0.25, half_width=0.3, kernel_size=12).view(-1).double().numpy()
    assert taps.shape == (12,)
    assert abs(taps.sum() - 1.0) < 1e-6  # a constant passes unchanged
    np.testing.assert_array_equal(taps, taps[::-1])  # linear phase
    # A windowed sinc has half its amplitude at the cut-off.
    assert abs(10 ** (_gain_db(taps, np.array([0.25]))[0] / 20) - 0.5) < 0.01
    assert np.all(np.abs(_gain_db(taps, np.linspace(0.0, 0.1, 50))) < 0.05)  # pass band within 0.05 dB
    # The stop band reaches the attenuation the window's beta was chosen for (Kaiser's estimate, 51 dB).
    designed_db = scipy.signal.kaiser_atten(12 // 2, 4 * 0.3)
    assert designed_db > 50
    assert np.all(_gain_db(taps, np.linspace(0.39, 0.5, 200)) <= -designed_db)


def test_upsampling_and_downsampling_keep_a_constant() -> None:
    constant = torch.full((1, 3, 9), 0.7)
    torch.testing.assert_close(UpSample(3)(constant), torch.full((1, 3, 18), 0.7), rtol=0, atol=1e-6)
    torch.testing.assert_close(DownSample(3)(torch.full((1, 3, 18), 0.7)), constant, rtol=0, atol=1e-6)


def test_upsampling_interpolates_half_way_between_the_input_samples() -> None:
    """x2: output n sits at input time (n - 0.5) / 2, so each input sample gets one output on each side."""
    frequency = 0.03  # cycles per input sample, deep in the pass band
    times = torch.arange(64, dtype=torch.float64)
    x = torch.sin(2 * torch.pi * frequency * times).float().view(1, 1, -1)
    expected = torch.sin(2 * torch.pi * frequency * (torch.arange(128, dtype=torch.float64) - 0.5) / 2)
    up = UpSample(1)(x)[0, 0].double()
    assert up.shape == (128,)
    torch.testing.assert_close(up[16:-16], expected[16:-16], rtol=0, atol=5e-3)


def test_downsampling_keeps_timing_and_removes_what_would_alias() -> None:
    high_rate = torch.arange(256, dtype=torch.float64)
    slow = torch.sin(2 * torch.pi * 0.015 * high_rate).float().view(1, 1, -1)
    down = DownSample(1)(slow)[0, 0].double()
    assert down.shape == (128,)
    # Output m is centred where UpSample put input m: high-rate position 2m + 0.5.
    expected = torch.sin(2 * torch.pi * 0.015 * (2 * torch.arange(128, dtype=torch.float64) + 0.5))
    torch.testing.assert_close(down[8:-8], expected[8:-8], rtol=0, atol=5e-3)
    # 0.45 cycles per high-rate sample is above the low rate's Nyquist (0.25): it is filtered out.
    fast = torch.sin(2 * torch.pi * 0.45 * high_rate).float().view(1, 1, -1)
    assert DownSample(1)(fast)[0, 0, 8:-8].abs().max().item() < 10 ** (-50 / 20)


def test_output_is_clamped_to_unit_range_without_tanh(vocoder: BigVGAN, golden_tiny: Path) -> None:
    mel = torch.from_numpy(load_golden(golden_tiny, "bigvgan")["mel"])
    loud = copy.deepcopy(vocoder)
    with torch.no_grad():
        loud.conv_post.weight.mul_(1000.0)
        positive = loud(mel)
        loud.conv_post.weight.neg_()
        negative = loud(mel)
    # The random weights give a DC offset, so a loud output saturates on the side of its sign.
    assert positive.max().item() == 1.0 and negative.min().item() == -1.0
    assert positive.abs().max().item() == negative.abs().max().item() == 1.0


def test_official_checkpoint_round_trip(
    vocoder: BigVGAN, bigvgan_dir: Path, tmp_path: Path, golden_tiny: Path
) -> None:
    official = torch_load(bigvgan_dir / "bigvgan_generator.pt")["generator"]
    written = bigvgan_official_checkpoint(vocoder)
    assert set(written) == {"generator"}
    assert {k: tuple(v.shape) for k, v in written["generator"].items()} == {
        k: tuple(v.shape) for k, v in official.items()
    }
    # weight_v is only defined up to scale, so compare what the network uses: the folded weights.
    folded_written, folded_official = fold_weight_norm(written["generator"]), fold_weight_norm(official)
    for key, tensor in folded_official.items():
        torch.testing.assert_close(folded_written[key], tensor, rtol=1e-5, atol=1e-6, msg=key)

    reloaded = load_bigvgan(_copy_with_generator(bigvgan_dir, tmp_path / "bigvgan", written["generator"]))
    mel = torch.from_numpy(load_golden(golden_tiny, "bigvgan")["mel"])
    with torch.no_grad():
        torch.testing.assert_close(reloaded(mel), vocoder(mel), rtol=0, atol=1e-6)


def test_config_without_tanh_flag_uses_tanh_and_other_shapes_build() -> None:
    h = {
        "resblock": "1",
        "num_mels": 20,
        "upsample_rates": [2, 3],
        "upsample_kernel_sizes": [4, 5],
        "upsample_initial_channel": 16,
        "resblock_kernel_sizes": [3],
        "resblock_dilation_sizes": [[1, 2]],
        "activation": "snake",
        "snake_logscale": False,
    }
    model = build_bigvgan(h).eval()
    with torch.no_grad():
        wav = model(torch.randn(2, 20, 7))
    assert wav.shape == (2, 1, 7 * 6)
    assert model.use_tanh_at_final and model.conv_post.bias is not None
    assert wav.abs().max() < 1.0


@pytest.mark.parametrize(
    ("change", "message"),
    [({"activation": "relu"}, "unknown activation 'relu'"), ({"resblock": "2"}, "resblock '2'")],
)
def test_build_rejects_unsupported_config(bigvgan_dir: Path, change: dict, message: str) -> None:
    h = {**json.loads((bigvgan_dir / "config.json").read_text()), **change}
    with pytest.raises(ValueError, match=message):
        build_bigvgan(h)


def _corrupt_cases(official: dict[str, torch.Tensor]) -> list[tuple[dict[str, torch.Tensor], list[str]]]:
    missing = {k: v for k, v in official.items() if k != "conv_pre.bias"}
    unexpected = {**official, "conv_post.bias": torch.zeros(1)}
    (width,) = official["ups.0.0.bias"].shape
    misshaped = {**official, "ups.0.0.bias": torch.zeros(width + 1)}
    return [
        (missing, ["missing key 'conv_pre.bias'", str(tuple(official["conv_pre.bias"].shape))]),
        (unexpected, ["unexpected key 'conv_post.bias'", "(1,)"]),
        (misshaped, ["'ups.0.0.bias'", f"({width + 1},)", f"({width},)"]),
    ]


def test_strict_loading_errors_name_file_key_and_shapes(bigvgan_dir: Path, tmp_path: Path) -> None:
    official = torch_load(bigvgan_dir / "bigvgan_generator.pt")["generator"]
    for i, (generator, fragments) in enumerate(_corrupt_cases(official)):
        directory = _copy_with_generator(bigvgan_dir, tmp_path / f"case{i}", generator)
        with pytest.raises(CheckpointError) as error:
            load_bigvgan(directory)
        text = str(error.value)
        assert str(directory / "bigvgan_generator.pt") in text
        for fragment in fragments:
            assert fragment in text


def test_loading_needs_the_generator_wrapper(bigvgan_dir: Path, tmp_path: Path) -> None:
    directory = tmp_path / "bare"
    directory.mkdir()
    shutil.copy(bigvgan_dir / "config.json", directory / "config.json")
    torch.save(torch_load(bigvgan_dir / "bigvgan_generator.pt")["generator"], directory / "bigvgan_generator.pt")
    with pytest.raises(CheckpointError, match="'generator'"):
        load_bigvgan(directory)
