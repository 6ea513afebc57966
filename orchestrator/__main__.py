"""`python -m orchestrator`: the service on HOST:PORT (127.0.0.1:8000 by default), settings from the
environment (see orchestrator/settings.py)."""

from __future__ import annotations

import logging
import sys

import uvicorn

from orchestrator.app import create_app
from orchestrator.settings import Settings, SettingsError


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = Settings.from_env()
        app = create_app(settings)
    except SettingsError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="info",
                timeout_keep_alive=settings.http_keep_alive_s)
    return 0


if __name__ == "__main__":
    sys.exit(main())
