"""benchmarks/run_benchmarks.py run as a user runs it, tiny: concurrency 1 and 2, three requests per run
(one per text length) of a few codes and two diffusion steps, the ceiling measured with small batches."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
CONCURRENCY = [1, 2]
REQUESTS = 3  # one of each text length
CODES = 6


def run_tiny_benchmark(checkpoint_dir: Path, triton_grpc_url: str, preset: str, name: str, out: Path,
                       *extra_args: str) -> dict[str, Any]:
    """Runs the benchmark script into `out`; returns its JSON report, its Markdown and the plot's path."""
    command = [
        sys.executable, "-m", "benchmarks.run_benchmarks", "--checkpoint", str(checkpoint_dir),
        "--triton-grpc-url", triton_grpc_url, "--presets", preset,
        "--concurrency", *map(str, CONCURRENCY), "--requests", str(REQUESTS), "--codes", str(CODES),
        "--diffusion-steps", "2", "--name", name, "--out-dir", str(out / "results"),
        "--build-dir", str(out / "build"), "--ceiling-batches", "1", "2", "--ceiling-gpt-batches", "1", "4",
        *extra_args,
    ]
    completed = subprocess.run(command, check=False, capture_output=True, text=True, timeout=240, cwd=REPO_ROOT)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    results = out / "results"
    return {
        "stdout": completed.stdout,
        "report": json.loads((results / f"{name}.json").read_text()),
        "markdown": (results / f"{name}.md").read_text(),
        "png": results / f"{name}_{preset}.png",
        "results": results,
    }
