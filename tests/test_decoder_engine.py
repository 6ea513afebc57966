"""The `gpt_decoder` engine: KV-cached continuous batching against the reference decoding loop and the
official greedy codes, per-sequence sampling, streaming, one event queue for all requests,
cancellation, deadlines, overload and failures."""

from __future__ import annotations

import queue
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from golden import load_golden

from indextts2.config import load_config
from indextts2.engine import (
    DecoderEngine,
    DecodeRequest,
    EngineClosedError,
    EngineOverloadedError,
    SamplingConfig,
    StopReason,
)
from indextts2.networks.gpt import UnifiedVoice, load_gpt

TOL = 1e-4  # GOLDEN.md, single module


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def load_checkpoint_gpt(model_dir: Path) -> UnifiedVoice:
    config = load_config(model_dir / "config.yaml")
    return load_gpt(config["gpt"], model_dir / "gpt.pth", feature_dim=config["semantic_codec"]["hidden_size"])


@pytest.fixture(scope="module")
def golden_model(golden_tiny: Path) -> UnifiedVoice:
    return load_checkpoint_gpt(golden_tiny)


@pytest.fixture(scope="module")
def demo_model(demo_checkpoint) -> UnifiedVoice:
    # A random GPT: sampled sequences end when they happen to draw the stop code.
    return load_checkpoint_gpt(demo_checkpoint.model_dir)


@pytest.fixture(scope="module")
def gen(golden_tiny: Path) -> dict[str, np.ndarray]:
    return load_golden(golden_tiny, "gpt_generate")


def golden_request(gen: dict[str, np.ndarray], sampling: SamplingConfig, **options) -> DecodeRequest:
    return DecodeRequest(
        speaker_latents=torch.from_numpy(gen["speech_conditioning_latent"][0]),
        emotion_vector=torch.from_numpy(gen["emo_vec"][0]),
        text_ids=torch.from_numpy(gen["text_tokens"][0]),
        sampling=sampling,
        **options,
    )


def random_request(model: UnifiedVoice, request_id: str, text_len: int, seed: int, sampling: SamplingConfig):
    """Stand-in conditioning and text for `model`, drawn from `seed`."""
    g = torch.Generator().manual_seed(seed)
    dim = model.model_dim
    return DecodeRequest(
        speaker_latents=torch.randn(model.perceiver_encoder.latents.shape[0], dim, generator=g),
        emotion_vector=0.5 * torch.randn(dim, generator=g),
        text_ids=torch.randint(2, model.text_embedding.num_embeddings, (text_len,), generator=g),
        sampling=sampling,
        request_id=request_id,
    )


def run_alone(model: UnifiedVoice, request: DecodeRequest):
    engine = DecoderEngine(model, max_slots=1)
    handle = engine.submit(request)
    engine.run_until_idle()
    return handle.result(timeout=0)


def teacher_forced_latents(model: UnifiedVoice, request: DecodeRequest, codes: torch.Tensor) -> torch.Tensor:
    text = request.text_ids[None]
    with torch.inference_mode():
        return model(
            request.speaker_latents[None],
            text,
            torch.tensor([text.shape[1]]),
            codes[None],
            torch.tensor([codes.numel()]),
            request.emotion_vector[None],
        )[0]


# --- against the reference loop and the official codes ---------------------------------------------


@pytest.mark.parametrize("official_positions", [False, True])
def test_greedy_engine_decoding_equals_full_recomputation(golden_model, gen, official_positions):
    sampling = SamplingConfig(repetition_penalty=10.0, max_codes=16)
    request = golden_request(gen, sampling, official_positions=official_positions)
    result = run_alone(golden_model, request)
    reference = golden_model.generate(
        request.speaker_latents, request.emotion_vector, request.text_ids, request.sampling,
        official_positions=official_positions, use_cache=False,
    )
    assert result.stop_reason == StopReason.MAX_CODES
    assert result.codes.tolist() == reference.codes.tolist()
    assert (result.latents - reference.latents).abs().max().item() < 1e-5


