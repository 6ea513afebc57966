"""The served stack against the eager baseline, side by side, with the same weights and the same
requests: `make bench`.

    .venv/bin/python -m benchmarks.run_benchmarks                        # demo + small, c = 1, 4, 16
    .venv/bin/python -m benchmarks.run_benchmarks --presets small --concurrency 1 8 --codes 100
    .venv/bin/python -m benchmarks.run_benchmarks --checkpoint DIR --triton-grpc-url HOST:PORT   # a running Triton

For each preset (`indextts2.presets`: random checkpoints in the official layout):
1. writes the checkpoint and exports its model repository into build/bench/<preset>/ (reused while the
   sources are unchanged, as `make serve` does);
2. starts, on loopback, the local tritonserver on that repository, the orchestrator (`python -m
   orchestrator`, Sentry off) against it, and the eager baseline (`python -m benchmarks.eager_server`)
   on the same checkpoint;
3. warms both up, then for each concurrency runs the baseline and the served stack one after the other
   (which goes first alternates), closed loop, on the same seeded requests (`benchmarks.loadgen`);
4. stops what it started.

Then writes `<out-dir>/<name>.json` (every run, every request, Triton's per-model statistics, the
orchestrator's stage times, the hardware), `<name>.md` (tables with the ratios served / baseline) and
`<name>_<preset>.png` (throughput and p95 latency against concurrency).

Defaults (a full run is ~15 minutes on a 2-core CPU): every segment has exactly 60 codes (`--codes`,
min_codes = max_codes: ~1.2 s of speech, whatever the random weights would sample), 25 diffusion steps
(the official default), streamed responses (so time to first audio is measured too), and per run
max(12, 3 x concurrency) requests, capped at 300 s.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import httpx

from benchmarks.export_official_size import hardware
from benchmarks.loadgen import (
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
from orchestrator.settings import Settings

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT_DIR = REPO_ROOT / "benchmarks" / "results"
DEFAULT_BUILD_DIR = REPO_ROOT / "build" / "bench"
SYSTEMS = ("eager", "served", "direct")
WARMUP_REQUESTS = 2
Progress = Callable[[str], None]


def say(line: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {line}", flush=True)


# --- building and serving ---------------------------------------------------------------------------


def build_preset(build_dir: Path, preset: str, fresh: bool, progress: Progress) -> tuple[Path, Path]:
    """(checkpoint_dir, model_repository) of a preset in build_dir/<preset>, reused when its stamp (the
    sources `make serve` stamps, plus the preset's name) is unchanged."""
    from export.repository import export_repository
    from indextts2.presets import PRESETS, write_random_checkpoint
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
    paths, _ = write_random_checkpoint(checkpoint, PRESETS[preset])
    export_repository(paths, repository, progress=lambda line: None)
    stamp_file.write_text(stamp)
    progress(f"{preset}: built in {time.perf_counter() - started:.0f} s")
    return checkpoint, repository


class ServiceProcess:
    """A service in a child process of ours, ready once `health_url` answers 200."""

    def __init__(self, name: str, command: list[str], env: dict[str, str], log_path: Path, health_url: str) -> None:
        self.name, self.command, self.env, self.log_path, self.health_url = name, command, env, log_path, health_url
        self.process: subprocess.Popen | None = None

    def start(self, timeout_s: float = 180.0) -> ServiceProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(self.command, env=self.env, cwd=REPO_ROOT, stdout=log,
                                            stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}; log {self.log_path}:\n"
                                   + self.log_path.read_text(errors="replace")[-3000:])
            try:
                if httpx.get(self.health_url, timeout=2.0).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"{self.name} was not ready within {timeout_s:.0f} s; log {self.log_path}")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


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
    concurrencies: tuple[int, ...] = (1, 4, 16)
    min_requests: int = 12
    requests_per_slot: int = 3
    fixed_requests: int | None = None  # overrides the two above
    systems: tuple[str, ...] = ("eager", "served")  # "direct": the orchestrator's pipeline without HTTP
    max_run_seconds: float = 300.0
    controls: SynthesisControls = field(default_factory=lambda: SynthesisControls(codes=60, stream=True))
    seed: int = 0

    def requests_for(self, concurrency: int) -> int:
        if self.fixed_requests is not None:
            return self.fixed_requests
        return max(self.min_requests, self.requests_per_slot * concurrency)


