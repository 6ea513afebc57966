"""CAMPPlus speaker-style encoder against the official outputs in campplus.npz."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from golden import load_golden

from indextts2.checkpoint import CheckpointError
from indextts2.frontend.audio import campplus_features
from indextts2.networks.campplus import (
    CAMPPlus,
    campplus_config_from_state_dict,
    load_campplus,
    segment_means,
)

CAMPPLUS_FILE = "hf_cache/campplus_cn_common.bin"
SMALL_CONFIG = {
    "feat_dim": 80,
    "embedding_size": 24,
    "growth_rate": 8,
    "bn_size": 2,
    "init_channels": 16,
    "block_layers": (2, 3),
    "block_kernel_sizes": (3, 5),
    "block_dilations": (1, 2),
    "m_channels": 8,
    "head_blocks": (1, 2),
    "tdnn_kernel_size": 5,
}


@pytest.fixture(scope="module")
def campplus(golden_tiny):
    return load_campplus(golden_tiny / CAMPPLUS_FILE)


@pytest.fixture(scope="module")
def golden(golden_tiny):
    return load_golden(golden_tiny, "campplus")


def test_style_matches_official(campplus, golden):
    with torch.no_grad():
        style = campplus(torch.from_numpy(golden["fbank_centered"])[None])
    np.testing.assert_allclose(style.numpy(), golden["style"], atol=1e-4, rtol=0)


def test_style_from_the_waveform_matches_official(campplus, golden):
    features = campplus_features(golden["wav_16k"][0])
    with torch.no_grad():
        style = campplus(torch.from_numpy(features)[None])
    np.testing.assert_allclose(style.numpy(), golden["style"], atol=1e-4, rtol=0)


def test_batch_rows_are_independent(campplus, golden):
    fbank = torch.from_numpy(golden["fbank_centered"])[None]
    with torch.no_grad():
        styles = campplus(torch.cat([fbank, fbank.flip(1)]))
        flipped = campplus(fbank.flip(1))
    np.testing.assert_allclose(styles[:1].numpy(), golden["style"], atol=1e-4, rtol=0)
    np.testing.assert_allclose(styles[1:].numpy(), flipped.numpy(), atol=1e-5, rtol=0)


def test_config_read_from_the_official_file_is_the_official_architecture(golden_tiny, golden):
    state_dict = torch.load(golden_tiny / CAMPPLUS_FILE, map_location="cpu", weights_only=True)
    # The official loader hard-codes the rest of the architecture; the widths are the golden arrays'.
    assert campplus_config_from_state_dict(state_dict) == {
        "feat_dim": golden["fbank"].shape[-1],
        "embedding_size": golden["style"].shape[-1],
        "growth_rate": 32,
        "bn_size": 4,
        "init_channels": 128,
        "block_layers": (12, 24, 16),
        "block_kernel_sizes": (3, 3, 3),
        "block_dilations": (1, 2, 2),
        "m_channels": 32,
        "head_blocks": (2, 2),
        "tdnn_kernel_size": 5,
    }


@pytest.mark.parametrize("time", [1, 37, 100, 101, 125, 250, 399])
def test_segment_means_equal_avg_pool_with_ceil_mode(time):
    x = torch.randn(2, 3, time)
    pooled = F.avg_pool1d(x, kernel_size=100, stride=100, ceil_mode=True)
    expected = pooled.repeat_interleave(100, dim=-1)[..., :time]
    torch.testing.assert_close(segment_means(x, 100), expected, atol=1e-6, rtol=0)


def _small_checkpoint(tmp_path):
    model = CAMPPlus(**SMALL_CONFIG).eval()
    path = tmp_path / "small_campplus.bin"
    torch.save(model.state_dict(), path)
    return model, path


def test_a_smaller_campplus_saves_and_loads_with_its_architecture_inferred(tmp_path):
    model, path = _small_checkpoint(tmp_path)
    loaded = load_campplus(path)
    assert campplus_config_from_state_dict(torch.load(path, weights_only=True)) == SMALL_CONFIG
    fbank = torch.randn(2, 57, 80)
    with torch.no_grad():
        torch.testing.assert_close(loaded(fbank), model(fbank))
    assert loaded(fbank).shape == (2, 24)


def _modified_small_checkpoint(tmp_path, change):
    _, path = _small_checkpoint(tmp_path)
    state_dict = torch.load(path, weights_only=True)
    change(state_dict)
    torch.save(state_dict, path)
    return path


def _load_error(path) -> str:
    with pytest.raises(CheckpointError) as error:
        load_campplus(path)
    return str(error.value)


def test_loader_rejects_a_misshaped_tensor(tmp_path):
    key = "xvector.block1.tdnnd2.nonlinear1.batchnorm.weight"
    message = _load_error(_modified_small_checkpoint(tmp_path, lambda sd: sd.update({key: torch.ones(7)})))
    assert "small_campplus.bin" in message
    assert f"key '{key}' has shape (7,) in the file, the network expects (24,)" in message


def test_loader_rejects_a_missing_tensor(tmp_path):
    key = "xvector.dense.nonlinear.batchnorm.running_var"
    message = _load_error(_modified_small_checkpoint(tmp_path, lambda sd: sd.pop(key)))
    assert "small_campplus.bin" in message
    assert f"missing key '{key}' (the network expects shape (24,))" in message


def test_loader_rejects_an_unexpected_tensor(tmp_path):
    key = "xvector.dense.nonlinear.batchnorm.weight"  # the official embedding BN has no affine weight
    message = _load_error(_modified_small_checkpoint(tmp_path, lambda sd: sd.update({key: torch.ones(24)})))
    assert "small_campplus.bin" in message
    assert f"unexpected key '{key}' with shape (24,)" in message


def test_loader_rejects_a_file_that_is_not_a_campplus_state_dict(tmp_path):
    path = tmp_path / "other.bin"
    torch.save({"weight": torch.zeros(2)}, path)
    with pytest.raises(CheckpointError, match=r"other\.bin.*head\.conv1\.weight"):
        load_campplus(path)
    torch.save([torch.zeros(2)], path)
    with pytest.raises(CheckpointError, match=r"other\.bin.*expected a state dict"):
        load_campplus(path)
