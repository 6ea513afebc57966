"""Shared fixtures. The golden data (outputs of the official implementation on a tiny checkpoint)
lives outside the repository, in ../shared/golden by default, or where INDEXTTS2_GOLDEN_DIR says."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
GOLDEN_DIR = Path(os.environ.get("INDEXTTS2_GOLDEN_DIR", REPO_ROOT.parent / "shared" / "golden"))


def _golden(name: str) -> Path:
    """GOLDEN_DIR / name; skips the test when this clone has no such golden set."""
    path = GOLDEN_DIR / name
    if not (path / "GOLDEN.md").is_file():
        pytest.skip(f"golden data not found at {path} (set INDEXTTS2_GOLDEN_DIR to the folder holding {name})")
    return path


@pytest.fixture(scope="session")
def golden_tiny() -> Path:
    """The tiny official-layout checkpoint with its golden outputs; skips when this clone has none."""
    return _golden("indextts2-tiny")


@pytest.fixture(scope="session")
def golden_tiny_2_5() -> Path:
    """The tiny IndexTTS-2.5 checkpoint with the official code's outputs; skips when this clone has none."""
    return _golden("indextts2_5-tiny")


@pytest.fixture(autouse=True)
def _deterministic_torch():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="module")
def one_torch_thread():
    """Torch on one thread for a module (`pytestmark = pytest.mark.usefixtures("one_torch_thread")`). The
    models of the tests are tiny: on shared busy cores, OpenMP hand-offs between two threads made each decode
    step ~50x slower than one thread does."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def demo_checkpoint(tmp_path_factory):
    """The demo preset, written once per test session."""
    from indextts2.presets import write_demo_checkpoint

    return write_demo_checkpoint(tmp_path_factory.mktemp("demo_checkpoint"))


def _export(checkpoint, tmp_path_factory, name: str):
    """A complete model repository exported from `checkpoint` into a new temporary folder `name` (ONNX
    verified at export)."""
    from export.repository import export_repository

    return export_repository(checkpoint, tmp_path_factory.mktemp(name), progress=lambda line: None)


@pytest.fixture(scope="session")
def demo_repository(tmp_path_factory, demo_checkpoint):
    """The demo preset's model repository, its s2mel on one instance: the tests that hold s2mel with a long
    request need to know where the next one waits. test_triton_s2mel also serves the shipped two-instance
    config."""
    exported = _export(demo_checkpoint, tmp_path_factory, "demo_repository")
    config = exported.repository / "s2mel" / "config.pbtxt"
    text, found = re.subn(r"^instance_group \[ \{ count: 2 \} \]$", "instance_group [ { count: 1 } ]",
                          config.read_text(), flags=re.MULTILINE)
    assert found == 1, "s2mel's instance_group is not the shipped one"
    config.write_text(text)
    return exported


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
def sentry_environment(request) -> dict[str, str]:
    """SENTRY_DSN of the session's Bugsink, where one is installed (else nothing): the environment of servers
    whose Python models report their exceptions there."""
    try:
        return {"SENTRY_DSN": request.getfixturevalue("bugsink_server").dsn}
    except pytest.skip.Exception:
        return {}


@pytest.fixture(scope="session")
def triton_server(sentry_environment, demo_repository, tmp_path_factory):
    """One real local tritonserver for the whole session, serving every model of the demo repository
    (explicit model control, so tests may unload and load models) plus the test-only copies above.
    Its Python models report their exceptions to the session's Bugsink, where one is installed."""
    pytest.importorskip("tritonclient.grpc")
    from indextts2.config import load_config
    from local_triton import LocalTritonServer

    repository = demo_repository.repository
    stop_code = load_config(repository / "gpt_decoder" / "1" / "weights" / "config.yaml")["gpt"]["stop_mel_token"]
    extra = _add_test_models(repository, stop_code, tmp_path_factory)
    server = LocalTritonServer(repository, model_control_mode="explicit", load_models=SERVED_MODELS + extra,
                               environment=sentry_environment)
    with server.start(timeout_s=180):  # start() returns the server, whose `with` stops it
        yield server


@pytest.fixture(scope="module")
def service(triton_server, bugsink_server, demo_checkpoint, tmp_path_factory):
    """The service, in a test client, on the session's tritonserver, reporting to the session's Bugsink
    (integration tests do not mock Sentry); one per module. Three flow-matching steps for speech: the suite
    runs on 2 CPU cores."""
    from service_client import demo_settings, service_client

    settings = demo_settings(triton_server, demo_checkpoint, tmp_path_factory.mktemp("voices"),
                             sentry_dsn=bugsink_server.dsn, triton_timeout_s=60.0, speech_diffusion_steps=3)
    with service_client(settings) as client:
        yield client


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
    """The demo-2.5 preset's model repository (IndexTTS-2.5)."""
    return _export(demo_checkpoint_2_5, tmp_path_factory, "demo_repository_2_5")


@pytest.fixture(scope="session")
def triton_server_2_5(sentry_environment, demo_repository_2_5):
    """A real local tritonserver of its own serving the demo-2.5 repository (every model in it)."""
    pytest.importorskip("tritonclient.grpc")
    from local_triton import LocalTritonServer

    server = LocalTritonServer(demo_repository_2_5.repository, environment=sentry_environment)
    with server.start(timeout_s=180):
        yield server
