"""Streaming against the real stack (local tritonserver on the demo repository, the service behind a real
uvicorn server): one chunk is the non-streamed audio exactly; chunks arrive before the GPT has finished
its segment; every stream format parses (streamed WAV, raw PCM, server-sent events); a client that
leaves mid-stream frees its decoder slot; a failure after the first bytes is visible to the client and
reported once."""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import struct
import threading
import time

import httpx
import numpy as np
import pytest
import sentry_sdk
import soundfile
from service_client import hold_codes, service_client
from triton_models import model_reconfigured

from orchestrator.app import create_app
from orchestrator.settings import Settings
from orchestrator.testing import in_flight_after_waiting, served_over_http, speech_like_wav

VOICE_AUDIO = speech_like_wav(6.0, seed=51)
TEXT = "Hello there, this is streamed."
# The most codes the demo GPT makes (249, exactly: min_codes = max_codes), few diffusion steps.
LONG = {"text": TEXT, "voice": "streamer", "max_codes": "249", "min_codes": "249", "diffusion_steps": "3",
        "seed": "5"}


@pytest.fixture(scope="module")
def settings(triton_server, bugsink_server, demo_checkpoint, tmp_path_factory):
    return Settings(checkpoint_dir=demo_checkpoint.model_dir, triton_grpc_url=triton_server.grpc_url,
                    voices_dir=tmp_path_factory.mktemp("voices"), device="cpu", speech_diffusion_steps=3,
                    sentry_dsn=bugsink_server.dsn)


@pytest.fixture(scope="module")
def settings_with_voice(settings):
    with service_client(settings) as client:
        response = client.post("/v1/voices", data={"name": "streamer"},
                               files={"audio": ("v.wav", VOICE_AUDIO, "audio/wav")})
        assert response.status_code == 201, response.text
    return settings


def _served(settings: Settings, **changes):
    app = create_app(dataclasses.replace(settings, **changes))
    return app, served_over_http(app)


def _post_tts(url: str, **fields) -> httpx.Response:
    return httpx.post(f"{url}/v1/tts", data={**LONG, **fields}, timeout=120)


def _pcm(wav: bytes) -> np.ndarray:
    samples, rate = soundfile.read(io.BytesIO(wav), dtype="int16")
    assert rate == 22050
    return samples


def test_one_chunk_streams_exactly_the_non_streamed_audio(settings_with_voice):
    """A chunk at least as long as the segment: the same s2mel and vocoder calls, the same samples. And by
    segment (first segment as without streaming): the same samples too."""
    _, served = _served(settings_with_voice, stream_chunk_codes="100000", stream_first_segment_tokens=0)
    text = {"text": "Hello there. This is a test of streaming, in two sentences.", "max_codes": "60",
            "min_codes": "0"}
    with served as url:
        whole = _post_tts(url, **text)
        assert whole.status_code == 200, whole.text
        for mode in ("chunk", "segment"):
            streamed = _post_tts(url, **text, stream="true", stream_mode=mode)
            assert streamed.status_code == 200, streamed.text
            assert streamed.headers["transfer-encoding"] == "chunked" and "content-length" not in streamed.headers
            assert struct.unpack("<I", streamed.content[40:44])[0] == 0xFFFFFFFF  # a streaming header
            np.testing.assert_array_equal(_pcm(streamed.content), _pcm(whole.content), err_msg=mode)


