"""Scheduler: which sequences wait, which run, and which leave at the next step boundary.

Requests are admitted first come, first served, one per free KV cache slot. Submissions wait in a
bounded queue; `add` refuses at once (EngineOverloadedError) when running + waiting would exceed
slots + queue size. Cancelling a waiting request removes it at once; cancelling a running one marks
it, and the engine retires it at the next step boundary, which frees its slot for a waiting one.
A request whose deadline has passed leaves the same way (`take_expired`): a waiting one never gets a
slot, a running one is retired at the next boundary.

`add` and `cancel` come from any thread; everything else runs on the engine thread. One lock guards
the queues, so admission and submission never race.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field

import torch

from indextts2.engine.requests import DecodeRequest, EngineOverloadedError, RequestHandle
from indextts2.engine.sampler import SequenceSampler


@dataclass(eq=False)
class Sequence:
    """Engine-side state of one request.

    Decoding step k feeds one token at cache position prefix_len + k: the start code at step 0 (the
    prefill), code k-1 after that; its hidden state is the latent of code k.
    """

    request: DecodeRequest
    handle: RequestHandle
    sampler: SequenceSampler
    prefix_len: int  # conditioning + framed text, without the start code
    max_codes: int
    # (speaker latents, emotion vector, text ids), checked at submission, dropped after the prefill
    inputs: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
    slot: int = -1
    steps_done: int = 0  # tokens fed after the prefix
    num_codes: int = 0
    last_code: int = -1
    emitted: int = 0  # codes already sent in chunk events
    pending_codes: list[int] = field(default_factory=list)
    pending_latents: list[torch.Tensor] = field(default_factory=list)
    finished: bool = False

    @property
    def request_id(self) -> str:
        return self.request.request_id


class Scheduler:
    def __init__(self, max_running: int, max_waiting: int):
        if max_running < 1 or max_waiting < 0:
            raise ValueError(f"need max_running >= 1 and max_waiting >= 0, got {max_running}, {max_waiting}")
        self.max_running = max_running
        self.max_waiting = max_waiting
        self._lock = threading.Lock()
        self._waiting: deque[Sequence] = deque()
        self._running: dict[str, Sequence] = {}
        self._cancel_requested: set[str] = set()

    def add(self, sequence: Sequence) -> None:
        """Queue a new sequence. Raises EngineOverloadedError when slots and queue are full, and
        ValueError when its request_id is already in use."""
        with self._lock:
            request_id = sequence.request_id
            if request_id in self._running or any(s.request_id == request_id for s in self._waiting):
                raise ValueError(f"request_id {request_id!r} is already in use")
            if len(self._running) + len(self._waiting) >= self.max_running + self.max_waiting:
                raise EngineOverloadedError(
                    f"decoder engine overloaded: {len(self._running)} running, {len(self._waiting)} waiting "
                    f"(capacity {self.max_running} slots + {self.max_waiting} queued)"
                )
            self._waiting.append(sequence)

    def cancel(self, request_id: str) -> Sequence | bool:
        """A waiting sequence is removed and returned (the caller ends it); a running one is marked
        (True); an unknown or finished one gives False."""
        with self._lock:
            for sequence in self._waiting:
                if sequence.request_id == request_id:
                    self._waiting.remove(sequence)
                    return sequence
            if request_id in self._running:
                self._cancel_requested.add(request_id)
                return True
            return False

    def take_cancelled(self) -> list[Sequence]:
        """Running sequences whose cancellation was requested since the last boundary."""
        with self._lock:
            cancelled = [self._running[i] for i in self._cancel_requested if i in self._running]
            self._cancel_requested.clear()
            return cancelled

    def take_expired(self, now: float) -> list[Sequence]:
        """Sequences whose request deadline is before `now` (Unix seconds): waiting ones are removed
        from the queue, running ones stay until the engine retires them."""
        def expired(sequence: Sequence) -> bool:
            return sequence.request.deadline is not None and sequence.request.deadline < now

        with self._lock:
            waiting = [s for s in self._waiting if expired(s)]
            for sequence in waiting:
                self._waiting.remove(sequence)
            return [*waiting, *(s for s in self._running.values() if expired(s))]

    def admit(self, free_slots: int) -> list[Sequence]:
        """Move up to `free_slots` waiting sequences, oldest first, to running."""
        with self._lock:
            admitted = []
            while self._waiting and len(admitted) < free_slots and len(self._running) < self.max_running:
                sequence = self._waiting.popleft()
                self._running[sequence.request_id] = sequence
                admitted.append(sequence)
            return admitted

    def retire(self, sequence: Sequence) -> None:
        with self._lock:
            self._running.pop(sequence.request_id, None)

    def running(self) -> list[Sequence]:
        with self._lock:
            return list(self._running.values())

    def drain(self) -> list[Sequence]:
        """Remove and return every waiting and running sequence (engine shutdown)."""
        with self._lock:
            sequences = [*self._running.values(), *self._waiting]
            self._running.clear()
            self._waiting.clear()
            self._cancel_requested.clear()
            return sequences

    @property
    def num_running(self) -> int:
        with self._lock:
            return len(self._running)

    @property
    def num_waiting(self) -> int:
        with self._lock:
            return len(self._waiting)

    def has_work(self) -> bool:
        with self._lock:
            return bool(self._running or self._waiting)
