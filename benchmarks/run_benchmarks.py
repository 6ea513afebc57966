"""The served stack against the eager baseline, side by side, with the same weights and the same
requests: `make bench`.

    .venv/bin/python -m benchmarks.run_benchmarks                        # demo + small, c = 1, 4, 16, 64
    .venv/bin/python -m benchmarks.run_benchmarks --presets small --concurrency 1 8 --codes 100
    .venv/bin/python -m benchmarks.run_benchmarks --presets demo-2.5 --concurrency 1 16      # IndexTTS-2.5
    .venv/bin/python -m benchmarks.run_benchmarks --checkpoint DIR --triton-grpc-url HOST:PORT   # a running Triton

For each preset (random checkpoints in the official layout: IndexTTS-2.0's of `indextts2.presets`, and
`demo-2.5`, IndexTTS-2.5's of `indextts2.presets_2_5`; both services read the version from the checkpoint):
1. writes the checkpoint and exports its model repository into build/bench/<preset>/ (reused while the
   sources are unchanged, as `make serve` does);
2. starts, on loopback, the local tritonserver on that repository, the orchestrator (`python -m
   orchestrator`, Sentry off) against it, and the eager baseline (`python -m benchmarks.eager_server`)
   on the same checkpoint;
3. measures the machine's ceiling for the request mix with nothing else running (`benchmarks.ceiling`:
   each stage's best cost per request in isolation; ceiling = 1 / their sum);
4. warms both up, then for each concurrency runs the baseline and the served stack one after the other
   (which goes first alternates), closed loop, on the same seeded requests (`benchmarks.loadgen`), each
   run starting once both services have nothing left in flight;
5. stops what it started.

Then writes `<out-dir>/<name>.json` (every run, every request, Triton's per-model statistics, the
orchestrator's stage times, the ceiling and its breakdown, the hardware), `<name>.md` (tables with the
ratios served / baseline, each run's outcomes 200 / 503 / 504 / other, goodput and fraction of the
ceiling, the ceiling's breakdown, issue 9's targets checked) and `<name>_<preset>.png` (throughput and
p95 latency against concurrency).

Defaults (a full run is ~25 minutes on a 2-core CPU): every segment has exactly 60 codes (`--codes`,
min_codes = max_codes: ~1.2 s of speech, whatever the random weights would sample), 25 diffusion steps
(the official default), streamed responses (so time to first audio is measured too), a 120 s request
timeout for both systems (X-Request-Timeout, and the client gives up 5 s later), concurrency 1, 4, 16
with max(12, 3 x concurrency) requests per run (no new request after 300 s), and concurrency 64 as a
shorter run: 2 x 64 requests, no new request (nor retry) after 60 s.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime
import json
import os
import re
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import httpx

from benchmarks.ceiling import DEFAULT_BATCHES, DEFAULT_GPT_BATCHES, measure_ceiling
from benchmarks.export_official_size import hardware
from benchmarks.loadgen import (
    CLIENT_GRACE_S,
    DEFAULT_REQUEST_TIMEOUT_S,
    OUTCOMES,
    TEXTS,
    HttpTarget,
    SynthesisControls,
    TritonTarget,
    build_requests,
    describe,
    quiet_service_logs,
    run_load,
    warm_up,
)
from benchmarks.streaming import DEFAULT_CONCURRENCY as STREAMING_CONCURRENCY
from benchmarks.streaming import check_streaming_targets, run_streaming, streaming_markdown
from indextts2.defaults import MAX_TEXT_TOKENS_PER_SEGMENT
from local_triton.process_group import NotReadyError, ServerProcess
from orchestrator.settings import Settings

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT_DIR = REPO_ROOT / "benchmarks" / "results"
DEFAULT_BUILD_DIR = REPO_ROOT / "build" / "bench"
SYSTEMS = ("eager", "served", "direct")
WARMUP_REQUESTS = 2
IDLE_WAIT_S = 180.0  # at most this long for the services to finish what a previous run left in flight
Progress = Callable[[str], None]

# Issue 9's targets, checked in the report: served / eager throughput at concurrency 16 per preset (or,
# where the ceiling itself is below that, served at CEILING_INSTEAD of the ceiling), served at
# concurrency 16 at SERVED_OF_CEILING of the ceiling, and served goodput at concurrency 64 at
# NO_COLLAPSE of its concurrency-16 goodput.
TARGET_SPEEDUP = {"demo": 1.3, "small": 1.2}
CEILING_INSTEAD = 0.9
SERVED_OF_CEILING = 0.8
NO_COLLAPSE = 0.9


def say(line: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {line}", flush=True)


# --- building and serving ---------------------------------------------------------------------------


DEMO_2_5_PRESET = "demo-2.5"  # the IndexTTS-2.5 preset (indextts2.presets_2_5); the others are 2.0's


def preset_names() -> list[str]:
    """Every preset the benchmark can build: indextts2.presets' (IndexTTS-2.0) and demo-2.5."""
    from indextts2.presets import PRESETS

    return [*PRESETS, DEMO_2_5_PRESET]


def write_preset_checkpoint(preset: str, checkpoint: Path) -> Any:
    """Write the checkpoint of `preset` (one of `preset_names()`) into `checkpoint`; its CheckpointPaths."""
    from indextts2.presets import PRESETS, write_random_checkpoint
    from indextts2.presets_2_5 import write_demo_checkpoint_2_5

    if preset == DEMO_2_5_PRESET:
        return write_demo_checkpoint_2_5(checkpoint)
    paths, _ = write_random_checkpoint(checkpoint, PRESETS[preset])
    return paths


