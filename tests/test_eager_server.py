"""The eager baseline refuses what the service refuses, with the same error body: both validate with the
service's own functions (no Triton needed: every refusal here comes before the first model call)."""

from __future__ import annotations

import pytest

from benchmarks.eager_server import EagerService, create_eager_app
from orchestrator.app import create_app
from orchestrator.settings import Settings
from orchestrator.testing import make_test_client, speech_like_wav

VOICE = speech_like_wav(3.0, seed=3)


@pytest.fixture(scope="module")
def clients(demo_checkpoint, tmp_path_factory):
    settings = Settings(checkpoint_dir=demo_checkpoint.model_dir, triton_grpc_url="127.0.0.1:1",
                        voices_dir=tmp_path_factory.mktemp("voices"), max_text_chars=200,
                        max_upload_bytes=256 * 1024)
    eager = create_eager_app(EagerService(demo_checkpoint.model_dir, settings=settings))
    with make_test_client(create_app(settings)) as service, make_test_client(eager) as baseline:
        yield service, baseline


REFUSED = {
    "text too long": ({"text": "a" * 201}, VOICE),
    "text empty": ({"text": "   "}, VOICE),
    "max_codes over the model's": ({"text": "Hello.", "max_codes": "9999"}, VOICE),
    "min_codes over max_codes": ({"text": "Hello.", "max_codes": "10", "min_codes": "11"}, VOICE),
    "duration_ratio out of range": ({"text": "Hello.", "duration_ratio": "2"}, VOICE),
    "audio not audio": ({"text": "Hello."}, b"not audio at all" * 10),
    "audio too short": ({"text": "Hello."}, speech_like_wav(0.2)),
    "audio too large": ({"text": "Hello."}, speech_like_wav(8.0, sample_rate=48000)),
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