def test_engine_with_official_positions_reproduces_official_greedy_codes_in_one_batch(golden_model, gen):
    engine = DecoderEngine(golden_model, max_slots=2)
    max_codes = int(gen["max_generate_length"])
    handles = {
        penalty: engine.submit(
            golden_request(gen, SamplingConfig(repetition_penalty=float(penalty), max_codes=max_codes),
                           official_positions=True, request_id=f"rep{penalty}")
        )
        for penalty in (1, 10)
    }
    engine.run_until_idle()
    for penalty, handle in handles.items():
        result = handle.result(timeout=0)
        assert result.codes.tolist() == gen[f"codes_rep{penalty}"][0].tolist()
        assert result.stop_reason == StopReason.MAX_CODES
    # Both sequences ran in every decode step: one prefill step for both, then max_codes - 1 steps.
    assert engine.stats.prefill_counts[0] == 2
    assert engine.stats.decode_batch_sizes == [2] * (max_codes - 1)


def test_engine_latents_equal_the_teacher_forced_forward_on_its_codes(golden_model, gen):
    engine = DecoderEngine(golden_model, max_slots=2)
    greedy = golden_request(gen, SamplingConfig(repetition_penalty=10.0, max_codes=20))
    sampled = golden_request(gen, SamplingConfig(do_sample=True, top_k=30, top_p=0.9, seed=3, max_codes=12))
    sampled.text_ids = sampled.text_ids[:7]
    handles = [engine.submit(greedy), engine.submit(sampled)]
    engine.run_until_idle()
    for request, handle in zip((greedy, sampled), handles, strict=True):
        result = handle.result(timeout=0)
        expected = teacher_forced_latents(golden_model, request, result.codes)
        assert result.latents.shape == expected.shape
        assert (result.latents - expected).abs().max().item() <= TOL


# --- continuous batching and per-sequence sampling --------------------------------------------------

DEMO_SAMPLINGS = [
    SamplingConfig(do_sample=True, temperature=0.8, top_k=30, top_p=0.8, repetition_penalty=10.0),
    SamplingConfig(do_sample=True),
    SamplingConfig(do_sample=True, temperature=1.2, top_k=50),
    SamplingConfig(do_sample=True, top_p=0.9, repetition_penalty=2.0),
    SamplingConfig(repetition_penalty=10.0),  # greedy in the same batch
    SamplingConfig(do_sample=True, temperature=0.9, penalize_prompt_ids=False),
]


def demo_requests(model: UnifiedVoice, max_codes: int = 150) -> list[DecodeRequest]:
    text_lengths = [5, 17, 40, 9, 23, 2]
    return [
        random_request(
            model, f"req{i}", text_len, seed=100 + i,
            sampling=SamplingConfig(**{**sampling.__dict__, "seed": 1000 + i, "max_codes": max_codes}),
        )
        for i, (text_len, sampling) in enumerate(zip(text_lengths, DEMO_SAMPLINGS, strict=True))
    ]


def test_concurrent_requests_share_decode_steps_and_each_gets_its_solo_codes(demo_model):
    requests = demo_requests(demo_model)
    engine = DecoderEngine(demo_model, max_slots=3, max_waiting=3)
    handles = [engine.submit(request) for request in requests]
    engine.run_until_idle()
    results = [handle.result(timeout=0) for handle in handles]

    # Three slots for six requests: three start together, the others join as slots free up.
    batch_sizes = engine.stats.decode_batch_sizes
    assert engine.stats.prefill_counts[0] == 3
    assert sum(engine.stats.prefill_counts) == 6
    assert max(batch_sizes) == 3
    # Each sequence's first output (a code or the stop code) comes from its prefill, the rest from
    # shared decode steps.
    outputs = [len(r.codes) + (r.stop_reason == StopReason.STOP_CODE) for r in results]
    assert sum(batch_sizes) == sum(outputs) - len(results)
    assert len(batch_sizes) < sum(batch_sizes) / 2

    assert any(r.stop_reason == StopReason.STOP_CODE for r in results)
    for request, result in zip(requests, results, strict=True):
        assert demo_model.stop_mel_token not in result.codes.tolist()
        alone = run_alone(demo_model, request)
        assert result.codes.tolist() == alone.codes.tolist()
        assert result.stop_reason == alone.stop_reason
        assert (result.latents - alone.latents).abs().max().item() < 1e-5
        reference = demo_model.generate(
            request.speaker_latents, request.emotion_vector, request.text_ids, request.sampling
        )
        assert result.codes.tolist() == reference.codes.tolist()


