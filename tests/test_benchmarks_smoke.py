"""benchmarks/run_benchmarks.py end to end, tiny: the demo checkpoint on the session's tritonserver, the
orchestrator and the eager baseline started by the script, concurrency 1 and 2, three requests per run
(one per text length) of a few codes and diffusion steps. Checks that the JSON and Markdown reports are
complete and well formed and that the plot is a PNG; speed is not checked."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from indextts2.pipeline import target_mel_frames

REPO_ROOT = Path(__file__).resolve().parent.parent
CONCURRENCY = [1, 2]
REQUESTS = 3  # one of each text length: 1, 1 and 3 segments
CODES = 6


@pytest.fixture(scope="module")
def tiny_run(triton_server, demo_checkpoint, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("bench_smoke")
    command = [
        sys.executable, "-m", "benchmarks.run_benchmarks", "--checkpoint", str(demo_checkpoint.model_dir),
        "--triton-grpc-url", triton_server.grpc_url, "--presets", "demo",
        "--concurrency", *map(str, CONCURRENCY), "--requests", str(REQUESTS), "--codes", str(CODES),
        "--diffusion-steps", "2", "--name", "smoke", "--out-dir", str(out / "results"),
        "--build-dir", str(out / "build"),
    ]
    completed = subprocess.run(command, check=False, capture_output=True, text=True, timeout=150, cwd=REPO_ROOT)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    results = out / "results"
    return {
        "stdout": completed.stdout,
        "report": json.loads((results / "smoke.json").read_text()),
        "markdown": (results / "smoke.md").read_text(),
        "png": results / "smoke_demo.png",
    }


def test_json_report_has_every_run_with_its_figures(tiny_run):
    report = tiny_run["report"]
    assert report["hardware"]["cpu_cores"] and report["hardware"]["gpu"] is None
    assert report["settings"]["controls"] == {"codes": CODES, "diffusion_steps": 2, "stream": True}
    runs = report["presets"]["demo"]["runs"]
    assert sorted((run["system"], run["concurrency"]) for run in runs) == [
        (system, c) for system in ("eager", "served") for c in CONCURRENCY
    ]
    for run in runs:
        assert run["sent"] == run["ok"] == REQUESTS and run["errors"] == {}
        assert run["throughput_rps"] > 0 and run["audio_seconds_per_second"] > 0
        assert 0 < run["latency_s"]["p50"] <= run["latency_s"]["p95"] <= run["latency_s"]["p99"]
        assert run["rtf"]["mean"] > 0 and run["ttfa_s"]["p50"] > 0
        assert len(run["records"]) == REQUESTS and all(record["audio_s"] > 0 for record in run["records"])
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


def test_fixed_code_count_gives_every_request_its_exact_audio_length_on_both_systems(tiny_run):
    # min_codes = max_codes = 6: each segment is round(6 x 1.72) mel frames of 256 samples, whatever the
    # random GPT would sample; segments are joined with 200 ms of silence.
    segments = tiny_run["report"]["presets"]["demo"]["segments"]
    for run in tiny_run["report"]["presets"]["demo"]["runs"]:
        for record in run["records"]:
            count = segments[record["text_kind"]]
            expected = (count * target_mel_frames(CODES) * 256 + (count - 1) * 4410) / 22050
            assert abs(record["audio_s"] - expected) < 1e-3, (run["system"], record)


def test_markdown_report_has_the_ratio_and_run_tables(tiny_run):
    markdown = tiny_run["markdown"]
    assert markdown.startswith("# IndexTTS-2: served stack vs eager baseline")
    assert "**no GPU**" in markdown and "## demo" in markdown
    assert "| concurrency | throughput | latency p50 | latency p95 | RTF mean | RTF p50 | TTFA p50 |" in markdown
    for c in CONCURRENCY:
        assert f"| {c} | eager | {REQUESTS} / {REQUESTS} | - |" in markdown
        assert f"| {c} | served | {REQUESTS} / {REQUESTS} | - |" in markdown
    assert "| gpt_decoder |" in markdown and "smoke_demo.png" in markdown


def test_plot_is_a_png(tiny_run):
    data = tiny_run["png"].read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 5000
