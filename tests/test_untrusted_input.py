"""No upload or field value can take the service down, against the real stack (tritonserver, Bugsink, and
uvicorn where the connection matters): each upload or value that once blew up gets a 4xx naming its field,
every response carries a request id, a 500 leaves the connection usable, events carry metadata only and
one event per warning kind, and random, malformed values thrown at every route never get a 5xx."""

from __future__ import annotations

import json
import time
import uuid
from urllib.parse import quote

import httpx
import pytest
import sentry_sdk
from audio_bombs import silent_flac, wav_declaring_1_hz
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from service_client import service_client

from orchestrator.app import create_app
from orchestrator.settings import Settings
from orchestrator.testing import served_over_http, speech_like_wav

pytest.importorskip("tritonclient.grpc")

FAST = {"diffusion_steps": "3", "seed": "7", "max_codes": "20"}  # 2 CPU cores: keep syntheses short
MARKER = "zqxprivate" + uuid.uuid4().hex[:12]
VOICE_AUDIO = speech_like_wav(6.0, seed=31)


def _settings(triton_server, bugsink_server, demo_checkpoint, voices_dir, **overrides) -> Settings:
    return Settings(
        checkpoint_dir=demo_checkpoint.model_dir, triton_grpc_url=triton_server.grpc_url, voices_dir=voices_dir,
        sentry_dsn=bugsink_server.dsn, device="cpu", triton_timeout_s=60.0, speech_diffusion_steps=3,
        **overrides,
    )


@pytest.fixture(scope="module")
def service_settings(triton_server, bugsink_server, demo_checkpoint, tmp_path_factory):
    # Short segments, so that a few sentences make several segments (the warning-count test).
    return _settings(triton_server, bugsink_server, demo_checkpoint, tmp_path_factory.mktemp("voices"),
                     max_text_tokens_per_segment=16)


@pytest.fixture(scope="module")
def client(service_settings):
    with service_client(service_settings) as client:
        assert client.post("/v1/voices", data={"name": "known"},
                           files={"audio": ("v.wav", VOICE_AUDIO, "audio/wav")}).status_code == 201
        yield client


def _tts(client, speaker: bytes | None = VOICE_AUDIO, headers: dict | None = None, **fields):
    files = {}
    if speaker is not None:
        files["speaker_audio"] = ("voice.wav", speaker, "audio/wav")
    for name in ("emotion_audio",):
        if name in fields:
            files[name] = ("e.wav", fields.pop(name), "audio/wav")
    data = {"text": "Hello there. A short sentence.", **FAST, **fields}
    return client.post("/v1/tts", data=data, files=files, headers=headers or {})


def _error(response) -> dict:
    assert response.headers["content-type"].startswith("application/json"), response.headers
    error = response.json()["error"]
    assert error["request_id"] == response.headers["x-request-id"]
    return error


def _events(bugsink_server, response, count: int) -> list[dict]:
    sentry_sdk.flush(timeout=5)
    return bugsink_server.events(wait_for=count, timeout_s=20, tags={"request_id": response.headers["X-Request-ID"]})


# --- uploads that once expanded without bound ---


@pytest.mark.parametrize("field", ["speaker_audio", "emotion_audio"])
def test_a_wav_declaring_1_hz_is_422_naming_the_field_and_the_rate_limit(client, field):
    fields = {"emotion_audio": wav_declaring_1_hz()} if field == "emotion_audio" else {}
    response = _tts(client, speaker=wav_declaring_1_hz() if field == "speaker_audio" else VOICE_AUDIO, **fields)
    assert response.status_code == 422
    error = _error(response)
    assert error["field"] == field and error["limit"] == "8000 to 192000 Hz"


@pytest.mark.parametrize("channels", [1, 8])
def test_an_hour_of_compressed_silence_is_422_from_its_header(client, channels):
    response = _tts(client, speaker=silent_flac(3600.0, channels=channels))
    assert response.status_code == 422
    error = _error(response)
    assert error["field"] == "speaker_audio" and error["limit"] == "<= 60 s" and "3600.0 s" in error["message"]


def test_a_voice_is_registered_only_from_audio_within_the_limits(client):
    response = client.post("/v1/voices", data={"name": "bomb"},
                           files={"audio": ("v.wav", wav_declaring_1_hz(), "audio/wav")})
    assert response.status_code == 422 and _error(response)["field"] == "audio"
    assert "bomb" not in [voice["name"] for voice in client.get("/v1/voices").json()["voices"]]


def test_a_stored_voice_is_checked_again_when_it_is_used(client, service_settings):
    # A voice stored before the limits existed: its file is replaced behind the service's back.
    store = client.app.state.service.voices
    record = store.get("known")
    path = store.directory / "audio" / record.sha256
    original = path.read_bytes()
    try:
        path.write_bytes(wav_declaring_1_hz())
        response = client.post("/v1/tts", data={"text": "Hello.", "voice": "known", **FAST})
        assert response.status_code == 422
        assert _error(response)["field"] == "voice"
    finally:
        path.write_bytes(original)


