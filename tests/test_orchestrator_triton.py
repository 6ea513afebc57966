"""The service against a real local tritonserver serving the exported demo repository (one server for the
module): synthesis end to end, streaming, voices, caching, and faults made inside Triton (a model
unloaded through explicit model control, a model that refuses the tensors it is sent), each checked for
its HTTP status and its one Sentry event. Sentry envelopes are captured in-process (the tests against a
real Bugsink server live elsewhere)."""

from __future__ import annotations

import asyncio
import io

import pytest
import sentry_sdk
import soundfile
from triton_models import inference_count, model_reconfigured, model_unloaded

from orchestrator.testing import speech_like_wav
from orchestrator.triton_client import PIPELINE_MODELS

TEXT = "Hello there. This is a test of the speech service, in two sentences."
FAST = {"diffusion_steps": "3", "seed": "7"}  # few flow-matching steps: the suite runs on 2 CPU cores


@pytest.fixture(scope="module")
def server(triton_server):
    """The session's tritonserver: the fault tests below unload or reconfigure a model and restore it."""
    return triton_server


@pytest.fixture()
def events(bugsink_server):
    """The error-level events Bugsink stored for one response's request, once `count` have arrived."""
    def of(response, count: int) -> list[dict]:
        sentry_sdk.flush(timeout=5)
        stored = bugsink_server.events(wait_for=count, timeout_s=20,
                                       tags={"request_id": response.headers["X-Request-ID"]})
        return [event for event in stored if event["level"] == "error"]

    return of


def _tts(client, audio: bytes, **fields):
    data = {"text": TEXT, **FAST, **fields}
    return client.post("/v1/tts", data=data, files={"speaker_audio": ("voice.wav", audio, "audio/wav")})


# --- readiness ---------------------------------------------------------------------------------------


def test_readyz_reports_every_model_of_the_pipeline(service):
    response = service.get("/readyz")
    body = response.json()
    assert body["triton_live"] is True
    assert body["not_ready"] == []
    assert response.status_code == 200
    # The release names every model's version, as Triton reported them at start-up.
    assert service.app.state.release.endswith("+indextts2.0.models." + ".".join(["1"] * len(PIPELINE_MODELS)))


def test_readyz_names_an_unloaded_model(service, server):
    with model_unloaded(server, "vocoder"):
        response = service.get("/readyz")
    assert response.status_code == 503
    assert "vocoder" in response.json()["not_ready"]


# --- synthesis -----------------------------------------------------------------------------------------


def test_tts_returns_a_valid_wav_of_plausible_length(service, events):
    response = _tts(service, speech_like_wav(6.0, seed=11))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "audio/wav"
    samples, rate = soundfile.read(io.BytesIO(response.content), dtype="int16")
    info = soundfile.info(io.BytesIO(response.content))
    assert (rate, info.channels, info.subtype) == (22050, 1, "PCM_16")
    seconds = samples.shape[0] / rate
    assert float(response.headers["x-audio-seconds"]) == pytest.approx(seconds, abs=1e-3)
    segments = len(asyncio.run(service.app.state.service.pipeline.segment_text(TEXT)))
    assets = service.app.state.service.assets
    longest = segments * (assets.default_max_codes * 1.72 * 256 / 22050 + 0.2)
    assert 0.0 < seconds <= longest
    assert events(response, 0) == []


def test_registered_voice_with_the_emotion_of_another_through_both_routes(service):
    for name, seed in (("alice", 21), ("bob", 22)):
        assert service.post("/v1/voices", data={"name": name},
                            files={"audio": ("v.wav", speech_like_wav(5.5, seed=seed), "audio/wav")}).status_code == 201
    try:
        response = service.post("/v1/tts", data={"text": TEXT, **FAST, "voice": "alice", "emotion_voice": "bob",
                                                 "emo_alpha": "0.7"})
        assert response.status_code == 200, response.text
        speech = service.post("/v1/audio/speech", json={"input": "Good morning.", "voice": "alice",
                                                        "response_format": "pcm", "speed": 1.25})
        assert speech.status_code == 200 and speech.headers["content-type"] == "audio/pcm"
        assert len(speech.content) > 0 and len(speech.content) % 2 == 0
    finally:
        for name in ("alice", "bob"):
            service.delete(f"/v1/voices/{name}")


