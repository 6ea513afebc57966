"""benchmarks/eager_server.py in process, through FastAPI's test client (no tritonserver): on the demo-2.5
checkpoint it runs the IndexTTS-2.5 eager pipeline and answers a request with a WAV of the 2.5 mel length
rule, streamed per segment with the same samples; text with nothing to speak is refused as the
orchestrator refuses it. On the 2.0 demo checkpoint a `language` other than 'auto' is refused (422), as
the orchestrator refuses it. Few codes and 2 diffusion steps keep each synthesis to a moment."""

from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile

from benchmarks.eager_server import EagerService, create_eager_app
from indextts2.defaults import MEL_HOP_SAMPLES, OUTPUT_SAMPLE_RATE
from indextts2.rules import target_mel_frames_2_5
from orchestrator.testing import make_test_client, speech_like_wav

VOICE = speech_like_wav(3.0, seed=5)
TEXT = "Hello there."  # one segment
CODES = 6
FIXED = {"text": TEXT, "min_codes": str(CODES), "max_codes": str(CODES), "diffusion_steps": "2", "seed": "3"}
WAV_HEADER_BYTES = 44


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


def test_eager_server_on_2_0_refuses_a_language_other_than_auto(demo_checkpoint):
    service = EagerService(demo_checkpoint.model_dir)
    with make_test_client(create_eager_app(service)) as client:
        assert client.get("/healthz").json()["indextts_version"] == "2.0"
        refused = _post(client, language="en")
        assert refused.status_code == 422, refused.text
        error = refused.json()["error"]
        assert error["type"] == "invalid_request" and error["field"] == "language"
        assert "IndexTTS-2.0" in error["message"]
