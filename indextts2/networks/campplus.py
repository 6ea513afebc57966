"""CAM++ speaker encoder (3D-Speaker): mean-centred 80-d kaldi fbank (B, T, 80) -> style vector (B, 192).

IndexTTS-2 uses the 192-d embedding as the global `style` of the s2mel DiT and to pick rows of the
emotion matrices. Input features come from `indextts2.frontend.audio.campplus_features`.

Structure:
- head (FCM): 2-D ResNet over (frequency, time); strides act on frequency only, so the time length
  is kept and `feat_dim // 8` frequency rows remain, flattened into channels;
- xvector: TDNN (k5, stride 2 in time) -> for each block [densely connected CAM layers, transit 1x1
  conv halving the channels] -> BN+ReLU -> mean and unbiased std over time -> 1x1 conv + BN without
  affine parameters.
A CAM layer is a conv whose output is gated by a sigmoid of (global mean + 100-frame segment means).

Attribute names follow the official state dict (`head.layer1.0.conv1`, `xvector.block1.tdnnd3.
cam_layer.linear_local`, `xvector.transit1.nonlinear.batchnorm`, ...). The official loader hard-codes
the architecture; here every width is a constructor argument with the official value as default, and
`campplus_config_from_state_dict` reads them back from a file, so a smaller copy loads the same way.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from indextts2.checkpoint import CheckpointError, load_state_dict_strict, torch_load

# Context-aware masking averages over segments of this many frames (after the stride-2 TDNN).
SEGMENT_FRAMES = 100


class BatchNormReLU(nn.Module):
    """The official `get_nonlinear('batchnorm-relu')`: keys `<name>.batchnorm.*`."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.batchnorm = nn.BatchNorm1d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.batchnorm(x))


class BasicResBlock(nn.Module):
    """2-D residual block; `stride` applies to the frequency axis only."""

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=(stride, 1), padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=(stride, 1), bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class FCM(nn.Module):
    """(B, F, T) -> (B, m_channels * F', T): a small 2-D ResNet that halves frequency three times."""

    def __init__(self, m_channels: int, head_blocks: tuple[int, ...]) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, m_channels, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(m_channels)
        self.layer1 = nn.Sequential(*self._blocks(m_channels, head_blocks[0]))
        self.layer2 = nn.Sequential(*self._blocks(m_channels, head_blocks[1]))
        self.conv2 = nn.Conv2d(m_channels, m_channels, 3, stride=(2, 1), padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(m_channels)

    @staticmethod
    def _blocks(channels: int, count: int) -> list[BasicResBlock]:
        return [BasicResBlock(channels, channels, stride=2 if i == 0 else 1) for i in range(count)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x.unsqueeze(1))))
        out = self.layer2(self.layer1(out))
        out = F.relu(self.bn2(self.conv2(out)))
        batch, channels, freq, time = out.shape
        return out.reshape(batch, channels * freq, time)


