"""Streaming side by side: the served stack streaming in chunks, the served stack streaming by segment,
and the eager baseline streaming by segment (infer_v2's `stream_return`), on the same kind of requests,
closed loop. Run by `make bench` (benchmarks.run_benchmarks) after the throughput runs of each preset;
`--only-streaming` runs just this.

Reported per run: time to first audio (TTFA, to the first byte after the WAV header) p50/p95, latency,
throughput (successful audio seconds per wall second), outcomes; per preset the ratios chunked /
segment (issue 11's targets: TTFA p50 at most 0.35x at concurrency 1 and 0.5x at 16 on `small`, with
throughput within 10%); and how far chunked audio is from the whole-segment audio of the same request
and seed (mel L1 and log-spectral distance): a measurement of the difference, not of quality, since
the presets' weights are random.

Each system gets requests of its own (same texts and reference lengths, other voices and seeds), so that
no run finds its voices in the orchestrator's conditioning cache.
"""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Callable
from typing import Any

import httpx
import numpy as np
import soundfile

from benchmarks.loadgen import HttpTarget, SynthesisControls, build_requests, describe, run_load, warm_up

# system -> (which service, stream_mode sent)
STREAM_SYSTEMS = {"served_chunk": ("served", "chunk"), "served_segment": ("served", "segment"),
                  "eager_segment": ("eager", None)}
DEFAULT_CONCURRENCY = (1, 4, 16)
TTFA_TARGETS = {1: 0.35, 16: 0.5}  # chunked / segment TTFA p50, on `small`
THROUGHPUT_WITHIN = 0.10
DISTANCE_REQUESTS = 3


def _requests_for(concurrency: int) -> int:
    return max(6, 2 * concurrency)


async def run_streaming(stack: Any, controls: SynthesisControls, wait_idle: Callable, progress: Callable[[str], None],
                        concurrencies: tuple[int, ...] = DEFAULT_CONCURRENCY, seed: int = 0,
                        max_run_seconds: float = 300.0) -> dict[str, Any]:
    """The three systems at each concurrency (which goes first rotates), then the chunked/whole distance."""
    targets = {service: HttpTarget(stack.urls[service]) for service in ("served", "eager")}
    runs: list[dict[str, Any]] = []
    try:
        for service, mode in STREAM_SYSTEMS.values():
            await warm_up(targets[service], build_requests(2, seed=seed + 777),
                          dataclasses.replace(controls, stream=True, stream_mode=mode))
        systems = list(STREAM_SYSTEMS)
        for step, concurrency in enumerate(concurrencies):
            order = systems[step % len(systems):] + systems[:step % len(systems)]
            for system in order:
                service, mode = STREAM_SYSTEMS[system]
                requests = build_requests(_requests_for(concurrency),
                                          seed=seed + 50_000 + 1000 * step + 100 * systems.index(system))
                await wait_idle(stack.urls)
                progress(f"{stack.preset}: streaming {system}, concurrency {concurrency}, {len(requests)} requests ...")
                result = await run_load(targets[service], requests,
                                        dataclasses.replace(controls, stream=True, stream_mode=mode),
                                        concurrency=concurrency, duration_s=max_run_seconds, seed=seed)
                progress(f"{stack.preset}: streaming {system} {describe(result)}")
                row = result.to_dict()
                row.pop("records", None)
                runs.append({"system": system, "concurrency": concurrency, **row})
    finally:
        for target in targets.values():
            await target.close()
    progress(f"{stack.preset}: distance of chunked to whole-segment audio ({DISTANCE_REQUESTS} requests) ...")
    distances = await chunked_distances(stack.urls["served"], controls, stack.checkpoint_dir, seed)
    return {"runs": runs, "ratios": streaming_ratios(runs), "distances": distances}


