"""Run Bugsink, a self-hosted Sentry-protocol error tracker (Django on SQLite), on 127.0.0.1.

Bugsink lives in its own virtual environment (`.venv-bugsink`, built by `make bugsink-env` from
local_bugsink/requirements.txt): it pulls Django, gunicorn and top-level packages named `events`,
`issues`, `api`, `users`, ... that have no place next to the service. This module is standard library
only and never touches Bugsink's database: bootstrap.py does that inside the Bugsink environment, through
Django's management commands and ORM, and events are read back through Bugsink's REST API
(/api/canonical/0/, a read-only token of this run).

Start-up. Migrating a fresh database takes 3-5 s here, so the first start builds a migrated template
(admin user, team, project) inside the Bugsink environment, in `<venv>/local_bugsink_templates/<key>/`;
every later start copies it and starts gunicorn, whose start-up hook (bootstrap.on_starting) gives the
project a fresh DSN key, the admin this run's password and the API token: about 0.5 s.

Ingestion is eager (snappea's TASK_ALWAYS_EAGER): an event is digested inside the HTTP request that
brings it, so no background worker runs and the event is in the database when the SDK's POST returns.
The SDK posts from its own thread, so `events(wait_for=...)` still polls.
"""

from __future__ import annotations

import atexit
import hashlib
import importlib.util
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

# Standard library only as well; shared with the Triton launcher.
from local_triton.process_group import LOOPBACK_OPENER, NotReadyError, ServerProcess, find_free_port

if TYPE_CHECKING:
    from typing_extensions import Self

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_DIR.parent
BOOTSTRAP_SCRIPT = PACKAGE_DIR / "bootstrap.py"
DEFAULT_VENV = REPO_ROOT / ".venv-bugsink"
TEMPLATES_FOLDER = "local_bugsink_templates"
DATABASE_FILES = ("db.sqlite3", "snappea.sqlite3")
SETTINGS_MODULE = "bugsink_conf"
API_PATH = "/api/canonical/0/"
# The names bootstrap.on_starting reads this run's credentials from (see bootstrap.py).
PASSWORD_VARIABLE = "LOCAL_BUGSINK_ADMIN_PASSWORD"
API_TOKEN_VARIABLE = "LOCAL_BUGSINK_API_TOKEN"
SENTRY_KEY_VARIABLE = "LOCAL_BUGSINK_SENTRY_KEY"
_LOG_TAIL_LINES = 60
# Far above any test session: Bugsink's defaults (1000 events per 5 minutes) would drop events silently.
_EVENT_QUOTA = 100_000_000

# Written into the data folder as bugsink_conf.py (the module `bugsink-manage` and bugsink.wsgi import).
SETTINGS_TEMPLATE = """\
# Written by local_bugsink for one local Bugsink server; see local_bugsink/server.py.
import os

from bugsink.settings.default import *  # noqa: F401,F403

SECRET_KEY = {secret_key!r}
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
TIME_ZONE = "UTC"
DATABASES["default"]["NAME"] = {database!r}
DATABASES["snappea"]["NAME"] = {snappea_database!r}
EMAIL_BACKEND = "django.core.mail.backends.dummy.EmailBackend"
# Digest each event inside the request that brings it: no snappea worker process.
SNAPPEA = {{"TASK_ALWAYS_EAGER": True, "WAKEUP_CALLS_DIR": {wakeup_dir!r}}}
BUGSINK = {{
    "BASE_URL": {base_url!r},
    "SINGLE_USER": True,
    "SINGLE_TEAM": True,
    "USER_REGISTRATION": "CB_NOBODY",
    "PHONEHOME": False,
    "INGEST_STORE_BASE_DIR": {ingest_dir!r},
    "MAX_EVENTS_PER_PROJECT_PER_5_MINUTES": {quota},
    "MAX_EVENTS_PER_PROJECT_PER_HOUR": {quota},
    "MAX_EVENTS_PER_PROJECT_PER_MONTH": {quota},
    "MAX_EVENTS_PER_5_MINUTES": {quota},
    "MAX_EVENTS_PER_HOUR": {quota},
    "MAX_EVENTS_PER_MONTH": {quota},
}}
# Bugsink lifts its 5 s per-query limit only for `bugsink-manage migrate`; the bootstrap migrates too.
if os.environ.get("LOCAL_BUGSINK_BOOTSTRAP") == "1":
    I_AM_RUNNING = "MIGRATE"
"""


