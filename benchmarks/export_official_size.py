"""Export every ONNX stage of a random IndexTTS-2 checkpoint at the official size, and measure it.

    .venv/bin/python benchmarks/export_official_size.py --json out.json --markdown out.md
    .venv/bin/python benchmarks/export_official_size.py --stages vocoder campplus
    .venv/bin/python benchmarks/export_official_size.py --checkpoint /path/to/IndexTTS-2   # real weights

Step 1 writes a random checkpoint with the dimensions of the released IndexTTS-2 (config.yaml below,
w2v-BERT 2.0, MaskGCT semantic codec, CAMPPlus, BigVGAN v2 22 kHz 80-band 256x) in the official
layout, so the same loaders and exporter run on it as on the real download. Step 2 exports each ONNX
stage (float32) with `export.onnx_export.export_stage`, each in its own subprocess, so that the peak
resident memory of one stage (the child's ru_maxrss, Python and torch included) is measured alone. Each
child loads only the networks its stage reads; the others are built on the meta device, which costs no
memory, so that `export.stages.build_onnx_stages` sees a complete set. Every heavy step runs in a child;
the parent never imports torch.

Recorded: per stage the ONNX size (external data included), export and verification time (ONNX Runtime
against PyTorch, as the repository export does), largest absolute error, peak RSS; the checkpoint's
write time and sizes; the whole run's wall time; the hardware and library versions.

The weights are random: sizes, times and memory are those of the real model, the errors are only
indicative (a trained network has other activation ranges).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

ONNX_FILE = "model.onnx"
PROTOBUF_LIMIT = 2**31  # a single ONNX protobuf cannot exceed 2 GiB; bigger models need external data
GIB = 2**30
MIB = 2**20

def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _file_sizes(root: Path, relative_to: Path) -> dict[str, int]:
    return {str(p.relative_to(relative_to)): p.stat().st_size for p in sorted(root.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------------------------------------------
# Step 2 (child): one ONNX stage
# ---------------------------------------------------------------------------------------------------

NETWORK_FIELDS = ("semantic_encoder", "semantic_codec", "campplus", "gpt", "s2mel", "bigvgan")


def _build_network(field_name: str, paths, config: dict[str, Any], real: bool):
    """One network of the checkpoint: loaded from its files (`real`), or built on the meta device, which
    holds shapes but no memory. The semantic encoder is None where the checkpoint has no w2v-BERT."""
    import torch
    from transformers import Wav2Vec2BertConfig

    from indextts2.networks.bigvgan import build_bigvgan, load_bigvgan
    from indextts2.networks.campplus import CAMPPlus, load_campplus
    from indextts2.networks.gpt import build_gpt, load_gpt
    from indextts2.networks.s2mel import build_s2mel, load_s2mel
    from indextts2.networks.semantic_codec import build_semantic_codec, load_semantic_codec
    from indextts2.networks.semantic_encoder import CONFIG_FILE, SemanticEncoder, load_semantic_encoder

    semantic_dim = int(config["semantic_codec"]["hidden_size"])
    if field_name == "semantic_encoder":
        if not (paths.w2v_bert_dir / CONFIG_FILE).is_file():
            return None
        if real:
            return load_semantic_encoder(paths.w2v_bert_dir, paths.model_file(config, "w2v_stat"))
        w2v_config = Wav2Vec2BertConfig.from_json_file(str(paths.w2v_bert_dir / CONFIG_FILE))
        with torch.device("meta"):
            return SemanticEncoder(w2v_config, torch.zeros(w2v_config.hidden_size), torch.ones(w2v_config.hidden_size))
    if real:
        loaders = {
            "semantic_codec": lambda: load_semantic_codec(config["semantic_codec"], paths.semantic_codec),
            "campplus": lambda: load_campplus(paths.campplus),
            "gpt": lambda: load_gpt(config["gpt"], paths.model_file(config, "gpt_checkpoint"), feature_dim=semantic_dim),
            "s2mel": lambda: load_s2mel(config["s2mel"], paths.model_file(config, "s2mel_checkpoint")),
            "bigvgan": lambda: load_bigvgan(paths.bigvgan_dir),
        }
        return loaders[field_name]()
    with torch.device("meta"):
        if field_name == "semantic_codec":
            return build_semantic_codec(config["semantic_codec"])
        if field_name == "campplus":
            return CAMPPlus()
        if field_name == "gpt":
            return build_gpt(config["gpt"], feature_dim=semantic_dim)
        if field_name == "s2mel":
            return build_s2mel(config["s2mel"], gpt_latent_dim=int(config["gpt"]["model_dim"]))
        if field_name == "bigvgan":
            with (paths.bigvgan_dir / "config.json").open() as f:
                return build_bigvgan(json.load(f))
    raise ValueError(field_name)


def _networks(paths, config: dict[str, Any], real_fields: set[str]):
    from indextts2.checkpoint_dir import IndexTTS2Networks

    parts = {name: _build_network(name, paths, config, name in real_fields) for name in NETWORK_FIELDS}
    return IndexTTS2Networks(config=config, emotion_bank=None, text_frontend=None, **parts)


def _fields_read_by(module, networks) -> set[str]:
    """The networks whose parameters or buffers the stage module holds."""
    held = {id(t) for t in [*module.parameters(), *module.buffers()]}
    fields = set()
    for name in NETWORK_FIELDS:
        network = getattr(networks, name)
        if network is not None and any(id(t) in held for t in [*network.parameters(), *network.buffers()]):
            fields.add(name)
    return fields


def _stage_names(checkpoint_dir: Path) -> list[str]:
    from export.stages import build_onnx_stages
    from indextts2.checkpoint_dir import CheckpointPaths
    from indextts2.config import load_config

    paths = CheckpointPaths.from_model_dir(checkpoint_dir)
    return [stage.name for stage in build_onnx_stages(_networks(paths, load_config(paths.config_path), set()))]


def export_one_stage(checkpoint_dir: Path, stage_name: str, onnx_dir: Path) -> dict[str, Any]:
    """Load what `stage_name` reads, export it (float32) into `onnx_dir`, verify it; the measurements."""
    import torch

    from export.onnx_export import ExportVerificationError, export_stage
    from export.stages import build_onnx_stages
    from indextts2.checkpoint_dir import CheckpointPaths
    from indextts2.config import load_config

    started = time.perf_counter()
    paths = CheckpointPaths.from_model_dir(checkpoint_dir)
    config = load_config(paths.config_path)

    def pick(networks):
        stages = {stage.name: stage for stage in build_onnx_stages(networks)}
        if stage_name not in stages:
            raise ValueError(f"unknown stage {stage_name!r}; stages are {list(stages)}")
        return stages[stage_name]

    meta_networks = _networks(paths, config, set())
    needed = _fields_read_by(pick(meta_networks).module, meta_networks)
    del meta_networks
    _say(f"  {stage_name}: loading {', '.join(sorted(needed))}")
    stage = pick(_networks(paths, config, needed))
    load_seconds = time.perf_counter() - started

    if onnx_dir.exists():
        shutil.rmtree(onnx_dir)
    path = onnx_dir / ONNX_FILE
    result: dict[str, Any] = {"networks_loaded": sorted(needed), "load_seconds": load_seconds,
                              "tolerance": stage.tolerance}
    _say(f"  {stage_name}: exporting and verifying ...")
    call_started = time.perf_counter()
    try:
        with torch.no_grad():
            report = export_stage(stage, path)
    except ExportVerificationError as error:
        result.update(status="verification failed", error=str(error))
    else:
        result.update(status="ok", export_seconds=report.export_seconds, max_abs_error=report.max_abs_error,
                      tolerance=report.tolerance)
    call_seconds = time.perf_counter() - call_started
    if "export_seconds" in result:
        result["verify_seconds"] = call_seconds - result["export_seconds"]
    else:
        result["export_and_verify_seconds"] = call_seconds
    files = _file_sizes(onnx_dir, onnx_dir) if onnx_dir.exists() else {}
    result.update(
        onnx_files=files,
        onnx_bytes=sum(files.values()),
        model_onnx_bytes=files.get(ONNX_FILE, 0),
        external_data_bytes=sum(size for name, size in files.items() if name != ONNX_FILE),
    )
    return result


def _child_main(args: argparse.Namespace) -> int:
    if args.child == "write-checkpoint":
        from indextts2.presets import PRESETS, write_random_checkpoint

        _, records = write_random_checkpoint(args.child_dir, PRESETS[args.preset], seed=args.seed, progress=_say)
        parts = [{"part": r.name, "files": r.files, "bytes": sum(r.files.values()), "parameters": r.parameters,
                  "seconds": r.seconds} for r in records]
        result = {"parts": parts, "stages": _stage_names(args.child_dir)}
    elif args.child == "list-stages":
        result = {"stages": _stage_names(args.checkpoint)}
    elif args.child == "export-stage":
        result = export_one_stage(args.checkpoint, args.stage, args.child_dir)
    else:
        raise ValueError(args.child)
    args.child_result.write_text(json.dumps(result, indent=2))
    return 0


# ---------------------------------------------------------------------------------------------------
# The parent: subprocesses, measurements, report
# ---------------------------------------------------------------------------------------------------


@dataclass
class ChildRun:
    returncode: int
    wall_seconds: float
    peak_rss_bytes: int
    result: dict[str, Any] = field(default_factory=dict)


def _run_child(child_args: list[str], result_path: Path) -> ChildRun:
    """Run this script as a child; its stderr goes to ours. Peak RSS from the kernel's rusage of that
    one child (wait4), so a child killed for memory is measured too."""
    result_path.unlink(missing_ok=True)
    command = [sys.executable, str(Path(__file__).resolve()), *child_args, "--child-result", str(result_path)]
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=sys.stderr)
    try:
        _, status, usage = os.wait4(process.pid, 0)
    except BaseException:
        process.kill()
        process.wait()
        raise
    wall = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    result = json.loads(result_path.read_text()) if process.returncode == 0 and result_path.is_file() else {}
    return ChildRun(process.returncode, wall, usage.ru_maxrss * 1024, result)


def hardware() -> dict[str, Any]:
    cpu_model = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    ram_bytes = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                ram_bytes = int(line.split()[1]) * 1024
                break
    except OSError:
        pass

    def version(package: str) -> str | None:
        try:
            return metadata.version(package)
        except metadata.PackageNotFoundError:
            return None

    return {
        "cpu_model": cpu_model,
        "cpu_cores": os.cpu_count(),
        "cpu_cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "ram_bytes": ram_bytes,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": version("torch"),
        "onnxruntime": version("onnxruntime"),
        "onnx": version("onnx"),
        "transformers": version("transformers"),
    }


def _fmt_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    return f"{n / GIB:.2f} GiB" if n >= GIB else f"{n / MIB:.1f} MiB"


def _fmt_seconds(s: float | None) -> str:
    return "-" if s is None else f"{s:.1f}"


def markdown(report: dict[str, Any]) -> str:
    hw = report["hardware"]
    lines = [
        f"# ONNX export at the {report['preset']} IndexTTS-2 size",
        "",
        (f"Run {report['started_utc']} on {hw['cpu_model']}, {hw['cpu_cores_usable']} cores "
         f"({hw['cpu_cores']} online), {_fmt_bytes(hw['ram_bytes'])} RAM; Python {hw['python']}, "
         f"torch {hw['torch']}, onnxruntime {hw['onnxruntime']}, onnx {hw['onnx']}, "
         f"transformers {hw['transformers']}. float32 export and verification on the CPU."),
        "",
    ]
    checkpoint = report["checkpoint"]
    if checkpoint.get("written"):
        lines += [
            (f"## Random checkpoint (written in {_fmt_seconds(checkpoint['seconds'])} s, "
             f"{_fmt_bytes(checkpoint['bytes'])}, peak RSS {_fmt_bytes(checkpoint['peak_rss_bytes'])})"),
            "",
            "| Part | Parameters | Size | Write (s) |",
            "|---|---:|---:|---:|",
        ]
        for part in checkpoint["parts"]:
            parameters = f"{part['parameters'] / 1e6:.1f} M" if part.get("parameters") else "-"
            lines.append(f"| {part['part']} | {parameters} | {_fmt_bytes(part['bytes'])} | "
                         f"{_fmt_seconds(part['seconds'])} |")
        lines.append("")
    else:
        lines += [f"Checkpoint: existing directory `{checkpoint['path']}` ({_fmt_bytes(checkpoint['bytes'])}).", ""]

    lines += [
        "## ONNX stages (each exported in its own process)",
        "",
        ("| Stage | Loads | ONNX size | External data | Load (s) | Export (s) | Verify (s) | Process wall (s) "
         "| Peak RSS | Max abs error | Tolerance | Status |"),
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for stage in report["stages"]:
        error = stage.get("max_abs_error")
        loads = ", ".join(stage.get("networks_loaded", [])) or "-"
        lines.append(
            f"| {stage['name']} | {loads} | {_fmt_bytes(stage.get('onnx_bytes'))} | "
            f"{_fmt_bytes(stage.get('external_data_bytes')) if stage.get('external_data_bytes') else 'none'} | "
            f"{_fmt_seconds(stage.get('load_seconds'))} | {_fmt_seconds(stage.get('export_seconds'))} | "
            f"{_fmt_seconds(stage.get('verify_seconds'))} | {_fmt_seconds(stage['wall_seconds'])} | "
            f"{_fmt_bytes(stage['peak_rss_bytes'])} | {'-' if error is None else f'{error:.2e}'} | "
            f"{stage['tolerance']:.0e} | {stage['status']} |"
            if stage.get("tolerance") is not None else
            f"| {stage['name']} | {loads} | - | - | - | - | - | {_fmt_seconds(stage['wall_seconds'])} | "
            f"{_fmt_bytes(stage['peak_rss_bytes'])} | - | - | {stage['status']} |"
        )
    total_onnx = sum(stage.get("onnx_bytes") or 0 for stage in report["stages"])
    largest = max(report["stages"], key=lambda stage: stage.get("onnx_bytes") or 0, default=None)
    lines += [
        "",
        (f"Total ONNX size {_fmt_bytes(total_onnx)}; whole run {_fmt_seconds(report['wall_seconds'])} s wall "
         "(checkpoint, stage listing and every stage process)."),
    ]
    if largest is not None and largest.get("onnx_bytes"):
        over = [stage["name"] for stage in report["stages"] if (stage.get("onnx_bytes") or 0) >= PROTOBUF_LIMIT]
        lines.append(
            f"Largest model: {largest['name']}, {_fmt_bytes(largest['onnx_bytes'])}; "
            + (f"over the {_fmt_bytes(PROTOBUF_LIMIT)} protobuf limit, so written with external data: "
               f"{', '.join(over)}." if over else f"every model fits one protobuf ({_fmt_bytes(PROTOBUF_LIMIT)} limit).")
        )
    lines += [
        "",
        ("Load: reading the networks the stage uses. Export: `torch.onnx.export`. Verify: ONNX Runtime vs "
         "PyTorch on two other batch/length shapes. Process wall: the whole stage process, imports included. "
         "Peak RSS: the stage process's ru_maxrss (interpreter, torch and the loaded networks included)."),
    ]
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    report: dict[str, Any] = {
        "preset": args.preset if args.checkpoint is None else "checkpoint",
        "started_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "hardware": hardware(),
    }
    scratch = None
    if args.work_dir is None:
        scratch = Path(tempfile.mkdtemp(prefix="indextts2-export-bench-"))
    work_dir = Path(args.work_dir or scratch)
    work_dir.mkdir(parents=True, exist_ok=True)
    result_path = work_dir / "child-result.json"
    failures = 0
    try:
        if args.checkpoint is None:
            checkpoint_dir = work_dir / "checkpoint"
            if checkpoint_dir.exists():
                shutil.rmtree(checkpoint_dir)
            _say(f"[checkpoint] writing a random {args.preset}-size checkpoint into {checkpoint_dir} ...")
            run_ = _run_child(["--child", "write-checkpoint", "--child-dir", str(checkpoint_dir),
                               "--preset", args.preset, "--seed", str(args.seed)], result_path)
            if run_.returncode != 0:
                _say(f"[checkpoint] failed (exit status {run_.returncode})")
                return 1
            parts = run_.result["parts"]
            from indextts2.presets import PRESETS

            chosen = PRESETS[args.preset]
            report["dimensions"] = {"config.yaml": chosen.config, "bigvgan config.json": chosen.bigvgan,
                                    "campplus": chosen.campplus or "CAMPPlus defaults", "w2v-bert": chosen.w2v_bert}
            report["checkpoint"] = {
                "written": True, "path": str(checkpoint_dir), "parts": parts,
                "bytes": sum(part["bytes"] for part in parts), "seconds": sum(part["seconds"] for part in parts),
                "process_wall_seconds": run_.wall_seconds, "peak_rss_bytes": run_.peak_rss_bytes,
            }
            _say(f"[checkpoint] {_fmt_bytes(report['checkpoint']['bytes'])} in {run_.wall_seconds:.1f} s, "
                 f"peak RSS {_fmt_bytes(run_.peak_rss_bytes)}")
            all_stages = run_.result["stages"]
        else:
            checkpoint_dir = Path(args.checkpoint)
            files = _file_sizes(checkpoint_dir, checkpoint_dir)
            report["checkpoint"] = {"written": False, "path": str(checkpoint_dir), "bytes": sum(files.values())}
            run_ = _run_child(["--child", "list-stages", "--checkpoint", str(checkpoint_dir)], result_path)
            if run_.returncode != 0:
                _say(f"[stages] listing failed (exit status {run_.returncode})")
                return 1
            all_stages = run_.result["stages"]

        stages = all_stages
        if args.stages:
            unknown = sorted(set(args.stages) - set(all_stages))
            if unknown:
                _say(f"unknown stage(s) {unknown}; stages are {all_stages}")
                return 2
            stages = [name for name in all_stages if name in args.stages]

        report["stages"] = []
        for index, name in enumerate(stages, start=1):
            _say(f"[{index}/{len(stages)}] {name} ...")
            run_ = _run_child(["--child", "export-stage", "--checkpoint", str(checkpoint_dir), "--stage", name,
                               "--child-dir", str(work_dir / "onnx" / name)], result_path)
            stage = {"name": name, **run_.result, "wall_seconds": run_.wall_seconds,
                     "peak_rss_bytes": run_.peak_rss_bytes, "exit_status": run_.returncode}
            if run_.returncode != 0:
                stage.setdefault("status", f"process failed (exit status {run_.returncode})")
            if stage.get("status") != "ok":
                failures += 1
            report["stages"].append(stage)
            error = stage.get("max_abs_error")
            _say(
                f"[{index}/{len(stages)}] {name}: {stage['status']}, ONNX {_fmt_bytes(stage.get('onnx_bytes'))}, "
                f"export {_fmt_seconds(stage.get('export_seconds'))} s, verify "
                f"{_fmt_seconds(stage.get('verify_seconds'))} s, max abs error "
                f"{'-' if error is None else f'{error:.2e}'}, peak RSS {_fmt_bytes(run_.peak_rss_bytes)}, "
                f"process {run_.wall_seconds:.1f} s"
            )
    finally:
        result_path.unlink(missing_ok=True)
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)

    report["wall_seconds"] = time.perf_counter() - started
    text = markdown(report)
    print(text, end="")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(text)
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work-dir", type=Path,
                        help="where the checkpoint and ONNX files go, kept (default: a temporary folder, removed)")
    parser.add_argument("--checkpoint", type=Path,
                        help="export an existing checkpoint directory instead of writing a random one")
    parser.add_argument("--stages", nargs="+", metavar="STAGE", help="export only these stages")
    parser.add_argument("--json", type=Path, help="write the measurements as JSON here")
    parser.add_argument("--markdown", type=Path, help="write the Markdown report here (it is also printed)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    # For tests: the demo preset's dimensions instead of the official ones.
    parser.add_argument("--preset", choices=("official", "demo"), default="official", help=argparse.SUPPRESS)
    # The child processes: this script runs itself for every heavy step.
    parser.add_argument("--child", choices=("write-checkpoint", "list-stages", "export-stage"),
                        help=argparse.SUPPRESS)
    parser.add_argument("--child-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--child-result", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--stage", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return _child_main(args)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