def build_preset(build_dir: Path, preset: str, fresh: bool, progress: Progress) -> tuple[Path, Path]:
    """(checkpoint_dir, model_repository) of a preset in build_dir/<preset>, reused when its stamp (the
    sources `make serve` stamps, plus the preset's name) is unchanged. The exporter reads the version
    (2.0 or 2.5) from the checkpoint it is given."""
    from export.repository import export_repository
    from orchestrator.demo import source_stamp

    root = build_dir / preset
    checkpoint, repository, stamp_file = root / "checkpoint", root / "model_repository", root / "stamp"
    stamp = f"{preset}:{source_stamp()}"
    if not fresh and stamp_file.is_file() and stamp_file.read_text() == stamp:
        progress(f"{preset}: reusing the build in {root}")
        return checkpoint, repository
    stamp_file.unlink(missing_ok=True)
    for folder in (checkpoint, repository):
        shutil.rmtree(folder, ignore_errors=True)
    progress(f"{preset}: writing the checkpoint and exporting the model repository to {root} ...")
    started = time.perf_counter()
    paths = write_preset_checkpoint(preset, checkpoint)
    export_repository(paths, repository, progress=lambda line: None)
    stamp_file.write_text(stamp)
    progress(f"{preset}: built in {time.perf_counter() - started:.0f} s")
    return checkpoint, repository


class ServiceProcess:
    """A service in a process group of ours, ready once `health_url` answers 200. The group's guard
    (local_triton.process_group) kills it if this process goes first, however it goes: a killed benchmark
    leaves no server behind to load the machine."""

    def __init__(self, name: str, command: list[str], env: dict[str, str], log_path: Path, health_url: str) -> None:
        self.name, self.command, self.env, self.log_path, self.health_url = name, command, env, log_path, health_url
        self.process: ServerProcess | None = None

    def start(self, timeout_s: float = 180.0) -> ServiceProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.process = ServerProcess(self.command, log_path=self.log_path, cwd=REPO_ROOT, env=self.env,
                                     guard_name=f"bench-{self.name.replace(' ', '-')}")
        try:
            self.process.wait_until_ready(self.health_url, time.monotonic() + timeout_s, poll_s=0.5)
        except NotReadyError as error:
            self.stop()
            raise RuntimeError(f"{self.name} {error}; log {self.log_path}:\n"
                               + self.log_path.read_text(errors="replace")[-3000:]) from None
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop(grace_s=15)
            self.process = None


