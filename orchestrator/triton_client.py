"""The Triton side of the service: one `tritonclient.grpc.aio` client, one method per kind of call.

Every call is one stage: a Sentry span, a latency observation, and on failure one typed StageError
(errors.py) that says which stage and model failed and how. The Sentry trace headers of the span
(`sentry-trace`, `baggage`) travel to Triton as request parameters, so the Python models can continue
the trace.

Models go by their logical names here (`vocoder`) and everywhere the service reports them (metrics,
Sentry tags, /readyz, an error's `stage` and `model`), so dashboards and alerts do not depend on the
deployment. Triton serves them as `<model_prefix><name>` (TRITON_MODEL_PREFIX, indextts2/model_names.py):
every name sent to Triton goes through `served_name`, every name read from it through `_logical_name`.

How Triton failures map (measured against the local tritonserver 2.51):
- gRPC UNAVAILABLE (connection refused, server gone)      -> TritonUnavailableError, 503
- gRPC NOT_FOUND, or a stream error saying "unknown model" / "has no available versions" (not loaded)
                                                            -> ModelUnavailableError, 503
- gRPC DEADLINE_EXCEEDED / our timeout, or a Python model's "deadline exceeded" -> StageTimeoutError, 504
- a message starting "overloaded" (gpt_decoder's slots and queue are full) -> ModelOverloadedError, 503
- a message naming out-of-memory (CUDA, cuBLAS, ORT, the CPU allocator; the Python models' "out of
  memory (current_batch_size=N, device): ...")             -> ModelOutOfMemoryError, 503
- anything else the model or server says (bad shape, exception in the model) -> ModelError, 502
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import numpy as np
import sentry_sdk
import tritonclient.grpc as grpcclient
from tritonclient.grpc import MAX_GRPC_MESSAGE_SIZE
from tritonclient.grpc import aio as grpcaio
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from indextts2.model_names import check_model_prefix
from orchestrator.errors import (
    ModelError,
    ModelOutOfMemoryError,
    ModelOverloadedError,
    ModelUnavailableError,
    ServiceBugError,
    StageError,
    StageTimeoutError,
    TritonUnavailableError,
)
from orchestrator.metrics import ServiceMetrics
from orchestrator.reporting import current_request

# The models the service chains, in pipeline order (s2mel_estimator is s2mel's own business).
PIPELINE_MODELS = (
    "semantic_encoder", "semantic_codec", "length_regulator", "campplus", "speaker_conditioner",
    "emotion_conditioner", "gpt_decoder", "s2mel", "vocoder",
)
# IndexTTS-2.5: the prompt condition comes from the raw semantic features (no semantic_codec call: s2mel
# decodes the codes itself), and speaker_conditioner takes the CAMPPlus style.
PIPELINE_MODELS_2_5 = tuple(name for name in PIPELINE_MODELS if name != "semantic_codec")


def pipeline_models(version: str) -> tuple[str, ...]:
    """The models the service chains for IndexTTS `version` ("2.0" or "2.5")."""
    return PIPELINE_MODELS_2_5 if version == "2.5" else PIPELINE_MODELS
GPT_DECODER = "gpt_decoder"
# The Python models take an optional `deadline_unix_ms` input: they drop a request whose caller's deadline
# passed before spending compute on it (s2mel also between diffusion steps).
MODELS_WITH_DEADLINE = frozenset({GPT_DECODER, "s2mel"})
# gRPC backs off 1.6x per failed reconnect, up to 120 s by default: after Triton restarts, the service
# would wait that long to notice. One second at most; the other options are tritonclient's defaults
# (channel_args replaces them all).
_KEEPALIVE = grpcclient.KeepAliveOptions()
_CHANNEL_ARGS = [
    ("grpc.max_send_message_length", MAX_GRPC_MESSAGE_SIZE),
    ("grpc.max_receive_message_length", MAX_GRPC_MESSAGE_SIZE),
    ("grpc.keepalive_time_ms", _KEEPALIVE.keepalive_time_ms),
    ("grpc.keepalive_timeout_ms", _KEEPALIVE.keepalive_timeout_ms),
    ("grpc.keepalive_permit_without_calls", _KEEPALIVE.keepalive_permit_without_calls),
    ("grpc.http2.max_pings_without_data", _KEEPALIVE.http2_max_pings_without_data),
    ("grpc.max_reconnect_backoff_ms", 1000),
]
_OUT_OF_MEMORY = re.compile(
    r"out of memory|outofmemory|CUDA_ERROR_OUT_OF_MEMORY|ALLOC_FAILED|Failed to allocate memory|std::bad_alloc"
    r"|can't allocate memory",
    re.IGNORECASE,
)
# The batch a Python model ran out of memory on, as its error says (indextts2/engine/device.py).
_MODEL_BATCH_SIZE = re.compile(r"current_batch_size=(\d+)")
_REQUEST_ID_PREFIX = re.compile(r"^\s*\[request id: [^\]]*\]\s*")
# A stream's error response has no gRPC status: Triton's words for a model that is not there.
_NOT_AVAILABLE = re.compile(r"^Request for unknown model")
_MAX_UPSTREAM_MESSAGE = 300


@dataclass
class DecodedCodes:
    codes: np.ndarray  # (n,) int64
    latents: np.ndarray  # (n, d) float32
    finish_reason: str  # "stop" | "max_codes" | "cancelled"
    model_version: str


@dataclass
class CodeChunk:
    """Codes of one streamed gpt_decoder response; the last one of a segment carries finish_reason."""

    codes: np.ndarray  # (k,) int64, maybe k = 0 on the last one
    latents: np.ndarray  # (k, d) float32
    finish_reason: str | None
    model_version: str


@dataclass
class Readiness:
    live: bool
    models: dict[str, bool]

    @property
    def not_ready(self) -> list[str]:
        return [name for name, ready in self.models.items() if not ready]


def _upstream_message(error: BaseException) -> str:
    if isinstance(error, InferenceServerException):
        message = error.message() or str(error)
    elif isinstance(error, grpc.aio.AioRpcError):
        message = error.details() or str(error.code())
    else:
        message = str(error)
    message = _REQUEST_ID_PREFIX.sub("", message or type(error).__name__)
    return message if len(message) <= _MAX_UPSTREAM_MESSAGE else message[:_MAX_UPSTREAM_MESSAGE] + "..."


def _status_name(error: BaseException) -> str | None:
    if isinstance(error, InferenceServerException):
        return str(error.status()) if error.status() else None
    if isinstance(error, grpc.aio.AioRpcError):
        return str(error.code())
    return None


class TritonStages:
    def __init__(self, url: str, metrics: ServiceMetrics, timeout_s: float, stream_timeout_s: float,
                 model_prefix: str = "") -> None:
        self.url = url
        self.model_prefix = check_model_prefix(model_prefix)
        self.metrics = metrics
        self.timeout_s = timeout_s
        self.stream_timeout_s = stream_timeout_s
        self.model_versions: dict[str, str] = {}
        self.in_flight: Counter[str] = Counter()
        self._client: grpcaio.InferenceServerClient | None = None
        self._client_loop: asyncio.AbstractEventLoop | None = None

    # --- model names -----------------------------------------------------------------------------

    def served_name(self, model: str) -> str:
        """The name Triton serves our model `model` under."""
        return self.model_prefix + model

    def _logical_name(self, served: str) -> str | None:
        """Our name for the Triton model `served`; None for a model without our prefix (another team's,
        or an unprefixed copy of ours that this service must not use)."""
        return served.removeprefix(self.model_prefix) if served.startswith(self.model_prefix) else None

    def _record_versions(self, index: dict) -> list[str]:
        """Note the version of each of our ready models in a repository index; their logical names."""
        ready = []
        for entry in index.get("models", []):
            name = self._logical_name(entry.get("name", ""))
            if name is not None and entry.get("state") == "READY":
                self.model_versions[name] = entry.get("version") or "unknown"
                ready.append(name)
        return ready

    # --- the client ------------------------------------------------------------------------------

    @property
    def client(self) -> grpcaio.InferenceServerClient:
        # A grpc.aio channel belongs to the event loop it was made in.
        loop = asyncio.get_running_loop()
        if self._client is None or self._client_loop is not loop:
            self._client = grpcaio.InferenceServerClient(self.url, channel_args=_CHANNEL_ARGS)
            self._client_loop = loop
        return self._client

    async def close(self) -> None:
        if self._client is not None and self._client_loop is asyncio.get_running_loop():
            await self._client.close()
        self._client = None

    def probe(self, timeout_s: float = 1.0) -> tuple[dict[str, str], str]:
        """Blocking, at start-up: ({model: version} of the ready models, device), or ({}, "") when Triton
        does not answer. The device is where the decoder's instances run ("gpu" or "cpu"), from its
        config as Triton completed it."""
        try:
            client = grpcclient.InferenceServerClient(self.url)
            index = client.get_model_repository_index(as_json=True, client_timeout=timeout_s)
            names = self._record_versions(index)
            device = ""
            for name in [GPT_DECODER, *names]:
                if name in names:
                    config = client.get_model_config(self.served_name(name), as_json=True,
                                                     client_timeout=timeout_s)["config"]
                    kinds = {group.get("kind") for group in config.get("instance_group", [])}
                    device = "gpu" if "KIND_GPU" in kinds else "cpu"
                    break
            client.close()
        except InferenceServerException:
            return {}, ""
        return dict(self.model_versions), device

    # --- errors ----------------------------------------------------------------------------------

    def stage_error(self, stage: str, model: str, error: BaseException) -> StageError:
        """The typed error for a failed call of `model` (see the module docstring for the mapping)."""
        status = _status_name(error)
        upstream = _upstream_message(error)
        context = {"stage": stage, "model": model, "model_version": self.model_versions.get(model, "unknown")}
        if isinstance(error, asyncio.TimeoutError) or status == "StatusCode.DEADLINE_EXCEEDED":
            return StageTimeoutError(f"{model} did not answer in time", **context)
        if status == "StatusCode.UNAVAILABLE":
            return TritonUnavailableError(f"Triton at {self.url} is unreachable ({upstream})", **context)
        if status == "StatusCode.NOT_FOUND" or (status is None and _NOT_AVAILABLE.search(upstream)):
            served = self.served_name(model)  # the name to load or fix on Triton
            return ModelUnavailableError(f"model {served} is not available on Triton ({upstream})", **context)
        if not isinstance(error, InferenceServerException | grpc.aio.AioRpcError):
            return ServiceBugError(f"the {stage} stage failed in the orchestrator: {type(error).__name__}", **context)
        said = upstream.lower().removeprefix(f"{model}:").strip()
        if said.startswith("deadline exceeded"):  # a Python model dropped work its caller's deadline left behind
            return StageTimeoutError(f"{model} stopped: the request's time budget ran out", **context)
        if said.startswith("overloaded"):
            return ModelOverloadedError(f"{model} is overloaded, retry later", **context)
        if _OUT_OF_MEMORY.search(upstream):
            oom = ModelOutOfMemoryError(f"{model} ran out of memory ({upstream})", **context)
            # The model's own batch where it says (gpt_decoder, s2mel), else the requests this orchestrator
            # had in flight on the model: the batch it can have seen.
            said_batch = _MODEL_BATCH_SIZE.search(upstream)
            oom.current_batch_size = int(said_batch[1]) if said_batch else max(1, self.in_flight[model])
            return oom
        return ModelError(f"{model} failed: {upstream}", **context)

    # --- deadlines -------------------------------------------------------------------------------

    def _time_left(self, stage: str, model: str, limit_s: float | None = None) -> float:
        """Seconds this call may take: what is left of the request's budget, or outside a request the
        stage's own limit (TRITON_TIMEOUT_S, GPT_STREAM_TIMEOUT_S). Within a request the budget alone
        counts: a per-stage limit would abandon a call that waits in a queue under load while the
        request still has time (measured: 60 s s2mel cut-offs on `small` at concurrency 16). A request
        whose budget is spent fails here (504) without calling Triton."""
        context = current_request()
        left = context.time_left_s() if context is not None else None
        if left is None:
            return self.timeout_s if limit_s is None else limit_s
        if left <= 0:
            raise StageTimeoutError(f"the request's time budget ran out before {model} was called", stage=stage,
                                    model=model, model_version=self.model_versions.get(model, "unknown"))
        return left

    @staticmethod
    def _deadline_input(model: str, time_left_s: float) -> dict[str, np.ndarray]:
        """The Python models take the deadline as a tensor (wall clock, ms) and skip work past it."""
        if model not in MODELS_WITH_DEADLINE:
            return {}
        deadline = np.array([int((time.time() + time_left_s) * 1000)], dtype=np.int64)
        # gpt_decoder takes unbatched inputs (max_batch_size 0); s2mel's carry the batch dimension.
        return {"deadline_unix_ms": deadline if model == GPT_DECODER else deadline[None]}

    def _enter(self, model: str) -> None:
        self.in_flight[model] += 1
        self.metrics.stage_in_flight.labels(model).set(self.in_flight[model])

    def _leave(self, model: str) -> None:
        self.in_flight[model] -= 1
        self.metrics.stage_in_flight.labels(model).set(self.in_flight[model])

    # --- calls -----------------------------------------------------------------------------------

    @staticmethod
    def _tensors(arrays: dict[str, np.ndarray]) -> list[grpcclient.InferInput]:
        tensors = []
        for name, array in arrays.items():
            array = np.ascontiguousarray(array)
            tensor = grpcclient.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
            tensor.set_data_from_numpy(array)
            tensors.append(tensor)
        return tensors

    @staticmethod
    def _trace_parameters() -> dict[str, str]:
        """The current span's trace headers, for the Python models to continue the trace."""
        if not sentry_sdk.get_client().is_active():
            return {}
        parameters = {}
        traceparent, baggage = sentry_sdk.get_traceparent(), sentry_sdk.get_baggage()
        if traceparent:
            parameters["sentry-trace"] = traceparent
        if baggage:
            parameters["baggage"] = baggage
        return parameters

    async def infer(
        self, model: str, inputs: dict[str, np.ndarray], outputs: list[str], stage: str | None = None
    ) -> dict[str, np.ndarray]:
        """One unary call; every input already carries its batch dimension of 1."""
        stage = stage or model
        started = time.perf_counter()
        time_left = self._time_left(stage, model)
        self._enter(model)
        try:
            with sentry_sdk.start_span(op="triton.infer", name=model) as span:
                span.set_data("model", model)
                span.set_data("triton_model", self.served_name(model))
                try:
                    result = await self.client.infer(
                        self.served_name(model), self._tensors({**inputs, **self._deadline_input(model, time_left)}),
                        outputs=[grpcclient.InferRequestedOutput(name) for name in outputs],
                        client_timeout=time_left, parameters=self._trace_parameters() or None,
                    )
                    values = {name: result.as_numpy(name) for name in outputs}
                except Exception as error:  # every failure becomes one typed StageError
                    span.set_status("internal_error")
                    raise self.stage_error(stage, model, error) from error
                missing = [name for name, value in values.items() if value is None]
                if missing:
                    raise ModelError(f"{model} returned no {', '.join(missing)}", stage=stage, model=model,
                                     model_version=self.model_versions.get(model, "unknown"))
                self.model_versions[model] = result.get_response().model_version or "unknown"
                return values
        finally:
            self._leave(model)
            self.metrics.stage_seconds.labels(stage).observe(time.perf_counter() - started)

    async def decode(self, inputs: dict[str, np.ndarray], latent_dim: int) -> DecodedCodes:
        """One text segment through the decoupled gpt_decoder, all its codes at once (see decode_stream)."""
        codes: list[np.ndarray] = []
        latents: list[np.ndarray] = []
        last = None
        async for chunk in self.decode_stream(inputs, latent_dim):
            codes.append(chunk.codes)
            latents.append(chunk.latents)
            last = chunk
        assert last is not None and last.finish_reason is not None  # decode_stream ends with the finish
        return DecodedCodes(
            codes=np.concatenate(codes), latents=np.concatenate(latents), finish_reason=last.finish_reason,
            model_version=last.model_version,
        )

    def _decode_request(self, inputs: dict[str, np.ndarray], time_left_s: float) -> dict:
        """The one request of a gpt_decoder stream, as `stream_infer` takes it."""
        return {"model_name": self.served_name(GPT_DECODER),
                "inputs": self._tensors({**inputs, **self._deadline_input(GPT_DECODER, time_left_s)}),
                "parameters": self._trace_parameters() or None}

    async def decode_stream(self, inputs: dict[str, np.ndarray], latent_dim: int) -> AsyncIterator[CodeChunk]:
        """One text segment through the decoupled gpt_decoder: its codes as the model streams them (every
        `stream_every` codes), the last chunk carrying `finish_reason`. Leaving early (the HTTP client went
        away, the caller stopped iterating) cancels the gRPC stream, which frees the decoder's slot."""
        model = GPT_DECODER
        started = time.perf_counter()
        finish_reason = None
        total = 0
        model_version = self.model_versions.get(model, "unknown")
        time_left = self._time_left(model, model, self.stream_timeout_s)
        self._enter(model)
        try:
            with sentry_sdk.start_span(op="triton.stream_infer", name=model) as span:
                span.set_data("model", model)
                span.set_data("triton_model", self.served_name(model))
                request = self._decode_request(inputs, time_left)

                async def requests() -> AsyncIterator[dict]:
                    yield request

                stream = None
                try:
                    stream = self.client.stream_infer(requests(), stream_timeout=time_left)
                    async for result, error in stream:
                        if error is not None:
                            raise error
                        chunk_codes = result.as_numpy("semantic_codes")
                        chunk_latents = result.as_numpy("code_latents")
                        reason = result.as_numpy("finish_reason")
                        response = result.get_response()
                        model_version = response.model_version or model_version
                        final = response.parameters.get("triton_final_response")
                        if reason is not None:
                            finish_reason = _as_text(reason.reshape(-1)[0])
                        if finish_reason is None and final is not None and final.bool_param:
                            raise ModelError(f"{model} ended the stream without a finish_reason", stage=model,
                                             model=model, model_version=model_version)
                        codes = np.zeros(0, dtype=np.int64)
                        latents = np.zeros((0, latent_dim), dtype=np.float32)
                        if chunk_codes is not None and chunk_codes.size:
                            codes = chunk_codes.reshape(-1).astype(np.int64)
                            latents = np.asarray(chunk_latents, dtype=np.float32).reshape(-1, latent_dim)
                        total += codes.size
                        if codes.size or finish_reason is not None:
                            yield CodeChunk(codes, latents, finish_reason, model_version)
                        if finish_reason is not None:
                            break
                except StageError:
                    span.set_status("internal_error")
                    raise
                except Exception as error:
                    span.set_status("internal_error")
                    raise self.stage_error(model, model, error) from error
                finally:
                    # Unfinished (error, or the caller went away): Triton cancels the sequence and frees
                    # its slot. Finished: this only closes the gRPC stream.
                    if stream is not None:
                        stream.cancel()
                if finish_reason is None:
                    raise ModelError(f"{model} ended the stream without a finish_reason", stage=model,
                                     model=model, model_version=model_version)
                span.set_data("codes", total)
                span.set_data("finish_reason", finish_reason)
        finally:
            self._leave(model)
            self.metrics.stage_seconds.labels(model).observe(time.perf_counter() - started)
        self.model_versions[model] = model_version

    async def readiness(self, models: tuple[str, ...] = PIPELINE_MODELS, timeout_s: float = 2.0) -> Readiness:
        """Is the server live, and which of `models` are ready (no exception: down means not ready)."""
        try:
            live = await self.client.is_server_live(client_timeout=timeout_s)
        except InferenceServerException:
            return Readiness(live=False, models={name: False for name in models})

        async def ready(name: str) -> bool:
            try:
                return await self.client.is_model_ready(self.served_name(name), client_timeout=timeout_s)
            except InferenceServerException:
                return False

        states = await asyncio.gather(*(ready(name) for name in models))
        try:
            self._record_versions(await self.client.get_model_repository_index(as_json=True, client_timeout=timeout_s))
        except InferenceServerException:
            pass
        return Readiness(live=live, models=dict(zip(models, states, strict=False)))


def _as_text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
