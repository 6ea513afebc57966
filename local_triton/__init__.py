"""Run a real tritonserver locally (from the nvidia-pytriton wheel) with a Python-based ONNX backend."""

from local_triton.launcher import (
    LocalTritonServer,
    TritonInstallation,
    TritonNotInstalledError,
    TritonStartError,
    build_backend_directory,
    find_triton_installation,
    python_library_dir,
    server_environment,
)
from local_triton.process_group import find_free_port
from local_triton.supervisor import TritonSupervisor

__all__ = [
    "LocalTritonServer",
    "TritonInstallation",
    "TritonNotInstalledError",
    "TritonStartError",
    "TritonSupervisor",
    "build_backend_directory",
    "find_free_port",
    "find_triton_installation",
    "python_library_dir",
    "server_environment",
]
