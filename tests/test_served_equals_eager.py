"""The served stack (orchestrator -> tritonserver, ONNX and Python models) and the eager pipeline (every
network in PyTorch, one request at a time) make the same waveform for the same request and seed on the
demo preset: one pipeline, two ways to run a stage.

Greedy decoding (do_sample false) and per-segment seeds for the s2mel noise make both deterministic. The
two differ only in float rounding (ONNX Runtime against PyTorch kernels, batched against batch-1
matmuls): the codes must be equal, and the waveform equal within 2e-3 (the served WAV is 16-bit, whose
step is 3e-5; the rest is float32 rounding carried through 3 diffusion steps and the vocoder).
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile
from service_client import demo_settings, record_emotion_vectors, service_client

from indextts2.checkpoint_dir import load_networks
from indextts2.networks.gpt import SamplingConfig
from indextts2.pipeline import EagerPipeline, emotion_vector_of_request
from orchestrator.testing import speech_like_wav

TEXT = "Hello there. This is one request, said twice."
SEED = 11
CODES = 30
STEPS = 3
WAVEFORM_TOLERANCE = 2e-3


@pytest.fixture(scope="module")
def client(triton_server, demo_checkpoint, tmp_path_factory):
    settings = demo_settings(triton_server, demo_checkpoint, tmp_path_factory.mktemp("voices"))
    with service_client(settings) as client:
        yield client


def test_the_served_stack_and_the_eager_pipeline_make_the_same_waveform(client, demo_checkpoint, monkeypatch):
    """The GPT's emotion vector is compared too: on the demo networks the waveform barely shows it. Without
    emotion audio, both take the speaker's file read again at 16 kHz as the reference, as infer_v2 does."""
    sent = record_emotion_vectors(client.app.state.service.triton, monkeypatch)
    audio = speech_like_wav(6.0, seed=5)
    served = client.post("/v1/tts", data={
        "text": TEXT, "do_sample": "false", "max_codes": str(CODES), "min_codes": str(CODES),
        "diffusion_steps": str(STEPS), "seed": str(SEED),
    }, files={"speaker_audio": ("voice.wav", audio, "audio/wav")})
    assert served.status_code == 200, served.text
    served_waveform, rate = soundfile.read(io.BytesIO(served.content), dtype="float32")

    samples, sample_rate = soundfile.read(io.BytesIO(audio), dtype="float32")
    eager = EagerPipeline(load_networks(demo_checkpoint))
    sampling = SamplingConfig(do_sample=False, max_codes=CODES, min_codes=CODES)
    result = eager.synthesize(TEXT, samples, sample_rate, sampling=sampling, diffusion_steps=STEPS, seed=SEED)
    eager_waveform = result.waveform
    speaker = eager.speaker_prompt(samples, sample_rate)
    vector = emotion_vector_of_request(eager, speaker, samples, sample_rate, None, None, 1.0, None)
    assert len(sent) == len(result.codes)  # one GPT call per segment, each with the request's vector
    for sent_vector in sent:
        np.testing.assert_allclose(sent_vector.reshape(-1), vector[0].numpy(), atol=1e-4)

    assert rate == 22050 and len(result.codes) >= 1
    assert served_waveform.shape == eager_waveform.shape
    # Both are quantised to 16 bits as the WAV is, so the comparison measures the pipelines, not the format.
    quantised = np.round(np.clip(eager_waveform, -1.0, 1.0) * 32767.0) / 32768.0
    error = np.abs(served_waveform - quantised)
    assert error.max() <= WAVEFORM_TOLERANCE, f"max {error.max():.3g}, mean {error.mean():.3g}"
