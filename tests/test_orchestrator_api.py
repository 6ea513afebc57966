"""The service's HTTP contract and its Sentry events, without a Triton server: validation answers, error
mapping, event tags/levels/fingerprints and privacy. Triton is an address where nothing listens, so a
request that passes validation fails at its first Triton stage (503), which is itself under test.
Sentry envelopes are captured in-process."""

from __future__ import annotations

import base64
import io
import json
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable

import numpy as np
import pytest
import sentry_sdk
import soundfile
from fastapi import FastAPI, Response
from service_client import service_client
from tritonclient.utils import InferenceServerException

from local_triton import find_free_port
from orchestrator.app import create_app
from orchestrator.errors import ModelError, ModelOutOfMemoryError, ModelOverloadedError, ModelUnavailableError
from orchestrator.metrics import ServiceMetrics
from orchestrator.reporting import Reporter, scrub_event
from orchestrator.responses import audio_response, sse_audio_response
from orchestrator.service import AudioStream
from orchestrator.settings import Settings, SettingsError
from orchestrator.testing import CapturingTransport, make_test_client, speech_like_wav
from orchestrator.triton_client import TritonStages
from orchestrator.wav import pcm16, wav_bytes, wav_header

TEXT_MARKER = "ZQXJ-SECRET-TEXT-MARKER-4711"
AUDIO_MARKER = b"AUDIO-MARKER-BYTES-0xC0FFEE"
DSN = "http://public@127.0.0.1:9/1"


@pytest.fixture(scope="module")
def voice_wav() -> bytes:
    return speech_like_wav(6.0, seed=1)


@pytest.fixture()
def transport():
    transport = CapturingTransport()
    yield transport
    sentry_sdk.init()  # no DSN: the SDK is off again for the other tests


def _settings(demo_checkpoint, tmp_path, transport=None, **overrides) -> Settings:
    values = {
        "checkpoint_dir": demo_checkpoint.model_dir, "triton_grpc_url": f"127.0.0.1:{find_free_port()}",
        "voices_dir": tmp_path / "voices", "max_text_chars": 200, "max_upload_bytes": 512 * 1024,
        "sentry_dsn": DSN if transport is not None else "", "sentry_transport": transport, "device": "cpu",
        "triton_timeout_s": 5.0,
    }
    values.update(overrides)
    return Settings(**values)


@pytest.fixture()
def client(demo_checkpoint, tmp_path, transport):
    with make_test_client(create_app(_settings(demo_checkpoint, tmp_path, transport))) as client:
        yield client


def _tts(client, voice: bytes | None, **fields):
    data = {"text": "Hello there, this is a test.", **{k: str(v) for k, v in fields.items()}}
    files = {"speaker_audio": ("voice.wav", voice, "audio/wav")} if voice is not None else None
    return client.post("/v1/tts", data=data, files=files)


def _error(response) -> dict:
    body = response.json()
    assert set(body) == {"error"}, body
    return body["error"]


def _errors(transport) -> list[dict]:
    return [event for event in transport.events if event.get("level") == "error"]


# --- validation: each case its 4xx, its field and its limit; no stack trace, no event ---------------


@pytest.mark.parametrize("text, fragment", [("", "text"), ("   ", "text is empty"), ("x" * 201, "limit is 200")])
def test_empty_or_over_long_text_is_422_naming_the_field(client, transport, voice_wav, text, fragment):
    response = _tts(client, voice_wav, text=text)
    assert response.status_code == 422
    error = _error(response)
    assert error["field"] == "text" and fragment in error["message"]
    assert transport.events == []


def test_text_with_nothing_to_speak_is_422(client, voice_wav):
    response = _tts(client, voice_wav, text="!!! ... ???")
    assert response.status_code == 422
    assert _error(response)["field"] == "text"
    assert "!!!" not in response.text  # the message does not echo the text


def test_missing_speaker_audio_is_422(client):
    response = _tts(client, None)
    assert response.status_code == 422
    assert _error(response)["field"] == "speaker_audio"