class BugsinkError(RuntimeError):
    """Bugsink could not do what was asked (read events, ...)."""


class BugsinkStartError(BugsinkError):
    """Bugsink could not be prepared or started, or was not ready in time."""


class BugsinkNotInstalledError(BugsinkStartError):
    """No Python environment with Bugsink installed was found."""


def find_bugsink_python(python: str | Path | None = None) -> Path:
    """The interpreter of the Bugsink environment: `python` if given, else $BUGSINK_PYTHON, else
    .venv-bugsink/bin/python in this repository, else this interpreter if it has Bugsink installed."""
    if python is not None:
        source, path = "the given interpreter", Path(python)
    elif os.environ.get("BUGSINK_PYTHON"):
        source, path = "$BUGSINK_PYTHON", Path(os.environ["BUGSINK_PYTHON"])
    else:
        source, path = "the repository's Bugsink environment", DEFAULT_VENV / "bin" / "python"
        if not path.is_file() and importlib.util.find_spec("bugsink") is not None:
            return Path(sys.executable)
    if path.is_file() and os.access(path, os.X_OK):
        # Absolute (symlinks kept: a venv's python is a link whose location makes the venv): the
        # interpreter is run from other working directories.
        return path.absolute()
    raise BugsinkNotInstalledError(
        f"no Python environment with Bugsink was found (tried {source}: {path}). Create it with "
        f"`make bugsink-env` (a virtual environment at {DEFAULT_VENV} from local_bugsink/requirements.txt), "
        "or point $BUGSINK_PYTHON at an interpreter that has `bugsink` installed."
    )


def _bugsink_environment(python: Path) -> tuple[Path, str] | None:
    """(root, installed Bugsink version) when `python` belongs to a virtual environment, else None."""
    root = python.parent.parent  # not resolved: a venv's bin/python is a link to the base interpreter
    if not (root / "pyvenv.cfg").is_file():
        return None
    dist_infos = sorted(root.glob("lib/python3*/site-packages/bugsink-*.dist-info"))
    if not dist_infos:
        return None
    return root, dist_infos[-1].name.removeprefix("bugsink-").removesuffix(".dist-info")


def _template_key(bugsink_version: str) -> str:
    """Changes with Bugsink's version and with the code that builds the template."""
    hasher = hashlib.sha256(bugsink_version.encode())
    hasher.update(BOOTSTRAP_SCRIPT.read_bytes())
    hasher.update(SETTINGS_TEMPLATE.encode())
    return f"bugsink-{bugsink_version}-{hasher.hexdigest()[:12]}"


def _message(data: Mapping[str, Any]) -> str | None:
    """The event's message: `message` as a string or an object, or `logentry` (the logging integration)."""
    for key in ("message", "logentry"):
        value = data.get(key)
        if isinstance(value, str) and value:
            return value
        if isinstance(value, Mapping):
            text = value.get("formatted") or value.get("message")
            if text:
                return text
    return None


def _tags(value: Any) -> dict[str, str]:
    """Tags as a dict; SDKs send an object or a list of [key, value] pairs."""
    if isinstance(value, Mapping):
        return {str(key): str(item) for key, item in value.items()}
    if isinstance(value, list):
        pairs = [pair for pair in value if isinstance(pair, (list, tuple)) and len(pair) == 2]
        return {str(key): str(item) for key, item in pairs}
    return {}


def _values(value: Any) -> list[Any]:
    """Sentry interfaces come as {"values": [...]} or, in the older protocol, as the bare list."""
    if isinstance(value, Mapping):
        value = value.get("values")
    return list(value) if isinstance(value, list) else []


