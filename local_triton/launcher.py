"""Start a real Triton Inference Server on this machine, from the binary that nvidia-pytriton ships.

nvidia-pytriton (pip) bundles tritonserver 2.51 with the python backend and one backend stub per
Python version, but no ONNX Runtime backend. `build_backend_directory` lays out a backend directory
that tritonserver accepts, and adds a Python-based "onnxruntime" backend (our own model.py that runs
ONNX files with the onnxruntime package), so a model whose config says `backend: "onnxruntime"`
works unchanged here and under a stock Triton container.

`LocalTritonServer` runs the server on 127.0.0.1 with free ports, waits until it is ready and stops
it (with its stub processes) reliably, also when this process is killed (process_group.GroupGuard);
`restart()` brings a dead server back on the same ports. It is meant for tests and local development.
"""

from __future__ import annotations

import atexit
import ctypes
import importlib.metadata
import importlib.util
import os
import re
import shutil
import sys
import sysconfig
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

from local_triton.process_group import NotReadyError, ServerProcess, find_free_port

if TYPE_CHECKING:
    from typing_extensions import Self

ONNXRUNTIME_BACKEND_SOURCE = Path(__file__).resolve().parent / "onnxruntime_backend" / "model.py"
MODEL_CONTROL_MODES = ("none", "explicit")
_LOG_TAIL_LINES = 60


class TritonStartError(RuntimeError):
    """tritonserver could not be started, exited during start-up, or was not ready in time."""


class TritonNotInstalledError(TritonStartError):
    """The tritonserver binary (shipped by nvidia-pytriton) or a part of it is missing."""


@dataclass(frozen=True)
class TritonInstallation:
    """Paths inside the tritonserver tree that nvidia-pytriton installs."""

    root: Path
    server_binary: Path
    python_backend_dir: Path
    stub: Path


def find_triton_installation(python_version: str | None = None) -> TritonInstallation:
    """Locate tritonserver, the python backend and the stub for `python_version` (default: ours)."""
    python_version = python_version or f"{sys.version_info.major}.{sys.version_info.minor}"
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise TritonNotInstalledError(
            "tritonserver is not available: the Python package nvidia-pytriton is not installed in "
            f"{sys.prefix}. Install it with `pip install nvidia-pytriton==0.7.0` (it ships the "
            "tritonserver binary and the python backend)."
        )
    root = Path(next(iter(spec.submodule_search_locations))) / "tritonserver"
    installation = TritonInstallation(
        root=root,
        server_binary=root / "bin" / "tritonserver",
        python_backend_dir=root / "backends" / "python",
        stub=root / "python_backend_stubs" / python_version / "triton_python_backend_stub",
    )
    required = [
        installation.server_binary,
        installation.python_backend_dir / "libtriton_python.so",
        installation.python_backend_dir / "triton_python_backend_utils.py",
        installation.stub,
    ]
    missing = [str(path) for path in required if not path.exists()]
    if missing:
        raise TritonNotInstalledError(
            f"the nvidia-pytriton installation under {root} is incomplete (no stub for Python "
            f"{python_version}?); missing: {', '.join(missing)}"
        )
    return installation


def build_backend_directory(dest: str | Path, installation: TritonInstallation | None = None) -> Path:
    """Create a tritonserver `--backend-directory` at `dest` and return its absolute path.

    python/ gets a copy of libtriton_python.so (a symlink makes tritonserver resolve Python-based
    backends relative to the link target, which breaks them) and a symlink to the stub (a copy
    loses the `$ORIGIN` rpath that finds the stub's bundled libcudart). onnxruntime/model.py is
    our Python-based ONNX Runtime backend.
    """
    installation = installation or find_triton_installation()
    dest = Path(dest).resolve()
    python_dir = dest / "python"
    python_dir.mkdir(parents=True, exist_ok=True)
    for name in ("libtriton_python.so", "triton_python_backend_utils.py"):
        shutil.copy2(installation.python_backend_dir / name, python_dir / name)
    stub_link = python_dir / "triton_python_backend_stub"
    if stub_link.is_symlink() or stub_link.exists():
        stub_link.unlink()
    stub_link.symlink_to(installation.stub)
    onnxruntime_dir = dest / "onnxruntime"
    onnxruntime_dir.mkdir(exist_ok=True)
    shutil.copy2(ONNXRUNTIME_BACKEND_SOURCE, onnxruntime_dir / "model.py")
    return dest


