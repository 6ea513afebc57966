"""Load generator: a fixed, seeded set of TTS requests against one target, at a concurrency (closed
loop) or at a request rate (open loop, Poisson arrivals), and the figures of the run.

    # closed loop, 4 requests in flight, against the orchestrator (or the eager server: same API)
    .venv/bin/python -m benchmarks.loadgen --url http://127.0.0.1:8000 --concurrency 4 --requests 16 \\
        --codes 60 --stream --triton-grpc-url 127.0.0.1:8001 --json run.json
    # open loop, 0.5 requests/s for at most 60 s, straight into Triton through the orchestrator's own
    # pipeline code (no HTTP)
    .venv/bin/python -m benchmarks.loadgen --triton-grpc-url 127.0.0.1:8001 --checkpoint DIR --rate 0.5 \\
        --requests 30 --duration 60

Targets:
- `HttpTarget`: `POST /v1/tts` (multipart) of the orchestrator or of `benchmarks.eager_server`. With
  `stream=true` the time to first audio is taken when the first byte after the 44-byte WAV header
  arrives.
- `TritonTarget`: the orchestrator's `TtsService` (its pipeline and Triton client, the code behind
  `/v1/tts`) driven in this process, without HTTP.

The request set (`build_requests`): texts of three lengths, reference audio of three durations
(`orchestrator.testing.speech_like_wav`), each request with its own seed and its own voice (the audio's
noise is seeded by the request), so no conditioning cache helps either system: every request runs every
stage. `--codes N` sets min_codes = max_codes = N: every segment has exactly N codes whatever the random
weights would sample, so runs compare like with like.

Time budget: every request carries `X-Request-Timeout: <request_timeout_s>` (the orchestrator cuts its
own budget to it; the eager server ignores it) and the client gives up on any target after
`request_timeout_s + CLIENT_GRACE_S` to the last byte (`client_timeout`), so both systems get the same.

Overload: a 503 with a `Retry-After` header (the orchestrator's admission control) makes the closed-loop
worker wait that long and send the same request again, as a client that honours Retry-After would; it
gives up when the run's time is over. Every attempt is counted.

Figures (`RunResult`): attempts by outcome (`statuses`: 200, 503 with Retry-After, 504, other: any other
status, a 503 without Retry-After, a client timeout or a broken connection), requests/s and goodput
(seconds of successful audio per wall second), RTF per request (its processing time / its audio
duration; mean and p50), latency p50/p95/p99, time to first audio (streaming), errors by kind (of
successful requests only); with `--triton-grpc-url`, each Triton model's queue and compute time per
request from `get_inference_statistics` before and after the run; against the orchestrator, its
per-stage times from `/metrics` (a stage call's time as the orchestrator sees it, queueing in Triton
included). A run stops by itself: after `requests` requests or once `duration` seconds have passed (no
new request nor retry after that; requests in flight then finish, up to the client timeout).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import logging
import os
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from indextts2 import defaults
from orchestrator.settings import Settings
from orchestrator.testing import speech_like_wav

WAV_HEADER_BYTES = 44  # orchestrator.wav's header, whole or streamed
DEFAULT_REQUEST_TIMEOUT_S = Settings.request_timeout_s  # the orchestrator's default budget
# The client waits this much longer than the budget it sends, so that a server that keeps to the budget
# answers (504) before the client gives up.
CLIENT_GRACE_S = 5.0
OUTCOMES = ("200", "503", "504", "other")
SAMPLE_RATE = defaults.OUTPUT_SAMPLE_RATE
BYTES_PER_SAMPLE = 2

# Three lengths: one short sentence, a few sentences, and a paragraph that takes two segments of
# 120 text tokens with the demo preset's BPE.
TEXTS = {
    "short": "Hello there, this is a short test.",
    "medium": "The weather was mild that morning. She walked to the station, bought a coffee, and waited for "
              "the train to arrive.",
    "long": "Benchmarks are only useful when they compare like with like. This paragraph is long enough to be "
            "split into more than one segment, so the service has to render several pieces of speech and "
            "join them with short silences. Each segment is decoded by the GPT, turned into a mel "
            "spectrogram by the flow-matching model, and finally into a waveform by the vocoder, which is "
            "exactly what a real user would ask for.",
}
REFERENCE_SECONDS = (3.0, 6.0, 10.0)


@dataclass(frozen=True)
class BenchRequest:
    index: int
    text_kind: str
    text: str
    reference_seconds: float
    speaker_wav: bytes
    seed: int


def build_request(index: int, seed: int = 0) -> BenchRequest:
    """Request `index` of the set: (text length, reference duration) pairs in turn, seed `seed + index`
    and a voice of its own (same seed, same bytes)."""
    kinds = list(TEXTS)
    kind = kinds[index % len(kinds)]
    seconds = REFERENCE_SECONDS[(index // len(kinds)) % len(REFERENCE_SECONDS)]
    wav = speech_like_wav(seconds, seed=seed * 100_003 + index)
    return BenchRequest(index, kind, TEXTS[kind], seconds, wav, seed + index)


def build_requests(count: int, seed: int = 0) -> list[BenchRequest]:
    """`count` requests cycling through every (text length, reference duration) pair."""
    return [build_request(index, seed) for index in range(count)]


@dataclass(frozen=True)
class SynthesisControls:
    """The form fields every request of a run shares."""

    codes: int | None = 60  # min_codes = max_codes; None: the model decides when to stop
    diffusion_steps: int = defaults.DIFFUSION_STEPS
    stream: bool = False
    stream_mode: str | None = None  # "chunk" or "segment" (the orchestrator's stream_mode field); None: its default
    # The time budget sent as X-Request-Timeout; the client gives up CLIENT_GRACE_S later. None: no header,
    # no client limit.
    request_timeout_s: float | None = DEFAULT_REQUEST_TIMEOUT_S

    @property
    def client_timeout_s(self) -> float | None:
        return None if self.request_timeout_s is None else self.request_timeout_s + CLIENT_GRACE_S

    def headers(self) -> dict[str, str]:
        return {} if self.request_timeout_s is None else {"X-Request-Timeout": f"{self.request_timeout_s:g}"}

    def form(self, request: BenchRequest) -> dict[str, str]:
        fields = {"text": request.text, "seed": str(request.seed), "diffusion_steps": str(self.diffusion_steps),
                  "stream": "true" if self.stream else "false"}
        if self.codes is not None:
            fields["max_codes"] = fields["min_codes"] = str(self.codes)
        if self.stream and self.stream_mode is not None:
            fields["stream_mode"] = self.stream_mode
        return fields


@dataclass
class RequestRecord:
    index: int
    started_s: float  # since the start of the run
    text_kind: str = ""
    latency_s: float | None = None  # to the last byte; None when it failed
    ttfa_s: float | None = None  # to the first audio byte (streaming)
    audio_s: float = 0.0
    error: str | None = None  # the kind: http_<status>:<type>, client_timeout, or an exception name
    status: int | None = None  # the HTTP status (the service error's, for the in-process target)
    retry_after_s: float | None = None  # a 503's Retry-After
    attempt: int = 1  # 2, 3, ...: the same request sent again after a 503's Retry-After

    @property
    def outcome(self) -> str:
        """"200" (audio received in full), "503" (with Retry-After), "504", or "other"."""
        if self.error is None and self.latency_s is not None:
            return "200"
        if self.status == 503 and self.retry_after_s is not None:
            return "503"
        if self.status == 504:
            return "504"
        return "other"

    @property
    def rtf(self) -> float | None:
        if self.latency_s is None or self.audio_s <= 0:
            return None
        return self.latency_s / self.audio_s


class Target(Protocol):
    name: str

    async def send(self, request: BenchRequest, controls: SynthesisControls, record: RequestRecord,
                   started: float) -> None: ...

    async def close(self) -> None: ...


class HttpTarget:
    """`POST {url}/v1/tts`, the orchestrator's or the eager server's."""

    def __init__(self, url: str, timeout_s: float = 600.0, max_connections: int = 256,
                 transport: Any = None) -> None:
        import httpx

        self.name = url
        self.url = url.rstrip("/")
        # timeout_s bounds each read; run_load bounds the whole request (SynthesisControls.client_timeout_s).
        self.client = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout_s, connect=30.0),
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
            transport=transport,
        )

    async def send(self, request: BenchRequest, controls: SynthesisControls, record: RequestRecord,
                   started: float) -> None:
        files = {"speaker_audio": ("voice.wav", request.speaker_wav, "audio/wav")}
        received = 0
        async with self.client.stream("POST", f"{self.url}/v1/tts", data=controls.form(request), files=files,
                                      headers=controls.headers()) as response:
            record.status = response.status_code
            if response.status_code != 200:
                body = await response.aread()
                record.error = f"http_{response.status_code}:{_error_type(body)}"
                if response.status_code == 503:
                    record.retry_after_s = _seconds(response.headers.get("retry-after"))
                    if record.retry_after_s is None:
                        record.error += ":no_retry_after"
                return
            async for chunk in response.aiter_raw():
                received += len(chunk)
                if record.ttfa_s is None and received > WAV_HEADER_BYTES:
                    record.ttfa_s = time.perf_counter() - started
        record.latency_s = time.perf_counter() - started
        record.audio_s = max(0, received - WAV_HEADER_BYTES) / BYTES_PER_SAMPLE / SAMPLE_RATE
        if not controls.stream:
            record.ttfa_s = None  # the whole file came at once: no streaming figure

    async def close(self) -> None:
        await self.client.aclose()

    async def stage_seconds(self) -> dict[str, tuple[float, float]] | None:
        """The orchestrator's tts_stage_seconds (sum, count) per stage; None where there is no /metrics."""
        from prometheus_client.parser import text_string_to_metric_families

        try:
            response = await self.client.get(f"{self.url}/metrics")
        except Exception:  # noqa: BLE001 - no figures is an answer too
            return None
        if response.status_code != 200:
            return None
        stages: dict[str, list[float]] = {}
        for family in text_string_to_metric_families(response.text):
            if family.name != "tts_stage_seconds":
                continue
            for sample in family.samples:
                stage = sample.labels.get("stage")
                if sample.name.endswith("_sum"):
                    stages.setdefault(stage, [0.0, 0.0])[0] = sample.value
                elif sample.name.endswith("_count"):
                    stages.setdefault(stage, [0.0, 0.0])[1] = sample.value
        return {stage: (values[0], values[1]) for stage, values in stages.items()}


