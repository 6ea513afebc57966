"""Where a Python model instance runs, and what it does when that device runs out of memory.

Placement: Triton gives each model instance a kind and a device id (`instance_group [{ kind: KIND_GPU,
gpus: [0, 1] }]` makes one instance on GPU 0 and one on GPU 1); `instance_device` turns that, with the
model's `device` parameter, into the torch device of the instance.

Out of memory: `is_out_of_memory` says whether an exception is an allocation failure (CUDA, cuBLAS, or
the CPU allocator); the models then fail only the requests of the step that ran out, with an error that
starts with OUT_OF_MEMORY (the orchestrator answers 503 for it), call `free_cached_memory`, and report
it with `out_of_memory_tags`. `OutOfMemoryInjection` makes the next N steps fail that way: a test hook
(the models' `inject_oom_steps` parameter), never set in a served configuration.
"""

from __future__ import annotations

import logging
import os

import torch

logger = logging.getLogger(__name__)

# How the error of a request failed by an out-of-memory step begins (the orchestrator matches on it).
OUT_OF_MEMORY = "out of memory"
# Words of torch's allocation failures: CUDA ("CUDA out of memory"), cuBLAS, the CPU allocator
# ("DefaultCPUAllocator: can't allocate memory").
_OUT_OF_MEMORY_WORDS = ("out of memory", "can't allocate memory", "cublas_status_alloc_failed")


def instance_device(args: dict, requested: str = "auto", cuda_available: bool | None = None) -> str:
    """The torch device of a Python model instance, from Triton's `initialize` args and the model's
    `device` parameter ("auto", "cpu", "cuda" or "cuda:<n>").

    auto: on an instance Triton made for a GPU (`model_instance_kind` "GPU"), that GPU,
    cuda:<model_instance_device_id>, when torch sees CUDA; else the CPU. "cuda" names the instance's GPU
    the same way ("cuda:0" when Triton gave no GPU); "cpu" and "cuda:<n>" are taken as they are.
    """
    requested = requested.strip().lower()
    cuda_available = torch.cuda.is_available() if cuda_available is None else cuda_available
    on_gpu = str(args.get("model_instance_kind", "")).upper() == "GPU"
    gpu = f"cuda:{int(args.get('model_instance_device_id') or 0)}" if on_gpu else "cuda:0"
    if requested == "auto":
        if on_gpu and not cuda_available:
            logger.warning("Triton gave this instance a GPU, but torch sees no CUDA: running on the CPU")
        return gpu if on_gpu and cuda_available else "cpu"
    if requested == "cuda":
        return gpu
    if requested == "cpu" or requested.startswith("cuda:"):
        torch.device(requested)  # "cuda:x" raises here
        return requested
    raise ValueError(f"parameter device must be auto, cpu, cuda or cuda:<n>, got {requested!r}")


def use_instance_device(args: dict, requested: str = "auto") -> str:
    """`instance_device`, made this process's current CUDA device as well: kernels and CUDA graphs that
    take the current device (torch.cuda.graph's capture stream) then run on the instance's own GPU."""
    device = instance_device(args, requested)
    if device.startswith("cuda"):
        torch.cuda.set_device(torch.device(device))
    return device


def is_out_of_memory(error: BaseException) -> bool:
    """Whether `error` is an allocation failure: torch.OutOfMemoryError (CUDA), a RuntimeError of the CPU
    allocator or cuBLAS, or Python's MemoryError."""
    if isinstance(error, torch.cuda.OutOfMemoryError | MemoryError):
        return True
    return isinstance(error, RuntimeError) and any(words in str(error).lower() for words in _OUT_OF_MEMORY_WORDS)


def out_of_memory_message(batch_size: int, device: str, error: BaseException) -> str:
    """The error the requests of a failed step get: OUT_OF_MEMORY first, the batch size early (the
    orchestrator reads `current_batch_size=` for its event), then the first line of torch's message."""
    lines = str(error).strip().splitlines()
    said = lines[0] if lines else type(error).__name__
    said = said if len(said) <= 200 else said[:200] + "..."
    return f"{OUT_OF_MEMORY} (current_batch_size={batch_size}, {device}): {said}"


def free_cached_memory(device: str | torch.device) -> None:
    """Give the memory the CUDA caching allocator holds back to the device, after a failed step's
    tensors are gone (call it outside the `except` block: the traceback keeps them alive until then).
    On the CPU there is no such cache."""
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()


def out_of_memory_tags(device: str | torch.device, batch_size: int) -> dict[str, str]:
    """The Sentry tags of an out-of-memory event: `gpu_model`, `total_memory` (as nvidia-smi writes it,
    like the orchestrator's event) and `current_batch_size`. On the CPU: "none (cpu)" and the RAM."""
    device = torch.device(device)
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        gpu_model, total = properties.name, properties.total_memory
    else:
        gpu_model, total = "none (cpu)", os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return {"gpu_model": gpu_model, "total_memory": f"{total // 2**20} MiB", "current_batch_size": str(batch_size)}


class OutOfMemoryInjection:
    """Test hook: the next `steps` calls of `check()` raise torch.OutOfMemoryError, as a step that runs
    out of memory would. Armed by the Python models' `inject_oom_steps` parameter (tests reload a model
    with it); 0, the default, never raises."""

    def __init__(self, steps: int = 0):
        self.arm(steps)

    def arm(self, steps: int) -> None:
        if steps < 0:
            raise ValueError(f"inject_oom_steps must be >= 0, got {steps}")
        self.remaining = steps

    def check(self, what: str) -> None:
        if self.remaining > 0:
            self.remaining -= 1
            raise torch.cuda.OutOfMemoryError(f"CUDA out of memory (injected for a test: {what})")