def _speaker_cache_lookups(service, result: str) -> float:
    """tts_conditioning_cache_total{kind="speaker", result=...} from the service's own registry."""
    value = service.app.state.metrics.registry.get_sample_value(
        "tts_conditioning_cache_total", {"kind": "speaker", "result": result})
    return value or 0.0


def test_a_voice_is_stored_once_and_its_conditioning_reused(service, server):
    audio = speech_like_wav(5.5, seed=31)
    encoder_runs = inference_count(server, "semantic_encoder")
    lookups = {result: _speaker_cache_lookups(service, result) for result in ("miss", "hit")}
    for name in ("carol", "carol-copy"):
        response = service.post("/v1/voices", data={"name": name}, files={"audio": ("c.wav", audio, "audio/wav")})
        assert response.status_code == 201, response.text
    # The first: its prompt, and its audio read as the emotion reference; the second hit the cache.
    assert inference_count(server, "semantic_encoder", encoder_runs + 2) == encoder_runs + 2
    for result in ("miss", "hit"):
        assert _speaker_cache_lookups(service, result) == lookups[result] + 1, result
    voices_dir = service.app.state.settings.voices_dir
    assert len(list((voices_dir / "audio").iterdir())) == 1
    listed = service.get("/v1/voices").json()["voices"]
    assert [voice["name"] for voice in listed] == ["carol", "carol-copy"]
    assert service.post("/v1/voices", data={"name": "carol"},
                        files={"audio": ("c.wav", audio, "audio/wav")}).status_code == 409
    for name in ("carol", "carol-copy"):
        assert service.delete(f"/v1/voices/{name}").status_code == 204
    assert list((voices_dir / "audio").iterdir()) == []


# --- faults inside Triton ------------------------------------------------------------------------------


def test_unloaded_model_is_503_and_one_event_tagged_with_its_stage(service, server, events):
    with model_unloaded(server, "campplus"):
        response = _tts(service, speech_like_wav(6.0, seed=41))
    assert response.status_code == 503
    error = response.json()["error"]
    assert (error["type"], error["stage"]) == ("model_unavailable", "campplus")
    (event,) = events(response, 1)
    assert event["tags"]["stage"] == "campplus" and event["tags"]["model"] == "campplus"
    assert event["tags"]["model_version"] == "1"
    assert event["fingerprint"] == ["campplus", "model_unavailable"]


def test_model_refusing_its_tensors_is_502_and_one_event_tagged_with_its_stage(service, server, events):
    def expect_another_width(config: dict) -> None:
        config["input"][0]["dims"] = ["-1", "7"]  # semantic_features (T, 7): ours are (T, 64)

    with model_reconfigured(server, "speaker_conditioner", expect_another_width):
        response = _tts(service, speech_like_wav(6.0, seed=42))
    assert response.status_code == 502
    error = response.json()["error"]
    assert (error["type"], error["stage"]) == ("model_error", "speaker_conditioner")
    assert "unexpected shape" in error["message"]
    (event,) = events(response, 1)
    assert event["tags"]["stage"] == "speaker_conditioner"
    assert event["fingerprint"] == ["speaker_conditioner", "model_error"]


def test_decoder_missing_is_503_tagged_gpt_decoder(service, server, events):
    """With gpt_decoder unloaded a request fails at that stage, once."""
    with model_unloaded(server, "gpt_decoder"):
        response = _tts(service, speech_like_wav(6.0, seed=43))
    assert response.status_code == 503
    assert response.json()["error"]["stage"] == "gpt_decoder"
    (event,) = events(response, 1)
    assert event["tags"]["stage"] == "gpt_decoder"
