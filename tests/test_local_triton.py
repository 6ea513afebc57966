"""A real tritonserver (from nvidia-pytriton) serving a tiny ONNX model through our Python-based
onnxruntime backend, a decoupled Python model and a plain Python model, called over gRPC."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pytriton", reason="nvidia-pytriton (which ships tritonserver) is not installed")
grpcclient = pytest.importorskip("tritonclient.grpc")
onnx = pytest.importorskip("onnx")

from triton_models import inference_statistics
from tritonclient.utils import InferenceServerException

from local_triton import (
    LocalTritonServer,
    TritonNotInstalledError,
    TritonStartError,
    build_backend_directory,
    find_free_port,
)
from local_triton.process_group import NotReadyError, ServerProcess, process_group_members

AFFINE_CONFIG = """
backend: "onnxruntime"
max_batch_size: 8
input [
  { name: "x" data_type: TYPE_FP32 dims: [ -1 ] allow_ragged_batch: true },
  { name: "x_lengths" data_type: TYPE_INT64 dims: [ 1 ] }
]
output [
  { name: "y" data_type: TYPE_FP32 dims: [ -1 ] },
  { name: "y_sum" data_type: TYPE_FP32 dims: [ 1 ] },
  { name: "y_last" data_type: TYPE_FP32 dims: [ 1 ] }
]
dynamic_batching { max_queue_delay_microseconds: 200000 }
instance_group [ { kind: KIND_CPU count: 1 } ]
parameters { key: "intra_op_num_threads" value: { string_value: "1" } }
"""

COUNTDOWN_CONFIG = """
backend: "python"
max_batch_size: 0
model_transaction_policy { decoupled: true }
input [ { name: "X" data_type: TYPE_FP32 dims: [ -1 ] } ]
output [ { name: "Y" data_type: TYPE_FP32 dims: [ -1 ] } ]
instance_group [ { kind: KIND_CPU count: 1 } ]
"""

COUNTDOWN_MODEL = '''
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        for request in requests:
            sender = request.get_response_sender()
            x = pb_utils.get_input_tensor_by_name(request, "X").as_numpy()
            for step in range(3):
                sender.send(pb_utils.InferenceResponse([pb_utils.Tensor("Y", (x + step).astype(np.float32))]))
            sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        return None
'''

ECHO_CONFIG = """
backend: "python"
max_batch_size: 0
input [ { name: "X" data_type: TYPE_FP32 dims: [ -1 ] } ]
output [ { name: "Y" data_type: TYPE_FP32 dims: [ -1 ] } ]
instance_group [ { kind: KIND_CPU count: 1 } ]
"""

ECHO_MODEL = '''
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "X").as_numpy()
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("Y", x)]))
        return responses
'''


def write_affine_onnx(path: Path) -> None:
    """y = 2x + 1; y_sum = sum of y over the first x_lengths frames; y_last = y at frame x_lengths - 1
    (GatherElements: a length beyond the time axis is an ONNX Runtime error)."""
    from onnx import TensorProto, helper

    def scalar(name: str, value: float, dtype: int) -> onnx.NodeProto:
        return helper.make_node("Constant", [], [name], value=helper.make_tensor(name, dtype, [], [value]))

    nodes = [
        scalar("two", 2.0, TensorProto.FLOAT),
        scalar("one", 1.0, TensorProto.FLOAT),
        scalar("zero_i", 0, TensorProto.INT64),
        scalar("one_i", 1, TensorProto.INT64),
        helper.make_node(
            "Constant", [], ["sum_axes"], value=helper.make_tensor("sum_axes", TensorProto.INT64, [1], [1])
        ),
        helper.make_node("Mul", ["x", "two"], ["doubled"]),
        helper.make_node("Add", ["doubled", "one"], ["y"]),
        helper.make_node("Shape", ["x"], ["time_1d"], start=1, end=2),
        helper.make_node("Squeeze", ["time_1d"], ["time"]),
        helper.make_node("Range", ["zero_i", "time", "one_i"], ["positions"]),
        helper.make_node("Less", ["positions", "x_lengths"], ["valid"]),
        helper.make_node("Cast", ["valid"], ["mask"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["y", "mask"], ["masked"]),
        helper.make_node("ReduceSum", ["masked", "sum_axes"], ["y_sum"], keepdims=1),
        helper.make_node("Sub", ["x_lengths", "one_i"], ["last_index"]),
        helper.make_node("GatherElements", ["y", "last_index"], ["y_last"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "affine",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "time"]),
            helper.make_tensor_value_info("x_lengths", TensorProto.INT64, ["batch", 1]),
        ],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "time"]),
            helper.make_tensor_value_info("y_sum", TensorProto.FLOAT, ["batch", 1]),
            helper.make_tensor_value_info("y_last", TensorProto.FLOAT, ["batch", 1]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))


def write_model(repository: Path, name: str, config: str, model_py: str | None = None) -> Path:
    (repository / name / "1").mkdir(parents=True, exist_ok=True)
    (repository / name / "config.pbtxt").write_text(textwrap.dedent(config))
    if model_py is not None:
        (repository / name / "1" / "model.py").write_text(textwrap.dedent(model_py))
    return repository / name


def expected_affine(x: np.ndarray, lengths: np.ndarray) -> dict[str, np.ndarray]:
    y = x * 2 + 1
    y_sum = np.array([[y[row, : lengths[row, 0]].sum()] for row in range(len(x))], dtype=np.float32)
    y_last = np.array([[y[row, lengths[row, 0] - 1]] for row in range(len(x))], dtype=np.float32)
    return {"y": y, "y_sum": y_sum, "y_last": y_last}


def infer_affine(client, model: str, x: np.ndarray, lengths: np.ndarray) -> dict[str, np.ndarray]:
    inputs = [
        grpcclient.InferInput("x", list(x.shape), "FP32"),
        grpcclient.InferInput("x_lengths", list(lengths.shape), "INT64"),
    ]
    inputs[0].set_data_from_numpy(x)
    inputs[1].set_data_from_numpy(lengths)
    result = client.infer(model, inputs)
    return {name: result.as_numpy(name) for name in ("y", "y_sum", "y_last")}


def infer_concurrently(url: str, model: str, batches: list[tuple[np.ndarray, np.ndarray]]) -> list:
    """One client and one thread per request, released together so the dynamic batcher can merge them.
    Each slot holds the outputs, or the InferenceServerException that request got."""
    clients = [grpcclient.InferenceServerClient(url) for _ in batches]
    barrier = threading.Barrier(len(batches))
    results: list = [None] * len(batches)

    def work(slot: int) -> None:
        barrier.wait()
        try:
            results[slot] = infer_affine(clients[slot], model, *batches[slot])
        except InferenceServerException as error:
            results[slot] = error

    threads = [threading.Thread(target=work, args=(slot,)) for slot in range(len(batches))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    for client in clients:
        client.close()
    return results


def random_batch(rng: np.random.Generator, rows: int, time: int, lengths: list[int] | None = None):
    x = rng.standard_normal((rows, time)).astype(np.float32)
    lengths = np.array([[length] for length in (lengths or [time] * rows)], dtype=np.int64)
    return x, lengths


@pytest.fixture(scope="module")
def repository(tmp_path_factory) -> Path:
    repository = tmp_path_factory.mktemp("model_repository")
    write_affine_onnx(repository / "affine" / "1" / "model.onnx")
    write_model(repository, "affine", AFFINE_CONFIG)
    write_model(repository, "countdown", COUNTDOWN_CONFIG, COUNTDOWN_MODEL)
    write_model(repository, "echo", ECHO_CONFIG, ECHO_MODEL)
    return repository


@pytest.fixture(scope="module")
def server(repository):
    server = LocalTritonServer(repository, model_control_mode="explicit", load_models=["*"])
    try:
        server.start(timeout_s=60)
        yield server
    finally:
        server.stop()


@pytest.fixture
def client(server):
    client = grpcclient.InferenceServerClient(server.grpc_url)
    yield client
    client.close()


def test_backend_directory_copies_library_and_links_stub(tmp_path):
    backends = build_backend_directory(tmp_path / "backends")
    library = backends / "python" / "libtriton_python.so"
    assert library.is_file() and not library.is_symlink()
    assert (backends / "python" / "triton_python_backend_stub").is_symlink()
    assert (backends / "onnxruntime" / "model.py").is_file()


def test_missing_nvidia_pytriton_is_a_clear_error(monkeypatch):
    import importlib.util

    from local_triton import launcher

    real_find_spec = importlib.util.find_spec

    def find_spec_without_pytriton(name: str, *args):
        return None if name == "pytriton" else real_find_spec(name, *args)

    monkeypatch.setattr(launcher.importlib.util, "find_spec", find_spec_without_pytriton)
    with pytest.raises(TritonNotInstalledError, match="pip install nvidia-pytriton"):
        launcher.find_triton_installation()


def test_onnx_model_output_equals_numpy(client):
    x, lengths = random_batch(np.random.default_rng(0), rows=2, time=5, lengths=[5, 3])
    outputs = infer_affine(client, "affine", x, lengths)
    for name, expected in expected_affine(x, lengths).items():
        assert outputs[name].dtype == np.float32
        np.testing.assert_allclose(outputs[name], expected, rtol=1e-6, atol=1e-6)


def test_response_holds_only_the_requested_outputs(client):
    x, lengths = random_batch(np.random.default_rng(5), rows=1, time=3)
    inputs = [grpcclient.InferInput("x", [1, 3], "FP32"), grpcclient.InferInput("x_lengths", [1, 1], "INT64")]
    inputs[0].set_data_from_numpy(x)
    inputs[1].set_data_from_numpy(lengths)
    result = client.infer("affine", inputs, outputs=[grpcclient.InferRequestedOutput("y_sum")])
    assert result.as_numpy("y") is None
    np.testing.assert_allclose(result.as_numpy("y_sum"), expected_affine(x, lengths)["y_sum"], rtol=1e-6)


def test_concurrent_requests_are_batched_and_each_gets_its_own_rows(server):
    rng = np.random.default_rng(1)
    batches = [random_batch(rng, rows=1 + slot % 2, time=4) for slot in range(5)]
    before = inference_statistics(server, "affine")
    results = infer_concurrently(server.grpc_url, "affine", batches)
    after = inference_statistics(server, "affine", int(before.get("inference_count", 0)) + len(batches))
    executions_before, executions_after = int(before.get("execution_count", 0)), int(after["execution_count"])
    for (x, lengths), outputs in zip(batches, results, strict=True):
        for name, expected in expected_affine(x, lengths).items():
            np.testing.assert_allclose(outputs[name], expected, rtol=1e-6, atol=1e-6)
    assert executions_after - executions_before < len(batches), "the dynamic batcher merged nothing"


def test_ragged_requests_of_different_lengths_run_shape_by_shape(server):
    rng = np.random.default_rng(2)
    batches = [random_batch(rng, rows=1, time=time) for time in (3, 6, 3, 6)]
    results = infer_concurrently(server.grpc_url, "affine", batches)
    for (x, lengths), outputs in zip(batches, results, strict=True):
        assert outputs["y"].shape == x.shape
        for name, expected in expected_affine(x, lengths).items():
            np.testing.assert_allclose(outputs[name], expected, rtol=1e-6, atol=1e-6)


def test_failing_request_gets_its_own_error_and_the_others_their_results(server):
    rng = np.random.default_rng(4)
    batches = [random_batch(rng, rows=1, time=4) for _ in range(3)]
    batches.insert(1, random_batch(rng, rows=1, time=4, lengths=[40]))  # y_last index out of range
    results = infer_concurrently(server.grpc_url, "affine", batches)
    assert isinstance(results[1], InferenceServerException)
    assert "GatherElements" in str(results[1]) or "out of" in str(results[1])
    for slot in (0, 2, 3):
        x, lengths = batches[slot]
        for name, expected in expected_affine(x, lengths).items():
            np.testing.assert_allclose(results[slot][name], expected, rtol=1e-6, atol=1e-6)


def test_decoupled_model_streams_three_responses_then_final_flag(client):
    received: list = []
    done = threading.Event()

    def on_response(result, error) -> None:
        received.append(error if error is not None else result)
        if error is not None or result.get_response().parameters["triton_final_response"].bool_param:
            done.set()

    x = np.array([1.0, 2.0, 3.0], dtype=np.float32)
    inputs = [grpcclient.InferInput("X", [3], "FP32")]
    inputs[0].set_data_from_numpy(x)
    client.start_stream(callback=on_response)
    try:
        client.async_stream_infer("countdown", inputs, enable_empty_final_response=True)
        assert done.wait(timeout=20), "no final response"
    finally:
        client.stop_stream()
    assert not any(isinstance(item, Exception) for item in received), received
    data = [item for item in received if item.as_numpy("Y") is not None]
    assert len(data) == 3 and len(received) == 4
    for step, result in enumerate(data):
        np.testing.assert_array_equal(result.as_numpy("Y"), x + step)
    assert received[-1].get_response().parameters["triton_final_response"].bool_param
    assert received[-1].as_numpy("Y") is None


def test_explicit_mode_unloads_and_loads_models(server, client, repository):
    assert client.is_model_ready("echo")
    client.unload_model("echo")
    assert not client.is_model_ready("echo")
    client.load_model("echo")
    assert client.is_model_ready("echo")


def test_config_output_type_other_than_the_onnx_type_is_refused_at_load(client, repository):
    # y is float in the graph; a config that promises INT64 must not load (NVIDIA's backend refuses it too).
    wrong = repository / "affine_wrong_output_type"
    shutil.copytree(repository / "affine", wrong)
    config = (wrong / "config.pbtxt").read_text()
    y_as_float = '{ name: "y" data_type: TYPE_FP32 dims: [ -1 ] }'
    assert y_as_float in config
    y_as_int = y_as_float.replace("TYPE_FP32", "TYPE_INT64")
    (wrong / "config.pbtxt").write_text(config.replace(y_as_float, y_as_int))
    with pytest.raises(InferenceServerException) as caught:
        client.load_model("affine_wrong_output_type")
    message = str(caught.value)
    for part in ("affine_wrong_output_type", "output 'y'", "TYPE_INT64", "tensor(float)"):
        assert part in message, message
    assert not client.is_model_ready("affine_wrong_output_type")


def test_broken_config_raises_start_error_with_log_text(tmp_path):
    write_model(tmp_path, "broken", "backend: \"python\"\nthis is not protobuf text {{{\n", ECHO_MODEL)
    server = LocalTritonServer(tmp_path)
    with pytest.raises(TritonStartError) as caught:
        server.start(timeout_s=30)
    assert "failed to read text proto" in str(caught.value) and "broken" in str(caught.value)
    assert not server.is_running
    server.stop()


def test_stop_ends_server_and_stubs_and_is_idempotent(tmp_path):
    write_model(tmp_path, "echo", ECHO_CONFIG, ECHO_MODEL)
    with LocalTritonServer(tmp_path) as server:
        pid = server.pid
        client = grpcclient.InferenceServerClient(server.grpc_url)
        inputs = [grpcclient.InferInput("X", [2], "FP32")]
        inputs[0].set_data_from_numpy(np.array([1.5, -2.0], dtype=np.float32))
        np.testing.assert_array_equal(client.infer("echo", inputs).as_numpy("Y"), [1.5, -2.0])
        client.close()
        assert len(process_group_members(pid)) >= 2  # the server and the echo stub
    assert not server.is_running
    assert process_group_members(pid) == []
    server.stop()
    assert not os.path.exists(f"/proc/{pid}") or process_group_members(pid) == []


def test_command_line_serves_until_sigterm(tmp_path):
    write_model(tmp_path, "echo", ECHO_CONFIG, ECHO_MODEL)
    command = [sys.executable, "-m", "local_triton", "serve", "--model-repository", str(tmp_path)]
    cli = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           cwd=Path(__file__).resolve().parents[1])
    try:
        lines = []
        while not lines or not lines[-1].strip().startswith("grpc:"):
            line = cli.stdout.readline()
            assert line, "".join(lines)
            lines.append(line)
        grpc_url = lines[-1].split()[-1]
        client = grpcclient.InferenceServerClient(grpc_url)
        assert client.is_model_ready("echo")
        client.close()
        cli.send_signal(signal.SIGTERM)
        output, _ = cli.communicate(timeout=20)
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait()
    assert cli.returncode == 0
    assert "tritonserver stopped" in output


def test_server_process_waits_until_it_answers_and_stop_ends_its_whole_group(tmp_path):
    port = find_free_port()
    # A shell whose child serves: stop() must end the child the shell leaves behind too.
    command = ["sh", "-c", f"{sys.executable} -m http.server {port} --bind 127.0.0.1 & wait"]
    server = ServerProcess(command, log_path=tmp_path / "server.log", cwd=tmp_path, env=os.environ,
                           guard_name="test-guard")
    try:
        server.wait_until_ready(f"http://127.0.0.1:{port}/", time.monotonic() + 30)
        assert len(process_group_members(server.pid)) == 2
    finally:
        server.stop(grace_s=5)
    assert process_group_members(server.pid) == []
    assert (tmp_path / "server.log").read_text().startswith("$ sh -c")


def test_server_process_that_exits_during_start_up_is_not_ready(tmp_path):
    server = ServerProcess(["sh", "-c", "echo no model; exit 3"], log_path=tmp_path / "server.log",
                           cwd=tmp_path, env=os.environ, guard_name="test-guard")
    with pytest.raises(NotReadyError, match="exited with code 3 during start-up"):
        server.wait_until_ready(f"http://127.0.0.1:{find_free_port()}/", time.monotonic() + 30)
    server.stop(grace_s=5)
    assert "no model" in (tmp_path / "server.log").read_text()
