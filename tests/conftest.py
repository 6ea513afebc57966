"""Shared fixtures. The golden data (outputs of the official implementation on a tiny checkpoint)
lives outside the repository, in ../shared/golden by default, or where INDEXTTS2_GOLDEN_DIR says."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
GOLDEN_DIR = Path(os.environ.get("INDEXTTS2_GOLDEN_DIR", REPO_ROOT.parent / "shared" / "golden"))


@pytest.fixture(scope="session")
def golden_tiny() -> Path:
    """The tiny official-layout checkpoint with its golden outputs; skips when this clone has none."""
    path = GOLDEN_DIR / "indextts2-tiny"
    if not (path / "GOLDEN.md").is_file():
        pytest.skip(f"golden data not found at {path} (set INDEXTTS2_GOLDEN_DIR to the folder holding indextts2-tiny)")
    return path


@pytest.fixture(autouse=True)
def _deterministic_torch():
    torch.manual_seed(0)
    yield



@pytest.fixture(scope="session")
def demo_checkpoint(tmp_path_factory):
    """The demo preset, written once per test session."""
    from indextts2.demo import write_demo_checkpoint

    return write_demo_checkpoint(tmp_path_factory.mktemp("demo_checkpoint"))


@pytest.fixture(scope="session")
def demo_repository(tmp_path_factory, demo_checkpoint):
    """A complete model repository exported from the demo preset (ONNX verified at export)."""
    from export.repository import export_repository

    repository = tmp_path_factory.mktemp("demo_repository")
    result = export_repository(demo_checkpoint, repository, progress=lambda line: None)
    return result
