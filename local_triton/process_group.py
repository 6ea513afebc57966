"""Process groups that end with the process that started them (tritonserver with its Python-backend stubs,
gunicorn with its workers), however it ends: an exception, any signal, SIGKILL included.

Each server runs in a session of its own (start_new_session=True), so one killpg reaches all of its
processes. A clean stop does that itself; for the other ways out, `GroupGuard` starts a small `sh` that
waits for end-of-file on a pipe whose write end only this process holds. The kernel closes that end when
this process goes, however it goes, and the guard SIGKILLs the group (and removes tritonserver's
shared-memory regions, which a killed server leaves in /dev/shm).

Why not PR_SET_PDEATHSIG on the server alone (measured here, nvidia-pytriton's tritonserver 2.51,
gunicorn 26, on a machine whose PID 1 does not reap orphans):
- a stub checks its parent with kill(ppid, 0) every 300 ms, and that succeeds on a zombie: the stubs of a
  SIGKILLed tritonserver exit 0.45 s after it is reaped, and never while nobody reaps it;
- gunicorn's sync worker notices a dead master at its next poll, 15 s later with --timeout=30;
- the signal follows the *thread* that forked the server, and the demo's supervisor restarts tritonserver
  from a thread of its own.
The guard has none of these limits: the pipe belongs to the process, and killpg reaches the grandchildren.

`ServerProcess` is what both launchers (local_triton, local_bugsink) do with it: start a server on loopback in
a session of its own with a guard, wait until it answers HTTP, stop it and everything it started.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path

# Blocks until the pipe closes (nothing is ever written), kills group "$1", removes the files "$2"*.
_GUARD_SCRIPT = 'read -r line; kill -s KILL -- "-$1"; [ -z "$2" ] || rm -f -- "$2"*'


class GroupGuard:
    """SIGKILLs process group `group` once this process has gone, then removes the files whose path
    starts with `remove_prefix` (tritonserver's shared-memory regions); `release()` ends it without
    doing either."""

    def __init__(self, group: int, name: str = "process-group-guard", remove_prefix: str = "") -> None:
        self.group = group
        # A session of its own: Ctrl-C in a terminal reaches the servers' owner, not the guard.
        self._process = subprocess.Popen(
            ["sh", "-c", _GUARD_SCRIPT, name, str(group), remove_prefix],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self._process.pid

    def release(self) -> None:
        """End the guard without touching the group (for after a clean stop). The guard is killed before
        its pipe is closed, so it cannot act on a group number that is free again. Idempotent."""
        if self._process.poll() is None:
            self._process.kill()
        self._process.wait()
        if self._process.stdin is not None:
            self._process.stdin.close()


def signal_process_group(group: int, signum: int) -> None:
    try:
        os.killpg(group, signum)
    except (ProcessLookupError, PermissionError):
        pass


def process_group_members(group: int) -> list[int]:
    """Live (not zombie) processes of process group `group`."""
    proc = Path("/proc")
    if not proc.is_dir():
        try:
            os.killpg(group, 0)
        except (ProcessLookupError, PermissionError):
            return []
        return [group]
    members = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses, so split after the last ")".
        fields = stat[stat.rfind(")") + 2:].split()
        if len(fields) >= 3 and fields[0] != "Z" and int(fields[2]) == group:
            members.append(int(entry.name))
    return members


def wait_until_group_gone(group: int, timeout_s: float) -> bool:
    """Wait until no live process is left in `group` (a SIGKILL is delivered, not yet acted on, when
    killpg returns); False if some are still there after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while process_group_members(group):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def find_free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the OS picks it; another process may take it before
    the server binds it, so launchers retry with a fresh one)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class NotReadyError(RuntimeError):
    """The server exited during start-up, gave up (see wait_until_ready), or did not answer in time."""


# For requests to the servers: without proxies, as an http_proxy in the environment would carry 127.0.0.1 too.
LOOPBACK_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class ServerProcess:
    """`command` run in a session (so a process group) of its own, its output in `log_path`, with a
    GroupGuard that SIGKILLs the group (and removes the files starting with `remove_prefix`) if this process
    goes first."""

    def __init__(
        self,
        command: list[str],
        *,
        log_path: Path,
        cwd: str | Path,
        env: Mapping[str, str],
        guard_name: str,
        remove_prefix: str = "",
        append_log: bool = False,
    ) -> None:
        with open(log_path, "ab" if append_log else "wb") as log_file:
            log_file.write(("$ " + " ".join(command) + "\n").encode())
            log_file.flush()
            self._process = subprocess.Popen(
                command, cwd=cwd, env=dict(env),
                stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True,
            )
        self._guard = GroupGuard(self._process.pid, name=guard_name, remove_prefix=remove_prefix)

    @property
    def pid(self) -> int:
        """The server; the leader of its process group."""
        return self._process.pid

    def poll(self) -> int | None:
        """The exit code once the server has exited (negative: killed by that signal), else None."""
        return self._process.poll()

    def wait_until_ready(
        self, url: str, deadline: float, *, poll_s: float = 0.05,
        give_up: Callable[[], str | None] | None = None,
    ) -> None:
        """Return once GET `url` answers 200; raise NotReadyError if the server exits, `give_up()` returns a
        reason (e.g. a line in the log), or `deadline` (time.monotonic()) passes first."""
        while True:
            code = self._process.poll()
            if code is not None:
                raise NotReadyError(f"exited with code {code} during start-up")
            reason = give_up() if give_up is not None else None
            if reason:
                raise NotReadyError(reason)
            try:
                with LOOPBACK_OPENER.open(url, timeout=1) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                raise NotReadyError("was not ready within the timeout")
            time.sleep(poll_s)

    def stop(self, grace_s: float) -> None:
        """SIGTERM to the server (it stops what it started), SIGKILL to whatever is left of its group after
        `grace_s` (at once with 0); returns once no process of the group is left, the guard released."""
        if grace_s > 0 and self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)
            try:
                self._process.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                pass
        # The server if it hung, children it orphaned (tritonserver's stubs, gunicorn's workers).
        signal_process_group(self._process.pid, signal.SIGKILL)
        self._process.wait()
        # A restart must not overlap with the old children, nor a test find them: a SIGKILL is delivered, not
        # yet acted on, when killpg returns.
        wait_until_group_gone(self._process.pid, timeout_s=10)
        self._guard.release()
