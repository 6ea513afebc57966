"""Command line: `python -m local_triton serve --model-repository DIR` runs tritonserver until Ctrl-C or
SIGTERM; `python -m local_triton backend-dir DEST` only lays out the backend directory."""

from __future__ import annotations

import argparse
import signal
import sys
import threading

from local_triton.launcher import LocalTritonServer, TritonStartError, build_backend_directory


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m local_triton", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run tritonserver on 127.0.0.1 until Ctrl-C / SIGTERM")
    serve.add_argument("--model-repository", required=True)
    serve.add_argument("--grpc-port", type=int, default=None, help="default: a free port")
    serve.add_argument("--http-port", type=int, default=None, help="default: a free port")
    serve.add_argument("--metrics-port", type=int, default=None, help="default: a free port")
    serve.add_argument("--model-control-mode", choices=("none", "explicit"), default="none")
    serve.add_argument(
        "--load-model", action="append", default=[], help="explicit mode only; repeatable; '*' loads all"
    )
    serve.add_argument("--log-file", default=None, help="default: a file in a temporary folder")
    serve.add_argument("--log-verbose", type=int, default=0)
    serve.add_argument("--start-timeout", type=float, default=120.0, help="seconds to wait for readiness")

    backend_dir = commands.add_parser("backend-dir", help="lay out a tritonserver --backend-directory")
    backend_dir.add_argument("dest")
    return parser.parse_args(argv)


def serve(args: argparse.Namespace) -> int:
    server = LocalTritonServer(
        args.model_repository,
        grpc_port=args.grpc_port,
        http_port=args.http_port,
        metrics_port=args.metrics_port,
        model_control_mode=args.model_control_mode,
        load_models=args.load_model,
        log_path=args.log_file,
        log_verbose=args.log_verbose,
    )
    stop_requested = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop_requested.set())
    signal.signal(signal.SIGINT, lambda *_: stop_requested.set())
    try:
        server.start(timeout_s=args.start_timeout)
    except TritonStartError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"tritonserver ready (pid {server.pid})", flush=True)
    print(f"  grpc:    {server.grpc_url}", flush=True)
    print(f"  http:    http://{server.http_url}", flush=True)
    print(f"  metrics: {server.metrics_url}", flush=True)
    print(f"  log:     {server.log_path}", flush=True)
    exit_code = 0
    try:
        while not stop_requested.wait(0.5):
            if not server.is_running:
                print(f"error: tritonserver exited on its own; log tail:\n{server.log_tail()}",
                      file=sys.stderr)
                exit_code = 1
                break
    finally:
        server.stop()
    print("tritonserver stopped", flush=True)
    return exit_code


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    if args.command == "backend-dir":
        print(build_backend_directory(args.dest))
        return 0
    return serve(args)


if __name__ == "__main__":
    sys.exit(main())
