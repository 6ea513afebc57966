"""Export one stage to ONNX and verify it against PyTorch on the same inputs.

Every export is checked at export time: ONNX Runtime runs the exported file on inputs of a different
batch size and length than the ones traced, and the build fails when the largest absolute difference
from PyTorch passes the stage's tolerance. A stage that exports but computes something else never
reaches a model repository.
"""

from __future__ import annotations

import copy
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

OPSET = 17


class ExportVerificationError(RuntimeError):
    """An exported ONNX model disagrees with PyTorch beyond its stage's tolerance."""


@dataclass
class OnnxStage:
    """One network piece to export: a module whose forward takes `input_names` in order.

    `trace_inputs` are used for tracing; `check_inputs` (other batch sizes and lengths, so that the
    dynamic axes are exercised) for verification. `dynamic_axes` names the batch and time axes.
    """

    name: str
    module: nn.Module
    input_names: list[str]
    output_names: list[str]
    dynamic_axes: dict[str, dict[int, str]]
    trace_inputs: tuple[torch.Tensor, ...]
    check_inputs: list[tuple[torch.Tensor, ...]]
    tolerance: float
    # Half-precision tolerance is looser: fp16 keeps ~3 significant digits through long op chains.
    fp16_tolerance: float = 5e-2
    # Stages that overflow in pure float16 stay float32 in an fp16 repository.
    keep_fp32: bool = False
    notes: list[str] = field(default_factory=list)


@dataclass
class StageReport:
    name: str
    precision: str
    path: Path
    file_bytes: int
    export_seconds: float
    max_abs_error: float
    tolerance: float

    def line(self) -> str:
        return (
            f"{self.name:<20} {self.precision} {self.file_bytes / 2**20:9.2f} MiB  export {self.export_seconds:6.1f} s  "
            f"max |onnx - torch| = {self.max_abs_error:.2e} (tolerance {self.tolerance:.0e})"
        )


class _HalfPrecision(nn.Module):
    """Runs the wrapped stage in float16 while its ONNX inputs and outputs stay float32, so clients
    and configs are the same for fp32 and fp16 repositories."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = copy.deepcopy(inner).half()

    def forward(self, *inputs: torch.Tensor):
        halved = [x.half() if x.is_floating_point() else x for x in inputs]
        outputs = self.inner(*halved)
        if isinstance(outputs, torch.Tensor):
            return outputs.float() if outputs.is_floating_point() else outputs
        return tuple(y.float() if y.is_floating_point() else y for y in outputs)


def export_stage(
    stage: OnnxStage,
    path: Path,
    fp16: bool = False,
    device: str = "cpu",
    providers: list[str] | None = None,
) -> StageReport:
    """Export `stage` to `path` (float32, or float16 inside with float32 inputs/outputs) and verify it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fp16 = fp16 and not stage.keep_fp32
    reference = stage.module.eval().to(device)
    module = _HalfPrecision(reference).eval() if fp16 else reference
    trace_inputs = tuple(x.to(device) for x in stage.trace_inputs)

    started = time.perf_counter()
    with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
        # The TorchScript exporter warns about its own deprecation and about traced shape arithmetic;
        # neither applies: the dynamic axes are checked below on other shapes.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            trace_inputs,
            str(path),
            dynamo=False,
            input_names=stage.input_names,
            output_names=stage.output_names,
            dynamic_axes=stage.dynamic_axes,
            opset_version=OPSET,
            do_constant_folding=True,
        )
    export_seconds = time.perf_counter() - started

    tolerance = stage.fp16_tolerance if fp16 else stage.tolerance
    # An fp16 export is checked against the float32 network: the error that matters is the one from
    # the model the checkpoint defines, not from PyTorch's own float16 arithmetic.
    max_error, output_scale = verify_onnx(path, reference, stage, device=device, providers=providers)
    if fp16:
        # float16 keeps ~3 significant digits: its tolerance is relative to the output's magnitude.
        tolerance *= max(1.0, output_scale)
    file_bytes = path.stat().st_size + sum(p.stat().st_size for p in path.parent.glob(path.name + ".data"))
    report = StageReport(stage.name, "fp16" if fp16 else "fp32", path, file_bytes, export_seconds, max_error, tolerance)
    if not np.isfinite(max_error) or max_error > tolerance:
        raise ExportVerificationError(
            f"{stage.name}: ONNX output differs from PyTorch by {max_error:.3e} (tolerance {tolerance:.0e}); "
            f"the file is left at {path} for inspection"
        )
    return report


def verify_onnx(
    path: Path,
    module: nn.Module,
    stage: OnnxStage,
    device: str = "cpu",
    providers: list[str] | None = None,
) -> tuple[float, float]:
    """(largest absolute difference between ONNX Runtime and PyTorch, largest absolute PyTorch output)
    over `stage.check_inputs`."""
    if providers is None:
        providers = ["CUDAExecutionProvider"] if device.startswith("cuda") else []
        providers.append("CPUExecutionProvider")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=providers)
    worst = scale = 0.0
    for inputs in stage.check_inputs:
        with torch.no_grad():
            expected = module(*(x.to(device) for x in inputs))
        if isinstance(expected, torch.Tensor):
            expected = (expected,)
        feeds = {name: x.cpu().numpy() for name, x in zip(stage.input_names, inputs, strict=True)}
        actual = session.run(stage.output_names, feeds)
        for name, want, got in zip(stage.output_names, expected, actual, strict=True):
            want = want.float().cpu().numpy() if want.is_floating_point() else want.cpu().numpy()
            if want.shape != got.shape:
                raise ExportVerificationError(
                    f"{stage.name}: output {name!r} has shape {got.shape} in ONNX, {want.shape} in PyTorch"
                )
            if not want.size:
                continue
            if not np.issubdtype(want.dtype, np.floating):
                # Codes and indices must match exactly.
                if not np.array_equal(want, got):
                    return float("inf"), scale
                continue
            worst = max(worst, float(np.max(np.abs(want.astype(np.float64) - got.astype(np.float64)))))
            scale = max(scale, float(np.max(np.abs(want.astype(np.float64)))))
    return worst, scale
