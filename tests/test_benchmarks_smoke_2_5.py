"""benchmarks/run_benchmarks.py end to end on IndexTTS-2.5, tiny: the demo-2.5 checkpoint on the session's
2.5 tritonserver, the orchestrator and the eager baseline (which runs the 2.5 eager pipeline) started by
the script, concurrency 1 and 2, three requests per run (one per text length) of a few codes and
diffusion steps, the ceiling measured with small batches, no streaming runs. Checks that both systems
served every request, each with the audio length of 2.5's mel rule (which 2.0's rule would not give),
that the ceiling covers 2.5's stages, and that the report names the preset; speed is not checked."""

from __future__ import annotations

import pytest
from tiny_benchmark import CODES, CONCURRENCY, REQUESTS, run_tiny_benchmark

from indextts2.defaults import MEL_HOP_SAMPLES, OUTPUT_SAMPLE_RATE
from indextts2.rules import segment_silence, target_mel_frames_2_5

PRESET = "demo-2.5"
SILENCE_SAMPLES = segment_silence().shape[0]  # 200 ms between segments


@pytest.fixture(scope="module")
def tiny_run_2_5(triton_server_2_5, demo_checkpoint_2_5, tmp_path_factory) -> dict:
    return run_tiny_benchmark(demo_checkpoint_2_5.model_dir, triton_server_2_5.grpc_url, PRESET, "smoke_2_5",
                              tmp_path_factory.mktemp("bench_smoke_2_5"), "--no-streaming")


def test_both_systems_served_every_2_5_request(tiny_run_2_5):
    result = tiny_run_2_5["report"]["presets"][PRESET]
    runs = result["runs"]
    assert sorted((run["system"], run["concurrency"]) for run in runs) == [
        (system, c) for system in ("eager", "served") for c in CONCURRENCY
    ]
    for run in runs:
        assert run["sent"] == run["ok"] == run["requests"] == REQUESTS and run["errors"] == {}, run["errors"]
        assert run["statuses"] == {"200": REQUESTS, "503": 0, "504": 0, "other": 0} and run["server_errors"] == 0
        assert run["throughput_rps"] > 0 and run["audio_seconds_per_second"] > 0
        assert all(record["outcome"] == "200" and record["audio_s"] > 0 for record in run["records"])
        if run["system"] == "served":
            assert run["triton"]["gpt_decoder"]["requests"] >= REQUESTS
            assert run["triton"]["s2mel"]["compute_infer_ms"] > 0
    ratios = result["ratios"]
    assert [row["concurrency"] for row in ratios] == CONCURRENCY
    assert all(row["throughput"] > 0 and row["latency_p95"] > 0 for row in ratios)


def test_every_2_5_request_has_the_2_5_audio_length_on_both_systems(tiny_run_2_5):
    # min_codes = max_codes = 6: each segment is int(2 x 6 x 1.72) = 20 mel frames of 256 samples (the 2.0
    # rule gives 10), whatever the random GPT would sample; segments are joined with 200 ms of silence.
    result = tiny_run_2_5["report"]["presets"][PRESET]
    segments = result["segments"]
    assert set(segments) == {"short", "medium", "long"} and all(count >= 1 for count in segments.values())
    for run in result["runs"]:
        for record in run["records"]:
            count = segments[record["text_kind"]]
            expected = (count * target_mel_frames_2_5(CODES) * MEL_HOP_SAMPLES
                        + (count - 1) * SILENCE_SAMPLES) / OUTPUT_SAMPLE_RATE
            assert abs(record["audio_s"] - expected) < 1e-3, (run["system"], record)


def test_ceiling_is_measured_on_the_2_5_stages(tiny_run_2_5):
    ceiling = tiny_run_2_5["report"]["presets"][PRESET]["ceiling"]
    assert "error" not in ceiling, ceiling
    stages = {row["stage"]: row for row in ceiling["stages"]}
    # No semantic_codec: 2.5's prompt condition is the length-regulated raw features.
    assert set(stages) == {"text_frontend", "audio_decode", "features", "semantic_encoder", "length_regulator",
                           "campplus", "speaker_conditioner", "emotion_conditioner", "gpt_decoder", "s2mel",
                           "vocoder"}
    segments = tiny_run_2_5["report"]["presets"][PRESET]["segments"]
    assert ceiling["segments_per_request"] == pytest.approx(sum(segments.values()) / 3, abs=1e-3)
    for row in stages.values():
        assert 0 < row["best_ms"] <= row["batch1_ms"] + 1e-6, row
    assert ceiling["requests_per_s"] > 0 and ceiling["audio_s_per_s"] > 0


def test_report_names_the_2_5_preset_and_plots_it(tiny_run_2_5):
    markdown = tiny_run_2_5["markdown"]
    assert f"## {PRESET}" in markdown
    for c in CONCURRENCY:
        assert f"| {c} | eager | {REQUESTS} | {REQUESTS} | 0 | 0 | 0 | - |" in markdown
        assert f"| {c} | served | {REQUESTS} | {REQUESTS} | 0 | 0 | 0 | - |" in markdown
    data = tiny_run_2_5["png"].read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 5000
