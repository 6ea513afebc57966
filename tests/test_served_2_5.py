"""IndexTTS-2.5 served: `python -m export` on a 2.5 checkpoint directory writes a complete repository (and
refuses a 2.0 file in a 2.5 directory, and the reverse), and the service on the demo-2.5 repository, behind
its own real local tritonserver, answers both routes with valid audio, streamed and not, with the 2.5 mel
length rule, the `language` field and the version in /readyz and the release name, and makes what the eager
2.5 pipeline makes."""

from __future__ import annotations

import dataclasses
import io
import shutil
import struct
import threading

import httpx
import numpy as np
import pytest
import soundfile
from service_client import hold_codes, record_emotion_vectors, service_client

from export.__main__ import main as export_main
from export.repository import COMMITTED_REPOSITORY, export_repository
from indextts2.checkpoint_dir_2_5 import load_networks_2_5
from indextts2.networks.gpt import SamplingConfig
from indextts2.pipeline import emotion_vector_of_request
from indextts2.pipeline_2_5 import EagerPipeline25
from indextts2.rules import target_mel_frames_2_5
from orchestrator.app import create_app
from orchestrator.settings import Settings
from orchestrator.testing import served_over_http, speech_like_wav
from orchestrator.triton_client import PIPELINE_MODELS_2_5

VOICE_AUDIO = speech_like_wav(6.0, seed=25)
TEXT = "Hello there. This is IndexTTS two point five."
CODES = 20  # every segment exactly this many codes (min_codes = max_codes), few diffusion steps
FIXED = {"max_codes": str(CODES), "min_codes": str(CODES), "diffusion_steps": "3", "seed": "11"}
HOP = 256


# --- export ------------------------------------------------------------------------------------------


def test_export_writes_the_2_5_models_and_configs(demo_repository_2_5):
    repository = demo_repository_2_5.repository
    assert sorted(stage.name for stage in demo_repository_2_5.stages) == sorted([
        "semantic_encoder", "semantic_codec", "campplus", "speaker_conditioner", "emotion_conditioner",
        "length_regulator", "s2mel_estimator", "vocoder",
    ])
    for report in demo_repository_2_5.stages:
        assert report.max_abs_error <= report.tolerance, report.line()
    gpt = (repository / "gpt_decoder" / "config.pbtxt").read_text()
    assert '{ name: "language" data_type: TYPE_INT64 dims: [ 1 ] optional: true }' in gpt
    assert '{ name: "speaker_latents" data_type: TYPE_FP32 dims: [ 1, -1 ] }' in gpt
    assert 'key: "indextts_version" value: { string_value: "2.5" }' in gpt
    s2mel = (repository / "s2mel" / "config.pbtxt").read_text()
    assert "code_latents" not in s2mel and 'string_value: "2.5"' in s2mel
    assert '{ name: "speaker_style"' in (repository / "speaker_conditioner" / "config.pbtxt").read_text()
    assert '{ name: "semantic_content"' in (repository / "semantic_codec" / "config.pbtxt").read_text()
    assert sorted(p.name for p in (repository / "s2mel" / "1" / "weights").iterdir()) == \
        ["codec.pth", "config.yaml", "s2mel.pth"]
    assert not list(repository.rglob("config_2_5.pbtxt"))


def test_2_0_export_writes_no_2_5_config(demo_repository):
    repository = demo_repository.repository
    assert not list(repository.rglob("config_2_5.pbtxt"))
    assert (repository / "gpt_decoder" / "config.pbtxt").read_text() == \
        (COMMITTED_REPOSITORY / "gpt_decoder" / "config.pbtxt").read_text()


def test_a_2_5_repository_is_not_written_over_the_committed_2_0_configs(demo_checkpoint_2_5):
    before = (COMMITTED_REPOSITORY / "gpt_decoder" / "config.pbtxt").read_bytes()
    with pytest.raises(ValueError, match="give --output"):
        export_repository(demo_checkpoint_2_5, COMMITTED_REPOSITORY, progress=lambda line: None)
    assert (COMMITTED_REPOSITORY / "gpt_decoder" / "config.pbtxt").read_bytes() == before


def _copy_checkpoint(source, destination):
    shutil.copytree(source.model_dir, destination)
    return destination


def test_export_refuses_a_2_0_gpt_in_a_2_5_directory(tmp_path, demo_checkpoint_2_5, demo_checkpoint, capsys):
    mixed = _copy_checkpoint(demo_checkpoint_2_5, tmp_path / "mixed")
    shutil.copy2(demo_checkpoint.model_dir / "gpt.pth", mixed / "gpt.pth")
    assert export_main([str(mixed), "--output", str(tmp_path / "out")]) == 1
    error = capsys.readouterr().err
    assert "export failed" in error and str(mixed / "gpt.pth") in error
    assert "spk_emb_proj" in error or "perceiver" in error  # a key named