@pytest.mark.parametrize("payload, fragment", [(b"", "empty"), (b"not audio at all" * 100, "WAV, FLAC or OGG")])
def test_empty_or_undecodable_audio_is_422(client, payload, fragment):
    response = _tts(client, payload)
    assert response.status_code == 422
    error = _error(response)
    assert error["field"] == "speaker_audio" and fragment in error["message"]


def test_audio_shorter_than_half_a_second_is_422(client):
    response = _tts(client, speech_like_wav(0.2))
    assert response.status_code == 422
    assert _error(response)["limit"] == ">= 0.5 s"


def test_audio_over_the_upload_limit_is_413_naming_the_field(client):
    response = _tts(client, speech_like_wav(12.0))  # 576 KB > 512 KiB
    assert response.status_code == 413
    error = _error(response)
    assert error["field"] == "speaker_audio" and error["limit"] == f"{512 * 1024} bytes"


def test_request_body_over_the_limit_is_413_before_it_is_read(client):
    response = client.post("/v1/tts", content=b"x" * (2 * 512 * 1024 + 1024 * 1024 + 1),
                           headers={"content-type": "multipart/form-data; boundary=x"})
    assert response.status_code == 413
    assert _error(response)["type"] == "payload_too_large"


@pytest.mark.parametrize("ratio", ["2", "0.5", "nan", "inf", "fast"])
def test_invalid_duration_ratio_is_422_and_one_error_event(client, transport, voice_wav, ratio):
    response = _tts(client, voice_wav, duration_ratio=ratio)
    assert response.status_code == 422
    error = _error(response)
    assert error["field"] == "duration_ratio"
    assert ratio in ("fast", "nan", "inf") or error["limit"] == ">= 0.75" or error["limit"] == "<= 1.25"
    events = transport.events
    assert len(events) == 1, transport.describe()
    assert events[0]["level"] == "error"
    assert events[0]["tags"]["stage"] == "validation" and events[0]["tags"]["field"] == "duration_ratio"
    assert events[0]["fingerprint"] == ["validation", "invalid_duration_ratio"]


@pytest.mark.parametrize("vector, fragment", [
    ("0.1,0.2", "8 weights"), ("2,0,0,0,0,0,0,0", "[0, 1]"), ("0.5,0.5,0.5,0,0,0,0,0", "sum"),
    ("0,0,0,0,0,0,0,nan", "[0, 1]"), ("[0,0,0,0,0,0.2,0.1]", "8 weights"), ("happy", "8 numbers"),
])
def test_emotion_vector_of_wrong_length_or_range_is_422(client, transport, voice_wav, vector, fragment):
    response = _tts(client, voice_wav, emotion_vector=vector)
    assert response.status_code == 422
    error = _error(response)
    assert error["field"] == "emotion_vector" and fragment in error["message"]
    assert transport.events == []


@pytest.mark.parametrize("field, value", [("emo_alpha", "1.5"), ("top_p", "0"), ("diffusion_steps", "0"),
                                          ("max_codes", "0")])
def test_out_of_range_controls_are_422_with_the_limit(client, voice_wav, field, value):
    response = _tts(client, voice_wav, **{field: value})
    assert response.status_code == 422
    error = _error(response)
    assert error["field"] == field and error["limit"]


def test_max_codes_beyond_the_gpt_limit_is_422(client, voice_wav):
    limit = client.app.state.service.assets.max_codes_limit  # the GPT's mel positions, from config.yaml
    response = _tts(client, voice_wav, max_codes=limit + 1)
    assert response.status_code == 422
    assert _error(response) | {"request_id": None} == {
        "type": "invalid_request", "message": f"max_codes must be at most {limit} for this model, got {limit + 1}",
        "field": "max_codes", "limit": f"1 to {limit}", "stage": None, "request_id": None,
    }


def test_unknown_form_field_is_422(client, voice_wav):
    response = _tts(client, voice_wav, emotion_vectr="0,0,0,0,0,0,0,0")
    assert response.status_code == 422
    assert _error(response)["field"] == "emotion_vectr"


