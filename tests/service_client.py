"""The service in a test client, for the tests that build it from their own Settings, and the Settings of
the service on the demo checkpoint."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import sentry_sdk

from orchestrator.app import create_app
from orchestrator.settings import Settings
from orchestrator.testing import make_test_client

if TYPE_CHECKING:
    from fastapi.testclient import TestClient  # make_test_client imports it without Starlette's notice

    from indextts2.checkpoint_dir import CheckpointPaths
    from local_triton import LocalTritonServer


def demo_settings(server: LocalTritonServer, demo_checkpoint: CheckpointPaths, voices_dir: Path,
                  **fields: Any) -> Settings:
    """The service on the demo checkpoint and the CPU, calling the models `server` serves; `fields` set the
    rest (Sentry off unless they give a sentry_dsn)."""
    return Settings(checkpoint_dir=demo_checkpoint.model_dir, triton_grpc_url=server.grpc_url,
                    voices_dir=voices_dir, device="cpu", **fields)


@contextmanager
def service_client(settings: Settings) -> Iterator[TestClient]:
    """The service built from `settings`, in a test client for a `with` block. create_app sets up Sentry
    for the whole process: afterwards the events sent are flushed and Sentry is turned off, so that the next
    module's app starts from a client without a DSN."""
    try:
        with make_test_client(create_app(settings)) as client:
            yield client
    finally:
        sentry_sdk.flush(timeout=5)
        sentry_sdk.init()


def hold_codes(triton: Any, after: int, until: threading.Event, timeout_s: float = 60.0) -> list[float]:
    """Makes the service's `triton.decode_stream` let a segment's GPT responses through until `after` codes
    have passed, and hold the rest of the segment's stream (its final response too) until `until` is set
    (for at most `timeout_s`). The demo GPT can decode a whole segment before s2mel renders its first
    chunk, so a test that needs chunks rendered while the code stream is open, or a chunk that starts past
    a given code, must not leave that to the machine's speed. Returns the times the held streams went on."""
    decode_stream = triton.decode_stream
    released_at: list[float] = []

    async def held(*args: Any, **kwargs: Any):
        passed = 0
        holding = True
        async for chunk in decode_stream(*args, **kwargs):
            if holding and passed >= after:
                deadline = time.monotonic() + timeout_s
                while not until.is_set() and time.monotonic() < deadline:
                    await asyncio.sleep(0.01)
                released_at.append(time.monotonic())
                holding = False
            passed += chunk.codes.size
            yield chunk

    triton.decode_stream = held
    return released_at


def record_emotion_vectors(triton: Any, monkeypatch: Any) -> list[np.ndarray]:
    """The emotion vector of every whole-segment gpt_decoder call the service makes from now on (for as
    long as `monkeypatch` lasts), in call order."""
    sent: list[np.ndarray] = []
    decode = triton.decode

    async def recorded(inputs: dict, latent_dim: int):
        sent.append(inputs["emotion_vector"].copy())
        return await decode(inputs, latent_dim)

    monkeypatch.setattr(triton, "decode", recorded)
    return sent