def _seconds(value: str | None) -> float | None:
    """A Retry-After of delay-seconds (the only form the services send); None if absent or unreadable."""
    try:
        seconds = float(value) if value is not None else None
    except ValueError:
        return None
    return seconds if seconds is not None and seconds >= 0 else None


def _error_type(body: bytes) -> str:
    try:
        return str(json.loads(body)["error"]["type"])
    except (ValueError, KeyError, TypeError):
        return "unknown"


class TritonTarget:
    """The orchestrator's service object (`TtsService`: validation, pipeline, Triton client) driven in
    this process: the served stack without HTTP."""

    def __init__(self, grpc_url: str, checkpoint_dir: str | Path) -> None:
        from orchestrator.assets import ModelAssets
        from orchestrator.metrics import ServiceMetrics
        from orchestrator.reporting import Reporter
        from orchestrator.service import TtsService
        from orchestrator.settings import Settings
        from orchestrator.triton_client import TritonStages

        self.name = f"triton:{grpc_url}"
        self._voices = tempfile.TemporaryDirectory(prefix="loadgen_voices_")
        settings = Settings(checkpoint_dir=Path(checkpoint_dir), triton_grpc_url=grpc_url,
                            voices_dir=Path(self._voices.name)).validate()
        self.metrics = ServiceMetrics()
        self.triton = TritonStages(grpc_url, self.metrics, settings.triton_timeout_s, settings.gpt_stream_timeout_s)
        reporter = Reporter(settings, self.metrics, "cpu")
        self.service = TtsService(settings, ModelAssets.load(settings.checkpoint_dir), self.triton, reporter,
                                  self.metrics)

    async def send(self, request: BenchRequest, controls: SynthesisControls, record: RequestRecord,
                   started: float) -> None:
        from fastapi import UploadFile

        from orchestrator.errors import ServiceError
        from orchestrator.schemas import TtsForm

        fields: dict[str, Any] = controls.form(request)
        upload = UploadFile(io.BytesIO(request.speaker_wav), size=len(request.speaker_wav), filename="voice.wav")
        try:
            form = TtsForm(**fields, speaker_audio=upload)
            stream = await self.service.tts(form, route="/v1/tts")
            samples = 0
            async for piece in stream:
                if record.ttfa_s is None and piece.size:
                    record.ttfa_s = time.perf_counter() - started
                samples += piece.shape[0]
        except ServiceError as error:
            record.error = f"{error.http_status}:{error.error_type}"
            record.status = error.http_status
            if error.http_status == 503 and getattr(error, "retry_after_s", None):
                record.retry_after_s = float(error.retry_after_s)
            return
        record.status = 200
        record.latency_s = time.perf_counter() - started
        record.audio_s = samples / SAMPLE_RATE
        if not controls.stream:
            record.ttfa_s = None

    async def close(self) -> None:
        await self.triton.close()
        self._voices.cleanup()

    async def stage_seconds(self) -> dict[str, tuple[float, float]]:
        stages: dict[str, tuple[float, float]] = {}
        for family in self.metrics.registry.collect():
            if family.name != "tts_stage_seconds":
                continue
            sums = {s.labels["stage"]: s.value for s in family.samples if s.name.endswith("_sum")}
            counts = {s.labels["stage"]: s.value for s in family.samples if s.name.endswith("_count")}
            stages = {stage: (sums[stage], counts.get(stage, 0.0)) for stage in sums}
        return stages


