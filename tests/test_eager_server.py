"""benchmarks/eager_server.py in process, through FastAPI's test client (no tritonserver).

It refuses what the service refuses, with the same error body: both validate with the service's own
functions (every refusal here comes before the first model call). On the demo-2.5 checkpoint it runs the
IndexTTS-2.5 eager pipeline and answers a request with a WAV of the 2.5 mel length rule, streamed per
segment with the same samples; text with nothing to speak is refused as the orchestrator refuses it. On
the 2.0 demo checkpoint a `language` other than 'auto' is refused (422), as the orchestrator refuses it.
Few codes and 2 diffusion steps keep each synthesis to a moment."""

from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile

from benchmarks.eager_server import EagerService, create_eager_app
from benchmarks.loadgen import WAV_HEADER_BYTES
from indextts2.defaults import MEL_HOP_SAMPLES, OUTPUT_SAMPLE_RATE
from indextts2.rules import target_mel_frames_2_5
from orchestrator.app import create_app
from orchestrator.settings import Settings
from orchestrator.testing import make_test_client, speech_like_wav

VOICE = speech_like_wav(3.0, seed=5)
TEXT = "Hello there."  # one segment
CODES = 6
FIXED = {"text": TEXT, "min_codes": str(CODES), "max_codes": str(CODES), "diffusion_steps": "2", "seed": "3"}


def _post(client, **fields):
    return client.post("/v1/tts", data={**FIXED, **fields}, files={"speaker_audio": ("voice.wav", VOICE, "audio/wav")})


@pytest.fixture(scope="module")
def client_2_5(demo_checkpoint_2_5):
    service = EagerService(demo_checkpoint_2_5.model_dir)
    with make_test_client(create_eager_app(service)) as client:
        yield client


def test_eager_server_loads_the_2_5_pipeline(client_2_5):
    body = client_2_5.get("/healthz").json()
    assert body == {"status": "ok", "in_flight": 0, "indextts_version": "2.5"}


def test_eager_server_answers_a_2_5_request_with_a_wav_of_the_2_5_length(client_2_5):
    response = _post(client_2_5, language="en")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "audio/wav"
    samples, rate = soundfile.read(io.BytesIO(response.content), dtype="float32")
    assert rate == OUTPUT_SAMPLE_RATE and samples.ndim == 1
    # 6 codes at 25 Hz: int(2 x 6 x 1.72) = 20 mel frames (2.0's rule would give 10).
    assert samples.shape[0] == target_mel_frames_2_5(CODES) * MEL_HOP_SAMPLES
    assert np.isfinite(samples).all() and np.abs(samples).max() > 0
    assert float(response.headers["X-Audio-Seconds"]) == pytest.approx(samples.shape[0] / OUTPUT_SAMPLE_RATE, abs=1e-3)


def test_eager_server_streams_a_2_5_request_per_segment_with_the_same_samples(client_2_5):
    whole = _post(client_2_5)  # no language: auto-detected (en), as the orchestrator does
    streamed = _post(client_2_5, stream="true")
    assert whole.status_code == streamed.status_code == 200, (whole.text, streamed.text)
    assert streamed.content[:4] == b"RIFF" and streamed.content[40:44] == b"\xff\xff\xff\xff"  # streaming header
    assert streamed.content[WAV_HEADER_BYTES:] == whole.content[WAV_HEADER_BYTES:]


def test_eager_server_refuses_2_5_text_with_nothing_to_speak(client_2_5):
    response = _post(client_2_5, text=" ... !")
    assert response.status_code == 422, response.text
    assert response.json()["error"]["type"] == "invalid_request"
    assert response.json()["error"]["field"] == "text"


# --- the service's checks and errors ---


REFUSAL_VOICE = speech_like_wav(3.0, seed=3)


@pytest.fixture(scope="module")
def clients(demo_checkpoint, tmp_path_factory):
    settings = Settings(checkpoint_dir=demo_checkpoint.model_dir, triton_grpc_url="127.0.0.1:1",
                        voices_dir=tmp_path_factory.mktemp("voices"), max_text_chars=200,
                        max_upload_bytes=256 * 1024)
    eager = create_eager_app(EagerService(demo_checkpoint.model_dir, settings=settings))
    with make_test_client(create_app(settings)) as service, make_test_client(eager) as baseline:
        yield service, baseline


REFUSED = {
    "text too long": ({"text": "a" * 201}, REFUSAL_VOICE),
    "text empty": ({"text": "   "}, REFUSAL_VOICE),
    "max_codes over the model's": ({"text": "Hello.", "max_codes": "9999"}, REFUSAL_VOICE),
    "min_codes over max_codes": ({"text": "Hello.", "max_codes": "10", "min_codes": "11"}, REFUSAL_VOICE),
    "duration_ratio out of range": ({"text": "Hello.", "duration_ratio": "2"}, REFUSAL_VOICE),
    "audio not audio": ({"text": "Hello."}, b"not audio at all" * 10),
    "audio too short": ({"text": "Hello."}, speech_like_wav(0.2)),
    "audio too large": ({"text": "Hello."}, speech_like_wav(8.0, sample_rate=48000)),
    "a language for IndexTTS-2.0": ({"text": "Hello.", "language": "en"}, REFUSAL_VOICE),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_the_baseline_refuses_like_the_service(clients, case):
    fields, audio = REFUSED[case]
    answers = [
        client.post("/v1/tts", data=fields, files={"speaker_audio": ("voice.wav", audio, "audio/wav")})
        for client in clients
    ]
    service, baseline = answers
    assert service.status_code in (413, 422), service.text
    assert baseline.status_code == service.status_code, (baseline.text, service.text)
    keys = ("type", "message", "field", "limit")
    assert {k: baseline.json()["error"][k] for k in keys} == {k: service.json()["error"][k] for k in keys}
