"""benchmarks/export_official_size.py, run end to end on the demo preset's dimensions (hidden `--preset
demo`) for two cheap stages: the checkpoint is written, each stage exported in its own process, and
the JSON and Markdown reports come out complete. Speed is not checked."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
SCRIPT = REPO_ROOT / "benchmarks" / "export_official_size.py"
STAGES = ["semantic_codec", "length_regulator"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("export_benchmark")
    completed = subprocess.run(
        [sys.executable, str(SCRIPT), "--preset", "demo", "--stages", *STAGES, "--work-dir", str(out / "work"),
         "--json", str(out / "result.json"), "--markdown", str(out / "result.md")],
        check=False, capture_output=True, text=True, timeout=120, cwd=REPO_ROOT,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return {
        "out": out,
        "stdout": completed.stdout,
        "stderr": completed.stderr,
        "report": json.loads((out / "result.json").read_text()),
        "markdown": (out / "result.md").read_text(),
    }


def test_json_report_holds_hardware_checkpoint_and_the_chosen_stages(tiny_run):
    report = tiny_run["report"]
    assert report["preset"] == "demo"
    hardware = report["hardware"]
    assert hardware["cpu_cores"] >= 1 and hardware["torch"] and hardware["onnxruntime"]
    assert hardware["ram_bytes"] > 0 and hardware["cpu_model"]

    checkpoint = report["checkpoint"]
    assert checkpoint["written"] and checkpoint["bytes"] > 0 and checkpoint["peak_rss_bytes"] > 0
    files = {name for part in checkpoint["parts"] for name in part["files"]}
    for name in ("config.yaml", "bpe.model", "gpt.pth", "s2mel.pth", "wav2vec2bert_stats.pt", "feat1.pt",
                 "feat2.pt", "hf_cache/w2v-bert-2.0/model.safetensors", "hf_cache/semantic_codec_model.safetensors",
                 "hf_cache/campplus_cn_common.bin", "hf_cache/bigvgan/bigvgan_generator.pt"):
        assert name in files, f"{name} not written"

    assert [stage["name"] for stage in report["stages"]] == STAGES
    for stage in report["stages"]:
        assert stage["status"] == "ok" and stage["exit_status"] == 0
        assert stage["onnx_bytes"] == stage["model_onnx_bytes"] > 0 and stage["external_data_bytes"] == 0
        assert 0 <= stage["max_abs_error"] <= stage["tolerance"]
        assert stage["export_seconds"] > 0 and stage["verify_seconds"] > 0 and stage["wall_seconds"] > 0
        assert stage["peak_rss_bytes"] > 50 * 2**20  # a process that imported torch
    assert {tuple(s["networks_loaded"]) for s in report["stages"]} == {("semantic_codec",), ("s2mel",)}
    assert report["wall_seconds"] > 0


def test_markdown_report_is_printed_and_written_with_one_row_per_stage(tiny_run):
    text = tiny_run["markdown"]
    assert text == tiny_run["stdout"]
    assert tiny_run["report"]["hardware"]["cpu_model"] in text
    table = [line for line in text.splitlines() if line.startswith("| ")]
    stage_header = next(line for line in table if line.startswith("| Stage |"))
    columns = stage_header.count("|")
    rows = [line for line in table if line.split("|")[1].strip() in STAGES]
    assert len(rows) == len(STAGES)
    assert all(row.count("|") == columns and row.rstrip().endswith("| ok |") for row in rows)
    assert "| gpt.pth |" in text


def test_progress_lines_name_every_stage_and_the_work_dir_is_kept(tiny_run):
    for index, name in enumerate(STAGES, start=1):
        assert f"[{index}/{len(STAGES)}] {name}: ok" in tiny_run["stderr"]
    work = tiny_run["out"] / "work"
    for name in STAGES:
        assert (work / "onnx" / name / "model.onnx").is_file()
    assert (work / "checkpoint" / "config.yaml").is_file()


def test_unknown_stage_is_refused_before_any_export(tiny_run):
    checkpoint = tiny_run["out"] / "work" / "checkpoint"
    completed = subprocess.run(
        [sys.executable, str(SCRIPT), "--checkpoint", str(checkpoint), "--stages", "no_such_stage"],
        check=False, capture_output=True, text=True, timeout=60, cwd=REPO_ROOT,
    )
    assert completed.returncode == 2
    assert "unknown stage(s) ['no_such_stage']" in completed.stderr
    assert "exporting" not in completed.stderr
