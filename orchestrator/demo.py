"""`python -m orchestrator.demo` (what `make serve` runs): the whole stack on an embedded demo preset.

`--preset demo` (IndexTTS-2.0, the default) or `--preset demo-2.5` (IndexTTS-2.5; `PRESET=demo-2.5 make
serve`). For preset P:
1. writes the demo checkpoint to build/P/checkpoint and exports its model repository to
   build/P/model_repository, unless the build there is from the same sources (a stamp of the
   committed model repository, the exporter and the demo preset);
2. starts the local tritonserver (nvidia-pytriton's binary) on that repository, on free ports;
3. runs the service on HOST:PORT (127.0.0.1:8000 by default) against it until Ctrl-C.

A tritonserver that dies is restarted on the same ports (local_triton.TritonSupervisor: backoff, a log
line, one Sentry warning per death). Whatever way this process ends, SIGKILL included, tritonserver with
its stub processes and Bugsink end with it (local_triton/process_group.py).

Every other setting comes from the environment as for `python -m orchestrator` (SENTRY_DSN, ...); the
registered voices go to build/demo/voices unless VOICES_DIR says otherwise. The demo networks are
random: the speech is noise-like, but every stage, error path and report is the real one.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import logging
import os
import shutil
import signal
import sys
from pathlib import Path

import sentry_sdk
import uvicorn

from export.repository import COMMITTED_REPOSITORY, export_repository
from indextts2.presets import write_demo_checkpoint
from indextts2.presets_2_5 import write_demo_checkpoint_2_5
from local_bugsink import BugsinkServer, BugsinkStartError
from local_triton import LocalTritonServer, TritonStartError, TritonSupervisor
from orchestrator.app import create_app
from orchestrator.settings import Settings, SettingsError
from orchestrator.testing import speech_like_wav

REPO_ROOT = Path(__file__).resolve().parent.parent
STAMP_SOURCES = [COMMITTED_REPOSITORY, REPO_ROOT / "export", REPO_ROOT / "indextts2"]
# The demo presets: name -> the function that writes its checkpoint directory.
PRESETS = {"demo": write_demo_checkpoint, "demo-2.5": write_demo_checkpoint_2_5}


def source_stamp() -> str:
    """Hash of every source file the demo build depends on (generated files excluded)."""
    digest = hashlib.sha256()
    for root in STAMP_SOURCES:
        for path in sorted(root.rglob("*")):
            relative = path.relative_to(REPO_ROOT)
            if not path.is_file() or path.suffix in (".onnx", ".data", ".pyc") or "weights" in relative.parts:
                continue
            digest.update(str(relative).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def build_demo(build_dir: Path, fresh: bool = False, preset: str = "demo") -> tuple[Path, Path]:
    """(checkpoint_dir, model_repository) of the demo preset `preset` (a key of PRESETS), built or reused."""
    checkpoint, repository, stamp_file = build_dir / "checkpoint", build_dir / "model_repository", build_dir / "stamp"
    stamp = source_stamp()
    if not fresh and stamp_file.is_file() and stamp_file.read_text() == stamp:
        print(f"reusing the demo build in {build_dir}", flush=True)
        return checkpoint, repository
    stamp_file.unlink(missing_ok=True)
    for folder in (checkpoint, repository):
        shutil.rmtree(folder, ignore_errors=True)
    print(f"writing the demo checkpoint and model repository to {build_dir} ...", flush=True)
    paths = PRESETS[preset](checkpoint)
    export_repository(paths, repository, progress=lambda line: print(f"  {line}", flush=True))
    stamp_file.write_text(stamp)
    return checkpoint, repository


def write_example_speaker(path: Path) -> None:
    """A 6 s synthetic voice-like reference clip, so the printed curl line works as it is."""
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(speech_like_wav(6.0))


def report_triton_death(message: str) -> None:
    """One warning event per death of tritonserver (create_app has initialised Sentry in this process)."""
    sentry_sdk.capture_message(message, level="warning", tags={"stage": "tritonserver"})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m orchestrator.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="demo",
                        help="demo (IndexTTS-2.0, default) or demo-2.5 (IndexTTS-2.5)")
    parser.add_argument("--build-dir", type=Path, default=None, help="default: build/<preset>")
    parser.add_argument("--fresh", action="store_true", help="rebuild the demo checkpoint and repository")
    args = parser.parse_args(argv)
    args.build_dir = args.build_dir or REPO_ROOT / "build" / args.preset
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    try:
        settings = Settings.from_env()
    except SettingsError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    checkpoint, repository = build_demo(args.build_dir, args.fresh, args.preset)
    bugsink = None
    if not settings.sentry_dsn:
        # The embedded error tracker: a local Bugsink on loopback, kept in the build folder.
        try:
            bugsink = BugsinkServer(data_dir=args.build_dir / "bugsink").start(timeout_s=120)
        except BugsinkStartError as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
        settings = dataclasses.replace(settings, sentry_dsn=bugsink.dsn)
        print(f"error tracker (Bugsink): {bugsink.base_url} (user {bugsink.admin_username}, "
              f"password {bugsink.admin_password})", flush=True)
    # The Python models report their own exceptions to the same tracker, on the requests' traces.
    server = LocalTritonServer(repository, environment={
        "SENTRY_DSN": settings.sentry_dsn, "SENTRY_ENVIRONMENT": settings.sentry_environment,
        "SENTRY_TRACES_SAMPLE_RATE": str(settings.sentry_traces_sample_rate),
    })
    supervisor = TritonSupervisor(server, on_death=report_triton_death, start_timeout_s=300)
    try:
        try:
            server.start(timeout_s=300)
        except TritonStartError as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
        settings = dataclasses.replace(
            settings, checkpoint_dir=checkpoint, triton_grpc_url=server.grpc_url,
            voices_dir=Path(os.environ.get("VOICES_DIR") or args.build_dir / "voices"),
        )
        base = f"http://{settings.host}:{settings.port}"
        speaker = args.build_dir / "speaker.wav"
        write_example_speaker(speaker)
        print(f"tritonserver ready: pid {server.pid}, grpc {server.grpc_url}, log {server.log_path}", flush=True)
        print(f"service: {base}/docs", flush=True)
        print("try:\n"
              f"  curl -sS -o hello.wav -F text='Hello from IndexTTS-2 on Triton.' -F speaker_audio=@{speaker} "
              f"{base}/v1/tts", flush=True)
        # uvicorn re-raises SIGTERM once it has shut down; turn it into SystemExit so the servers
        # started above are stopped by the `finally` below, as they are on Ctrl-C.
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        app = create_app(settings)
        supervisor.start()  # after create_app, which initialises Sentry for the death reports
        uvicorn.run(app, host=settings.host, port=settings.port, log_level="info")
    finally:
        supervisor.stop()
        server.stop()
        if bugsink is not None:
            bugsink.stop()
    return 0

if __name__ == "__main__":
    sys.exit(main())
