"""The machine's ceiling for the benchmark's request mix: the throughput the served pipeline could reach
if every stage ran at its best measured batch cost and the machine were never idle.

    ceiling (requests/s) = 1 / sum over stages of (calls per request x best cost per call)
    ceiling (audio s/s)  = ceiling (requests/s) x mean audio seconds per request of the mix

Each stage is measured in isolation (nothing else sent to Triton meanwhile), on the inputs the
orchestrator really sends for the mix:

1. Capture: three requests (one per text length, one per reference duration: short/3 s, medium/6 s,
   long/10 s) go through the orchestrator's own `TtsService`, whose Triton calls go to the running Triton
   through a small client here that records every call's inputs. That also gives the calls per request
   (the mix is every text length with every reference duration, so calls per request are the mean over
   the three) and the audio seconds per request.
2. In-process stages (`text_frontend`, `audio_decode`, `features`): the same service code runs the three
   requests three more times, each with a new voice, stopped at its first Triton call; their cost is the
   service's own stage time (`tts_stage_seconds`), a mean over the runs. No batching: batch 1 only.
3. Triton's batched models (the encoders, conditioners, `s2mel`, `vocoder`): per reference duration,
   bursts of B identical requests sent at once (B = 1, 2, 4, 8 up to the model's max_batch_size; the
   search stops at the first B that costs over 10 % more per request than the best so far). A request's
   cost is the time the model spent executing (Triton's statistics: compute input + infer + output of
   each execution, batches counted once) divided by the requests; queueing and gRPC are not in it. A
   burst repeats until the model has been busy 0.3 s, at least twice unless one burst takes over 3 s, at
   most 5 times; the cheapest burst counts (on a shared machine the others met interference; the mean
   is in the JSON too). Per stage, the cost per call is
   the mean over the three reference durations of their best B (of batch 1, for the batch-1 figure).
   Identical requests pad nothing: a batch that mixes prompt lengths costs more (the served stack's loss,
   not the ceiling's). `s2mel_estimator` is not counted on its own: with `estimator: triton` its time
   is inside `s2mel`'s execution.
4. `gpt_decoder` (decoupled, continuous batching: Triton's statistics count only the hand-over): wall
   time of B streams at once (B = 1 and max_slots, 16), each a captured segment with its exact code
   count (min_codes = max_codes), from the first request to the last final response, divided by the
   streams; the captured segments are cycled so that each text length counts as in the mix; the better
   of two rounds. Also reported per code (ms per code step, prefill included).

Each stage's row also says how busy the machine's cores were while it was measured (from /proc/stat: the
whole machine, so other jobs count too). The sum of isolated costs is the ceiling of a machine that runs
one stage at a time with the cores it gets: a stage that leaves cores idle in isolation can overlap
another in the served pipeline, so a run can exceed this "ceiling" (a fraction over 1).
Not counted: HTTP, multipart parsing, WAV encoding and gRPC in the orchestrator.

Either model version: the captured calls are the ones the orchestrator makes for the checkpoint's version,
so an IndexTTS-2.5 checkpoint (demo-2.5) is measured on its own stages (no `semantic_codec` call: its
prompt condition is the length-regulated raw features, and `s2mel` decodes the codes in-process).
"""

from __future__ import annotations

import asyncio
import io
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.loadgen import SAMPLE_RATE, TEXTS, BenchRequest, SynthesisControls
from orchestrator.testing import speech_like_wav
from orchestrator.triton_client import TritonStages

# One capture request per text length and per reference duration.
CAPTURE = (("short", 3.0), ("medium", 6.0), ("long", 10.0))
IN_PROCESS_STAGES = ("text_frontend", "audio_decode", "features")
IN_PROCESS_RUNS = 3
GPT_DECODER = "gpt_decoder"
NOT_COUNTED = frozenset({"s2mel_estimator"})
# Order of the breakdown (pipeline order); unknown models go last.
STAGE_ORDER = ("text_frontend", "audio_decode", "features", "semantic_encoder", "semantic_codec", "length_regulator",
               "campplus", "speaker_conditioner", "emotion_conditioner", "gpt_decoder", "s2mel", "vocoder")
