"""Triton adapter for s2mel: requests -> `S2MelRequest`s -> one `S2MelBatcher.run` -> responses.

The math is in `indextts2` (networks, `indextts2.engine.s2mel_batch`); this file only turns Triton
tensors into requests and mel back into responses. Weights come from `1/weights/` (written by
`python -m export`): config.yaml, s2mel.pth and the semantic codec, in the official layout.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import triton_python_backend_utils as pb_utils

from indextts2.config import load_config
from indextts2.engine.s2mel_batch import S2MelBatcher, S2MelRequest
from indextts2.engine.telemetry import ModelTelemetry
from indextts2.networks.s2mel import load_s2mel
from indextts2.networks.semantic_codec import load_semantic_codec

DEFAULTS = {"duration_ratio": 1.0, "diffusion_steps": 25, "cfg_rate": 0.7}


def _parameter(config: dict, key: str, default: str) -> str:
    return config.get("parameters", {}).get(key, {}).get("string_value", default)


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        weights = Path(args["model_repository"]) / args["model_version"] / "weights"
        model_config = load_config(weights / "config.yaml")
        device = _parameter(config, "device", "auto")
        if device == "auto":
            device = "cuda" if args.get("model_instance_kind") == "GPU" and torch.cuda.is_available() else "cpu"
        s2mel = load_s2mel(model_config["s2mel"], weights / model_config["s2mel_checkpoint"]).to(device)
        codec = load_semantic_codec(
            model_config["semantic_codec"], weights / "hf_cache" / "semantic_codec_model.safetensors"
        ).to(device)
        self.batcher = S2MelBatcher(s2mel, codec, device)
        self.telemetry = ModelTelemetry(args["model_name"], args["model_version"], device)
        self.estimator = _parameter(config, "estimator", "torch")
        if self.estimator not in ("torch", "triton"):
            raise ValueError(f"s2mel: parameter estimator must be 'torch' or 'triton', not {self.estimator!r}")

    def execute(self, requests: list) -> list:
        responses: list = [None] * len(requests)
        parsed: list[tuple[int, S2MelRequest]] = []
        headers = [ModelTelemetry.trace_headers(request) for request in requests]
        for index, request in enumerate(requests):
            try:
                item = self._parse(request)
                item.validate()
                parsed.append((index, item))
            except Exception as error:  # noqa: BLE001 - one bad request must not fail the others
                self.telemetry.report(error, headers[index], {"batch_size": len(requests)})
                responses[index] = pb_utils.InferenceResponse(error=pb_utils.TritonError(f"s2mel: {error}"))
        if parsed:
            velocity_fn = self._served_velocity if self.estimator == "triton" else None
            try:
                mels = self.batcher.run([item for _, item in parsed], velocity_fn=velocity_fn)
            except Exception as error:  # noqa: BLE001
                for index, item in parsed:
                    self.telemetry.report(error, headers[index], {
                        "batch_size": len(parsed), "codes": int(item.codes.shape[0]),
                        "duration_ratio": item.duration_ratio, "diffusion_steps": item.diffusion_steps,
                    })
                    responses[index] = pb_utils.InferenceResponse(error=pb_utils.TritonError(f"s2mel: {error}"))
                return responses
            for (index, _), mel in zip(parsed, mels):
                tensor = pb_utils.Tensor("mel", np.ascontiguousarray(mel.cpu().numpy()[None]))
                responses[index] = pb_utils.InferenceResponse(output_tensors=[tensor])
        return responses

    def finalize(self) -> None:
        self.telemetry.flush()

    def _parse(self, request) -> S2MelRequest:
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
        return S2MelRequest(
            codes=torch.from_numpy(array("semantic_codes").astype(np.int64)),
            latents=torch.from_numpy(array("code_latents")),
            prompt_condition=torch.from_numpy(array("prompt_condition")),
            ref_mel=torch.from_numpy(array("ref_mel")),
            style=torch.from_numpy(array("speaker_style")),
            duration_ratio=scalar("duration_ratio", float),
            diffusion_steps=scalar("diffusion_steps", int),
            cfg_rate=scalar("cfg_rate", float),
            seed=None if seed is None else int(seed.reshape(-1)[0]),
        )

    def _served_velocity(self, x, prompt_x, x_lens, t, style, mu) -> torch.Tensor:
        """The DiT as served by `s2mel_estimator` (BLS): on a GPU that model runs under TensorRT."""
        inputs = {
            "noisy_mel": x, "prompt_mel": prompt_x, "mel_lengths": x_lens[:, None], "timestep": t[:, None],
            "speaker_style": style, "mel_condition": mu,
        }
        tensors = [
            pb_utils.Tensor(name, np.ascontiguousarray(value.detach().cpu().numpy()))
            for name, value in inputs.items()
        ]
        response = pb_utils.InferenceRequest(
            model_name="s2mel_estimator", requested_output_names=["velocity"], inputs=tensors
        ).exec()
        if response.has_error():
            raise RuntimeError(f"s2mel_estimator: {response.error().message()}")
        velocity = pb_utils.get_output_tensor_by_name(response, "velocity").as_numpy()
        return torch.from_numpy(velocity).to(x.device, x.dtype)
