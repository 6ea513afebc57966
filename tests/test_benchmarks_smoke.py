"""benchmarks/run_benchmarks.py end to end, tiny: the demo checkpoint on the session's tritonserver, the
orchestrator and the eager baseline started by the script, concurrency 1 and 2, three requests per run
(one per text length) of a few codes and diffusion steps, and the machine's ceiling measured with small
batches. Checks that the JSON and Markdown reports are complete and well formed (outcomes 200 / 503 / 504 /
other, goodput, the ceiling and its breakdown, the targets) and that the plot is a PNG; speed is not
checked. Without Triton: the load generator's handling of 503 + Retry-After, 504, other failures and its
client timeout against a scripted HTTP server, and the target checks on a made-up report."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator

import httpx
import numpy as np
import pytest
import yaml
from tiny_benchmark import CODES, CONCURRENCY, REQUESTS, run_tiny_benchmark

from benchmarks import loadgen
from benchmarks.loadgen import TEXTS, HttpTarget, SynthesisControls, build_requests, run_load
from benchmarks.run_benchmarks import annotate_runs, check_targets, markdown, text_segments
from indextts2.defaults import MAX_TEXT_TOKENS_PER_SEGMENT, MEL_HOP_SAMPLES, OUTPUT_SAMPLE_RATE
from indextts2.rules import segment_silence, target_mel_frames
from orchestrator.assets import ModelAssets


@pytest.fixture(scope="module")
def tiny_run(triton_server, demo_checkpoint, tmp_path_factory) -> dict:
    run = run_tiny_benchmark(demo_checkpoint.model_dir, triton_server.grpc_url, "demo", "smoke",
                             tmp_path_factory.mktemp("bench_smoke"),
                             "--streaming-concurrency", "2", "--streaming-codes", "40")
    run["streaming"] = json.loads((run["results"] / "streaming.json").read_text())
    run["streaming_markdown"] = (run["results"] / "streaming.md").read_text()
    return run


def test_json_report_has_every_run_with_its_figures(tiny_run):
    report = tiny_run["report"]
    assert report["hardware"]["cpu_cores"] and report["hardware"]["gpu"] is None
    assert report["settings"]["controls"] == {"codes": CODES, "diffusion_steps": 2, "stream": True,
                                              "stream_mode": "segment", "request_timeout_s": 120.0}
    assert report["settings"]["client_timeout_s"] == 125.0
    runs = report["presets"]["demo"]["runs"]
    assert sorted((run["system"], run["concurrency"]) for run in runs) == [
        (system, c) for system in ("eager", "served") for c in CONCURRENCY
    ]
    for run in runs:
        assert run["sent"] == run["ok"] == run["requests"] == REQUESTS and run["errors"] == {}
        assert run["statuses"] == {"200": REQUESTS, "503": 0, "504": 0, "other": 0} and run["server_errors"] == 0
        assert run["throughput_rps"] > 0 and run["audio_seconds_per_second"] > 0 and run["of_ceiling"] > 0
        assert 0 < run["latency_s"]["p50"] <= run["latency_s"]["p95"] <= run["latency_s"]["p99"]
        assert run["rtf"]["mean"] > 0 and run["ttfa_s"]["p50"] > 0
        assert len(run["records"]) == REQUESTS and all(record["audio_s"] > 0 for record in run["records"])
        assert all(record["outcome"] == "200" and record["status"] == 200 for record in run["records"])
        if run["system"] == "served":
            # Triton's own statistics and the orchestrator's stage times cover the run's requests.
            assert run["triton"]["gpt_decoder"]["requests"] >= REQUESTS
            assert run["triton"]["s2mel"]["compute_infer_ms"] > 0 and run["triton"]["s2mel"]["busy_s"] > 0
            assert run["stages"]["gpt_decoder"]["calls"] >= REQUESTS
        else:
            assert run["triton"] is None and run["stages"] is None
    ratios = report["presets"]["demo"]["ratios"]
    assert [row["concurrency"] for row in ratios] == CONCURRENCY
    assert all(row["throughput"] > 0 and row["latency_p95"] > 0 for row in ratios)
    assert all(row["served_of_ceiling"] > 0 and row["eager_of_ceiling"] > 0 for row in ratios)


def test_ceiling_has_every_stage_at_batch_1_and_its_best_batch(tiny_run):
    ceiling = tiny_run["report"]["presets"]["demo"]["ceiling"]
    assert "error" not in ceiling, ceiling
    stages = {row["stage"]: row for row in ceiling["stages"]}
    assert set(stages) == {"text_frontend", "audio_decode", "features", "semantic_encoder", "semantic_codec",
                           "length_regulator", "campplus", "speaker_conditioner", "emotion_conditioner",
                           "gpt_decoder", "s2mel", "vocoder"}
    # One request per text length: 1, 1 and 3 segments.
    assert ceiling["segments_per_request"] == pytest.approx(5 / 3, abs=1e-3)
    assert stages["s2mel"]["calls_per_request"] == stages["gpt_decoder"]["calls_per_request"] == pytest.approx(5 / 3, abs=1e-3)
    # Each request's own speaker audio: its prompt, and the same audio read as the emotion reference.
    assert stages["semantic_encoder"]["calls_per_request"] == stages["emotion_conditioner"]["calls_per_request"] == 2.0
    for row in stages.values():
        assert 0 < row["best_ms"] <= row["batch1_ms"] + 1e-6, row
        assert row["ms_per_request"] == pytest.approx(row["best_ms"] * row["calls_per_request"], rel=1e-3)
    for model in ("semantic_encoder", "s2mel", "vocoder"):  # per reference duration, batches 1 and 2 tried
        assert set(stages[model]["per_reference_s"]) == {"3", "6", "10"}
        assert all("1" in value["batches"] for value in stages[model]["per_reference_s"].values())
    assert set(stages["gpt_decoder"]["batches"]) == {"1", "4"}
    assert all(value["ms_per_code"] > 0 for value in stages["gpt_decoder"]["batches"].values())
    total = sum(row["ms_per_request"] for row in stages.values())
    assert ceiling["ms_per_request"] == pytest.approx(total, rel=1e-3)
    assert ceiling["requests_per_s"] == pytest.approx(1000 / total, rel=1e-3)
    assert ceiling["audio_s_per_s"] == pytest.approx(ceiling["requests_per_s"] * ceiling["audio_s_per_request"], rel=1e-3)
    assert ceiling["batch1_requests_per_s"] <= ceiling["requests_per_s"]


def test_fixed_code_count_gives_every_request_its_exact_audio_length_on_both_systems(tiny_run):
    # min_codes = max_codes = 6: each segment is round(6 x 1.72) mel frames of 256 samples, whatever the
    # random GPT would sample; segments are joined with 200 ms of silence.
    segments = tiny_run["report"]["presets"]["demo"]["segments"]
    for run in tiny_run["report"]["presets"]["demo"]["runs"]:
        for record in (record for record in run["records"] if record["outcome"] == "200"):
            count = segments[record["text_kind"]]
            expected = (count * target_mel_frames(CODES) * MEL_HOP_SAMPLES
                        + (count - 1) * segment_silence().shape[0]) / OUTPUT_SAMPLE_RATE
            assert abs(record["audio_s"] - expected) < 1e-3, (run["system"], record)


def test_markdown_report_has_the_ratio_and_run_tables(tiny_run):
    markdown = tiny_run["markdown"]
    assert markdown.startswith("# IndexTTS-2: served stack vs eager baseline")
    assert "**no GPU**" in markdown and "## demo" in markdown
    assert ("| concurrency | throughput | goodput | latency p50 | latency p95 | RTF mean | RTF p50 | TTFA p50 | "
            "served of ceiling | eager of ceiling |") in markdown
    assert "| concurrency | system | requests | 200 | 503 | 504 | other | errors | req/s | goodput (audio s/s) |" in markdown
    for c in CONCURRENCY:
        assert f"| {c} | eager | {REQUESTS} | {REQUESTS} | 0 | 0 | 0 | - |" in markdown
        assert f"| {c} | served | {REQUESTS} | {REQUESTS} | 0 | 0 | 0 | - |" in markdown
    assert "**Ceiling: " in markdown and "| stage | measured as | calls per request | batch 1 ms |" in markdown
    assert "Request timeout, the same for both systems: 120 s" in markdown
    assert "| demo | no 504, no 5xx but 503 + Retry-After (served: no other failure) | none in any run | yes |" in markdown
    assert "| gpt_decoder |" in markdown and "smoke_demo.png" in markdown


def test_streaming_report_has_the_three_systems_their_ttfa_and_the_chunked_distance(tiny_run):
    """Chunked and by-segment streaming from the orchestrator and the eager baseline's by-segment streaming,
    each with a time to first audio; the chunked audio's distance to the whole-segment audio."""
    result = tiny_run["streaming"]["presets"]["demo"]
    runs = {run["system"]: run for run in result["runs"]}
    assert set(runs) == {"served_chunk", "served_segment", "eager_segment"}
    for run in runs.values():
        assert run["concurrency"] == 2 and run["ok"] == run["sent"] > 0
        assert 0 < run["ttfa_s"]["p50"] <= run["ttfa_s"]["p95"] <= run["latency_s"]["p95"]
    (ratio,) = result["ratios"]
    assert ratio["ttfa_p50"] > 0 and ratio["throughput"] > 0
    distances = result["distances"]
    for row in distances["requests"]:
        assert row["samples_whole"] == row["samples_chunk"]  # the chunks add up to the segment's frames
        assert 0 <= row["mel_l1"] < 100 and 0 <= row["log_spectral_distance_db"] < 200
    assert "served_chunk" in tiny_run["streaming_markdown"] and "TTFA p50" in tiny_run["streaming_markdown"]


