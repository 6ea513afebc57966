"""Helpers for tests of the service (and of services built on it): an in-process Sentry transport
and synthetic reference audio."""

from __future__ import annotations

import io
import json
import struct
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import soundfile
from sentry_sdk.envelope import Envelope
from sentry_sdk.transport import Transport


class CapturingTransport(Transport):
    """Keeps every envelope the SDK would send, in memory."""

    def __init__(self, options: dict[str, Any] | None = None) -> None:
        super().__init__(options)
        self.envelopes: list[Envelope] = []

    def capture_envelope(self, envelope: Envelope) -> None:
        self.envelopes.append(envelope)

    def flush(self, timeout: float, callback: Any = None) -> None:
        return None

    def kill(self) -> None:
        return None

    def clear(self) -> None:
        self.envelopes.clear()

    def items(self, kind: str) -> list[dict[str, Any]]:
        return [
            item.payload.json for envelope in self.envelopes for item in envelope.items
            if item.type == kind and item.payload.json is not None
        ]

    @property
    def events(self) -> list[dict[str, Any]]:
        """Error and message events (not transactions)."""
        return self.items("event")

    def serialized(self) -> bytes:
        """Everything that would have gone over the wire."""
        out = io.BytesIO()
        for envelope in self.envelopes:
            envelope.serialize_into(out)
        return out.getvalue()

    def describe(self) -> str:
        return json.dumps([{"level": e.get("level"), "tags": e.get("tags"), "fingerprint": e.get("fingerprint")}
                           for e in self.events], indent=1)


def speech_like_wav(seconds: float, sample_rate: int = 24000, seed: int = 0, extra_chunk: bytes = b"") -> bytes:
    """A 16-bit mono WAV of a modulated tone with noise (the demo networks are random: any sound will
    do). `extra_chunk` is stored as an ancillary RIFF chunk ('note') that decoders skip."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    pitch = 140 + 40 * np.sin(2 * np.pi * 0.7 * t)
    samples = 0.3 * np.sin(2 * np.pi * np.cumsum(pitch) / sample_rate) * (1 + 0.5 * np.sin(2 * np.pi * 4 * t))
    samples = (samples + 0.03 * rng.standard_normal(t.size)).astype(np.float32)
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, sample_rate, format="WAV", subtype="PCM_16")
    data = buffer.getvalue()
    if extra_chunk:
        padded = extra_chunk + (b"\0" if len(extra_chunk) % 2 else b"")
        chunk = b"note" + struct.pack("<I", len(extra_chunk)) + padded
        body = data[12:] + chunk
        data = b"RIFF" + struct.pack("<I", 4 + len(body)) + b"WAVE" + body
    return data


def make_test_client(app: Any, **options: Any) -> Any:
    """fastapi.testclient.TestClient(app), imported without its notice that Starlette prefers httpx2
    (the pinned httpx is what this environment has)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
        from fastapi.testclient import TestClient
    return TestClient(app, **options)


@contextmanager
def served_over_http(app: Any) -> Iterator[str]:
    """The app behind a real uvicorn server on a free loopback port, in a thread: yields its base URL.
    For tests of what only a real HTTP server shows (keep-alive, disconnects, chunked streams)."""
    import uvicorn

    from local_triton import find_free_port

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=find_free_port(), log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{server.config.port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def in_flight_after_waiting(url: str, timeout_s: float = 5.0) -> tuple[list[float], str]:
    """The service's requests, gpt_decoder calls and s2mel calls in flight (its /metrics gauges), read until
    all are 0 or `timeout_s` has passed; with the last /metrics text read."""
    import re

    import httpx

    def gauge(metrics: str, name: str, labels: str = "") -> float:
        match = re.search(rf"^{name}{re.escape(labels)} (\S+)$", metrics, re.MULTILINE)
        return float(match.group(1)) if match else 0.0

    deadline = time.monotonic() + timeout_s
    while True:
        metrics = httpx.get(f"{url}/metrics", trust_env=False).text
        in_flight = [gauge(metrics, "tts_requests_in_flight"),
                     gauge(metrics, "tts_stage_in_flight", '{model="gpt_decoder"}'),
                     gauge(metrics, "tts_stage_in_flight", '{model="s2mel"}')]
        if in_flight == [0.0, 0.0, 0.0] or time.monotonic() > deadline:
            return in_flight, metrics
        time.sleep(0.1)