def run_preset(stack: Stack, plan: RunPlan, progress: Progress = say) -> dict[str, Any]:
    """Warm-up, then per concurrency the systems back to back (which goes first alternates) on the same
    requests. Each concurrency gets requests of its own (new voices), so that the orchestrator's
    conditioning cache never serves a voice a previous run brought. Returns {"runs", "ratios"}."""
    warmup = build_requests(WARMUP_REQUESTS, seed=plan.seed + 999)

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
                    progress(f"{stack.preset}: {system}, concurrency {concurrency}, {count} requests ...")
                    result = await run_load(
                        targets[system], requests, plan.controls, concurrency=concurrency,
                        duration_s=plan.max_run_seconds, seed=plan.seed,
                        triton_grpc_url=stack.triton_grpc_url if system != "eager" else None,
                    )
                    progress(f"{stack.preset}: {system} {describe(result)}")
                    runs.append({"system": system, "preset": stack.preset, **result.to_dict()})
        finally:
            for target in targets.values():
                await target.close()
        return runs

    runs = asyncio.run(run_all())
    return {"runs": runs, "ratios": ratios(runs)}


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
            "latency_p50": _ratio(served["latency_s"]["p50"], eager["latency_s"]["p50"]),
            "latency_p95": _ratio(served["latency_s"]["p95"], eager["latency_s"]["p95"]),
            "rtf_mean": _ratio(served["rtf"]["mean"], eager["rtf"]["mean"]),
            "rtf_p50": _ratio(served["rtf"]["p50"], eager["rtf"]["p50"]),
            "ttfa_p50": _ratio(*ttfa),
        })
    return table


def text_segments(checkpoint_dir: Path) -> dict[str, int]:
    """How many segments each text of the request set makes with this checkpoint's BPE."""
    from orchestrator.assets import ModelAssets

    assets = ModelAssets.load(checkpoint_dir)
    return {kind: len(assets.text_frontend.split_segments(text, assets.max_text_tokens)) for kind, text in TEXTS.items()}


# --- the report -----------------------------------------------------------------------------------


def _fmt(value: Any, digits: int = 2, suffix: str = "") -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}f}{suffix}"


