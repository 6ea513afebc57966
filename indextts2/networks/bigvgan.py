"""BigVGAN v2 vocoder: 80-band mel (B, 80, T) -> waveform (B, 1, T * prod(upsample_rates)).

IndexTTS-2 uses NVIDIA's `bigvgan_v2_22khz_80band_256x`. Every hyper-parameter comes from the
checkpoint's own `config.json`. Attribute names follow the official state dict (`conv_pre`,
`ups.{i}.0`, `resblocks.{n}.convs1.{j}`, `...activations.{k}.act.alpha`, the anti-alias `filter`
buffers, ...), so the official `bigvgan_generator.pt` loads strictly.

The official file stores weight-normed convolutions (`weight_g`/`weight_v`); at inference the norm
is constant, so this network holds the folded weights, as the official model does after
`remove_weight_norm()`. `bigvgan_official_checkpoint` writes them back in the official layout.

Structure: conv_pre -> for each stage [transposed-conv upsample, mean of AMP residual blocks] ->
anti-aliased Snake(Beta) -> conv_post -> tanh, or a clamp to [-1, 1] when `use_tanh_at_final` is false
(the IndexTTS-2 checkpoint's setting).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import scipy.signal
import torch
import torch.nn.functional as F
from torch import nn

from indextts2.checkpoint import (
    CheckpointError,
    fold_weight_norm,
    load_state_dict_strict,
    torch_load,
    unfold_weight_norm,
)

CONFIG_FILE = "config.json"
GENERATOR_FILE = "bigvgan_generator.pt"


def kaiser_sinc_filter(cutoff: float, half_width: float, kernel_size: int) -> torch.Tensor:
    """Low-pass FIR filter (1, 1, kernel_size): a sinc cut off at `cutoff` under a Kaiser window, scaled so
    that its taps sum to 1 (unit DC gain: a constant signal passes unchanged).

    `cutoff` and `half_width` are in cycles per sample; the transition band is cutoff +- half_width. The
    window's beta comes from Kaiser's formulas: the stop-band attenuation that N taps reach over a
    transition of dw rad/sample is A = 2.285 (N - 1) dw + 7.95 dB, and A gives beta. The published BigVGAN
    filters (the checkpoint stores them) take A for N = kernel_size // 2 taps over the whole band
    (dw = 2 pi 2 half_width): for kernel_size 12 and half_width 0.3 that is A = 51 dB, beta = 4.66.
    """
    transition = 2.0 * half_width  # cycles per sample; scipy wants it as a fraction of Nyquist (0.5)
    attenuation_db = scipy.signal.kaiser_atten(kernel_size // 2, transition / 0.5)
    beta = scipy.signal.kaiser_beta(attenuation_db)
    # firwin: the ideal low-pass sinc(2 cutoff t) at t = -(K-1)/2 .. (K-1)/2 times the symmetric window;
    # scale=True divides by the sum of the taps.
    taps = scipy.signal.firwin(kernel_size, cutoff, window=("kaiser", beta), scale=True, fs=1.0)
    return torch.tensor(taps, dtype=torch.float32).view(1, 1, kernel_size)


class Snake(nn.Module):
    """x + sin^2(alpha * x) / alpha, one alpha per channel (stored as log(alpha) if alpha_logscale)."""

    def __init__(self, channels: int, alpha_logscale: bool) -> None:
        super().__init__()
        self.alpha_logscale = alpha_logscale
        initial = torch.zeros(channels) if alpha_logscale else torch.ones(channels)
        self.alpha = nn.Parameter(initial)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        alpha = self.alpha[None, :, None]
        if self.alpha_logscale:
            alpha = torch.exp(alpha)
        # The 1e-9 matches the official guard against a zero alpha.
        return x + torch.sin(x * alpha).pow(2) / (alpha + 1e-9)


class SnakeBeta(nn.Module):
    """x + sin^2(alpha * x) / beta: Snake with a separate magnitude per channel."""

    def __init__(self, channels: int, alpha_logscale: bool) -> None:
        super().__init__()
        self.alpha_logscale = alpha_logscale
        initial = torch.zeros(channels) if alpha_logscale else torch.ones(channels)
        self.alpha = nn.Parameter(initial.clone())
        self.beta = nn.Parameter(initial.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        alpha = self.alpha[None, :, None]
        beta = self.beta[None, :, None]
        if self.alpha_logscale:
            alpha = torch.exp(alpha)
            beta = torch.exp(beta)
        return x + torch.sin(x * alpha).pow(2) / (beta + 1e-9)


# The anti-alias filter of the official design, in cycles per high-rate sample: cut off at the lower rate's
# Nyquist frequency (0.5 cycles per low-rate sample), transition half-width 0.6 cycles per low-rate sample.
def _antialias_filter(ratio: int, kernel_size: int) -> torch.Tensor:
    return kaiser_sinc_filter(cutoff=0.5 / ratio, half_width=0.6 / ratio, kernel_size=kernel_size)


class UpSample(nn.Module):
    """(B, C, T) -> (B, C, ratio * T): put ratio - 1 zeros after every sample and low-pass the result.

    Both happen in one grouped transposed conv with stride `ratio`, whose kernel is the filter h times
    `ratio` (the zeros divide the amplitude by `ratio`): y[n] = ratio * sum_m x[m] h[n + shift - ratio m]
    with shift = (K - ratio) / 2, so h's centre tap (K - 1) / 2 meets input m at n = ratio m + (ratio - 1) / 2:
    the `ratio` outputs of each input sample lie symmetrically around it. The input is extended at both
    ends by repeating its edge samples, as far as the filter reaches past them, and what the extension adds
    to the ends of the output is cut off.
    """

    def __init__(self, channels: int, ratio: int = 2, kernel_size: int = 12) -> None:
        super().__init__()
        self.channels = channels
        self.ratio = ratio
        shift = (kernel_size - ratio) // 2
        # Output n of the unextended input reads inputs ceil((n + shift - K + 1) / ratio) ..
        # floor((n + shift) / ratio): that reaches this far before the first and after the last sample.
        self.extend = ((kernel_size - 1 - shift) // ratio, -(-shift // ratio))
        left, right = self.extend
        self.crop_left = ratio * left + shift
        # The transposed conv gives (T + left + right - 1) * ratio + K samples; keep ratio * T of them.
        self.crop_right = (left + right - 1) * ratio + kernel_size - self.crop_left
        self.register_buffer("filter", _antialias_filter(ratio, kernel_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x, self.extend, mode="replicate")
        # The channel count is a constructor constant, not x.shape[1]: ONNX needs a static conv kernel.
        kernel = (self.ratio * self.filter.to(x.dtype)).expand(self.channels, -1, -1)
        x = F.conv_transpose1d(x, kernel, stride=self.ratio, groups=self.channels)
        return x[..., self.crop_left : -self.crop_right]


class FilterTaps(nn.Module):
    """Holds a filter as the buffer `filter`, under the state-dict name of the official checkpoint."""

    def __init__(self, taps: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("filter", taps)


class DownSample(nn.Module):
    """(B, C, ratio * T) -> (B, C, T): low-pass, then keep every `ratio`-th sample (one strided grouped conv).

    Output m is centred where `UpSample` put its input m, high-rate position ratio * m + (ratio - 1) / 2, so
    up- then down-sampling keeps the timing. The ends are extended by repeating the edge samples.
    """

    def __init__(self, channels: int, ratio: int = 2, kernel_size: int = 12) -> None:
        super().__init__()
        self.channels = channels
        self.ratio = ratio
        shift = (kernel_size - ratio) // 2
        # Output m reads the extended input from ratio * m: `shift` extra samples at the start put the
        # filter's centre on ratio * m + (ratio - 1) / 2, and K - ratio in all give exactly T outputs.
        self.extend = (shift, kernel_size - ratio - shift)
        # The official state dict keeps these taps at `...downsample.lowpass.filter`.
        self.lowpass = FilterTaps(_antialias_filter(ratio, kernel_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x, self.extend, mode="replicate")
        kernel = self.lowpass.filter.to(x.dtype).expand(self.channels, -1, -1)
        return F.conv1d(x, kernel, stride=self.ratio, groups=self.channels)


class AntiAliasedActivation(nn.Module):
    """Snake(Beta) applied at twice the sample rate, so its harmonics above Nyquist are filtered out
    before coming back down (the official `Activation1d`)."""

    def __init__(self, channels: int, act: nn.Module, ratio: int = 2, kernel_size: int = 12) -> None:
        super().__init__()
        self.upsample = UpSample(channels, ratio, kernel_size)
        self.act = act
        self.downsample = DownSample(channels, ratio, kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.downsample(self.act(self.upsample(x)))


def make_snake(activation: str, channels: int, alpha_logscale: bool) -> nn.Module:
    if activation == "snake":
        return Snake(channels, alpha_logscale)
    if activation == "snakebeta":
        return SnakeBeta(channels, alpha_logscale)
    raise ValueError(f"BigVGAN config: unknown activation {activation!r} (expected 'snake' or 'snakebeta')")


class AMPBlock(nn.Module):
    """Anti-aliased multi-periodicity residual block (the official `AMPBlock1`).

    For each dilation d: x += conv2(act(conv1_d(act(x)))), where conv1_d is dilated and conv2 is not.
    `activations` interleaves the two activations of each step (even: before conv1, odd: before conv2).
    """

    def __init__(
        self, channels: int, kernel_size: int, dilations: list[int], activation: str, alpha_logscale: bool
    ) -> None:
        super().__init__()
        self.convs1 = nn.ModuleList(
            nn.Conv1d(channels, channels, kernel_size, dilation=d, padding=d * (kernel_size - 1) // 2)
            for d in dilations
        )
        self.convs2 = nn.ModuleList(
            nn.Conv1d(channels, channels, kernel_size, padding=(kernel_size - 1) // 2) for _ in dilations
        )
        self.activations = nn.ModuleList(
            AntiAliasedActivation(channels, make_snake(activation, channels, alpha_logscale))
            for _ in range(2 * len(dilations))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, (conv1, conv2) in enumerate(zip(self.convs1, self.convs2, strict=True)):
            residual = x
            x = conv1(self.activations[2 * i](x))
            x = conv2(self.activations[2 * i + 1](x))
            x = x + residual
        return x


class BigVGAN(nn.Module):
    def __init__(
        self,
        num_mels: int,
        upsample_initial_channel: int,
        upsample_rates: list[int],
        upsample_kernel_sizes: list[int],
        resblock_kernel_sizes: list[int],
        resblock_dilation_sizes: list[list[int]],
        activation: str = "snakebeta",
        snake_logscale: bool = True,
        use_tanh_at_final: bool = True,
        use_bias_at_final: bool = True,
    ) -> None:
        super().__init__()
        if len(upsample_rates) != len(upsample_kernel_sizes):
            raise ValueError("BigVGAN config: upsample_rates and upsample_kernel_sizes differ in length")
        if len(resblock_kernel_sizes) != len(resblock_dilation_sizes):
            raise ValueError("BigVGAN config: resblock_kernel_sizes and resblock_dilation_sizes differ in length")
        self.num_kernels = len(resblock_kernel_sizes)
        self.hop_length = math.prod(upsample_rates)
        self.use_tanh_at_final = use_tanh_at_final

        self.conv_pre = nn.Conv1d(num_mels, upsample_initial_channel, 7, padding=3)
        # Each stage is a one-element ModuleList only to keep the official key `ups.{i}.0`.
        self.ups = nn.ModuleList()
        self.resblocks = nn.ModuleList()
        channels = upsample_initial_channel
        for rate, kernel in zip(upsample_rates, upsample_kernel_sizes, strict=True):
            self.ups.append(
                nn.ModuleList(
                    [nn.ConvTranspose1d(channels, channels // 2, kernel, rate, padding=(kernel - rate) // 2)]
                )
            )
            channels //= 2
            for kernel_size, dilations in zip(resblock_kernel_sizes, resblock_dilation_sizes, strict=True):
                self.resblocks.append(AMPBlock(channels, kernel_size, dilations, activation, snake_logscale))
        self.activation_post = AntiAliasedActivation(channels, make_snake(activation, channels, snake_logscale))
        self.conv_post = nn.Conv1d(channels, 1, 7, padding=3, bias=use_bias_at_final)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        """mel (B, num_mels, T) log-magnitude -> waveform (B, 1, T * hop_length) in [-1, 1]."""
        x = self.conv_pre(mel)
        for stage in range(len(self.ups)):
            x = self.ups[stage][0](x)
            blocks = self.resblocks[stage * self.num_kernels : (stage + 1) * self.num_kernels]
            block_sum = blocks[0](x)
            for block in blocks[1:]:
                block_sum = block_sum + block(x)
            x = block_sum / self.num_kernels
        x = self.conv_post(self.activation_post(x))
        if self.use_tanh_at_final:
            return torch.tanh(x)
        # GOLDEN quirk 16: without the tanh the output is hard-clipped to [-1, 1].
        return torch.clamp(x, -1.0, 1.0)


def build_bigvgan(h: dict[str, Any]) -> BigVGAN:
    """Build the network from the hyper-parameters of the official `config.json`.

    Training-only entries (discriminators, losses, optimiser, data) are ignored.
    """
    resblock = str(h.get("resblock", "1"))
    if resblock != "1":
        # The official AMPBlock2.forward returns None, so no working checkpoint can use it.
        raise ValueError(f"BigVGAN config: resblock {resblock!r} is not supported (only '1', AMPBlock1)")
    try:
        return BigVGAN(
            num_mels=int(h["num_mels"]),
            upsample_initial_channel=int(h["upsample_initial_channel"]),
            upsample_rates=[int(r) for r in h["upsample_rates"]],
            upsample_kernel_sizes=[int(k) for k in h["upsample_kernel_sizes"]],
            resblock_kernel_sizes=[int(k) for k in h["resblock_kernel_sizes"]],
            resblock_dilation_sizes=[[int(d) for d in ds] for ds in h["resblock_dilation_sizes"]],
            activation=h["activation"],
            snake_logscale=bool(h.get("snake_logscale", False)),
            use_tanh_at_final=bool(h.get("use_tanh_at_final", True)),
            use_bias_at_final=bool(h.get("use_bias_at_final", True)),
        )
    except KeyError as missing:
        raise ValueError(f"BigVGAN config: missing hyper-parameter {missing}") from None


def load_bigvgan(bigvgan_dir: str | Path) -> BigVGAN:
    """Load `config.json` + `bigvgan_generator.pt` ({'generator': state_dict}) strictly, in eval mode.

    Weight-norm pairs are folded; a file already without weight norm loads as is.
    """
    bigvgan_dir = Path(bigvgan_dir)
    config_path = bigvgan_dir / CONFIG_FILE
    if not config_path.is_file():
        raise CheckpointError(f"BigVGAN config not found: {config_path}")
    with config_path.open() as f:
        model = build_bigvgan(json.load(f))
    checkpoint_path = bigvgan_dir / GENERATOR_FILE
    checkpoint = torch_load(checkpoint_path)
    if not isinstance(checkpoint, dict) or "generator" not in checkpoint:
        raise CheckpointError(f"{checkpoint_path}: expected a dict with a 'generator' state dict")
    load_state_dict_strict(model, fold_weight_norm(checkpoint["generator"]), checkpoint_path)
    return model.eval()


def weight_normed_keys(model: BigVGAN) -> list[str]:
    """The `.weight` keys that the official checkpoint stores as weight_g/weight_v: every conv."""
    return [
        f"{name}.weight"
        for name, module in model.named_modules()
        if isinstance(module, (nn.Conv1d, nn.ConvTranspose1d))
    ]


def bigvgan_official_checkpoint(model: BigVGAN) -> dict[str, dict[str, torch.Tensor]]:
    """The model's weights in the official `bigvgan_generator.pt` layout: {'generator': state_dict} with
    weight_g/weight_v for every convolution and the anti-alias filter buffers."""
    state_dict = {key: tensor.detach().cpu().clone() for key, tensor in model.state_dict().items()}
    return {"generator": unfold_weight_norm(state_dict, weight_normed_keys(model))}
