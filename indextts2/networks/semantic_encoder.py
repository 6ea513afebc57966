"""w2v-BERT 2.0 semantic encoder: SeamlessM4T features (B, T, 160) -> normalised layer-17 states (B, T, D).

IndexTTS-2 (`infer_v2.get_emb`) runs the whole `facebook/w2v-bert-2.0` model with
`output_hidden_states=True`, keeps `hidden_states[17]` and normalises it with the statistics of
`wav2vec2bert_stats.pt`: (h - mean) / sqrt(var).

Why truncating to the first 17 conformer layers is exact (transformers 4.57,
`modeling_wav2vec2_bert.py`): `Wav2Vec2BertEncoder.forward` appends `hidden_states` to the tuple
*before* running each layer and once more after the last one, so `hidden_states[0]` is the feature
projection output and `hidden_states[17]` is the output of `layers[16]`, the 17th layer, taken as it
comes out of that layer's own `final_layer_norm`. Nothing is applied in between: the encoder has no
norm after its layers, and the model's `intermediate_ffn` / `adapter` only touch `last_hidden_state`.
Masked time steps (`masked_spec_embed`) are applied in training only. Layers 17.. never influence
hidden_states[17], so we neither load nor run them.

The layers are transformers' own `Wav2Vec2BertFeatureProjection` / `Wav2Vec2BertEncoder` modules,
held under the official attribute names, so the official `model.safetensors` keys load as they are;
the forward pass below is the encoder's, written out for the layers we keep.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn
from transformers import Wav2Vec2BertConfig, Wav2Vec2BertModel
from transformers.models.wav2vec2_bert.modeling_wav2vec2_bert import (
    Wav2Vec2BertEncoder,
    Wav2Vec2BertFeatureProjection,
)

from indextts2.checkpoint import CheckpointError, load_state_dict_strict, torch_load

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
PREPROCESSOR_FILE = "preprocessor_config.json"
OUTPUT_LAYER = 17

# The real facebook/w2v-bert-2.0 `preprocessor_config.json` (SeamlessM4TFeatureExtractor). Note
# padding_value 1: an odd frame count is padded with ones before frames are stacked in pairs.
W2V_BERT_PREPROCESSOR_CONFIG = {
    "feature_extractor_type": "SeamlessM4TFeatureExtractor",
    "feature_size": 80,
    "num_mel_bins": 80,
    "padding_side": "right",
    "padding_value": 1,
    "processor_class": "Wav2Vec2BertProcessor",
    "return_attention_mask": True,
    "sampling_rate": 16000,
    "stride": 2,
}

_LAYER_KEY = re.compile(r"^encoder\.layers\.(\d+)\.")


class SemanticEncoder(nn.Module):
    def __init__(
        self,
        config: Wav2Vec2BertConfig,
        mean: torch.Tensor,
        var: torch.Tensor,
        output_layer: int = OUTPUT_LAYER,
    ) -> None:
        super().__init__()
        if not 1 <= output_layer <= config.num_hidden_layers:
            raise ValueError(f"output_layer {output_layer} outside 1..{config.num_hidden_layers} (num_hidden_layers)")
        for name, stat in (("mean", mean), ("var", var)):
            if tuple(stat.shape) != (config.hidden_size,):
                raise ValueError(f"stats {name!r} has shape {tuple(stat.shape)}, expected ({config.hidden_size},)")
        truncated = copy.deepcopy(config)
        truncated.num_hidden_layers = output_layer
        self.output_layer = output_layer
        self.feature_projection = Wav2Vec2BertFeatureProjection(truncated)
        self.encoder = Wav2Vec2BertEncoder(truncated)
        # Not part of the w2v-BERT state dict: they come from wav2vec2bert_stats.pt. The official code
        # takes sqrt(var) once and divides by it; so do we.
        self.register_buffer("mean", mean.detach().float().clone(), persistent=False)
        self.register_buffer("std", torch.sqrt(var.detach().float()), persistent=False)

    def forward(self, input_features: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """input_features (B, T, 160), attention_mask (B, T) 1 = valid -> (B, T, hidden_size).

        Valid frames do not depend on padding: attention ignores padded keys and the conformer's
        depthwise conv is causal (left-padded), so padding at the end never reaches a valid frame.
        Padded frames get values too (as in transformers); callers ignore them.
        """
        valid = attention_mask.bool()
        hidden, _ = self.feature_projection(input_features)
        hidden = hidden.masked_fill(~valid[..., None], 0.0)
        # Additive key mask, broadcast over heads and queries (transformers expands the same values).
        key_bias = (~valid)[:, None, None, :].to(hidden.dtype) * torch.finfo(hidden.dtype).min
        # None for w2v-BERT 2.0 ("relative_key": each attention layer embeds distances itself).
        positions = self.encoder.embed_positions(hidden) if self.encoder.embed_positions is not None else None
        for layer in self.encoder.layers:
            hidden, _ = layer(
                hidden,
                attention_mask=key_bias,
                relative_position_embeddings=positions,
                conv_attention_mask=valid,
            )
        return (hidden - self.mean.to(hidden.dtype)) / self.std.to(hidden.dtype)


def _unused_by_output(key: str, output_layer: int, num_layers: int) -> bool:
    """Official tensors that hidden_states[output_layer] never reads (see the module docstring)."""
    if key == "masked_spec_embed" or key.startswith(("adapter.", "intermediate_ffn.")):
        return True
    match = _LAYER_KEY.match(key)
    return match is not None and output_layer <= int(match.group(1)) < num_layers


def load_semantic_encoder(
    w2v_bert_dir: str | Path, stats_path: str | Path, output_layer: int = OUTPUT_LAYER
) -> SemanticEncoder:
    """Load the first `output_layer` layers of a local w2v-BERT 2.0 directory (config.json +
    model.safetensors, the facebook/w2v-bert-2.0 layout) and the `{'mean', 'var'}` stats file, strictly.

    Only local files are read. Tensors of later layers, `masked_spec_embed`, the adapter and the
    intermediate FFN are skipped (never read from disk); any other unexpected, missing or mis-shaped
    tensor is a CheckpointError.
    """
    w2v_bert_dir = Path(w2v_bert_dir)
    config_path = w2v_bert_dir / CONFIG_FILE
    weights_path = w2v_bert_dir / WEIGHTS_FILE
    for path in (config_path, weights_path):
        if not path.is_file():
            raise CheckpointError(f"w2v-BERT 2.0 file not found: {path}")
    config = Wav2Vec2BertConfig.from_json_file(str(config_path))
    if output_layer > config.num_hidden_layers:
        raise CheckpointError(
            f"{config_path}: the model has {config.num_hidden_layers} layers, output_layer {output_layer} needs more"
        )

    stats = torch_load(stats_path)
    if not isinstance(stats, dict) or "mean" not in stats or "var" not in stats:
        raise CheckpointError(f"{stats_path}: expected a dict with 'mean' and 'var'")
    for name in ("mean", "var"):
        if tuple(stats[name].shape) != (config.hidden_size,):
            raise CheckpointError(
                f"{stats_path}: key {name!r} has shape {tuple(stats[name].shape)} in the file, "
                f"the network expects ({config.hidden_size},)"
            )
    model = SemanticEncoder(config, stats["mean"], stats["var"], output_layer)

    state_dict: dict[str, torch.Tensor] = {}
    with safe_open(str(weights_path), framework="pt") as f:
        for key in f.keys():  # noqa: SIM118 (a safetensors handle is not iterable)
            if not _unused_by_output(key, output_layer, config.num_hidden_layers):
                state_dict[key] = f.get_tensor(key)
    load_state_dict_strict(model, state_dict, weights_path)
    return model.eval()


def write_tiny_w2v_bert(
    out_dir: str | Path,
    hidden_size: int,
    num_layers: int = 18,
    seed: int = 0,
    num_attention_heads: int = 4,
    intermediate_size: int | None = None,
    conv_depthwise_kernel_size: int = 31,
) -> Path:
    """Write a small random w2v-BERT 2.0 in the official HF layout: config.json, model.safetensors
    (all `num_layers` layers and `masked_spec_embed`, like the real file) and the real
    preprocessor_config.json. Deterministic for a given seed; the global RNG is left untouched.

    Every parameter gets 0.1 * N(0, 1) added to its HF initialisation, so that no LayerNorm gain or
    bias is trivially 1 or 0 and a mis-mapped tensor shows up in the outputs.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config = Wav2Vec2BertConfig(
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_attention_heads,
        intermediate_size=intermediate_size or 2 * hidden_size,
        conv_depthwise_kernel_size=conv_depthwise_kernel_size,
        architectures=["Wav2Vec2BertModel"],
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Wav2Vec2BertModel(config).eval()
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.add_(0.1 * torch.randn_like(parameter))
    model.save_pretrained(out_dir, safe_serialization=True)
    with (out_dir / PREPROCESSOR_FILE).open("w") as f:
        json.dump(W2V_BERT_PREPROCESSOR_CONFIG, f, indent=2)
    return out_dir
