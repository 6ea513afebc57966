"""Strict state-dict loading shared by every network.

The official loaders are lenient (`strict=False`, and s2mel's loader silently drops tensors whose
shape differs). Ours refuse: a missing, unexpected or mis-shaped tensor is an error that names the
file, the key and both shapes, so a wrong or truncated checkpoint never serves random weights.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn


class CheckpointError(ValueError):
    """A checkpoint file does not match the network it is loaded into."""


def load_state_dict_strict(
    module: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    source: str | Path,
    ignore_missing: tuple[str, ...] = (),
) -> None:
    """Load `state_dict` into `module`, refusing any missing, unexpected or mis-shaped tensor.

    `ignore_missing` names keys (exact, or prefixes ending in '.') that the module may have but the
    file need not: buffers the module computes itself, such as RoPE tables.
    """
    expected = module.state_dict()
    problems: list[str] = []
    for key, tensor in state_dict.items():
        if key not in expected:
            problems.append(f"unexpected key {key!r} with shape {tuple(tensor.shape)}")
        elif tuple(tensor.shape) != tuple(expected[key].shape):
            problems.append(
                f"key {key!r} has shape {tuple(tensor.shape)} in the file, "
                f"the network expects {tuple(expected[key].shape)}"
            )
    for key, tensor in expected.items():
        if key in state_dict or _ignored(key, ignore_missing):
            continue
        problems.append(f"missing key {key!r} (the network expects shape {tuple(tensor.shape)})")
    if problems:
        shown = "\n  ".join(problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise CheckpointError(f"{source}: {len(problems)} problem(s) loading {type(module).__name__}:\n  {shown}{more}")
    # assign=False copies into the existing parameters, keeping their dtype and device.
    module.load_state_dict(dict(state_dict), strict=False)


def _ignored(key: str, ignore_missing: tuple[str, ...]) -> bool:
    return any(key == name or (name.endswith(".") and key.startswith(name)) for name in ignore_missing)


def fold_weight_norm(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Replace old-style weight-norm pairs (`X.weight_g`, `X.weight_v`) by the plain `X.weight`.

    Official s2mel and BigVGAN checkpoints store weight-normed convolutions this way; at inference the
    norm is constant, so our networks hold the folded weight (what `remove_weight_norm()` leaves).
    The norm is taken over every dimension but 0, as `torch.nn.utils.weight_norm(dim=0)` does.
    """
    folded: dict[str, torch.Tensor] = {}
    for key, tensor in state_dict.items():
        if key.endswith(".weight_g"):
            continue
        if key.endswith(".weight_v"):
            prefix = key[: -len(".weight_v")]
            g_key = prefix + ".weight_g"
            if g_key not in state_dict:
                raise CheckpointError(f"{key!r} has no matching {g_key!r}")
            v = tensor.float()
            norm = v.flatten(1).norm(dim=1).view(-1, *([1] * (v.dim() - 1)))
            folded[prefix + ".weight"] = (v * (state_dict[g_key].float() / norm)).to(tensor.dtype)
        else:
            folded[key] = tensor
    orphans = [k for k in state_dict if k.endswith(".weight_g") and k[:-1] + "v" not in state_dict]
    if orphans:
        raise CheckpointError(f"{orphans[0]!r} has no matching '.weight_v'")
    return folded


def unfold_weight_norm(state_dict: Mapping[str, torch.Tensor], keys: list[str]) -> dict[str, torch.Tensor]:
    """The inverse of `fold_weight_norm` for the named `X.weight` keys: used by the demo preset to
    write checkpoints in the official weight-norm layout."""
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state_dict.items():
        if key in keys:
            prefix = key[: -len(".weight")]
            norm = tensor.flatten(1).norm(dim=1).view(-1, *([1] * (tensor.dim() - 1)))
            out[prefix + ".weight_g"] = norm.clone()
            out[prefix + ".weight_v"] = tensor.clone()
        else:
            out[key] = tensor
    return out


def torch_load(path: str | Path) -> object:
    """`torch.load` for checkpoint files, with a clear error for a missing file.

    weights_only=True: a checkpoint is data; it must not run code when it is read.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file not found: {path}")
    return torch.load(path, map_location="cpu", weights_only=True)