def test_export_refuses_a_2_5_gpt_in_a_2_0_directory(tmp_path, demo_checkpoint_2_5, demo_checkpoint, capsys):
    mixed = _copy_checkpoint(demo_checkpoint, tmp_path / "mixed")
    shutil.copy2(demo_checkpoint_2_5.model_dir / "gpt.pth", mixed / "gpt.pth")
    assert export_main([str(mixed), "--output", str(tmp_path / "out")]) == 1
    error = capsys.readouterr().err
    assert "export failed" in error and str(mixed / "gpt.pth") in error
    assert "spk_emb_proj" in error or "perceiver" in error


# --- the service -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def settings(triton_server_2_5, demo_checkpoint_2_5, tmp_path_factory):
    return Settings(checkpoint_dir=demo_checkpoint_2_5.model_dir, triton_grpc_url=triton_server_2_5.grpc_url,
                    voices_dir=tmp_path_factory.mktemp("voices_2_5"), device="cpu", speech_diffusion_steps=3,
                    triton_timeout_s=60.0)


@pytest.fixture(scope="module")
def client(settings):
    with service_client(settings) as client:
        response = client.post("/v1/voices", data={"name": "v25"},
                               files={"audio": ("v.wav", VOICE_AUDIO, "audio/wav")})
        assert response.status_code == 201, response.text
        yield client


def _pcm(wav: bytes) -> np.ndarray:
    samples, rate = soundfile.read(io.BytesIO(wav), dtype="int16")
    assert rate == 22050
    return samples


def _tts(client, **fields):
    return client.post("/v1/tts", data={"text": TEXT, "voice": "v25", **FIXED, **fields})


def test_readyz_and_release_say_2_5(client):
    response = client.get("/readyz")
    body = response.json()
    assert response.status_code == 200, body
    assert body["indextts_version"] == "2.5"
    assert sorted(body["models"]) == sorted(PIPELINE_MODELS_2_5)
    assert "+indextts2.5.models." + ".".join(["1"] * len(PIPELINE_MODELS_2_5)) in client.app.state.release


def test_tts_renders_each_segment_by_the_2_5_length_rule(client):
    """One segment of exactly CODES codes: int(2N x 1.72 x ratio) mel frames, 256 samples each."""
    for ratio in (1.0, 1.2):
        response = _tts(client, text="Hello there.", duration_ratio=str(ratio))
        assert response.status_code == 200, response.text
        samples = _pcm(response.content)
        assert samples.shape[0] == target_mel_frames_2_5(CODES, ratio) * HOP
        assert np.abs(samples).max() > 0


@pytest.mark.parametrize("language", ["auto", "en", "zh", "ja", "es"])
def test_tts_takes_each_language(client, language):
    response = _tts(client, text="Hello there.", language=language)
    assert response.status_code == 200, response.text
    assert _pcm(response.content).shape[0] == target_mel_frames_2_5(CODES) * HOP


def test_unknown_language_is_refused(client):
    response = _tts(client, language="xx")
    assert response.status_code == 422
    assert response.json()["error"]["field"] == "language"


def test_emotion_vector_and_emotion_audio_serve(client):
    response = _tts(client, text="Hello there.", emotion_vector="0,0.3,0,0,0,0,0,0.2")
    assert response.status_code == 200, response.text
    response = client.post("/v1/tts", data={"text": "Hello there.", "voice": "v25", "emotion_voice": "v25",
                                            "emo_alpha": "0.5", **FIXED})
    assert response.status_code == 200, response.text


def test_the_served_stack_and_the_eager_2_5_pipeline_agree_on_the_emotion_vector_and_the_waveform(
    client, demo_checkpoint_2_5, monkeypatch
):
    """As tests/test_served_equals_eager.py for 2.0: greedy, fixed length, the same seed. The GPT's emotion
    vector is compared as well: 2.5's s2mel takes no GPT latent, so the waveform alone would not show a
    different emotion rule (without emotion audio, the speaker's file read again at 16 kHz is the
    reference, as infer_v2_5 does)."""
    sent = record_emotion_vectors(client.app.state.service.triton, monkeypatch)
    served = client.post("/v1/tts", data={"text": "Hello there.", "language": "en", "do_sample": "false", **FIXED},
                         files={"speaker_audio": ("voice.wav", VOICE_AUDIO, "audio/wav")})
    assert served.status_code == 200, served.text
    served_waveform, rate = soundfile.read(io.BytesIO(served.content), dtype="float32")

    samples, sample_rate = soundfile.read(io.BytesIO(VOICE_AUDIO), dtype="float32")
    eager = EagerPipeline25(load_networks_2_5(demo_checkpoint_2_5))
    speaker = eager.speaker_prompt(samples, sample_rate)
    vector = emotion_vector_of_request(eager, speaker, samples, sample_rate, None, None, 1.0, None)
    np.testing.assert_allclose(sent[0].reshape(-1), vector[0].numpy(), atol=1e-4)

    sampling = SamplingConfig(do_sample=False, max_codes=CODES, min_codes=CODES)
    result = eager.synthesize("Hello there.", samples, sample_rate, language="en", sampling=sampling,
                              diffusion_steps=3, seed=11)
    quantised = np.round(np.clip(result.waveform, -1.0, 1.0) * 32767.0) / 32768.0  # as the WAV holds it
    assert rate == 22050 and served_waveform.shape == quantised.shape
    assert np.abs(served_waveform - quantised).max() <= 2e-3


