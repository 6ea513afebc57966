"""The gpt_decoder model served by a real local tritonserver: codes stream out over gRPC, equal to the
engine's own decoding; concurrent streams each get their codes; a client that goes away frees its
slot; a request past its deadline is answered "deadline exceeded" without taking a slot, and a running
one is stopped; a full decoder refuses with "overloaded" instead of hanging; one sender thread serves
every request."""

from __future__ import annotations

import queue
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

grpcclient = pytest.importorskip("tritonclient.grpc")
from conftest import LONG_MAX_CODES
from tritonclient.utils import np_to_triton_dtype

from indextts2.checkpoint_dir import load_networks
from indextts2.engine import DecoderEngine, DecodeRequest, SamplingConfig


@pytest.fixture(scope="module")
def decoder_server(triton_server):
    return triton_server


@pytest.fixture(scope="module")
def conditioning(demo_checkpoint):
    networks = load_networks(demo_checkpoint)
    rng = torch.Generator().manual_seed(0)
    features = torch.randn(1, 40, 64, generator=rng)
    lengths = torch.tensor([40])
    with torch.no_grad():
        latents = networks.gpt.get_conditioning(features, lengths)[0]
        emovec = networks.gpt.get_emovec(features, lengths)[0]
    return networks, latents, emovec


def _inputs(latents, emovec, text_ids, **scalars):
    arrays = {"speaker_latents": latents.numpy(), "emotion_vector": emovec.numpy(),
              "text_ids": np.asarray(text_ids, dtype=np.int64)}
    dtypes = {"do_sample": np.bool_, "temperature": np.float32, "top_k": np.int32, "top_p": np.float32,
              "repetition_penalty": np.float32, "max_codes": np.int32, "min_codes": np.int32, "seed": np.int64,
              "stream_every": np.int32, "deadline_unix_ms": np.int64}
    arrays.update({name: np.array([value], dtype=dtypes[name]) for name, value in scalars.items()})
    tensors = []
    for name, array in arrays.items():
        tensor = grpcclient.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
        tensor.set_data_from_numpy(array)
        tensors.append(tensor)
    return tensors


def _stream(url: str, model: str, inputs, cancel_after_first: bool = False, timeout: float = 60.0):
    """(codes, latents, finish_reason, error message, number of responses) of one streamed request."""
    responses: queue.Queue = queue.Queue()
    client = grpcclient.InferenceServerClient(url)
    client.start_stream(callback=lambda result, error: responses.put((result, error)))
    client.async_stream_infer(model, inputs, enable_empty_final_response=False)
    codes, latents, reason, error, count = [], [], None, None, 0
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result, failure = responses.get(timeout=timeout)
        if failure is not None:
            error = failure.message()
            break
        count += 1
        codes.append(result.as_numpy("semantic_codes"))
        latents.append(result.as_numpy("code_latents"))
        finish = result.as_numpy("finish_reason")
        if cancel_after_first:
            client.stop_stream(cancel_requests=True)
            return np.concatenate(codes), None, "client-cancelled", None, count
        if finish is not None:
            reason = finish[0].decode()
            break
    client.stop_stream()
    return np.concatenate(codes) if codes else None, np.concatenate(latents) if latents else None, reason, error, count


def _alone(networks, latents, emovec, text_ids, sampling: SamplingConfig):
    engine = DecoderEngine(networks.gpt, max_slots=1)
    handle = engine.submit(DecodeRequest(latents, emovec, torch.tensor(text_ids), sampling))
    engine.run_until_idle()
    return handle.result(timeout=5)


def test_streamed_codes_and_latents_equal_the_engine(decoder_server, conditioning):
    networks, latents, emovec = conditioning
    text_ids = [5, 17, 33, 60, 61, 62]
    codes, code_latents, reason, error, count = _stream(
        decoder_server.grpc_url, "gpt_decoder",
        _inputs(latents, emovec, text_ids, seed=7, max_codes=40, stream_every=8),
    )
    assert error is None
    expected = _alone(networks, latents, emovec, text_ids, SamplingConfig(
        do_sample=True, temperature=0.8, top_k=30, top_p=0.8, repetition_penalty=10.0, max_codes=40, seed=7))
    assert codes.tolist() == expected.codes.tolist()
    np.testing.assert_allclose(code_latents, expected.latents.numpy(), atol=1e-4)
    assert reason == ("stop" if expected.stop_reason.value == "stop_code" else "max_codes")
    assert count >= 1 + len(codes) // 8  # streamed in chunks, then the final response


