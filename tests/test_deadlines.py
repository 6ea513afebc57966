"""Deadlines and abandoned work, against the real stack: a request whose budget is spent gets 504 at once;
one whose budget runs out mid-way gets 504 near its budget and its s2mel call ends without running to
completion (s2mel counts it stopped); a client that disconnects cancels its request, and nothing of it
stays in flight."""

from __future__ import annotations

import re
import time

import httpx
import pytest
from service_client import service_client

from orchestrator.app import create_app
from orchestrator.settings import Settings
from orchestrator.testing import in_flight_after_waiting, served_over_http, speech_like_wav

VOICE_AUDIO = speech_like_wav(6.0, seed=41)
# A request that runs for many seconds on 2 CPU cores: the most codes the demo GPT makes, 100 steps.
LONG = {"text": "Hello there, this takes a while.", "voice": "slow", "max_codes": "249", "min_codes": "249",
        "diffusion_steps": "100", "seed": "3"}


@pytest.fixture(scope="module")
def settings(triton_server, demo_checkpoint, tmp_path_factory):
    return Settings(checkpoint_dir=demo_checkpoint.model_dir, triton_grpc_url=triton_server.grpc_url,
                    voices_dir=tmp_path_factory.mktemp("voices"), device="cpu", speech_diffusion_steps=3)


@pytest.fixture(scope="module")
def client(settings):
    with service_client(settings) as client:
        response = client.post("/v1/voices", data={"name": "slow"},
                               files={"audio": ("v.wav", VOICE_AUDIO, "audio/wav")})
        assert response.status_code == 201, response.text
        yield client


def _s2mel_stopped(triton_server) -> float:
    """Requests s2mel stopped before running them to the end: their deadline passed, or their caller
    cancelled the call (the gRPC deadline, at the same moment). Its own metric on Triton's /metrics."""
    metrics = httpx.get(triton_server.metrics_url, timeout=10).text
    return sum(float(value) for value in re.findall(r"^s2mel_requests_stopped_total\{[^}]*\} (\S+)$", metrics,
                                                     re.MULTILINE))


def test_a_request_whose_budget_is_spent_gets_504_at_once(client):
    started = time.perf_counter()
    response = client.post("/v1/tts", data={**LONG, "diffusion_steps": "3"}, headers={"X-Request-Timeout": "0.001"})
    assert response.status_code == 504, response.text
    assert time.perf_counter() - started < 2.0
    assert response.json()["error"]["type"] == "timeout"


def test_a_budget_that_runs_out_in_s2mel_is_504_and_the_s2mel_call_ends_early(client, triton_server):
    solo = client.post("/v1/tts", data={**LONG, "diffusion_steps": "3"})  # also warms the voice's conditioning
    assert solo.status_code == 200, solo.text
    stopped = _s2mel_stopped(triton_server)
    started = time.perf_counter()
    response = client.post("/v1/tts", data=LONG, headers={"X-Request-Timeout": "2.5"})
    elapsed = time.perf_counter() - started
    assert response.status_code == 504, response.text
    assert elapsed < 2.5 + 1.0
    # The abandoned s2mel call stops once its deadline passes (between diffusion steps), not after its 100
    # steps: s2mel counts it as stopped within moments.
    deadline = time.monotonic() + 10
    while _s2mel_stopped(triton_server) == stopped:
        assert time.monotonic() < deadline, "s2mel did not drop the abandoned request"
        time.sleep(0.2)


def test_a_client_that_disconnects_cancels_its_request_and_frees_its_triton_calls(client):
    app = create_app(client.app.state.settings)
    with served_over_http(app) as url:
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{url}/v1/tts", data=LONG, timeout=httpx.Timeout(1.5, connect=5))
        in_flight, metrics = in_flight_after_waiting(url)
        assert in_flight == [0.0, 0.0, 0.0], f"still in flight after the client left: {in_flight}"
        assert 'tts_http_requests_total{method="POST",route="/v1/tts",status="499"} 1.0' in metrics
        # The service serves the next request at once: the abandoned one left no work behind it.
        response = httpx.post(f"{url}/v1/tts", data={**LONG, "max_codes": "20", "min_codes": "0",
                                                     "diffusion_steps": "3"}, timeout=60)
        assert response.status_code == 200
