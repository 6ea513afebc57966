"""The ONNX stages of the model repository: one thin wrapper per Triton model, with named inputs and
outputs, example inputs for tracing and other shapes for verification.

Each wrapper only fixes the calling convention Triton sees (time-major tensors, lengths as (B,)
vectors); the math stays in `indextts2.networks`.
"""

from __future__ import annotations

import torch
from torch import nn

from export.onnx_export import OnnxStage
from indextts2.checkpoint_dir import VERSION_2_5, IndexTTS2Networks
from indextts2.checkpoint_dir_2_5 import IndexTTS25Networks

# (batch, frames) of the traced inputs, then of the verification inputs: other sizes than the traced
# ones, so that a shape frozen into the graph by tracing fails verification.
TRACE_SHAPE = (2, 37)
CHECK_SHAPES = ((1, 23), (3, 51))


def _lengths(batch: int, frames: int) -> torch.Tensor:
    """Valid lengths for a padded batch: the first row full, the others shorter."""
    return torch.tensor([frames] + [max(1, frames - 5 * (i + 1)) for i in range(batch - 1)], dtype=torch.long)


def _stage_inputs(make, shape=TRACE_SHAPE, checks=CHECK_SHAPES):
    generator = torch.Generator().manual_seed(0)
    return make(*shape, generator), [make(b, t, generator) for b, t in checks]


