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


def hold_last_codes(triton: Any, until: threading.Event, timeout_s: float = 60.0) -> list[float]:
    """Makes the service's `triton.decode_stream` hold each segment's last GPT response back until `until`
    is set (for at most `timeout_s`). The demo GPT can decode a whole segment before the first chunk is
    rendered, so a test that needs chunks rendered while the code stream is open must not leave that to
    the machine's speed. Returns the times the last responses were let through."""
    decode_stream = triton.decode_stream
    released_at: list[float] = []

    async def held(*args: Any, **kwargs: Any):
        async for chunk in decode_stream(*args, **kwargs):
            if chunk.finish_reason is not None:
                deadline = time.monotonic() + timeout_s
                while not until.is_set() and time.monotonic() < deadline:
                    await asyncio.sleep(0.01)
                released_at.append(time.monotonic())
            yield chunk

    triton.decode_stream = held
    return released_at