# --- no 500 from input ---


def test_a_lone_surrogate_in_json_text_is_422(client):
    body = '{"input": "hi \\ud800 there", "voice": "known"}'
    response = client.post("/v1/audio/speech", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 422
    error = _error(response)
    assert error["field"] == "input" and "surrogate" in error["message"]


@pytest.mark.parametrize("depth", [100, 100_000])
def test_a_deeply_nested_emotion_vector_is_422(client, depth):
    response = _tts(client, emotion_vector="[" * depth + "]" * depth)
    assert response.status_code == 422
    assert _error(response)["field"] == "emotion_vector"


def test_a_deeply_nested_json_body_is_a_4xx_json_error(client):
    body = '{"input": "hi", "voice": "known", "model": ' + "[" * 100_000 + "]" * 100_000 + "}"
    response = client.post("/v1/audio/speech", content=body, headers={"content-type": "application/json"})
    assert 400 <= response.status_code < 500
    _error(response)


def test_too_many_segments_is_422_before_any_model_runs(client):
    response = _tts(client, text="1 " * 1000)  # 2000 characters: every digit a word, ~80 segments
    assert response.status_code == 422
    error = _error(response)
    assert error["field"] == "text" and error["limit"] == "at most 20 segments"


# --- request ids, and a 500 that leaves the connection usable ---


def test_every_response_carries_the_request_id_the_client_sent(client):
    for response in (
        client.get("/healthz", headers={"X-Request-ID": "given-1"}),
        client.get("/nowhere", headers={"X-Request-ID": "given-2"}),
        client.post("/v1/tts", data={"text": ""}, headers={"X-Request-ID": "given-3"}),
    ):
        assert response.headers["x-request-id"].startswith("given-")
    assert client.get("/healthz", headers={"X-Request-ID": "bad id with spaces"}).headers["x-request-id"] != \
        "bad id with spaces"


def test_a_500_carries_the_request_id_and_one_event_and_the_connection_stays_usable(
    client, service_settings, bugsink_server, monkeypatch
):
    app = create_app(service_settings)

    def broken() -> list:
        raise RuntimeError("a bug in the orchestrator")

    monkeypatch.setattr(app.state.service, "list_voices", broken)
    with served_over_http(app) as url, httpx.Client(base_url=url, timeout=30) as http:
        response = http.get("/v1/voices", headers={"X-Request-ID": "bug-" + uuid.uuid4().hex[:8]})
        assert response.status_code == 500
        error = _error(response)
        assert error["type"] == "internal_error" and error["request_id"].startswith("bug-")
        assert http.get("/healthz").status_code == 200  # the same keep-alive connection
        (event,) = _events(bugsink_server, response, 1)
        assert event["tags"]["stage"] == "orchestrator"
        assert event["contexts"]["tts_request"] is not None
        time.sleep(1)
        assert len(_events(bugsink_server, response, 1)) == 1


# --- what events may carry ---


def test_events_carry_no_client_headers_address_or_raw_field_values(client, bugsink_server):
    headers = {"X-Forwarded-For": "203.0.113.77", "User-Agent": f"agent-{MARKER}", "X-Custom": f"custom-{MARKER}",
               "X-Request-ID": "privacy-" + uuid.uuid4().hex[:8]}
    refused = _tts(client, headers=headers, duration_ratio=f"{MARKER}")
    assert refused.status_code == 422
    short = _tts(client, speaker=speech_like_wav(2.0, seed=32), headers={**headers, "X-Request-ID": "p2-" + MARKER[-8:]})
    assert short.status_code == 200, short.text
    events = _events(bugsink_server, refused, 1) + _events(bugsink_server, short, 1)
    stored = json.dumps([event["data"] for event in events])
    assert MARKER not in stored and "203.0.113.77" not in stored
    assert events[0]["contexts"]["tts_request"]["duration_ratio"] == "not_a_number"
    for event in events:
        assert set(event["data"].get("request", {}).get("headers", {})) <= {"Content-Type", "Content-Length",
                                                                           "content-type", "content-length"}


def test_one_event_per_warning_kind_per_request_with_a_count(client, bugsink_server):
    text = "One two three four five. Six seven eight nine ten. Eleven twelve thirteen. Fourteen fifteen sixteen."
    response = _tts(client, text=text, max_codes="3", headers={"X-Request-ID": "warn-" + uuid.uuid4().hex[:8]})
    assert response.status_code == 200, response.text
    events = _events(bugsink_server, response, 2)
    time.sleep(1)
    events = _events(bugsink_server, response, 2)
    kinds = sorted(event["tags"]["warning"] for event in events)
    assert kinds == sorted(set(kinds)), kinds  # one event per kind
    assert "max_codes_reached" in kinds
    counts = {event["tags"]["warning"]: event["extra"]["count"] for event in events}
    assert counts["max_codes_reached"] >= 3, counts  # every segment stopped at max_codes


# --- random and malformed values at every route ---

_AUDIO = st.sampled_from([b"", b"RIFF" + b"\x00" * 40, b"not audio" * 30, wav_declaring_1_hz(),
                          speech_like_wav(0.2), VOICE_AUDIO])
_HOSTILE = st.sampled_from(["", " ", "\x00", "hi \ud800 there", "\udfff", "1e309", "nan", "-1", "[[[]]]",
                            "\u202e\u0301", "9" * 400])
# Words mixed with what breaks tokenizers: the words get it past "nothing to speak" to the tokenizer.
_MIXED = st.lists(st.sampled_from(["hello", " ", "world", "\ud800", "\udc00", "\x00", "5", "-", ".", "\u0301"]),
                  min_size=1, max_size=8).map("".join)
# Any Unicode, lone surrogates included (a JSON body can carry them), or a value picked to hurt.
_ANY_TEXT = _HOSTILE | _MIXED | st.text(st.characters(exclude_categories=()), max_size=40)
_FORM_FIELDS = ["text", "voice", "emotion_voice", "emotion_vector", "emo_alpha", "duration_ratio", "do_sample",
                "temperature", "top_k", "top_p", "repetition_penalty", "max_codes", "min_codes", "seed",
                "diffusion_steps", "cfg_rate", "stream", "unknown_field"]


def _surrogate_safe(value: str) -> str:
    # A multipart body is bytes: the client cannot encode a lone surrogate there (JSON can, tested above).
    return value.encode("utf-8", "surrogatepass").decode("utf-8", "replace")


@st.composite
def _tts_requests(draw) -> dict:
    fields = draw(st.dictionaries(st.sampled_from(_FORM_FIELDS), _ANY_TEXT.map(_surrogate_safe), max_size=6))
    if fields.get("text", "x").strip() and draw(st.booleans()):
        fields.update(FAST)  # when it does run, it runs briefly
    files = {}
    for name in draw(st.lists(st.sampled_from(["speaker_audio", "emotion_audio", "extra_file"]), max_size=2)):
        files[name] = ("a.wav", draw(_AUDIO), "audio/wav")
    return {"method": "POST", "url": "/v1/tts", "data": fields, "files": files}


@st.composite
def _speech_requests(draw) -> dict:
    if draw(st.integers(0, 3)) == 0:  # not JSON, or JSON of the wrong shape
        raw = draw(st.binary(max_size=200) | st.sampled_from([b"{", b"[]", b"null", b'{"input": 1}', b"\xff\xfe"]))
        return {"method": "POST", "url": "/v1/audio/speech", "content": raw,
                "headers": {"content-type": draw(st.sampled_from(["application/json", "text/plain", ""]))}}
    # Mostly well-formed around the hostile values, so that they reach the code behind validation.
    body = draw(st.fixed_dictionaries({"input": _ANY_TEXT, "voice": st.just("known") | _ANY_TEXT}, optional={
        "model": _ANY_TEXT, "response_format": st.sampled_from(["wav", "pcm"]) | _ANY_TEXT,
        "speed": st.floats(allow_nan=True, allow_infinity=True) | _ANY_TEXT,
    }))
    return {"method": "POST", "url": "/v1/audio/speech", "content": json.dumps(body),
            "headers": {"content-type": "application/json"}}


@st.composite
def _voice_requests(draw) -> dict:
    if draw(st.booleans()):
        name = _surrogate_safe(draw(_ANY_TEXT | st.just("ok-name")))
        return {"method": "POST", "url": "/v1/voices", "data": {"name": name},
                "files": {"audio": ("a.wav", draw(_AUDIO), "audio/wav")}}
    name = draw(st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=30))
    return {"method": "DELETE", "url": f"/v1/voices/{quote(name, safe='')}"}


def _check_no_5xx(client, call: dict) -> None:
    response = client.request(**call)
    assert response.status_code < 500, (response.status_code, response.text[:300])
    if response.status_code >= 400:
        _error(response)
    elif call["url"] == "/v1/voices" and call["method"] == "POST":
        client.delete(f"/v1/voices/{response.json()['name']}")


_PROPERTY_SETTINGS = settings(max_examples=80, deadline=None, derandomize=True, database=None,
                              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@_PROPERTY_SETTINGS
@given(call=_tts_requests())
def test_random_and_malformed_tts_forms_never_get_a_5xx(client, call):
    _check_no_5xx(client, call)


@_PROPERTY_SETTINGS
@given(call=_speech_requests())
def test_random_and_malformed_speech_bodies_never_get_a_5xx(client, call):
    _check_no_5xx(client, call)


@_PROPERTY_SETTINGS
@given(call=_voice_requests())
def test_random_and_malformed_voice_requests_never_get_a_5xx(client, call):
    _check_no_5xx(client, call)


def test_the_service_still_serves_after_the_malformed_requests(client):
    assert _tts(client).status_code == 200