# --- Triton's statistics ---------------------------------------------------------------------------

STAT_KINDS = ("queue", "compute_input", "compute_infer", "compute_output")


def triton_statistics(grpc_url: str) -> dict[str, dict[str, int]]:
    """{model: {inference_count, execution_count, <kind>_ns, <kind>_count}} of every model Triton has run."""
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(grpc_url)
    try:
        stats = client.get_inference_statistics(as_json=True)
    finally:
        client.close()
    models = {}
    for entry in stats.get("model_stats", []):
        inference = entry.get("inference_stats", {})
        row = {"inference_count": int(entry.get("inference_count", 0)),
               "execution_count": int(entry.get("execution_count", 0))}
        for kind in (*STAT_KINDS, "success", "fail"):
            row[f"{kind}_ns"] = int(inference.get(kind, {}).get("ns", 0))
            row[f"{kind}_count"] = int(inference.get(kind, {}).get("count", 0))
        # Per batch size, the executions themselves: how long the model was busy (input, inference and
        # output of each execution), batches counted once.
        row["busy_ns"] = sum(int(batch.get(kind, {}).get("ns", 0)) for batch in entry.get("batch_stats", [])
                             for kind in ("compute_input", "compute_infer", "compute_output"))
        models[entry["name"]] = row
    return models