class SemanticEncoderStage(nn.Module):
    def __init__(self, networks: IndexTTS2Networks):
        super().__init__()
        self.encoder = networks.semantic_encoder

    def forward(self, input_features: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.encoder(input_features, attention_mask)


class SemanticCodecStage(nn.Module):
    def __init__(self, networks: IndexTTS2Networks):
        super().__init__()
        self.codec = networks.semantic_codec

    def forward(self, semantic_features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.codec.quantize(semantic_features)


class CampplusStage(nn.Module):
    def __init__(self, networks: IndexTTS2Networks):
        super().__init__()
        self.campplus = networks.campplus

    def forward(self, fbank: torch.Tensor) -> torch.Tensor:
        return self.campplus(fbank)


class CodecDecodeStage(nn.Module):
    """IndexTTS-2.5's `semantic_codec`: 25 Hz GPT codes -> the codec's 50 Hz content (EnhancedCodec.decode)."""

    def __init__(self, networks: IndexTTS25Networks):
        super().__init__()
        self.codec = networks.codec

    def forward(self, semantic_codes: torch.Tensor) -> torch.Tensor:
        return self.codec.decode(semantic_codes)


class StyleConditionerStage(nn.Module):
    """IndexTTS-2.5's `speaker_conditioner`: the GPT's speaker row from the CAMPPlus style (spk_emb_proj)."""

    def __init__(self, networks: IndexTTS25Networks):
        super().__init__()
        self.gpt = networks.gpt

    def forward(self, speaker_style: torch.Tensor) -> torch.Tensor:
        return self.gpt.speaker_conditioning(speaker_style)


class SpeakerConditionerStage(nn.Module):
    def __init__(self, networks: IndexTTS2Networks):
        super().__init__()
        self.gpt = networks.gpt

    def forward(self, semantic_features: torch.Tensor, feature_lengths: torch.Tensor) -> torch.Tensor:
        return self.gpt.get_conditioning(semantic_features, feature_lengths)


class EmotionConditionerStage(nn.Module):
    def __init__(self, networks: IndexTTS2Networks):
        super().__init__()
        self.gpt = networks.gpt

    def forward(self, semantic_features: torch.Tensor, feature_lengths: torch.Tensor) -> torch.Tensor:
        return self.gpt.get_emovec(semantic_features, feature_lengths)


class LengthRegulatorStage(nn.Module):
    """Semantic content (codec embedding, plus the projected GPT latents for the generated part) ->
    the DiT's condition at the mel frame rate. Each row is interpolated from its own length."""

    def __init__(self, networks: IndexTTS2Networks):
        super().__init__()
        self.length_regulator = networks.s2mel.length_regulator

    def forward(
        self, semantic_content: torch.Tensor, content_lengths: torch.Tensor, target_lengths: torch.Tensor
    ) -> torch.Tensor:
        return self.length_regulator(semantic_content, target_lengths, x_lens=content_lengths)[0]


class S2MelEstimatorStage(nn.Module):
    """One velocity evaluation of the flow-matching DiT; the Euler loop and CFG run around it."""

    def __init__(self, networks: IndexTTS2Networks):
        super().__init__()
        self.estimator = networks.s2mel.cfm.estimator

    def forward(
        self,
        noisy_mel: torch.Tensor,
        prompt_mel: torch.Tensor,
        mel_lengths: torch.Tensor,
        timestep: torch.Tensor,
        speaker_style: torch.Tensor,
        mel_condition: torch.Tensor,
    ) -> torch.Tensor:
        # Reflect padding at each row's own end: a padded row computes what it computes alone.
        return self.estimator(
            noisy_mel, prompt_mel, mel_lengths, timestep, speaker_style, mel_condition, reflect_at_row_end=True
        )


class VocoderStage(nn.Module):
    def __init__(self, networks: IndexTTS2Networks):
        super().__init__()
        self.bigvgan = networks.bigvgan

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        return self.bigvgan(mel).squeeze(1)


def _batch_time(*names: str) -> dict[str, dict[int, str]]:
    return {name: {0: "batch", 1: "frames"} for name in names}


def build_onnx_stages(networks: IndexTTS2Networks | IndexTTS25Networks) -> list[OnnxStage]:
    """Every ONNX model of the repository, in pipeline order. The model names are the same for both
    versions; for IndexTTS-2.5 `semantic_codec` is the codec's decode and `speaker_conditioner` is
    spk_emb_proj of the CAMPPlus style (the configs in `<model>/config_2_5.pbtxt` say so)."""
    dims = networks.dims()
    version_2_5 = networks.version == VERSION_2_5
    stages: list[OnnxStage] = []

    if networks.semantic_encoder is not None:
        feature_dim = dims["w2v_feature_dim"]

        def encoder_inputs(b, t, g):
            lengths = _lengths(b, t)
            mask = (torch.arange(t)[None, :] < lengths[:, None]).long()
            return torch.randn(b, t, feature_dim, generator=g), mask

        trace, checks = _stage_inputs(encoder_inputs)
        stages.append(OnnxStage(
            name="semantic_encoder", module=SemanticEncoderStage(networks),
            input_names=["input_features", "attention_mask"], output_names=["semantic_features"],
            dynamic_axes=_batch_time("input_features", "attention_mask", "semantic_features"),
            trace_inputs=trace, check_inputs=checks, tolerance=1e-3,
        ))

    semantic_dim = dims["semantic_dim"]
    if version_2_5:
        codebook = networks.codec.codebook_size
        trace, checks = _stage_inputs(lambda b, t, g: (torch.randint(0, codebook, (b, t), generator=g),))
        stages.append(OnnxStage(
            name="semantic_codec", module=CodecDecodeStage(networks),
            input_names=["semantic_codes"], output_names=["semantic_content"],
            dynamic_axes={"semantic_codes": {0: "batch", 1: "codes"}, "semantic_content": {0: "batch", 1: "frames"}},
            trace_inputs=trace, check_inputs=checks, tolerance=1e-4,
        ))
    else:
        trace, checks = _stage_inputs(lambda b, t, g: (torch.randn(b, t, semantic_dim, generator=g),))
        stages.append(OnnxStage(
            name="semantic_codec", module=SemanticCodecStage(networks),
            input_names=["semantic_features"], output_names=["semantic_codes", "semantic_embedding"],
            dynamic_axes=_batch_time("semantic_features", "semantic_codes", "semantic_embedding"),
            trace_inputs=trace, check_inputs=checks, tolerance=1e-4,
        ))

    # CAMPPlus pools segments of 100 frames (after its stride-2 layer): check lengths across that.
    trace, checks = _stage_inputs(
        lambda b, t, g: (torch.randn(b, t, 80, generator=g),), shape=(2, 230), checks=((1, 90), (3, 419))
    )
    stages.append(OnnxStage(
        name="campplus", module=CampplusStage(networks),
        input_names=["fbank"], output_names=["speaker_style"],
        dynamic_axes={"fbank": {0: "batch", 1: "frames"}, "speaker_style": {0: "batch"}},
        trace_inputs=trace, check_inputs=checks, tolerance=1e-4,
    ))

    def conditioner_inputs(b, t, g):
        return torch.randn(b, t, semantic_dim, generator=g), _lengths(b, t)

    conditioners = [("speaker_conditioner", SpeakerConditionerStage, "speaker_latents"),
                    ("emotion_conditioner", EmotionConditionerStage, "emotion_vector")]
    if version_2_5:
        style_width = int(networks.gpt.spk_emb_proj.in_features)
        trace, checks = _stage_inputs(lambda b, t, g: (torch.randn(b, style_width, generator=g),))
        stages.append(OnnxStage(
            name="speaker_conditioner", module=StyleConditionerStage(networks),
            input_names=["speaker_style"], output_names=["speaker_latents"],
            dynamic_axes={"speaker_style": {0: "batch"}, "speaker_latents": {0: "batch"}},
            trace_inputs=trace, check_inputs=checks, tolerance=1e-4, keep_fp32=True,
        ))
        conditioners = conditioners[1:]
    for name, wrapper, output in conditioners:
        trace, checks = _stage_inputs(conditioner_inputs)
        stages.append(OnnxStage(
            name=name, module=wrapper(networks),
            input_names=["semantic_features", "feature_lengths"], output_names=[output],
            dynamic_axes={"semantic_features": {0: "batch", 1: "frames"}, "feature_lengths": {0: "batch"},
                          output: {0: "batch"}},
            trace_inputs=trace, check_inputs=checks, tolerance=1e-4,
            # The perceivers overflow in pure float16; these run once per reference voice and are
            # cached, so float32 costs nothing that matters.
            keep_fp32=True,
        ))

    content_dim = dims["semantic_dim"]

    def regulator_inputs(b, t, g):
        lengths = _lengths(b, t)
        return torch.randn(b, t, content_dim, generator=g), lengths, (lengths.float() * 1.72).long()

    trace, checks = _stage_inputs(regulator_inputs)
    stages.append(OnnxStage(
        name="length_regulator", module=LengthRegulatorStage(networks),
        input_names=["semantic_content", "content_lengths", "target_lengths"], output_names=["mel_condition"],
        dynamic_axes={"semantic_content": {0: "batch", 1: "frames"}, "content_lengths": {0: "batch"},
                      "target_lengths": {0: "batch"}, "mel_condition": {0: "batch", 1: "mel_frames"}},
        trace_inputs=trace, check_inputs=checks, tolerance=1e-4,
    ))

    mel_bands, style_dim, condition_dim = dims["mel_bands"], dims["style_dim"], dims["condition_dim"]

    def estimator_inputs(b, t, g):
        lengths = _lengths(b, t)
        prompt = torch.randn(b, mel_bands, t, generator=g)
        prompt[..., t // 3:] = 0
        return (
            torch.randn(b, mel_bands, t, generator=g), prompt, lengths, torch.rand(b, generator=g),
            torch.randn(b, style_dim, generator=g), torch.randn(b, t, condition_dim, generator=g),
        )

    trace, checks = _stage_inputs(estimator_inputs)
    stages.append(OnnxStage(
        name="s2mel_estimator", module=S2MelEstimatorStage(networks),
        input_names=["noisy_mel", "prompt_mel", "mel_lengths", "timestep", "speaker_style", "mel_condition"],
        output_names=["velocity"],
        dynamic_axes={"noisy_mel": {0: "batch", 2: "frames"}, "prompt_mel": {0: "batch", 2: "frames"},
                      "mel_lengths": {0: "batch"}, "timestep": {0: "batch"}, "speaker_style": {0: "batch"},
                      "mel_condition": {0: "batch", 1: "frames"}, "velocity": {0: "batch", 2: "frames"}},
        trace_inputs=trace, check_inputs=checks, tolerance=1e-3,
    ))

    trace, checks = _stage_inputs(
        lambda b, t, g: (torch.randn(b, mel_bands, t, generator=g),), shape=(2, 17), checks=((1, 9), (3, 24))
    )
    stages.append(OnnxStage(
        name="vocoder", module=VocoderStage(networks),
        input_names=["mel"], output_names=["waveform"],
        dynamic_axes={"mel": {0: "batch", 2: "frames"}, "waveform": {0: "batch", 1: "samples"}},
        # The official code runs BigVGAN outside fp16 autocast; in pure float16 its snake activations
        # lose ~0.1 of the [-1, 1] waveform, so it stays float32.
        trace_inputs=trace, check_inputs=checks, tolerance=1e-3, keep_fp32=True,
    ))
    return stages
