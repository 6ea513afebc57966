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
"""

from __future__ import annotations

import os
import subprocess
import time
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