def test_chunks_arrive_before_the_gpt_has_finished_the_segment(settings_with_voice):
    """The demo GPT decodes 249 codes about as fast as s2mel renders the first chunk, so a race between
    them would make this test depend on the machine. Every code after the first response (20 codes) is
    held back from the service until the client has audio (for at most a minute): audio can come first
    only if chunks are rendered while the code stream is still open."""
    app, served = _served(settings_with_voice, stream_chunk_codes="20,40,80")
    triton = app.state.service.triton
    first_audio = threading.Event()
    finished_at = hold_codes(triton, after=20, until=first_audio)
    s2mel_codes: list[int] = []
    prompt_frames: list[tuple[int, int]] = []
    infer = triton.infer

    async def observed_infer(model, inputs, *args, **kwargs):
        if model == "s2mel":
            s2mel_codes.append(int(inputs["semantic_codes"].shape[1]))
            prompt_frames.append((inputs["ref_mel"].shape[2], inputs["prompt_condition"].shape[1]))
        return await infer(model, inputs, *args, **kwargs)

    triton.infer = observed_infer
    with served as url, httpx.stream("POST", f"{url}/v1/tts", data={**LONG, "stream": "true"}, timeout=120) as response:
        assert response.status_code == 200
        stream, first_audio_at = b"", None
        for data in response.iter_raw():
            stream += data
            if first_audio_at is None and len(stream) > 44:  # past the WAV header
                first_audio_at = time.monotonic()
                first_audio.set()
    assert len(finished_at) == 1
    assert first_audio_at is not None and first_audio_at < finished_at[0], "the first audio waited for the segment"
    assert len(s2mel_codes) >= 2 and s2mel_codes[0] < 249, s2mel_codes
    # Chunk 0: the 6 s speaker prompt cut to STREAM_PROMPT_SECONDS (2 s = 172 frames); later chunks: no
    # speaker prompt, the mel already rendered as theirs.
    assert prompt_frames[0] == (172, 172), prompt_frames
    assert all(condition == 0 and 0 < mel for mel, condition in prompt_frames[1:]), prompt_frames
    # The chunks make one WAV as long as the 249 codes call for (s2mel frames x 256 samples).
    assert _pcm(stream).shape[0] == round(249 * 1.72) * 256


def test_later_segments_start_decoding_once_the_first_chunk_is_rendered(settings_with_voice):
    """In chunks, the listener waits for segment 0's first chunk: the next segment's GPT starts after it,
    not alongside it, where it would compete for the machine."""
    app, served = _served(settings_with_voice, stream_chunk_codes="20,40,80", max_text_tokens_per_segment=8)
    triton = app.state.service.triton
    events: list[str] = []
    decode_stream, infer = triton.decode_stream, triton.infer

    async def observed_decode_stream(*args, **kwargs):
        events.append("decode")
        async for chunk in decode_stream(*args, **kwargs):
            yield chunk

    async def observed_infer(model, *args, **kwargs):
        result = await infer(model, *args, **kwargs)
        if model == "s2mel":
            events.append("s2mel")
        return result

    triton.decode_stream, triton.infer = observed_decode_stream, observed_infer
    text = {"text": "Hello there. This is a test of streaming, in two sentences.", "max_codes": "60",
            "min_codes": "60", "stream_mode": "chunk"}
    with served as url:
        response = _post_tts(url, **text, stream="true")
    assert response.status_code == 200, response.text
    assert events.count("decode") >= 2, events
    second_decode = events.index("decode", 1)
    assert "s2mel" in events[:second_decode], events


