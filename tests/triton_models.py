"""Fault injection on the session's tritonserver (explicit model control): a model unloaded, or
reloaded with a changed config, for the length of a `with` block, then put back. The event a model
reported to Bugsink about it. And a model's statistics, read once they count what was sent."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import tritonclient.grpc as grpcclient


@contextmanager
def model_unloaded(server, model: str) -> Iterator[None]:
    triton = grpcclient.InferenceServerClient(server.grpc_url)
    triton.unload_model(model)
    try:
        yield
    finally:
        triton.load_model(model)


@contextmanager
def model_reconfigured(server, model: str, change: Callable[[dict], None]) -> Iterator[None]:
    """Reload `model` with `change` applied to its config, then reload the original."""
    triton = grpcclient.InferenceServerClient(server.grpc_url)
    original = triton.get_model_config(model, as_json=True)["config"]
    changed = json.loads(json.dumps(original))
    change(changed)
    triton.load_model(model, config=json.dumps(changed))
    try:
        yield
    finally:
        triton.load_model(model, config=json.dumps(original))


def inference_statistics(server, model: str, at_least: int = 0, timeout_s: float = 10.0) -> dict:
    """The model's Triton statistics once they count `at_least` inferences (or `timeout_s` has passed).
    Triton counts an execution once it has ended, which can be a moment after its responses reached the
    client: a test that reads them as soon as its response came can miss the last model's run."""
    triton = grpcclient.InferenceServerClient(server.grpc_url)
    deadline = time.monotonic() + timeout_s
    while True:
        stats = triton.get_inference_statistics(model, as_json=True)["model_stats"][0]
        if int(stats.get("inference_count", 0)) >= at_least or time.monotonic() > deadline:
            return stats
        time.sleep(0.05)


def inference_count(server, model: str, at_least: int = 0) -> int:
    return int(inference_statistics(server, model, at_least).get("inference_count", 0))


def model_event_on_trace(bugsink_server, stage: str, trace_id: str, timeout_s: float = 20.0) -> dict:
    """The one event the Triton model of `stage` sent on a request's trace (the orchestrator's own events
    carry a request_id tag, the model's do not). The model reports from Triton's process on its own
    schedule, so this waits for it."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = [event for event in bugsink_server.events(tags={"stage": stage})
                 if event["contexts"].get("trace", {}).get("trace_id") == trace_id and "request_id" not in event["tags"]]
        if found or time.monotonic() > deadline:
            assert len(found) == 1, f"{len(found)} events from the {stage} model on trace {trace_id}"
            return found[0]
        time.sleep(0.2)
