"""Triton adapter for the GPT decoder engine: requests -> `DecodeRequest`s, engine events -> streamed
responses. The engine (`indextts2.engine.DecoderEngine`) owns the KV cache, the scheduling and the
decode loop on its own thread; `execute` only submits, and one sender thread per request streams its
events back. Weights come from `1/weights/` (written by `python -m export`): config.yaml and gpt.pth.
"""

from __future__ import annotations

import json
import queue
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import torch
import triton_python_backend_utils as pb_utils

from indextts2.engine import DecoderEngine, DecodeRequest, EngineOverloadedError, SamplingConfig, StopReason
from indextts2.engine.telemetry import ModelTelemetry

# The official sampling defaults of infer_v2 (max 1500 codes, or fewer where the model's position
# table is shorter).
DEFAULT_SAMPLING = {"do_sample": True, "temperature": 0.8, "top_k": 30, "top_p": 0.8, "repetition_penalty": 10.0}
DEFAULT_MAX_CODES = 1500
FINISH_REASONS = {
    StopReason.STOP_CODE: "stop", StopReason.MAX_CODES: "max_codes", StopReason.CANCELLED: "cancelled",
    StopReason.SHUTDOWN: "cancelled",
}
# How often a sender thread looks at its request's cancellation flag while waiting for codes.
CANCEL_POLL_S = 0.05


def _parameter(config: dict, key: str, default: str) -> str:
    return config.get("parameters", {}).get(key, {}).get("string_value", default)


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        if not pb_utils.using_decoupled_model_transaction_policy(config):
            raise ValueError("gpt_decoder must be decoupled (model_transaction_policy { decoupled: true })")
        device = _parameter(config, "device", "auto")
        if device == "auto":
            device = "cuda" if args.get("model_instance_kind") == "GPU" and torch.cuda.is_available() else "cpu"
        weights = Path(args["model_repository"]) / args["model_version"] / "weights"
        self.engine = DecoderEngine.from_checkpoint_dir(
            weights,
            max_slots=int(_parameter(config, "max_slots", "16")),
            max_waiting=int(_parameter(config, "max_waiting", "64")),
            device=device,
            use_cuda_graphs=_parameter(config, "use_cuda_graphs", "true").lower() == "true",
        )
        self.telemetry = ModelTelemetry(args["model_name"], args["model_version"], device)
        self.default_max_codes = min(DEFAULT_MAX_CODES, self.engine.model.max_mel_tokens - 1)
        self.engine.start()
        self._senders: set[threading.Thread] = set()

    def execute(self, requests: list) -> None:
        for request in requests:
            sender = request.get_response_sender()
            headers = ModelTelemetry.trace_headers(request)
            try:
                decode_request = self._parse(request)
                handle = self.engine.submit(decode_request)
            except EngineOverloadedError as error:
                # A full decoder is the caller's to report (it answers 503); it is not a model failure.
                self._send_error(sender, f"overloaded: {error}")
                continue
            except Exception as error:  # noqa: BLE001 - one bad request must not fail the others
                self.telemetry.report(error, headers, self._metadata())
                self._send_error(sender, f"invalid request: {error}")
                continue
            thread = threading.Thread(target=self._stream, args=(request, sender, handle, headers), daemon=True)
            self._senders.add(thread)
            thread.start()

    def finalize(self) -> None:
        self.engine.stop()
        self.telemetry.flush()
        for thread in list(self._senders):
            thread.join(timeout=5)

    def _parse(self, request) -> DecodeRequest:
        def optional(name: str):
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            return None if tensor is None else tensor.as_numpy().reshape(-1)[0]

        def required(name: str) -> torch.Tensor:
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            if tensor is None:
                raise ValueError(f"missing input {name!r}")
            return torch.from_numpy(np.array(tensor.as_numpy()))

        sampling = {}
        for name, default in DEFAULT_SAMPLING.items():
            value = optional(name)
            sampling[name] = type(default)(default if value is None else value)
        max_codes = optional("max_codes")
        min_codes = optional("min_codes")
        seed = optional("seed")
        stream_every = optional("stream_every")
        return DecodeRequest(
            speaker_latents=required("speaker_latents"),
            emotion_vector=required("emotion_vector"),
            text_ids=required("text_ids"),
            sampling=SamplingConfig(
                **sampling,
                max_codes=self.default_max_codes if max_codes is None else int(max_codes),
                min_codes=0 if min_codes is None else int(min_codes),
                seed=None if seed is None else int(seed),
            ),
            # Client request ids need not be unique across clients: the engine gets its own.
            request_id=uuid.uuid4().hex,
            stream_every=16 if stream_every is None else max(1, int(stream_every)),
        )

    def _metadata(self) -> dict:
        return {"batch_size": self.engine.num_running, "waiting": self.engine.num_waiting}

    def _stream(self, request, sender, handle, headers: dict[str, str]) -> None:
        try:
            last_check = time.monotonic()
            while True:
                try:
                    event = handle.events.get(timeout=CANCEL_POLL_S)
                except queue.Empty:
                    event = None
                # Checked on a clock, not only when idle: a fast stream never leaves the queue empty.
                if time.monotonic() - last_check >= CANCEL_POLL_S:
                    last_check = time.monotonic()
                    if request.is_cancelled():
                        handle.cancel()
                if event is None:
                    continue
                if event.finished and event.stop_reason == StopReason.ERROR:
                    message = event.error or "decoding failed"
                    self.telemetry.report(RuntimeError(message), headers, self._metadata())
                    self._send_error(sender, message)
                    return
                tensors = [
                    pb_utils.Tensor("semantic_codes", event.codes.numpy().astype(np.int64)),
                    pb_utils.Tensor("code_latents", np.ascontiguousarray(event.latents.numpy(), dtype=np.float32)),
                ]
                if event.finished:
                    reason = FINISH_REASONS.get(event.stop_reason, str(event.stop_reason))
                    tensors.append(pb_utils.Tensor("finish_reason", np.array([reason.encode()], dtype=np.object_)))
                    sender.send(pb_utils.InferenceResponse(output_tensors=tensors),
                                flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
                    return
                sender.send(pb_utils.InferenceResponse(output_tensors=tensors))
        except Exception as error:  # noqa: BLE001 - the client must get a final response whatever happens
            self.telemetry.report(error, headers, self._metadata())
            handle.cancel()
            try:
                self._send_error(sender, f"streaming failed: {error}")
            except Exception:  # noqa: BLE001, S110 - the client is gone
                pass
        finally:
            self._senders.discard(threading.current_thread())

    @staticmethod
    def _send_error(sender, message: str) -> None:
        sender.send(
            pb_utils.InferenceResponse(error=pb_utils.TritonError(message)),
            flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL,
        )
