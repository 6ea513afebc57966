"""Admission control: the work the service has accepted, and whether it can take one more request and
still finish it within its deadline. Asked before the request body is read, so a refusal costs nothing.

The estimate is processor sharing, measured. Every synthesis in flight shares the machine, so a request
that lives while n others run gets 1/n of it. Summing dt / n over a request's life gives the machine
time it really needed (its *work*), whatever the load was. Work grows with the text's segments (each is
a GPT decode, an s2mel pass and a vocoder pass), so the unit is the segment: the mean work per segment
`s` of recent successful requests says what more text costs, with an estimate per kind of work (a
segment rendered in chunks or whole). With S segments in flight, a request of k segments finishes after
about (S + k) * s. At the door, before the body is read, a request is refused when the work ahead of it,
S * s, is over its share of the time budget, with Retry-After the time the queue needs to drain to where
it would fit. Its own size plays no part there: under overload, a long text gets in as often as a short
one. Once its text is segmented (`resize`), still before any audio is decoded or Triton is called, it
counts as its segments and is refused only if (S + k) * s is over TEXT_BUDGET_SHARE of its budget: a
text whose own work is a small part of the budget always gets in once past the door. Until a few
requests have been measured only the hard cap on requests in flight applies. Batching in the models
makes concurrent work cheaper; `s` measured under load includes that gain.
"""

from __future__ import annotations

import math
import time
from collections import Counter, defaultdict, deque
from dataclasses import dataclass

# Recent successful requests whose work makes the estimate: enough to smooth, few enough to follow a
# change of traffic within seconds.
WORK_WINDOW = 32
MIN_MEASURED = 3  # requests measured before the estimate is trusted
# A request is admitted only if the work ahead of it is within this share of its budget: the estimate is a
# mean over requests of different lengths (a 3-segment text costs 3x a 1-segment one), and an admitted
# request must not time out. Measured (make bench, demo, concurrency 64): at 0.8 the p95 latency reached
# 112 s of a 120 s budget and one stream was cut by its deadline. Counting the request's own segments in
# this check as well starved long texts: at concurrency 64 on demo, 15 of 312 attempts of the 3-segment
# text got in against 28 of 105 of the 1-segment one, so goodput fell to 79 % of concurrency 16's while
# requests/s held at 94 %.
BUDGET_SHARE = 0.5
# The check once the text is segmented: the work ahead and the request's own within this share. Over the
# door's share, so that a text of up to (TEXT_BUDGET_SHARE - BUDGET_SHARE) of the budget is never refused
# for its length, and under 1: the estimate is a mean, and lags a change of traffic (a chunked stream
# costs ~0.7x the work of one by segment). With the whole budget here, one request of 32 timed out at
# concurrency 16 on `small` where segment streams of 150 codes followed chunked ones (make bench).
TEXT_BUDGET_SHARE = 0.75


# Kinds of work, each with its own estimate: a segment rendered in chunks costs ~0.7x one rendered whole
# (its first chunk has a shorter speaker prompt, later chunks none), measured on `small`. With one
# estimate for both, a change of traffic from one kind to the other made the estimate wrong for the
# length of the window: one of 32 segment streams timed out at concurrency 16 on `small` (make bench,
# right after 32 chunked streams).
CHUNKED = "chunk"
WHOLE = "whole"  # rendered by segment: not streamed, or streamed by segment
UNSIZED = ""  # at the door, before the body says which: estimated as the mean of every kind


@dataclass(frozen=True)
class Refusal:
    reason: str  # "in_flight_limit" | "deadline"
    retry_after_s: int
    message: str


@dataclass
class Ticket:
    """One admitted request: where it started on the shared-work clock, and its size."""

    started_work_clock: float
    segments: int = 1  # text segments: 1 until the text is read (`Admission.resize`)
    kind: str = UNSIZED