def child_environment(**variables: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env.update(variables)
    return env


@dataclass
class Stack:
    """One preset's services, running."""

    preset: str
    checkpoint_dir: Path
    triton_grpc_url: str
    urls: dict[str, str]  # system -> base URL
    triton_version: str | None = None


def start_services(preset: str, checkpoint_dir: Path, triton_grpc_url: str, logs: Path,
                   started: list[ServiceProcess], orchestrator_env: dict[str, str] | None = None) -> Stack:
    """The orchestrator and the eager server of one checkpoint (each appended to `started` once up);
    `orchestrator_env` adds settings (e.g. TRITON_TIMEOUT_S) to the orchestrator's environment."""
    from local_triton import find_free_port

    served_port, eager_port = find_free_port(), find_free_port()
    orchestrator = ServiceProcess(
        "orchestrator", [sys.executable, "-m", "orchestrator"],
        child_environment(CHECKPOINT_DIR=str(checkpoint_dir), TRITON_GRPC_URL=triton_grpc_url, HOST="127.0.0.1",
                          PORT=str(served_port), VOICES_DIR=str(logs / "voices"), SENTRY_DSN="",
                          **(orchestrator_env or {})),
        logs / "orchestrator.log", f"http://127.0.0.1:{served_port}/readyz",
    )
    eager = ServiceProcess(
        "eager server", [sys.executable, "-m", "benchmarks.eager_server", "--checkpoint", str(checkpoint_dir),
                         "--port", str(eager_port)],
        child_environment(), logs / "eager_server.log", f"http://127.0.0.1:{eager_port}/healthz",
    )
    for service in (orchestrator, eager):
        started.append(service)
        service.start()
    return Stack(preset, checkpoint_dir, triton_grpc_url,
                 {"served": f"http://127.0.0.1:{served_port}", "eager": f"http://127.0.0.1:{eager_port}"},
                 triton_version=triton_server_version(triton_grpc_url))


def triton_server_version(grpc_url: str) -> str | None:
    import tritonclient.grpc as grpcclient

    try:
        client = grpcclient.InferenceServerClient(grpc_url)
        version = client.get_server_metadata(as_json=True).get("version")
        client.close()
        return version
    except Exception:  # noqa: BLE001 - only a label in the report
        return None


# --- the runs -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunPlan:
    concurrencies: tuple[int, ...] = (1, 4, 16, 64)
    min_requests: int = 12
    requests_per_slot: int = 3
    fixed_requests: int | None = None  # overrides the requests per slot, short runs included
    systems: tuple[str, ...] = ("eager", "served")  # "direct": the orchestrator's pipeline without HTTP
    max_run_seconds: float = 300.0
    # Runs at this concurrency and above are short: fewer requests per slot, and a time cap of their own.
    short_from: int = 64
    short_requests_per_slot: int = 2
    short_max_run_seconds: float = 60.0
    controls: SynthesisControls = field(
        default_factory=lambda: SynthesisControls(codes=60, stream=True, stream_mode="segment"))
    seed: int = 0
    ceiling: bool = True
    ceiling_batches: tuple[int, ...] = DEFAULT_BATCHES
    ceiling_gpt_batches: tuple[int, ...] = DEFAULT_GPT_BATCHES

    def requests_for(self, concurrency: int) -> int:
        if self.fixed_requests is not None:
            return self.fixed_requests
        if concurrency >= self.short_from:
            return self.short_requests_per_slot * concurrency
        return max(self.min_requests, self.requests_per_slot * concurrency)

    def seconds_for(self, concurrency: int) -> float:
        """No new request (nor retry) after this many seconds of a run."""
        return self.short_max_run_seconds if concurrency >= self.short_from else self.max_run_seconds


async def in_flight(client: httpx.AsyncClient, system: str, url: str) -> int | None:
    """Requests a service still has in flight: the eager server's /healthz `in_flight`, the orchestrator's
    tts_requests_in_flight gauge; None where it does not say."""
    try:
        if system == "eager":
            return int((await client.get(f"{url}/healthz")).json().get("in_flight", 0))
        from prometheus_client.parser import text_string_to_metric_families

        response = await client.get(f"{url}/metrics")
        for family in text_string_to_metric_families(response.text):
            if family.name == "tts_requests_in_flight":
                return int(sum(sample.value for sample in family.samples))
    except (httpx.HTTPError, ValueError, AttributeError):
        return None
    return None


async def wait_idle(urls: dict[str, str], timeout_s: float = IDLE_WAIT_S) -> float:
    """Wait until no service has a request in flight (what a previous run's abandoned requests left);
    the seconds waited."""
    started = time.perf_counter()
    async with httpx.AsyncClient(timeout=5.0) as client:
        while time.perf_counter() - started < timeout_s:
            counts = [await in_flight(client, system, url) for system, url in urls.items()]
            if not any(counts):
                break
            await asyncio.sleep(1.0)
    return round(time.perf_counter() - started, 1)


def run_preset(stack: Stack, plan: RunPlan, progress: Progress = say) -> dict[str, Any]:
    """The ceiling, warm-up, then per concurrency the systems back to back (which goes first alternates)
    on the same requests. Each concurrency gets requests of its own (new voices), so that the
    orchestrator's conditioning cache never serves a voice a previous run brought. Returns {"runs",
    "ratios", "ceiling"}."""
    warmup = build_requests(WARMUP_REQUESTS, seed=plan.seed + 999)
    ceiling: dict[str, Any] | None = None
    if plan.ceiling:
        progress(f"{stack.preset}: measuring the ceiling (each stage alone) ...")
        try:
            ceiling = asyncio.run(measure_ceiling(
                stack.triton_grpc_url, stack.checkpoint_dir, plan.controls, seed=plan.seed,
                batches=plan.ceiling_batches, gpt_batches=plan.ceiling_gpt_batches,
                progress=lambda line: progress(f"{stack.preset}: {line}")))
            progress(f"{stack.preset}: ceiling {ceiling['requests_per_s']:.3f} req/s = "
                     f"{ceiling['audio_s_per_s']:.3f} audio s/s (measured in {ceiling['wall_s']:.0f} s)")
        except Exception as error:  # noqa: BLE001 - the runs are still worth having; the report says why
            progress(f"{stack.preset}: the ceiling could not be measured: {type(error).__name__}: {error}")
            ceiling = {"error": f"{type(error).__name__}: {error}"[:500]}

    async def run_all() -> list[dict[str, Any]]:
        targets: dict[str, Any] = {}
        for system in plan.systems:
            targets[system] = (TritonTarget(stack.triton_grpc_url, stack.checkpoint_dir) if system == "direct"
                               else HttpTarget(stack.urls[system]))
        runs = []
        try:
            for system in plan.systems:
                progress(f"{stack.preset}: warming up {system} ({len(warmup)} requests)")
                await warm_up(targets[system], warmup, plan.controls)
            for step, concurrency in enumerate(plan.concurrencies):
                count = plan.requests_for(concurrency)
                requests = build_requests(count, seed=plan.seed + 1000 * (step + 1))
                order = plan.systems if step % 2 == 0 else plan.systems[::-1]
                for system in order:
                    waited = await wait_idle(stack.urls)
                    if waited >= 2:
                        progress(f"{stack.preset}: waited {waited:.0f} s for the services to drain")
                    progress(f"{stack.preset}: {system}, concurrency {concurrency}, {count} requests "
                             f"(none started after {plan.seconds_for(concurrency):.0f} s) ...")
                    result = await run_load(
                        targets[system], requests, plan.controls, concurrency=concurrency,
                        duration_s=plan.seconds_for(concurrency), seed=plan.seed,
                        triton_grpc_url=stack.triton_grpc_url if system != "eager" else None,
                    )
                    progress(f"{stack.preset}: {system} {describe(result)}")
                    runs.append({"system": system, "preset": stack.preset, "idle_wait_s": waited,
                                 "max_run_seconds": plan.seconds_for(concurrency), **result.to_dict()})
        finally:
            for target in targets.values():
                await target.close()
        return runs

    runs = asyncio.run(run_all())
    annotate_runs(runs, ceiling)
    return {"runs": runs, "ratios": ratios(runs), "ceiling": ceiling}


def _record_status(record: dict[str, Any]) -> int | None:
    """A record's HTTP status (reports from before it was recorded: read from the error kind)."""
    if record.get("status") is not None:
        return record["status"]
    match = re.match(r"(?:http_)?(\d{3}):", record.get("error") or "")
    return int(match.group(1)) if match else (200 if record.get("error") is None else None)


def _server_errors(run: dict[str, Any]) -> int:
    """Answers with a 5xx status other than a 503 that carries Retry-After."""
    return sum(1 for record in run.get("records", [])
               if (_record_status(record) or 0) >= 500 and record.get("outcome") != "503")


def _statuses(run: dict[str, Any]) -> dict[str, int]:
    """Attempts by outcome (reports from before outcomes were counted: from the error kinds)."""
    if run.get("statuses"):
        return run["statuses"]
    counts = dict.fromkeys(OUTCOMES, 0)
    counts["200"] = run["ok"]
    for kind, count in run.get("errors", {}).items():
        status = _record_status({"error": kind})
        counts["504" if status == 504 else "other"] += count
    return counts


def annotate_runs(runs: list[dict[str, Any]], ceiling: dict[str, Any] | None) -> None:
    """Per run: goodput as a fraction of the ceiling, and the 5xx answers that are not 503 + Retry-After."""
    ceiling_goodput = (ceiling or {}).get("audio_s_per_s")
    for run in runs:
        run["server_errors"] = _server_errors(run)
        run["of_ceiling"] = (round(run["audio_seconds_per_second"] / ceiling_goodput, 4)
                             if ceiling_goodput else None)


def _ratio(served: float | None, eager: float | None) -> float | None:
    if served is None or not eager:
        return None
    return round(served / eager, 3)


def ratios(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per concurrency: served / eager for throughput, p50/p95 latency, RTF (mean and p50), TTFA p50.
    Above 1 is better for throughput, below 1 for the others."""
    table = []
    for concurrency in sorted({run["concurrency"] for run in runs}):
        pair = {run["system"]: run for run in runs if run["concurrency"] == concurrency}
        if not {"eager", "served"} <= set(pair):
            continue
        served, eager = pair["served"], pair["eager"]
        ttfa = [(run["ttfa_s"] or {}).get("p50") for run in (served, eager)]
        table.append({
            "concurrency": concurrency,
            "throughput": _ratio(served["throughput_rps"], eager["throughput_rps"]),
            "goodput": _ratio(served["audio_seconds_per_second"], eager["audio_seconds_per_second"]),
            "served_of_ceiling": served.get("of_ceiling"),
            "eager_of_ceiling": eager.get("of_ceiling"),
            "latency_p50": _ratio(served["latency_s"]["p50"], eager["latency_s"]["p50"]),
            "latency_p95": _ratio(served["latency_s"]["p95"], eager["latency_s"]["p95"]),
            "rtf_mean": _ratio(served["rtf"]["mean"], eager["rtf"]["mean"]),
            "rtf_p50": _ratio(served["rtf"]["p50"], eager["rtf"]["p50"]),
            "ttfa_p50": _ratio(*ttfa),
        })
    return table


def text_segments(checkpoint_dir: Path) -> dict[str, int]:
    """How many segments each text of the request set makes with this checkpoint's text front-end, as the
    services segment it (the default MAX_TEXT_TOKENS_PER_SEGMENT; 2.5 in the detected language, as the
    requests send no `language`)."""
    from orchestrator.assets import ModelAssets

    assets = ModelAssets.load(checkpoint_dir)
    max_tokens = assets.segment_tokens(MAX_TEXT_TOKENS_PER_SEGMENT)
    return {kind: len(assets.text_segments(text, max_tokens, "auto")) for kind, text in TEXTS.items()}


# --- the report -----------------------------------------------------------------------------------


def _fmt(value: Any, digits: int = 2, suffix: str = "") -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}f}{suffix}"


def markdown(report: dict[str, Any]) -> str:
    hw, settings = report["hardware"], report["settings"]
    controls = settings["controls"]
    requests = ", ".join(f"{count} at concurrency {c}" for c, count in settings["requests"].items())
    seconds = settings.get("max_run_seconds_by_concurrency") or {}
    caps = ", ".join(f"{value:g} s at {c}" for c, value in seconds.items()) or f"{settings['max_run_seconds']:g} s"
    stream = "streamed responses" if controls["stream"] else "whole responses"
    defaults = Settings()
    overrides = ", ".join(f"{name}={value}" for name, value in settings.get("orchestrator_env", {}).items()) or (
        f"the defaults (REQUEST_TIMEOUT_S {defaults.request_timeout_s:g} s, MAX_IN_FLIGHT_REQUESTS "
        f"{defaults.max_in_flight_requests}, TRITON_TIMEOUT_S {defaults.triton_timeout_s:g} s per stage call, "
        f"SEGMENT_CONCURRENCY {defaults.segment_concurrency})")
    budget = controls.get("request_timeout_s")
    timeout = (f"Request timeout, the same for both systems: {budget:g} s, sent as `X-Request-Timeout: {budget:g}` "
               f"(the orchestrator's budget; the eager server has none and ignores it), and the client gives up on "
               f"either system {CLIENT_GRACE_S:g} s later ({budget + CLIENT_GRACE_S:g} s to the last byte: "
               "`client_timeout`, counted as other)." if budget else "No request timeout.")
    lines = [
        "# IndexTTS-2: served stack vs eager baseline",
        "",
        (f"Run {report['started_utc']} to {report['finished_utc']} ({report['wall_s'] / 60:.1f} min): "
         f"`{report['command']}`."),
        "",
        (f"Hardware: {hw['cpu_model']}, {hw['cpu_cores_usable']} cores ({hw['cpu_cores']} online), "
         f"{hw['ram_bytes'] / 2**30:.1f} GiB RAM, **no GPU** (every model on the CPU, float32); {hw['platform']}. "
         f"Python {hw['python']}, torch {hw['torch']}, onnxruntime {hw['onnxruntime']}, tritonserver "
         f"{report.get('triton_version') or '?'} (nvidia-pytriton {hw.get('nvidia-pytriton')}, Python-based "
         f"onnxruntime backend), fastapi {hw.get('fastapi')}, uvicorn {hw.get('uvicorn')}."),
        "",
        ("- **eager**: `benchmarks/eager_server.py`, the official way: one request at a time, every stage in "
         "sequence in PyTorch, GPT batch 1, the official second GPT pass for the latents (IndexTTS-2.0; 2.5 has "
         "no GPT latent); no admission control (requests queue), a request whose client gave up is dropped when "
         "its turn comes."),
        ("- **served**: the orchestrator (FastAPI) over gRPC to tritonserver: ONNX stages with dynamic batching, "
         "`gpt_decoder` with continuous batching, `s2mel` batched; conditioning computed per request; admission "
         "control (503 + Retry-After before the upload is read)."),
        ("- **direct** (where run): the orchestrator's pipeline code driving Triton from the load generator's "
         "process, without HTTP."),
        "",
        (f"Closed loop, the same seeded requests for every system at a concurrency, {stream}. Every segment has "
         f"exactly {controls['codes']} codes (min_codes = max_codes), {controls['diffusion_steps']} diffusion "
         "steps. Texts of 3 lengths x reference audio of 3, 6 and 10 s, a new voice per request (the "
         f"orchestrator's conditioning cache never hits). Requests per run: {requests}; no new request (nor "
         f"retry) after {caps}; {settings['warmup_requests']} warm-up requests per system first; each run starts "
         f"once neither service has a request in flight. {timeout} A 503 with Retry-After makes the worker wait "
         "that long and send the same request again; every attempt is counted (200 / 503 / 504 / other: any "
         "other status, a 503 without Retry-After, a client timeout, a broken response). Orchestrator settings: "
         f"{overrides}. Goodput = seconds of successful audio per wall second of the run. Latency is to the last "
         "byte (successful requests); RTF = a request's latency / its audio duration; TTFA = time to the first "
         "audio byte after the WAV header."),
        "",
        ("The ceiling (`benchmarks/ceiling.py`): each stage measured alone, at batch 1 and at its best batch "
         "(Triton's busy time per request for the batched models, bursts of identical requests; the wall time "
         "of concurrent streams for `gpt_decoder`; the orchestrator's own stage time for the in-process stages); "
         "ceiling = 1 / (sum over stages of calls per request x best cost per call). \"of ceiling\" = a run's "
         "goodput / the ceiling's."),
        "",
    ]
    lines += _checks_markdown(check_targets(report))
    for preset, result in report["presets"].items():
        segments = ", ".join(f"{kind} {count}" for kind, count in result.get("segments", {}).items())
        lines += [f"## {preset}", "",
                  f"Checkpoint: {result['checkpoint']}; text segments per request: {segments}; plot `{result['plot']}`.",
                  ""]
        lines += _ceiling_markdown(result.get("ceiling"))
        lines += [("Served / eager (throughput and goodput: above 1 is better; latency, RTF, TTFA: below 1 is "
                   "better), and each system's goodput as a fraction of the ceiling:"), "",
                  ("| concurrency | throughput | goodput | latency p50 | latency p95 | RTF mean | RTF p50 | TTFA p50 | "
                   "served of ceiling | eager of ceiling |"),
                  "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for row in result["ratios"]:
            lines.append(f"| {row['concurrency']} | {_fmt(row['throughput'], suffix='x')} | "
                         f"{_fmt(row.get('goodput'), suffix='x')} | "
                         f"{_fmt(row['latency_p50'], suffix='x')} | {_fmt(row['latency_p95'], suffix='x')} | "
                         f"{_fmt(row['rtf_mean'], suffix='x')} | {_fmt(row['rtf_p50'], suffix='x')} | "
                         f"{_fmt(row['ttfa_p50'], suffix='x')} | {_percent(row.get('served_of_ceiling'))} | "
                         f"{_percent(row.get('eager_of_ceiling'))} |")
        lines += ["", ("| concurrency | system | requests | 200 | 503 | 504 | other | errors | req/s | goodput (audio s/s) "
                      "| of ceiling | RTF mean | RTF p50 | latency p50 (s) | p95 | p99 | TTFA p50 (s) | load avg |"),
                  "|---:|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
        for run in sorted(result["runs"], key=lambda r: (r["concurrency"], r["system"])):
            errors = ", ".join(f"{kind}: {count}" for kind, count in run["errors"].items()) or "-"
            load = run["load_average"]
            statuses = _statuses(run)
            lines.append(
                f"| {run['concurrency']} | {run['system']} | {run.get('requests', run['sent'])} | "
                + " | ".join(str(statuses.get(outcome, 0)) for outcome in OUTCOMES)
                + f" | {errors} | {run['throughput_rps']:.3f} | {run['audio_seconds_per_second']:.3f} | "
                f"{_percent(run.get('of_ceiling'))} | {_fmt(run['rtf']['mean'])} | "
                f"{_fmt(run['rtf']['p50'])} | {_fmt(run['latency_s']['p50'])} | {_fmt(run['latency_s']['p95'])} | "
                f"{_fmt(run['latency_s']['p99'])} | {_fmt((run['ttfa_s'] or {}).get('p50'))} | "
                f"{_fmt((load['before'] or [None])[0], 1)} -> {_fmt((load['after'] or [None])[0], 1)} |")
        lines += ["", ("requests: distinct requests sent; 200 / 503 / 504 / other: attempts (a request refused "
                       "with 503 and sent again counts once more).")]
        served = sorted((run for run in result["runs"] if run["system"] == "served"), key=lambda r: r["concurrency"])
        shown = {run["concurrency"]: run for run in served[:1] + served[-1:]}
        shown.update({run["concurrency"]: run for run in served if run["concurrency"] == 16})
        for concurrency in sorted(shown):  # the lowest, 16 and the highest concurrency
            lines += _served_breakdown(shown[concurrency], result.get("ceiling"))
        lines.append("")
    lines += report.get("notes", [])
    return "\n".join(lines) + "\n"


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.0f} %"


def _ceiling_markdown(ceiling: dict[str, Any] | None) -> list[str]:
    if not ceiling:
        return ["Ceiling: not measured.", ""]
    if "error" in ceiling:
        return [f"Ceiling: could not be measured ({ceiling['error']}).", ""]
    lines = [
        (f"**Ceiling: {ceiling['requests_per_s']:.3f} requests/s = {ceiling['audio_s_per_s']:.3f} audio s/s** "
         f"({ceiling['ms_per_request']:.0f} ms of stage time per request of the mix: "
         f"{ceiling['segments_per_request']:.2f} segments, {ceiling['audio_s_per_request']:.2f} s of audio; at "
         f"batch 1 everywhere {ceiling['batch1_requests_per_s']:.3f} requests/s). Measured in "
         f"{ceiling['wall_s']:.0f} s, load average {_fmt((ceiling['load_average']['before'] or [None])[0], 1)} -> "
         f"{_fmt((ceiling['load_average']['after'] or [None])[0], 1)}. Breakdown (ms per call; cores busy: the "
         "machine's mean while the stage was measured):"),
        "",
        ("| stage | measured as | calls per request | batch 1 ms | best batch | best ms | ms per request | share | "
         "cores busy |"),
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in ceiling["stages"]:
        lines.append(f"| {row['stage']} | {row['kind']} | {row['calls_per_request']:.2f} | {_fmt(row['batch1_ms'], 1)} | "
                     f"{row['best_batch']} | {_fmt(row['best_ms'], 1)} | {row['ms_per_request']:.1f} | "
                     f"{_percent(row['share'])} | {_fmt(row.get('cores_busy'), 1)} |")
    gpt = next((row for row in ceiling["stages"] if row["stage"] == "gpt_decoder"), None)
    if gpt:
        per_code = ", ".join(f"{value['ms_per_code']:.2f} ms at {b} streams" for b, value in gpt["batches"].items())
        lines += ["", f"gpt_decoder per code step (prefill included): {per_code}."]
    return lines + [""]


def _served_breakdown(run: dict[str, Any], ceiling: dict[str, Any] | None = None) -> list[str]:
    best = {row["stage"]: row for row in (ceiling or {}).get("stages", [])}
    wall = run.get("wall_s") or 0.0
    lines = ["", (f"Served, concurrency {run['concurrency']}, per Triton model (its statistics over the run): "
                  "queue ms and execution ms are per request (the execution it was part of), busy s the time the "
                  "model spent executing (% of the run's wall time), cost ms that divided by the requests, next to "
                  "the ceiling's best cost per call (not for gpt_decoder, whose statistics cover only the hand-over "
                  "to its engine). Then per orchestrator stage: the time the orchestrator waited for each call."), "",
             ("| model | requests | executions | mean batch | queue ms | execution ms | busy s | busy % of wall | "
              "cost ms per request | ceiling best ms |"),
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for model, row in sorted((run["triton"] or {}).items()):
        busy = row.get("busy_s")
        lines.append(f"| {model} | {row['requests']} | {row['executions']} | {_fmt(row['mean_batch'])} | "
                     f"{row['queue_ms']:.1f} | {row['compute_infer_ms']:.1f} | {_fmt(busy, 1)} | "
                     f"{_percent(busy / wall if busy is not None and wall else None)} | "
                     f"{_fmt(row.get('cost_ms'), 1)} | {_fmt(best.get(model, {}).get('best_ms') if model != 'gpt_decoder' else None, 1)} |")
    if run.get("stages"):
        lines += ["", "| orchestrator stage | calls | mean ms per call | s per request |", "|---|---:|---:|---:|"]
        for stage, row in sorted(run["stages"].items(), key=lambda item: -item[1]["seconds_per_request"]):
            lines.append(f"| {stage} | {row['calls']} | {row['mean_ms']:.1f} | {row['seconds_per_request']:.3f} |")
    return lines


def holding_back(run: dict[str, Any], ceiling: dict[str, Any] | None) -> str | None:
    """Which Triton model holds a served run back: the one busy the largest share of the run's wall time,
    with its cost per call against the ceiling's best (gpt_decoder's decoding is not in Triton's
    statistics, so it cannot be named here)."""
    rows = {model: row for model, row in (run.get("triton") or {}).items()
            if model != "gpt_decoder" and row.get("busy_s") is not None}
    wall = run.get("wall_s") or 0.0
    if not rows or not wall:
        return None
    model, row = max(rows.items(), key=lambda item: item[1]["busy_s"])
    best = {stage["stage"]: stage for stage in (ceiling or {}).get("stages", [])}.get(model)
    text = f"{model} (busy {100 * row['busy_s'] / wall:.0f} % of the run's wall time, mean batch {_fmt(row['mean_batch'])}"
    if best:
        text += f", {row['cost_ms']:.0f} ms per call against its best {best['best_ms']:.0f} ms at batch {best['best_batch']}"
    return text + ")"


def check_targets(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 9's targets against this report: one row per check and preset (ok None: not measurable here)."""
    checks = []
    for preset, result in report["presets"].items():
        runs = {(run["system"], run["concurrency"]): run for run in result["runs"]}
        ceiling = result.get("ceiling") or {}
        bad = []
        for run in sorted(result["runs"], key=lambda r: (r["concurrency"], r["system"])):
            statuses = _statuses(run)
            served_bad = statuses.get("504", 0) + statuses.get("other", 0) if run["system"] != "eager" else 0
            errors = run.get("server_errors", _server_errors(run))
            if served_bad or errors:
                bad.append(f"{run['system']} c={run['concurrency']}: 504 {statuses.get('504', 0)}, other "
                           f"{statuses.get('other', 0)}, 5xx other than 503 + Retry-After {errors}")
        checks.append({"preset": preset, "check": "no 504, no 5xx but 503 + Retry-After (served: no other failure)",
                       "value": "; ".join(bad) or "none in any run", "ok": not bad})
        served, eager = runs.get(("served", 16)), runs.get(("eager", 16))
        rps = ceiling.get("requests_per_s")
        if served and eager and preset in TARGET_SPEEDUP:
            target = TARGET_SPEEDUP[preset]
            speedup = _ratio(served["throughput_rps"], eager["throughput_rps"])
            value = f"{_fmt(speedup)}x"
            ok = speedup is not None and speedup >= target
            ceiling_speedup = _ratio(rps, eager["throughput_rps"]) if rps else None
            if not ok and ceiling_speedup is not None and ceiling_speedup < target:
                of = served.get("of_ceiling")
                ok = of is not None and of >= CEILING_INSTEAD
                value += (f" (the ceiling is {ceiling_speedup:.2f}x eager, under {target}x: served at {_percent(of)} "
                          f"of the ceiling, target {_percent(CEILING_INSTEAD)})")
            checks.append({"preset": preset, "check": f"served / eager throughput at concurrency 16 >= {target}x",
                           "value": value, "ok": ok})
        if served:
            of = served.get("of_ceiling")
            value = _percent(of)
            if of is not None and of < SERVED_OF_CEILING:
                value += f"; held back by {holding_back(served, ceiling) or '?'}"
            checks.append({"preset": preset, "check": f"served goodput at concurrency 16 >= {_percent(SERVED_OF_CEILING)} "
                           "of the ceiling", "value": value, "ok": None if of is None else of >= SERVED_OF_CEILING})
        heavy = runs.get(("served", 64))
        if served and heavy:
            share = _ratio(heavy["audio_seconds_per_second"], served["audio_seconds_per_second"])
            checks.append({"preset": preset, "check": f"served goodput at concurrency 64 >= {_percent(NO_COLLAPSE)} "
                           "of concurrency 16's", "value": _percent(share),
                           "ok": None if share is None else share >= NO_COLLAPSE})
    return checks


def _checks_markdown(checks: list[dict[str, Any]]) -> list[str]:
    if not checks:
        return []
    lines = ["Issue 9's targets, checked on this run:", "", "| preset | target | measured | met |", "|---|---|---|---|"]
    for row in checks:
        met = {True: "yes", False: "**no**", None: "-"}[row["ok"]]
        lines.append(f"| {row['preset']} | {row['check']} | {row['value']} | {met} |")
    return lines + [""]


def plot(preset: str, runs: list[dict[str, Any]], path: Path, ceiling: dict[str, Any] | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (throughput, latency) = plt.subplots(1, 2, figsize=(10, 4))
    for system, marker in zip(SYSTEMS, ("o", "s", "^"), strict=True):
        mine = sorted((run for run in runs if run["system"] == system), key=lambda run: run["concurrency"])
        if not mine:
            continue
        x = [run["concurrency"] for run in mine]
        throughput.plot(x, [run["throughput_rps"] for run in mine], marker=marker, label=system)
        latency.plot(x, [run["latency_s"]["p95"] for run in mine], marker=marker, label=system)
        for run in mine:
            failed = run["sent"] - run["ok"]
            if failed:
                throughput.annotate(f"{failed} failed", (run["concurrency"], run["throughput_rps"]),
                                    textcoords="offset points", xytext=(4, -12), fontsize=8)
    concurrencies = sorted({run["concurrency"] for run in runs})
    if (ceiling or {}).get("requests_per_s"):
        throughput.axhline(ceiling["requests_per_s"], color="grey", linestyle="--", label="ceiling")
    for axis, title, unit in ((throughput, "throughput", "requests / s"), (latency, "p95 latency", "seconds")):
        axis.set_xscale("log", base=2)
        axis.set_xticks(concurrencies, [str(c) for c in concurrencies])
        axis.set_xlabel("concurrency (requests in flight)")
        axis.set_ylabel(unit)
        axis.set_title(f"{preset}: {title}")
        axis.set_ylim(bottom=0)
        axis.grid(True, alpha=0.3)
        axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def write_report(report: dict[str, Any], out_dir: Path, name: str) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / f"{name}.json", "markdown": out_dir / f"{name}.md"}
    for preset, result in report["presets"].items():
        png = out_dir / f"{name}_{preset}.png"
        plot(preset, result["runs"], png, result.get("ceiling"))
        result["plot"] = png.name
        paths[f"png_{preset}"] = png
    paths["json"].write_text(json.dumps(report, indent=1))
    paths["markdown"].write_text(markdown(report))
    return paths


def versions() -> dict[str, str | None]:
    found = {}
    for package in ("nvidia-pytriton", "tritonclient", "fastapi", "uvicorn", "numpy", "matplotlib"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = None
    return found


NOTES = [
    "## Notes",
    "",
    ("- No GPU in this run: both systems run on the same CPU cores, so batching can only save per-call "
     "overhead there, not fill an idle accelerator. GPU figures need a GPU host (same command)."),
    ("- The weights are random (the presets of `indextts2/presets.py`, and `indextts2/presets_2_5.py` for "
     "demo-2.5): speech is noise, but every shape, "
     "stage and call is the real one, and fixed code counts make the work per request identical."),
    ("- The machine is shared: the load average before and after each run is in the table; runs of the two "
     "systems alternate so that a busy period hurts both."),
    ("- Triton's statistics for the decoupled `gpt_decoder` count its `execute` call (the hand-over to the "
     "decoder engine), not the decoding; the orchestrator's `gpt_decoder` stage time is the whole code stream."),
    ("- The ceiling adds up stages measured one at a time: where a stage leaves cores idle on its own (cores busy "
     "under the machine's count), the served pipeline can overlap it with another and exceed the ceiling (over "
     "100 %). It counts no HTTP, multipart parsing, WAV encoding or orchestrator-side gRPC, and its batches are of "
     "identical requests (no padding)."),
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run_benchmarks", description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["demo", "small"], choices=preset_names(),
                        help="presets of indextts2/presets.py (IndexTTS-2.0) and demo-2.5 (IndexTTS-2.5, "
                             "indextts2/presets_2_5.py); with --checkpoint, the first is the report's label")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--systems", nargs="+", default=["eager", "served"], choices=SYSTEMS,
                        help="direct: the orchestrator's pipeline driven in this process, without HTTP")
    parser.add_argument("--requests", type=int, help="requests per run (default: max(--min-requests, "
                                                     "--requests-per-slot x concurrency))")
    parser.add_argument("--min-requests", type=int, default=12)
    parser.add_argument("--requests-per-slot", type=int, default=3)
    parser.add_argument("--max-run-seconds", type=float, default=300.0, help="no new request after this")
    parser.add_argument("--short-from", type=int, default=64,
                        help="runs at this concurrency and above are short (the two options below)")
    parser.add_argument("--short-requests-per-slot", type=int, default=2)
    parser.add_argument("--short-max-run-seconds", type=float, default=60.0)
    parser.add_argument("--request-timeout", type=float, default=DEFAULT_REQUEST_TIMEOUT_S,
                        help="seconds, both systems: sent as X-Request-Timeout, and the client gives up "
                             f"{CLIENT_GRACE_S:g} s later")
    parser.add_argument("--no-ceiling", action="store_true", help="do not measure the machine's ceiling")
    parser.add_argument("--ceiling-batches", type=int, nargs="+", default=list(DEFAULT_BATCHES),
                        help="batch sizes tried for Triton's batched models")
    parser.add_argument("--ceiling-gpt-batches", type=int, nargs="+", default=list(DEFAULT_GPT_BATCHES),
                        help="concurrent gpt_decoder streams measured (capped at its max_slots)")
    parser.add_argument("--codes", type=int, default=60, help="codes per segment (min = max); 0: free")
    parser.add_argument("--diffusion-steps", type=int, default=25)
    parser.add_argument("--no-stream", action="store_true", help="whole responses (no time to first audio)")
    parser.add_argument("--stream-mode", choices=("segment", "chunk"), default="segment",
                        help="how the served stack streams in the throughput runs: by segment, as the eager "
                             "baseline does (the streaming runs compare the two modes)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--name", default="served_vs_eager", help="file names of the report")
    parser.add_argument("--out-dir", type=Path, default=DEFAULT_OUT_DIR)
    parser.add_argument("--build-dir", type=Path, default=DEFAULT_BUILD_DIR)
    parser.add_argument("--fresh", action="store_true", help="rebuild the checkpoints and repositories")
    parser.add_argument("--checkpoint", type=Path, help="with --triton-grpc-url: benchmark this checkpoint on an "
                                                        "already running Triton serving its repository")
    parser.add_argument("--triton-grpc-url")
    parser.add_argument("--orchestrator-env", nargs="+", default=[], metavar="NAME=VALUE",
                        help="settings for the orchestrator, e.g. TRITON_TIMEOUT_S=300 SEGMENT_CONCURRENCY=1")
    parser.add_argument("--no-streaming", action="store_true", help="skip the streaming runs (benchmarks/streaming.py)")
    parser.add_argument("--only-streaming", action="store_true", help="only the streaming runs")
    parser.add_argument("--streaming-concurrency", type=int, nargs="+", default=list(STREAMING_CONCURRENCY))
    parser.add_argument("--streaming-codes", type=int, default=150,
                        help="codes per segment in the streaming runs (min = max): ~3 s of speech, so that a "
                             "segment is several chunks long")
    parser.add_argument("--from-json", type=Path, help="only write the Markdown and the plots again from this "
                                                       "report (e.g. after changing how they look)")
    args = parser.parse_args(argv)
    if args.from_json:
        report = json.loads(args.from_json.read_text())
        paths = write_report(report, args.out_dir, report["name"])
        say("wrote " + ", ".join(str(path) for path in paths.values()))
        return 0
    if bool(args.checkpoint) != bool(args.triton_grpc_url):
        parser.error("--checkpoint and --triton-grpc-url go together")
    if any("=" not in item for item in args.orchestrator_env):
        parser.error("--orchestrator-env takes NAME=VALUE items")
    orchestrator_env = dict(item.split("=", 1) for item in args.orchestrator_env)
    presets = args.presets[:1] if args.checkpoint else args.presets
    quiet_service_logs()

    plan = RunPlan(
        concurrencies=tuple(args.concurrency), min_requests=args.min_requests,
        requests_per_slot=args.requests_per_slot, fixed_requests=args.requests, max_run_seconds=args.max_run_seconds,
        short_from=args.short_from, short_requests_per_slot=args.short_requests_per_slot,
        short_max_run_seconds=args.short_max_run_seconds, systems=tuple(args.systems),
        controls=SynthesisControls(codes=args.codes or None, diffusion_steps=args.diffusion_steps,
                                   stream=not args.no_stream, stream_mode=args.stream_mode, request_timeout_s=args.request_timeout),
        seed=args.seed, ceiling=not args.no_ceiling, ceiling_batches=tuple(args.ceiling_batches),
        ceiling_gpt_batches=tuple(args.ceiling_gpt_batches),
    )
    started_at = time.perf_counter()
    report: dict[str, Any] = {
        "name": args.name,
        "command": " ".join(["python -m benchmarks.run_benchmarks", *(argv if argv is not None else sys.argv[1:])]),
        "started_utc": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "hardware": {**hardware(), **versions(), "gpu": None},
        "settings": {"presets": presets, "systems": list(plan.systems), "concurrency": list(plan.concurrencies),
                     "controls": plan.controls.__dict__,
                     "requests": {str(c): plan.requests_for(c) for c in plan.concurrencies},
                     "warmup_requests": WARMUP_REQUESTS, "max_run_seconds": plan.max_run_seconds,
                     "max_run_seconds_by_concurrency": {str(c): plan.seconds_for(c) for c in plan.concurrencies},
                     "client_timeout_s": plan.controls.client_timeout_s, "seed": plan.seed,
                     "ceiling": plan.ceiling, "orchestrator_env": orchestrator_env},
        "presets": {},
        "notes": NOTES,
    }
    streaming: dict[str, Any] = {
        "command": report["command"], "started_utc": report["started_utc"], "hardware": report["hardware"],
        "controls": {**plan.controls.__dict__, "codes": args.streaming_codes},
        "concurrency": list(args.streaming_concurrency), "presets": {},
    }
    say(f"benchmark {args.name}: presets {', '.join(presets)}, concurrency {list(plan.concurrencies)}, "
        f"requests per run {report['settings']['requests']}")
    for preset in presets:
        logs = args.build_dir / preset / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        started: list[Any] = []
        try:
            if args.checkpoint:
                checkpoint, triton_url = args.checkpoint, args.triton_grpc_url
            else:
                from local_triton import LocalTritonServer

                checkpoint, repository = build_preset(args.build_dir, preset, args.fresh, say)
                say(f"{preset}: starting tritonserver ...")
                triton = LocalTritonServer(repository, log_path=logs / "tritonserver.log")
                started.append(triton)
                triton.start(timeout_s=300)
                triton_url = triton.grpc_url
            say(f"{preset}: starting the orchestrator and the eager server ...")
            stack = start_services(preset, checkpoint, triton_url, logs, started, orchestrator_env)
            report["triton_version"] = stack.triton_version
            if not args.only_streaming:
                result = run_preset(stack, plan)
                report["presets"][preset] = {"checkpoint": str(checkpoint), "segments": text_segments(checkpoint),
                                             **result}
            if not args.no_streaming:
                streaming["presets"][preset] = asyncio.run(run_streaming(
                    stack, dataclasses.replace(plan.controls, codes=args.streaming_codes), wait_idle, say,
                    tuple(args.streaming_concurrency), seed=plan.seed))
        finally:
            for service in reversed(started):
                service.stop()
    report["finished_utc"] = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    report["wall_s"] = round(time.perf_counter() - started_at, 1)
    if streaming["presets"]:
        streaming["finished_utc"] = report["finished_utc"]
        args.out_dir.mkdir(parents=True, exist_ok=True)
        (args.out_dir / "streaming.json").write_text(json.dumps(streaming, indent=1) + "\n")
        (args.out_dir / "streaming.md").write_text(streaming_markdown(streaming))
        say(f"wrote {args.out_dir / 'streaming.md'}")
        for preset, result in streaming["presets"].items():
            for row in check_streaming_targets(preset, result["ratios"]):
                say(f"target {preset}: {row['check']}: {row['value']} -> "
                    f"{ {True: 'met', False: 'NOT met', None: '-'}[row['ok']] }")
    if args.only_streaming:
        return 0
    paths = write_report(report, args.out_dir, args.name)
    say(f"done in {report['wall_s'] / 60:.1f} min: " + ", ".join(str(path) for path in paths.values()))
    for preset, result in report["presets"].items():
        for row in result["ratios"]:
            say(f"{preset} c={row['concurrency']}: served/eager throughput {_fmt(row['throughput'])}x, "
                f"latency p50 {_fmt(row['latency_p50'])}x, p95 {_fmt(row['latency_p95'])}x, "
                f"RTF p50 {_fmt(row['rtf_p50'])}x; of ceiling: served {_percent(row['served_of_ceiling'])}, "
                f"eager {_percent(row['eager_of_ceiling'])}")
    for row in check_targets(report):
        say(f"target {row['preset']}: {row['check']}: {row['value']} -> "
            f"{ {True: 'met', False: 'NOT met', None: '-'}[row['ok']] }")
    return 0


if __name__ == "__main__":
    sys.exit(main())
