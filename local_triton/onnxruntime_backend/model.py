"""A Python-based Triton backend that runs ONNX models with the onnxruntime package.

Installed as `<backend-directory>/onnxruntime/model.py`, it serves every model whose config says
`backend: "onnxruntime"` (Triton's "Python-based backends"), so the same model repository runs here
and under a stock Triton with the real ONNX Runtime backend.

The model file is `<model dir>/<version>/model.onnx`, or `default_model_filename` from the config.
Triton input/output names are the ONNX names. As in NVIDIA's backend, the config's `data_type` of each
input and output must be the element type the ONNX graph has there: a mismatch fails the model's load
with an error naming the model, the tensor and both types (a config left unchecked would tell clients
one type while the responses carry another).

Batching (max_batch_size > 0): the requests handed to one execute() call are run together.
Requests whose non-batch shapes agree are concatenated along dim 0; requests whose shapes differ run
group by group (one session run per shape). Triton's dynamic batcher only puts requests of different
shapes into one execute() call when the inputs that differ say `allow_ragged_batch: true` in the config.

An input's `reshape` (e.g. `dims: [ 1 ] reshape: { shape: [ ] }`, the usual way to send one length per
request) is applied before the model runs, as Triton's own ONNX Runtime backend does.

Other parameters: intra_op_num_threads (alias intra_op_thread_count), inter_op_num_threads (alias
inter_op_thread_count). Instances of kind GPU use the CUDA execution provider when onnxruntime has
it, otherwise the CPU one.

An error in one request (missing input, bad shape, a failing run) becomes that request's error
response; the others in the batch still get their results.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


@dataclass
class PendingRequest:
    index: int
    feeds: dict[str, np.ndarray]
    rows: int


def _parameters(config: dict) -> dict[str, str]:
    return {key: value.get("string_value", "") for key, value in config.get("parameters", {}).items()}


# ONNX Runtime's element type names (NodeArg.type) -> Triton's config data types.
ONNX_TO_TRITON_TYPE = {
    "tensor(bool)": "TYPE_BOOL",
    "tensor(uint8)": "TYPE_UINT8",
    "tensor(uint16)": "TYPE_UINT16",
    "tensor(uint32)": "TYPE_UINT32",
    "tensor(uint64)": "TYPE_UINT64",
    "tensor(int8)": "TYPE_INT8",
    "tensor(int16)": "TYPE_INT16",
    "tensor(int32)": "TYPE_INT32",
    "tensor(int64)": "TYPE_INT64",
    "tensor(float16)": "TYPE_FP16",
    "tensor(float)": "TYPE_FP32",
    "tensor(double)": "TYPE_FP64",
    "tensor(bfloat16)": "TYPE_BF16",
    "tensor(string)": "TYPE_STRING",
}


def type_mismatches(model_name: str, kind: str, config_entries: list[dict], onnx_nodes: list) -> list[str]:
    """One line per config entry whose data_type is not the ONNX graph's element type for that name."""
    onnx_types = {node.name: node.type for node in onnx_nodes}
    problems = []
    for entry in config_entries:
        onnx_type = onnx_types.get(entry["name"])
        config_type = entry.get("data_type", "TYPE_INVALID")
        if onnx_type is not None and ONNX_TO_TRITON_TYPE.get(onnx_type) != config_type:
            problems.append(
                f"model {model_name!r}: {kind} {entry['name']!r} is {config_type} in config.pbtxt but "
                f"{onnx_type} ({ONNX_TO_TRITON_TYPE.get(onnx_type, 'no Triton type')}) in the ONNX model"
            )
    return problems


def _session_options(config: dict) -> ort.SessionOptions:
    params = _parameters(config)
    options = ort.SessionOptions()
    for attribute, keys in (
        ("intra_op_num_threads", ("intra_op_num_threads", "intra_op_thread_count")),
        ("inter_op_num_threads", ("inter_op_num_threads", "inter_op_thread_count")),
    ):
        for key in keys:
            if params.get(key, "").strip():
                setattr(options, attribute, int(params[key]))
                break
    return options


