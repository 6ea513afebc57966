"""Keep a LocalTritonServer running: restart it when it dies, on the same ports, with backoff.

`make serve` (orchestrator/demo.py) runs one of these next to the service. The orchestrator's gRPC
client keeps its URL, and /readyz turns 200 again once the restarted server has loaded its models.
In production this is the job of Kubernetes and Triton's own probes (see the README, "Supervision").
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from local_triton.launcher import LocalTritonServer, TritonStartError

if TYPE_CHECKING:
    from typing_extensions import Self

logger = logging.getLogger(__name__)


class TritonSupervisor:
    """A daemon thread that polls `server.is_running` every `poll_s` and restarts a dead server.

    A death is logged and passed once to `on_death(message)` (the demo reports it to Sentry); failed
    restarts are logged and retried. The wait before a restart starts at `initial_backoff_s` and doubles
    with each restart up to `max_backoff_s`, so a server that dies at start-up is not restarted in a
    tight loop; it is back to `initial_backoff_s` once a server has stayed up `healthy_s`.
    """

    def __init__(
        self,
        server: LocalTritonServer,
        *,
        on_death: Callable[[str], None] | None = None,
        poll_s: float = 0.5,
        initial_backoff_s: float = 1.0,
        max_backoff_s: float = 30.0,
        healthy_s: float = 60.0,
        start_timeout_s: float = 300.0,
    ) -> None:
        self.server = server
        self.on_death = on_death
        self.poll_s = poll_s
        self.initial_backoff_s = initial_backoff_s
        self.max_backoff_s = max_backoff_s
        self.healthy_s = healthy_s
        self.start_timeout_s = start_timeout_s
        self.restarts = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> Self:
        """Watch the (started) server from now on."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="triton-supervisor", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop watching; a restart under way is finished first (the demo's takes ~10 s). Idempotent."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _run(self) -> None:
        backoff_s = self.initial_backoff_s
        up_since = time.monotonic()
        while not self._stop.wait(self.poll_s):
            if self.server.is_running:
                if time.monotonic() - up_since >= self.healthy_s:
                    backoff_s = self.initial_backoff_s
                continue
            self._report_death()
            while not self._stop.wait(backoff_s):
                backoff_s = min(2 * backoff_s, self.max_backoff_s)
                started = time.monotonic()
                try:
                    self.server.restart(timeout_s=self.start_timeout_s)
                except (TritonStartError, OSError) as error:  # OSError: e.g. no process could be forked
                    logger.error("restarting tritonserver failed, next try in %.0f s: %s", backoff_s, error)
                    continue
                self.restarts += 1
                up_since = time.monotonic()
                logger.warning("tritonserver restarted (pid %s, grpc %s) in %.1f s",
                               self.server.pid, self.server.grpc_url, up_since - started)
                break

    def _report_death(self) -> None:
        code = self.server.returncode
        how = f"was killed by signal {-code}" if code is not None and code < 0 else f"exited with code {code}"
        errors = self.server.log_errors().splitlines()[-5:]
        # No pid or port in the message: Sentry groups the deaths of every run under one issue.
        message = f"tritonserver {how}; restarting it"
        logger.warning("%s (pid %s, grpc %s)%s", message, self.server.pid, self.server.grpc_url,
                       "".join(f"\n  {line}" for line in errors))
        if self.on_death is not None:
            try:
                self.on_death(message)
            except Exception:  # the report must not stop the restart
                logger.exception("reporting the death of tritonserver failed")
