"""RepCodec (MaskGCT semantic codec) against the official outputs in semantic_codec.npz."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from golden import load_golden
from safetensors.torch import load_file, save_file

from indextts2.checkpoint import CheckpointError
from indextts2.config import load_config
from indextts2.networks.semantic_codec import (
    build_semantic_codec,
    load_semantic_codec,
    semantic_codec_official_state_dict,
)

CODEC_FILE = "hf_cache/semantic_codec_model.safetensors"


@pytest.fixture(scope="module")
def codec_config(golden_tiny):
    return load_config(golden_tiny / "config.yaml")["semantic_codec"]


@pytest.fixture(scope="module")
def codec(golden_tiny, codec_config):
    return load_semantic_codec(codec_config, golden_tiny / CODEC_FILE)


@pytest.fixture(scope="module")
def golden(golden_tiny):
    return load_golden(golden_tiny, "semantic_codec")


def official_vq2emb(model, codes_with_quantizer_axis: torch.Tensor) -> torch.Tensor:
    """What the official `quantizer.vq2emb(codes.unsqueeze(1))` computes: it indexes the first axis as
    the quantizer axis, so with one quantizer it embeds batch row 0 only, channel-major (1, H, T)."""
    vq = model.quantizer.quantizers[0]
    rows = F.embedding(codes_with_quantizer_axis[0], vq.codebook.weight)
    return vq.out_project(rows.transpose(1, 2))


def test_encoder_and_in_projection_match_official(codec, golden):
    x = torch.from_numpy(golden["x"])
    with torch.no_grad():
        encoder_out = codec.encode(x)
        z_e = codec.quantizer.quantizers[0].project_in(encoder_out)
    np.testing.assert_allclose(encoder_out.transpose(1, 2).numpy(), golden["encoder_out"], atol=1e-4, rtol=0)
    np.testing.assert_allclose(z_e.transpose(1, 2).numpy(), golden["z_e"], atol=1e-4, rtol=0)


def test_quantize_matches_official_indices_exactly(codec, golden):
    with torch.no_grad():
        codes, quantized = codec.quantize(torch.from_numpy(golden["x"]))
    assert codes.dtype == torch.int64
    np.testing.assert_array_equal(codes.numpy(), golden["indices"])
    np.testing.assert_allclose(quantized.numpy(), golden["quantized"], atol=1e-4, rtol=0)


def test_quantize_rows_of_a_batch_are_independent(codec, golden):
    x = torch.from_numpy(golden["x"])
    batch = torch.cat([x, torch.randn_like(x)])
    with torch.no_grad():
        codes, quantized = codec.quantize(batch)
        codes_1, quantized_1 = codec.quantize(batch[1:])
    np.testing.assert_array_equal(codes[:1].numpy(), golden["indices"])
    np.testing.assert_allclose(quantized[:1].numpy(), golden["quantized"], atol=1e-4, rtol=0)
    np.testing.assert_array_equal(codes[1:].numpy(), codes_1.numpy())
    np.testing.assert_allclose(quantized[1:].numpy(), quantized_1.numpy(), atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "codes_key, expected_key", [("indices", "vq2emb_of_indices"), ("codes", "vq2emb_of_codes")]
)
def test_vq2emb_matches_official_for_batch_1(codec, golden, codes_key, expected_key):
    with torch.no_grad():
        emb = codec.vq2emb(torch.from_numpy(golden[codes_key]))
    # Ours is time-major (B, T, H); the official output is (B, H, T).
    np.testing.assert_allclose(emb.transpose(1, 2).numpy(), golden[expected_key], atol=1e-4, rtol=0)


def test_vq2emb_embeds_every_row_of_a_batch(codec, golden):
    codes = torch.from_numpy(golden["codes"])
    other = torch.randint(0, codec.codebook_size, codes.shape)
    batch = torch.cat([codes, other])
    with torch.no_grad():
        ours = codec.vq2emb(batch)
        official = official_vq2emb(codec, batch.unsqueeze(1))
        other_alone = official_vq2emb(codec, other.unsqueeze(1))
    # The official call returns row 0 only; ours has both rows, each as the official B=1 output.
    assert official.shape == (1, codec.hidden_size, codes.shape[1])
    assert ours.shape == (2, codes.shape[1], codec.hidden_size)
    np.testing.assert_allclose(ours[0].T.numpy(), golden["vq2emb_of_codes"][0], atol=1e-4, rtol=0)
    np.testing.assert_allclose(ours[1].T.numpy(), other_alone[0].numpy(), atol=1e-5, rtol=0)
    assert not torch.allclose(ours[1], ours[0])


def test_official_state_dict_has_the_official_file_layout(codec, golden_tiny, codec_config, golden, tmp_path):
    official = load_file(str(golden_tiny / CODEC_FILE))
    written = semantic_codec_official_state_dict(codec)
    assert {k: tuple(v.shape) for k, v in written.items()} == {k: tuple(v.shape) for k, v in official.items()}
    path = tmp_path / "codec.safetensors"
    save_file(written, str(path))
    reloaded = load_semantic_codec(codec_config, path)
    with torch.no_grad():
        codes, _ = reloaded.quantize(torch.from_numpy(golden["x"]))
    np.testing.assert_array_equal(codes.numpy(), golden["indices"])


def _write_modified(golden_tiny, tmp_path, change):
    tensors = load_file(str(golden_tiny / CODEC_FILE))
    change(tensors)
    path = tmp_path / "modified.safetensors"
    save_file(tensors, str(path))
    return path


def _load_error(codec_config, path) -> str:
    with pytest.raises(CheckpointError) as error:
        load_semantic_codec(codec_config, path)
    return str(error.value)


def test_loader_ignores_only_the_decoder_half(golden_tiny, codec_config, tmp_path):
    def drop_decoder(tensors):
        for key in [k for k in tensors if k.startswith("decoder.")]:
            del tensors[key]

    load_semantic_codec(codec_config, _write_modified(golden_tiny, tmp_path, drop_decoder))

    path = _write_modified(golden_tiny, tmp_path, lambda t: t.update({"encoder.extra": torch.zeros(3)}))
    message = _load_error(codec_config, path)
    assert "modified.safetensors" in message
    assert "unexpected key 'encoder.extra' with shape (3,)" in message


def test_loader_rejects_a_missing_tensor(golden_tiny, codec_config, tmp_path):
    shape = tuple(load_file(str(golden_tiny / CODEC_FILE))["encoder.1.bias"].shape)
    path = _write_modified(golden_tiny, tmp_path, lambda t: t.pop("encoder.1.bias"))
    message = _load_error(codec_config, path)
    assert "modified.safetensors" in message
    assert f"missing key 'encoder.1.bias' (the network expects shape {shape})" in message


def test_loader_rejects_a_misshaped_tensor(golden_tiny, codec_config, tmp_path):
    key = "quantizer.quantizers.0.codebook.weight"
    codes, dim = load_file(str(golden_tiny / CODEC_FILE))[key].shape
    path = _write_modified(golden_tiny, tmp_path, lambda t: t.update({key: torch.zeros(codes // 2, dim)}))
    message = _load_error(codec_config, path)
    assert "modified.safetensors" in message
    assert f"key '{key}' has shape ({codes // 2}, {dim}) in the file, the network expects ({codes}, {dim})" in message


def test_loader_rejects_a_file_that_is_not_safetensors(codec_config, tmp_path):
    path = tmp_path / "junk.safetensors"
    path.write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="junk.safetensors"):
        load_semantic_codec(codec_config, path)
    with pytest.raises(CheckpointError, match="not found"):
        load_semantic_codec(codec_config, tmp_path / "absent.safetensors")


def test_build_refuses_settings_it_does_not_implement(codec_config):
    with pytest.raises(ValueError, match="num_quantizers"):
        build_semantic_codec({**codec_config, "num_quantizers": 2})
    with pytest.raises(ValueError, match="downsample_scale"):
        build_semantic_codec({**codec_config, "downsample_scale": 2})
