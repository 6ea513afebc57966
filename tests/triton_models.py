"""Fault injection on the session's tritonserver (explicit model control): a model unloaded, or
reloaded with a changed config, for the length of a `with` block, then put back."""

from __future__ import annotations

import json
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