DEFAULT_BATCHES = (1, 2, 4, 8)
DEFAULT_GPT_BATCHES = (1, 16)
GPT_ROUNDS = 2
TARGET_BUSY_S = 0.3
MAX_REPEATS = 5
LONG_BURST_S = 3.0  # a burst this long is measured once; shorter ones at least twice
STOP_WORSE = 1.10
WARM_BURST_MAX_S = 1.0  # a new batch size gets one unmeasured burst first when that is cheaper than this
Progress = Callable[[str], None]


class _StopHere(Exception):
    """Raised at the first Triton call when only the in-process stages are timed."""


@dataclass
class Call:
    model: str
    inputs: dict[str, np.ndarray]
    outputs: list[str]
    codes: int | None = None  # gpt_decoder: how many codes came back


class DirectStages:
    """The two calls the orchestrator's pipeline makes (`infer`, `decode`), straight to Triton with
    tritonclient: no deadlines, metrics or error mapping. Records every call; with `stop_at_first_call`
    raises at the first one instead (for timing the in-process stages alone)."""

    def __init__(self, url: str, stop_at_first_call: bool = False) -> None:
        from collections import Counter

        from tritonclient.grpc import aio as grpcaio

        self.client = grpcaio.InferenceServerClient(url)
        self.stop_at_first_call = stop_at_first_call
        self.calls: list[Call] = []
        self.model_versions: dict[str, str] = {}
        self.in_flight: Counter[str] = Counter()

    async def infer(self, model: str, inputs: dict[str, np.ndarray], outputs: list[str] | tuple[str, ...],
                    stage: str | None = None) -> dict[str, np.ndarray]:
        import tritonclient.grpc as grpcclient

        if self.stop_at_first_call:
            raise _StopHere
        self.calls.append(Call(model, dict(inputs), list(outputs)))
        result = await self.client.infer(model, TritonStages._tensors(inputs),
                                         outputs=[grpcclient.InferRequestedOutput(name) for name in outputs])
        return {name: result.as_numpy(name) for name in outputs}

    async def decode(self, inputs: dict[str, np.ndarray], latent_dim: int) -> Any:
        from orchestrator.triton_client import DecodedCodes

        if self.stop_at_first_call:
            raise _StopHere
        call = Call(GPT_DECODER, dict(inputs), [])
        self.calls.append(call)
        codes, latents, reason = await stream_decode(self.client, inputs, latent_dim)
        call.codes = int(codes.size)
        return DecodedCodes(codes=codes, latents=latents, finish_reason=reason, model_version="1")

    async def close(self) -> None:
        await self.client.close()


async def stream_decode(client: Any, inputs: dict[str, np.ndarray], latent_dim: int,
                        ) -> tuple[np.ndarray, np.ndarray, str]:
    """One gpt_decoder stream: (codes, latents, finish_reason)."""
    async def requests() -> Any:
        yield {"model_name": GPT_DECODER, "inputs": TritonStages._tensors(inputs)}

    codes: list[np.ndarray] = []
    latents: list[np.ndarray] = []
    reason = None
    stream = client.stream_infer(requests())
    try:
        async for result, error in stream:
            if error is not None:
                raise error
            chunk = result.as_numpy("semantic_codes")
            if chunk is not None and chunk.size:
                codes.append(chunk.reshape(-1).astype(np.int64))
                latents.append(np.asarray(result.as_numpy("code_latents"), dtype=np.float32).reshape(-1, latent_dim))
            finish = result.as_numpy("finish_reason")
            final = result.get_response().parameters.get("triton_final_response")
            if finish is not None:
                value = finish.reshape(-1)[0]
                reason = value.decode() if isinstance(value, bytes) else str(value)
            if reason is not None or (final is not None and final.bool_param):
                break
    finally:
        stream.cancel()
    if reason is None:
        raise RuntimeError("gpt_decoder ended the stream without a finish_reason")
    return (np.concatenate(codes) if codes else np.zeros(0, np.int64),
            np.concatenate(latents) if latents else np.zeros((0, latent_dim), np.float32), reason)


# --- capture ---------------------------------------------------------------------------------------