class TDNNLayer(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int) -> None:
        super().__init__()
        padding = (kernel_size - 1) // 2
        self.linear = nn.Conv1d(
            in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=False
        )
        self.nonlinear = BatchNormReLU(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.nonlinear(self.linear(x))


def segment_means(x: torch.Tensor, segment: int) -> torch.Tensor:
    """Mean of each `segment`-frame chunk, broadcast back over its frames: (B, C, T) -> (B, C, T).

    The last chunk may be partial and is averaged over its real frames only (the official
    avg_pool1d with ceil_mode). Written with a zero pad and explicit counts so that it exports to
    ONNX with a dynamic time axis.
    """
    time = x.shape[-1]
    num_segments = (time + segment - 1) // segment
    padded = F.pad(x, (0, num_segments * segment - time))
    sums = padded.reshape(x.shape[0], x.shape[1], num_segments, segment).sum(-1)
    frame_is_real = F.pad(torch.ones_like(x[:1, :1]), (0, num_segments * segment - time))
    counts = frame_is_real.reshape(1, 1, num_segments, segment).sum(-1)
    means = sums / counts
    return means.repeat_interleave(segment, dim=-1)[..., :time]


class CAMLayer(nn.Module):
    """Local conv gated by a sigmoid of the utterance mean plus the segment means (context-aware mask)."""

    def __init__(self, bn_channels: int, out_channels: int, kernel_size: int, dilation: int) -> None:
        super().__init__()
        padding = (kernel_size - 1) // 2 * dilation
        self.linear_local = nn.Conv1d(
            bn_channels, out_channels, kernel_size, padding=padding, dilation=dilation, bias=False
        )
        self.linear1 = nn.Conv1d(bn_channels, bn_channels // 2, 1)
        self.linear2 = nn.Conv1d(bn_channels // 2, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        context = x.mean(-1, keepdim=True) + segment_means(x, SEGMENT_FRAMES)
        gate = torch.sigmoid(self.linear2(F.relu(self.linear1(context))))
        return self.linear_local(x) * gate


class CAMDenseTDNNLayer(nn.Module):
    """BN-ReLU -> 1x1 bottleneck -> BN-ReLU -> CAM layer; its output is appended to the input channels."""

    def __init__(self, in_channels: int, growth_rate: int, bn_channels: int, kernel_size: int, dilation: int):
        super().__init__()
        self.nonlinear1 = BatchNormReLU(in_channels)
        self.linear1 = nn.Conv1d(in_channels, bn_channels, 1, bias=False)
        self.nonlinear2 = BatchNormReLU(bn_channels)
        self.cam_layer = CAMLayer(bn_channels, growth_rate, kernel_size, dilation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cam_layer(self.nonlinear2(self.linear1(self.nonlinear1(x))))


class TransitLayer(nn.Module):
    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.nonlinear = BatchNormReLU(in_channels)
        self.linear = nn.Conv1d(in_channels, out_channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.nonlinear(x))


class BatchNormOnly(nn.Module):
    """The official `get_nonlinear('batchnorm_')`: BatchNorm without affine parameters, no activation."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.batchnorm = nn.BatchNorm1d(channels, affine=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.batchnorm(x)


class DenseEmbedding(nn.Module):
    """1x1 conv to the embedding size, then BatchNorm without affine parameters."""

    def __init__(self, in_channels: int, embedding_size: int) -> None:
        super().__init__()
        self.linear = nn.Conv1d(in_channels, embedding_size, 1, bias=False)
        self.nonlinear = BatchNormOnly(embedding_size)

    def forward(self, stats: torch.Tensor) -> torch.Tensor:  # stats: (B, C)
        return self.nonlinear(self.linear(stats.unsqueeze(-1))).squeeze(-1)


class CAMPPlus(nn.Module):
    def __init__(
        self,
        feat_dim: int = 80,
        embedding_size: int = 192,
        growth_rate: int = 32,
        bn_size: int = 4,
        init_channels: int = 128,
        block_layers: tuple[int, ...] = (12, 24, 16),
        block_kernel_sizes: tuple[int, ...] = (3, 3, 3),
        block_dilations: tuple[int, ...] = (1, 2, 2),
        m_channels: int = 32,
        head_blocks: tuple[int, int] = (2, 2),
        tdnn_kernel_size: int = 5,
    ) -> None:
        super().__init__()
        if not len(block_layers) == len(block_kernel_sizes) == len(block_dilations):
            raise ValueError("block_layers, block_kernel_sizes and block_dilations must have the same length")
        self.feat_dim = feat_dim
        self.head = FCM(m_channels, head_blocks)
        # Three stride-2 stages on frequency; the official code counts the rows as feat_dim // 8.
        channels = m_channels * (feat_dim // 8)

        self.xvector = nn.ModuleDict()
        self.xvector["tdnn"] = TDNNLayer(channels, init_channels, tdnn_kernel_size, stride=2)
        channels = init_channels
        for index, (layers, kernel_size, dilation) in enumerate(
            zip(block_layers, block_kernel_sizes, block_dilations, strict=True), start=1
        ):
            block = nn.ModuleDict()
            for layer in range(layers):
                block[f"tdnnd{layer + 1}"] = CAMDenseTDNNLayer(
                    channels + layer * growth_rate, growth_rate, bn_size * growth_rate, kernel_size, dilation
                )
            self.xvector[f"block{index}"] = block
            channels += layers * growth_rate
            self.xvector[f"transit{index}"] = TransitLayer(channels, channels // 2)
            channels //= 2
        self.num_blocks = len(block_layers)
        self.xvector["out_nonlinear"] = BatchNormReLU(channels)
        self.xvector["dense"] = DenseEmbedding(channels * 2, embedding_size)

    def forward(self, fbank: torch.Tensor) -> torch.Tensor:
        """(B, T, feat_dim) mean-centred fbank -> (B, embedding_size). Needs T >= 3 (std over >= 2 frames)."""
        x = self.head(fbank.transpose(1, 2))
        x = self.xvector["tdnn"](x)
        for index in range(1, self.num_blocks + 1):
            for layer in self.xvector[f"block{index}"].values():
                x = torch.cat([x, layer(x)], dim=1)
            x = self.xvector[f"transit{index}"](x)
        x = self.xvector["out_nonlinear"](x)
        # Statistics pooling: mean and unbiased std over time. Written out because the ONNX exporter
        # mis-ranks torch.std's output.
        mean = x.mean(dim=2, keepdim=True)
        std = ((x - mean).pow(2).sum(dim=2) / (x.shape[2] - 1)).sqrt()
        stats = torch.cat([mean.squeeze(2), std], dim=1)
        return self.xvector["dense"](stats)


def _count_children(state_dict: Mapping[str, torch.Tensor], prefix: str, name: str) -> int:
    """How many consecutive `<prefix><name><n>.` children (numbered from 1) the state dict holds."""
    count = 0
    while any(key.startswith(f"{prefix}{name}{count + 1}.") for key in state_dict):
        count += 1
    return count


def campplus_config_from_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """The `CAMPPlus` constructor arguments that a state dict was saved with, read from its shapes.

    Dilations are not stored in any tensor: the official (1, 2, 2) is assumed, i.e. 1 for the first
    block and 2 for the others. `feat_dim` is read as 8 * (frequency rows after the head).
    """

    def shape(key: str) -> tuple[int, ...]:
        if key not in state_dict:
            raise CheckpointError(f"not a CAMPPlus state dict: missing {key!r}")
        return tuple(state_dict[key].shape)

    m_channels = shape("head.conv1.weight")[0]
    init_channels, tdnn_in, tdnn_kernel_size = shape("xvector.tdnn.linear.weight")
    head_blocks = tuple(
        sum(1 for i in range(64) if f"head.{layer}.{i}.conv1.weight" in state_dict)
        for layer in ("layer1", "layer2")
    )
    num_blocks = _count_children(state_dict, "xvector.", "block")
    if num_blocks == 0:
        raise CheckpointError("not a CAMPPlus state dict: no 'xvector.block1.*' tensors")
    block_layers = tuple(
        _count_children(state_dict, f"xvector.block{b}.", "tdnnd") for b in range(1, num_blocks + 1)
    )
    growth_rate, bn_channels, _ = shape("xvector.block1.tdnnd1.cam_layer.linear_local.weight")
    block_kernel_sizes = tuple(
        shape(f"xvector.block{b}.tdnnd1.cam_layer.linear_local.weight")[2] for b in range(1, num_blocks + 1)
    )
    if tdnn_in % m_channels or bn_channels % growth_rate:
        raise CheckpointError(
            f"inconsistent CAMPPlus shapes: tdnn input {tdnn_in} vs head channels {m_channels}, "
            f"bottleneck {bn_channels} vs growth rate {growth_rate}"
        )
    return {
        "feat_dim": 8 * (tdnn_in // m_channels),
        "embedding_size": shape("xvector.dense.linear.weight")[0],
        "growth_rate": growth_rate,
        "bn_size": bn_channels // growth_rate,
        "init_channels": init_channels,
        "block_layers": block_layers,
        "block_kernel_sizes": block_kernel_sizes,
        "block_dilations": (1,) + (2,) * (num_blocks - 1),
        "m_channels": m_channels,
        "head_blocks": head_blocks,
        "tdnn_kernel_size": tdnn_kernel_size,
    }


def load_campplus(path: str | Path, config: Mapping[str, Any] | None = None) -> CAMPPlus:
    """Load an official `campplus_cn_common.bin` (a plain state dict with BN statistics), strictly.

    The architecture comes from `config` (constructor arguments) or, when omitted, from the tensors.
    """
    path = Path(path)
    state_dict = torch_load(path)
    if not isinstance(state_dict, Mapping):
        raise CheckpointError(f"{path}: expected a state dict, found {type(state_dict).__name__}")
    if config is None:
        try:
            config = campplus_config_from_state_dict(state_dict)
        except CheckpointError as error:
            raise CheckpointError(f"{path}: {error}") from None
    model = CAMPPlus(**config)
    load_state_dict_strict(model, state_dict, path)
    return model.eval()