def test_chunks_come_every_stream_every_codes_then_the_remainder_then_the_final_event(golden_model, gen):
    engine = DecoderEngine(golden_model, max_slots=1)
    sampling = SamplingConfig(repetition_penalty=10.0, max_codes=10)
    handle = engine.submit(golden_request(gen, sampling, stream_every=4))
    engine.run_until_idle()
    events = list(handle)
    assert [len(e.codes) for e in events] == [4, 4, 2, 0]
    assert [e.offset for e in events] == [0, 4, 8, 10]
    assert [e.finished for e in events] == [False, False, False, True]
    assert events[-1].stop_reason == StopReason.MAX_CODES and events[-1].error is None
    assert all(e.latents.shape == (len(e.codes), golden_model.model_dim) for e in events)
    assert all(e.codes.dtype == torch.long and e.latents.dtype == torch.float32 for e in events)


# --- cancellation, overload, failures --------------------------------------------------------------


def test_cancelled_request_frees_its_slot_for_a_waiting_request(golden_model, gen):
    engine = DecoderEngine(golden_model, max_slots=1, max_waiting=2)
    longest = golden_model.max_mel_tokens - 1  # it is cancelled long before
    long = engine.submit(golden_request(gen, SamplingConfig(max_codes=longest), request_id="long"))
    waiting = engine.submit(golden_request(gen, SamplingConfig(max_codes=5), request_id="waiting"))
    queued = engine.submit(golden_request(gen, SamplingConfig(max_codes=5), request_id="queued"))
    for _ in range(3):
        engine.step()  # the first step prefills (code 0) and decodes (code 1): 4 codes after 3 steps
    assert engine.num_running == 1 and engine.num_waiting == 2

    # A queued request ends at once; a running one at the next step boundary.
    assert engine.cancel("queued")
    assert queued.result(timeout=0).stop_reason == StopReason.CANCELLED
    assert engine.cancel("long")
    engine.step()
    result = long.result(timeout=0)
    assert result.stop_reason == StopReason.CANCELLED and len(result.codes) == 4
    assert engine.stats.prefill_counts[-1] == 1  # the waiting request took the freed slot at once
    engine.run_until_idle()
    assert waiting.result(timeout=0).stop_reason == StopReason.MAX_CODES
    assert not engine.cancel("long") and not engine.cancel("unknown")


def test_submission_beyond_busy_slots_and_full_queue_raises_overloaded_error(golden_model, gen):
    engine = DecoderEngine(golden_model, max_slots=2, max_waiting=1)
    handles = [engine.submit(golden_request(gen, SamplingConfig(max_codes=3))) for _ in range(3)]
    with pytest.raises(EngineOverloadedError, match="overloaded: 0 running, 3 waiting"):
        engine.submit(golden_request(gen, SamplingConfig(max_codes=3)))
    engine.step()
    with pytest.raises(EngineOverloadedError, match="2 running, 1 waiting"):
        engine.submit(golden_request(gen, SamplingConfig(max_codes=3)))
    engine.run_until_idle()
    assert all(h.result(timeout=0).stop_reason == StopReason.MAX_CODES for h in handles)
    late = engine.submit(golden_request(gen, SamplingConfig(max_codes=3)))
    engine.run_until_idle()
    assert late.result(timeout=0).stop_reason == StopReason.MAX_CODES


def test_max_prefills_per_step_spreads_admissions_over_steps(golden_model, gen):
    engine = DecoderEngine(golden_model, max_slots=3, max_prefills_per_step=1)
    for _ in range(3):
        engine.submit(golden_request(gen, SamplingConfig(max_codes=5)))
    engine.run_until_idle()
    assert engine.stats.prefill_counts[:4] == [1, 1, 1, 0]
    assert engine.stats.decode_batch_sizes[:3] == [1, 2, 3]