@dataclass
class CapturedRequest:
    text_kind: str
    reference_seconds: float
    calls: list[Call]
    audio_s: float

    def first(self, model: str) -> Call | None:
        return next((call for call in self.calls if call.model == model), None)

    def count(self, model: str) -> int:
        return sum(call.model == model for call in self.calls)


@dataclass
class _Service:
    service: Any
    stages: DirectStages
    metrics: Any
    voices: tempfile.TemporaryDirectory = field(repr=False)

    async def close(self) -> None:
        await self.stages.close()
        self.voices.cleanup()


def _service(url: str, checkpoint_dir: Path, assets: Any, stop_at_first_call: bool) -> _Service:
    from orchestrator.metrics import ServiceMetrics
    from orchestrator.reporting import Reporter
    from orchestrator.service import TtsService
    from orchestrator.settings import Settings

    voices = tempfile.TemporaryDirectory(prefix="ceiling_voices_")
    settings = Settings(checkpoint_dir=Path(checkpoint_dir), triton_grpc_url=url,
                        voices_dir=Path(voices.name)).validate()
    metrics = ServiceMetrics()
    stages = DirectStages(url, stop_at_first_call)
    service = TtsService(settings, assets, stages, Reporter(settings, metrics, "cpu"), metrics)
    return _Service(service, stages, metrics, voices)


async def _synthesize(service: Any, request: BenchRequest, controls: SynthesisControls) -> float:
    """One request through TtsService.tts; the seconds of audio it made."""
    from fastapi import UploadFile

    from orchestrator.schemas import TtsForm

    upload = UploadFile(io.BytesIO(request.speaker_wav), size=len(request.speaker_wav), filename="voice.wav")
    stream = await service.tts(TtsForm(**controls.form(request), speaker_audio=upload), route="/v1/tts")
    samples = 0
    async for piece in stream:
        samples += piece.shape[0]
    return samples / SAMPLE_RATE


def _capture_request(number: int, kind: str, seconds: float, seed: int) -> BenchRequest:
    return BenchRequest(number, kind, TEXTS[kind], seconds, speech_like_wav(seconds, seed=seed), seed)


def _stage_seconds(metrics: Any) -> dict[str, tuple[float, float]]:
    """The service's tts_stage_seconds: (sum, count) per stage."""
    found: dict[str, list[float]] = {}
    for family in metrics.registry.collect():
        if family.name != "tts_stage_seconds":
            continue
        for sample in family.samples:
            stage = sample.labels.get("stage")
            if sample.name.endswith("_sum"):
                found.setdefault(stage, [0.0, 0.0])[0] = sample.value
            elif sample.name.endswith("_count"):
                found.setdefault(stage, [0.0, 0.0])[1] = sample.value
    return {stage: (total, count) for stage, (total, count) in found.items()}


async def capture(url: str, checkpoint_dir: Path, assets: Any, controls: SynthesisControls, seed: int,
                  ) -> tuple[list[CapturedRequest], dict[str, float]]:
    """The capture requests with their calls, and the in-process stages' seconds per call."""
    recorded = _service(url, checkpoint_dir, assets, stop_at_first_call=False)
    captured = []
    try:
        for number, (kind, seconds) in enumerate(CAPTURE):
            start = len(recorded.stages.calls)
            audio_s = await _synthesize(recorded.service, _capture_request(number, kind, seconds, seed + number),
                                        controls)
            captured.append(CapturedRequest(kind, seconds, recorded.stages.calls[start:], audio_s))
    finally:
        await recorded.close()
    timed = _service(url, checkpoint_dir, assets, stop_at_first_call=True)
    try:
        for run in range(1, IN_PROCESS_RUNS + 1):
            for number, (kind, seconds) in enumerate(CAPTURE):
                request = _capture_request(number, kind, seconds, seed + 100 * run + number)
                try:
                    await _synthesize(timed.service, request, controls)
                except _StopHere:
                    pass
        stages = _stage_seconds(timed.metrics)
    finally:
        await timed.close()
    in_process = {stage: stages[stage][0] / stages[stage][1] for stage in IN_PROCESS_STAGES
                  if stages.get(stage, (0.0, 0.0))[1] > 0}
    return captured, in_process


