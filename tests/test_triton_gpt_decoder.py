"""The gpt_decoder model served by a real local tritonserver: codes stream out over gRPC, equal to the
engine's own decoding; concurrent streams each get their codes; cancellation frees the slot; a full
decoder refuses with "overloaded" instead of hanging."""

from __future__ import annotations

import queue
import threading
import time

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
              "stream_every": np.int32}
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
            error = str(failure)
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


def test_cancelled_stream_frees_its_slot(decoder_server, conditioning):
    _, latents, emovec = conditioning
    # A greedy request that would run for LONG_MAX_CODES codes (many seconds), cancelled by the client
    # after its first chunk.
    long_request = _inputs(latents, emovec, [5, 6], do_sample=False, repetition_penalty=1.0,
                           max_codes=LONG_MAX_CODES, stream_every=1)
    _, _, reason, _, _ = _stream(decoder_server.grpc_url, "gpt_decoder_one_slot", long_request,
                                 cancel_after_first=True)
    assert reason == "client-cancelled"
    # Were it still running, the next request would wait in the queue for minutes; once the
    # cancellation has reached the engine, it is served at once.
    short = _inputs(latents, emovec, [5, 6], do_sample=False, max_codes=3)
    try:
        _, _, reason, error, _ = _stream(decoder_server.grpc_url, "gpt_decoder_one_slot", short, timeout=30)
    except queue.Empty:
        pytest.fail("the cancelled request still holds the decoder's only slot")
    assert error is None and reason == "max_codes"


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