def test_openai_unsupported_response_format_is_400_with_a_clear_message(client, transport):
    response = client.post("/v1/audio/speech", json={"input": "Hi there", "voice": "alice", "response_format": "mp3"})
    assert response.status_code == 400
    error = _error(response)
    assert error["field"] == "response_format" and "'mp3' is not supported" in error["message"]
    assert transport.events == []


def test_openai_speed_outside_its_range_is_422_and_reported(client, transport):
    response = client.post("/v1/audio/speech", json={"input": "Hi there", "voice": "alice", "speed": 2.0})
    assert response.status_code == 422
    assert _error(response)["field"] == "speed"
    assert [event["tags"]["field"] for event in _errors(transport)] == ["speed"]


def test_unknown_voice_is_404(client):
    response = client.post("/v1/audio/speech", json={"input": "Hi there", "voice": "nobody"})
    assert response.status_code == 404
    assert _error(response)["type"] == "voice_not_found"
    assert client.delete("/v1/voices/nobody").status_code == 404


def test_unknown_route_is_a_json_404(client):
    response = client.get("/v1/nothing")
    assert response.status_code == 404 and _error(response)["type"] == "not_found"


# --- Triton failures and events ---------------------------------------------------------------------


def test_triton_unreachable_is_503_and_one_event_tagged_with_the_stage(client, transport, voice_wav):
    response = _tts(client, voice_wav, duration_ratio=1.1)
    assert response.status_code == 503
    assert response.headers["retry-after"]
    error = _error(response)
    assert error["type"] == "triton_unavailable" and error["stage"] == "semantic_encoder"
    events = _errors(transport)
    assert len(events) == 1, transport.describe()
    event = events[0]
    assert event["tags"]["stage"] == "semantic_encoder"
    assert event["tags"]["model"] == "semantic_encoder"
    assert event["tags"]["model_version"] == "unknown"
    assert event["tags"]["request_id"] == error["request_id"] == response.headers["x-request-id"]
    assert event["fingerprint"] == ["semantic_encoder", "triton_unavailable"]
    meta = event["contexts"]["tts_request"]
    assert meta["text_chars"] == len("Hello there, this is a test.")
    assert meta["speaker_audio_seconds"] == 6.0 and meta["duration_ratio"] == 1.1
    assert meta["batch_size"] == 1 and meta["device"] == "cpu"
    assert event["release"].startswith("indextts2-orchestrator@")


def test_short_reference_audio_is_served_and_reported_as_a_warning(client, transport):
    _tts(client, speech_like_wav(2.5))
    warnings = [event for event in transport.events if event.get("level") == "warning"]
    assert len(warnings) == 1, transport.describe()
    assert warnings[0]["fingerprint"] == ["reference_audio", "short_reference_audio"]
    assert warnings[0]["extra"]["actual_duration"] == 2.5


def test_validation_errors_send_no_event_and_info_stays_local(client, transport, voice_wav):
    assert _tts(client, voice_wav, text="").status_code == 422
    assert transport.events == []


def test_no_event_holds_the_text_the_audio_or_credentials(client, transport):
    audio = speech_like_wav(3.0, extra_chunk=AUDIO_MARKER)
    text = f"Please read {TEXT_MARKER} aloud, slowly."
    headers = {"Authorization": f"Bearer {TEXT_MARKER}", "Cookie": f"session={TEXT_MARKER}"}
    files = {"speaker_audio": ("voice.wav", audio, "audio/wav"), "emotion_audio": ("emo.wav", audio, "audio/wav")}
    for ratio in ("1.0", "9"):  # a Triton failure + a short-audio warning, then a refused duration_ratio
        client.post("/v1/tts", data={"text": text, "duration_ratio": ratio}, files=files, headers=headers)
    client.post("/v1/audio/speech", json={"input": text, "voice": "nobody", "speed": 3}, headers=headers)
    levels = sorted(event["level"] for event in transport.events)
    assert levels == ["error", "error", "error", "warning"], transport.describe()
    wire = transport.serialized()
    assert TEXT_MARKER.encode() not in wire
    for fragment in (AUDIO_MARKER, AUDIO_MARKER.hex().encode(), b"QVVESU8tTUFSS0VS"):  # raw, hex, base64
        assert fragment not in wire
    assert b"Bearer" not in wire