def test_concurrent_streams_each_get_their_own_codes(decoder_server, conditioning):
    networks, latents, emovec = conditioning
    jobs = [([5, 6, 7 + i, 40], 100 + i) for i in range(4)]
    results: dict[int, tuple] = {}

    def run(index: int) -> None:
        text_ids, seed = jobs[index]
        results[index] = _stream(decoder_server.grpc_url, "gpt_decoder",
                                 _inputs(latents, emovec, text_ids, seed=seed, max_codes=30))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(jobs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    for index, (text_ids, seed) in enumerate(jobs):
        expected = _alone(networks, latents, emovec, text_ids, SamplingConfig(
            do_sample=True, temperature=0.8, top_k=30, top_p=0.8, repetition_penalty=10.0, max_codes=30, seed=seed))
        assert results[index][3] is None
        assert results[index][0].tolist() == expected.codes.tolist(), f"request {index}"


def test_invalid_request_gets_a_clear_error(decoder_server, conditioning):
    _, latents, emovec = conditioning
    _, _, _, error, _ = _stream(decoder_server.grpc_url, "gpt_decoder", _inputs(latents[:, :10], emovec, [5, 6]))
    assert error is not None and "invalid request" in error


def _probe_overload(url: str, inputs, count: int) -> list[str]:
    """Send `count` requests back to back on one stream; the error messages of those refused."""
    responses: queue.Queue = queue.Queue()
    client = grpcclient.InferenceServerClient(url)
    client.start_stream(callback=lambda result, error: responses.put((result, error)))
    for index in range(count):
        client.async_stream_infer("gpt_decoder_one_slot", inputs, request_id=str(index))
    errors, finished = [], 0
    while finished + len(errors) < count:
        result, error = responses.get(timeout=120)
        if error is not None:
            errors.append(str(error))
        elif result.as_numpy("finish_reason") is not None:
            finished += 1
    client.stop_stream()
    return errors


def test_full_decoder_refuses_at_once_with_overloaded(decoder_server, conditioning):
    _, latents, emovec = conditioning
    # Three requests back to back: the first takes the only slot, the second the only place in the
    # queue, the third is refused without waiting for either.
    errors = _probe_overload(decoder_server.grpc_url,
                             _inputs(latents, emovec, [5, 6], do_sample=False, repetition_penalty=1.0, max_codes=200),
                             count=3)
    assert len(errors) == 1 and "overloaded" in errors[0]


def _never_ending(latents, emovec, **scalars):
    """A request that gpt_decoder_one_slot would decode for minutes (its GPT never stops)."""
    return _inputs(latents, emovec, [5, 6], do_sample=False, repetition_penalty=1.0, max_codes=LONG_MAX_CODES,
                   stream_every=1, **scalars)


def _unix_ms(seconds_from_now: float) -> int:
    return int((time.time() + seconds_from_now) * 1000)


def test_client_that_goes_away_mid_stream_frees_its_slot_for_the_next_request(decoder_server, conditioning):
    _, latents, emovec = conditioning
    url = decoder_server.grpc_url
    # The first client reads one chunk of a request that would run for minutes, then closes its stream.
    _, _, reason, _, _ = _stream(url, "gpt_decoder_one_slot", _never_ending(latents, emovec), cancel_after_first=True)
    assert reason == "client-cancelled"
    # Had the first request kept the only slot, this one would wait in the queue for minutes; once the
    # sender thread has seen the cancellation (within 50 ms) and the engine stepped, it runs.
    started = time.monotonic()
    try:
        codes, _, reason, _, _ = _stream(url, "gpt_decoder_one_slot", _never_ending(latents, emovec),
                                         cancel_after_first=True, timeout=10)
    except queue.Empty:
        pytest.fail("the request of the client that went away still holds the decoder's only slot")
    assert len(codes) == 1 and time.monotonic() - started < 10


def test_request_past_its_deadline_gets_deadline_exceeded_at_once(decoder_server, conditioning):
    _, latents, emovec = conditioning
    started = time.monotonic()
    codes, _, reason, error, _ = _stream(
        decoder_server.grpc_url, "gpt_decoder",
        _inputs(latents, emovec, [5, 6, 7], max_codes=40, deadline_unix_ms=_unix_ms(-1.0)), timeout=10,
    )
    assert error is not None and error.startswith("deadline exceeded before decoding started"), error
    assert codes is None and reason is None
    assert time.monotonic() - started < 5


def test_running_request_past_its_deadline_is_stopped_and_frees_its_slot(decoder_server, conditioning):
    _, latents, emovec = conditioning
    url = decoder_server.grpc_url
    codes, _, reason, error, _ = _stream(url, "gpt_decoder_one_slot",
                                         _never_ending(latents, emovec, deadline_unix_ms=_unix_ms(1.5)), timeout=30)
    assert error is not None and error.startswith("deadline exceeded after"), error
    assert codes is not None and len(codes) >= 1  # it ran until its deadline
    _, _, reason, error, _ = _stream(url, "gpt_decoder_one_slot",
                                     _inputs(latents, emovec, [5, 6], do_sample=False, max_codes=3), timeout=10)
    assert error is None and reason == "max_codes"


def _stub_threads(server, model: str) -> int:
    """Threads of the Python backend stub process that runs `model` (a child of tritonserver)."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            parent = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            arguments = (proc / "cmdline").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if parent == server.pid and f"/{model}/1/model.py".encode() in b" ".join(arguments):
            return len(list((proc / "task").iterdir()))
    raise AssertionError(f"no stub process of {model} under tritonserver {server.pid}")


def _threads_while_streaming(server, inputs, count: int) -> int:
    """Stub threads of gpt_decoder while `count` requests stream at once (each has sent a chunk)."""
    responses: queue.Queue = queue.Queue()
    client = grpcclient.InferenceServerClient(server.grpc_url)
    client.start_stream(callback=lambda result, error: responses.put((result, error)))
    try:
        for index in range(count):
            client.async_stream_infer("gpt_decoder", inputs, request_id=str(index))
        streaming: set[str] = set()
        while len(streaming) < count:
            result, error = responses.get(timeout=60)
            assert error is None, error
            streaming.add(result.get_response().id)
        return _stub_threads(server, "gpt_decoder")
    finally:
        client.stop_stream(cancel_requests=True)


def test_one_sender_thread_serves_any_number_of_requests(decoder_server, conditioning):
    _, latents, emovec = conditioning
    # Requests of 249 codes (the demo GPT's longest), read while all of them are still streaming.
    inputs = _inputs(latents, emovec, [5, 6, 7], seed=3, max_codes=249, min_codes=249, stream_every=1)
    one = _threads_while_streaming(decoder_server, inputs, count=1)
    eight = _threads_while_streaming(decoder_server, inputs, count=8)
    # A thread per request (the old adapter) would add seven.
    assert eight == one, f"{one} threads for one request, {eight} for eight"


def test_min_codes_input_gives_exactly_that_many_codes(decoder_server, conditioning):
    networks, latents, emovec = conditioning
    text_ids = [5, 17, 33]
    n = 120  # long enough that the random demo GPT would usually have drawn its stop code by then
    codes, code_latents, reason, error, _ = _stream(
        decoder_server.grpc_url, "gpt_decoder", _inputs(latents, emovec, text_ids, seed=11, max_codes=n, min_codes=n),
    )
    assert error is None
    assert reason == "max_codes" and len(codes) == n and code_latents.shape[0] == n
    expected = _alone(networks, latents, emovec, text_ids, SamplingConfig(
        do_sample=True, temperature=0.8, top_k=30, top_p=0.8, repetition_penalty=10.0, max_codes=n, min_codes=n,
        seed=11))
    assert codes.tolist() == expected.codes.tolist()
