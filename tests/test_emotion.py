"""The emotion-vector branch against the official outputs (emo_vector_mix.npz)."""

from __future__ import annotations

import random
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from golden import load_golden

from indextts2.checkpoint import CheckpointError
from indextts2.config import load_config
from indextts2.emotion import (
    EmotionBank,
    emotion_matrix_vector,
    emotion_vector_from_weights,
    load_emotion_bank,
    mix_emotion_vector,
    scale_emotion_weights,
    select_emotion_rows,
)

TOL = 1e-4


@pytest.fixture(scope="module")
def config(golden_tiny: Path) -> dict:
    return load_config(golden_tiny / "config.yaml")


@pytest.fixture(scope="module")
def bank(golden_tiny: Path, config: dict) -> EmotionBank:
    return load_emotion_bank(golden_tiny / config["spk_matrix"], golden_tiny / config["emo_matrix"], config["emo_num"])


@pytest.fixture(scope="module")
def mix(golden_tiny: Path) -> dict[str, np.ndarray]:
    return load_golden(golden_tiny, "emo_vector_mix")


def max_err(actual: torch.Tensor, expected: np.ndarray) -> float:
    assert tuple(actual.shape) == expected.shape
    return (actual - torch.from_numpy(expected)).abs().max().item()


@pytest.fixture(scope="module")
def style_dim(mix: dict[str, np.ndarray]) -> int:
    return mix["style"].shape[-1]


def test_bank_is_split_by_emo_num(bank, config, style_dim):
    assert bank.emo_num == list(config["emo_num"])
    assert all(group.shape[1] == style_dim for group in bank.spk_groups)


def test_selected_rows_match_official_cosine_argmax(bank, mix):
    assert select_emotion_rows(bank, torch.from_numpy(mix["style"])) == mix["selected_index"].tolist()


def test_emotion_matrix_vector_and_mix_match_golden(bank, mix):
    weights = torch.from_numpy(mix["emo_vector"])
    emovec_mat = emotion_matrix_vector(bank, weights, mix["selected_index"].tolist())
    assert max_err(emovec_mat, mix["emovec_mat"]) <= TOL
    mixed = mix_emotion_vector(weights, emovec_mat, torch.from_numpy(mix["base_emovec"]))
    assert max_err(mixed, mix["mixed_emovec"]) <= TOL


def test_whole_branch_matches_golden(bank, mix):
    mixed, indices = emotion_vector_from_weights(
        bank, mix["emo_vector"].tolist(), torch.from_numpy(mix["style"]), torch.from_numpy(mix["base_emovec"])
    )
    assert indices == mix["selected_index"].tolist()
    assert max_err(mixed, mix["mixed_emovec"]) <= TOL


def test_base_emovec_is_the_merge_emovec_of_the_forward_golden(golden_tiny, mix):
    forward = load_golden(golden_tiny, "gpt_forward")
    assert np.abs(mix["base_emovec"] - forward["emo_vec"]).max() <= TOL


def test_random_selection_stays_inside_each_group(bank, style_dim):
    indices = select_emotion_rows(bank, torch.zeros(1, style_dim), use_random=True, rng=random.Random(3))
    assert all(0 <= index < n for index, n in zip(indices, bank.emo_num, strict=True))


def test_emo_alpha_scaling_truncates_like_infer():
    assert scale_emotion_weights([0.3, 0.123456], 1.0) == [0.3, 0.123456]
    assert scale_emotion_weights([0.3, 0.123456], 0.5) == [0.15, 0.0617]
    assert scale_emotion_weights([0.3], 2.0) == [0.3]


def test_loader_rejects_matrices_that_do_not_fit_emo_num(golden_tiny, config, style_dim, tmp_path):
    bad = tmp_path / "feat1.pt"
    rows = sum(config["emo_num"])
    torch.save(torch.zeros(rows - 3, style_dim), bad)
    message = f"spk_matrix has shape ({rows - 3}, {style_dim}), expected ({rows}, *)"
    with pytest.raises(CheckpointError, match=re.escape(message)):
        load_emotion_bank(bad, golden_tiny / config["emo_matrix"], config["emo_num"])
    with pytest.raises(CheckpointError, match="not found"):
        load_emotion_bank(tmp_path / "missing.pt", golden_tiny / config["emo_matrix"], config["emo_num"])