# --- measuring -------------------------------------------------------------------------------------


def _cpu_jiffies() -> tuple[int, int] | None:
    """(busy, total) jiffies of the whole machine, or None off Linux."""
    try:
        values = [int(value) for value in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError, IndexError):
        return None
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    return sum(values) - idle, sum(values)


class CoresBusy:
    """Mean number of busy cores between start() and stop()."""

    def __init__(self) -> None:
        self.before = _cpu_jiffies()

    def stop(self) -> float | None:
        after = _cpu_jiffies()
        if self.before is None or after is None or after[1] <= self.before[1]:
            return None
        return round((after[0] - self.before[0]) / (after[1] - self.before[1]) * (os.cpu_count() or 1), 2)


async def _model_stats(client: Any, model: str) -> dict[str, int]:
    """Triton's counters of one model: requests, executions and busy ns (batches counted once)."""
    stats = await client.get_inference_statistics(model_name=model, as_json=True)
    entry = next(item for item in stats.get("model_stats", []) if item.get("name") == model)
    busy = sum(int(batch.get(kind, {}).get("ns", 0)) for batch in entry.get("batch_stats", [])
               for kind in ("compute_input", "compute_infer", "compute_output"))
    return {"requests": int(entry.get("inference_count", 0)), "executions": int(entry.get("execution_count", 0)),
            "busy_ns": busy}


async def _stats_after(client: Any, model: str, before: dict[str, int], requests: int,
                       timeout_s: float = 5.0) -> dict[str, int]:
    """Triton's counters once they count `requests` more than `before`: Triton records an execution's
    statistics after its responses are sent, so a client can read them before they include its burst."""
    deadline = time.perf_counter() + timeout_s
    while True:
        after = await _model_stats(client, model)
        done = after["requests"] - before["requests"] >= requests and after["busy_ns"] > before["busy_ns"]
        if done or time.perf_counter() > deadline:
            return after
        await asyncio.sleep(0.005)


async def _settled_stats(client: Any, model: str, timeout_s: float = 2.0) -> dict[str, int]:
    """Triton's counters once two reads 10 ms apart agree (what earlier calls left is recorded)."""
    deadline = time.perf_counter() + timeout_s
    stats = await _model_stats(client, model)
    while time.perf_counter() < deadline:
        await asyncio.sleep(0.01)
        again = await _model_stats(client, model)
        if again == stats:
            break
        stats = again
    return stats


async def measure_unary(client: Any, model: str, call: Call, batches: tuple[int, ...], max_batch: int,
                        ) -> dict[str, Any]:
    """Cost per request of `model` on `call`'s inputs at each batch size (see the module's doc)."""
    import tritonclient.grpc as grpcclient

    outputs = [grpcclient.InferRequestedOutput(name) for name in call.outputs]

    async def burst(size: int) -> None:
        await asyncio.gather(*(client.infer(model, TritonStages._tensors(call.inputs), outputs=outputs) for _ in range(size)))

    await burst(1)  # first call of this shape: not measured
    results: dict[str, dict[str, float]] = {}
    best_b, best_cost = None, float("inf")
    for size in (b for b in batches if b <= max(1, max_batch)):
        if size > 1 and size * best_cost < WARM_BURST_MAX_S:
            await burst(size)
        costs, busy_ns, requests, executions = [], 0, 0, 0
        before = await _settled_stats(client, model)
        while True:
            await burst(size)
            after = await _stats_after(client, model, before, size)
            burst_ns, burst_requests = after["busy_ns"] - before["busy_ns"], after["requests"] - before["requests"]
            costs.append(burst_ns / 1e9 / max(1, burst_requests))
            busy_ns += burst_ns
            requests += burst_requests
            executions += after["executions"] - before["executions"]
            before = after
            long_burst = burst_ns >= LONG_BURST_S * 1e9
            if len(costs) >= MAX_REPEATS or (busy_ns >= TARGET_BUSY_S * 1e9 and (len(costs) >= 2 or long_burst)):
                break
        # The best burst: the others were slowed by whatever else the machine ran (it is shared).
        cost = min(costs)
        results[str(size)] = {"ms_per_request": round(cost * 1e3, 3),
                              "mean_ms_per_request": round(busy_ns / 1e6 / max(1, requests), 3),
                              "mean_batch": round(requests / executions, 2) if executions else None,
                              "repeats": len(costs)}
        if cost < best_cost:
            best_b, best_cost = size, cost
        elif cost > STOP_WORSE * best_cost:
            break
    return {"batches": results, "best_batch": best_b, "best_ms": round(best_cost * 1e3, 3),
            "batch1_ms": results["1"]["ms_per_request"]}


