"""The `shared_gpu` model configurations: our models' configs for a GPU shared with other models.

    python deploy/shared_gpu.py /srv/indextts2/repository   # writes <model>/configs/shared_gpu.pbtxt there
    python deploy/shared_gpu.py /srv/indextts2/repository --model-prefix tts_   # an export with --model-prefix

It is run on an exported repository (what `python -m export --output` wrote, IndexTTS-2 or 2.5; with
`--model-prefix`, one exported with the same `--model-prefix`, whose folders are `<prefix><model>`), and
derives each variant from that repository's own config.pbtxt, so the variant always matches the model
version and config that were exported. Triton picks `<model>/configs/<name>.pbtxt` over
`<model>/config.pbtxt` when it is started with `--model-config-name=<name>`, and falls back to
config.pbtxt for a model without one (other teams' models in a merged repository, for instance). So the
default configs (what the local tritonserver and `make serve` load) are untouched, and a server started with

    tritonserver --model-config-name=shared_gpu --rate-limit=execution_count \\
        --rate-limit-resource=gpu_compute:2 ...

runs our models with what is below: each file is config.pbtxt with these changes and nothing else
(tests/test_deploy.py checks that on the committed configs of both versions), written with protobuf's
text format (Triton's own ModelConfig message, from tritonclient).

- Rate limiter: the heavy models' instances need one `gpu_compute` per execution. With
  `--rate-limit=execution_count`, Triton runs an instance only when its resources are free, so with
  `--rate-limit-resource=gpu_compute:N` at most N of these executions run at once on each GPU, ours and
  those of any other model that asks for `gpu_compute`; the others queue (Triton's queue time, which
  the autoscaler watches) instead of oversubscribing the GPU. Priority 1 goes to the stages that finish
  requests (s2mel, vocoder), 2 to the one that starts them (semantic_encoder): Triton gives an
  instance of priority 2 half the turns of one of priority 1 when both wait.
- Memory caps for the ONNX models: ONNX Runtime's CUDA execution provider arena is capped at
  `gpu_mem_limit` bytes and grows by what is asked (`arena_extend_strategy` 1, kSameAsRequested)
  instead of doubling; TensorRT's build workspace is cut from 4 GiB to `max_workspace_size_bytes`.
  They are model-level `parameters`, which Triton's ONNX Runtime backend reads whenever a config has
  a `parameters` block (a `cuda` accelerator entry would be overwritten by those defaults).
- gpt_decoder: its KV cache is preallocated for `max_slots` sequences, 287 MiB each at the official
  size in float16 (24 layers x 2451 positions x 1280 x 2 (K, V) x 2 bytes): 16 slots 4.5 GiB, 8 slots
  2.2 GiB. It is decoupled and its engine decodes on a thread of its own, so Triton's rate limiter
  (which only gates `execute`, a submission) cannot make it take turns: its share of the GPU is set by
  max_slots.

The byte numbers are starting points from the measured ONNX sizes at the official size
(benchmarks/results/export_official_size.md, float32: semantic_encoder 1.53 GiB, speaker_conditioner
690 MiB, emotion_conditioner 623 MiB, vocoder 430 MiB, s2mel_estimator 359 MiB, semantic_codec 85 MiB,
campplus 28 MiB, length_regulator 15 MiB) plus room for activations at max_batch_size. They have not
been measured on a GPU: a cap too small shows up as out-of-memory errors (503 from the service,
`tts_stage_errors_total{error_type="out_of_memory"}`), not as a crash.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

COMMITTED_REPOSITORY = Path(__file__).resolve().parent.parent / "model_repository"
CONFIG_NAME = "shared_gpu"
RESOURCE = "gpu_compute"
# What the deployment passes as --rate-limit-resource (deploy/k8s/components/shared-gpu): two
# executions at once per GPU, so one stage can run while another one's inputs are copied.
RESOURCE_PER_GPU = 2
GIB = 2**30
MIB = 2**20


@dataclass(frozen=True)
class SharedGpuSettings:
    priority: int | None = None  # None: no rate limiter (light models, run once per reference voice)
    gpu_mem_limit: int | None = None  # bytes, ONNX models only
    trt_workspace: int | None = None  # bytes, ONNX models only
    parameters: dict[str, str] = field(default_factory=dict)  # other model parameters to set


SETTINGS: dict[str, SharedGpuSettings] = {
    "semantic_encoder": SharedGpuSettings(priority=2, gpu_mem_limit=3 * GIB, trt_workspace=1 * GIB),
    "semantic_codec": SharedGpuSettings(gpu_mem_limit=512 * MIB, trt_workspace=256 * MIB),
    "campplus": SharedGpuSettings(gpu_mem_limit=512 * MIB, trt_workspace=256 * MIB),
    "speaker_conditioner": SharedGpuSettings(gpu_mem_limit=int(1.5 * GIB), trt_workspace=512 * MIB),
    "emotion_conditioner": SharedGpuSettings(gpu_mem_limit=int(1.5 * GIB), trt_workspace=512 * MIB),
    "length_regulator": SharedGpuSettings(gpu_mem_limit=512 * MIB, trt_workspace=256 * MIB),
    "s2mel_estimator": SharedGpuSettings(priority=1, gpu_mem_limit=4 * GIB, trt_workspace=1 * GIB),
    "vocoder": SharedGpuSettings(priority=1, gpu_mem_limit=3 * GIB, trt_workspace=1 * GIB),
    "s2mel": SharedGpuSettings(priority=1),
    "gpt_decoder": SharedGpuSettings(parameters={"max_slots": "8", "max_waiting": "32"}),
}

HEADER = """\
# GENERATED by deploy/shared_gpu.py from config.pbtxt beside it: edit that script's table and run it again.
# Used instead of config.pbtxt when tritonserver runs with --model-config-name=shared_gpu (a GPU
# shared with other models: rate limiter resources and memory caps; see the script's docstring).
"""


def shared_gpu_config(base: model_config_pb2.ModelConfig, settings: SharedGpuSettings) -> model_config_pb2.ModelConfig:
    config = model_config_pb2.ModelConfig()
    config.CopyFrom(base)
    if settings.priority is not None:
        for group in config.instance_group:
            group.rate_limiter.Clear()
            group.rate_limiter.resources.add(name=RESOURCE, count=1)
            group.rate_limiter.priority = settings.priority
    if settings.gpu_mem_limit is not None:
        if config.backend != "onnxruntime":
            raise ValueError(f"{config.name}: gpu_mem_limit is an ONNX Runtime setting, not {config.backend!r}")
        config.parameters["gpu_mem_limit"].string_value = str(settings.gpu_mem_limit)
        config.parameters["arena_extend_strategy"].string_value = "1"  # kSameAsRequested
    if settings.trt_workspace is not None:
        accelerators = [a for a in config.optimization.execution_accelerators.gpu_execution_accelerator
                        if a.name == "tensorrt"]
        if not accelerators:
            raise ValueError(f"{config.name}: no tensorrt accelerator to size")
        for accelerator in accelerators:
            accelerator.parameters["max_workspace_size_bytes"] = str(settings.trt_workspace)
    for key, value in settings.parameters.items():
        if key not in config.parameters:
            raise ValueError(f"{config.name}: parameter {key!r} is not in config.pbtxt")
        config.parameters[key].string_value = value
    return config


def read_config(path: Path) -> model_config_pb2.ModelConfig:
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def render(model: str, repository: Path, model_prefix: str = "") -> str:
    base = read_config(repository / f"{model_prefix}{model}" / "config.pbtxt")
    return HEADER + text_format.MessageToString(shared_gpu_config(base, SETTINGS[model]))


def target(model: str, repository: Path, model_prefix: str = "") -> Path:
    return repository / f"{model_prefix}{model}" / "configs" / f"{CONFIG_NAME}.pbtxt"


def write_all(repository: Path, model_prefix: str = "") -> list[Path]:
    """Write the variant of every model of ours that `repository` holds (in folders `<model_prefix><model>`);
    raises when it holds none."""
    written = []
    for model in SETTINGS:
        if not (repository / f"{model_prefix}{model}" / "config.pbtxt").is_file():
            continue
        path = target(model, repository, model_prefix)
        path.parent.mkdir(exist_ok=True)
        path.write_text(render(model, repository, model_prefix))
        written.append(path)
    if not written:
        names = sorted(f"{model_prefix}{model}" for model in SETTINGS)
        raise FileNotFoundError(f"{repository} holds none of the models {names} (is --model-prefix the export's?)")
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("repository", type=Path, help="an exported model repository (python -m export --output)")
    parser.add_argument("--model-prefix", default="", metavar="PREFIX",
                        help="the --model-prefix the repository was exported with (default: none)")
    args = parser.parse_args(argv)
    if args.repository.resolve() == COMMITTED_REPOSITORY.resolve():
        print("write into an exported repository, not the committed model_repository/", file=sys.stderr)
        return 2
    try:
        paths = write_all(args.repository, args.model_prefix)
    except (OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    for path in paths:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
