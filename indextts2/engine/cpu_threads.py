"""CPU threads of the Python models."""

from __future__ import annotations

import torch


def set_torch_threads(model_config: dict) -> None:
    """The Python models' `torch_threads` parameter: the CPU threads torch may use in this model's process.
    "0" (or absent) keeps torch's default, one per core. On a CPU server every Python model and every ONNX
    session is its own process with its own thread pool: at torch's default they oversubscribe the cores
    as soon as two stages run at once."""
    value = model_config.get("parameters", {}).get("torch_threads", {}).get("string_value", "0")
    threads = int(value)
    if threads < 0:
        raise ValueError(f"parameter torch_threads must be >= 0, got {value!r}")
    if threads:
        torch.set_num_threads(threads)