def test_scrubber_keeps_only_allowlisted_request_metadata_and_removes_number_runs():
    event = {
        "request": {"method": "POST", "url": "http://127.0.0.1:8000/v1/tts?token=1", "data": "text=hello",
                    "cookies": {"a": "b"}, "query_string": "token=1", "env": {"REMOTE_ADDR": "10.1.2.3"},
                    "headers": {"Authorization": "Bearer x", "X-Api-Key": "k", "User-Agent": "curl",
                                "X-Forwarded-For": "10.1.2.3", "X-Custom": "c", "Content-Type": "audio/wav",
                                "content-length": "12"}},
        "user": {"ip_address": "10.1.2.3"},
        "exception": {"values": [{"value": "bad text_ids [5, 17, 99, 3, 8, 12, 44, 71, 2]"}]},
    }
    scrubbed = scrub_event(event)
    assert scrubbed["request"] == {"method": "POST", "url": "http://127.0.0.1:8000/v1/tts",
                                   "headers": {"Content-Type": "audio/wav", "content-length": "12"}}
    assert "user" not in scrubbed
    assert "17, 99" not in json.dumps(scrubbed)


def test_sentry_server_down_does_not_slow_or_change_requests(demo_checkpoint, tmp_path, voice_wav):
    settings = _settings(demo_checkpoint, tmp_path, sentry_dsn=f"http://public@127.0.0.1:{find_free_port()}/1")
    with service_client(settings) as client:
        started = time.perf_counter()
        responses = [_tts(client, voice_wav, duration_ratio="3"), _tts(client, voice_wav)]
        elapsed = time.perf_counter() - started
        assert [r.status_code for r in responses] == [422, 503]
        assert client.get("/healthz").json() == {"status": "ok"}
    assert elapsed < 5.0


def test_out_of_memory_event_carries_gpu_and_batch_size(demo_checkpoint, tmp_path, transport):
    settings = _settings(demo_checkpoint, tmp_path, transport, gpu_model="NVIDIA H200", gpu_total_memory="143771 MiB")
    create_app(settings)  # initialises Sentry with the capturing transport
    metrics = ServiceMetrics()
    stages = TritonStages("127.0.0.1:1", metrics, 1.0, 1.0)
    stages.in_flight["s2mel"] = 3
    error = stages.stage_error(
        "s2mel", "s2mel", InferenceServerException("s2mel: CUDA out of memory. Tried to allocate 2.00 GiB")
    )
    assert isinstance(error, ModelOutOfMemoryError) and error.http_status == 503
    Reporter(settings, metrics, "gpu").failure(error)
    (event,) = transport.events
    assert event["tags"]["gpu_model"] == "NVIDIA H200"
    assert event["tags"]["total_memory"] == "143771 MiB"
    assert event["tags"]["current_batch_size"] == "3"
    assert event["fingerprint"] == ["s2mel", "out_of_memory"]


def test_overloaded_decoder_maps_to_503_warning():
    stages = TritonStages("127.0.0.1:1", ServiceMetrics(), 1.0, 1.0)
    error = stages.stage_error("gpt_decoder", "gpt_decoder", InferenceServerException("overloaded: 64 slots busy"))
    assert isinstance(error, ModelOverloadedError)
    assert (error.http_status, error.level) == (503, "warning")


# --- operations ---------------------------------------------------------------------------------------


