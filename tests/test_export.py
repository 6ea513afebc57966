"""ONNX export: every stage exports, is verified against PyTorch, and a wrong export is refused."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from export.onnx_export import ExportVerificationError, OnnxStage, export_stage
from export.repository import COMMITTED_REPOSITORY, CONFIG_2_5, export_repository, rename_model_config
from export.stages import build_onnx_stages
from indextts2.checkpoint_dir import load_networks

ONNX_MODELS = [
    "semantic_encoder", "semantic_codec", "campplus", "speaker_conditioner", "emotion_conditioner",
    "length_regulator", "s2mel_estimator", "vocoder",
]


def test_every_onnx_stage_exports_within_its_tolerance(demo_repository):
    reports = {report.name: report for report in demo_repository.stages}
    assert sorted(reports) == sorted(ONNX_MODELS)
    for name, report in reports.items():
        assert report.max_abs_error <= report.tolerance, report.line()
        assert (demo_repository.repository / name / "1" / "model.onnx").is_file()
        assert (demo_repository.repository / name / "config.pbtxt").is_file()


def test_onnx_files_accept_other_batch_sizes_and_lengths(demo_repository, demo_checkpoint):
    networks = load_networks(demo_checkpoint)
    vocoder = ort.InferenceSession(str(demo_repository.repository / "vocoder" / "1" / "model.onnx"))
    mel = torch.randn(3, 80, 11)
    with torch.no_grad():
        expected = networks.bigvgan(mel)[:, 0].numpy()
    (waveform,) = vocoder.run(["waveform"], {"mel": mel.numpy()})
    assert waveform.shape == (3, 11 * 256)
    np.testing.assert_allclose(waveform, expected, atol=1e-3)


def test_python_models_get_their_weights_in_official_layout(demo_repository):
    repository = demo_repository.repository
    assert (repository / "gpt_decoder" / "1" / "weights" / "gpt.pth").is_file()
    assert (repository / "gpt_decoder" / "1" / "weights" / "config.yaml").is_file()
    assert (repository / "s2mel" / "1" / "weights" / "s2mel.pth").is_file()
    assert (repository / "s2mel" / "1" / "weights" / "hf_cache" / "semantic_codec_model.safetensors").is_file()


class _ShapeFrozenByTracing(nn.Module):
    """Branches on a shape in Python: tracing keeps only the branch taken, so other lengths compute
    something else. Verification on other shapes must catch it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] > 30:
            return x * 2
        return x * 3


def test_export_that_computes_something_else_is_refused(tmp_path):
    stage = OnnxStage(
        name="frozen", module=_ShapeFrozenByTracing(), input_names=["x"], output_names=["y"],
        dynamic_axes={"x": {0: "batch", 1: "frames"}, "y": {0: "batch", 1: "frames"}},
        trace_inputs=(torch.randn(2, 37),), check_inputs=[(torch.randn(1, 23),)], tolerance=1e-4,
    )
    with pytest.raises(ExportVerificationError, match="frozen: ONNX output differs"):
        export_stage(stage, tmp_path / "frozen.onnx")


def test_fp16_export_keeps_float32_inputs_and_outputs(tmp_path, demo_checkpoint):
    networks = load_networks(demo_checkpoint)
    stage = next(s for s in build_onnx_stages(networks) if s.name == "campplus")
    report = export_stage(stage, tmp_path / "campplus.onnx", fp16=True)
    assert report.precision == "fp16"
    session = ort.InferenceSession(str(report.path))
    assert session.get_inputs()[0].type == "tensor(float)"
    assert session.get_outputs()[0].type == "tensor(float)"
    # The weights inside are float16.
    model = onnx.load(str(report.path))
    weight_types = [init.data_type for init in model.graph.initializer if np.prod(init.dims) > 16]
    assert weight_types and all(t == onnx.TensorProto.FLOAT16 for t in weight_types)


def test_only_selects_stages_and_unknown_names_are_refused(tmp_path, demo_checkpoint):
    result = export_repository(demo_checkpoint, tmp_path / "repo", only=["semantic_codec"], progress=lambda _: None)
    assert [report.name for report in result.stages] == ["semantic_codec"]
    with pytest.raises(ValueError, match="unknown stage"):
        export_repository(demo_checkpoint, tmp_path / "repo2", only=["no_such_model"], progress=lambda _: None)


@pytest.mark.parametrize("version", ["2.0", "2.5"])
def test_a_prefixed_export_names_every_model_folder_and_config_with_the_prefix(version, request, tmp_path):
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    checkpoint = request.getfixturevalue("demo_checkpoint" if version == "2.0" else "demo_checkpoint_2_5")
    result = export_repository(checkpoint, tmp_path / "repo", only=["semantic_codec"], progress=lambda _: None,
                               model_prefix="tts_")
    repository = result.repository
    models = sorted(path.name for path in COMMITTED_REPOSITORY.iterdir() if (path / "config.pbtxt").is_file())
    assert len(models) == 10
    assert sorted(path.name for path in repository.iterdir()) == [f"tts_{model}" for model in models]
    for model in models:
        written = (repository / f"tts_{model}" / "config.pbtxt").read_text()
        assert text_format.Parse(written, model_config_pb2.ModelConfig()).name == f"tts_{model}"
        committed = COMMITTED_REPOSITORY / model / CONFIG_2_5
        if version == "2.0" or not committed.is_file():
            committed = COMMITTED_REPOSITORY / model / "config.pbtxt"
        # The version's committed config, with only its name changed.
        assert written == rename_model_config(committed.read_text(), model, f"tts_{model}")
    assert (repository / "tts_semantic_codec" / "1" / "model.onnx").is_file()
    for model in ("gpt_decoder", "s2mel"):
        assert (repository / f"tts_{model}" / "1" / "model.py").is_file()
        assert (repository / f"tts_{model}" / "1" / "weights" / "config.yaml").is_file()


def test_a_served_name_gives_the_prefix_s2mel_calls_its_estimator_with():
    from indextts2.model_names import prefix_of

    assert prefix_of("s2mel", "s2mel") == ""
    assert prefix_of("tts_s2mel", "s2mel") == "tts_"
    assert prefix_of("s2mel_bls", "s2mel") == ""  # the tests' copy keeps calling s2mel_estimator
    assert prefix_of("team.s2mel_tts_s2mel", "s2mel") == "team.s2mel_tts_"
    with pytest.raises(ValueError, match="is not <prefix>s2mel"):
        prefix_of("mel_model", "s2mel")


def test_a_bad_model_prefix_and_a_prefix_into_the_committed_repository_are_refused(demo_checkpoint, tmp_path):
    with pytest.raises(ValueError, match="model prefix 'tts/'"):
        export_repository(demo_checkpoint, tmp_path / "repo", model_prefix="tts/", progress=lambda _: None)
    assert not (tmp_path / "repo").exists()
    with pytest.raises(ValueError, match="with a model prefix cannot be written into"):
        export_repository(demo_checkpoint, COMMITTED_REPOSITORY, model_prefix="tts_", progress=lambda _: None)
    assert not list(COMMITTED_REPOSITORY.glob("tts_*"))


def test_cli_reports_a_missing_checkpoint_clearly(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "export", str(tmp_path / "missing"), "--output", str(tmp_path / "out")],
        check=False, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 1
    assert "has no config.yaml" in result.stderr
    assert "Traceback" not in result.stderr
