"""A Python-based Triton backend that runs ONNX models with the onnxruntime package.

Installed as `<backend-directory>/onnxruntime/model.py`, it serves every model whose config says
`backend: "onnxruntime"` (Triton's "Python-based backends"), so the same model repository runs here
and under a stock Triton with the real ONNX Runtime backend.

The model file is `<model dir>/<version>/model.onnx`, or `default_model_filename` from the config.
Triton input/output names are the ONNX names. Output dtypes are whatever the ONNX graph produces.

Batching (max_batch_size > 0): the requests handed to one execute() call are run together.
Requests whose non-batch shapes agree are concatenated along dim 0. Requests whose shapes differ run
group by group (one session run per shape), unless the config says how to pad:

    parameters { key: "pad_axes" value: { string_value: "x:1" } }              # input:axis[,...]
    parameters { key: "pad_length_input" value: { string_value: "x_lengths" } } # required with pad_axes
    parameters { key: "pad_value" value: { string_value: "0" } }                # optional, default 0
    parameters { key: "trim_output_axes" value: { string_value: "y:1" } }       # output:axis[:input][,...]

Axes count in the batched tensor (0 is the batch axis) and must be dynamic (-1) in the config.
Padded inputs are filled up to the longest request in the group with pad_value; the length input is
an ordinary input the client sends, which tells the model the true lengths. Each listed output is
cut back, per request, to that request's own size along the padded axis of `input` (default: the
first padded input), times the output/input size ratio when the output axis is an integer multiple
of it (e.g. an upsampling decoder).

Triton's dynamic batcher only puts requests of different shapes into one execute() call when the
inputs that differ say `allow_ragged_batch: true` in the config; without it every call holds one
shape and the grouping/padding above never has anything to do.

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
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


@dataclass
class PaddingRule:
    axes: dict[str, int]  # padded input -> axis in the batched tensor
    length_input: str
    pad_value: float = 0.0
    trim_outputs: dict[str, tuple[int, str]] = field(default_factory=dict)  # output -> (axis, input)


@dataclass
class PendingRequest:
    index: int
    feeds: dict[str, np.ndarray]
    rows: int


def _parameters(config: dict) -> dict[str, str]:
    return {key: value.get("string_value", "") for key, value in config.get("parameters", {}).items()}


def _split_entries(text: str) -> list[list[str]]:
    return [entry.strip().split(":") for entry in text.split(",") if entry.strip()]


def parse_padding_rule(config: dict) -> PaddingRule | None:
    """The padding rule from the config parameters, or None when the config does not allow padding."""
    params = _parameters(config)
    if not params.get("pad_axes", "").strip():
        for key in ("pad_length_input", "trim_output_axes"):
            if params.get(key, "").strip():
                raise ValueError(f"parameter {key!r} needs 'pad_axes' as well")
        return None
    if int(config.get("max_batch_size", 0)) <= 0:
        raise ValueError("'pad_axes' needs max_batch_size > 0 (padding merges requests along dim 0)")
    input_dims = {entry["name"]: [int(d) for d in entry.get("dims", [])] for entry in config.get("input", [])}
    output_names = {entry["name"] for entry in config.get("output", [])}

    axes: dict[str, int] = {}
    for entry in _split_entries(params["pad_axes"]):
        if len(entry) != 2 or entry[0] not in input_dims:
            raise ValueError(
                f"pad_axes entry {':'.join(entry)!r} is not '<input>:<axis>' with a config input"
            )
        name, axis = entry[0], int(entry[1])
        dims = input_dims[name]
        # dims exclude the batch axis, so batched axis a is dims[a - 1].
        if not 1 <= axis <= len(dims) or dims[axis - 1] != -1:
            raise ValueError(f"pad_axes: axis {axis} of input {name!r} (dims {dims}) is not a dynamic axis")
        axes[name] = axis

    length_input = params.get("pad_length_input", "").strip()
    if not length_input:
        raise ValueError("'pad_axes' needs 'pad_length_input' naming the input that carries true lengths")
    if length_input not in input_dims or length_input in axes:
        raise ValueError(f"pad_length_input {length_input!r} must be a config input that is not padded")

    first_padded = next(iter(axes))
    trim_outputs: dict[str, tuple[int, str]] = {}
    for entry in _split_entries(params.get("trim_output_axes", "")):
        if len(entry) not in (2, 3) or entry[0] not in output_names:
            raise ValueError(
                f"trim_output_axes entry {':'.join(entry)!r} is not '<output>:<axis>[:<padded input>]'"
            )
        reference = entry[2] if len(entry) == 3 else first_padded
        if reference not in axes:
            raise ValueError(f"trim_output_axes: {reference!r} is not a padded input")
        if int(entry[1]) < 1:
            raise ValueError("trim_output_axes: the batch axis (0) cannot be trimmed")
        trim_outputs[entry[0]] = (int(entry[1]), reference)
    return PaddingRule(axes, length_input, float(params.get("pad_value", "0") or 0), trim_outputs)


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
        self.padding = parse_padding_rule(config)

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
        padded_axes = self.padding.axes if self.padding else {}
        key = []
        for name in sorted(item.feeds):
            array = item.feeds[name]
            shape = list(array.shape[1:])
            if name in padded_axes:
                shape[padded_axes[name] - 1] = None
            key.append((name, array.dtype.str, tuple(shape)))
        return tuple(key)

    def _group_by_shape(self, pending: list[PendingRequest]) -> list[list[PendingRequest]]:
        groups: dict[tuple, list[PendingRequest]] = {}
        for item in pending:
            groups.setdefault(self._group_key(item), []).append(item)
        return list(groups.values())

    def _merge_feeds(self, group: list[PendingRequest]) -> dict[str, np.ndarray]:
        if len(group) == 1:
            return group[0].feeds
        merged = {}
        for name in group[0].feeds:
            arrays = [item.feeds[name] for item in group]
            axis = self.padding.axes.get(name) if self.padding else None
            if axis is not None:
                longest = max(array.shape[axis] for array in arrays)
                arrays = [self._pad(array, axis, longest) for array in arrays]
            merged[name] = np.concatenate(arrays, axis=0)
        return merged

    def _pad(self, array: np.ndarray, axis: int, size: int) -> np.ndarray:
        if array.shape[axis] == size:
            return array
        widths = [(0, 0)] * array.ndim
        widths[axis] = (0, size - array.shape[axis])
        return np.pad(array, widths, constant_values=np.asarray(self.padding.pad_value).astype(array.dtype))

    def _run_group(self, group: list[PendingRequest], requests: list, responses: list) -> None:
        try:
            feeds = self._merge_feeds(group)
            outputs = dict(zip(self.output_names, self.session.run(self.output_names, feeds)))
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
                    part = value[start:start + item.rows] if batched else value
                    if len(group) > 1:
                        part = self._trim(name, part, item, feeds)
                    own[name] = part
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

        for item, own in zip(group, split):
            wanted = requests[item.index].requested_output_names() or self.output_names
            tensors = [
                pb_utils.Tensor(name, np.ascontiguousarray(own[name])) for name in wanted if name in own
            ]
            responses[item.index] = pb_utils.InferenceResponse(output_tensors=tensors)

    def _trim(self, name: str, part: np.ndarray, item: PendingRequest, feeds: dict) -> np.ndarray:
        if self.padding is None or name not in self.padding.trim_outputs:
            return part
        axis, reference = self.padding.trim_outputs[name]
        input_axis = self.padding.axes[reference]
        padded_size = feeds[reference].shape[input_axis]
        own_size = item.feeds[reference].shape[input_axis]
        if own_size == padded_size:
            return part
        output_size = part.shape[axis]
        if padded_size == 0 or output_size % padded_size:
            raise ValueError(
                f"model {self.model_name!r}: output {name!r} axis {axis} has size {output_size}, not a "
                f"multiple of the padded size {padded_size} of input {reference!r}; cannot trim it"
            )
        keep = own_size * (output_size // padded_size)
        return part[(slice(None),) * axis + (slice(0, keep),)]
