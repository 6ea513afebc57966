"""Run Bugsink (a self-hosted, Sentry-protocol error tracker) on 127.0.0.1, for tests and for `make serve`."""

from local_bugsink.server import (
    BugsinkError,
    BugsinkNotInstalledError,
    BugsinkServer,
    BugsinkStartError,
    event_summary,
    find_bugsink_python,
)

# The shared launcher helpers, public here too (tests check that a stopped server leaves no process behind).
from local_triton.process_group import find_free_port, process_group_members

__all__ = [
    "BugsinkError",
    "BugsinkNotInstalledError",
    "BugsinkServer",
    "BugsinkStartError",
    "event_summary",
    "find_bugsink_python",
    "find_free_port",
    "process_group_members",
]
