"""Our models under a prefix in a Triton repository shared with other models, on a real local tritonserver:
the demo repository exported with `--model-prefix tts_`, next to unprefixed copies of two of our models
(another version of them, as another deployment in the same repository could hold), and the orchestrator
with TRITON_MODEL_PREFIX=tts_. It synthesises through the prefixed models only (s2mel, whose DiT runs here
as the served estimator, calls tts_s2mel_estimator), while /readyz, the metrics, the errors and the Sentry
events keep the plain names the dashboards and alerts use."""

from __future__ import annotations

import io
import shutil

import numpy as np
import pytest
import sentry_sdk
import soundfile

pytest.importorskip("pytriton", reason="nvidia-pytriton (which ships tritonserver) is not installed")
grpcclient = pytest.importorskip("tritonclient.grpc")

from service_client import service_client
from triton_models import inference_count, model_event_on_trace, model_unloaded

from export.repository import export_repository, rename_model_config
from local_triton import LocalTritonServer
from orchestrator.settings import Settings
from orchestrator.testing import speech_like_wav
from orchestrator.triton_client import GPT_DECODER, PIPELINE_MODELS

PREFIX = "tts_"
OUR_MODELS = (*PIPELINE_MODELS, "s2mel_estimator")
# Unprefixed copies of two of our models, as version 7: the service must call neither (vocoder is called by
# the orchestrator, s2mel_estimator by s2mel), nor take the copy's version for its own.
UNPREFIXED_COPIES = ("vocoder", "s2mel_estimator")
COPY_VERSION = "7"
TEXT = "Hello there. This is a test of the prefixed models."
FAST = {"diffusion_steps": "3", "seed": "7"}  # few flow-matching steps: the suite runs on 2 CPU cores
ESTIMATOR_TORCH = 'key: "estimator" value: { string_value: "torch" }'


@pytest.fixture(scope="module")
def prefixed_repository(demo_checkpoint, tmp_path_factory):
    repository = tmp_path_factory.mktemp("prefixed") / "models"
    export_repository(demo_checkpoint, repository, progress=lambda _: None, model_prefix=PREFIX)
    # s2mel's DiT through the served estimator (BLS), so that s2mel's own call follows the prefix too.
    s2mel_config = repository / f"{PREFIX}s2mel" / "config.pbtxt"
    text = s2mel_config.read_text()
    assert ESTIMATOR_TORCH in text
    s2mel_config.write_text(text.replace(ESTIMATOR_TORCH, ESTIMATOR_TORCH.replace("torch", "triton")))
    for model in UNPREFIXED_COPIES:
        copy = repository / model
        shutil.copytree(repository / f"{PREFIX}{model}", copy)
        (copy / "1").rename(copy / COPY_VERSION)
        config = (copy / "config.pbtxt").read_text()
        (copy / "config.pbtxt").write_text(rename_model_config(config, f"{PREFIX}{model}", model))
    return repository


@pytest.fixture(scope="module")
def server(sentry_environment, prefixed_repository):
    server = LocalTritonServer(prefixed_repository, model_control_mode="explicit", load_models=["*"],
                               environment=sentry_environment)
    with server.start(timeout_s=240):  # start() returns the server, whose `with` stops it
        yield server


@pytest.fixture(scope="module")
def triton(server):
    return grpcclient.InferenceServerClient(server.grpc_url)


@pytest.fixture(scope="module")
def client(sentry_environment, server, demo_checkpoint, tmp_path_factory):
    """The service configured from the environment, as deployed, reporting to the session's Bugsink where
    one is installed."""
    environment = {
        "TRITON_MODEL_PREFIX": PREFIX, "TRITON_GRPC_URL": server.grpc_url,
        "CHECKPOINT_DIR": str(demo_checkpoint.model_dir), "VOICES_DIR": str(tmp_path_factory.mktemp("voices")),
        "DEVICE": "cpu", "TRITON_TIMEOUT_S": "60", "SENTRY_DSN": sentry_environment.get("SENTRY_DSN", ""),
    }
    settings = Settings.from_env(environment)
    assert settings.triton_model_prefix == PREFIX
    with service_client(settings) as client:
        yield client


def _tts(client, audio: bytes):
    data = {"text": TEXT, **FAST}
    return client.post("/v1/tts", data=data, files={"speaker_audio": ("voice.wav", audio, "audio/wav")})