def test_every_stream_format_parses_and_carries_the_whole_audio(settings_with_voice):
    request = {"input": TEXT, "voice": "streamer"}
    with _served(settings_with_voice)[1] as url:
        wav = httpx.post(f"{url}/v1/audio/speech", json={**request, "response_format": "wav"}, timeout=120)
        pcm = httpx.post(f"{url}/v1/audio/speech", json={**request, "response_format": "pcm"}, timeout=120)
        for response in (wav, pcm):
            assert response.status_code == 200, response.text
        assert wav.headers["content-type"] == "audio/wav" and pcm.headers["content-type"] == "audio/pcm"
        assert _pcm(wav.content).shape[0] == (len(wav.content) - 44) // 2 > 0
        assert len(pcm.content) % 2 == 0 and len(pcm.content) > 0

        for response_format in ("wav", "pcm"):
            sse = httpx.post(f"{url}/v1/audio/speech", timeout=120,
                             json={**request, "response_format": response_format, "stream_format": "sse"})
            assert sse.status_code == 200, sse.text
            assert sse.headers["content-type"].startswith("text/event-stream")
            events = _sse_events(sse.text)
            assert [event["type"] for event in events[-1:]] == ["speech.audio.done"]
            deltas = [event for event in events[:-1]]
            assert deltas and all(event["type"] == "speech.audio.delta" for event in deltas)
            audio = b"".join(base64.b64decode(event["audio"], validate=True) for event in deltas)
            if response_format == "wav":
                assert audio[:4] == b"RIFF" and _pcm(audio).shape[0] == (len(audio) - 44) // 2 > 0
            else:
                assert len(audio) % 2 == 0 and len(audio) > 0
            usage = events[-1]["usage"]
            assert usage["input_tokens"] > 0 and usage["output_tokens"] > 0
            assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]


def _sse_events(body: str) -> list[dict]:
    blocks = [block for block in body.split("\n\n") if block.strip()]
    assert all(block.startswith("data: ") for block in blocks), blocks[:3]
    return [json.loads(block.removeprefix("data: ")) for block in blocks]


def test_a_client_that_leaves_mid_stream_frees_its_decoder_slot(settings_with_voice):
    # Many diffusion steps: the stream is slow, so the GPT is still decoding when the client leaves.
    with _served(settings_with_voice, stream_chunk_codes="20")[1] as url:
        with httpx.stream("POST", f"{url}/v1/tts", data={**LONG, "stream": "true", "diffusion_steps": "60"},
                          timeout=120) as response:
            assert response.status_code == 200
            got = 0
            for data in response.iter_raw():
                got += len(data)
                if got > 44:  # header and the first audio
                    break
        in_flight, _ = in_flight_after_waiting(url)
        assert in_flight == [0.0, 0.0, 0.0], f"still in flight after the client left: {in_flight}"
        # The next request is served at once: the abandoned one left no work behind it.
        response = _post_tts(url, max_codes="20", min_codes="0")
        assert response.status_code == 200


def test_a_failure_after_the_first_audio_ends_the_stream_visibly_and_is_reported_once(
        settings_with_voice, triton_server, bugsink_server):
    """s2mel reloaded without its code_offset input: the first chunk renders, the second is refused: the
    connection closes without the final chunk. (The SSE error event: tests/test_orchestrator_api.py.)"""
    def without_code_offset(config: dict) -> None:
        config["input"] = [tensor for tensor in config["input"] if tensor["name"] != "code_offset"]

    app, served = _served(settings_with_voice, stream_chunk_codes="1")
    # Codes after the 100th are held back until the client has audio: the chunks after that start past
    # code 100, so they send a code_offset (their context starts at code 50 or later), whatever the speed
    # of the GPT against s2mel on this machine.
    first_audio = threading.Event()
    hold_codes(app.state.service.triton, after=100, until=first_audio)
    with model_reconfigured(triton_server, "s2mel", without_code_offset), served as url, \
            httpx.stream("POST", f"{url}/v1/tts", data={**LONG, "stream": "true"}, timeout=120) as response:
        assert response.status_code == 200
        request_id = response.headers["x-request-id"]
        received = b""
        with pytest.raises(httpx.RemoteProtocolError):  # cut without the final chunk
            for data in response.iter_raw():
                received += data
                if len(received) > 44:  # past the WAV header
                    first_audio.set()
        assert len(received) > 44  # the first chunk came through
    sentry_sdk.flush(timeout=5)
    stored = bugsink_server.events(wait_for=1, timeout_s=20, tags={"request_id": request_id})
    errors = [event for event in stored if event["level"] == "error"]
    assert len(errors) == 1 and errors[0]["tags"]["stage"] == "s2mel", errors