def test_invalid_requests_get_an_error_event_and_the_others_are_unaffected(golden_model, gen):
    sampling = SamplingConfig(repetition_penalty=10.0, max_codes=8)
    dim = golden_model.model_dim
    # The golden prefix (speaker latents, speed embeddings, text with its start and stop ids) has room
    # for 52 codes in the engine's cache: enough for the good requests' 8, not for 80.
    max_seq_len = gen["prefix_embeds"].shape[1] + 52
    good = [golden_request(gen, sampling, request_id=f"good{i}") for i in range(2)]
    good[1].text_ids = good[1].text_ids[:4]
    bad = {
        f"speaker_latents must be float (N, {dim})": golden_request(gen, sampling),
        f"emotion_vector must be float ({dim},)": golden_request(gen, sampling),
        "text ids exceed max_text_tokens": golden_request(gen, sampling),
        "top_p must be in (0, 1]": golden_request(gen, SamplingConfig(do_sample=True, top_p=0.0)),
        "exceed the engine's max_seq_len": golden_request(gen, SamplingConfig(max_codes=80)),
        "is already in use": golden_request(gen, sampling, request_id="good0"),
        # Fails at its prefill; good1 then reuses its slot, where the stale NaN keys past good1's
        # shorter prefix must not leak through the mask.
        "non-finite logits": golden_request(gen, sampling),
    }
    requests = list(bad.values())
    requests[0].speaker_latents = requests[0].speaker_latents[:, : dim - 1]
    requests[1].emotion_vector = requests[1].emotion_vector[None, None]
    requests[2].text_ids = torch.full((golden_model.max_text_tokens + 1,), 5)
    requests[6].speaker_latents = requests[6].speaker_latents.clone()
    requests[6].speaker_latents[3, 5] = float("nan")

    engine = DecoderEngine(golden_model, max_slots=3, max_seq_len=max_seq_len)
    good_handles = [engine.submit(good[0])]
    bad_handles = [engine.submit(request) for request in requests]
    good_handles.append(engine.submit(good[1]))
    engine.run_until_idle()

    for message, handle in zip(bad, bad_handles, strict=True):
        result = handle.result(timeout=0)
        assert result.stop_reason == StopReason.ERROR
        assert message in result.error
        assert result.codes.numel() == 0
    for request, handle in zip(good, good_handles, strict=True):
        result = handle.result(timeout=0)
        assert result.stop_reason == StopReason.MAX_CODES, result.error
        assert result.codes.tolist() == run_alone(golden_model, request).codes.tolist()


def test_failed_decode_step_fails_its_sequences_and_the_engine_keeps_serving(golden_model, gen, monkeypatch):
    engine = DecoderEngine(golden_model, max_slots=2)
    first = [engine.submit(golden_request(gen, SamplingConfig(max_codes=10))) for _ in range(2)]

    def broken_decode(*args, **kwargs):
        raise RuntimeError("injected fault")

    monkeypatch.setattr(engine._runner, "decode", broken_decode)
    engine.step()
    for handle in first:
        result = handle.result(timeout=0)
        assert result.stop_reason == StopReason.ERROR and "injected fault" in result.error
        assert len(result.codes) == 1  # the code from the prefill was still delivered
    assert engine.num_running == 0

    monkeypatch.undo()
    request = golden_request(gen, SamplingConfig(repetition_penalty=10.0, max_codes=6))
    after = engine.submit(request)
    engine.run_until_idle()
    assert after.result(timeout=0).codes.tolist() == run_alone(golden_model, request).codes.tolist()


# --- one event queue for every request ----------------------------------------------------------------


def test_engine_with_one_event_queue_puts_every_requests_events_there_in_order(demo_model):
    requests = demo_requests(demo_model, max_codes=40)[:4]
    for request, stream_every in zip(requests, (1, 4, 16, 7), strict=True):
        request.stream_every = stream_every
    events: queue.Queue = queue.Queue()
    engine = DecoderEngine(demo_model, max_slots=2, max_waiting=2, events=events)
    handles = [engine.submit(request) for request in requests]
    engine.run_until_idle()

    per_request: dict[str, list] = {request.request_id: [] for request in requests}
    while not events.empty():
        event = events.get_nowait()
        per_request[event.request_id].append(event)
    for request in requests:
        stream = per_request[request.request_id]
        alone = run_alone(demo_model, request)
        assert [e.finished for e in stream] == [False] * (len(stream) - 1) + [True]
        assert stream[-1].stop_reason == alone.stop_reason
        assert all(len(e.codes) == request.stream_every for e in stream[:-2])
        assert torch.cat([e.codes for e in stream]).tolist() == alone.codes.tolist()
    # The handles still cancel, but reading events through them would steal other requests' events.
    with pytest.raises(RuntimeError, match="one queue"):
        handles[0].result(timeout=0)


def test_cancel_from_another_thread_frees_the_slot_for_the_waiting_request(golden_model, gen):
    events: queue.Queue = queue.Queue()
    engine = DecoderEngine(golden_model, max_slots=1, max_waiting=1, events=events)
    engine.start()
    try:
        longest = golden_model.max_mel_tokens - 1
        engine.submit(golden_request(gen, SamplingConfig(max_codes=longest), request_id="long", stream_every=1))
        engine.submit(golden_request(gen, SamplingConfig(max_codes=3), request_id="next", stream_every=1))
        first = events.get(timeout=30)
        assert first.request_id == "long" and not first.finished
        assert engine.cancel("long")  # what the adapter's sender thread does for a client that went away
        finals = {}
        while len(finals) < 2:
            event = events.get(timeout=30)
            if event.finished:
                finals[event.request_id] = event
    finally:
        engine.stop()
    assert finals["long"].stop_reason == StopReason.CANCELLED
    assert finals["next"].stop_reason == StopReason.MAX_CODES and finals["next"].offset == 3
    assert engine.stats.total_prefills == 2