def python_library_dir() -> Path | None:
    """Directory to put on LD_LIBRARY_PATH so the stub finds libpythonX.Y.so.1.0, or None if the
    system loader already finds it.

    The stub embeds Python and links libpythonX.Y.so.1.0. We prefer the library of the interpreter
    running us (e.g. pyenv's lib/) so the embedded runtime matches the venv's standard library
    exactly; a distribution's libpython of the same minor version also works.
    """
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    soname = f"libpython{version}.so.1.0"
    libdir = sysconfig.get_config_var("LIBDIR")
    if libdir and (Path(libdir) / soname).is_file():
        return Path(libdir)
    try:
        ctypes.CDLL(soname)
    except OSError:
        raise TritonStartError(
            f"the Triton python backend stub needs {soname}, which neither {libdir} nor the system "
            f"library path provides. Install it (Debian/Ubuntu: `apt-get install libpython{version}`) "
            "or use a Python built with --enable-shared."
        ) from None
    return None


def _check_numpy_below_2() -> None:
    try:
        version = importlib.metadata.version("numpy")
    except importlib.metadata.PackageNotFoundError:
        return
    if int(version.split(".")[0]) >= 2:
        raise TritonStartError(
            f"numpy {version} is installed in {sys.prefix}; the stub of the bundled Triton 2.51 python "
            "backend silently corrupts tensors with numpy 2. Install numpy<2 in this environment."
        )


