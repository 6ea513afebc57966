"""s2mel: GPT latents + semantic codes -> mel spectrogram, and its official checkpoint (s2mel.pth).

The three networks IndexTTS-2 runs after the GPT:
- `gpt_layer`: three Linear layers (no activation) 1280 -> 256 -> 128 -> 1024 that map GPT latents to
  the semantic-codec width, added to the codec embeddings of the GPT codes;
- `length_regulator`: stretches those features to the mel frame count (`LengthRegulator`);
- `cfm`: the flow-matching decoder whose `.estimator` is the DiT (`CFM`, `DiT`).

IndexTTS-2.5 has no `gpt_layer` (its s2mel takes no GPT latents): `with_gpt_layer=False`.

`s2mel.pth` is `{'net': {'cfm': sd, 'length_regulator': sd, 'gpt_layer': sd}}` with weight-normed
layers stored as `weight_g`/`weight_v`. The official loader skips tensors whose shape differs and
loads with strict=False; `load_s2mel` refuses any missing, unexpected or mis-shaped tensor instead.
Buffers that the network computes (`input_pos`, the timestep `freqs`) may be absent from a file, but
when present they must hold the values the network computes.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from indextts2.checkpoint import (
    CheckpointError,
    fold_weight_norm,
    load_state_dict_strict,
    torch_load,
    unfold_weight_norm,
)
from indextts2.networks.dit import DiT, ReflectPadConv1d, build_dit
from indextts2.networks.flow_matching import CFM
from indextts2.networks.length_regulator import LengthRegulator, build_length_regulator

# Official widths of gpt_layer (the GPT-2 latent of the real model, then two bottlenecks).
GPT_LATENT_DIM = 1280
GPT_LAYER_WIDTHS = (256, 128)
PARTS = ("cfm", "length_regulator", "gpt_layer")


class S2Mel(nn.Module):
    def __init__(self, gpt_layer: nn.Sequential | None, length_regulator: LengthRegulator, cfm: CFM) -> None:
        super().__init__()
        self.gpt_layer = gpt_layer
        self.length_regulator = length_regulator
        self.cfm = cfm


def build_s2mel(
    s2mel_config: dict[str, Any],
    gpt_latent_dim: int = GPT_LATENT_DIM,
    gpt_layer_widths: tuple[int, int] = GPT_LAYER_WIDTHS,
    with_gpt_layer: bool = True,
) -> S2Mel:
    """Random-weight S2Mel from the `s2mel` section of config.yaml, in eval mode (without gpt_layer for
    IndexTTS-2.5)."""
    length_regulator = build_length_regulator(s2mel_config["length_regulator"])
    widths = [gpt_latent_dim, *gpt_layer_widths, s2mel_config["length_regulator"]["in_channels"]]
    gpt_layer = nn.Sequential(*(nn.Linear(a, b) for a, b in itertools.pairwise(widths))) if with_gpt_layer else None
    return S2Mel(gpt_layer, length_regulator, CFM(build_dit(s2mel_config))).eval()


def computed_buffers(model: S2Mel) -> dict[str, torch.Tensor]:
    """Official buffers that our network computes instead of storing, with the values it computes."""
    dit: DiT = model.cfm.estimator
    return {
        "cfm.estimator.input_pos": torch.arange(dit.max_positions),
        "cfm.estimator.t_embedder.freqs": dit.t_embedder.frequencies(),
        "cfm.estimator.t_embedder2.freqs": dit.t_embedder2.frequencies(),
    }


def weight_normed_keys(model: S2Mel) -> list[str]:
    """The weights stored as weight_g/weight_v in official checkpoints."""
    keys = ["cfm.estimator.x_embedder.weight", "cfm.estimator.final_layer.linear.weight"]
    for name, module in model.named_modules():
        if isinstance(module, ReflectPadConv1d):
            keys.append(f"{name}.conv.conv.weight")
    return keys


def load_s2mel(s2mel_config: dict[str, Any], path: str | Path, with_gpt_layer: bool = True) -> S2Mel:
    """Build S2Mel from config.yaml's `s2mel` section and load the official s2mel.pth strictly.

    The gpt_layer widths, which config.yaml does not give, are read from the file's tensors.
    `with_gpt_layer=False` (IndexTTS-2.5) refuses a file that has one, as any unexpected tensor.
    """
    checkpoint = torch_load(path)
    net = checkpoint.get("net") if isinstance(checkpoint, Mapping) else None
    if not isinstance(net, Mapping) or not all(isinstance(part_sd, Mapping) for part_sd in net.values()):
        raise CheckpointError(f"{path}: expected a dict {{'net': {{{', '.join(map(repr, PARTS))}}}}}")
    state_dict = {
        f"{part}.{key}": tensor for part, part_sd in net.items() for key, tensor in part_sd.items()
    }
    gpt_layer = net.get("gpt_layer", {})
    if not with_gpt_layer:
        model = build_s2mel(s2mel_config, with_gpt_layer=False)
    elif all(f"{i}.weight" in gpt_layer for i in range(3)):
        model = build_s2mel(
            s2mel_config,
            gpt_latent_dim=gpt_layer["0.weight"].shape[1],
            gpt_layer_widths=(gpt_layer["0.weight"].shape[0], gpt_layer["1.weight"].shape[0]),
        )
    else:
        model = build_s2mel(s2mel_config)  # the strict load below names what is missing

    for key, expected in computed_buffers(model).items():
        if key not in state_dict:
            continue
        stored = state_dict.pop(key)
        same = stored.shape == expected.shape and (
            torch.equal(stored, expected) if not expected.is_floating_point()
            else torch.allclose(stored.float(), expected, rtol=1e-6, atol=0.0)
        )
        if not same:
            raise CheckpointError(
                f"{path}: computed buffer {key!r} (shape {tuple(stored.shape)} in the file, the network "
                f"computes shape {tuple(expected.shape)}) holds values other than the network computes"
            )
    try:
        state_dict = fold_weight_norm(state_dict)
    except CheckpointError as error:
        raise CheckpointError(f"{path}: {error}") from None
    try:
        load_state_dict_strict(model, state_dict, path)
    except CheckpointError as error:
        has_gpt_layer = any(key.startswith("gpt_layer.") for key in state_dict)
        if has_gpt_layer != with_gpt_layer:
            hint = ("an IndexTTS-2.0 s2mel, not an IndexTTS-2.5 one: it has 'gpt_layer.0.weight'" if has_gpt_layer
                    else "an IndexTTS-2.5 s2mel, not an IndexTTS-2.0 one: it has no 'gpt_layer.0.weight'")
            raise CheckpointError(f"{error}\n  (this is {hint})") from None
        raise
    return model.eval()


def s2mel_official_checkpoint(model: S2Mel) -> dict[str, dict[str, dict[str, torch.Tensor]]]:
    """The official s2mel.pth layout for `model`: weight_g/weight_v pairs and the computed buffers
    included, on CPU, so that `torch.save` of it loads in the official code (and in `load_s2mel`)."""
    state_dict = {key: tensor.detach().cpu().clone() for key, tensor in model.state_dict().items()}
    state_dict.update(computed_buffers(model))
    state_dict = unfold_weight_norm(state_dict, weight_normed_keys(model))
    net: dict[str, dict[str, torch.Tensor]] = {
        part: {} for part in PARTS if part != "gpt_layer" or model.gpt_layer is not None
    }
    for key, tensor in state_dict.items():
        part, _, rest = key.partition(".")
        net[part][rest] = tensor
    return {"net": net}