def markdown(report: dict[str, Any]) -> str:
    hw, settings = report["hardware"], report["settings"]
    controls = settings["controls"]
    requests = ", ".join(f"{count} at concurrency {c}" for c, count in settings["requests"].items())
    stream = "streamed responses" if controls["stream"] else "whole responses"
    defaults = Settings()
    overrides = ", ".join(f"{name}={value}" for name, value in settings.get("orchestrator_env", {}).items()) or (
        f"the defaults (TRITON_TIMEOUT_S {defaults.triton_timeout_s:g} s per stage call, SEGMENT_CONCURRENCY "
        f"{defaults.segment_concurrency})")
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
         "sequence in PyTorch, GPT batch 1, the official second GPT pass for the latents."),
        ("- **served**: the orchestrator (FastAPI) over gRPC to tritonserver: ONNX stages with dynamic batching, "
         "`gpt_decoder` with continuous batching, `s2mel` batched; conditioning computed per request."),
        ("- **direct** (where run): the orchestrator's pipeline code driving Triton from the load generator's "
         "process, without HTTP."),
        "",
        (f"Closed loop, the same seeded requests for every system at a concurrency, {stream}. Every segment has "
         f"exactly {controls['codes']} codes (min_codes = max_codes), {controls['diffusion_steps']} diffusion "
         "steps. Texts of 3 lengths x reference audio of 3, 6 and 10 s, a new voice per request (the "
         f"orchestrator's conditioning cache never hits). Requests per run: {requests}; "
         f"{settings['warmup_requests']} warm-up requests per system first. Orchestrator settings: {overrides}. "
         "Latency is to the last byte (successful requests); RTF = a request's latency / its audio duration; "
         "TTFA = time to the first audio byte after the WAV header."),
        "",
    ]
    for preset, result in report["presets"].items():
        segments = ", ".join(f"{kind} {count}" for kind, count in result.get("segments", {}).items())
        lines += [f"## {preset}", "",
                  f"Checkpoint: {result['checkpoint']}; text segments per request: {segments}; plot `{result['plot']}`.",
                  ""]
        lines += ["Served / eager (throughput: above 1 is better; latency, RTF, TTFA: below 1 is better):", "",
                  "| concurrency | throughput | latency p50 | latency p95 | RTF mean | RTF p50 | TTFA p50 |",
                  "|---:|---:|---:|---:|---:|---:|---:|"]
        for row in result["ratios"]:
            lines.append(f"| {row['concurrency']} | {_fmt(row['throughput'], suffix='x')} | "
                         f"{_fmt(row['latency_p50'], suffix='x')} | {_fmt(row['latency_p95'], suffix='x')} | "
                         f"{_fmt(row['rtf_mean'], suffix='x')} | {_fmt(row['rtf_p50'], suffix='x')} | "
                         f"{_fmt(row['ttfa_p50'], suffix='x')} |")
        lines += ["", ("| concurrency | system | ok / sent | errors | req/s | audio s/s | RTF mean | RTF p50 | "
                      "latency p50 (s) | p95 | p99 | TTFA p50 (s) | load avg |"),
                  "|---:|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
        for run in sorted(result["runs"], key=lambda r: (r["concurrency"], r["system"])):
            errors = ", ".join(f"{kind}: {count}" for kind, count in run["errors"].items()) or "-"
            load = run["load_average"]
            lines.append(
                f"| {run['concurrency']} | {run['system']} | {run['ok']} / {run['sent']} | {errors} | "
                f"{run['throughput_rps']:.3f} | {run['audio_seconds_per_second']:.3f} | {_fmt(run['rtf']['mean'])} | "
                f"{_fmt(run['rtf']['p50'])} | {_fmt(run['latency_s']['p50'])} | {_fmt(run['latency_s']['p95'])} | "
                f"{_fmt(run['latency_s']['p99'])} | {_fmt((run['ttfa_s'] or {}).get('p50'))} | "
                f"{_fmt((load['before'] or [None])[0], 1)} -> {_fmt((load['after'] or [None])[0], 1)} |")
        served = sorted((run for run in result["runs"] if run["system"] == "served"), key=lambda r: r["concurrency"])
        for run in served[:1] + served[1:][-1:]:  # the lowest and the highest concurrency
            lines += _served_breakdown(run)
        lines.append("")
    lines += report.get("notes", [])
    return "\n".join(lines) + "\n"


def _served_breakdown(run: dict[str, Any]) -> list[str]:
    lines = ["", (f"Served, concurrency {run['concurrency']}, per Triton model (its statistics over the run): "
                  "queue ms and execution ms are per request (the execution it was part of), busy s the time the "
                  "model spent executing, cost ms that divided by the requests. Then per orchestrator stage: the "
                  "time the orchestrator waited for each call."), "",
             "| model | requests | executions | mean batch | queue ms | execution ms | busy s | cost ms per request |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for model, row in sorted((run["triton"] or {}).items()):
        lines.append(f"| {model} | {row['requests']} | {row['executions']} | {_fmt(row['mean_batch'])} | "
                     f"{row['queue_ms']:.1f} | {row['compute_infer_ms']:.1f} | {_fmt(row.get('busy_s'), 1)} | "
                     f"{_fmt(row.get('cost_ms'), 1)} |")
    if run.get("stages"):
        lines += ["", "| orchestrator stage | calls | mean ms per call | s per request |", "|---|---:|---:|---:|"]
        for stage, row in sorted(run["stages"].items(), key=lambda item: -item[1]["seconds_per_request"]):
            lines.append(f"| {stage} | {row['calls']} | {row['mean_ms']:.1f} | {row['seconds_per_request']:.3f} |")
    return lines


def plot(preset: str, runs: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (throughput, latency) = plt.subplots(1, 2, figsize=(10, 4))
    for system, marker in zip(SYSTEMS, ("o", "s", "^")):
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
        plot(preset, result["runs"], png)
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
    ("- The weights are random (the presets of `indextts2/presets.py`): speech is noise, but every shape, "
     "stage and call is the real one, and fixed code counts make the work per request identical."),
    ("- The machine is shared: the load average before and after each run is in the table; runs of the two "
     "systems alternate so that a busy period hurts both."),
    ("- Triton's statistics for the decoupled `gpt_decoder` count its `execute` call (the hand-over to the "
     "decoder engine), not the decoding; the orchestrator's `gpt_decoder` stage time is the whole code stream."),
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run_benchmarks", description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["demo", "small"], help="presets of indextts2/presets.py")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--systems", nargs="+", default=["eager", "served"], choices=SYSTEMS,
                        help="direct: the orchestrator's pipeline driven in this process, without HTTP")
    parser.add_argument("--requests", type=int, help="requests per run (default: max(--min-requests, "
                                                     "--requests-per-slot x concurrency))")
    parser.add_argument("--min-requests", type=int, default=12)
    parser.add_argument("--requests-per-slot", type=int, default=3)
    parser.add_argument("--max-run-seconds", type=float, default=300.0, help="no new request after this")
    parser.add_argument("--codes", type=int, default=60, help="codes per segment (min = max); 0: free")
    parser.add_argument("--diffusion-steps", type=int, default=25)
    parser.add_argument("--no-stream", action="store_true", help="whole responses (no time to first audio)")
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
        systems=tuple(args.systems),
        controls=SynthesisControls(codes=args.codes or None, diffusion_steps=args.diffusion_steps,
                                   stream=not args.no_stream),
        seed=args.seed,
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
                     "warmup_requests": WARMUP_REQUESTS, "max_run_seconds": plan.max_run_seconds, "seed": plan.seed,
                     "orchestrator_env": orchestrator_env},
        "presets": {},
        "notes": NOTES,
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
            result = run_preset(stack, plan)
            report["presets"][preset] = {"checkpoint": str(checkpoint), "segments": text_segments(checkpoint),
                                         **result}
        finally:
            for service in reversed(started):
                service.stop()
    report["finished_utc"] = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    report["wall_s"] = round(time.perf_counter() - started_at, 1)
    paths = write_report(report, args.out_dir, args.name)
    say(f"done in {report['wall_s'] / 60:.1f} min: " + ", ".join(str(path) for path in paths.values()))
    for preset, result in report["presets"].items():
        for row in result["ratios"]:
            say(f"{preset} c={row['concurrency']}: served/eager throughput {_fmt(row['throughput'])}x, "
                f"latency p50 {_fmt(row['latency_p50'])}x, p95 {_fmt(row['latency_p95'])}x, "
                f"RTF p50 {_fmt(row['rtf_p50'])}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
