"""Triton adapter for the GPT decoder engine: requests -> `DecodeRequest`s, engine events -> streamed
responses, and nothing else (vLLM's split). The engine (`indextts2.engine.DecoderEngine`) owns the KV
cache, the scheduling and the decode loop on its own thread, and puts the events of every sequence on
ONE queue. `execute` only submits. ONE sender thread, whatever the number of requests, drains that
queue into the requests' response senders and, on a clock, asks Triton which clients went away and
cancels their sequences, so their KV slots are free at the next engine step. A request refused
before it reaches the engine (unparsable, overloaded) is answered by `execute` itself.

Device: the GPU Triton gave the instance (`instance_group [{ kind: KIND_GPU, gpus: [0, 1] }]`: one
engine per GPU), see `indextts2.engine.device.instance_device`. Out of memory, a step's requests fail
with an error that starts with "out of memory" (the orchestrator answers 503), reported with the GPU,
its memory and the batch size; the engine serves on (see `DecoderEngine._decode_step`).

Weights come from `1/weights/` (written by `python -m export`): config.yaml and gpt.pth, an IndexTTS-2.0
or 2.5 GPT as the parameter `indextts_version` says ("2.0" when absent). A 2.5 request may carry
`language` (the lang_embedding row); a 2.0 model refuses it.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import triton_python_backend_utils as pb_utils

from indextts2 import defaults
from indextts2.engine import (
    DecodeEvent,
    DecoderEngine,
    DecodeRequest,
    EngineOverloadedError,
    SamplingConfig,
    StopReason,
)
from indextts2.engine.cpu_threads import set_torch_threads
from indextts2.engine.device import OUT_OF_MEMORY, out_of_memory_tags, use_instance_device
from indextts2.engine.telemetry import ModelTelemetry
from indextts2.model_names import prefix_of

logger = logging.getLogger(__name__)

# The official sampling defaults of infer_v2 (max 1500 codes, or fewer where the model's position
# table is shorter).
DEFAULT_SAMPLING = {
    "do_sample": defaults.DO_SAMPLE, "temperature": defaults.TEMPERATURE, "top_k": defaults.TOP_K,
    "top_p": defaults.TOP_P, "repetition_penalty": defaults.REPETITION_PENALTY,
}
FINISH_REASONS = {
    StopReason.STOP_CODE: "stop", StopReason.MAX_CODES: "max_codes", StopReason.CANCELLED: "cancelled",
    StopReason.SHUTDOWN: "cancelled",
}
# How often the sender thread asks Triton whether the clients in flight are still there.
CANCEL_POLL_S = 0.05
SENDER_THREAD_NAME = "gpt-decoder-sender"


def _parameter(config: dict, key: str, default: str) -> str:
    return config.get("parameters", {}).get(key, {}).get("string_value", default)


@dataclass
class _InFlight:
    """A request the engine accepted and the sender thread has not finished yet."""

    request: Any  # pb_utils.InferenceRequest, kept for is_cancelled() until its final response
    sender: Any  # its response sender
    headers: dict[str, str]  # trace headers, for error reports
    cancelled: bool = False  # its client went away and its engine sequence was cancelled


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        set_torch_threads(config)
        if not pb_utils.using_decoupled_model_transaction_policy(config):
            raise ValueError("gpt_decoder must be decoupled (model_transaction_policy { decoupled: true })")
        device = use_instance_device(args, _parameter(config, "device", "auto"))
        self.device = device
        weights = Path(args["model_repository"]) / args["model_version"] / "weights"
        self._events: queue.Queue[DecodeEvent | None] = queue.Queue()  # None: the sender thread stops
        self.engine = DecoderEngine.from_checkpoint_dir(
            weights,
            version=_parameter(config, "indextts_version", "2.0"),
            max_slots=int(_parameter(config, "max_slots", "16")),
            max_waiting=int(_parameter(config, "max_waiting", "64")),
            device=device,
            use_cuda_graphs=_parameter(config, "use_cuda_graphs", "false").lower() == "true",
            events=self._events,
        )
        # Test hook, never in a served config: the next N decode attempts fail as out of memory.
        self.engine.out_of_memory_injection.arm(int(_parameter(config, "inject_oom_steps", "0")))
        # Sentry events name the model without the prefix of our served names (`python -m export
        # --model-prefix`), as the orchestrator's do, so alerts on the stage hold with or without one.
        model_prefix = prefix_of(args["model_name"], "gpt_decoder")
        self.telemetry = ModelTelemetry(args["model_name"].removeprefix(model_prefix), args["model_version"], device)
        self.default_max_codes = min(defaults.MAX_CODES, self.engine.model.max_mel_tokens - 1)
        # Held while a request is submitted and registered, so its first event never finds it missing.
        self._lock = threading.Lock()
        self._in_flight: dict[str, _InFlight] = {}
        self._sender = threading.Thread(target=self._send_loop, name=SENDER_THREAD_NAME, daemon=True)
        self._sender.start()
        self.engine.start()

    def execute(self, requests: list) -> None:
        for request in requests:
            sender = request.get_response_sender()
            headers = ModelTelemetry.trace_headers(request)
            try:
                decode_request = self._parse(request)
                with self._lock:
                    self.engine.submit(decode_request)
                    self._in_flight[decode_request.request_id] = _InFlight(request, sender, headers)
            except EngineOverloadedError as error:
                # A full decoder is the caller's to report (it answers 503); it is not a model failure.
                self._send_error(sender, f"overloaded: {error}")
            except Exception as error:  # noqa: BLE001 - one bad request must not fail the others
                self.telemetry.report(error, headers, self._metadata())
                self._send_error(sender, f"invalid request: {error}")

    def finalize(self) -> None:
        self.engine.stop()  # every sequence still in flight gets its final (SHUTDOWN) event
        self._events.put(None)
        self._sender.join(timeout=10)
        self.telemetry.flush()

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
        deadline_unix_ms = optional("deadline_unix_ms")
        language = optional("language")
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
            deadline=None if deadline_unix_ms is None else int(deadline_unix_ms) / 1000.0,
            language=None if language is None else int(language),
        )

    def _metadata(self) -> dict:
        return {"batch_size": self.engine.num_running, "waiting": self.engine.num_waiting}

    # --- the sender thread ----------------------------------------------------------------------

    def _send_loop(self) -> None:
        next_check = time.monotonic() + CANCEL_POLL_S
        while True:
            try:
                event = self._events.get(timeout=max(0.0, next_check - time.monotonic()))
            except queue.Empty:
                pass
            else:
                if event is None:
                    return
                self._send(event)
            # On a clock, not only when idle: a busy engine never leaves the queue empty.
            if time.monotonic() >= next_check:
                self._cancel_gone_clients()
                next_check = time.monotonic() + CANCEL_POLL_S

    def _send(self, event: DecodeEvent) -> None:
        with self._lock:
            entry = (self._in_flight.pop if event.finished else self._in_flight.get)(event.request_id, None)
        if entry is None:  # its client's stream already failed; the engine's final event comes after
            return
        try:
            if event.finished and event.stop_reason in (StopReason.ERROR, StopReason.DEADLINE):
                message = event.error or "decoding failed"
                if event.stop_reason == StopReason.ERROR:  # a passed deadline is not a model failure
                    tags = None
                    if message.startswith(OUT_OF_MEMORY):
                        tags = out_of_memory_tags(self.device, event.failed_batch_size or 1)
                    self.telemetry.report(RuntimeError(message), entry.headers, self._metadata(), tags)
                self._send_error(entry.sender, message)
                return
            tensors = [
                pb_utils.Tensor("semantic_codes", event.codes.numpy().astype(np.int64)),
                pb_utils.Tensor("code_latents", np.ascontiguousarray(event.latents.numpy(), dtype=np.float32)),
            ]
            if not event.finished:
                entry.sender.send(pb_utils.InferenceResponse(output_tensors=tensors))
                return
            reason = FINISH_REASONS.get(event.stop_reason, str(event.stop_reason))
            tensors.append(pb_utils.Tensor("finish_reason", np.array([reason.encode()], dtype=np.object_)))
            entry.sender.send(pb_utils.InferenceResponse(output_tensors=tensors),
                              flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        except Exception as error:  # noqa: BLE001 - the sender thread serves every request: keep it alive
            self._fail(event, entry, error)

    def _fail(self, event: DecodeEvent, entry: _InFlight, error: Exception) -> None:
        """A response could not be sent: end the sequence and give the client a final error."""
        if not event.finished:
            with self._lock:
                self._in_flight.pop(event.request_id, None)
            self.engine.cancel(event.request_id)
        if entry.cancelled:  # sending to a client that went away may fail; nothing to report
            logger.info("gpt_decoder: response to cancelled request %s not sent: %s", event.request_id, error)
        else:
            self.telemetry.report(error, entry.headers, self._metadata())
        try:
            self._send_error(entry.sender, f"streaming failed: {error}")
        except Exception:  # noqa: BLE001, S110 - the client is gone
            pass

    def _cancel_gone_clients(self) -> None:
        """Cancel the engine sequence of every request whose client went away (its slot frees at the
        next step; the engine's final CANCELLED event then ends the request)."""
        with self._lock:
            waiting = [(request_id, entry) for request_id, entry in self._in_flight.items() if not entry.cancelled]
        for request_id, entry in waiting:
            try:
                gone = entry.request.is_cancelled()
            except Exception:  # a failed check must not stop the other requests' responses
                logger.exception("gpt_decoder: is_cancelled() failed for request %s", request_id)
                continue
            if gone:
                entry.cancelled = True
                self.engine.cancel(request_id)

    @staticmethod
    def _send_error(sender, message: str) -> None:
        sender.send(
            pb_utils.InferenceResponse(error=pb_utils.TritonError(message)),
            flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL,
        )