def test_streams_equal_the_whole_audio_in_one_chunk_and_by_segment(settings):
    app = create_app(dataclasses.replace(settings, stream_chunk_codes="100000", stream_first_segment_tokens=0))
    with served_over_http(app) as url:
        fields = {"text": TEXT, "voice": "v25", **FIXED}
        whole = httpx.post(f"{url}/v1/tts", data=fields, timeout=120)
        assert whole.status_code == 200, whole.text
        for mode in ("chunk", "segment"):
            streamed = httpx.post(f"{url}/v1/tts", data={**fields, "stream": "true", "stream_mode": mode}, timeout=120)
            assert streamed.status_code == 200, streamed.text
            assert struct.unpack("<I", streamed.content[40:44])[0] == 0xFFFFFFFF  # a streaming header
            np.testing.assert_array_equal(_pcm(streamed.content), _pcm(whole.content), err_msg=mode)


def test_chunks_add_up_to_the_segment_by_the_2_5_rule(settings):
    """Chunks of 4, then 6 codes: the chunked segment has exactly the whole segment's samples."""
    app = create_app(dataclasses.replace(settings, stream_chunk_codes="4,6", gpt_stream_every=2))
    s2mel_calls: list[int] = []
    triton = app.state.service.triton
    first_chunk_rendered = threading.Event()
    hold_codes(triton, after=4, until=first_chunk_rendered)  # chunk 0 is codes 0-3, whatever the speed
    infer = triton.infer

    async def observed_infer(model, inputs, *args, **kwargs):
        if model == "s2mel":
            s2mel_calls.append(int(inputs["semantic_codes"].shape[1]))
        result = await infer(model, inputs, *args, **kwargs)
        if model == "s2mel":
            first_chunk_rendered.set()
        return result

    triton.infer = observed_infer
    with served_over_http(app) as url:
        streamed = httpx.post(f"{url}/v1/tts", data={"text": "Hello there.", "voice": "v25", **FIXED,
                                                     "stream": "true", "stream_mode": "chunk"}, timeout=120)
    assert streamed.status_code == 200, streamed.text
    assert len(s2mel_calls) > 1  # rendered in several chunks
    assert _pcm(streamed.content).shape[0] == target_mel_frames_2_5(CODES) * HOP


@pytest.mark.parametrize("response_format", ["wav", "pcm"])
@pytest.mark.parametrize("stream_mode", ["chunk", "segment"])
def test_speech_route_streams_audio(client, response_format, stream_mode):
    response = client.post("/v1/audio/speech", json={
        "input": "Hola, ¿qué tal?", "voice": "v25", "response_format": response_format, "stream_mode": stream_mode,
        "language": "es",
    })
    assert response.status_code == 200, response.text
    if response_format == "wav":
        samples = _pcm(response.content)
    else:
        samples = np.frombuffer(response.content, dtype="<i2")
    assert samples.shape[0] > 0 and samples.shape[0] % HOP == 0
    assert np.abs(samples).max() > 0


def test_speech_route_serves_server_sent_events(client):
    response = client.post("/v1/audio/speech", json={"input": "Hello.", "voice": "v25", "stream_format": "sse"})
    assert response.status_code == 200, response.text
    assert '"speech.audio.done"' in response.text


# --- a 2.0 model and `language` ------------------------------------------------------------------------


def test_a_2_0_service_refuses_a_language_other_than_auto(demo_checkpoint, tmp_path):
    """Refused before any Triton call (no server is needed: the address is closed)."""
    settings = Settings(checkpoint_dir=demo_checkpoint.model_dir, triton_grpc_url="127.0.0.1:1",
                        voices_dir=tmp_path / "voices", device="cpu", triton_timeout_s=2.0)
    with service_client(settings) as client:
        files = {"speaker_audio": ("v.wav", VOICE_AUDIO, "audio/wav")}
        response = client.post("/v1/tts", data={"text": "Hello.", "language": "en"}, files=files)
        assert response.status_code == 422, response.text
        assert response.json()["error"]["field"] == "language"
        assert "IndexTTS-2.0" in response.json()["error"]["message"]
        response = client.post("/v1/audio/speech", json={"input": "Hello.", "voice": "x", "language": "zh"})
        assert response.status_code == 422 and response.json()["error"]["field"] == "language"
        assert client.get("/readyz").json()["indextts_version"] == "2.0"
