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


@pytest.fixture(scope="session")
def golden_tiny_2_5() -> Path:
    """The tiny IndexTTS-2.5 checkpoint with the official code's outputs; skips when this clone has none."""
    path = GOLDEN_DIR / "indextts2_5-tiny"
    if not (path / "GOLDEN.md").is_file():
        pytest.skip(f"golden data not found at {path} (set INDEXTTS2_GOLDEN_DIR to the folder holding indextts2_5-tiny)")
    return path


@pytest.fixture(autouse=True)
def _deterministic_torch():
    torch.manual_seed(0)
    yield



@pytest.fixture(scope="session")
def demo_checkpoint(tmp_path_factory):
    """The demo preset, written once per test session."""
    from indextts2.presets import write_demo_checkpoint

    return write_demo_checkpoint(tmp_path_factory.mktemp("demo_checkpoint"))


@pytest.fixture(scope="session")
def demo_repository(tmp_path_factory, demo_checkpoint):
    """A complete model repository exported from the demo preset (ONNX verified at export)."""
    from export.repository import export_repository

    repository = tmp_path_factory.mktemp("demo_repository")
    result = export_repository(demo_checkpoint, repository, progress=lambda line: None)
    return result


# Test-only copies of two served models, loaded next to the real ones by the session's server:
# s2mel whose DiT is the served s2mel_estimator (BLS), and a one-slot gpt_decoder with a one-place
# queue whose GPT never emits the stop code (to reach the limits, and to run a request for minutes).
LONG_MAX_CODES = 100_000


def _add_test_models(repository, demo_stop_code: int, tmp_path_factory) -> list[str]:
    import shutil

    from indextts2.presets import write_demo_checkpoint

    bls = repository / "s2mel_bls"
    shutil.copytree(repository / "s2mel", bls)
    config = (bls / "config.pbtxt").read_text().replace('name: "s2mel"', 'name: "s2mel_bls"')
    (bls / "config.pbtxt").write_text(config.replace('string_value: "torch"', 'string_value: "triton"'))

    small = repository / "gpt_decoder_one_slot"
    shutil.copytree(repository / "gpt_decoder", small)
    config = (small / "config.pbtxt").read_text().replace('name: "gpt_decoder"', 'name: "gpt_decoder_one_slot"')
    config = config.replace('key: "max_slots" value: { string_value: "16" }', 'key: "max_slots" value: { string_value: "1" }')
    config = config.replace('key: "max_waiting" value: { string_value: "64" }',
                            'key: "max_waiting" value: { string_value: "1" }')
    (small / "config.pbtxt").write_text(config)
    long_checkpoint = write_demo_checkpoint(tmp_path_factory.mktemp("long_demo"), max_mel_tokens=LONG_MAX_CODES + 1)
    shutil.copy2(long_checkpoint.model_dir / "config.yaml", small / "1" / "weights" / "config.yaml")
    state = torch.load(long_checkpoint.model_dir / "gpt.pth", weights_only=True)
    state["mel_head.bias"][demo_stop_code] = -1e4
    torch.save(state, small / "1" / "weights" / "gpt.pth")
    return ["s2mel_bls", "gpt_decoder_one_slot"]


SERVED_MODELS = [
    "semantic_encoder", "semantic_codec", "campplus", "speaker_conditioner", "emotion_conditioner",
    "length_regulator", "s2mel_estimator", "s2mel", "vocoder", "gpt_decoder",
]


@pytest.fixture(scope="session")
def triton_server(request, demo_repository, tmp_path_factory):
    """One real local tritonserver for the whole session, serving every model of the demo repository
    (explicit model control, so tests may unload and load models) plus the test-only copies above.
    Its Python models report their exceptions to the session's Bugsink, where one is installed."""
    pytest.importorskip("tritonclient.grpc")
    from indextts2.config import load_config
    from local_triton import LocalTritonServer

    environment = {}
    try:
        environment["SENTRY_DSN"] = request.getfixturevalue("bugsink_server").dsn
    except pytest.skip.Exception:
        pass
    repository = demo_repository.repository
    stop_code = load_config(repository / "gpt_decoder" / "1" / "weights" / "config.yaml")["gpt"]["stop_mel_token"]
    extra = _add_test_models(repository, stop_code, tmp_path_factory)
    server = LocalTritonServer(repository, model_control_mode="explicit", load_models=SERVED_MODELS + extra,
                               environment=environment)
    server.start(timeout_s=180)
    try:
        yield server
    finally:
        server.stop()


# ----- local Bugsink: a real Sentry-protocol server (local_bugsink) ------------------------------------------------
@pytest.fixture(scope="session")
def bugsink_server():
    """One local Bugsink server for the whole session: report to `.dsn`, read back with `.events(wait_for=...,
    tags=...)`. Tests share it, so each one filters the events by a tag of its own (e.g. a uuid). Skips where
    the Bugsink environment (`make bugsink-env`, .venv-bugsink) is missing."""
    from local_bugsink import BugsinkNotInstalledError, BugsinkServer

    server = BugsinkServer()
    try:
        server.start(timeout_s=120)
    except BugsinkNotInstalledError as error:
        pytest.skip(str(error))
    try:
        yield server
    finally:
        server.stop()
# ----- end of local Bugsink ------------------------------------------------------------------------------------------


# ----- IndexTTS-2.5: the demo-2.5 preset, its exported repository and its own tritonserver ----------------------------
@pytest.fixture(scope="session")
def demo_checkpoint_2_5(tmp_path_factory):
    """The demo-2.5 preset (tiny random IndexTTS-2.5 checkpoint), written once per test session."""
    from indextts2.presets_2_5 import write_demo_checkpoint_2_5

    return write_demo_checkpoint_2_5(tmp_path_factory.mktemp("demo_checkpoint_2_5"))


@pytest.fixture(scope="session")
def demo_repository_2_5(tmp_path_factory, demo_checkpoint_2_5):
    """A complete IndexTTS-2.5 model repository exported from demo-2.5 (ONNX verified at export)."""
    from export.repository import export_repository

    repository = tmp_path_factory.mktemp("demo_repository_2_5")
    return export_repository(demo_checkpoint_2_5, repository, progress=lambda line: None)


@pytest.fixture(scope="session")
def triton_server_2_5(request, demo_repository_2_5):
    """A real local tritonserver of its own serving the demo-2.5 repository (every model in it)."""
    pytest.importorskip("tritonclient.grpc")
    from local_triton import LocalTritonServer

    environment = {}
    try:
        environment["SENTRY_DSN"] = request.getfixturevalue("bugsink_server").dsn
    except pytest.skip.Exception:
        pass
    server = LocalTritonServer(demo_repository_2_5.repository, environment=environment)
    server.start(timeout_s=180)
    try:
        yield server
    finally:
        server.stop()