def event_summary(data: Mapping[str, Any], **stored: Any) -> dict[str, Any]:
    """One stored event as a plain dict: the fields tests look at, plus the raw event JSON under "data".
    `stored` overrides what the server knows better (event_id, level, title, issue_id).

    Exceptions are listed as sent, the outermost first; "exception_type"/"exception_value" are the last one,
    the exception that was raised (Sentry's order). The title, as Bugsink's: "type: value", else the message.
    """
    exceptions = [
        {"type": value.get("type"), "value": value.get("value"), "module": value.get("module")}
        for value in _values(data.get("exception"))
        if isinstance(value, Mapping)
    ]
    raised = exceptions[-1] if exceptions else {}
    message = _message(data)
    title = f"{raised['type']}: {raised['value']}" if raised.get("type") else message
    return {
        "event_id": stored.get("event_id") or data.get("event_id"),
        "level": stored.get("level") or data.get("level") or "error",
        "message": message,
        "exception_type": raised.get("type"),
        "exception_value": raised.get("value"),
        "exceptions": exceptions,
        "tags": _tags(data.get("tags")),
        "contexts": dict(data.get("contexts") or {}),
        "extra": dict(data.get("extra") or {}),
        "fingerprint": data.get("fingerprint"),
        "breadcrumbs": _values(data.get("breadcrumbs")),
        "environment": data.get("environment"),
        "release": data.get("release"),
        "logger": data.get("logger"),
        "transaction": data.get("transaction"),
        "platform": data.get("platform"),
        "timestamp": data.get("timestamp"),
        "title": stored.get("title") or title,
        "issue_id": stored.get("issue_id"),
        "data": dict(data),
    }


