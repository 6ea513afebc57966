"""`DecoderEngine`: continuous-batching autoregressive decoding of the IndexTTS-2 GPT.

One engine owns one device's KV cache (`max_slots` sequences x `max_seq_len` tokens). Each step:

    retire cancelled and expired (deadline passed) -> admit waiting into free slots -> prefill each
    admitted sequence (its first code) -> ONE batched decode step for every running sequence -> emit
    chunks, retire finished ones

Requests join and leave the running batch between steps. Every step yields, per sequence, the code
and the `final_norm` hidden state of that step's input token (the s2mel latent), so no second GPT
pass is needed. Sampling follows `UnifiedVoice.generate` exactly, per sequence, with the sequence's
own `torch.Generator`: a sequence gets the same codes whatever it shares its steps with.

Use it synchronously (`submit`, then `step()` / `run_until_idle()`: deterministic, for tests and
benchmarks) or with its background thread (`start()` / `stop()`), which sleeps while idle.
`submit` and `cancel` may be called from any thread. Events go to each request's handle, or, with
`events=`, all onto that one queue (what a server's single response thread reads).

Devices: CPU float32 by default; on CUDA float16, the decode step in CUDA graphs where asked for
(`use_cuda_graphs`, off by default: that path has never run on a GPU; see runner.py).

Out of memory: a decode step that runs out of memory is run again on the first half of its batch (the
others wait for the next step), down to one sequence; when even that fails, the step's sequences end
with an error that starts with "out of memory" and the engine serves on (see `_decode_step`).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from indextts2.config import load_config
from indextts2.engine.cache import KVCacheManager
from indextts2.engine.device import (
    OutOfMemoryInjection,
    free_cached_memory,
    is_out_of_memory,
    out_of_memory_message,
)
from indextts2.engine.requests import (
    DEADLINE_EXCEEDED,
    DecodeEvent,
    DecodeRequest,
    EngineClosedError,
    RequestHandle,
    StopReason,
)
from indextts2.engine.runner import ModelRunner
from indextts2.engine.sampler import SequenceSampler, check_sampling_config, sample_next_codes
from indextts2.engine.scheduler import Scheduler, Sequence
from indextts2.networks.gpt import UnifiedVoice, load_gpt

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class StepRecord:
    """What one engine step did."""

    prefills: int  # sequences admitted and prefilled
    decode_batch: int  # sequences in the batched decode step (0: no decode step)
    decode_rows: int  # rows computed (free slots inside the span, CUDA bucket padding)
    prefill_seconds: float
    decode_seconds: float  # the decode step with its sampling


class EngineStats:
    """Per-step records (the last `history` steps that did work) and running totals. Thread-safe."""

    def __init__(self, history: int = 10_000):
        self._lock = threading.Lock()
        self._records: deque[StepRecord] = deque(maxlen=history)
        self.total_steps = 0
        self.total_prefills = 0
        self.total_decode_steps = 0
        self.total_codes = 0

    def record(self, record: StepRecord, codes: int) -> None:
        with self._lock:
            self._records.append(record)
            self.total_steps += 1
            self.total_prefills += record.prefills
            self.total_decode_steps += record.decode_batch > 0
            self.total_codes += codes

    @property
    def records(self) -> list[StepRecord]:
        with self._lock:
            return list(self._records)

    @property
    def decode_batch_sizes(self) -> list[int]:
        """Batch size of each decode step, in order."""
        return [r.decode_batch for r in self.records if r.decode_batch]

    @property
    def prefill_counts(self) -> list[int]:
        """Sequences prefilled in each step, in order (steps without work are not recorded)."""
        return [r.prefills for r in self.records]

    def reset(self) -> None:
        with self._lock:
            self._records.clear()
            self.total_steps = self.total_prefills = self.total_decode_steps = self.total_codes = 0


class DecoderEngine:
    """Continuous-batching GPT decoder over a preallocated KV cache.

    model: the GPT; the engine moves it to `device`/`dtype` (default: where its parameters are;
    float16 on CUDA, float32 elsewhere) and uses it read-only from its own thread.
    max_slots: sequences decoded together (KV cache rows). max_waiting: submissions queued beyond
    them; one more raises EngineOverloadedError. max_seq_len: cache positions per slot, default
    enough for the longest text and `max_mel_tokens` codes. max_prefills_per_step: admissions per
    step (None: as many as slots are free); a lower value bounds how long a burst of new requests
    holds up the running ones, at the cost of their own first code.
    events: one queue for every request's events (then read them there, not from the handles);
    None: each handle has its own. clock: the wall clock that request deadlines are compared with.
    """

    def __init__(
        self,
        model: UnifiedVoice,
        *,
        max_slots: int = 8,
        max_waiting: int = 32,
        max_seq_len: int | None = None,
        max_prefills_per_step: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        use_cuda_graphs: bool = False,
        stats_history: int = 10_000,
        events: queue.Queue[DecodeEvent] | None = None,
        clock: Callable[[], float] = time.time,
    ):
        device = torch.device(device) if device is not None else next(model.parameters()).device
        dtype = dtype or (torch.float16 if device.type == "cuda" else torch.float32)
        self.model = model.to(device=device, dtype=dtype).eval()
        self.device, self.dtype = device, dtype
        self.max_slots = max_slots
        if max_prefills_per_step is not None and max_prefills_per_step < 1:
            raise ValueError(f"max_prefills_per_step must be >= 1 or None, got {max_prefills_per_step}")
        self.max_prefills_per_step = max_prefills_per_step
        num_latents = model.speaker_latent_count  # 32 perceiver latents (2.0) or the one style row (2.5)
        longest_prefix = num_latents + 2 + model.text_pos_embedding.emb.num_embeddings
        self.max_seq_len = max_seq_len or longest_prefix + model.max_mel_tokens
        self._mel_positions = model.mel_pos_embedding.emb.num_embeddings
        self._text_positions = model.text_pos_embedding.emb.num_embeddings
        with torch.inference_mode():
            self._cache = KVCacheManager(model, max_slots, self.max_seq_len, dtype, device)
            self._runner = ModelRunner(model, self._cache, use_cuda_graphs)
        self._scheduler = Scheduler(max_slots, max_waiting)
        self.stats = EngineStats(stats_history)
        self.events = events
        self._clock = clock
        self._step_lock = threading.Lock()  # one step at a time, whoever calls it
        self._wakeup = threading.Condition()  # guards _closed/_stopping; wakes the engine thread
        self._closed = False
        self._stopping = False
        self._thread: threading.Thread | None = None
        # Test hook (the gpt_decoder model's `inject_oom_steps`): `.arm(n)` makes the next n decode
        # attempts raise torch.OutOfMemoryError before they run.
        self.out_of_memory_injection = OutOfMemoryInjection()

    @classmethod
    def from_checkpoint_dir(
        cls, model_dir: str | Path, version: str | None = None, **engine_options: Any
    ) -> DecoderEngine:
        """Load `gpt.pth` of an official checkpoint directory (names from its config.yaml), an
        IndexTTS-2.0 or 2.5 one: `version` ("2.0" / "2.5"), or None to read it from the directory
        (`detect_version`)."""
        from indextts2.checkpoint_dir import VERSION_2_0, VERSION_2_5, detect_version

        model_dir = Path(model_dir)
        config = load_config(model_dir / "config.yaml")
        version = version or detect_version(model_dir)
        if version not in (VERSION_2_0, VERSION_2_5):
            raise ValueError(f"IndexTTS version {version!r} is not supported (2.0 and 2.5 are)")
        loader = load_gpt
        if version == VERSION_2_5:
            from indextts2.networks.gpt_2_5 import load_gpt_2_5 as loader
        model = loader(
            config["gpt"],
            model_dir / str(config.get("gpt_checkpoint", "gpt.pth")),
            feature_dim=config["semantic_codec"]["hidden_size"],
        )
        return cls(model, **engine_options)

    # --- the caller's side ----------------------------------------------------------------------

    def submit(self, request: DecodeRequest) -> RequestHandle:
        """Queue a request. A request past its deadline gets a final DEADLINE event at once, one that
        cannot be decoded a final ERROR event; raises EngineOverloadedError when every slot is busy
        and the queue is full, EngineClosedError after `stop()`."""
        handle = RequestHandle(request.request_id, self.cancel, self.events)
        now = self._clock()
        if request.deadline is not None and request.deadline < now:
            message = self._deadline_message(request.deadline, now, codes=None)
            handle._put(self._final_event(request.request_id, StopReason.DEADLINE, 0, message))
            return handle
        try:
            sequence = self._new_sequence(request, handle)
        except Exception as error:  # noqa: BLE001 - anything wrong with one request is that request's error
            message = f"invalid request: {error}"
            handle._put(self._final_event(request.request_id, StopReason.ERROR, 0, message))
            return handle
        with self._wakeup:
            if self._closed:
                raise EngineClosedError("the decoder engine is stopped")
            try:
                self._scheduler.add(sequence)
            except ValueError as error:
                handle._put(self._final_event(request.request_id, StopReason.ERROR, 0, str(error)))
                return handle
            self._wakeup.notify()
        return handle

    def cancel(self, request_id: str) -> bool:
        """Cancel a request: a waiting one ends now, a running one at the next step boundary (its
        slot is then free). False when the request is unknown or already finished."""
        found = self._scheduler.cancel(request_id)
        if isinstance(found, Sequence):
            self._finish(found, StopReason.CANCELLED)
            return True
        if found:
            with self._wakeup:
                self._wakeup.notify()
        return bool(found)

    @property
    def num_running(self) -> int:
        return self._scheduler.num_running

    @property
    def num_waiting(self) -> int:
        return self._scheduler.num_waiting

    def has_work(self) -> bool:
        return self._scheduler.has_work()

    # --- stepping -------------------------------------------------------------------------------

    def step(self) -> bool:
        """One engine step (see the module docstring). Returns whether work remains."""
        with self._step_lock, torch.inference_mode():
            for sequence in self._scheduler.take_cancelled():
                self._finish(sequence, StopReason.CANCELLED)
            now = self._clock()
            for sequence in self._scheduler.take_expired(now):
                codes = sequence.num_codes if sequence.slot >= 0 else None
                message = self._deadline_message(sequence.request.deadline, now, codes)
                self._finish(sequence, StopReason.DEADLINE, message)

            started = time.perf_counter()
            produced = 0
            free = self._cache.num_free
            if self.max_prefills_per_step is not None:
                free = min(free, self.max_prefills_per_step)
            admitted = self._scheduler.admit(free)
            for sequence in admitted:
                sequence.slot = self._cache.allocate()
                out_of_memory = False
                try:
                    produced += self._prefill(sequence)
                except Exception as error:  # fails this sequence only
                    logger.exception("prefill of request %s failed", sequence.request_id)
                    out_of_memory = is_out_of_memory(error)
                    if out_of_memory:
                        message = out_of_memory_message(1, str(self.device), error)
                        self._finish(sequence, StopReason.ERROR, message, failed_batch_size=1)
                    else:
                        self._finish(sequence, StopReason.ERROR, f"prefill failed: {error}")
                if out_of_memory:  # here, where the traceback no longer holds the failed prefill's tensors
                    free_cached_memory(self.device)
            prefilled = time.perf_counter()

            decoding = sorted(self._scheduler.running(), key=lambda s: s.slot)
            rows = decoded_batch = 0
            if decoding:
                try:
                    kept, rows, decoded_batch = self._decode_step(decoding)
                    produced += kept
                except Exception as error:  # a failed batch fails its sequences, not the engine
                    logger.exception("decode step failed")
                    for sequence in decoding:
                        self._finish(sequence, StopReason.ERROR, f"decode step failed: {error}")
            decoded = time.perf_counter()

            if admitted or decoding:
                record = StepRecord(
                    prefills=len(admitted),
                    decode_batch=decoded_batch,
                    decode_rows=rows,
                    prefill_seconds=prefilled - started,
                    decode_seconds=decoded - prefilled,
                )
                self.stats.record(record, codes=produced)
            return self._scheduler.has_work()

    def run_until_idle(self, max_steps: int | None = None) -> int:
        """Step until nothing waits or runs (or `max_steps`); returns the steps taken. Not while
        the background thread runs."""
        if self._thread is not None and self._thread.is_alive():
            raise RuntimeError("run_until_idle() is for an engine without its background thread")
        steps = 0
        while self._scheduler.has_work() and (max_steps is None or steps < max_steps):
            self.step()
            steps += 1
        return steps

    # --- background thread ----------------------------------------------------------------------

    def start(self) -> None:
        """Run the step loop on a daemon thread until `stop()`."""
        with self._wakeup:
            if self._closed:
                raise EngineClosedError("a stopped decoder engine cannot be restarted")
            if self._thread is not None:
                return
            self._thread = threading.Thread(target=self._loop, name="gpt-decoder-engine", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Stop for good: join the thread, then end every waiting and running request (SHUTDOWN)."""
        with self._wakeup:
            self._closed = True
            self._stopping = True
            self._wakeup.notify_all()
        if self._thread is not None:
            self._thread.join()
        with self._step_lock, torch.inference_mode():
            for sequence in self._scheduler.drain():
                self._finish(sequence, StopReason.SHUTDOWN)

    def _loop(self) -> None:
        while True:
            with self._wakeup:
                while not self._stopping and not self._scheduler.has_work():
                    self._wakeup.wait()
                if self._stopping:
                    return
            try:
                self.step()
            except Exception as error:  # an engine bug must not leave callers hanging
                logger.exception("decoder engine step failed")
                with self._step_lock, torch.inference_mode():
                    for sequence in self._scheduler.running():
                        self._finish(sequence, StopReason.ERROR, f"engine step failed: {error!r}")

    # --- internals ------------------------------------------------------------------------------

    def _new_sequence(self, request: DecodeRequest, handle: RequestHandle) -> Sequence:
        """Check the request against the model and the cache (ValueError says what is wrong)."""
        model, dim = self.model, self.model.model_dim
        latents = torch.as_tensor(request.speaker_latents)
        if latents.dim() == 3 and latents.shape[0] == 1:
            latents = latents[0]
        well_formed = latents.dim() == 2 and latents.shape[0] > 0 and latents.shape[1] == dim
        if not well_formed or not latents.is_floating_point():
            shape = tuple(latents.shape)
            raise ValueError(f"speaker_latents must be float (N, {dim}), got {latents.dtype} {shape}")
        emotion = torch.as_tensor(request.emotion_vector)
        if tuple(emotion.shape) not in ((dim,), (1, dim)) or not emotion.is_floating_point():
            shape = tuple(emotion.shape)
            raise ValueError(f"emotion_vector must be float ({dim},), got {emotion.dtype} {shape}")
        text = torch.as_tensor(request.text_ids)
        if text.dim() == 2 and text.shape[0] == 1:
            text = text[0]
        if text.dim() != 1 or text.is_floating_point() or text.is_complex() or text.dtype == torch.bool:
            raise ValueError(f"text_ids must be integer (L,), got {text.dtype} {tuple(text.shape)}")
        vocab = model.text_embedding.num_embeddings
        if text.numel() and (int(text.min()) < 0 or int(text.max()) >= vocab):
            raise ValueError(f"text_ids must be in [0, {vocab}), got [{int(text.min())}, {int(text.max())}]")
        text_len = int(((text != model.start_text_token) & (text != model.stop_text_token)).sum())
        if text_len + 2 > self._text_positions:
            raise ValueError(f"{text_len} text ids exceed max_text_tokens={model.max_text_tokens}")
        language = request.language
        if language is not None:
            if not model.uses_language:
                raise ValueError("this GPT (IndexTTS-2.0) takes no language id")
            rows = model.lang_embedding.num_embeddings
            if isinstance(language, bool) or not isinstance(language, int) or not 0 <= language < rows:
                raise ValueError(f"language must be an int in [0, {rows}), got {language!r}")
        if not isinstance(request.stream_every, int) or request.stream_every < 1:
            raise ValueError(f"stream_every must be a positive int, got {request.stream_every!r}")

        sampling = request.sampling
        check_sampling_config(sampling)
        max_codes = model.max_mel_tokens - 1 if sampling.max_codes is None else sampling.max_codes
        if max_codes < 1:
            raise ValueError(f"max_codes must be at least 1, got {max_codes}")
        last_position = model.mel_position(max_codes - 1, request.official_positions)
        if last_position >= self._mel_positions:
            raise ValueError(
                f"max_codes={max_codes} needs mel position {last_position}, but the table has "
                f"{self._mel_positions} rows (max_mel_tokens={model.max_mel_tokens})"
            )
        prefix_len = latents.shape[0] + 2 + text_len + 2
        if prefix_len + max_codes > self.max_seq_len:
            raise ValueError(
                f"{prefix_len} prefix tokens + max_codes={max_codes} exceed the engine's "
                f"max_seq_len={self.max_seq_len}"
            )
        sampler = SequenceSampler(
            sampling, model.number_mel_codes, model.start_mel_token, self.device, stop_code=model.stop_mel_token
        )
        return Sequence(
            request=request,
            handle=handle,
            sampler=sampler,
            prefix_len=prefix_len,
            max_codes=max_codes,
            inputs=(latents, emotion.reshape(dim), text),
        )

    def _prefill(self, sequence: Sequence) -> int:
        latents, emotion, text = sequence.inputs
        sequence.inputs = None
        language = sequence.request.language
        prefix = self.model.build_prefix(
            latents.to(self.device, self.dtype), emotion.to(self.device, self.dtype), text.to(self.device), language
        )
        if prefix.shape[0] != sequence.prefix_len:
            raise RuntimeError(f"prefix has {prefix.shape[0]} tokens, expected {sequence.prefix_len}")
        hidden = self._runner.prefill(sequence.slot, prefix)
        sampled = self._sample([sequence], hidden[None])
        sequence.steps_done = 1
        return self._accept([sequence], sampled)

    def _decode_step(self, sequences: list[Sequence]) -> tuple[int, int, int]:
        """The step's batched decode. Out of memory, it runs again on the first half of the batch (the
        lowest slots, so the rows it computes hold no other running sequence; the rest wait for the next
        step), down to one sequence; when even that runs out, every sequence of the step ends with an
        OUT_OF_MEMORY error. -> (codes kept, cache rows computed, sequences decoded)."""
        batch = sequences
        while True:
            try:
                self.out_of_memory_injection.check(f"decode step of {len(batch)} sequences")
                sampled, rows = self._decode(batch)
                break
            except Exception as error:
                if not is_out_of_memory(error):
                    raise
                message = out_of_memory_message(len(sequences), str(self.device), error)
            # Here, not in the except block: the traceback no longer holds the failed attempt's tensors.
            free_cached_memory(self.device)
            if len(batch) == 1:
                logger.error("decode step out of memory even for one sequence: failing its %d sequences (%s)",
                             len(sequences), message)
                for sequence in sequences:
                    self._finish(sequence, StopReason.ERROR, message, failed_batch_size=len(sequences))
                return 0, 0, 0
            logger.warning("decode step of %d sequences out of memory: running %d this step (%s)",
                           len(batch), len(batch) // 2, message)
            batch = batch[: len(batch) // 2]
        for sequence in batch:
            sequence.steps_done += 1
        return self._accept(batch, sampled), rows, len(batch)

    def _decode(self, sequences: list[Sequence]) -> tuple[list[tuple[int | None, torch.Tensor]], int]:
        """One batched step, sampled: -> (`_sample`'s per-sequence codes and latents, cache rows computed).
        It changes no sequence (only their samplers' generators advance), so a failed one can run again."""
        mel_positions = [
            self.model.mel_position(s.steps_done, s.request.official_positions) for s in sequences
        ]
        hidden, rows = self._runner.decode(
            slots=[s.slot for s in sequences],
            codes=[s.last_code for s in sequences],
            mel_positions=mel_positions,
            cache_positions=[s.prefix_len + s.steps_done for s in sequences],
        )
        return self._sample(sequences, hidden), rows

    def _sample(self, sequences: list[Sequence], hidden: torch.Tensor) -> list[tuple[int | None, torch.Tensor]]:
        """Each sequence's next code from its hidden state (B, d), None where its logits are not finite,
        with its latent (on the CPU)."""
        logits = self.model.mel_head(hidden)
        finite = torch.isfinite(logits).all(dim=-1).tolist()
        keep = [i for i, ok in enumerate(finite) if ok]
        codes: list[int | None] = [None] * len(sequences)
        if keep:
            if len(keep) < len(sequences):
                logits = logits[keep]
            drawn = sample_next_codes(logits, [sequences[i].sampler for i in keep]).tolist()
            for i, code in zip(keep, drawn, strict=True):
                codes[i] = code
        return list(zip(codes, hidden.float().cpu(), strict=True))

    def _accept(self, sequences: list[Sequence], sampled: list[tuple[int | None, torch.Tensor]]) -> int:
        """Keep each sequence's sampled code (`_sample`) or end the sequence. Returns the number of
        codes kept."""
        kept = 0
        for sequence, (code, latent) in zip(sequences, sampled, strict=True):
            if code is None:
                self._finish(sequence, StopReason.ERROR, "the GPT produced non-finite logits")
                continue
            if code == self.model.stop_mel_token:
                self._finish(sequence, StopReason.STOP_CODE)
                continue
            kept += 1
            sequence.sampler.observe(code)
            sequence.last_code = code
            sequence.num_codes += 1
            sequence.pending_codes.append(code)
            sequence.pending_latents.append(latent)
            if sequence.num_codes >= sequence.max_codes:
                self._finish(sequence, StopReason.MAX_CODES)
            elif len(sequence.pending_codes) >= sequence.request.stream_every:
                self._flush(sequence)
        return kept

    def _flush(self, sequence: Sequence) -> None:
        if not sequence.pending_codes:
            return
        event = DecodeEvent(
            request_id=sequence.request_id,
            codes=torch.tensor(sequence.pending_codes, dtype=torch.long),
            latents=torch.stack(sequence.pending_latents),
            offset=sequence.emitted,
        )
        sequence.emitted += len(sequence.pending_codes)
        sequence.pending_codes, sequence.pending_latents = [], []
        sequence.handle._put(event)

    def _finish(
        self, sequence: Sequence, reason: StopReason, error: str | None = None, failed_batch_size: int | None = None
    ) -> None:
        """Send what is pending and the final event; free the slot. Runs once per sequence."""
        if sequence.finished:
            return
        sequence.finished = True
        self._flush(sequence)
        if sequence.slot >= 0:
            # Positions [0, prefix_len + steps_done) are written, plus the next one if a step failed.
            self._cache.release(sequence.slot, used_len=sequence.prefix_len + sequence.steps_done + 1)
            sequence.slot = -1
        self._scheduler.retire(sequence)
        sequence.handle._put(
            self._final_event(sequence.request_id, reason, sequence.emitted, error, failed_batch_size)
        )

    @staticmethod
    def _deadline_message(deadline: float, now: float, codes: int | None) -> str:
        """codes: how many the sequence had produced; None: it had not started."""
        late_ms = (now - deadline) * 1000
        when = "before decoding started" if codes is None else f"after {codes} codes"
        return f"{DEADLINE_EXCEEDED} {when} (the deadline passed {late_ms:.0f} ms ago)"

    def _final_event(
        self, request_id: str, reason: StopReason, total: int, error: str | None, failed_batch_size: int | None = None
    ) -> DecodeEvent:
        return DecodeEvent(
            request_id=request_id,
            codes=torch.zeros(0, dtype=torch.long),
            latents=torch.zeros(0, self.model.model_dim),
            offset=total,
            finished=True,
            stop_reason=reason,
            error=error,
            failed_batch_size=failed_batch_size,
        )