def _exact_codes(call: Call) -> dict[str, np.ndarray]:
    """The call's inputs with min_codes = max_codes = the codes it produced (the same work every time)."""
    inputs = dict(call.inputs)
    if call.codes:
        inputs["max_codes"] = np.array([call.codes], dtype=np.int32)
        inputs["min_codes"] = np.array([call.codes], dtype=np.int32)
    return inputs


async def measure_gpt(client: Any, calls: list[Call], latent_dim: int, batches: tuple[int, ...], max_slots: int,
                      ) -> dict[str, Any]:
    """Cost per segment of gpt_decoder with B streams at once (see the module's doc)."""
    segments = [_exact_codes(call) for call in calls]
    await stream_decode(client, segments[0], latent_dim)  # not measured
    results: dict[str, dict[str, float]] = {}
    for size in sorted({min(b, max_slots) for b in batches}):
        total = -(-max(size, len(segments)) // size) * size  # every segment at least once, whole bursts
        walls = []
        for _ in range(GPT_ROUNDS):
            codes = 0
            started = time.perf_counter()
            for first in range(0, total, size):
                done = await asyncio.gather(*(stream_decode(client, segments[i % len(segments)], latent_dim)
                                              for i in range(first, first + size)))
                codes += sum(int(result[0].size) for result in done)
            walls.append(time.perf_counter() - started)
        wall = min(walls)  # the best round (the machine is shared)
        results[str(size)] = {"ms_per_request": round(wall / total * 1e3, 3), "streams": total,
                              "rounds": len(walls), "ms_per_code": round(wall / max(1, codes) * 1e3, 4)}
    best = min(results, key=lambda b: results[b]["ms_per_request"])
    return {"batches": results, "best_batch": int(best), "best_ms": results[best]["ms_per_request"],
            "batch1_ms": results["1"]["ms_per_request"] if "1" in results else None}


async def _config(client: Any, model: str) -> dict[str, Any]:
    return (await client.get_model_config(model, as_json=True)).get("config", {})


async def measure_ceiling(url: str, checkpoint_dir: Path, controls: SynthesisControls, seed: int = 0,
                          batches: tuple[int, ...] = DEFAULT_BATCHES,
                          gpt_batches: tuple[int, ...] = DEFAULT_GPT_BATCHES,
                          progress: Progress = lambda line: None) -> dict[str, Any]:
    """The ceiling of this Triton + this machine for the benchmark's mix (see the module's doc)."""
    from tritonclient.grpc import aio as grpcaio

    from orchestrator.assets import ModelAssets

    started = time.perf_counter()
    load_before = _load_average()
    progress("ceiling: capturing the mix's calls")
    assets = ModelAssets.load(checkpoint_dir)
    captured, in_process = await capture(url, checkpoint_dir, assets, controls, seed + 7_000_000)
    requests = len(captured)
    rows: list[dict[str, Any]] = []
    for stage in IN_PROCESS_STAGES:
        if stage in in_process:
            ms = round(in_process[stage] * 1e3, 3)
            rows.append({"stage": stage, "kind": "in-process", "calls_per_request": 1.0, "batch1_ms": ms,
                         "best_batch": 1, "best_ms": ms, "cores_busy": None,
                         "note": "the orchestrator's own stage time; not batched"})
    latent_dim = assets.gpt_dim
    client = grpcaio.InferenceServerClient(url)
    try:
        models = [model for model in dict.fromkeys(call.model for item in captured for call in item.calls)
                  if model not in NOT_COUNTED]
        for model in models:
            calls_per_request = sum(item.count(model) for item in captured) / requests
            config = await _config(client, model)
            cores = CoresBusy()
            if model == GPT_DECODER:
                slots = int(config.get("parameters", {}).get("max_slots", {}).get("string_value", max(gpt_batches)))
                progress(f"ceiling: {model} at {', '.join(str(min(b, slots)) for b in gpt_batches)} streams at once")
                gpt_calls = [call for item in captured for call in item.calls if call.model == model]
                result = await measure_gpt(client, gpt_calls, latent_dim, gpt_batches, slots)
                row = {"stage": model, "kind": "stream", **result,
                       "note": "wall time of B concurrent streams / B; per segment"}
            else:
                max_batch = int(config.get("max_batch_size", 0))
                progress(f"ceiling: {model}, batch sizes up to {min(max(batches), max(1, max_batch))}")
                per_reference = {}
                for item in captured:
                    call = item.first(model)
                    if call is not None:
                        per_reference[f"{item.reference_seconds:g}"] = await measure_unary(
                            client, model, call, batches, max_batch)
                best = [value["best_ms"] for value in per_reference.values()]
                batch1 = [value["batch1_ms"] for value in per_reference.values()]
                best_batches = [value["best_batch"] for value in per_reference.values()]
                row = {"stage": model, "kind": "triton", "batch1_ms": round(statistics.fmean(batch1), 3),
                       "best_ms": round(statistics.fmean(best), 3),
                       "best_batch": max(set(best_batches), key=best_batches.count),
                       "per_reference_s": per_reference,
                       "note": "Triton busy time / requests, mean over the reference durations"}
            row["calls_per_request"] = round(calls_per_request, 4)
            row["cores_busy"] = cores.stop()
            rows.append(row)
    finally:
        await client.close()
    order = {stage: index for index, stage in enumerate(STAGE_ORDER)}
    rows.sort(key=lambda row: order.get(row["stage"], len(order)))
    for row in rows:
        row["ms_per_request"] = round(row["best_ms"] * row["calls_per_request"], 3)
        row["batch1_ms_per_request"] = round((row["batch1_ms"] or row["best_ms"]) * row["calls_per_request"], 3)
    total_ms = sum(row["ms_per_request"] for row in rows)
    batch1_ms = sum(row["batch1_ms_per_request"] for row in rows)
    for row in rows:
        row["share"] = round(row["ms_per_request"] / total_ms, 4) if total_ms else None
    audio_s = statistics.fmean(item.audio_s for item in captured)
    rps = 1000.0 / total_ms if total_ms else None
    batch1_rps = 1000.0 / batch1_ms if batch1_ms else None
    return {
        "requests_per_s": round(rps, 4) if rps else None,
        "audio_s_per_s": round(rps * audio_s, 4) if rps else None,
        "batch1_requests_per_s": round(batch1_rps, 4) if batch1_rps else None,
        "batch1_audio_s_per_s": round(batch1_rps * audio_s, 4) if batch1_rps else None,
        "ms_per_request": round(total_ms, 3),
        "audio_s_per_request": round(audio_s, 4),
        "segments_per_request": round(statistics.fmean(item.count(GPT_DECODER) for item in captured), 4),
        "capture": [{"text_kind": item.text_kind, "reference_s": item.reference_seconds, "audio_s": round(item.audio_s, 4),
                     "calls": {model: item.count(model) for model in dict.fromkeys(c.model for c in item.calls)}}
                    for item in captured],
        "stages": rows,
        "settings": {"batches": list(batches), "gpt_batches": list(gpt_batches), "target_busy_s": TARGET_BUSY_S,
                     "max_repeats": MAX_REPEATS, "stop_worse": STOP_WORSE, "in_process_runs": IN_PROCESS_RUNS},
        "load_average": {"before": load_before, "after": _load_average()},
        "wall_s": round(time.perf_counter() - started, 1),
    }


def _load_average() -> list[float]:
    try:
        return [round(value, 2) for value in os.getloadavg()]
    except OSError:
        return []


def bottleneck(ceiling: dict[str, Any]) -> dict[str, Any] | None:
    """The stage with the largest share of the ceiling's cost per request."""
    rows = ceiling.get("stages") or []
    return max(rows, key=lambda row: row["ms_per_request"]) if rows else None
