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

from indextts2.checkpoint_version import VERSION_2_5
from indextts2.networks.gpt import UnifiedVoice, build_unified_voice, load_unified_voice


class UnifiedVoice25(UnifiedVoice):
    """The IndexTTS-2.5 GPT. Built from the `gpt` section of config.yaml.

    Shares every method of the 2.0 `UnifiedVoice` but those that touch the speaker conditioning:
    the "speaker latents" of a 2.5 sequence are one row, `speaker_conditioning(style)`. The constructor
    is `UnifiedVoice`'s, whose campplus mode builds `spk_emb_proj` and `lang_embedding` instead of the
    speaker conformer/perceiver and `speed_emb`.
    """

    spk_cond_mode = "campplus"
    version = VERSION_2_5

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


def build_gpt_2_5(gpt_config: Mapping[str, Any], **overrides: Any) -> UnifiedVoice25:
    """A randomly initialised `UnifiedVoice25` from the config.yaml `gpt` section (a plain dict)."""
    return build_unified_voice(UnifiedVoice25, gpt_config, **overrides)


def load_gpt_2_5(gpt_config: Mapping[str, Any], path: str | Path, **overrides: Any) -> UnifiedVoice25:
    """Build from the config and load the official 2.5 `gpt.pth` strictly, in eval mode."""
    return load_unified_voice(UnifiedVoice25, gpt_config, path, **overrides)