class BugsinkServer:
    """A Bugsink server on 127.0.0.1, started and stopped from Python.

    >>> with BugsinkServer() as bugsink:
    ...     sentry_sdk.init(dsn=bugsink.dsn)
    ...     ...
    ...     bugsink.events(wait_for=1)  # [{"level": "error", "exception_type": ..., "tags": {...}, ...}]

    `data_dir` keeps the databases (and the DSN, with a fixed `port`) across runs and is never removed;
    without it a temporary folder is used and removed by stop(). `bugsink_python` is the interpreter of
    the Bugsink environment (see find_bugsink_python). The web UI at `base_url` takes `admin_username` /
    `admin_password`. `use_template=False` migrates a fresh database on every start (3-5 s).
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        data_dir: str | Path | None = None,
        bugsink_python: str | Path | None = None,
        admin_password: str | None = None,
        workers: int = 1,
        use_template: bool = True,
    ) -> None:
        self._requested_port = port
        self._given_data_dir = Path(data_dir).resolve() if data_dir is not None else None
        self._given_python = bugsink_python
        self.admin_password = admin_password or secrets.token_urlsafe(12)
        self.workers = workers
        self.use_template = use_template
        self.admin_username = "admin"
        self._data_dir: Path | None = self._given_data_dir
        self._port: int | None = None
        self._project_id: int | None = None
        self._sentry_key: str | None = None
        self._api_token: str | None = None
        self._server: ServerProcess | None = None
        self._atexit_registered = False
        # What events() has read through the API: {issue id: ((digested, stored event counts), [events
        # listed])} and {event id: summary}; a stored event does not change, so each is fetched once.
        self._issue_events: dict[str, tuple[tuple[int, int], list[dict[str, Any]]]] = {}
        self._event_summaries: dict[str, dict[str, Any]] = {}

    # --- properties -------------------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._port is None:
            raise BugsinkError("the port is chosen at start(); the server has not been started")
        return self._port

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def dsn(self) -> str:
        """The project's DSN, `http://<key>@127.0.0.1:<port>/<project id>`."""
        if self._sentry_key is None or self._project_id is None:
            raise BugsinkError("the DSN exists once start() has prepared the project")
        return f"http://{self._sentry_key}@127.0.0.1:{self.port}/{self._project_id}"

    @property
    def project_id(self) -> int | None:
        return self._project_id

    @property
    def data_dir(self) -> Path | None:
        return self._data_dir

    @property
    def log_path(self) -> Path | None:
        return self._data_dir / "bugsink.log" if self._data_dir is not None else None

    @property
    def pid(self) -> int | None:
        """The gunicorn master; its process group holds the workers too."""
        return self._server.pid if self._server is not None else None

    @property
    def is_running(self) -> bool:
        return self._server is not None and self._server.poll() is None

    # --- logs -------------------------------------------------------------------------------------

    def log_text(self) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def _start_error(self, what: str) -> BugsinkStartError:
        return BugsinkStartError(f"{what}; log {self.log_path}\nlog tail:\n{self.log_tail()}")

    # --- life cycle -------------------------------------------------------------------------------

    def start(self, timeout_s: float = 60) -> Self:
        """Prepare the databases, start gunicorn on a free (or the given) port and wait until Bugsink
        answers /health/ready; raise BugsinkStartError with the log tail if it exits or is not ready
        within `timeout_s`."""
        if self.is_running:
            return self
        deadline = time.monotonic() + timeout_s
        python = find_bugsink_python(self._given_python)
        if self._data_dir is None:
            self._data_dir = Path(tempfile.mkdtemp(prefix="local_bugsink_"))
        self._data_dir.mkdir(parents=True, exist_ok=True)
        if not self._atexit_registered:
            atexit.register(self.stop)  # also after a failed start: the temporary folder goes at exit
            self._atexit_registered = True

        self._prepare_databases(python, deadline)
        self._api_token = secrets.token_hex(20)  # Bugsink's format: 40 lowercase hex digits
        self._issue_events, self._event_summaries = {}, {}

        # A port picked free can be taken before gunicorn binds it: retry with a fresh one if we picked it.
        attempts = 1 if self._requested_port is not None else 3
        for attempt in range(attempts):
            self._port = self._requested_port or find_free_port()
            self._write_settings(self._data_dir, self.base_url)
            self._launch(python)
            try:
                self._wait_until_ready(deadline)
                return self
            except BugsinkStartError:
                clash = self._port_clash()
                # gunicorn defers SIGTERM until its main loop, which it never reaches when the bind fails.
                self._terminate(force=clash is not None)
                if clash and attempt + 1 < attempts:
                    continue
                raise
        raise AssertionError("unreachable")

    def stop(self) -> None:
        """Stop the server and every process of its group; remove the temporary data folder. Idempotent."""
        self._terminate()
        if self._given_data_dir is None and self._data_dir is not None:
            shutil.rmtree(self._data_dir, ignore_errors=True)
            self._data_dir = None

    def prepare_template(self, timeout_s: float = 120) -> Path | None:
        """Build (once) the migrated template database that start() copies; None where it cannot be cached."""
        return self._template(find_bugsink_python(self._given_python), time.monotonic() + timeout_s)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # --- databases --------------------------------------------------------------------------------

    def _prepare_databases(self, python: Path, deadline: float) -> None:
        """A fresh data folder gets a copy of the migrated template (built on first use) and a new DSN key; an
        existing one is migrated in place and keeps its key. gunicorn's start-up hook stores the key."""
        data_dir = self._data_dir
        fresh = not (data_dir / "db.sqlite3").exists()
        template = self._template(python, deadline) if fresh and self.use_template else None
        if template is None:
            project = self._bootstrap(python, data_dir, deadline)
        else:
            for name in DATABASE_FILES:
                shutil.copyfile(template / name, data_dir / name)
            project = json.loads((template / "project.json").read_text())
        self._project_id = int(project["project_id"])
        self._sentry_key = uuid.uuid4().hex if template is not None else str(project["sentry_key"])
        self.admin_username = str(project["admin_username"])

    def _template(self, python: Path, deadline: float) -> Path | None:
        """The migrated template for this Bugsink version, built once inside the Bugsink environment; None
        where that environment is unknown or read-only (each start then migrates its own databases)."""
        environment = _bugsink_environment(python)
        if environment is None:
            return None
        root, version = environment
        templates = root / TEMPLATES_FOLDER
        template = templates / _template_key(version)
        if (template / "project.json").is_file():
            return template
        try:
            templates.mkdir(exist_ok=True)
            build = Path(tempfile.mkdtemp(prefix="build-", dir=templates))
        except OSError:
            return None
        try:
            project = self._bootstrap(python, build, deadline)
            # SQLite folds the write-ahead log into the database file when the bootstrap's last connection
            # closes; only then is the file alone a complete copy.
            unfolded = [path.name for path in build.glob("*-wal") if path.stat().st_size]
            if unfolded:
                raise BugsinkStartError(f"the bootstrap left write-ahead logs in {build}: {unfolded}")
            (build / "project.json").write_text(json.dumps(project))
            build.chmod(0o755)  # mkdtemp made it private
            for path in build.iterdir():  # the settings, secret key, WAL leftovers: not part of the template
                if path.name in (*DATABASE_FILES, "project.json"):
                    continue
                if path.is_dir():
                    shutil.rmtree(path)
                else:
                    path.unlink()
            try:
                build.rename(template)
            except OSError:
                if not (template / "project.json").is_file():  # else another process built it first
                    raise
        finally:
            shutil.rmtree(build, ignore_errors=True)
        return template

    def _bootstrap(self, python: Path, data_dir: Path, deadline: float) -> dict[str, Any]:
        """Run bootstrap.py in the Bugsink environment on `data_dir` (migrate; admin, team and project)."""
        self._write_settings(data_dir, "http://127.0.0.1:8000")
        env = self._environment(data_dir)
        env["LOCAL_BUGSINK_BOOTSTRAP"] = "1"
        command = [str(python), "-P", str(BOOTSTRAP_SCRIPT)]
        try:
            result = subprocess.run(
                command, check=False, cwd=data_dir, env=env, stdin=subprocess.DEVNULL, capture_output=True,
                text=True,
                timeout=max(deadline - time.monotonic(), 1.0),
            )
        except subprocess.TimeoutExpired as error:
            raise BugsinkStartError(f"migrating the Bugsink databases in {data_dir} took too long") from error
        if result.returncode != 0:
            output = "\n".join((result.stdout + result.stderr).splitlines()[-_LOG_TAIL_LINES:])
            raise BugsinkStartError(
                f"preparing the Bugsink databases in {data_dir} failed "
                f"(exit code {result.returncode}):\n{output}"
            )
        return json.loads(result.stdout.strip().splitlines()[-1])

    # --- server process ---------------------------------------------------------------------------

    def _write_settings(self, data_dir: Path, base_url: str) -> None:
        secret_key_path = data_dir / "secret_key"
        if not secret_key_path.exists():
            secret_key_path.write_text(secrets.token_urlsafe(50))
        (data_dir / f"{SETTINGS_MODULE}.py").write_text(SETTINGS_TEMPLATE.format(
            secret_key=secret_key_path.read_text().strip(),
            database=str(data_dir / "db.sqlite3"),
            snappea_database=str(data_dir / "snappea.sqlite3"),
            wakeup_dir=str(data_dir / "snappea_wakeup"),
            ingest_dir=str(data_dir / "ingestion"),
            base_url=base_url,
            quota=_EVENT_QUOTA,
        ))

    @staticmethod
    def _environment(data_dir: Path) -> dict[str, str]:
        env = {
            key: value for key, value in os.environ.items()
            # Ours would leak into Bugsink's interpreter; a DSN would have Bugsink report to it.
            if key not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "DJANGO_SETTINGS_MODULE")
            and not key.startswith(("SENTRY_", "LOCAL_BUGSINK_"))
        }
        env["PYTHONPATH"] = str(data_dir)
        env["DJANGO_SETTINGS_MODULE"] = SETTINGS_MODULE
        env["PYTHONDONTWRITEBYTECODE"] = "1"  # no __pycache__ for bugsink_conf in the data folder
        return env

    def _command(self, python: Path) -> list[str]:
        return [
            str(python), "-P", "-m", "gunicorn",
            f"--bind=127.0.0.1:{self._port}",
            f"--workers={self.workers}",
            "--worker-class=sync",
            "--timeout=30",
            "--graceful-timeout=3",
            # gunicorn >= 25 opens a control socket at ~/.gunicorn/gunicorn.ctl: one path for all servers.
            "--no-control-socket",
            "--access-logfile=-",
            "--error-logfile=-",
            # The master loads Django, runs bootstrap.on_starting (this run's credentials), forks the workers.
            "--preload",
            f"--config={BOOTSTRAP_SCRIPT}",
            "bugsink.wsgi",
        ]

    def _launch(self, python: Path) -> None:
        env = self._environment(self._data_dir)
        env[PASSWORD_VARIABLE] = self.admin_password
        env[API_TOKEN_VARIABLE] = self._api_token
        env[SENTRY_KEY_VARIABLE] = self._sentry_key
        # The guard kills gunicorn and its workers if this process goes without stop() (SIGKILL, ...): a
        # worker alone would notice its dead master only at its next poll, 15 s later.
        self._server = ServerProcess(
            self._command(python), log_path=self.log_path, cwd=self._data_dir, env=env,
            guard_name="local-bugsink-guard", append_log=True,
        )

    def _port_clash(self) -> str | None:
        if f"Connection in use: ('127.0.0.1', {self._port})" in self.log_text():
            return f"port {self._port} is taken"
        return None

    def _wait_until_ready(self, deadline: float) -> None:
        try:
            # gunicorn retries a taken port for 5 s before it exits: give up at its first complaint.
            self._server.wait_until_ready(f"{self.base_url}/health/ready", deadline, give_up=self._port_clash)
        except NotReadyError as error:
            raise self._start_error(f"Bugsink (gunicorn) {error}") from None

    def _terminate(self, grace_s: float = 5.0, force: bool = False) -> None:
        """SIGTERM to gunicorn (it stops its workers), SIGKILL to what is left of its group after `grace_s`
        (at once with `force`); returns when no process of the group is left."""
        server, self._server = self._server, None
        if server is not None:
            server.stop(grace_s=0 if force else grace_s)

    # --- events -----------------------------------------------------------------------------------

    def events(
        self, wait_for: int = 0, timeout_s: float = 10.0, tags: Mapping[str, str] | None = None
    ) -> list[dict[str, Any]]:
        """The stored events, oldest first, as dicts (see event_summary), waiting up to `timeout_s` until
        at least `wait_for` of them match `tags` (every given tag equal). Raises TimeoutError naming what
        did arrive."""
        wanted = {str(key): str(value) for key, value in (tags or {}).items()}
        deadline = time.monotonic() + timeout_s
        while True:
            if not self.is_running:
                raise BugsinkError(f"Bugsink is not running; log tail:\n{self.log_tail()}")
            stored = self._read_events()
            found = [event for event in stored if wanted.items() <= event["tags"].items()]
            if len(found) >= wait_for:
                return found
            if time.monotonic() > deadline:
                arrived = "\n".join(
                    f"  {event['level']}: {event['title']} tags={event['tags']}" for event in stored[-20:]
                )
                raise TimeoutError(
                    f"{len(found)} of the {wait_for} events wanted (tags {wanted}) arrived within "
                    f"{timeout_s} s; {len(stored)} stored in all:\n{arrived}\nlog tail:\n{self.log_tail(20)}"
                )
            time.sleep(0.1)

    def _read_events(self) -> list[dict[str, Any]]:
        """Every stored event of the project, in the order Bugsink digested them, through its API: the
        project's issues, the event list of each issue whose event counts changed since the last call, and the
        detail (with the event's JSON) of each event not read before.

        Tags are compared here, on the event's JSON: Bugsink's own tag search (`q=key:value`) stores at most
        200 characters of a value and lets fields such as `release` override a tag of that name."""
        issues = self._api_list("issues/", project=self._project_id)
        listed = {}
        for issue in issues:
            counts = (issue["digested_event_count"], issue["stored_event_count"])
            known = self._issue_events.get(issue["id"])
            if known is None or known[0] != counts:
                known = (counts, self._api_list("events/", issue=issue["id"], order="asc"))
            listed[issue["id"]] = known
        self._issue_events = listed
        events = sorted(
            (event for _, issue_events in listed.values() for event in issue_events),
            key=lambda event: (datetime.fromisoformat(event["digested_at"]), event["digest_order"]),
        )
        summaries = {}
        for event in events:
            summary = self._event_summaries.get(event["id"])
            if summary is None:
                detail = self._api_get(f"{self.base_url}{API_PATH}events/{event['id']}/")
                event_id = uuid.UUID(detail["event_id"]).hex  # the SDK's form, without dashes
                summary = event_summary(detail["data"] or {}, event_id=event_id, issue_id=detail["issue"])
            summaries[event["id"]] = summary
        self._event_summaries = summaries
        return list(summaries.values())

    def _api_list(self, path: str, **query: Any) -> list[dict[str, Any]]:
        """Every item of one of the API's lists, page after page (cursor pagination: follow "next")."""
        url: str | None = f"{self.base_url}{API_PATH}{path}?{urllib.parse.urlencode(query)}"
        items: list[dict[str, Any]] = []
        while url:
            page = self._api_get(url)
            items += page["results"]
            url = page.get("next")
        return items

    def _api_get(self, url: str) -> Any:
        request = urllib.request.Request(
            url, headers={"Authorization": f"Bearer {self._api_token}", "Accept": "application/json"})
        try:
            with LOOPBACK_OPENER.open(request, timeout=30) as response:
                return json.load(response)
        except urllib.error.HTTPError as error:
            body = error.read(2000).decode(errors="replace")
            raise BugsinkError(f"Bugsink's API answered {error.code} to GET {url}: {body}") from None
        except (urllib.error.URLError, OSError) as error:
            raise BugsinkError(
                f"Bugsink's API did not answer GET {url}: {error}; log tail:\n{self.log_tail(20)}") from None