def test_log_spectral_distance_is_zero_for_equal_audio_and_grows_with_a_gain():
    from benchmarks.streaming import log_spectral_distance

    rng = np.random.default_rng(0)
    audio = rng.standard_normal(22050).astype(np.float32)
    assert log_spectral_distance(audio, audio) == 0.0
    # Twice the amplitude is +6.02 dB in every bin.
    assert log_spectral_distance(audio, 2 * audio) == pytest.approx(20 * np.log10(2), rel=1e-3)


def test_plot_is_a_png(tiny_run):
    data = tiny_run["png"].read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 5000


# --- without Triton: outcomes, Retry-After, client timeout, target checks -------------------------------


WAV = b"RIFF" + b"\0" * 40 + b"\0\1" * 2205  # the 44-byte header then 0.1 s of 16-bit samples


def test_load_generator_counts_503_504_and_other_honours_retry_after_and_times_out(monkeypatch):
    """Request 0 is refused once (503, Retry-After 0.2 s) then served; 1 gets a 504; 2 a 503 without
    Retry-After (not a proper refusal: other); 3 never answers (client timeout: other); 4 a 500."""
    monkeypatch.setattr(loadgen, "CLIENT_GRACE_S", 0.3)
    seen: list[tuple[int, float, str | None]] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        body = request.read()
        index = int(body.split(b'name="seed"\r\n\r\n')[1].split(b"\r\n")[0])
        seen.append((index, time.perf_counter(), request.headers.get("x-request-timeout")))
        overloaded = {"error": {"type": "overloaded", "message": "busy"}}
        if index == 0 and sum(1 for item in seen if item[0] == 0) == 1:
            return httpx.Response(503, json=overloaded, headers={"Retry-After": "0.2"})
        if index == 1:
            return httpx.Response(504, json={"error": {"type": "timeout", "message": "late"}})
        if index == 2:
            return httpx.Response(503, json=overloaded)
        if index == 3:
            await asyncio.sleep(5)
        if index == 4:
            return httpx.Response(500, json={"error": {"type": "internal_error", "message": "bug"}})

        async def streamed() -> AsyncIterator[bytes]:  # as the services send it: header, then samples
            yield WAV[:44]
            yield WAV[44:]

        return httpx.Response(200, content=streamed())

    async def run() -> loadgen.RunResult:
        target = HttpTarget("http://bench.test", transport=httpx.MockTransport(handler))
        try:
            return await run_load(target, build_requests(6, seed=0), SynthesisControls(codes=6, request_timeout_s=0.5),
                                  concurrency=3, duration_s=30)
        finally:
            await target.close()

    result = asyncio.run(run())
    assert result.requests == 6 and result.sent == 7  # request 0 twice
    assert result.statuses == {"200": 2, "503": 1, "504": 1, "other": 3}
    assert result.ok == 2 and result.audio_s_total == pytest.approx(0.2, abs=1e-3)
    assert result.errors == {"http_503:overloaded": 1, "http_504:timeout": 1, "http_503:overloaded:no_retry_after": 1,
                             "client_timeout": 1, "http_500:internal_error": 1}
    assert result.client_timeout_s == pytest.approx(0.8)
    assert all(header == "0.5" for _, _, header in seen)  # X-Request-Timeout on every attempt
    first, second = [at for index, at, _ in seen if index == 0]
    assert second - first >= 0.2  # waited for Retry-After before sending the same request again
    records = {(record["index"], record["attempt"]): record for record in result.records}
    assert records[(0, 1)]["outcome"] == "503" and records[(0, 1)]["retry_after_s"] == 0.2
    assert records[(0, 2)]["outcome"] == "200" and records[(3, 1)]["error"] == "client_timeout"