# --- deadlines -------------------------------------------------------------------------------------


class FakeClock:
    """A wall clock that tests move by hand."""

    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


def test_request_past_its_deadline_is_answered_at_once_and_never_takes_a_slot(golden_model, gen):
    clock = FakeClock()
    engine = DecoderEngine(golden_model, max_slots=1, clock=clock)
    late = engine.submit(golden_request(gen, SamplingConfig(max_codes=5), deadline=clock.now - 0.25))
    # No step was taken: the answer is already there.
    result = late.result(timeout=0)
    assert result.stop_reason == StopReason.DEADLINE and result.codes.numel() == 0
    assert result.error.startswith("deadline exceeded before decoding started (the deadline passed 250 ms ago)")
    assert not engine.has_work()
    engine.run_until_idle()
    assert engine.stats.total_prefills == 0

    in_time = engine.submit(golden_request(gen, SamplingConfig(max_codes=5), deadline=clock.now + 1))
    no_deadline = engine.submit(golden_request(gen, SamplingConfig(max_codes=5)))
    engine.run_until_idle()
    assert in_time.result(timeout=0).stop_reason == StopReason.MAX_CODES
    assert no_deadline.result(timeout=0).stop_reason == StopReason.MAX_CODES


def test_waiting_request_whose_deadline_passes_is_dropped_before_it_takes_a_slot(golden_model, gen):
    clock = FakeClock()
    engine = DecoderEngine(golden_model, max_slots=1, max_waiting=1, clock=clock)
    longest = golden_model.max_mel_tokens - 1
    running = engine.submit(golden_request(gen, SamplingConfig(max_codes=longest), request_id="running"))
    waiting = engine.submit(golden_request(gen, SamplingConfig(max_codes=5), deadline=clock.now + 2))
    engine.step()
    clock.now += 3
    engine.step()
    result = waiting.result(timeout=0)
    assert result.stop_reason == StopReason.DEADLINE
    assert result.error.startswith("deadline exceeded before decoding started")
    assert engine.num_waiting == 0 and engine.num_running == 1
    assert engine.stats.total_prefills == 1  # only the running request was ever prefilled
    # Its place in the queue is free again.
    engine.submit(golden_request(gen, SamplingConfig(max_codes=5)))
    engine.cancel("running")
    engine.run_until_idle()
    assert running.result(timeout=0).stop_reason == StopReason.CANCELLED


def test_running_sequence_past_its_deadline_is_stopped_and_its_slot_freed(golden_model, gen):
    clock = FakeClock()
    engine = DecoderEngine(golden_model, max_slots=1, max_waiting=1, clock=clock)
    longest = golden_model.max_mel_tokens - 1
    running = engine.submit(golden_request(gen, SamplingConfig(max_codes=longest), deadline=clock.now + 10,
                                           stream_every=3))
    waiting = engine.submit(golden_request(gen, SamplingConfig(max_codes=5)))
    for _ in range(3):
        engine.step()  # 4 codes: one chunk of 3 sent, 1 pending
    clock.now += 10.5
    engine.step()
    result = running.result(timeout=0)
    assert result.stop_reason == StopReason.DEADLINE and len(result.codes) == 4  # the pending code too
    assert result.error.startswith("deadline exceeded after 4 codes (the deadline passed 500 ms ago)")
    assert engine.stats.prefill_counts[-1] == 1  # the waiting request took the freed slot in that step
    engine.run_until_idle()
    assert waiting.result(timeout=0).stop_reason == StopReason.MAX_CODES


# --- the background thread -------------------------------------------------------------------------


def test_background_thread_serves_concurrent_submitters_like_the_synchronous_engine(demo_model):
    requests = demo_requests(demo_model, max_codes=60)[:4]
    engine = DecoderEngine(demo_model, max_slots=4)
    engine.start()
    results: dict[str, list] = {}

    def submit_and_read(request: DecodeRequest) -> None:
        results[request.request_id] = list(engine.submit(request))

    threads = [threading.Thread(target=submit_and_read, args=(r,)) for r in requests]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    engine.stop()

    for request in requests:
        events = results[request.request_id]
        assert events[-1].finished and events[-1].stop_reason in (StopReason.STOP_CODE, StopReason.MAX_CODES)
        codes = torch.cat([e.codes for e in events])
        assert codes.tolist() == run_alone(demo_model, request).codes.tolist()
    with pytest.raises(EngineClosedError):
        engine.submit(requests[0])