def statistics_delta(before: dict[str, dict[str, int]], after: dict[str, dict[str, int]]) -> dict[str, dict]:
    """Per model that ran during the run: requests, executions, mean batch; per request the mean queue
    time and the mean duration of the execution it was part of (`<kind>_ms`, Triton's accounting); the
    seconds the model spent executing (`busy_s`) and that divided by the requests (`cost_ms`: what one
    request cost, batches shared). For the decoupled gpt_decoder these count only its `execute` call,
    which hands the request to the decoder engine, not the decoding."""
    delta = {}
    for model, now in after.items():
        then = before.get(model, {})
        diff = {key: value - then.get(key, 0) for key, value in now.items()}
        requests = diff["success_count"] + diff["fail_count"]
        if requests <= 0:
            continue
        row: dict[str, Any] = {
            "requests": requests,
            "failed": diff["fail_count"],
            "executions": diff["execution_count"],
            "mean_batch": round(diff["inference_count"] / diff["execution_count"], 2) if diff["execution_count"] else None,
            "request_ms": round(diff["success_ns"] / max(1, diff["success_count"]) / 1e6, 3),
            "busy_s": round(diff["busy_ns"] / 1e9, 3),
            "cost_ms": round(diff["busy_ns"] / requests / 1e6, 3),
        }
        for kind in STAT_KINDS:
            row[f"{kind}_ms"] = round(diff[f"{kind}_ns"] / max(1, diff[f"{kind}_count"]) / 1e6, 3)
        delta[model] = row
    return delta