class Admission:
    def __init__(self, max_in_flight: int) -> None:
        self.max_in_flight = max_in_flight
        self.in_flight = 0
        self._segments_by_kind: Counter[str] = Counter()  # segments in flight
        self._work_clock = 0.0  # integral of dt / max(n, 1): machine time one request gets
        self._clock_at = time.monotonic()
        self._recent_work: defaultdict[str, deque[float]] = defaultdict(lambda: deque(maxlen=WORK_WINDOW))

    def _advance(self, now: float) -> None:
        self._work_clock += (now - self._clock_at) / max(self.in_flight, 1)
        self._clock_at = now

    @property
    def in_flight_segments(self) -> int:
        return sum(self._segments_by_kind.values())

    def work_per_segment_s(self, kind: str = UNSIZED) -> float | None:
        """Mean machine time per text segment of recent successful requests of `kind` (of every kind while
        that one has fewer than MIN_MEASURED, or for UNSIZED); None until MIN_MEASURED are known."""
        window = self._recent_work.get(kind, ())
        if kind == UNSIZED or len(window) < MIN_MEASURED:
            window = [work for recent in self._recent_work.values() for work in recent]
        if len(window) < MIN_MEASURED:
            return None
        return sum(window) / len(window)

    def _work_in_flight_s(self) -> float | None:
        """Machine time the segments in flight still stand for, each at its kind's estimate."""
        if self.work_per_segment_s() is None:
            return None
        return sum(segments * self.work_per_segment_s(kind) for kind, segments in self._segments_by_kind.items())

    def expected_finish_s(self, segments: int = 1) -> float | None:
        """Seconds until a request of `segments` admitted now would finish (None while unmeasured)."""
        ahead = self._work_in_flight_s()
        return None if ahead is None else ahead + segments * self.work_per_segment_s()

    def _refusal(self, expected_s: float | None, limit_s: float, budget_s: float) -> Refusal | None:
        """A refusal when `expected_s` of work will not be done within `limit_s`, else None."""
        if expected_s is None or expected_s <= limit_s:
            return None
        # The queue frees machine time as fast as it is spent: wait until it fits.
        retry_after = max(1, math.ceil(expected_s - limit_s))
        return Refusal("deadline", retry_after,
                       f"the service is overloaded: {self.in_flight} requests in flight, about {expected_s:.0f} s "
                       f"of work queued, over what its {budget_s:.0f} s budget allows")

    def admit(self, budget_s: float, now: float | None = None) -> Ticket | Refusal:
        now = time.monotonic() if now is None else now
        if self.in_flight >= self.max_in_flight:
            work = self.work_per_segment_s()
            return Refusal("in_flight_limit", max(1, math.ceil(work if work is not None else 1.0)),
                           f"the service is at its limit of {self.max_in_flight} requests in flight")
        refusal = self._refusal(self._work_in_flight_s(), BUDGET_SHARE * budget_s, budget_s)
        if refusal is not None:
            return refusal
        self._advance(now)
        self.in_flight += 1
        self._segments_by_kind[UNSIZED] += 1
        return Ticket(self._work_clock)

    def resize(self, ticket: Ticket, segments: int, budget_left_s: float, kind: str = WHOLE) -> Refusal | None:
        """The admitted request's text makes `segments` segments of `kind` (CHUNKED or WHOLE): count them,
        and refuse it (the caller answers 503, then releases the ticket) if the queue, it included, does
        not fit TEXT_BUDGET_SHARE of its budget."""
        self._segments_by_kind[ticket.kind] -= ticket.segments
        ticket.segments, ticket.kind = segments, kind
        self._segments_by_kind[kind] += segments
        return self._refusal(self._work_in_flight_s(), TEXT_BUDGET_SHARE * budget_left_s, budget_left_s)

    def release(self, ticket: Ticket, succeeded: bool, now: float | None = None) -> None:
        """The request ended; a successful one adds its work per segment to its kind's estimate."""
        now = time.monotonic() if now is None else now
        self._advance(now)
        self.in_flight -= 1
        self._segments_by_kind[ticket.kind] -= ticket.segments
        if succeeded:
            self._recent_work[ticket.kind].append((self._work_clock - ticket.started_work_clock) / ticket.segments)