def test_healthz_is_ok_and_readyz_lists_every_model_when_triton_is_down(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    response = client.get("/readyz")
    assert response.status_code == 503
    body = response.json()
    assert body["triton_live"] is False and body["ready"] is False
    assert "gpt_decoder" in body["not_ready"] and len(body["not_ready"]) == len(body["models"]) == 9


def test_metrics_count_requests_stage_latency_and_errors(client, voice_wav):
    _tts(client, voice_wav, text="")
    _tts(client, voice_wav)
    client.get("/healthz")
    text = client.get("/metrics").text
    assert 'tts_http_requests_total{method="POST",route="/v1/tts",status="422"} 1.0' in text
    assert 'tts_http_requests_total{method="POST",route="/v1/tts",status="503"} 1.0' in text
    assert 'tts_http_requests_total{method="GET",route="/healthz",status="200"} 1.0' in text
    # A new voice is read twice, side by side: as the speaker prompt and as the emotion reference. Both
    # reads start before either reaches Triton, so both are timed; the request fails once.
    assert 'tts_stage_seconds_count{stage="features"} 2.0' in text
    assert 'tts_stage_errors_total{error_type="triton_unavailable",stage="semantic_encoder"} 1.0' in text


def test_openapi_documents_every_field_and_its_limits(client):
    schema = client.get("/openapi.json").json()["components"]["schemas"]
    form = schema["TtsForm"]["properties"]
    assert form["duration_ratio"]["minimum"] == 0.75 and form["duration_ratio"]["maximum"] == 1.25
    assert all(prop.get("description") for prop in form.values())
    assert "SpeechRequest" in schema and "ErrorResponse" in schema


def test_settings_from_env_parse_and_name_bad_values(tmp_path):
    settings = Settings.from_env({"TRITON_GRPC_URL": "triton:8001", "MAX_UPLOAD_BYTES": "4096",
                                  "SENTRY_TRACES_SAMPLE_RATE": "0.25", "CHECKPOINT_DIR": str(tmp_path)})
    assert (settings.triton_grpc_url, settings.max_upload_bytes, settings.checkpoint_dir) == (
        "triton:8001", 4096, tmp_path)
    with pytest.raises(SettingsError, match="MAX_TEXT_CHARS='many'"):
        Settings.from_env({"MAX_TEXT_CHARS": "many"})
    with pytest.raises(SettingsError, match="SENTRY_TRACES_SAMPLE_RATE"):
        Settings.from_env({"SENTRY_TRACES_SAMPLE_RATE": "2"})


def test_settings_triton_model_prefix_is_read_and_refused_when_not_a_name_part():
    assert Settings.from_env({}).triton_model_prefix == ""
    assert Settings.from_env({"TRITON_MODEL_PREFIX": "team-a.tts_"}).triton_model_prefix == "team-a.tts_"
    for bad in ("tts/", "a b_", "tts:", "tts\u00e9_"):
        with pytest.raises(SettingsError, match="TRITON_MODEL_PREFIX"):
            Settings.from_env({"TRITON_MODEL_PREFIX": bad})
        with pytest.raises(SettingsError, match="TRITON_MODEL_PREFIX"):
            Settings(triton_model_prefix=bad).validate()


def test_triton_stages_send_prefixed_model_names_and_report_the_plain_ones():
    stages = TritonStages("127.0.0.1:1", ServiceMetrics(), 1.0, 1.0, model_prefix="tts_")
    assert stages.served_name("vocoder") == "tts_vocoder"
    request = stages._decode_request({"text_tokens": np.zeros(4, dtype=np.int64)}, time_left_s=5.0)
    assert request["model_name"] == "tts_gpt_decoder"
    assert [tensor.name() for tensor in request["inputs"]] == ["text_tokens", "deadline_unix_ms"]
    # The index of a merged repository: ours under the prefix, an unprefixed copy of one of ours (another
    # version) and another team's model. Only ours count, under their plain names.
    index = {"models": [
        {"name": "tts_vocoder", "version": "1", "state": "READY"},
        {"name": "vocoder", "version": "7", "state": "READY"},
        {"name": "other_team_scorer", "version": "3", "state": "READY"},
        {"name": "tts_s2mel", "version": "1", "state": "UNAVAILABLE"},
    ]}
    assert stages._record_versions(index) == ["vocoder"]
    assert stages.model_versions == {"vocoder": "1"}
    error = stages.stage_error("vocoder", "vocoder", InferenceServerException(
        "Request for unknown model: 'tts_vocoder' is not found", status="StatusCode.NOT_FOUND"))
    assert isinstance(error, ModelUnavailableError)
    assert (error.stage, error.model, error.model_version) == ("vocoder", "vocoder", "1")
    assert "model tts_vocoder is not available" in str(error)
    with pytest.raises(ValueError, match="model prefix"):
        TritonStages("127.0.0.1:1", ServiceMetrics(), 1.0, 1.0, model_prefix="tts/")


def test_triton_stages_without_a_prefix_send_the_plain_names():
    stages = TritonStages("127.0.0.1:1", ServiceMetrics(), 1.0, 1.0)
    assert stages.served_name("vocoder") == "vocoder"
    assert stages._decode_request({}, time_left_s=5.0)["model_name"] == "gpt_decoder"
    index = {"models": [{"name": "vocoder", "version": "2", "state": "READY"},
                        {"name": "other_team_scorer", "version": "3", "state": "READY"}]}
    assert stages._record_versions(index) == ["vocoder", "other_team_scorer"]


def test_streaming_wav_header_then_pcm_pieces_read_as_one_wav():
    pieces = [np.sin(np.arange(n) * 0.05).astype(np.float32) * 0.5 for n in (1000, 4410, 7)]
    streamed = wav_header(22050) + b"".join(pcm16(piece) for piece in pieces)
    samples, rate = soundfile.read(io.BytesIO(streamed), dtype="float32")
    assert rate == 22050 and samples.shape == (5417,)
    whole, _ = soundfile.read(io.BytesIO(wav_bytes(np.concatenate(pieces), 22050)), dtype="float32")
    np.testing.assert_array_equal(samples, whole)


def test_stage_calls_carry_the_sentry_trace_headers(demo_checkpoint, tmp_path, transport):
    create_app(_settings(demo_checkpoint, tmp_path, transport, sentry_traces_sample_rate=1.0))
    with sentry_sdk.start_transaction(name="tts"), sentry_sdk.start_span(op="triton.infer", name="vocoder") as span:
        parameters = TritonStages._trace_parameters()
    assert parameters["sentry-trace"].startswith(f"{span.trace_id}-{span.span_id}")
    assert "sentry-trace_id=" + span.trace_id in parameters["baggage"]


def _app_failing_after_one_piece(settings: Settings, piece: np.ndarray, error: ModelError,
                                 respond: Callable[[AudioStream, Reporter], Awaitable[Response]]) -> FastAPI:
    """An app whose one route, GET /audio, streams `piece` and then fails with `error`; `respond(audio,
    reporter)` makes the response, as the service's routes do."""
    metrics = ServiceMetrics()
    reporter = Reporter(settings, metrics, "cpu")

    async def pieces():
        yield piece
        raise error

    app = FastAPI()

    @app.get("/audio")
    async def audio_route():
        audio = AudioStream(pieces(), metrics, "/audio")
        await audio.prefetch()
        return await respond(audio, reporter)

    return app


def test_a_failure_after_streaming_started_ends_the_transfer_and_sends_one_event(demo_checkpoint, tmp_path,
                                                                                 transport):
    settings = _settings(demo_checkpoint, tmp_path, transport)
    create_app(settings)  # Sentry on, with the capturing transport

    async def wav_stream(audio, reporter):
        return await audio_response(audio, reporter, "wav", streaming=True)

    error = ModelError("vocoder failed: boom", stage="vocoder", model="vocoder", model_version="1")
    app = _app_failing_after_one_piece(settings, np.zeros(100, dtype=np.float32), error, wav_stream)
    response = make_test_client(app, raise_server_exceptions=False).get("/audio")
    assert response.status_code == 200  # the status line went out with the first segment
    assert len(response.content) == 44 + 200  # the header and the one finished piece, nothing after
    (event,) = transport.events
    assert event["tags"]["stage"] == "vocoder" and event["fingerprint"] == ["vocoder", "model_error"]


def test_a_failure_after_sse_started_is_an_error_event_without_done_and_one_sentry_event(demo_checkpoint, tmp_path,
                                                                                          transport):
    settings = _settings(demo_checkpoint, tmp_path, transport)
    create_app(settings)  # Sentry on, with the capturing transport

    async def sse_stream(audio, reporter):
        return sse_audio_response(audio, reporter, "pcm")

    error = ModelError("s2mel failed: boom", stage="s2mel", model="s2mel", model_version="1")
    app = _app_failing_after_one_piece(settings, np.full(100, 0.5, dtype=np.float32), error, sse_stream)
    response = make_test_client(app, raise_server_exceptions=False).get("/audio")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
    blocks = [block for block in response.text.split("\n\n") if block]
    events = [json.loads(block.removeprefix("data: ")) for block in blocks]
    assert [event["type"] for event in events] == ["speech.audio.delta", "error"]
    assert base64.b64decode(events[0]["audio"]) == pcm16(np.full(100, 0.5, dtype=np.float32))
    assert events[1]["error"]["type"] == "model_error" and events[1]["error"]["stage"] == "s2mel"
    (event,) = transport.events
    assert event["tags"]["stage"] == "s2mel" and event["fingerprint"] == ["s2mel", "model_error"]


def test_a_bug_in_the_service_is_a_json_500_and_one_event(client, transport, monkeypatch):
    def broken(*args, **kwargs):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(client.app.state.service, "list_voices", broken)
    client_without_raise = make_test_client(client.app, raise_server_exceptions=False)
    response = client_without_raise.get("/v1/voices")
    assert response.status_code == 500
    assert _error(response)["type"] == "internal_error"
    (event,) = transport.events
    assert event["tags"]["stage"] == "orchestrator"
    assert [value["type"] for value in event["exception"]["values"]] == ["ZeroDivisionError", "ServiceBugError"]


def test_a_near_zero_emotion_embedding_is_a_warning_from_the_emotion_encoder(client, transport):
    pipeline = client.app.state.service.pipeline
    assert pipeline._check_emotion_embedding(np.full(64, 1e-6, dtype=np.float32), "speaker reference")
    (event,) = transport.events
    assert event["level"] == "warning"
    assert event["tags"]["module"] == "emotion_encoder" and event["tags"]["stage"] == "emotion_conditioner"
    assert event["fingerprint"] == ["emotion_conditioner", "degenerate_emotion_embedding"]
    assert pipeline._check_emotion_embedding(np.full(64, 0.1, dtype=np.float32), "speaker reference") == []


def test_min_codes_above_max_codes_or_negative_is_422(client, transport, voice_wav):
    response = _tts(client, voice_wav, max_codes=20, min_codes=21)
    assert response.status_code == 422
    assert _error(response) | {"request_id": None} == {
        "type": "invalid_request", "message": "min_codes must be at most max_codes (20), got 21",
        "field": "min_codes", "limit": "0 to 20", "stage": None, "request_id": None,
    }
    response = _tts(client, voice_wav, min_codes=-1)
    assert response.status_code == 422 and _error(response)["field"] == "min_codes"
    assert transport.events == []


def test_openapi_documents_min_codes(client):
    form = client.get("/openapi.json").json()["components"]["schemas"]["TtsForm"]["properties"]
    assert "min_new_tokens" in form["min_codes"]["description"] and form["min_codes"]["anyOf"][0]["minimum"] == 0


def test_importing_the_service_does_not_import_the_networks():
    # The orchestrator reads constants and small files; torch models and transformers stay out of it.
    code = ("import sys, orchestrator.app; "
            "print(sorted(m for m in sys.modules if m.startswith('indextts2.networks') or m == 'transformers'))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert result.stdout.strip() == "[]"