def test_the_server_serves_our_models_under_the_prefix_beside_the_unprefixed_copies(server, triton):
    index = {entry["name"]: entry for entry in triton.get_model_repository_index(as_json=True)["models"]}
    assert set(index) == {PREFIX + model for model in OUR_MODELS} | set(UNPREFIXED_COPIES)
    assert {entry.get("state") for entry in index.values()} == {"READY"}
    for model in UNPREFIXED_COPIES:
        assert index[model]["version"] == COPY_VERSION
    assert server.log_errors() == ""


def test_readyz_and_the_release_name_the_plain_models_with_the_prefixed_versions(client):
    response = client.get("/readyz")
    assert response.status_code == 200, response.text
    assert sorted(response.json()["models"]) == sorted(PIPELINE_MODELS)
    # Version 1 for every model: the unprefixed vocoder (version 7) is not ours.
    assert client.app.state.release.endswith("+indextts2.0.models." + ".".join(["1"] * len(PIPELINE_MODELS)))


def test_synthesis_runs_through_the_prefixed_models_only(client, server):
    counted = [PREFIX + model for model in OUR_MODELS if model != GPT_DECODER] + list(UNPREFIXED_COPIES)
    before = {name: inference_count(server, name) for name in counted}
    response = _tts(client, speech_like_wav(6.0, seed=21))
    assert response.status_code == 200, response.text
    samples, rate = soundfile.read(io.BytesIO(response.content), dtype="float32")
    assert rate == 22050 and samples.size > 0 and np.abs(samples).max() > 0
    # A prefixed model's run is waited for (up to 10 s); an unprefixed copy's count is read as it is.
    after = {name: inference_count(server, name, before[name] + 1 if name.startswith(PREFIX) else 0)
             for name in counted}
    # gpt_decoder (decoupled) is left out of the counts: the repository has no other decoder than ours.
    for model in OUR_MODELS:
        if model != GPT_DECODER:
            assert after[PREFIX + model] > before[PREFIX + model], model
    for model in UNPREFIXED_COPIES:
        assert after[model] == before[model] == 0, model
    metrics = client.get("/metrics").text
    assert 'tts_stage_seconds_count{stage="vocoder"}' in metrics
    assert 'tts_stage_in_flight{model="gpt_decoder"}' in metrics
    assert '="tts_' not in metrics  # no label carries a served name


def test_an_unloaded_prefixed_model_is_503_under_its_plain_name_and_no_copy_stands_in(client, server):
    with model_unloaded(server, PREFIX + "vocoder"):
        ready = client.get("/readyz")
        response = _tts(client, speech_like_wav(6.0, seed=22))
    assert ready.status_code == 503 and ready.json()["not_ready"] == ["vocoder"]
    assert response.status_code == 503
    error = response.json()["error"]
    assert (error["type"], error["stage"]) == ("model_unavailable", "vocoder")
    assert f"{PREFIX}vocoder" in error["message"]  # the message names the model to load on Triton
    assert inference_count(server, "vocoder") == 0


def _error_events(bugsink_server, response) -> list[dict]:
    sentry_sdk.flush(timeout=5)
    stored = bugsink_server.events(wait_for=1, timeout_s=20, tags={"request_id": response.headers["X-Request-ID"]})
    return [event for event in stored if event["level"] == "error"]


def test_the_sentry_event_of_a_prefixed_model_carries_the_plain_names(client, server, bugsink_server):
    with model_unloaded(server, PREFIX + "campplus"):
        response = _tts(client, speech_like_wav(6.0, seed=23))
    assert response.status_code == 503
    (event,) = _error_events(bugsink_server, response)
    assert event["tags"]["stage"] == "campplus" and event["tags"]["model"] == "campplus"


def test_prefixed_s2mel_calls_its_prefixed_estimator_and_reports_under_the_plain_name(client, server,
                                                                                     bugsink_server):
    """With tts_s2mel_estimator unloaded, tts_s2mel fails, although an unprefixed s2mel_estimator is there:
    its BLS call names the prefixed one. The model's own event is tagged s2mel, like the service's."""
    with model_unloaded(server, PREFIX + "s2mel_estimator"):
        response = _tts(client, speech_like_wav(6.0, seed=24))
    assert response.status_code == 502
    error = response.json()["error"]
    assert error["stage"] == "s2mel" and f"{PREFIX}s2mel_estimator" in error["message"]
    (service_event,) = _error_events(bugsink_server, response)
    assert service_event["tags"]["stage"] == "s2mel" and service_event["tags"]["model"] == "s2mel"
    trace_id = service_event["contexts"]["trace"]["trace_id"]
    model_event = model_event_on_trace(bugsink_server, "s2mel", trace_id)  # from tts_s2mel, tagged with the plain name
    assert model_event["tags"]["model"] == "s2mel" and model_event["tags"]["model_version"] == "1"