def stage_delta(before: dict[str, tuple[float, float]] | None, after: dict[str, tuple[float, float]] | None,
                requests: int) -> dict[str, dict] | None:
    """Orchestrator stage calls during the run: calls, mean ms per call, seconds per request."""
    if before is None or after is None:
        return None
    stages = {}
    for stage, (total, count) in after.items():
        total -= before.get(stage, (0.0, 0.0))[0]
        count -= before.get(stage, (0.0, 0.0))[1]
        if count <= 0:
            continue
        stages[stage] = {"calls": int(count), "mean_ms": round(1000 * total / count, 2),
                         "seconds_per_request": round(total / max(1, requests), 4)}
    return stages


# --- the run ---------------------------------------------------------------------------------------


@dataclass
class RunResult:
    target: str
    mode: str  # "closed" | "open"
    concurrency: int | None
    rate: float | None
    controls: dict[str, Any]
    sent: int  # attempts (a request sent again after a 503 counts once more)
    ok: int
    errors: dict[str, int]
    statuses: dict[str, int]  # attempts by outcome: "200", "503" (with Retry-After), "504", "other"
    requests: int  # distinct requests sent
    client_timeout_s: float | None
    wall_s: float
    throughput_rps: float
    audio_seconds_per_second: float  # goodput: seconds of successful audio per wall second
    audio_s_total: float
    latency_s: dict[str, float | None]
    rtf: dict[str, float | None]
    ttfa_s: dict[str, float | None] | None
    load_average: dict[str, list[float]]
    triton: dict[str, dict] | None = None
    stages: dict[str, dict] | None = None
    records: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _percentiles(values: list[float], *points: int) -> dict[str, float | None]:
    if not values:
        return {"mean": None, **{f"p{p}": None for p in points}}
    array = np.asarray(values, dtype=np.float64)
    summary = {"mean": round(float(array.mean()), 4)}
    summary.update({f"p{p}": round(float(np.percentile(array, p)), 4) for p in points})
    return summary


def _load_average() -> list[float]:
    try:
        return [round(value, 2) for value in os.getloadavg()]
    except OSError:
        return []


