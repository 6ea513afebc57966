"""IndexTTS-2.5's GPT: `UnifiedVoice(spk_cond_mode="campplus")` of the official `indextts/gpt/model_v2.py`.

The GPT-2 body, the text/mel tables, the emotion conditioner and the heads are the 2.0 ones (and so is
the state-dict naming). What 2.5 changes is the conditioning prefix:

    2.0: [32 speaker-perceiver latents + emo_vec] [speed_emb(1)] [speed_emb(0)]   (34 rows)
    2.5: [spk_emb_proj(CAMPPlus style) + emo_vec] [0] [0]                        (3 rows)

and, at inference, `lang_embedding(lang)` is added to every text position (start and stop included).
There is no speaker conformer/perceiver and no `speed_emb`; the w2v-BERT features of the speaker only
feed the emotion encoder (its `merge_emovec`).

Official quirks that this module reproduces or documents:
- The official `prepare_gpt_inputs` counts the trailing stop id that infer appends to the tokens, drops
  it, and so leaves one zero row at the left of every inference prefix, masked out by the attention
  mask. A masked row changes nothing (the GPT has no absolute positions of its own), so `build_prefix`
  leaves it out; `official_prefix` puts it back for comparison.
- The teacher-forced `forward` (training path) adds no language embedding and keeps the trailing stop
  id: it is the 2.0 `forward` with the 2.5 conditioning rows.
- `inference_speech` still receives the speaker's w2v features (the emotion fallback uses them).

The decoding loop, the KV cache layout and the sampling are inherited unchanged from the 2.0
`UnifiedVoice`, so one decoder engine serves both.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from indextts2.checkpoint import CheckpointError, load_state_dict_strict, torch_load
from indextts2.networks.conformer import ConformerEncoder
from indextts2.networks.gpt import GPT2Model, LearnedPositionEmbedding, UnifiedVoice, gpt_version_hint
from indextts2.networks.perceiver import PerceiverResampler

# CAMPPlus embedding width (hard-coded in the official `nn.Linear(192, model_dim)`).
CAMPPLUS_DIM = 192
# len(LANGUAGE_DICT) of the official tokenizer module (99 whisper languages, yue, minnan, wuyu,
# dialect, zh/en, en/zh, common); the table has one more row.
NUM_LANGUAGES = 106


class UnifiedVoice25(UnifiedVoice):
    """The IndexTTS-2.5 GPT. Built from the `gpt` section of config.yaml.

    Shares every method of the 2.0 `UnifiedVoice` but those that touch the speaker conditioning:
    the "speaker latents" of a 2.5 sequence are one row, `speaker_conditioning(style)`.
    """

    def __init__(
        self,
        model_dim: int,
        layers: int,
        heads: int,
        max_text_tokens: int,
        max_mel_tokens: int,
        number_text_tokens: int,
        number_mel_codes: int,
        start_text_token: int,
        stop_text_token: int,
        start_mel_token: int,
        stop_mel_token: int,
        emo_condition_module: Mapping[str, Any],
        condition_module: Mapping[str, Any] | None = None,  # read by the official code, unused in campplus mode
        condition_num_latent: int = 32,  # idem
        max_conditioning_inputs: int = 1,
        feature_dim: int = 1024,
        emo_perceiver_dim: int = 1024,
        perceiver_dim_head: int = 64,
        zero_conformer_padding: bool = True,
        style_dim: int = CAMPPLUS_DIM,
        num_languages: int = NUM_LANGUAGES,
    ):
        nn.Module.__init__(self)  # not UnifiedVoice.__init__: 2.5 has no speaker conformer/perceiver
        self.model_dim = model_dim
        self.heads = heads
        self.max_text_tokens = max_text_tokens
        self.max_mel_tokens = max_mel_tokens
        self.number_mel_codes = number_mel_codes
        self.start_text_token = start_text_token
        self.stop_text_token = stop_text_token
        self.start_mel_token = start_mel_token
        self.stop_mel_token = stop_mel_token
        self.num_languages = num_languages

        self.spk_emb_proj = nn.Linear(style_dim, model_dim)
        self.emo_conditioning_encoder = ConformerEncoder(
            input_dim=feature_dim,
            output_size=emo_condition_module["output_size"],
            attention_heads=emo_condition_module["attention_heads"],
            linear_units=emo_condition_module["linear_units"],
            num_blocks=emo_condition_module["num_blocks"],
            input_layer=emo_condition_module["input_layer"],
            zero_padding_after_glu=zero_conformer_padding,
        )
        self.emo_perceiver_encoder = PerceiverResampler(
            emo_perceiver_dim,
            dim_context=emo_condition_module["output_size"],
            num_latents=1,
            heads=emo_condition_module["attention_heads"],
            dim_head=perceiver_dim_head,
            ff_mult=emo_condition_module["perceiver_mult"],
        )
        self.text_embedding = nn.Embedding(number_text_tokens + 1, model_dim)
        self.lang_embedding = nn.Embedding(num_languages + 1, model_dim)
        self.emo_layer = nn.Linear(model_dim, model_dim)
        self.emovec_layer = nn.Linear(emo_perceiver_dim, model_dim)
        self.mel_embedding = nn.Embedding(number_mel_codes, model_dim)
        self.gpt = GPT2Model(model_dim, layers, heads)
        self.mel_pos_embedding = LearnedPositionEmbedding(max_mel_tokens + 2 + max_conditioning_inputs, model_dim)
        self.text_pos_embedding = LearnedPositionEmbedding(max_text_tokens + 2, model_dim)
        self.final_norm = nn.LayerNorm(model_dim)
        self.text_head = nn.Linear(model_dim, number_text_tokens + 1)
        self.mel_head = nn.Linear(model_dim, number_mel_codes)

    # --- conditioning -------------------------------------------------------------------------------

    @property
    def speaker_latent_count(self) -> int:
        return 1

    @property
    def uses_language(self) -> bool:
        return True

    def speaker_conditioning(self, style: torch.Tensor) -> torch.Tensor:
        """The speaker row of the prefix: spk_emb_proj(CAMPPlus style). (B, 192) -> (B, 1, d)."""
        return self.spk_emb_proj(style.reshape(-1, style.shape[-1])).unsqueeze(1)

    def get_conditioning(self, features: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        raise TypeError(
            "IndexTTS-2.5 has no speaker conformer/perceiver: its speaker row is "
            "speaker_conditioning(CAMPPlus style)"
        )

    def conditioning_prefix(self, speaker_latents: torch.Tensor, emo_vec: torch.Tensor) -> torch.Tensor:
        """[speaker row + emo_vec, 0, 0]. (B, 1, d), (B, d) -> (B, 3, d)."""
        zeros = speaker_latents.new_zeros(speaker_latents.shape[0], 2, speaker_latents.shape[2])
        return torch.cat([speaker_latents + emo_vec.unsqueeze(1), zeros], dim=1)

    # --- embeddings ---------------------------------------------------------------------------------

    def language_row(self, language: int | torch.Tensor, device: torch.device) -> torch.Tensor:
        """lang_embedding of one language id (an index into the official LANGUAGE_DICT). -> (d,)."""
        language = int(language)
        if not 0 <= language < self.lang_embedding.num_embeddings:
            raise ValueError(f"language id {language} outside [0, {self.lang_embedding.num_embeddings})")
        return self.lang_embedding(torch.tensor(language, device=device))

    def build_prefix(
        self,
        speaker_latents: torch.Tensor,
        emo_vec: torch.Tensor,
        text_ids: torch.Tensor,
        language: int | torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Decoding prefix of one sequence: [speaker row + emo_vec, 0, 0] then [start_text, ids,
        stop_text] with `lang_embedding(language)` added to every text row (None: no language row, the
        official `langs=None` call). speaker_latents (1, d) / (1, 1, d) from `speaker_conditioning`;
        emo_vec (d,) / (1, d); text_ids (L,) / (1, L), start/stop ids dropped. -> (3 + L' + 2, d).
        """
        speaker_latents = speaker_latents.reshape(1, -1, speaker_latents.shape[-1])
        emo_vec = emo_vec.reshape(1, -1)
        text_ids = text_ids.reshape(-1).long()
        keep = (text_ids != self.start_text_token) & (text_ids != self.stop_text_token)
        framed = torch.cat(
            [
                text_ids.new_tensor([self.start_text_token]),
                text_ids[keep],
                text_ids.new_tensor([self.stop_text_token]),
            ]
        )
        conditioning = self.conditioning_prefix(speaker_latents, emo_vec)
        text = self.text_embeddings(framed.unsqueeze(0))
        if language is not None:
            text = text + self.language_row(language, text.device)
        return torch.cat([conditioning, text.to(conditioning.dtype)], dim=1).squeeze(0)

    def official_prefix(
        self,
        speaker_latents: torch.Tensor,
        emo_vec: torch.Tensor,
        text_ids: torch.Tensor,
        language: int | torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`prepare_gpt_inputs` of the official code for one sequence: (fake_input_ids (1, S+1),
        prefix_embeds (1, S, d), attention_mask (1, S+1)), with S = 3 + len(text_ids) + 2. Every id
        dropped from the text (start/stop ids, such as the stop id infer appends) leaves one masked
        zero row at the left. For comparison with the official outputs only."""
        prefix = self.build_prefix(speaker_latents, emo_vec, text_ids, language)
        target = self.speaker_latent_count + 2 + text_ids.numel() + 2
        padding = target - prefix.shape[0]
        embeds = torch.cat([prefix.new_zeros(padding, prefix.shape[1]), prefix])[None]
        mask = torch.ones(1, target + 1, dtype=torch.long, device=prefix.device)
        mask[:, :padding] = 0
        ids = torch.ones(1, target + 1, dtype=torch.long, device=prefix.device)
        ids[:, -1] = self.start_mel_token
        return ids, embeds, mask


# ---------------------------------------------------------------------------------------------------
# Building and loading
# ---------------------------------------------------------------------------------------------------

# Keys of the config.yaml `gpt` section that only matter for training or for variants not used; each
# maps to the value our network assumes. `condition_type` and `condition_module` configure the 2.0
# speaker encoder, which the campplus mode does not build.
_FIXED_GPT_KEYS: dict[str, Any] = {
    "use_mel_codes_as_input": True,
    "train_solo_embeddings": False,
    "types": 1,
    "spk_cond_mode": "campplus",
}
_IGNORED_GPT_KEYS = {"mel_length_compression", "checkpointing", "use_accel", "condition_type"}


def build_gpt_2_5(gpt_config: Mapping[str, Any], **overrides: Any) -> UnifiedVoice25:
    """A randomly initialised `UnifiedVoice25` from the config.yaml `gpt` section (a plain dict)."""
    kwargs: dict[str, Any] = {}
    for key, value in gpt_config.items():
        if key in _FIXED_GPT_KEYS:
            if value != _FIXED_GPT_KEYS[key]:
                raise ValueError(
                    f"gpt config {key}={value!r} is not supported (IndexTTS-2.5 uses {_FIXED_GPT_KEYS[key]!r})"
                )
        elif key not in _IGNORED_GPT_KEYS:
            kwargs[key] = value
    kwargs.update(overrides)
    try:
        return UnifiedVoice25(**kwargs)
    except TypeError as error:
        raise ValueError(f"gpt config does not fit the IndexTTS-2.5 UnifiedVoice: {error}") from error


def load_gpt_2_5(gpt_config: Mapping[str, Any], path: str | Path, **overrides: Any) -> UnifiedVoice25:
    """Build from the config and load the official 2.5 `gpt.pth` strictly, in eval mode."""
    state_dict = torch_load(path)
    if isinstance(state_dict, Mapping) and "model" in state_dict and not torch.is_tensor(state_dict["model"]):
        state_dict = state_dict["model"]  # the official loader accepts this wrapper too
    if not isinstance(state_dict, Mapping):
        raise CheckpointError(f"{path}: expected a state dict, got {type(state_dict).__name__}")
    model = build_gpt_2_5(gpt_config, **overrides)
    try:
        load_state_dict_strict(model, state_dict, path)
    except CheckpointError as error:
        hint = gpt_version_hint(state_dict, "2.5")
        raise CheckpointError(f"{error}\n  ({hint})" if hint else str(error)) from None
    return model.eval()
