"""`make serve` (python -m orchestrator.demo) as a real process tree: a killed tritonserver is restarted on
the same ports and the service answers again; the service's own end, SIGKILL or SIGTERM, takes every
process it started with it (tritonserver, its stubs, Bugsink). Process trees are read from /proc, by
parent pid: the servers run in sessions of their own, so process groups would not find them."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

pytest.importorskip("pytriton", reason="nvidia-pytriton (which ships tritonserver) is not installed")

from local_bugsink import BugsinkNotInstalledError, event_summary, find_bugsink_python
from local_triton import find_free_port
from orchestrator.demo import build_demo
from orchestrator.testing import speech_like_wav

REPO_ROOT = Path(__file__).resolve().parent.parent
if not Path("/proc").is_dir():
    pytest.skip("reads process trees from /proc (Linux)", allow_module_level=True)


# --- processes, from /proc ---------------------------------------------------------------------------


def _process_table() -> dict[int, tuple[int, str]]:
    """{pid: (parent pid, state)} of every process."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2:].split()  # after "pid (comm) "; comm may hold spaces
        table[int(entry.name)] = (int(fields[1]), fields[0])
    return table


def _descendants(pid: int) -> set[int]:
    table = _process_table()
    found: set[int] = set()
    parents = [pid]
    while parents:
        parent = parents.pop()
        for child, (ppid, _) in table.items():
            if ppid == parent and child not in found:
                found.add(child)
                parents.append(child)
    return found


def _alive(pids: set[int]) -> set[int]:
    """The pids that still run (a zombie has ended: it waits only for a parent to read its status)."""
    table = _process_table()
    return {pid for pid in pids if pid in table and table[pid][1] != "Z"}


def _command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _shared_memory(owner: int) -> set[str]:
    """The /dev/shm regions of the tritonservers that process `owner` started (see LocalTritonServer)."""
    return {path.name for path in Path("/dev/shm").glob(f"local_triton_{owner}_*")}


def _wait_until_gone(pids: set[int], timeout_s: float) -> dict[int, str]:
    """{pid: command line} of those still running after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while _alive(pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    return {pid: _command_line(pid)[:160] for pid in _alive(pids)}


# --- the service ------------------------------------------------------------------------------------


class Demo:
    """One `python -m orchestrator.demo` process on a free port, its output in a log file."""

    def __init__(self, build_dir: Path, log_path: Path) -> None:
        self.port = find_free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.build_dir = build_dir
        self.log_path = log_path
        self.seen: set[int] = set()  # every descendant met, so stop() finds them after the demo is gone
        env = {**os.environ, "HOST": "127.0.0.1", "PORT": str(self.port), "PYTHONUNBUFFERED": "1"}
        env.pop("SENTRY_DSN", None)  # the demo's own Bugsink, so its processes are part of the tree
        with open(log_path, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "orchestrator.demo", "--build-dir", str(build_dir)],
                cwd=REPO_ROOT, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            )

    @property
    def pid(self) -> int:
        return self.process.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_log(self, text: str, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while text not in self.log():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.2)
        return True

    def readyz(self) -> int | None:
        # trust_env=False here and below: an http_proxy in the environment must not carry 127.0.0.1.
        try:
            return httpx.get(f"{self.base_url}/readyz", timeout=5, trust_env=False).status_code
        except httpx.HTTPError:
            return None

    def wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while self.readyz() != 200:
            assert self.process.poll() is None, f"the demo exited ({self.process.returncode}):\n{self.log()[-4000:]}"
            assert time.monotonic() < deadline, f"/readyz not 200 within {timeout_s} s:\n{self.log()[-4000:]}"
            time.sleep(0.5)

    def processes(self) -> set[int]:
        """The demo's descendants now."""
        found = _descendants(self.pid)
        self.seen |= found
        return found

    def tritonserver_pid(self) -> int:
        table = _process_table()
        children = [pid for pid in self.processes() if table.get(pid, (0, ""))[0] == self.pid
                    and _command_line(pid).split(" ", 1)[0].endswith("/tritonserver")]
        assert len(children) == 1, children
        return children[0]

    def stop(self) -> None:
        """SIGKILL the demo and, should its own clean-up have failed, every process it had started."""
        self.processes()
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        for pid in _alive(self.seen):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.fixture(scope="module")
def build_dir(tmp_path_factory) -> Path:
    """The demo build (checkpoint, exported repository, Bugsink data), made once for the module."""
    try:
        find_bugsink_python()
    except BugsinkNotInstalledError as error:
        pytest.skip(str(error))
    folder = tmp_path_factory.mktemp("serve")
    build_demo(folder)
    return folder