def test_stop_ends_waiting_and_running_requests_with_shutdown(golden_model, gen):
    engine = DecoderEngine(golden_model, max_slots=1)
    running = engine.submit(golden_request(gen, SamplingConfig(max_codes=50)))
    waiting = engine.submit(golden_request(gen, SamplingConfig(max_codes=50)))
    engine.step()
    engine.stop()
    result = running.result(timeout=0)
    assert result.stop_reason == StopReason.SHUTDOWN and len(result.codes) == 2
    assert waiting.result(timeout=0).stop_reason == StopReason.SHUTDOWN


def test_the_start_code_is_never_emitted_even_where_the_network_prefers_it(demo_checkpoint):
    # A GPT whose head all but always picks the start code: a random network can emit it, and the
    # codec has no embedding for it, so neither decoder may ever choose it.
    model = load_checkpoint_gpt(demo_checkpoint.model_dir)
    with torch.no_grad():
        model.mel_head.bias[model.start_mel_token] = 1e4
    requests = demo_requests(model, max_codes=12)
    engine = DecoderEngine(model, max_slots=3)
    handles = [engine.submit(request) for request in requests]
    engine.run_until_idle()
    for request, handle in zip(requests, handles, strict=True):
        codes = handle.result(timeout=5).codes
        assert model.start_mel_token not in codes.tolist()
        alone = model.generate(request.speaker_latents, request.emotion_vector, request.text_ids, request.sampling)
        assert model.start_mel_token not in alone.codes.tolist()


# --- min_codes (HF min_new_tokens) --------------------------------------------------------------------


@pytest.fixture(scope="module")
def stop_loving_model(demo_checkpoint) -> UnifiedVoice:
    # A GPT whose head all but always picks the stop code: without min_codes every sequence ends at once.
    model = load_checkpoint_gpt(demo_checkpoint.model_dir)
    with torch.no_grad():
        model.mel_head.bias[model.stop_mel_token] = 1e4
    return model


def test_min_codes_bars_the_stop_code_so_engine_and_generate_give_exactly_n_codes(stop_loving_model):
    model = stop_loving_model
    n = 9
    for request in demo_requests(model, max_codes=n)[:4]:
        assert model.generate(request.speaker_latents, request.emotion_vector, request.text_ids,
                              request.sampling).codes.numel() == 0
    # min_codes = max_codes = n: exactly n codes, sampled or greedy, batched or alone.
    requests = demo_requests(model, max_codes=n)
    for request in requests:
        request.sampling = SamplingConfig(**{**request.sampling.__dict__, "min_codes": n})
    engine = DecoderEngine(model, max_slots=3)
    handles = [engine.submit(request) for request in requests]
    engine.run_until_idle()
    for request, handle in zip(requests, handles, strict=True):
        result = handle.result(timeout=5)
        alone = model.generate(request.speaker_latents, request.emotion_vector, request.text_ids, request.sampling)
        assert result.stop_reason == StopReason.MAX_CODES and len(result.codes) == n
        assert result.codes.tolist() == alone.codes.tolist()
        assert model.stop_mel_token not in result.codes.tolist()


def test_min_codes_below_max_codes_lets_the_stop_code_end_the_sequence_right_after(stop_loving_model):
    model = stop_loving_model
    request = demo_requests(model, max_codes=40)[0]
    request.sampling = SamplingConfig(**{**request.sampling.__dict__, "min_codes": 5})
    result = run_alone(model, request)
    alone = model.generate(request.speaker_latents, request.emotion_vector, request.text_ids, request.sampling)
    assert result.stop_reason == StopReason.STOP_CODE and len(result.codes) == 5
    assert alone.stopped and alone.codes.tolist() == result.codes.tolist()


def test_negative_min_codes_is_an_invalid_request(demo_model):
    request = demo_requests(demo_model, max_codes=10)[0]
    request.sampling = SamplingConfig(**{**request.sampling.__dict__, "min_codes": -1})
    result = run_alone(demo_model, request)
    assert result.stop_reason == StopReason.ERROR and "min_codes" in result.error
