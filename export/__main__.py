"""`python -m export`: an IndexTTS-2 checkpoint directory (or `demo`) -> a Triton model repository.

    python -m export demo                                   # the embedded tiny preset
    python -m export demo-2.5 --output DIR                  # the tiny IndexTTS-2.5 preset
    python -m export /path/to/IndexTTS-2 --w2v-bert DIR ... # an official checkpoint directory (2.0 or 2.5)
    python -m export demo --output DIR --model-prefix tts_  # models served as tts_vocoder, ...

The version (IndexTTS-2.0 or 2.5) is read from the checkpoint directory (`detect_version`). A 2.5
repository needs --output: the committed model_repository/ holds the 2.0 configs.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from export.onnx_export import ExportVerificationError
from export.repository import COMMITTED_REPOSITORY, export_repository
from indextts2.checkpoint import CheckpointError
from indextts2.checkpoint_dir import CheckpointPaths
from indextts2.presets import write_demo_checkpoint
from indextts2.presets_2_5 import write_demo_checkpoint_2_5

DEMO_PRESETS = {"demo": write_demo_checkpoint, "demo-2.5": write_demo_checkpoint_2_5}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m export", description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="an IndexTTS-2 or 2.5 checkpoint directory, or 'demo' / 'demo-2.5'")
    parser.add_argument("--output", type=Path, default=COMMITTED_REPOSITORY,
                        help=f"model repository to write (default: {COMMITTED_REPOSITORY})")
    parser.add_argument("--demo-dir", type=Path, default=None,
                        help="where to write the demo checkpoint (default: a temporary folder)")
    parser.add_argument("--w2v-bert", type=Path, help="w2v-bert-2.0 directory (default: <checkpoint>/hf_cache/...)")
    parser.add_argument("--semantic-codec", type=Path, help="semantic_codec_model.safetensors")
    parser.add_argument("--campplus", type=Path, help="campplus_cn_common.bin")
    parser.add_argument("--bigvgan", type=Path, help="BigVGAN directory (config.json + bigvgan_generator.pt)")
    parser.add_argument("--fp16", action="store_true", help="run the ONNX models in float16 (for GPU serving)")
    parser.add_argument("--device", default="cpu", help="device for tracing and verification (cpu, cuda)")
    parser.add_argument("--only", nargs="+", metavar="MODEL", help="export only these ONNX stages")
    parser.add_argument("--model-prefix", default="", metavar="PREFIX",
                        help="serve every model as PREFIX<name> (folder and config name), for a Triton repository "
                             "shared with other models; the orchestrator needs TRITON_MODEL_PREFIX=PREFIX "
                             "(letters, digits, '_', '.', '-'; default: none)")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="indextts2-demo-") as scratch:
        try:
            if args.checkpoint in DEMO_PRESETS:
                paths = DEMO_PRESETS[args.checkpoint](args.demo_dir or Path(scratch) / "demo")
            else:
                paths = CheckpointPaths.from_model_dir(
                    args.checkpoint, w2v_bert_dir=args.w2v_bert, semantic_codec=args.semantic_codec,
                    campplus=args.campplus, bigvgan_dir=args.bigvgan,
                )
            result = export_repository(paths, args.output, fp16=args.fp16, device=args.device, only=args.only,
                                       model_prefix=args.model_prefix)
        except (CheckpointError, ExportVerificationError, ValueError) as error:
            print(f"export failed: {error}", file=sys.stderr)
            return 1
    total = sum(stage.file_bytes for stage in result.stages)
    print(f"wrote {result.repository}: IndexTTS-{paths.version}, {len(result.stages)} ONNX models, "
          f"{total / 2**20:.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
