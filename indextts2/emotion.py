"""The emotion-vector branch of IndexTTS-2 (`infer_v2.py`, `emo_vector` given).

An 8-way emotion weight vector [happy, angry, sad, afraid, disgusted, melancholic, surprised, calm]
selects, per emotion, one row of a bank of reference emotion vectors:

* `feat1.pt` (spk_matrix, (N, 192)) holds the CAMPPlus speaker style of every bank entry and
  `feat2.pt` (emo_matrix, (N, d)) the matching GPT emotion vectors. Both are split into consecutive
  groups of config `emo_num` rows, one group per emotion.
* In each group the entry whose speaker style is most cosine-similar to the reference speaker's style
  is chosen (or a random one, `use_random`).
* `emovec_mat = sum_i w_i * emo_group_i[chosen_i]` and the GPT gets
  `emovec_mat + (1 - sum(w)) * base_emovec`, where base_emovec is the audio-derived `merge_emovec`.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from indextts2.checkpoint import CheckpointError, torch_load


@dataclass
class EmotionBank:
    spk_groups: list[torch.Tensor]  # per emotion: (n_i, style_dim) speaker styles
    emo_groups: list[torch.Tensor]  # per emotion: (n_i, d) emotion vectors

    @property
    def emo_num(self) -> list[int]:
        return [group.shape[0] for group in self.spk_groups]


def split_emotion_bank(spk_matrix: torch.Tensor, emo_matrix: torch.Tensor, emo_num: Sequence[int]) -> EmotionBank:
    """Split the two matrices into consecutive groups of `emo_num` rows."""
    emo_num = [int(n) for n in emo_num]
    for name, matrix in (("spk_matrix", spk_matrix), ("emo_matrix", emo_matrix)):
        if matrix.dim() != 2 or matrix.shape[0] != sum(emo_num):
            raise ValueError(
                f"{name} has shape {tuple(matrix.shape)}, expected ({sum(emo_num)}, *) for emo_num {emo_num}"
            )
    return EmotionBank(list(torch.split(spk_matrix, emo_num)), list(torch.split(emo_matrix, emo_num)))


def load_emotion_bank(spk_matrix_path: str | Path, emo_matrix_path: str | Path, emo_num: Sequence[int]) -> EmotionBank:
    """Load `feat1.pt` (spk_matrix) and `feat2.pt` (emo_matrix), each a plain tensor, and split them."""
    spk_matrix = torch_load(spk_matrix_path)
    emo_matrix = torch_load(emo_matrix_path)
    for path, value in ((spk_matrix_path, spk_matrix), (emo_matrix_path, emo_matrix)):
        if not torch.is_tensor(value):
            raise CheckpointError(f"{path}: expected a tensor, found {type(value).__name__}")
    try:
        return split_emotion_bank(spk_matrix, emo_matrix, emo_num)
    except ValueError as error:
        raise CheckpointError(f"{spk_matrix_path} / {emo_matrix_path}: {error}") from error


def most_similar_row(query: torch.Tensor, matrix: torch.Tensor) -> int:
    """Index of the row of `matrix` (n, D) with the highest cosine similarity to `query` (D,) / (1, D)."""
    similarity = F.cosine_similarity(query.float().reshape(1, -1), matrix.float(), dim=1)
    return int(similarity.argmax())


def select_emotion_rows(
    bank: EmotionBank, style: torch.Tensor, use_random: bool = False, rng: random.Random | None = None
) -> list[int]:
    """Per emotion group: the entry closest to the speaker `style` (1, style_dim), or a random one."""
    if use_random:
        rng = rng or random.Random()
        return [rng.randint(0, n - 1) for n in bank.emo_num]
    return [most_similar_row(style, group) for group in bank.spk_groups]


def emotion_matrix_vector(bank: EmotionBank, weights: torch.Tensor, indices: Sequence[int]) -> torch.Tensor:
    """sum_i weights[i] * emo_group_i[indices[i]] -> (1, d)."""
    rows = torch.stack([group[index] for group, index in zip(bank.emo_groups, indices, strict=True)])
    return (weights.to(rows.dtype).unsqueeze(1) * rows).sum(dim=0, keepdim=True)


def mix_emotion_vector(weights: torch.Tensor, emovec_mat: torch.Tensor, base_emovec: torch.Tensor) -> torch.Tensor:
    """The GPT emotion vector: emovec_mat + (1 - sum(weights)) * base_emovec."""
    return emovec_mat + (1 - weights.sum()) * base_emovec


def emotion_vector_from_weights(
    bank: EmotionBank,
    weights: Sequence[float] | torch.Tensor,
    style: torch.Tensor,
    base_emovec: torch.Tensor,
    use_random: bool = False,
    rng: random.Random | None = None,
) -> tuple[torch.Tensor, list[int]]:
    """The whole branch: (mixed emotion vector (1, d), chosen index per group)."""
    weights = torch.as_tensor(weights, dtype=torch.float32, device=base_emovec.device)
    if weights.shape != (len(bank.emo_groups),):
        raise ValueError(f"expected {len(bank.emo_groups)} emotion weights, got shape {tuple(weights.shape)}")
    indices = select_emotion_rows(bank, style, use_random, rng)
    emovec_mat = emotion_matrix_vector(bank, weights, indices).to(base_emovec.device)
    return mix_emotion_vector(weights, emovec_mat, base_emovec), indices


def scale_emotion_weights(weights: Sequence[float], emo_alpha: float) -> list[float]:
    """infer_v2's `emo_alpha` on an emotion vector: clamp alpha to [0, 1] and scale, truncating each
    weight to 4 decimals (as the official code does) unless alpha is 1."""
    scale = max(0.0, min(1.0, emo_alpha))
    if scale == 1.0:
        return list(weights)
    return [int(w * scale * 10000) / 10000 for w in weights]


def uses_emotion_audio(has_emotion_audio: bool, emo_weights: Sequence[float] | None) -> bool:
    """Whether the emotion reference is the emotion audio. infer_v2 drops the emotion audio when emotion
    weights are given; without emotion audio, the speaker's own audio, read again as an emotion reference
    (straight to 16 kHz, as `emotion_prompt_features` reads it, not through 22.05 kHz as the speaker prompt
    is), takes its place."""
    return has_emotion_audio and emo_weights is None


def gpt_emotion_vector(
    base: torch.Tensor,
    reference: torch.Tensor,
    from_emotion_audio: bool,
    emo_alpha: float,
    emo_weights: Sequence[float] | None,
    bank: EmotionBank,
    style: torch.Tensor,
) -> torch.Tensor:
    """The GPT's emotion vector (1, d) by infer_v2's (and infer_v2_5's) rules, from the emotion encoder's
    vectors of the speaker prompt's features (`base`) and of the emotion reference (`reference`: the
    emotion audio's, or the speaker's audio read as an emotion reference; `uses_emotion_audio` says which):
    - base + alpha * (reference - base) (merge_emovec), where alpha is emo_alpha for emotion audio and 1
      for the speaker's own audio;
    - emotion weights, scaled by emo_alpha, pick rows of the emotion bank closest to the speaker's style
      and mix them with (1 - sum) * that vector.
    The served pipeline and both eager ones call this."""
    alpha = emo_alpha if from_emotion_audio else 1.0
    vector = base + alpha * (reference - base)
    if emo_weights is not None:
        vector, _ = emotion_vector_from_weights(bank, scale_emotion_weights(emo_weights, emo_alpha), style, vector)
    return vector
