"""Triton adapter for s2mel: requests -> `S2MelRequest`s -> padded batches -> responses.

The math is in `indextts2` (networks, `indextts2.engine.s2mel_batch`); this file only turns Triton
tensors into requests, runs the batches `plan_s2mel_batches` forms from them (cheapest first, each
answered as soon as it is done), skips the requests whose caller is gone, and turns mel back into
responses. Weights come from `1/weights/` (written by `python -m export`): config.yaml, s2mel.pth and
the semantic codec, in the official layout; for IndexTTS-2.5 (parameter `indextts_version` "2.5") the
s2mel without gpt_layer and codec.pth, and requests carry no `code_latents`.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import triton_python_backend_utils as pb_utils

from indextts2 import defaults
from indextts2.config import load_config
from indextts2.engine.cpu_threads import set_torch_threads
from indextts2.engine.device import (
    free_cached_memory,
    is_out_of_memory,
    out_of_memory_message,
    out_of_memory_tags,
    use_instance_device,
)
from indextts2.engine.s2mel_batch import (
    S2MelBatcher,
    S2MelRequest,
    padding_waste,
    plan_s2mel_batches,
    s2mel_autocast_dtype,
)
from indextts2.engine.telemetry import ModelTelemetry
from indextts2.model_names import prefix_of
from indextts2.networks.codec_2_5 import CODEC_FILE as CODEC_2_5_FILE
from indextts2.networks.codec_2_5 import load_codec_2_5
from indextts2.networks.s2mel import load_s2mel
from indextts2.networks.semantic_codec import load_semantic_codec

DEFAULTS = {
    "duration_ratio": defaults.DURATION_RATIO, "diffusion_steps": defaults.DIFFUSION_STEPS,
    "cfg_rate": defaults.CFG_RATE,
}
WASTE_BUCKETS = [0.0, 0.05, 0.1, 0.25, 0.5, 1.0]
# The error messages the orchestrator maps (504 for a deadline; a cancelled caller reads nothing).
DEADLINE_EXCEEDED = "deadline exceeded"
CANCELLED = "cancelled"


def _parameter(config: dict, key: str, default: str) -> str:
    return config.get("parameters", {}).get(key, {}).get("string_value", default)


@dataclass
class _Call:
    """One Triton request on its way through `execute`."""

    request: Any  # pb_utils.InferenceRequest
    sender: Any  # its response sender: one final response each
    headers: dict[str, str]
    item: S2MelRequest
    deadline_s: float | None  # Unix time after which the caller no longer wants the result

    def gone(self) -> str | None:
        """Why the caller no longer wants the result, or None while it does. Once gone, gone for good."""
        if self.deadline_s is not None and time.time() >= self.deadline_s:
            return DEADLINE_EXCEEDED
        if self.request.is_cancelled():
            return CANCELLED
        return None


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        set_torch_threads(config)
        weights = Path(args["model_repository"]) / args["model_version"] / "weights"
        model_config = load_config(weights / "config.yaml")
        # The GPU Triton gave this instance (one instance per GPU of its instance_group), or the CPU.
        self.device = device = use_instance_device(args, _parameter(config, "device", "auto"))
        self.estimator = _parameter(config, "estimator", "torch")
        if self.estimator not in ("torch", "triton"):
            raise ValueError(f"s2mel: parameter estimator must be 'torch' or 'triton', not {self.estimator!r}")
        # The prefix of our served names (`python -m export --model-prefix`), read from this model's own:
        # its estimator is served under the same one (tts_s2mel calls tts_s2mel_estimator; s2mel and the
        # tests' copy s2mel_bls call s2mel_estimator), and its Sentry events name it without the prefix, as
        # the orchestrator's do, so alerts on the stage hold with or without one.
        model_prefix = prefix_of(args["model_name"], "s2mel")
        self.estimator_model = model_prefix + "s2mel_estimator"
        autocast_dtype = s2mel_autocast_dtype(_parameter(config, "precision", "float32"), device)
        if autocast_dtype is not None and self.estimator == "triton":
            raise ValueError("s2mel: parameter precision is for the in-process DiT (estimator torch); the served "
                             "s2mel_estimator takes float32 tensors and has its own precision")
        self.version = _parameter(config, "indextts_version", "2.0")
        if self.version not in ("2.0", "2.5"):
            raise ValueError(f"s2mel: parameter indextts_version must be '2.0' or '2.5', not {self.version!r}")
        version_2_5 = self.version == "2.5"
        s2mel = load_s2mel(model_config["s2mel"], weights / model_config["s2mel_checkpoint"],
                           with_gpt_layer=not version_2_5).to(device)
        if version_2_5:
            codec = load_codec_2_5(model_config["semantic_codec"], weights / CODEC_2_5_FILE).to(device)
        else:
            codec = load_semantic_codec(
                model_config["semantic_codec"], weights / "hf_cache" / "semantic_codec_model.safetensors"
            ).to(device)
        self.batcher = S2MelBatcher(s2mel, codec, device, autocast_dtype)
        # Test hook, never in a served config: the next N batch runs fail as out of memory.
        self.batcher.out_of_memory_injection.arm(int(_parameter(config, "inject_oom_steps", "0")))
        self.telemetry = ModelTelemetry(args["model_name"].removeprefix(model_prefix), args["model_version"], device)
        # The batch limits are per device kind: see config.pbtxt for the measurements behind them.
        budget_key = "frame_budget_gpu" if torch.device(device).type == "cuda" else "frame_budget_cpu"
        self.frame_budget = int(_parameter(config, budget_key, "0"))
        self.max_padding_waste = float(_parameter(config, "max_padding_waste", "0"))
        if self.frame_budget < 0 or self.max_padding_waste < 0:
            raise ValueError(f"s2mel: {budget_key} and max_padding_waste must not be negative")
        self._metrics(args["model_name"], args["model_version"])

    def _metrics(self, model: str, version: str) -> None:
        """Custom metrics on Triton's /metrics, labelled like Triton's own (model, version)."""
        labels = {"model": model, "version": version}
        waste = pb_utils.MetricFamily(
            name="s2mel_batch_padding_waste",
            description="Per padded batch run: rows x longest row / sum of rows - 1 (0 = no padding)",
            kind=pb_utils.MetricFamily.HISTOGRAM,
        )
        self.waste_metric = waste.Metric(labels=labels, buckets=WASTE_BUCKETS)
        frames = pb_utils.MetricFamily(
            name="s2mel_batch_frames_total",
            description="Frames of the padded batches run, per diffusion step: padded (rows x longest) and real",
            kind=pb_utils.MetricFamily.COUNTER,
        )
        self.padded_frames = frames.Metric(labels={**labels, "kind": "padded"})
        self.real_frames = frames.Metric(labels={**labels, "kind": "real"})
        stopped = pb_utils.MetricFamily(
            name="s2mel_requests_stopped_total",
            description="Requests answered with an error instead of a mel because their caller was gone",
            kind=pb_utils.MetricFamily.COUNTER,
        )
        self.stopped = {
            reason: stopped.Metric(labels={**labels, "reason": reason.replace(" ", "_")})
            for reason in (DEADLINE_EXCEEDED, CANCELLED)
        }
        # A family must outlive its metrics (the backend fails a metric whose family was collected).
        self.metric_families = [waste, frames, stopped]

    def execute(self, requests: list) -> None:
        """Answers every request through its response sender (one final response each), so that a
        batch's requests get their mel as soon as it is done, not when the last batch is."""
        calls: list[_Call] = []
        for request in requests:
            sender = request.get_response_sender()
            headers = ModelTelemetry.trace_headers(request)
            try:
                item, deadline_s = self._parse(request)
                item.validate()
            except Exception as error:  # noqa: BLE001 - one bad request must not fail the others
                self.telemetry.report(error, headers, {"batch_size": len(requests)})
                self._send_error(sender, f"s2mel: {error}")
                continue
            calls.append(_Call(request, sender, headers, item, deadline_s))
        # One batch at a time, planned again after each: a request whose caller left while an earlier
        # batch ran is dropped before it costs anything, and the rest may then group differently.
        while calls := [call for call in calls if not self._stopped(call)]:
            plan = plan_s2mel_batches([call.item.frames for call in calls], self.frame_budget,
                                      self.max_padding_waste, [call.item.batch_key for call in calls])
            self._run([calls[i] for i in plan[0]])
            calls = [call for i, call in enumerate(calls) if i not in plan[0]]

    def _run(self, batch: list[_Call]) -> None:
        frames = [call.item.frames for call in batch]
        self.waste_metric.observe(padding_waste(frames))
        self.padded_frames.increment(len(frames) * max(frames))
        self.real_frames.increment(sum(frames))
        velocity_fn = self._served_velocity if self.estimator == "triton" else None
        try:
            mels = self.batcher.run([call.item for call in batch], velocity_fn=velocity_fn,
                                    rows_gone=lambda: [call.gone() is not None for call in batch])
        except Exception as error:  # noqa: BLE001 - the batch's requests fail; the model serves on
            # Out of memory: an error the orchestrator answers with 503, reported with the GPU and batch.
            out_of_memory = is_out_of_memory(error)
            message = out_of_memory_message(len(batch), self.device, error) if out_of_memory else str(error)
            tags = out_of_memory_tags(self.device, len(batch)) if out_of_memory else None
            for call in batch:
                self.telemetry.report(error, call.headers, {
                    "batch_size": len(batch), "codes": int(call.item.codes.shape[0]),
                    "duration_ratio": call.item.duration_ratio, "diffusion_steps": call.item.diffusion_steps,
                }, tags)
                self._send_error(call.sender, f"s2mel: {message}")
            mels = None
        if mels is None:
            if out_of_memory:  # here, where the traceback no longer holds the failed batch's tensors
                free_cached_memory(self.device)
            return
        for call, mel in zip(batch, mels, strict=False):
            if mel is None:  # it left the batch between steps, its caller gone (for good)
                if not self._stopped(call):
                    self._send_error(call.sender, "s2mel: stopped between diffusion steps")
                continue
            tensor = pb_utils.Tensor("mel", np.ascontiguousarray(mel.cpu().numpy()[None]))
            call.sender.send(pb_utils.InferenceResponse(output_tensors=[tensor]),
                             flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)

    def _stopped(self, call: _Call) -> bool:
        """Answer the request with an error if its caller is gone (deadline passed, or cancelled)."""
        reason = call.gone()
        if reason is None:
            return False
        self.stopped[reason].increment(1)
        if reason == DEADLINE_EXCEEDED:
            late_ms = time.time() * 1000 - call.deadline_s * 1000
            self._send_error(call.sender, f"s2mel: {DEADLINE_EXCEEDED}: the caller's deadline passed {late_ms:.0f} ms ago")
        else:
            self._send_error(call.sender, f"s2mel: {CANCELLED} by the caller", pb_utils.TritonError.CANCELLED)
        return True

    @staticmethod
    def _send_error(sender, message: str, code: int | None = None) -> None:
        error = pb_utils.TritonError(message) if code is None else pb_utils.TritonError(message, code)
        sender.send(pb_utils.InferenceResponse(error=error), flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)

    def finalize(self) -> None:
        self.telemetry.flush()

    def _parse(self, request) -> tuple[S2MelRequest, float | None]:
        """The request, and its caller's deadline (Unix time, seconds) when it sent one."""
        def array(name: str) -> np.ndarray | None:
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            if tensor is None:
                return None
            value = tensor.as_numpy()
            if value.shape[0] != 1:
                raise ValueError(f"{name}: send one request per call (batch 1), got batch {value.shape[0]}")
            return value[0]

        def scalar(name: str, cast):
            value = array(name)
            return cast(DEFAULTS[name]) if value is None else cast(value.reshape(-1)[0])

        seed = array("seed")
        code_offset = array("code_offset")
        deadline_ms = array("deadline_unix_ms")
        deadline_s = None if deadline_ms is None else int(deadline_ms.reshape(-1)[0]) / 1000.0
        semantic_codes = array("semantic_codes")
        if semantic_codes is None:
            raise ValueError("missing input 'semantic_codes'")
        latents = array("code_latents")
        if latents is None and self.version == "2.0":
            raise ValueError("missing input 'code_latents'")
        return S2MelRequest(
            codes=torch.from_numpy(semantic_codes.astype(np.int64)),
            latents=None if latents is None else torch.from_numpy(latents),
            prompt_condition=torch.from_numpy(array("prompt_condition")),
            ref_mel=torch.from_numpy(array("ref_mel")),
            style=torch.from_numpy(array("speaker_style")),
            duration_ratio=scalar("duration_ratio", float),
            diffusion_steps=scalar("diffusion_steps", int),
            cfg_rate=scalar("cfg_rate", float),
            seed=None if seed is None else int(seed.reshape(-1)[0]),
            code_offset=0 if code_offset is None else int(code_offset.reshape(-1)[0]),
            version=self.version,
        ), deadline_s

    def _served_velocity(self, x, prompt_x, x_lens, t, style, mu) -> torch.Tensor:
        """The DiT as served by `<prefix>s2mel_estimator` (BLS): on a GPU that model runs under TensorRT."""
        inputs = {
            "noisy_mel": x, "prompt_mel": prompt_x, "mel_lengths": x_lens[:, None], "timestep": t[:, None],
            "speaker_style": style, "mel_condition": mu,
        }
        tensors = [
            pb_utils.Tensor(name, np.ascontiguousarray(value.detach().cpu().numpy()))
            for name, value in inputs.items()
        ]
        response = pb_utils.InferenceRequest(
            model_name=self.estimator_model, requested_output_names=["velocity"], inputs=tensors
        ).exec()
        if response.has_error():
            raise RuntimeError(f"{self.estimator_model}: {response.error().message()}")
        velocity = pb_utils.get_output_tensor_by_name(response, "velocity").as_numpy()
        return torch.from_numpy(velocity).to(x.device, x.dtype)
