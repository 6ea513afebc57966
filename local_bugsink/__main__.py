"""Command line.

`python -m local_bugsink serve` runs Bugsink on 127.0.0.1 until Ctrl-C or SIGTERM; its first line of output is
`SENTRY_DSN=<dsn>` (also written to --dsn-file once the server is ready).
`python -m local_bugsink prepare` builds the migrated template database (`make bugsink-env` runs it), so the
first start in a test session is as fast as the others.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path

from local_bugsink.server import BugsinkServer, BugsinkStartError, find_bugsink_python


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m local_bugsink", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--bugsink-python", default=None,
        help="interpreter of the Bugsink environment (default: $BUGSINK_PYTHON, else .venv-bugsink)",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run Bugsink on 127.0.0.1 until Ctrl-C / SIGTERM")
    serve.add_argument("--port", type=int, default=None, help="default: a free port")
    serve.add_argument(
        "--data-dir", default=None,
        help="keep the databases here across runs (default: a temporary folder, removed at exit)",
    )
    serve.add_argument("--admin-password", default=None, help="for the web UI (default: random, printed)")
    serve.add_argument("--dsn-file", default=None, help="write the DSN to this file once the server is ready")
    serve.add_argument("--start-timeout", type=float, default=120.0, help="seconds to wait for readiness")

    commands.add_parser("prepare", help="build the migrated template database in the Bugsink environment")
    return parser.parse_args(argv)


def serve(args: argparse.Namespace) -> int:
    server = BugsinkServer(
        port=args.port, data_dir=args.data_dir, bugsink_python=args.bugsink_python,
        admin_password=args.admin_password,
    )
    stop_requested = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop_requested.set())
    signal.signal(signal.SIGINT, lambda *_: stop_requested.set())
    try:
        server.start(timeout_s=args.start_timeout)
    except BugsinkStartError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    if args.dsn_file:
        Path(args.dsn_file).write_text(server.dsn + "\n")
    print(f"SENTRY_DSN={server.dsn}", flush=True)
    print(f"bugsink ready (pid {server.pid})", flush=True)
    print(f"  web UI: {server.base_url}  (user {server.admin_username}, password {server.admin_password})",
          flush=True)
    print(f"  data:   {server.data_dir}", flush=True)
    print(f"  log:    {server.log_path}", flush=True)
    exit_code = 0
    try:
        while not stop_requested.wait(0.5):
            if not server.is_running:
                print(f"error: Bugsink exited on its own; log tail:\n{server.log_tail()}", file=sys.stderr)
                exit_code = 1
                break
    finally:
        server.stop()
    print("bugsink stopped", flush=True)
    return exit_code


def prepare(args: argparse.Namespace) -> int:
    python = find_bugsink_python(args.bugsink_python)
    server = BugsinkServer(bugsink_python=python)
    try:
        template = server.prepare_template()
    except BugsinkStartError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(template if template is not None else f"no template cache for {python}: each start migrates")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    return prepare(args) if args.command == "prepare" else serve(args)


if __name__ == "__main__":
    sys.exit(main())
