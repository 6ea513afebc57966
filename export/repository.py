"""Write a Triton model repository from a checkpoint directory (or the demo preset).

The committed `model_repository/` holds every model's `config.pbtxt` and Python code; this step adds
what is generated from a checkpoint: `<model>/1/model.onnx` for the ONNX stages, each verified against
PyTorch, and the checkpoint files the Python-backend models load (`<model>/1/weights/`). Writing into
another folder copies the committed configs and code there first, so the result is self-contained.

One layout serves both versions. The committed `config.pbtxt` files are IndexTTS-2.0's; where 2.5
differs (gpt_decoder, s2mel, semantic_codec, speaker_conditioner), `<model>/config_2_5.pbtxt` is
committed beside it and a 2.5 export writes it as that model's `config.pbtxt`. The model code is the
same for both (the Python models read the version from their config's `indextts_version` parameter).
A 2.5 repository therefore goes to another folder than the committed one (`--output`).

With a model prefix (`--model-prefix tts_`), every model folder is written as `<prefix><name>` and its
config.pbtxt's `name` says so, for a Triton repository shared with other models (indextts2/model_names.py;
the orchestrator then needs TRITON_MODEL_PREFIX set to the same prefix). Such a repository, too, goes to
another folder than the committed one.
"""

from __future__ import annotations

import re
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from export.onnx_export import StageReport, export_stage
from export.stages import build_onnx_stages
from indextts2.checkpoint_dir import (
    CODEC_2_5_FILE,
    DEFAULT_SEMANTIC_CODEC,
    VERSION_2_5,
    CheckpointPaths,
    load_any_networks,
)
from indextts2.model_names import check_model_prefix

COMMITTED_REPOSITORY = Path(__file__).resolve().parent.parent / "model_repository"
ONNX_FILE = "model.onnx"
WEIGHTS_DIR = "weights"
CONFIG_2_5 = "config_2_5.pbtxt"  # a model's IndexTTS-2.5 config, written as config.pbtxt by a 2.5 export


@dataclass
class ExportResult:
    repository: Path
    stages: list[StageReport]


def rename_model_config(text: str, old_name: str, new_name: str) -> str:
    """The text of a config.pbtxt with its model name changed from `old_name` to `new_name`: its one
    top-level `name:` line; the comments and everything else stay as they are."""
    renamed, count = re.subn(rf'^name: "{re.escape(old_name)}"$', f'name: "{new_name}"', text, flags=re.MULTILINE)
    if count != 1:
        raise ValueError(f'the config of {old_name} has {count} top-level lines `name: "{old_name}"`, not one')
    return renamed


def _copy_committed_repository(destination: Path, version: str, model_prefix: str = "") -> None:
    """Copy configs and model code (not generated files) of the committed repository, each model's folder
    and config name with `model_prefix`; for IndexTTS-2.5, each model's `config_2_5.pbtxt` (where it has
    one) becomes its `config.pbtxt`."""
    if destination.resolve() == COMMITTED_REPOSITORY.resolve():
        if version == VERSION_2_5:
            raise ValueError(
                f"an IndexTTS-2.5 repository cannot be written into {COMMITTED_REPOSITORY} (its configs are "
                "the IndexTTS-2.0 ones): give --output"
            )
        if model_prefix:
            raise ValueError(f"a repository with a model prefix cannot be written into {COMMITTED_REPOSITORY} "
                             "(its folders are the unprefixed models): give --output")
        return
    for source in COMMITTED_REPOSITORY.rglob("*"):
        relative = source.relative_to(COMMITTED_REPOSITORY)
        if source.is_dir() or "__pycache__" in relative.parts or WEIGHTS_DIR in relative.parts:
            continue
        if source.suffix in (".onnx", ".data") or source.name == CONFIG_2_5:
            continue
        model = relative.parts[0]
        target = destination / f"{model_prefix}{model}" / Path(*relative.parts[1:])
        target.parent.mkdir(parents=True, exist_ok=True)
        version_config = source.with_name(CONFIG_2_5)
        if version == VERSION_2_5 and relative.name == "config.pbtxt" and version_config.is_file():
            source = version_config
        if relative == Path(model, "config.pbtxt") and model_prefix:
            target.write_text(rename_model_config(source.read_text(), model, model_prefix + model))
        else:
            shutil.copy2(source, target)


def _copy_python_model_weights(paths: CheckpointPaths, config: dict, repository: Path, model_prefix: str) -> None:
    """The Python-backend models load our networks from the official files, so they get copies of
    the files they need (config.yaml + checkpoints) in `<model>/1/weights/`, in the official layout
    (IndexTTS-2.5's s2mel: its codec.pth instead of the MaskGCT codec)."""
    gpt_files = ["config.yaml", config["gpt_checkpoint"]]
    codec = CODEC_2_5_FILE if paths.version == VERSION_2_5 else DEFAULT_SEMANTIC_CODEC
    s2mel_files = ["config.yaml", config["s2mel_checkpoint"], codec]
    for model, files in (("gpt_decoder", gpt_files), ("s2mel", s2mel_files)):
        weights = repository / f"{model_prefix}{model}" / "1" / WEIGHTS_DIR
        if weights.exists():
            shutil.rmtree(weights)
        for name in files:
            source = paths.semantic_codec if name == DEFAULT_SEMANTIC_CODEC else paths.model_dir / name
            target = weights / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)


def export_repository(
    paths: CheckpointPaths,
    repository: Path = COMMITTED_REPOSITORY,
    fp16: bool = False,
    device: str = "cpu",
    only: list[str] | None = None,
    progress: Callable[[str], None] | None = None,
    model_prefix: str = "",
) -> ExportResult:
    """Export every ONNX stage of `paths` (an IndexTTS-2.0 or 2.5 directory, by `paths.version`) into
    `repository`, verified, plus the Python models' weights.

    `only` limits the ONNX stages exported (by model name, without the prefix). `model_prefix` starts
    every model's folder and config name. Raises ExportVerificationError when a stage's ONNX output
    differs from PyTorch beyond its tolerance.
    """
    say = progress or (lambda line: print(line, file=sys.stderr, flush=True))
    check_model_prefix(model_prefix)
    repository = Path(repository)
    repository.mkdir(parents=True, exist_ok=True)
    _copy_committed_repository(repository, paths.version, model_prefix)

    say(f"loading {paths.model_dir} (IndexTTS-{paths.version})")
    # 2.5's text front-end (tiktoken, the normaliser) is the orchestrator's, not a served model's.
    options = {"with_text_frontend": False} if paths.version == VERSION_2_5 else {}
    networks = load_any_networks(paths, **options)
    stages = build_onnx_stages(networks)
    if only:
        unknown = sorted(set(only) - {stage.name for stage in stages})
        if unknown:
            raise ValueError(f"unknown stage(s) {unknown}; stages are {[stage.name for stage in stages]}")
        stages = [stage for stage in stages if stage.name in only]

    reports = []
    with torch.no_grad():
        for index, stage in enumerate(stages, start=1):
            say(f"[{index}/{len(stages)}] exporting {stage.name} ...")
            model_dir = repository / f"{model_prefix}{stage.name}"
            report = export_stage(stage, model_dir / "1" / ONNX_FILE, fp16=fp16, device=device)
            say(f"[{index}/{len(stages)}] {report.line()}")
            reports.append(report)
    _copy_python_model_weights(paths, networks.config, repository, model_prefix)
    return ExportResult(repository, reports)
