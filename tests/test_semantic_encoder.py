"""w2v-BERT 2.0 semantic encoder: the truncated network against transformers' full model on a tiny
random checkpoint in the official layout (GOLDEN.md has no w2v-BERT weights)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import SeamlessM4TFeatureExtractor, Wav2Vec2BertModel

from indextts2.checkpoint import CheckpointError
from indextts2.networks.semantic_encoder import (
    W2V_BERT_PREPROCESSOR_CONFIG,
    SemanticEncoder,
    load_semantic_encoder,
    write_tiny_w2v_bert,
)

HIDDEN = 32
NUM_LAYERS = 18


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_w2v_bert(tmp_path_factory.mktemp("w2v") / "w2v-bert-2.0", HIDDEN, NUM_LAYERS, seed=0)


@pytest.fixture(scope="module")
def stats_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    generator = torch.Generator().manual_seed(7)
    path = tmp_path_factory.mktemp("stats") / "wav2vec2bert_stats.pt"
    torch.save({"mean": torch.randn(HIDDEN, generator=generator),
                "var": torch.rand(HIDDEN, generator=generator) + 0.5}, path)
    return path


@pytest.fixture(scope="module")
def encoder(tiny_dir: Path, stats_path: Path) -> SemanticEncoder:
    return load_semantic_encoder(tiny_dir, stats_path)


def _features(lengths: list[int], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    frames = max(lengths)
    features = torch.randn(len(lengths), frames, 160, generator=generator)
    mask = (torch.arange(frames)[None, :] < torch.tensor(lengths)[:, None]).long()
    return features, mask


def test_truncated_encoder_equals_full_model_hidden_state_17(
    encoder: SemanticEncoder, tiny_dir: Path, stats_path: Path
) -> None:
    full = Wav2Vec2BertModel.from_pretrained(tiny_dir, local_files_only=True).eval()
    assert full.config.num_hidden_layers == NUM_LAYERS and len(encoder.encoder.layers) == 17
    stats = torch.load(stats_path)
    features, mask = _features([45, 30])
    with torch.no_grad():
        hidden = full(input_features=features, attention_mask=mask, output_hidden_states=True).hidden_states[17]
        expected = (hidden - stats["mean"]) / torch.sqrt(stats["var"])
        ours = encoder(features, mask)
    assert ours.shape == (2, 45, HIDDEN)
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-5)


def test_padded_rows_equal_their_unpadded_run(encoder: SemanticEncoder) -> None:
    lengths = [40, 23, 31]
    features, mask = _features(lengths, seed=1)
    with torch.no_grad():
        batched = encoder(features, mask)
        for row, length in enumerate(lengths):
            alone = encoder(features[row : row + 1, :length], mask[row : row + 1, :length])
            torch.testing.assert_close(batched[row, :length], alone[0], rtol=0, atol=1e-5)


def test_writer_uses_the_official_layout(tiny_dir: Path) -> None:
    assert sorted(p.name for p in tiny_dir.iterdir()) == ["config.json", "model.safetensors",
                                                          "preprocessor_config.json"]
    config = json.loads((tiny_dir / "config.json").read_text())
    assert config["model_type"] == "wav2vec2-bert" and config["hidden_size"] == HIDDEN
    keys = set(load_file(tiny_dir / "model.safetensors"))
    assert "masked_spec_embed" in keys and f"encoder.layers.{NUM_LAYERS - 1}.final_layer_norm.weight" in keys
    extractor = SeamlessM4TFeatureExtractor.from_pretrained(tiny_dir, local_files_only=True)
    assert extractor.padding_value == 1 and extractor.stride == 2


def test_preprocessor_config_is_the_real_one(golden_tiny: Path) -> None:
    real = json.loads((golden_tiny / "hf_cache" / "w2v-bert-2.0" / "preprocessor_config.json").read_text())
    assert W2V_BERT_PREPROCESSOR_CONFIG == real


def test_writer_is_deterministic_per_seed(tmp_path: Path, tiny_dir: Path) -> None:
    again = load_file(write_tiny_w2v_bert(tmp_path / "same", HIDDEN, NUM_LAYERS, seed=0) / "model.safetensors")
    other = load_file(write_tiny_w2v_bert(tmp_path / "other", HIDDEN, NUM_LAYERS, seed=1) / "model.safetensors")
    first = load_file(tiny_dir / "model.safetensors")
    assert all(torch.equal(first[key], again[key]) for key in first)
    assert not torch.equal(first["feature_projection.projection.weight"], other["feature_projection.projection.weight"])


def _rewrite(tiny_dir: Path, out_dir: Path, change) -> Path:
    out_dir.mkdir()
    shutil.copy(tiny_dir / "config.json", out_dir / "config.json")
    state_dict = load_file(tiny_dir / "model.safetensors")
    change(state_dict)
    save_file(state_dict, out_dir / "model.safetensors")
    return out_dir


@pytest.mark.parametrize(
    ("change", "fragments"),
    [
        (
            lambda sd: sd.update({"encoder.layers.3.ffn1.intermediate_dense.weight": torch.zeros(65, HIDDEN)}),
            ["'encoder.layers.3.ffn1.intermediate_dense.weight'", "(65, 32)", "(64, 32)"],
        ),
        (
            lambda sd: sd.pop("encoder.layers.16.final_layer_norm.bias"),
            ["missing key 'encoder.layers.16.final_layer_norm.bias'", "(32,)"],
        ),
        (
            lambda sd: sd.update({"encoder.extra.weight": torch.zeros(3, 2)}),
            ["unexpected key 'encoder.extra.weight'", "(3, 2)"],
        ),
        (
            # A layer index past the config's num_hidden_layers is not a "later layer": it is an error.
            lambda sd: sd.update({f"encoder.layers.{NUM_LAYERS}.final_layer_norm.bias": torch.zeros(HIDDEN)}),
            [f"unexpected key 'encoder.layers.{NUM_LAYERS}.final_layer_norm.bias'"],
        ),
    ],
    ids=["misshaped", "missing", "unexpected", "layer_past_config"],
)
def test_strict_loading_errors_name_file_key_and_shapes(
    tiny_dir: Path, stats_path: Path, tmp_path: Path, change, fragments: list[str]
) -> None:
    directory = _rewrite(tiny_dir, tmp_path / "broken", change)
    with pytest.raises(CheckpointError) as error:
        load_semantic_encoder(directory, stats_path)
    text = str(error.value)
    assert str(directory / "model.safetensors") in text
    for fragment in fragments:
        assert fragment in text


def test_unused_official_tensors_are_skipped_and_later_layers_optional(
    tiny_dir: Path, stats_path: Path, tmp_path: Path, encoder: SemanticEncoder
) -> None:
    def drop_unused(state_dict: dict[str, torch.Tensor]) -> None:
        for key in [k for k in state_dict if k == "masked_spec_embed" or k.startswith("encoder.layers.17.")]:
            del state_dict[key]

    trimmed = load_semantic_encoder(_rewrite(tiny_dir, tmp_path / "trimmed", drop_unused), stats_path)
    features, mask = _features([12])
    with torch.no_grad():
        torch.testing.assert_close(trimmed(features, mask), encoder(features, mask), rtol=0, atol=0)


def test_stats_and_layer_count_are_checked(tiny_dir: Path, tmp_path: Path, stats_path: Path) -> None:
    bad_stats = tmp_path / "stats.pt"
    torch.save({"mean": torch.zeros(HIDDEN + 1), "var": torch.ones(HIDDEN)}, bad_stats)
    with pytest.raises(CheckpointError, match=r"'mean' has shape \(33,\).*\(32,\)"):
        load_semantic_encoder(tiny_dir, bad_stats)
    with pytest.raises(CheckpointError, match="output_layer 19"):
        load_semantic_encoder(tiny_dir, stats_path, output_layer=19)
    with pytest.raises(CheckpointError, match="not found"):
        load_semantic_encoder(tmp_path / "nowhere", stats_path)


# The legacy (dynamo=False) exporter is what the export step uses; its deprecation and constant-folding
# notices are expected.
@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore:Constant folding:UserWarning")
def test_onnx_export_with_dynamic_batch_and_time_matches_torch(encoder: SemanticEncoder, tmp_path: Path) -> None:
    path = tmp_path / "semantic_encoder.onnx"
    features, mask = _features([20, 14])
    torch.onnx.export(
        encoder,
        (features, mask),
        str(path),
        input_names=["input_features", "attention_mask"],
        output_names=["semantic_features"],
        dynamic_axes={
            "input_features": {0: "batch", 1: "frames"},
            "attention_mask": {0: "batch", 1: "frames"},
            "semantic_features": {0: "batch", 1: "frames"},
        },
        opset_version=17,
        dynamo=False,
    )
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for lengths in ([9], [33, 17, 25]):
        features, mask = _features(lengths, seed=len(lengths))
        with torch.no_grad():
            expected = encoder(features, mask).numpy()
        (got,) = session.run(None, {"input_features": features.numpy(), "attention_mask": mask.numpy()})
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4)