def streaming_ratios(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per concurrency: chunked / segment TTFA p50 and p95 and throughput, and the eager baseline's TTFA."""
    by_key = {(run["system"], run["concurrency"]): run for run in runs}
    rows = []
    for concurrency in sorted({run["concurrency"] for run in runs}):
        chunk, segment = by_key.get(("served_chunk", concurrency)), by_key.get(("served_segment", concurrency))
        eager = by_key.get(("eager_segment", concurrency))
        if chunk is None or segment is None:
            continue

        def ttfa(run, point):
            return (run or {}).get("ttfa_s", None) and run["ttfa_s"].get(point)

        def ratio(a, b):
            return a / b if a is not None and b else None

        rows.append({
            "concurrency": concurrency,
            "ttfa_p50": ratio(ttfa(chunk, "p50"), ttfa(segment, "p50")),
            "ttfa_p95": ratio(ttfa(chunk, "p95"), ttfa(segment, "p95")),
            "ttfa_p50_vs_eager": ratio(ttfa(chunk, "p50"), ttfa(eager, "p50")),
            "throughput": ratio(chunk["audio_seconds_per_second"], segment["audio_seconds_per_second"]),
        })
    return rows


async def chunked_distances(url: str, controls: SynthesisControls, checkpoint_dir: Any, seed: int) -> dict[str, Any]:
    """The same requests (voice, text, seed) rendered whole and streamed in chunks: mel L1 (mean absolute
    difference of the log mel, the s2mel features) and log-spectral distance (dB) of the two waveforms."""
    from indextts2.config import load_config
    from indextts2.frontend.audio import mel_spectrogram, s2mel_mel_args

    mel_args = s2mel_mel_args(load_config(checkpoint_dir / "config.yaml")["s2mel"])
    rows = []
    async with httpx.AsyncClient(timeout=600) as client:
        for request in build_requests(DISTANCE_REQUESTS, seed=seed + 90_000):
            audio = {}
            for mode in ("whole", "chunk"):
                fields = dataclasses.replace(controls, stream=mode == "chunk",
                                             stream_mode="chunk" if mode == "chunk" else None).form(request)
                response = await client.post(f"{url}/v1/tts", data=fields,
                                             files={"speaker_audio": ("voice.wav", request.speaker_wav, "audio/wav")})
                response.raise_for_status()
                audio[mode], _ = soundfile.read(io.BytesIO(response.content), dtype="float32")
            whole, chunk = audio["whole"], audio["chunk"]
            length = min(whole.shape[0], chunk.shape[0])
            mel_whole = mel_spectrogram(whole[:length], **mel_args)
            mel_chunk = mel_spectrogram(chunk[:length], **mel_args)
            rows.append({"text_kind": request.text_kind, "reference_s": request.reference_seconds,
                         "samples_whole": int(whole.shape[0]), "samples_chunk": int(chunk.shape[0]),
                         "mel_l1": float(np.mean(np.abs(mel_whole - mel_chunk))),
                         "log_spectral_distance_db": log_spectral_distance(whole[:length], chunk[:length])})
    return {"requests": rows,
            "mel_l1_mean": float(np.mean([row["mel_l1"] for row in rows])),
            "log_spectral_distance_db_mean": float(np.mean([row["log_spectral_distance_db"] for row in rows]))}


def log_spectral_distance(a: np.ndarray, b: np.ndarray, n_fft: int = 1024, hop: int = 256) -> float:
    """Mean over frames of sqrt(mean over bins of (10 log10 |A|^2 - 10 log10 |B|^2)^2), in dB."""
    def power_db(x: np.ndarray) -> np.ndarray:
        frames = max(1, 1 + (x.shape[0] - n_fft) // hop)
        padded = np.pad(x, (0, max(0, n_fft - x.shape[0])))
        index = np.arange(n_fft)[None, :] + hop * np.arange(frames)[:, None]
        spectrum = np.fft.rfft(padded[index] * np.hanning(n_fft)[None, :], axis=1)
        return 10.0 * np.log10(np.abs(spectrum) ** 2 + 1e-10)

    difference = power_db(a) - power_db(b)
    return float(np.mean(np.sqrt(np.mean(difference ** 2, axis=1))))


def check_streaming_targets(preset: str, ratios: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Issue 11's targets, on `small` (other presets are reported, not checked)."""
    checks = []
    if preset != "small":
        return checks
    by_concurrency = {row["concurrency"]: row for row in ratios}
    for concurrency, limit in TTFA_TARGETS.items():
        row = by_concurrency.get(concurrency)
        value = row and row["ttfa_p50"]
        checks.append({"preset": preset, "check": f"chunked/segment TTFA p50 at c={concurrency} <= {limit}",
                       "value": None if value is None else round(value, 3),
                       "ok": None if value is None else value <= limit})
        throughput = row and row["throughput"]
        checks.append({"preset": preset, "check": f"chunked/segment throughput at c={concurrency} >= "
                                                   f"{1 - THROUGHPUT_WITHIN:.2f}",
                       "value": None if throughput is None else round(throughput, 3),
                       "ok": None if throughput is None else throughput >= 1 - THROUGHPUT_WITHIN})
    return checks


def streaming_markdown(report: dict[str, Any]) -> str:
    def fmt(value: Any, digits: int = 2) -> str:
        return "-" if value is None else f"{value:.{digits}f}"

    hw = report["hardware"]
    lines = [
        "# Streaming: chunked vs by segment vs the eager baseline",
        "",
        f"`{report['command']}`, {report['started_utc']} to {report['finished_utc']}.",
        (f"Hardware: {hw.get('cpu_model')} ({hw.get('cpu_cores')} cores), no GPU. Controls: "
        f"{ {k: v for k, v in report['controls'].items() if k != 'stream_mode'} } (stream_mode per system). "
        f"Chunk settings: the orchestrator's defaults (STREAM_CHUNK_CODES, STREAM_CONTEXT_CODES, "
        f"STREAM_PROMPT_SECONDS); segment streaming with STREAM_FIRST_SEGMENT_TOKENS at its default (off)."),
        "",
    ]
    for preset, result in report["presets"].items():
        lines += [f"## {preset}", "",
                  "| concurrency | system | ok / sent | TTFA p50 (s) | TTFA p95 (s) | latency p50 (s) | audio s/s |",
                  "|---|---|---|---|---|---|---|"]
        for run in result["runs"]:
            ttfa = run.get("ttfa_s") or {}
            lines.append(f"| {run['concurrency']} | {run['system']} | {run['ok']} / {run['sent']} | "
                         f"{fmt(ttfa.get('p50'))} | {fmt(ttfa.get('p95'))} | {fmt(run['latency_s'].get('p50'))} | "
                         f"{fmt(run['audio_seconds_per_second'], 3)} |")
        lines += ["", ("| concurrency | chunked / segment TTFA p50 | p95 | chunked / eager TTFA p50 | "
                      "chunked / segment throughput |"), "|---|---|---|---|---|"]
        for row in result["ratios"]:
            lines.append(f"| {row['concurrency']} | {fmt(row['ttfa_p50'])} | {fmt(row['ttfa_p95'])} | "
                         f"{fmt(row['ttfa_p50_vs_eager'])} | {fmt(row['throughput'])} |")
        distances = result["distances"]
        lines += ["", (f"Chunked vs whole-segment audio, same request and seed ({len(distances['requests'])} "
                      f"requests): mel L1 {distances['mel_l1_mean']:.3f} (log mel), log-spectral distance "
                      f"{distances['log_spectral_distance_db_mean']:.2f} dB. Random weights: a measure of the "
                      "difference, not of quality."), ""]
        checks = check_streaming_targets(preset, result["ratios"])
        if checks:
            lines += ["| target | value | met |", "|---|---|---|"]
            lines += [f"| {c['check']} | {c['value']} | {'yes' if c['ok'] else 'NO' if c['ok'] is False else '-'} |"
                      for c in checks]
            lines.append("")
    return "\n".join(lines) + "\n"