async def run_load(
    target: Target,
    requests: list[BenchRequest],
    controls: SynthesisControls,
    concurrency: int | None = None,
    rate: float | None = None,
    duration_s: float = 600.0,
    seed: int = 0,
    triton_grpc_url: str | None = None,
    keep_records: bool = True,
) -> RunResult:
    """Send `requests` (in order) closed-loop with `concurrency` in flight, or open-loop at `rate` per
    second (exponential gaps drawn from `seed`); no new request after `duration_s`. Each attempt is given
    up after `controls.client_timeout_s`. Closed loop: a 503 with Retry-After makes the worker wait that
    long and send the same request again (not once the run's time is over)."""
    if (concurrency is None) == (rate is None):
        raise ValueError("give a concurrency (closed loop) or a rate (open loop)")
    stats_before = await asyncio.to_thread(triton_statistics, triton_grpc_url) if triton_grpc_url else None
    stage_seconds = getattr(target, "stage_seconds", None)
    stages_before = await stage_seconds() if stage_seconds else None
    load_before = _load_average()
    records: list[RequestRecord] = []
    start = time.perf_counter()

    async def one(request: BenchRequest, attempt: int = 1) -> RequestRecord:
        sent_at = time.perf_counter()
        record = RequestRecord(request.index, started_s=sent_at - start, text_kind=request.text_kind,
                               attempt=attempt)
        records.append(record)
        try:
            await asyncio.wait_for(target.send(request, controls, record, sent_at), controls.client_timeout_s)
        except TimeoutError:
            record.latency_s, record.audio_s = None, 0.0
            record.error = "client_timeout"
        except Exception as error:  # noqa: BLE001 - every failure is counted by its kind
            record.latency_s, record.audio_s = None, 0.0
            record.error = type(error).__name__
        return record

    if concurrency is not None:
        pending = iter(requests)

        async def worker() -> None:
            for request in pending:
                if time.perf_counter() - start > duration_s:
                    return
                record = await one(request)
                while record.outcome == "503":
                    wait = record.retry_after_s or 0.0
                    if time.perf_counter() - start + wait > duration_s:
                        break  # the run is over before the service would take it: the 503 stands
                    await asyncio.sleep(wait)
                    record = await one(request, record.attempt + 1)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    else:
        rng = np.random.default_rng(seed)
        arrivals = np.cumsum(rng.exponential(1.0 / rate, size=len(requests)))
        tasks = []
        for request, arrival in zip(requests, arrivals, strict=False):
            if arrival > duration_s:
                break
            delay = arrival - (time.perf_counter() - start)
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.ensure_future(one(request)))
        await asyncio.gather(*tasks)
    wall = time.perf_counter() - start

    ok = [r for r in records if r.outcome == "200"]
    outcomes = Counter(r.outcome for r in records)
    stats = statistics_delta(stats_before, await asyncio.to_thread(triton_statistics, triton_grpc_url)) \
        if triton_grpc_url else None
    stages = stage_delta(stages_before, await stage_seconds() if stage_seconds else None, len(records))
    audio_total = sum(r.audio_s for r in ok)
    ttfa = [r.ttfa_s for r in ok if r.ttfa_s is not None]
    return RunResult(
        target=target.name,
        mode="closed" if concurrency is not None else "open",
        concurrency=concurrency,
        rate=rate,
        controls=asdict(controls),
        sent=len(records),
        ok=len(ok),
        errors=dict(Counter(r.error for r in records if r.error is not None)),
        statuses={outcome: outcomes.get(outcome, 0) for outcome in OUTCOMES},
        requests=len({r.index for r in records}),
        client_timeout_s=controls.client_timeout_s,
        wall_s=round(wall, 3),
        throughput_rps=round(len(ok) / wall, 4) if wall > 0 else 0.0,
        audio_seconds_per_second=round(audio_total / wall, 4) if wall > 0 else 0.0,
        audio_s_total=round(audio_total, 3),
        latency_s=_percentiles([r.latency_s for r in ok], 50, 95, 99),
        rtf=_percentiles([r.rtf for r in ok if r.rtf is not None], 50),
        ttfa_s=_percentiles(ttfa, 50, 95) if ttfa else None,
        load_average={"before": load_before, "after": _load_average()},
        triton=stats,
        stages=stages,
        records=[{**asdict(r), "outcome": r.outcome} for r in sorted(records, key=lambda r: (r.index, r.attempt))]
        if keep_records else [],
    )


async def warm_up(target: Target, requests: list[BenchRequest], controls: SynthesisControls) -> None:
    """Requests sent one by one and not measured: first calls pay for lazy initialisation."""
    for request in requests:
        await asyncio.wait_for(target.send(request, controls, RequestRecord(request.index, 0.0), time.perf_counter()),
                               controls.client_timeout_s)


