"""What the error tracker sees, end to end: the orchestrator and the Triton Python models report to a
real Sentry-protocol server (Bugsink, on loopback) — per-stage failures with their stage tags and
levels, warnings as warnings, on one trace, and never the user's text or audio."""

from __future__ import annotations

import json
import uuid

import pytest
import sentry_sdk

grpcclient = pytest.importorskip("tritonclient.grpc")

from service_client import demo_settings, service_client
from triton_models import model_event_on_trace, model_reconfigured, model_unloaded

from local_bugsink import BugsinkServer
from orchestrator.testing import speech_like_wav

FAST = {"diffusion_steps": "3", "seed": "7"}  # few flow-matching steps: the suite runs on 2 CPU cores
TEXT_MARKER = "zqxmarker" + uuid.uuid4().hex[:12]
AUDIO_MARKER = b"AUDIOMARK-" + uuid.uuid4().hex.encode()


def _tts(client, seconds: float = 6.0, text: str = "Hello there. A short sentence.", **fields):
    audio = speech_like_wav(seconds, seed=int(fields.pop("audio_seed", 1)))
    return client.post("/v1/tts", data={"text": text, **FAST, **fields},
                       files={"speaker_audio": ("voice.wav", audio, "audio/wav")})


def _events_of(bugsink_server, response, count: int) -> list[dict]:
    sentry_sdk.flush(timeout=5)
    return bugsink_server.events(wait_for=count, timeout_s=20, tags={"request_id": response.headers["X-Request-ID"]})


def test_unloaded_model_is_one_error_event_tagged_with_its_stage(service, triton_server, bugsink_server):
    with model_unloaded(triton_server, "vocoder"):
        response = _tts(service, audio_seed=11)
    assert response.status_code == 503
    (event,) = _events_of(bugsink_server, response, 1)
    assert event["level"] == "error"
    assert event["tags"]["stage"] == "vocoder" and event["tags"]["model"] == "vocoder"


def test_model_refusing_a_tensor_is_one_error_event_tagged_with_its_stage(service, triton_server, bugsink_server):
    def expect_another_width(config: dict) -> None:
        config["input"][0]["dims"] = ["-1", "7"]  # semantic_features (T, 7): the demo's are (T, 64)

    with model_reconfigured(triton_server, "emotion_conditioner", expect_another_width):
        response = _tts(service, audio_seed=12)
    assert response.status_code == 502
    (event,) = _events_of(bugsink_server, response, 1)
    assert event["level"] == "error" and event["tags"]["stage"] == "emotion_conditioner"


def test_exception_inside_a_python_model_is_reported_by_the_model_on_the_requests_trace(
    service, triton_server, bugsink_server
):
    # s2mel asks the served DiT for every step; with s2mel_estimator unloaded, that raises inside s2mel.
    def use_served_estimator(config: dict) -> None:
        config["parameters"]["estimator"]["string_value"] = "triton"

    with model_reconfigured(triton_server, "s2mel", use_served_estimator), \
            model_unloaded(triton_server, "s2mel_estimator"):
        response = _tts(service, audio_seed=13)
    assert response.status_code == 502
    assert response.json()["error"]["stage"] == "s2mel"
    (service_event,) = _events_of(bugsink_server, response, 1)
    assert service_event["tags"]["stage"] == "s2mel" and service_event["level"] == "error"
    trace_id = service_event["contexts"]["trace"]["trace_id"]

    # The model's own event: same trace, its stage tags, the full stack trace of the exception.
    sentry_sdk.flush(timeout=5)
    model_event = model_event_on_trace(bugsink_server, "s2mel", trace_id)
    assert model_event["level"] == "error" and model_event["tags"]["model"] == "s2mel"
    assert model_event["tags"]["model_version"] == "1"
    frames = model_event["data"]["exception"]["values"][-1]["stacktrace"]["frames"]
    functions = [frame.get("function") for frame in frames]
    assert "_served_velocity" in functions, functions  # the frame that raised, inside the model's batch run


def test_short_reference_audio_arrives_as_a_warning_with_its_duration(service, bugsink_server):
    response = _tts(service, seconds=3.0, audio_seed=14)
    assert response.status_code == 200
    (event,) = _events_of(bugsink_server, response, 1)
    assert event["level"] == "warning"
    assert 2.9 < float(_find(event, "actual_duration")) < 3.1


def test_refused_duration_ratio_is_an_error_level_event(service, bugsink_server):
    response = _tts(service, audio_seed=15, duration_ratio="1.6")
    assert response.status_code == 422
    assert response.json()["error"]["field"] == "duration_ratio"
    (event,) = _events_of(bugsink_server, response, 1)
    assert event["level"] == "error"


def test_no_stored_event_holds_the_users_text_or_audio(service, bugsink_server):
    audio = speech_like_wav(3.0, seed=16, extra_chunk=AUDIO_MARKER)  # short: a warning event is sent
    text = f"Please say {TEXT_MARKER} out loud."
    responses = [
        service.post("/v1/tts", data={"text": text, **FAST}, files={"speaker_audio": ("v.wav", audio, "audio/wav")}),
        service.post("/v1/tts", data={"text": text, **FAST, "duration_ratio": "9"},
                     files={"speaker_audio": ("v.wav", audio, "audio/wav")}),
    ]
    assert [r.status_code for r in responses] == [200, 422]
    for response in responses:
        _events_of(bugsink_server, response, 1)
    stored = json.dumps([event["data"] for event in bugsink_server.events(timeout_s=5)])
    assert TEXT_MARKER not in stored
    assert AUDIO_MARKER.decode() not in stored
    assert audio[44:80].hex() not in stored


def test_requests_still_succeed_when_the_error_tracker_is_down(triton_server, demo_checkpoint, tmp_path):
    stopped = BugsinkServer()
    stopped.start(timeout_s=60)
    dsn = stopped.dsn
    stopped.stop()
    settings = demo_settings(triton_server, demo_checkpoint, tmp_path / "voices", sentry_dsn=dsn,
                             triton_timeout_s=60.0, speech_diffusion_steps=3)
    with service_client(settings) as client:
        ok = _tts(client, audio_seed=17)
        short = _tts(client, seconds=3.0, audio_seed=18)  # sends a warning to the dead tracker
        refused = _tts(client, audio_seed=19, duration_ratio="2")
    assert ok.status_code == 200 and ok.content[:4] == b"RIFF"
    assert short.status_code == 200
    assert refused.status_code == 422


def _find(event: dict, key: str):
    """A value anywhere in the event's contexts / extra (where the reporter put the warning's data)."""
    for section in ("contexts", "extra"):
        for value in (event.get(section) or {}).values():
            if isinstance(value, dict) and key in value:
                return value[key]
        if key in (event.get(section) or {}):
            return event[section][key]
    raise KeyError(f"{key} not in {event.get('contexts')} / {event.get('extra')}")