def _providers(kind: str, device_id: int) -> list:
    if kind == "GPU" and "CUDAExecutionProvider" in ort.get_available_providers():
        return [("CUDAExecutionProvider", {"device_id": device_id}), "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def _error_response(error: BaseException) -> pb_utils.InferenceResponse:
    message = str(error) or type(error).__name__
    return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(message))


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        self.model_name = args["model_name"]
        self.max_batch_size = int(config.get("max_batch_size", 0))
        filename = config.get("default_model_filename") or "model.onnx"
        model_path = Path(args["model_repository"]) / args["model_version"] / filename
        if not model_path.is_file():
            raise FileNotFoundError(f"model {self.model_name!r}: no ONNX file at {model_path}")

        providers = _providers(
            args.get("model_instance_kind", "CPU"), int(args.get("model_instance_device_id", 0))
        )
        self.session = ort.InferenceSession(str(model_path), sess_options=_session_options(config),
                                            providers=providers)

        onnx_inputs = {node.name for node in self.session.get_inputs()}
        onnx_outputs = [node.name for node in self.session.get_outputs()]
        self.input_names = [entry["name"] for entry in config.get("input", [])]
        self.input_reshapes = {
            entry["name"]: [int(d) for d in entry["reshape"].get("shape", [])]
            for entry in config.get("input", [])
            if "reshape" in entry
        }
        self.output_names = [entry["name"] for entry in config.get("output", [])] or onnx_outputs
        unknown_inputs = [name for name in self.input_names if name not in onnx_inputs]
        unknown_outputs = [name for name in self.output_names if name not in onnx_outputs]
        if unknown_inputs or unknown_outputs:
            raise ValueError(
                f"model {self.model_name!r}: config names {unknown_inputs + unknown_outputs} are not in "
                f"{model_path} (ONNX inputs {sorted(onnx_inputs)}, outputs {onnx_outputs})"
            )
        problems = [
            problem
            for kind, nodes in (("input", self.session.get_inputs()), ("output", self.session.get_outputs()))
            for problem in type_mismatches(self.model_name, kind, config.get(kind, []), nodes)
        ]
        if problems:
            raise ValueError("; ".join(problems))

    def execute(self, requests: list) -> list:
        responses: list = [None] * len(requests)
        pending: list[PendingRequest] = []
        for index, request in enumerate(requests):
            try:
                feeds = self._read_inputs(request)
                pending.append(PendingRequest(index, feeds, self._count_rows(feeds)))
            except Exception as error:  # noqa: BLE001 - one bad request must not fail the batch
                responses[index] = _error_response(error)

        if self.max_batch_size <= 0:
            groups = [[item] for item in pending]
        else:
            groups = self._group_by_shape(pending)
        for group in groups:
            self._run_group(group, requests, responses)
        return responses

    def finalize(self) -> None:
        self.session = None

    # --- helpers ----------------------------------------------------------------------------------

    def _read_inputs(self, request) -> dict[str, np.ndarray]:
        feeds = {}
        for name in self.input_names:
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            if tensor is not None:
                array = tensor.as_numpy()
                if name in self.input_reshapes:
                    batch = list(array.shape[:1]) if self.max_batch_size > 0 else []
                    array = array.reshape(batch + self.input_reshapes[name])
                feeds[name] = array
        return feeds

    def _count_rows(self, feeds: dict[str, np.ndarray]) -> int:
        if self.max_batch_size <= 0:
            return 0
        rows = {name: array.shape[0] if array.ndim else None for name, array in feeds.items()}
        if not rows or len(set(rows.values())) != 1 or None in rows.values():
            raise ValueError(f"model {self.model_name!r}: inputs disagree on the batch size: {rows}")
        return next(iter(rows.values()))

    def _group_key(self, item: PendingRequest) -> tuple:
        return tuple(
            (name, item.feeds[name].dtype.str, item.feeds[name].shape[1:]) for name in sorted(item.feeds)
        )

    def _group_by_shape(self, pending: list[PendingRequest]) -> list[list[PendingRequest]]:
        groups: dict[tuple, list[PendingRequest]] = {}
        for item in pending:
            groups.setdefault(self._group_key(item), []).append(item)
        return list(groups.values())

    def _merge_feeds(self, group: list[PendingRequest]) -> dict[str, np.ndarray]:
        if len(group) == 1:
            return group[0].feeds
        return {
            name: np.concatenate([item.feeds[name] for item in group], axis=0) for name in group[0].feeds
        }

    def _run_group(self, group: list[PendingRequest], requests: list, responses: list) -> None:
        try:
            feeds = self._merge_feeds(group)
            outputs = dict(zip(self.output_names, self.session.run(self.output_names, feeds), strict=True))
            batched = self.max_batch_size > 0
            total_rows = sum(item.rows for item in group)
            if batched:
                for name, value in outputs.items():
                    if value.ndim == 0 or value.shape[0] != total_rows:
                        raise ValueError(
                            f"model {self.model_name!r}: output {name!r} has shape {value.shape}, not "
                            f"{total_rows} rows, so it cannot be split between requests"
                        )
            split = []
            start = 0
            for item in group:
                own = {}
                for name, value in outputs.items():
                    own[name] = value[start:start + item.rows] if batched else value
                start += item.rows
                split.append(own)
        except Exception as error:  # noqa: BLE001
            if len(group) > 1:
                # Run each request alone, so only the request that causes the error gets it.
                for item in group:
                    self._run_group([item], requests, responses)
            else:
                responses[group[0].index] = _error_response(error)
            return

        for item, own in zip(group, split, strict=True):
            wanted = requests[item.index].requested_output_names() or self.output_names
            tensors = [
                pb_utils.Tensor(name, np.ascontiguousarray(own[name])) for name in wanted if name in own
            ]
            responses[item.index] = pb_utils.InferenceResponse(output_tensors=tensors)
