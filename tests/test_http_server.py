"""`python -m orchestrator` as it runs in production: uvicorn with the service's own HTTP settings."""

from __future__ import annotations

import http.client
import os
import sys
import time
from pathlib import Path

import pytest

from local_triton.process_group import ServerProcess, find_free_port

REPO_ROOT = Path(__file__).resolve().parent.parent
# Longer than uvicorn's default keep-alive (5 s), which the service must not fall back to.
IDLE_S = 6.5


@pytest.fixture
def orchestrator_process(demo_checkpoint, tmp_path):
    """The service on the demo checkpoint; no tritonserver is needed for /healthz."""
    port = find_free_port()
    env = dict(os.environ, CHECKPOINT_DIR=str(demo_checkpoint.model_dir), TRITON_GRPC_URL="127.0.0.1:1", HOST="127.0.0.1",
               PORT=str(port), VOICES_DIR=str(tmp_path / "voices"), SENTRY_DSN="")
    server = ServerProcess([sys.executable, "-m", "orchestrator"], log_path=tmp_path / "orchestrator.log",
                           cwd=REPO_ROOT, env=env, guard_name="test-orchestrator")
    try:
        server.wait_until_ready(f"http://127.0.0.1:{port}/healthz", time.monotonic() + 120)
        yield port
    finally:
        server.stop(grace_s=10)


def test_an_idle_keep_alive_connection_outlives_a_retry_after_wait(orchestrator_process):
    """A client that waits out a Retry-After (or sits behind a load balancer that pools connections) sends
    its next request on a connection that has been idle for seconds. The service keeps it open
    (HTTP_KEEP_ALIVE_S, 75 s): with uvicorn's 5 s default, that request races the server's close and fails
    with a reset (seen in the benchmark as a ReadError)."""
    connection = http.client.HTTPConnection("127.0.0.1", orchestrator_process, timeout=10)
    try:
        connection.request("GET", "/healthz")
        first = connection.getresponse()
        first.read()
        assert first.status == 200
        socket_before = connection.sock
        time.sleep(IDLE_S)
        connection.request("GET", "/healthz")
        second = connection.getresponse()
        second.read()
        assert second.status == 200
        # The same socket carried both: http.client would have failed, not reconnected, on a closed one.
        assert connection.sock is socket_before
    finally:
        connection.close()
