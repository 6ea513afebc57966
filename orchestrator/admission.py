"""Admission control: the work the service has accepted, and whether it can take one more request and
still finish it within its deadline. Asked before the request body is read, so a refusal costs nothing.

The estimate is processor sharing, measured. Every synthesis in flight shares the machine, so a request
that lives while n others run gets 1/n of it. Summing dt / n over a request's life gives the machine
time it really needed (its *work*), whatever the load was; the mean work `s` of recent successful
requests says what one more costs. With n requests in flight, one more finishes after about (n + 1) * s:
refused when that is over its time budget, with Retry-After the time the queue needs to drain to where
it would fit. Until a few requests have been measured only the hard cap on requests in flight applies.
Batching in the models makes concurrent work cheaper; `s` measured under load includes that gain.
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass

# Recent successful requests whose work makes the estimate: enough to smooth, few enough to follow a
# change of traffic within seconds.
WORK_WINDOW = 32
MIN_MEASURED = 3  # requests measured before the estimate is trusted
# A request is admitted only if its expected finish is within this share of its budget: the estimate is a
# mean over requests of different lengths (a 3-segment text costs 3x a 1-segment one), and an admitted
# request must not time out. Measured (make bench, demo, concurrency 64): at 0.8 the p95 latency reached
# 112 s of a 120 s budget and one stream was cut by its deadline.
BUDGET_SHARE = 0.5


@dataclass(frozen=True)
class Refusal:
    reason: str  # "in_flight_limit" | "deadline"
    retry_after_s: int
    message: str


@dataclass
class Ticket:
    """One admitted request: where it started on the shared-work clock."""

    started_work_clock: float


class Admission:
    def __init__(self, max_in_flight: int) -> None:
        self.max_in_flight = max_in_flight
        self.in_flight = 0
        self._work_clock = 0.0  # integral of dt / max(n, 1): machine time one request gets
        self._clock_at = time.monotonic()
        self._recent_work: deque[float] = deque(maxlen=WORK_WINDOW)

    def _advance(self, now: float) -> None:
        self._work_clock += (now - self._clock_at) / max(self.in_flight, 1)
        self._clock_at = now

    @property
    def work_per_request_s(self) -> float | None:
        """Mean machine time of a recent successful request, None until MIN_MEASURED are known."""
        if len(self._recent_work) < MIN_MEASURED:
            return None
        return sum(self._recent_work) / len(self._recent_work)

    def expected_finish_s(self) -> float | None:
        """Seconds until one more request admitted now would finish (None while unmeasured)."""
        work = self.work_per_request_s
        return None if work is None else (self.in_flight + 1) * work

    def admit(self, budget_s: float, now: float | None = None) -> Ticket | Refusal:
        now = time.monotonic() if now is None else now
        work = self.work_per_request_s
        if self.in_flight >= self.max_in_flight:
            wait = work if work is not None else 1.0
            return Refusal("in_flight_limit", max(1, math.ceil(wait)),
                           f"the service is at its limit of {self.max_in_flight} requests in flight")
        if work is not None:
            expected = (self.in_flight + 1) * work
            if expected > BUDGET_SHARE * budget_s:
                # Each request that finishes frees `work` seconds: wait until the queue fits the budget.
                retry_after = max(1, math.ceil(expected - BUDGET_SHARE * budget_s))
                return Refusal("deadline", retry_after,
                               f"the service is overloaded: {self.in_flight} requests in flight, about "
                               f"{expected:.0f} s of work for a new one, over its {budget_s:.0f} s budget")
        self._advance(now)
        self.in_flight += 1
        return Ticket(self._work_clock)

    def release(self, ticket: Ticket, succeeded: bool, now: float | None = None) -> None:
        """The request ended; a successful one adds its work to the estimate."""
        now = time.monotonic() if now is None else now
        self._advance(now)
        self.in_flight -= 1
        if succeeded:
            self._recent_work.append(self._work_clock - ticket.started_work_clock)