def server_environment(base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for tritonserver: our environment's bin/ first on PATH, so the stub runs the venv's
    Python (its site-packages, numpy, onnxruntime), and libpython on LD_LIBRARY_PATH when needed."""
    env = dict(os.environ if base is None else base)
    env["PATH"] = os.pathsep.join([str(Path(sys.prefix) / "bin"), env.get("PATH", "")]).rstrip(os.pathsep)
    libdir = python_library_dir()
    if libdir is not None:
        env["LD_LIBRARY_PATH"] = os.pathsep.join(
            [str(libdir), env.get("LD_LIBRARY_PATH", "")]
        ).rstrip(os.pathsep)
    return env


class LocalTritonServer:
    """A tritonserver process on 127.0.0.1, started and stopped from Python.

    >>> with LocalTritonServer("model_repository") as server:
    ...     client = tritonclient.grpc.InferenceServerClient(server.grpc_url)

    Ports left as None are chosen free at start. `grpc_url` and `http_url` are "host:port", the form
    tritonclient expects. With model_control_mode="explicit" models load only when asked
    (`load_models`, or the client's load_model/unload_model); "*" in load_models loads them all.
    """

    def __init__(
        self,
        model_repository: str | Path,
        *,
        grpc_port: int | None = None,
        http_port: int | None = None,
        metrics_port: int | None = None,
        model_control_mode: str = "none",
        load_models: tuple[str, ...] | list[str] = (),
        backend_directory: str | Path | None = None,
        log_path: str | Path | None = None,
        log_verbose: int = 0,
        disable_auto_complete_config: bool = True,
        exit_timeout_s: int = 2,
        extra_args: tuple[str, ...] | list[str] = (),
        keep_workdir: bool = False,
        environment: dict[str, str] | None = None,
    ) -> None:
        if model_control_mode not in MODEL_CONTROL_MODES:
            raise ValueError(
                f"model_control_mode must be one of {MODEL_CONTROL_MODES}, not {model_control_mode!r}"
            )
        if load_models and model_control_mode != "explicit":
            raise ValueError("load_models needs model_control_mode='explicit'")
        self.model_repository = Path(model_repository).resolve()
        self.model_control_mode = model_control_mode
        self.load_models = tuple(load_models)
        self.log_verbose = log_verbose
        self.disable_auto_complete_config = disable_auto_complete_config
        self.exit_timeout_s = exit_timeout_s
        self.extra_args = tuple(extra_args)
        self._requested_ports = {"grpc": grpc_port, "http": http_port, "metrics": metrics_port}
        self._ports: dict[str, int] = {}
        self.keep_workdir = keep_workdir
        # Extra variables for the server and its Python models (e.g. SENTRY_DSN, so they report errors).
        self.environment = dict(environment or {})
        self._given_backend_directory = Path(backend_directory).resolve() if backend_directory else None
        self._given_log_path = Path(log_path).resolve() if log_path else None
        self._backend_directory = self._given_backend_directory
        self._log_path = self._given_log_path
        # A temporary folder for whatever was not given (backend directory, log), removed by stop().
        self._workdir: Path | None = None
        self._server: ServerProcess | None = None
        self._shm_prefix = ""

    # --- properties -------------------------------------------------------------------------------

    @property
    def grpc_port(self) -> int:
        return self._port("grpc")

    @property
    def http_port(self) -> int:
        return self._port("http")

    @property
    def metrics_port(self) -> int:
        return self._port("metrics")

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    @property
    def pid(self) -> int | None:
        return self._server.pid if self._server is not None else None

    @property
    def is_running(self) -> bool:
        return self._server is not None and self._server.poll() is None

    @property
    def returncode(self) -> int | None:
        """The exit code of a server that exited by itself (negative: killed by that signal); None while
        it runs or before it started."""
        return self._server.poll() if self._server is not None else None

    @property
    def log_path(self) -> Path | None:
        return self._log_path

    @property
    def backend_directory(self) -> Path | None:
        return self._backend_directory

    def _port(self, kind: str) -> int:
        if kind not in self._ports:
            raise RuntimeError(f"the {kind} port is chosen at start(); the server has not been started")
        return self._ports[kind]

    # --- logs -------------------------------------------------------------------------------------

    def log_text(self) -> str:
        if self._log_path is None or not self._log_path.exists():
            return ""
        return self._log_path.read_text(errors="replace")

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        """The last `lines` lines of the log, without the option and model tables tritonserver prints."""
        kept = [
            line for line in self.log_text().splitlines() if line.strip() and not line.startswith(("|", "+-"))
        ]
        return "\n".join(kept[-lines:])

    def log_errors(self) -> str:
        """The error lines of the log (tritonserver's E-lines, protobuf and Python errors)."""
        return "\n".join(line for line in self.log_text().splitlines() if _is_error_line(line))

    def _start_error(self, what: str) -> TritonStartError:
        errors = self.log_errors()
        errors_part = f"errors in the log:\n{errors}\n" if errors else ""
        return TritonStartError(f"{what}; log {self._log_path}\n{errors_part}log tail:\n{self.log_tail()}")

    # --- life cycle -------------------------------------------------------------------------------

    def start(self, timeout_s: float = 60) -> Self:
        """Start tritonserver and wait until /v2/health/ready answers 200; raise TritonStartError
        (with the tail of the server log) if it exits or is not ready within `timeout_s`."""
        if self.is_running:
            return self
        if not self.model_repository.is_dir():
            raise TritonStartError(f"model repository {self.model_repository} is not a directory")
        installation = find_triton_installation()
        env = self._server_environment()
        if self._workdir is None and (self._backend_directory is None or self._log_path is None):
            self._workdir = Path(tempfile.mkdtemp(prefix="local_triton_"))
        # Also after a failed start: the temporary folder goes when the interpreter exits.
        atexit.register(self.stop)
        if self._backend_directory is None:
            self._backend_directory = build_backend_directory(self._workdir / "backends", installation)
        if self._log_path is None:
            self._log_path = self._workdir / "tritonserver.log"

        # A port picked free can be taken by another process before tritonserver binds it; retry
        # with fresh ports, but only for ports we picked.
        auto_ports = any(port is None for port in self._requested_ports.values())
        attempts = 3 if auto_ports else 1
        deadline = time.monotonic() + timeout_s
        for attempt in range(attempts):
            self._ports = {
                kind: port if port is not None else find_free_port()
                for kind, port in self._requested_ports.items()
            }
            self._launch(installation, env)
            try:
                self._wait_until_ready(deadline)
                break
            except TritonStartError:
                self._terminate()
                clash = _port_in_use(self.log_text())
                picked = {port for kind, port in self._ports.items() if self._requested_ports[kind] is None}
                if attempt + 1 < attempts and clash in picked:
                    continue
                raise
        return self

    def restart(self, timeout_s: float = 60) -> Self:
        """Start the server again on the ports it had, so clients keep their URL. What is left of the old
        one goes first: the process if it still runs or was never reaped, the stubs a killed server
        orphans, their shared memory. The old log is kept as `<log>.previous`. Raises TritonStartError
        as start() does; call it again to retry."""
        if not self._ports:
            return self.start(timeout_s)
        self._terminate()
        if self._log_path is not None and self._log_path.exists():
            self._log_path.replace(self._log_path.with_name(self._log_path.name + ".previous"))
        self._launch(find_triton_installation(), self._server_environment())
        try:
            self._wait_until_ready(time.monotonic() + timeout_s)
        except TritonStartError:
            self._terminate()
            raise
        return self

    def _server_environment(self) -> dict[str, str]:
        _check_numpy_below_2()
        env = server_environment()
        env.update(self.environment)
        return env

    def _command(self, installation: TritonInstallation) -> list[str]:
        command = [
            str(installation.server_binary),
            f"--model-repository={self.model_repository}",
            f"--backend-directory={self._backend_directory}",
            "--http-address=127.0.0.1",
            "--grpc-address=127.0.0.1",
            "--metrics-address=127.0.0.1",
            f"--http-port={self._ports['http']}",
            f"--grpc-port={self._ports['grpc']}",
            f"--metrics-port={self._ports['metrics']}",
            "--allow-gpu-metrics=false",
            "--pinned-memory-pool-byte-size=0",
            f"--exit-timeout-secs={self.exit_timeout_s}",
            f"--model-control-mode={self.model_control_mode}",
            f"--log-verbose={self.log_verbose}",
            # A prefix of our own names this server's shared-memory regions in /dev/shm, so that
            # after a SIGKILL we can remove exactly ours.
            f"--backend-config=python,shm-region-prefix-name={self._shm_prefix}",
        ]
        if self.disable_auto_complete_config:
            command.append("--disable-auto-complete-config")
        command += [f"--load-model={name}" for name in self.load_models]
        command += list(self.extra_args)
        return command

    def _launch(self, installation: TritonInstallation, env: dict[str, str]) -> None:
        self._shm_prefix = f"local_triton_{os.getpid()}_{uuid.uuid4().hex[:8]}_"
        self._log_path.parent.mkdir(parents=True, exist_ok=True)
        # The guard also removes the stubs' shared-memory regions, which a killed server leaves behind.
        self._server = ServerProcess(
            self._command(installation), log_path=self._log_path, cwd=self.model_repository, env=env,
            guard_name="local-triton-guard", remove_prefix=f"/dev/shm/{self._shm_prefix}",
        )

    def _wait_until_ready(self, deadline: float) -> None:
        try:
            self._server.wait_until_ready(
                f"http://127.0.0.1:{self._ports['http']}/v2/health/ready", deadline, poll_s=0.1)
        except NotReadyError as error:
            raise self._start_error(f"tritonserver {error}") from None

    def stop(self, timeout_s: float | None = None) -> None:
        """SIGTERM, wait (exit_timeout_s plus a grace period by default), then SIGKILL the whole
        process group, stubs included; then remove the temporary folder (and the log, if it was
        there) unless keep_workdir. Safe to call more than once."""
        atexit.unregister(self.stop)
        self._terminate(timeout_s)
        if self._workdir is not None and not self.keep_workdir:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None
            self._backend_directory = self._given_backend_directory
            self._log_path = self._given_log_path

    def _terminate(self, timeout_s: float | None = None) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.stop(grace_s=self.exit_timeout_s + 8 if timeout_s is None else timeout_s)
        # Shared-memory regions of stubs that were killed (after a clean exit there are none).
        for region in Path("/dev/shm").glob(f"{self._shm_prefix}*"):
            region.unlink(missing_ok=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"running pid={self.pid} grpc={self.grpc_url}" if self.is_running else "stopped"
        return f"LocalTritonServer({str(self.model_repository)!r}, {state})"


def _is_error_line(line: str) -> bool:
    if "CudaDriverHelper has not been initialized" in line:  # always there on a machine without CUDA
        return False
    return bool(re.match(r"E\d{4} ", line)) or "ERROR" in line or line.startswith(("error:", "Traceback"))


def _port_in_use(log: str) -> int | None:
    """The port tritonserver could not bind, from its "Socket '127.0.0.1:N' already in use" line."""
    match = re.search(r"Socket '[^']*:(\d+)' already in use", log)
    return int(match.group(1)) if match else None
