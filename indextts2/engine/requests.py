"""What goes into the decoder engine and what comes out of it.

A caller submits a `DecodeRequest` and gets a `RequestHandle`. The engine thread puts `DecodeEvent`s
on a thread-safe queue: chunks of codes with their latents, then exactly one final event that says
why the sequence ended. By default each handle has its own queue; an engine built with `events=`
puts every request's events on that one queue instead (a server's single sender thread reads it and
tells the requests apart by `request_id`). Problems with one request (a wrong shape, a bad sampling
value, an error while decoding it) arrive as a final event with `StopReason.ERROR`, a passed deadline
as one with `StopReason.DEADLINE`; only engine-wide conditions (`EngineOverloadedError`,
`EngineClosedError`) are raised by `submit`.
"""

from __future__ import annotations

import queue
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import Enum

import torch

from indextts2.networks.gpt import SamplingConfig


class EngineOverloadedError(RuntimeError):
    """Every slot is busy and the waiting queue is full: the caller should back off (HTTP 503)."""


class EngineClosedError(RuntimeError):
    """The engine was stopped; it takes no new requests."""


# How the error of a `StopReason.DEADLINE` event begins (callers match on it).
DEADLINE_EXCEEDED = "deadline exceeded"


class StopReason(str, Enum):
    STOP_CODE = "stop_code"  # the GPT produced the stop code (which is not part of the codes)
    MAX_CODES = "max_codes"  # `sampling.max_codes` codes were produced
    CANCELLED = "cancelled"  # `cancel(request_id)` was called
    DEADLINE = "deadline"  # the request's deadline passed first; `error` starts with DEADLINE_EXCEEDED
    ERROR = "error"  # the request was invalid or decoding it failed; the event's `error` says why
    SHUTDOWN = "shutdown"  # the engine stopped before the sequence ended


@dataclass
class DecodeRequest:
    """One text segment to decode into semantic codes.

    speaker_latents (N, d) or (1, N, d): `UnifiedVoice.get_conditioning` output (N = 32), or for an
    IndexTTS-2.5 GPT `UnifiedVoice25.speaker_conditioning(style)` (N = 1).
    emotion_vector (d,) or (1, d): `get_emovec` / `merge_emovec` output.
    text_ids (L,) or (1, L) integer: text token ids; start/stop text ids are dropped, as the official
    `prepare_gpt_inputs` does, and the engine frames the text itself.
    official_positions: reproduce the official KV-cached mel positions (quirk 4), which give the
    official codes; the latents then differ from the teacher-forced `forward` (the default trained
    positions make them equal, so no second GPT pass is needed).
    stream_every: a chunk event is emitted each time this many new codes are ready.
    language: IndexTTS-2.5 only: the language id (index into the official LANGUAGE_DICT) whose
    embedding is added to every text row; None: none (the only value an IndexTTS-2.0 GPT accepts).
    deadline: Unix time in seconds (`time.time()`) after which the caller no longer wants the result;
    None: none. A request past it is not admitted, and a running one is stopped at the next step
    (both end with `StopReason.DEADLINE`), so no compute is spent on an answer nobody waits for.
    """

    speaker_latents: torch.Tensor
    emotion_vector: torch.Tensor
    text_ids: torch.Tensor
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    official_positions: bool = False
    stream_every: int = 16
    deadline: float | None = None
    language: int | None = None


@dataclass(frozen=True)
class DecodeEvent:
    """A chunk of a sequence, or (finished=True) its end.

    codes (n,) int64 and latents (n, d) float32 are on the CPU. latents[i] is the `final_norm` hidden
    state at the input token of the step that produced codes[i] (the s2mel latent). `offset` is the
    index of codes[0] in the whole sequence; in the final event codes are empty and `offset` is the
    total number of codes. `failed_batch_size`: on the final event of a sequence whose decode step ran out
    of memory (`error` starts with "out of memory"), the sequences that step held; else None.
    """

    request_id: str
    codes: torch.Tensor
    latents: torch.Tensor
    offset: int
    finished: bool = False
    stop_reason: StopReason | None = None
    error: str | None = None
    failed_batch_size: int | None = None


@dataclass(frozen=True)
class DecodeResult:
    """All events of one request put together (`RequestHandle.result`)."""

    request_id: str
    codes: torch.Tensor  # (n,) int64
    latents: torch.Tensor  # (n, d) float32
    stop_reason: StopReason
    error: str | None


class RequestHandle:
    """The caller's side of one request: a queue of `DecodeEvent`s, read once, and `cancel()`.

    Iterating blocks until the next event and ends after the final one. `result()` collects them all.
    With `shared_events` (the engine's one queue for all requests) the events go there, and reading
    them through the handle is refused: it would take other requests' events.
    """

    def __init__(
        self, request_id: str, cancel: Callable[[str], bool], shared_events: queue.Queue[DecodeEvent] | None = None
    ):
        self.request_id = request_id
        self._shared = shared_events is not None
        self.events: queue.Queue[DecodeEvent] = queue.Queue() if shared_events is None else shared_events
        self._cancel = cancel

    def _own_events(self) -> queue.Queue[DecodeEvent]:
        if self._shared:
            raise RuntimeError("this engine puts every request's events on its one queue: read them there")
        return self.events

    def get(self, timeout: float | None = None) -> DecodeEvent:
        """The next event; raises `queue.Empty` after `timeout` seconds."""
        return self._own_events().get(timeout=timeout)

    def __iter__(self) -> Iterator[DecodeEvent]:
        self._own_events()
        while True:
            event = self.events.get()
            yield event
            if event.finished:
                return

    def result(self, timeout: float | None = None) -> DecodeResult:
        """Wait for the final event and return everything; raises `TimeoutError` after `timeout` s."""
        self._own_events()
        deadline = None if timeout is None else time.monotonic() + timeout
        chunks: list[DecodeEvent] = []
        while True:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                event = self.events.get(timeout=remaining)
            except queue.Empty:
                raise TimeoutError(f"request {self.request_id} did not finish within {timeout} s") from None
            if not event.finished:
                chunks.append(event)
                continue
            codes = [chunk.codes for chunk in chunks] or [event.codes]
            latents = [chunk.latents for chunk in chunks] or [event.latents]
            return DecodeResult(
                request_id=self.request_id,
                codes=torch.cat(codes),
                latents=torch.cat(latents),
                stop_reason=event.stop_reason or StopReason.ERROR,
                error=event.error,
            )

    def cancel(self) -> bool:
        """Same as `DecoderEngine.cancel(self.request_id)`."""
        return self._cancel(self.request_id)

    def _put(self, event: DecodeEvent) -> None:
        self.events.put(event)