@pytest.fixture()
def demo(build_dir, tmp_path) -> Iterator[Demo]:
    service = Demo(build_dir, tmp_path / "demo.log")
    try:
        service.wait_ready(timeout_s=240)
        yield service
    finally:
        service.stop()


def _stored_events(build_dir: Path, tags: dict[str, str], wait_for: int, timeout_s: float) -> list[dict]:
    """Events of the demo's Bugsink with these tags, read from its database once `wait_for` are there (the
    SDK sends from a thread of its own)."""
    database = build_dir / "bugsink" / "db.sqlite3"
    deadline = time.monotonic() + timeout_s
    while True:
        connection = sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=10)
        try:
            rows = connection.execute("SELECT level, data FROM events_event").fetchall()
        finally:
            connection.close()
        events = [event_summary(json.loads(data), level=level) for level, data in rows]
        found = [event for event in events if tags.items() <= event["tags"].items()]
        if len(found) >= wait_for or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


# --- tests ------------------------------------------------------------------------------------------


def test_a_killed_tritonserver_is_restarted_and_the_service_answers_again(demo):
    tritonserver = demo.tritonserver_pid()
    old_stubs = _descendants(tritonserver)
    old_regions = _shared_memory(demo.pid)
    demo.processes()
    assert any("triton_python_backend_stub" in _command_line(pid) for pid in old_stubs)

    os.kill(tritonserver, signal.SIGKILL)
    killed_at = time.monotonic()
    statuses = []
    while time.monotonic() - killed_at < 120:
        statuses.append(demo.readyz())
        if statuses[-1] == 503:  # Triton is down, the service process is fine
            assert httpx.get(f"{demo.base_url}/healthz", timeout=5, trust_env=False).status_code == 200
        if statuses[-1] == 200 and 503 in statuses:
            break
        time.sleep(0.25)
    back_after = time.monotonic() - killed_at
    assert 503 in statuses and statuses[-1] == 200, (statuses, demo.log()[-4000:])
    assert back_after < 90  # 9-16 s on 2 cores: 0.5 s poll, 1 s backoff, 6-8 s start, gRPC's reconnect

    restarted = demo.tritonserver_pid()
    assert restarted != tritonserver
    # The supervisor logs the restart once its own readiness wait returns, which can be a moment after the
    # service's /readyz already saw the new server ready.
    assert demo.wait_for_log(f"tritonserver restarted (pid {restarted}", timeout_s=30), demo.log()[-4000:]
    assert not _wait_until_gone(old_stubs, timeout_s=5), "stubs of the killed tritonserver survived"
    assert old_regions and not old_regions & _shared_memory(demo.pid)

    response = httpx.post(
        f"{demo.base_url}/v1/tts",
        data={"text": "Hello again.", "max_codes": "20", "diffusion_steps": "3", "seed": "3"},
        files={"speaker_audio": ("voice.wav", speech_like_wav(6.0), "audio/wav")}, timeout=120, trust_env=False,
    )
    assert response.status_code == 200, response.text
    assert response.content[:4] == b"RIFF"

    reports = _stored_events(demo.build_dir, {"stage": "tritonserver"}, wait_for=1, timeout_s=20)
    assert [(event["level"], event["message"]) for event in reports] == [
        ("warning", "tritonserver was killed by signal 9; restarting it")]


def _started_processes(demo: Demo) -> set[int]:
    """Every process the demo started (its descendants), after checking the expected ones are there."""
    started = demo.processes()
    commands = " | ".join(_command_line(pid) for pid in started)
    for part in ("tritonserver", "triton_python_backend_stub", "gunicorn"):
        assert part in commands, f"no {part} among the demo's processes: {commands[:2000]}"
    return started


def test_sigkill_of_the_service_leaves_no_process_behind(demo):
    started = _started_processes(demo)
    assert _shared_memory(demo.pid)
    demo.process.kill()
    demo.process.wait()
    assert not _wait_until_gone(started, timeout_s=5)
    deadline = time.monotonic() + 5
    while _shared_memory(demo.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _shared_memory(demo.pid), "a killed tritonserver's shared memory was left in /dev/shm"


def test_sigterm_of_the_service_stops_every_process_it_started(demo):
    started = _started_processes(demo)
    demo.process.terminate()
    assert demo.process.wait(timeout=60) == 0, demo.log()[-4000:]
    assert not _wait_until_gone(started, timeout_s=5)
    assert not _shared_memory(demo.pid)