def _run(system: str, concurrency: int, rps: float, statuses: dict[str, int] | None = None,
         records: list[dict] | None = None) -> dict:
    statuses = statuses or {"200": 10, "503": 0, "504": 0, "other": 0}
    return {"system": system, "preset": "demo", "concurrency": concurrency, "sent": sum(statuses.values()),
            "ok": statuses["200"], "requests": 10, "statuses": statuses, "errors": {}, "throughput_rps": rps,
            "audio_seconds_per_second": 2 * rps, "wall_s": 10.0, "rtf": {"mean": 1.0, "p50": 1.0},
            "latency_s": {"p50": 1.0, "p95": 2.0, "p99": 2.0}, "ttfa_s": None,
            "load_average": {"before": [1.0], "after": [1.0]}, "records": records or [],
            "triton": {"s2mel": {"requests": 10, "executions": 5, "mean_batch": 2.0, "queue_ms": 1.0,
                                 "compute_infer_ms": 100.0, "busy_s": 9.0, "cost_ms": 900.0}} if system == "served" else None,
            "stages": None}


def test_target_checks_and_report_on_a_made_up_run():
    ceiling = {"requests_per_s": 2.0, "audio_s_per_s": 4.0, "batch1_requests_per_s": 1.5, "ms_per_request": 500.0,
               "audio_s_per_request": 2.0, "segments_per_request": 1.0, "wall_s": 1.0,
               "load_average": {"before": [1.0], "after": [1.0]},
               "stages": [{"stage": "s2mel", "kind": "triton", "calls_per_request": 1.0, "batch1_ms": 500.0,
                           "best_batch": 1, "best_ms": 500.0, "ms_per_request": 500.0, "share": 1.0,
                           "cores_busy": 2.0}]}
    refused_then_bug = [{"status": 503, "outcome": "503"}, {"status": 502, "outcome": "other"}]
    runs = [_run("eager", 16, 1.0), _run("served", 16, 1.5),
            _run("eager", 64, 0.5), _run("served", 64, 1.2, {"200": 9, "503": 5, "504": 0, "other": 1}, refused_then_bug)]
    annotate_runs(runs, ceiling)
    assert [run["of_ceiling"] for run in runs] == [0.5, 0.75, 0.25, 0.6]
    assert [run["server_errors"] for run in runs] == [0, 0, 0, 1]
    report = {"presets": {"demo": {"runs": runs, "ceiling": ceiling, "ratios": [], "segments": {}, "plot": "x.png",
                                   "checkpoint": "ckpt"}},
              "hardware": {"cpu_model": "cpu", "cpu_cores_usable": 2, "cpu_cores": 2, "ram_bytes": 2**30,
                           "platform": "linux", "python": "3", "torch": "2", "onnxruntime": "1"},
              "settings": {"controls": {"codes": 6, "diffusion_steps": 2, "stream": True, "request_timeout_s": 120.0},
                           "requests": {"16": 10, "64": 10}, "max_run_seconds": 300.0, "warmup_requests": 2},
              "started_utc": "start", "finished_utc": "end", "wall_s": 60.0, "command": "bench", "notes": []}
    checks = {row["check"]: row for row in check_targets(report)}
    errors = checks["no 504, no 5xx but 503 + Retry-After (served: no other failure)"]
    assert errors["ok"] is False and "served c=64" in errors["value"] and "eager" not in errors["value"]
    assert checks["served / eager throughput at concurrency 16 >= 1.3x"]["ok"] is True  # 1.5x
    below = checks["served goodput at concurrency 16 >= 80 % of the ceiling"]
    assert below["ok"] is False and "held back by s2mel (busy 90 % of the run's wall time" in below["value"]
    assert checks["served goodput at concurrency 64 >= 90 % of concurrency 16's"]["ok"] is False  # 1.2 / 1.5
    text = markdown(report)
    assert "| 64 | served | 10 | 9 | 5 | 0 | 1 |" in text and "| 60 % |" in text
    assert "**Ceiling: 2.000 requests/s = 4.000 audio s/s**" in text


def test_segments_are_counted_as_the_services_segment_the_text(demo_checkpoint, tmp_path):
    """The report's segments per text (its expected audio lengths, the ceiling's calls per request) follow
    the services' MAX_TEXT_TOKENS_PER_SEGMENT, also for a GPT with the official 600 text positions, where
    the GPT's limit alone would make the long text one segment."""
    official_size = tmp_path / "checkpoint"
    official_size.mkdir()
    for path in demo_checkpoint.model_dir.iterdir():
        (official_size / path.name).symlink_to(path)
    config = yaml.safe_load((demo_checkpoint.model_dir / "config.yaml").read_text())
    config["gpt"]["max_text_tokens"] = 600
    (official_size / "config.yaml").unlink()
    (official_size / "config.yaml").write_text(yaml.safe_dump(config))

    counts = text_segments(official_size)
    assert counts == text_segments(demo_checkpoint.model_dir)
    assets = ModelAssets.load(official_size)
    assert counts["long"] == len(assets.text_segments(TEXTS["long"], MAX_TEXT_TOKENS_PER_SEGMENT, None)) > 1
    assert len(assets.text_segments(TEXTS["long"], assets.max_text_tokens, None)) == 1
