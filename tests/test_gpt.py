"""UnifiedVoice (the IndexTTS-2 GPT) against the official outputs on the tiny checkpoint."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from golden import load_golden, suffixed_golden

from indextts2.checkpoint import CheckpointError
from indextts2.config import load_config
from indextts2.networks.gpt import (
    SamplingConfig,
    UnifiedVoice,
    apply_repetition_penalty,
    apply_sampling_warpers,
    build_gpt,
    load_gpt,
)

TOL = 1e-4


def assert_close(actual: torch.Tensor, expected: np.ndarray, tol: float = TOL) -> None:
    expected_t = torch.from_numpy(np.asarray(expected))
    assert tuple(actual.shape) == tuple(expected_t.shape)
    err = (actual.detach().float() - expected_t.float()).abs().max().item()
    assert err <= tol, f"max abs error {err:.3g} > {tol}"


@pytest.fixture(scope="module")
def gpt_config(golden_tiny: Path) -> dict:
    return load_config(golden_tiny / "config.yaml")["gpt"]


@pytest.fixture(scope="module")
def model(golden_tiny: Path, gpt_config: dict) -> UnifiedVoice:
    return load_gpt(gpt_config, golden_tiny / "gpt.pth")


@pytest.fixture(scope="module")
def model_official_padding(golden_tiny: Path, gpt_config: dict) -> UnifiedVoice:
    return load_gpt(gpt_config, golden_tiny / "gpt.pth", zero_conformer_padding=False)


@pytest.fixture(scope="module")
def cond(golden_tiny: Path) -> dict[str, np.ndarray]:
    return load_golden(golden_tiny, "gpt_conditioning")


@pytest.fixture(scope="module")
def fwd(golden_tiny: Path) -> dict[str, np.ndarray]:
    return load_golden(golden_tiny, "gpt_forward")


@pytest.fixture(scope="module")
def gen(golden_tiny: Path) -> dict[str, np.ndarray]:
    return load_golden(golden_tiny, "gpt_generate")


def t(arrays: dict[str, np.ndarray], key: str) -> torch.Tensor:
    return torch.from_numpy(arrays[key])


def frames(x: torch.Tensor) -> torch.Tensor:
    return torch.tensor([x.shape[1]])


def masked_spk(cond: dict[str, np.ndarray]) -> tuple[str, int]:
    """The golden speaker latents computed with fewer valid frames, and that frame count."""
    return suffixed_golden(cond, "spk_cond_latent_masked_len")


def masked_emo(cond: dict[str, np.ndarray]) -> tuple[str, int]:
    """The golden emotion vector computed with fewer valid frames, and that frame count."""
    return suffixed_golden(cond, "emovec_from_emo_masked_len")


# --- conditioning ----------------------------------------------------------------------------------


@torch.no_grad()
def test_speaker_conditioning_with_real_lengths_matches_official_lengths_1024(model, cond):
    # The official call passes 1024 (the feature dim) as the length: all frames valid, as with T.
    spk = t(cond, "spk_cond_emb")
    assert_close(model.get_conditioning(spk, frames(spk)), cond["spk_cond_latent"])
    assert_close(model.get_conditioning(spk, t(cond, "cond_lengths")), cond["spk_cond_latent"])


@torch.no_grad()
def test_emotion_conditioning_matches_golden(model, cond):
    spk, emo = t(cond, "spk_cond_emb"), t(cond, "emo_cond_emb")
    assert_close(model.get_emo_conditioning(emo, frames(emo)), cond["emo_perceiver_out"])
    assert_close(model.get_emovec(emo, frames(emo)), cond["emovec_from_emo"])
    assert_close(model.get_emovec(spk, frames(spk)), cond["emovec_from_spk"])


@torch.no_grad()
def test_merge_emovec_matches_golden_for_alpha_1_and_half(model, cond):
    spk, emo = t(cond, "spk_cond_emb"), t(cond, "emo_cond_emb")
    for alpha, key in ((1.0, "emovec_alpha1"), (0.5, "emovec_alpha0p5")):
        assert_close(model.merge_emovec(spk, emo, frames(spk), frames(emo), alpha=alpha), cond[key])


@torch.no_grad()
def test_official_padding_mode_reproduces_masked_goldens(model_official_padding, cond):
    m = model_official_padding
    (spk_key, spk_len), (emo_key, emo_len) = masked_spk(cond), masked_emo(cond)
    assert_close(m.get_conditioning(t(cond, "spk_cond_emb"), torch.tensor([spk_len])), cond[spk_key])
    assert_close(m.get_emovec(t(cond, "emo_cond_emb"), torch.tensor([emo_len])), cond[emo_key])


@torch.no_grad()
def test_official_padding_mode_batch_rows_equal_their_single_calls(model_official_padding, cond):
    spk = t(cond, "spk_cond_emb")
    batch = torch.cat([spk, spk])
    masked_key, masked_len = masked_spk(cond)
    latents = model_official_padding.get_conditioning(batch, torch.tensor([spk.shape[1], masked_len]))
    assert_close(latents[:1], cond["spk_cond_latent"])
    assert_close(latents[1:], cond[masked_key])


@torch.no_grad()
def test_batched_conditioning_rows_equal_unpadded_single_calls(model, cond):
    # Default mode: a padded row gives exactly what its frames give alone and unpadded (the official
    # inference never pads), whatever the padding holds.
    spk, emo = t(cond, "spk_cond_emb"), t(cond, "emo_cond_emb")
    n = min(masked_emo(cond)[1], spk.shape[1] - 1)  # a row shorter than the speaker row
    short = torch.cat([emo[:, :n], 5 * torch.randn(1, spk.shape[1] - n, spk.shape[2])], dim=1)
    batch = torch.cat([spk, short])
    lengths = torch.tensor([spk.shape[1], n])

    latents = model.get_conditioning(batch, lengths)
    assert_close(latents[:1], cond["spk_cond_latent"])
    alone = model.get_conditioning(emo[:, :n], torch.tensor([n]))
    assert (latents[1:] - alone).abs().max().item() < 1e-5

    emovecs = model.get_emovec(batch, lengths)
    assert_close(emovecs[:1], cond["emovec_from_spk"])
    alone = model.get_emovec(emo[:, :n], torch.tensor([n]))
    assert (emovecs[1:] - alone).abs().max().item() < 1e-5


# --- teacher-forced forward and prefix -------------------------------------------------------------


def forward_args(fwd: dict[str, np.ndarray], emo_vec: torch.Tensor | None = None) -> tuple:
    return (
        t(fwd, "speech_conditioning_latent"),
        t(fwd, "text_tokens"),
        t(fwd, "text_lengths"),
        t(fwd, "mel_codes"),
        t(fwd, "mel_codes_lengths"),
        t(fwd, "emo_vec") if emo_vec is None else emo_vec,
    )


@torch.no_grad()
def test_teacher_forced_inputs_and_latent_match_golden(model, fwd):
    assert_close(model.teacher_forced_inputs(*forward_args(fwd)), fwd["gpt_inputs_embeds"])
    latent = model(*forward_args(fwd))
    assert_close(latent, fwd["latent"])
    assert_close(model.mel_logits(latent), fwd["mel_logits_from_latent"])


@torch.no_grad()
def test_forward_with_emovec_from_emotion_audio_matches_emo_vec_none_golden(model, fwd):
    emo = t(fwd, "emo_cond_emb")
    emo_vec = model.get_emovec(emo, t(fwd, "emo_cond_mel_lengths"))
    assert_close(model(*forward_args(fwd, emo_vec)), fwd["latent_emo_vec_none"])


@torch.no_grad()
def test_forward_does_not_modify_its_inputs(model, fwd):
    args = forward_args(fwd)
    codes = args[3].clone()
    model(args[0], args[1], args[2], args[3], args[4] // 2, args[5])  # shorter than the codes
    assert torch.equal(args[3], codes)


@torch.no_grad()
def test_prefix_matches_golden_and_drops_start_and_stop_text_ids(model, fwd):
    latents, emo_vec, text = t(fwd, "speech_conditioning_latent"), t(fwd, "emo_vec"), t(fwd, "text_tokens")
    assert_close(model.conditioning_prefix(latents, emo_vec), fwd["conds_latent"])
    assert_close(model.build_prefix(latents, emo_vec, text).unsqueeze(0), fwd["prefix_embeds"])
    with_specials = torch.cat([torch.tensor([[0]]), text[:, :5], torch.tensor([[1]]), text[:, 5:], torch.tensor([[1]])], 1)
    assert_close(model.build_prefix(latents[0], emo_vec[0], with_specials[0]).unsqueeze(0), fwd["prefix_embeds"])


def teacher_forced_logits(model: UnifiedVoice, prefix: np.ndarray, codes: np.ndarray) -> torch.Tensor:
    tokens = torch.cat([torch.tensor([model.start_mel_token]), torch.from_numpy(codes)])
    mel = model.mel_embeddings(tokens[None], torch.arange(len(tokens))[None])
    prefix_t = torch.from_numpy(prefix)
    hidden = model.decode(torch.cat([prefix_t, mel], dim=1))
    return model.mel_head(hidden[:, prefix_t.shape[1] :])


@torch.no_grad()
def test_teacher_forced_pass_over_prefix_matches_official_logits(model, fwd, gen):
    assert_close(teacher_forced_logits(model, fwd["prefix_embeds"], fwd["mel_codes"][0]), fwd["teacher_forced_logits"])
    assert_close(
        teacher_forced_logits(model, gen["prefix_embeds"], gen["codes_rep1"][0, :-1]),
        gen["teacher_forced_logits_on_codes_rep1"],
    )


# --- generation ------------------------------------------------------------------------------------


def generate(model: UnifiedVoice, gen: dict[str, np.ndarray], sampling: SamplingConfig, **kwargs):
    return model.generate(t(gen, "speech_conditioning_latent"), t(gen, "emo_vec"), t(gen, "text_tokens"), sampling, **kwargs)


@pytest.mark.parametrize("penalty", [1, 10])
def test_generate_with_official_positions_reproduces_official_greedy_decoding(model, gen, penalty):
    max_codes = int(gen["max_generate_length"])
    out = generate(model, gen, SamplingConfig(repetition_penalty=float(penalty), max_codes=max_codes), official_positions=True)
    assert out.codes.tolist() == gen[f"codes_rep{penalty}"][0].tolist()
    assert not out.stopped
    assert_close(out.step_logits.unsqueeze(0), gen[f"step_logits_rep{penalty}"])
    # Our decoders drop the start code from the candidates (`without_start_code`); every other code's
    # score is the official one.
    start = model.start_mel_token
    assert torch.isneginf(out.step_scores[:, start]).all()
    keep = [code for code in range(out.step_scores.shape[1]) if code != start]
    assert_close(out.step_scores[:, keep].unsqueeze(0), gen[f"step_scores_rep{penalty}"][..., keep])


@torch.no_grad()
def test_generate_latents_equal_teacher_forced_forward_on_the_generated_codes(model, gen):
    out = generate(model, gen, SamplingConfig(repetition_penalty=10.0, max_codes=16))
    codes = out.codes.unsqueeze(0)
    text = t(gen, "text_tokens")
    latent = model(
        t(gen, "speech_conditioning_latent"), text, frames(text), codes, frames(codes), t(gen, "emo_vec")
    )
    assert (out.latents.unsqueeze(0) - latent).abs().max().item() < 1e-5
    assert (out.step_logits.unsqueeze(0) - model.mel_logits(latent)).abs().max().item() < 1e-5


@pytest.mark.parametrize("official_positions", [False, True])
def test_greedy_generation_with_kv_cache_equals_full_recomputation(model, gen, official_positions):
    sampling = SamplingConfig(repetition_penalty=10.0, max_codes=12)
    cached = generate(model, gen, sampling, official_positions=official_positions)
    recomputed = generate(model, gen, sampling, official_positions=official_positions, use_cache=False)
    assert cached.codes.tolist() == recomputed.codes.tolist()
    assert (cached.latents - recomputed.latents).abs().max().item() < 1e-5
    assert (cached.step_logits - recomputed.step_logits).abs().max().item() < 1e-5


@torch.no_grad()
def test_batched_decode_steps_with_different_lengths_match_single_sequence_generation(model, gen):
    # What a continuous-batching engine does: one shared cache, per-row slots and key masks.
    latents, emo_vec = t(gen, "speech_conditioning_latent"), t(gen, "emo_vec")
    texts = [t(gen, "text_tokens")[0], t(gen, "text_tokens")[0, :5]]
    steps = 4
    singles = [model.generate(latents, emo_vec, text, SamplingConfig(max_codes=steps)) for text in texts]

    start = torch.tensor([[model.start_mel_token]])
    rows = [
        torch.cat([model.build_prefix(latents, emo_vec, text)[None], model.mel_embeddings(start, torch.zeros_like(start))], 1)
        for text in texts
    ]
    lengths = torch.tensor([row.shape[1] for row in rows])
    longest = int(lengths.max())
    max_len = longest + steps
    embeds = torch.cat([torch.nn.functional.pad(row, (0, 0, 0, longest - row.shape[1])) for row in rows])
    caches = model.new_kv_caches(2, max_len, embeds.dtype, "cpu")
    slots = torch.arange(longest).expand(2, -1)
    mask = torch.nn.functional.pad(torch.ones(longest, longest, dtype=torch.bool).tril(), (0, max_len - longest))
    hidden = model.decode(embeds, mask[None, None], caches, slots)
    hidden = hidden[torch.arange(2), lengths - 1]

    codes, step_latents = [], []
    for step in range(steps):
        if step > 0:
            new_slots = lengths + step - 1
            key_valid = torch.arange(max_len)[None, :] <= new_slots[:, None]
            new = model.mel_embeddings(codes[-1][:, None], torch.full((2, 1), step))
            hidden = model.decode(new, key_valid[:, None, None, :], caches, new_slots[:, None])[:, 0]
        step_latents.append(hidden)
        codes.append(model.mel_head(hidden).argmax(-1))
    for row, single in enumerate(singles):
        assert [int(c[row]) for c in codes] == single.codes.tolist()
        batched = torch.stack([h[row] for h in step_latents])
        assert (batched - single.latents).abs().max().item() < 1e-5


def test_generate_stops_on_the_stop_code(gpt_config, golden_tiny, gen):
    model = load_gpt(gpt_config, golden_tiny / "gpt.pth")
    with torch.no_grad():
        model.mel_head.bias[model.stop_mel_token] = 1e4
    out = generate(model, gen, SamplingConfig(max_codes=5))
    assert out.stopped
    assert out.codes.numel() == 0 and out.latents.shape == (0, model.model_dim)
    assert out.step_logits.shape == (1, model.number_mel_codes)


def test_sampling_is_reproducible_with_a_seed(model, gen):
    sampling = SamplingConfig(do_sample=True, temperature=1.5, top_k=50, top_p=0.95, repetition_penalty=2.0, max_codes=10)
    first = generate(model, gen, SamplingConfig(**{**sampling.__dict__, "seed": 7}))
    again = generate(model, gen, SamplingConfig(**{**sampling.__dict__, "seed": 7}))
    other = generate(model, gen, SamplingConfig(**{**sampling.__dict__, "seed": 8}))
    assert first.codes.tolist() == again.codes.tolist()
    assert first.codes.tolist() != other.codes.tolist()
    # Removed codes are never drawn.
    drawn_scores = first.step_scores[torch.arange(len(first.codes)), first.codes]
    assert torch.isfinite(drawn_scores).all()


def test_sampling_with_top_k_1_is_greedy(model, gen):
    greedy = generate(model, gen, SamplingConfig(repetition_penalty=10.0, max_codes=8))
    sampled = generate(model, gen, SamplingConfig(do_sample=True, top_k=1, repetition_penalty=10.0, max_codes=8, seed=0))
    assert greedy.codes.tolist() == sampled.codes.tolist()


def test_logits_processing_matches_hf_processors():
    generation = pytest.importorskip("transformers.generation.logits_process")
    scores = torch.randn(3, 130) * 3
    input_ids = torch.tensor([[1, 128, 5, 7, 5], [1, 128, 9, 9, 9], [1, 128, 3, 4, 100]])
    seen = torch.zeros(3, 130, dtype=torch.bool).scatter(1, input_ids, True)

    expected = generation.RepetitionPenaltyLogitsProcessor(10.0)(input_ids, scores.clone())
    assert torch.equal(apply_repetition_penalty(scores, seen, torch.full((3,), 10.0)), expected)

    for temperature, top_k, top_p in ((0.8, 30, 0.8), (1.3, 5, 1.0), (1.0, 0, 0.5)):
        expected = scores.clone()
        if temperature != 1.0:
            expected = generation.TemperatureLogitsWarper(temperature)(input_ids, expected)
        if top_k:
            expected = generation.TopKLogitsWarper(top_k)(input_ids, expected)
        if top_p < 1.0:
            expected = generation.TopPLogitsWarper(top_p)(input_ids, expected)
        actual = apply_sampling_warpers(
            scores, torch.full((3,), temperature), torch.full((3,), top_k), torch.full((3,), top_p)
        )
        assert torch.equal(torch.isinf(actual), torch.isinf(expected))
        finite = torch.isfinite(expected)
        assert (actual[finite] - expected[finite]).abs().max().item() < 1e-6


def test_generate_rejects_more_codes_than_the_position_table(model, gen):
    with pytest.raises(ValueError, match="mel position"):
        generate(model, gen, SamplingConfig(max_codes=model.max_mel_tokens + 5))


# --- building and strict loading -------------------------------------------------------------------


def test_build_gpt_reads_every_size_from_the_config(gpt_config):
    model = build_gpt(gpt_config)
    assert model.mel_pos_embedding.emb.num_embeddings == gpt_config["max_mel_tokens"] + 3
    assert model.text_pos_embedding.emb.num_embeddings == gpt_config["max_text_tokens"] + 2
    assert len(model.gpt.h) == gpt_config["layers"]
    assert model.mel_head.out_features == gpt_config["number_mel_codes"]


def test_build_gpt_rejects_unsupported_variants(gpt_config):
    with pytest.raises(ValueError, match="use_mel_codes_as_input"):
        build_gpt({**gpt_config, "use_mel_codes_as_input": False})
    with pytest.raises(ValueError, match="does not fit"):
        build_gpt({**gpt_config, "no_such_key": 1})


def test_model_state_dict_has_exactly_the_checkpoint_keys(model, golden_tiny):
    state_dict = torch.load(golden_tiny / "gpt.pth", map_location="cpu", weights_only=True)
    assert set(model.state_dict()) == set(state_dict)


@pytest.fixture(scope="module")
def gpt_state_dict(golden_tiny: Path) -> dict[str, torch.Tensor]:
    return torch.load(golden_tiny / "gpt.pth", map_location="cpu", weights_only=True)


def test_loading_a_mis_shaped_tensor_names_file_key_and_shapes(gpt_config, gpt_state_dict, tmp_path):
    state_dict = dict(gpt_state_dict)
    shape = tuple(state_dict["gpt.h.0.attn.c_attn.weight"].shape)  # Conv1D (in, out) = (d, 3d)
    state_dict["gpt.h.0.attn.c_attn.weight"] = state_dict["gpt.h.0.attn.c_attn.weight"].t().contiguous()
    path = tmp_path / "gpt_bad_shape.pth"
    torch.save(state_dict, path)
    with pytest.raises(CheckpointError) as error:
        load_gpt(gpt_config, path)
    message = str(error.value)
    assert str(path) in message and "gpt.h.0.attn.c_attn.weight" in message
    assert str(shape[::-1]) in message and str(shape) in message


def test_loading_with_a_missing_key_names_it(gpt_config, gpt_state_dict, tmp_path):
    state_dict = dict(gpt_state_dict)
    shape = tuple(state_dict.pop("emo_perceiver_encoder.norm.gamma").shape)
    path = tmp_path / "gpt_missing.pth"
    torch.save(state_dict, path)
    message = r"missing key 'emo_perceiver_encoder.norm.gamma'.*" + re.escape(str(shape))
    with pytest.raises(CheckpointError, match=message) as error:
        load_gpt(gpt_config, path)
    assert str(path) in str(error.value)


def test_loading_with_an_unexpected_key_names_it(gpt_config, gpt_state_dict, tmp_path):
    shape = (gpt_config["number_mel_codes"], gpt_config["model_dim"])
    state_dict = {**gpt_state_dict, "gpt.wte.weight": torch.zeros(shape)}
    path = tmp_path / "gpt_extra.pth"
    torch.save(state_dict, path)
    message = r"unexpected key 'gpt.wte.weight' with shape " + re.escape(str(shape))
    with pytest.raises(CheckpointError, match=message) as error:
        load_gpt(gpt_config, path)
    assert str(path) in str(error.value)


def test_generate_defaults_to_the_official_code_limit(model, gen):
    out = generate(model, gen, SamplingConfig(repetition_penalty=10.0))
    assert out.stopped or len(out.codes) == model.max_mel_tokens - 1