def describe(result: RunResult) -> str:
    """One progress line."""
    load = f"c={result.concurrency}" if result.mode == "closed" else f"rate={result.rate}/s"
    latency = result.latency_s
    tally = " / ".join(f"{result.statuses.get(outcome, 0)}" for outcome in OUTCOMES)
    parts = [f"{load}: {result.ok}/{result.sent} ok in {result.wall_s:.1f} s (200/503/504/other {tally})",
             f"{result.throughput_rps:.3f} req/s", f"goodput {result.audio_seconds_per_second:.3f} audio s/s"]
    if latency["p50"] is not None:
        parts.append(f"latency p50 {latency['p50']:.2f} s p95 {latency['p95']:.2f} s")
    if result.rtf["mean"] is not None:
        parts.append(f"RTF mean {result.rtf['mean']:.2f}")
    if result.ttfa_s:
        parts.append(f"TTFA p50 {result.ttfa_s['p50']:.2f} s")
    if result.errors:
        parts.append(f"errors {result.errors}")
    return ", ".join(parts)


def quiet_service_logs() -> None:
    """The service's request warnings (short reference audio, short mel for a fixed code count) are
    expected under load; only errors are worth a line when its pipeline runs in this process."""
    logging.getLogger("orchestrator").setLevel(logging.ERROR)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.loadgen", description=__doc__.splitlines()[0])
    target = parser.add_argument_group("target (--url, or --triton-grpc-url with --checkpoint)")
    target.add_argument("--url", help="base URL of the orchestrator or the eager server")
    target.add_argument("--triton-grpc-url", help="Triton's gRPC address: its statistics, and without --url the "
                                                  "target itself (the orchestrator's pipeline, no HTTP)")
    target.add_argument("--checkpoint", type=Path, help="the checkpoint directory (for the Triton target)")
    load = parser.add_mutually_exclusive_group(required=True)
    load.add_argument("--concurrency", type=int, help="closed loop: requests in flight")
    load.add_argument("--rate", type=float, help="open loop: requests per second (Poisson)")
    parser.add_argument("--requests", type=int, default=16, help="requests in the run")
    parser.add_argument("--duration", type=float, default=600.0, help="no new request after this many seconds")
    parser.add_argument("--warmup", type=int, default=1, help="unmeasured requests first")
    parser.add_argument("--codes", type=int, default=60, help="codes per segment (min_codes = max_codes); 0: free")
    parser.add_argument("--diffusion-steps", type=int, default=25)
    parser.add_argument("--stream", action="store_true", help="stream=true (time to first audio)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the request set and of the arrivals")
    parser.add_argument("--timeout", type=float, default=DEFAULT_REQUEST_TIMEOUT_S,
                        help="per request, seconds: sent as X-Request-Timeout; the client gives up "
                             f"{CLIENT_GRACE_S:g} s later")
    parser.add_argument("--json", type=Path, help="write the result here")
    args = parser.parse_args(argv)
    if not args.url and not (args.triton_grpc_url and args.checkpoint):
        parser.error("give --url, or --triton-grpc-url with --checkpoint")
    quiet_service_logs()

    async def run() -> RunResult:
        if args.url:
            chosen: Any = HttpTarget(args.url)
        else:
            chosen = TritonTarget(args.triton_grpc_url, args.checkpoint)
        controls = SynthesisControls(codes=args.codes or None, diffusion_steps=args.diffusion_steps, stream=args.stream,
                                     request_timeout_s=args.timeout)
        requests = build_requests(args.warmup + args.requests, seed=args.seed)
        try:
            await warm_up(chosen, requests[args.requests:], controls)
            return await run_load(chosen, requests[: args.requests], controls, args.concurrency, args.rate,
                                  args.duration, args.seed, args.triton_grpc_url)
        finally:
            await chosen.close()

    result = asyncio.run(run())
    print(describe(result), flush=True)
    if args.json:
        args.json.write_text(json.dumps(result.to_dict(), indent=1))
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
