"""Prometheus metrics of the service, in a registry of its own per app (so tests can build many apps)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# Stage calls take from ~1 ms (an encoder on a short prompt) to minutes (a long GPT stream on a CPU).
STAGE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


class ServiceMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "tts_http_requests", "HTTP requests by route template and status code.",
            ["route", "method", "status"], registry=self.registry,
        )
        self.request_seconds = Histogram(
            "tts_http_request_seconds", "Time from request to the last byte of the response.",
            ["route"], buckets=STAGE_BUCKETS, registry=self.registry,
        )
        self.stage_seconds = Histogram(
            "tts_stage_seconds", "Latency of one stage call (a Triton model, or in-process work).",
            ["stage"], buckets=STAGE_BUCKETS, registry=self.registry,
        )
        self.stage_errors = Counter(
            "tts_stage_errors", "Failed stage calls by stage and error type.",
            ["stage", "error_type"], registry=self.registry,
        )
        self.audio_seconds = Counter(
            "tts_audio_seconds", "Seconds of audio produced, silences between segments included.",
            ["route"], registry=self.registry,
        )
        self.conditioning_cache = Counter(
            "tts_conditioning_cache", "Speaker/emotion conditioning look-ups by result (hit, miss).",
            ["kind", "result"], registry=self.registry,
        )
        self.warnings = Counter(
            "tts_warnings", "Warnings reported (short reference audio, short mel, ...).",
            ["kind"], registry=self.registry,
        )
        self.warnings_suppressed = Counter(
            "tts_warning_events_suppressed", "Warning events not sent: over WARNING_EVENTS_PER_MINUTE for the kind.",
            ["kind"], registry=self.registry,
        )

        self.requests_in_flight = Gauge(
            "tts_requests_in_flight", "Synthesis requests admitted and not finished (the service's queue).",
            registry=self.registry,
        )
        self.expected_finish_seconds = Gauge(
            "tts_admission_expected_finish_seconds",
            "Admission's estimate of how long one more request would take now (0 until measured).",
            registry=self.registry,
        )
        self.refused = Counter(
            "tts_requests_refused", "Requests refused at the door with 503, by reason (in_flight_limit, deadline).",
            ["reason"], registry=self.registry,
        )
        self.stage_in_flight = Gauge(
            "tts_stage_in_flight", "Triton calls in flight, by model.", ["model"], registry=self.registry,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
