"""s2mel networks (gpt_layer, length regulator, DiT, CFM) against the official outputs on the tiny
checkpoint, per-row batching, and strict loading of s2mel.pth."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from golden import load_golden

from indextts2.checkpoint import CheckpointError
from indextts2.config import load_config
from indextts2.engine.s2mel_batch import padding_waste, plan_s2mel_batches
from indextts2.networks.length_regulator import nearest_source_indices
from indextts2.networks.s2mel import S2Mel, build_s2mel, load_s2mel, s2mel_official_checkpoint

MODULE_TOL = 1e-4
CHAIN_TOL = 1e-3


def t(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(array)


def max_err(a: torch.Tensor, b: np.ndarray) -> float:
    return float(np.abs(a.detach().numpy() - b).max())


@pytest.fixture(scope="module")
def s2mel_config(golden_tiny: Path) -> dict:
    return load_config(golden_tiny / "config.yaml")["s2mel"]


@pytest.fixture(scope="module")
def model(golden_tiny: Path, s2mel_config: dict) -> S2Mel:
    return load_s2mel(s2mel_config, golden_tiny / "s2mel.pth")


# ---------------------------------------------------------------- gpt_layer and length regulator


def test_gpt_layer_matches_golden(model, golden_tiny):
    g = load_golden(golden_tiny, "s2mel_gpt_layer")
    with torch.no_grad():
        assert max_err(model.gpt_layer(t(g["x"])), g["y"]) < MODULE_TOL


def test_nearest_source_indices_match_torch_interpolate():
    for in_len in (1, 7, 20, 40, 97):
        for out_len in (1, 13, 20, 34, 40, 86, 172, 301):
            ramp = torch.arange(in_len, dtype=torch.float32)[None, None]
            expected = F.interpolate(ramp, size=out_len, mode="nearest")[0, 0].long()
            ours = nearest_source_indices(torch.tensor([in_len]), torch.tensor([out_len]), out_len)[0]
            assert torch.equal(ours, expected), (in_len, out_len)


def test_length_regulator_matches_golden(model, golden_tiny):
    g = load_golden(golden_tiny, "s2mel_length_regulator")
    with torch.no_grad():
        y, olens = model.length_regulator(t(g["x"]), t(g["ylens"]))
        prompt_condition, _ = model.length_regulator(t(g["S_ref"]), t(g["ref_ylens"]))
    assert max_err(y, g["y"]) < MODULE_TOL
    assert np.array_equal(olens.numpy(), g["olens"])
    assert max_err(prompt_condition, g["prompt_condition"]) < MODULE_TOL


def test_length_regulator_batch_interpolates_every_row_to_the_longest_like_official(model, golden_tiny):
    g = load_golden(golden_tiny, "s2mel_length_regulator")
    with torch.no_grad():
        y, olens = model.length_regulator(t(g["x_batch2"]), t(g["ylens_batch2"]))
    assert y.shape == g["y_batch2"].shape
    assert max_err(y, g["y_batch2"]) < MODULE_TOL
    assert np.array_equal(olens.numpy(), g["ylens_batch2"])


def test_length_regulator_with_x_lens_makes_each_row_equal_to_it_alone(model, golden_tiny):
    g = load_golden(golden_tiny, "s2mel_length_regulator")
    x = t(g["x_batch2"]).clone()
    frames = x.shape[1]
    short = frames * 3 // 4
    x[1, short:] = 0.0  # row 1 has fewer valid input frames; its padding must not matter
    x_lens, ylens = torch.tensor([frames, short]), t(g["ylens_batch2"])
    with torch.no_grad():
        batched, _ = model.length_regulator(x, ylens, x_lens=x_lens)
        for row in range(2):
            alone, _ = model.length_regulator(x[row : row + 1, : x_lens[row]], ylens[row : row + 1])
            n = int(ylens[row])
            assert max_err(batched[row, :n], alone[0].numpy()) < MODULE_TOL
            assert torch.all(batched[row, n:] == 0)
    # Row 0 is the longest, so it agrees with the official whole-batch call; row 1 does not.
    assert max_err(batched[0], g["y_batch2"][0]) < MODULE_TOL


# ---------------------------------------------------------------- DiT


def dit_batch2(g: dict) -> list[torch.Tensor]:
    return [t(g[k]) for k in ("x_b2", "prompt_x_b2", "x_lens_b2", "t_b2", "style_b2", "cond_b2")]


def test_dit_matches_golden(model, golden_tiny):
    g = load_golden(golden_tiny, "s2mel_dit")
    dit = model.cfm.estimator
    with torch.no_grad():
        y = dit(t(g["x"]), t(g["prompt_x"]), t(g["x_lens"]), t(g["t"]), t(g["style"]), t(g["cond"]))
        y_b2 = dit(*dit_batch2(g))
        x, prompt_x, _, tt, style, cond = dit_batch2(g)
        y_shared = dit(x, prompt_x, t(g["x_lens"]), tt, style, cond)
    assert max_err(y, g["y"]) < MODULE_TOL
    assert max_err(y_b2, g["y_b2"]) < MODULE_TOL
    assert max_err(y_shared, g["y_b2_xlens_shared"]) < MODULE_TOL


def test_dit_reflect_at_row_end_makes_a_short_row_equal_to_it_alone(model, golden_tiny):
    g = load_golden(golden_tiny, "s2mel_dit")
    dit = model.cfm.estimator
    args = dit_batch2(g)
    n = int(args[2][1])  # row 1 has fewer valid frames than row 0
    alone = [args[0][1:, :, :n], args[1][1:, :, :n], torch.tensor([n]), args[3][1:], args[4][1:], args[5][1:, :n]]
    with torch.no_grad():
        batched = dit(*args, reflect_at_row_end=True)
        y_alone = dit(*alone)
    assert max_err(batched[1, :, :n], y_alone[0].numpy()) < MODULE_TOL
    assert max_err(batched[0], g["y_b2"][0]) < MODULE_TOL  # a full-length row is unchanged


# ---------------------------------------------------------------- CFM


def cfm_call(model: S2Mel, g: dict, cfg_rate: float, noise: torch.Tensor | None) -> torch.Tensor:
    return model.cfm.inference(
        t(g["mu"]), t(g["x_lens"]), t(g["prompt"]), t(g["style"]), int(g["n_timesteps"]),
        temperature=float(g["temperature"]), cfg_rate=cfg_rate, noise=noise,
    )


def test_cfm_matches_golden_with_and_without_guidance(model, golden_tiny):
    g = load_golden(golden_tiny, "s2mel_cfm")
    out = cfm_call(model, g, float(g["inference_cfg_rate"]), t(g["noise"]))
    out_no_cfg = cfm_call(model, g, 0.0, t(g["noise"]))
    assert max_err(out, g["out"]) < CHAIN_TOL
    assert max_err(out_no_cfg, g["out_no_cfg"]) < CHAIN_TOL
    assert torch.all(out[:, :, : g["prompt"].shape[-1]] == 0)


def test_cfm_draws_the_official_noise_from_the_global_rng(model, golden_tiny):
    g = load_golden(golden_tiny, "s2mel_cfm")
    torch.manual_seed(int(g["torch_seed"]))
    assert max_err(cfm_call(model, g, float(g["inference_cfg_rate"]), None), g["out"]) < CHAIN_TOL


def two_row_batch(g: dict) -> tuple[dict, list[tuple], list[int], list[int]]:
    """The golden CFM input as row 0 and, padded to its length, a shorter row 1 with another prompt
    length and style: (inference kwargs, per-row (mu, prompt, style, noise), lengths, prompt lengths)."""
    mu, prompt, style, noise = t(g["mu"]), t(g["prompt"]), t(g["style"]), t(g["noise"])
    total, (mels, prompt_len) = mu.shape[1], prompt.shape[1:]
    short = total * 4 // 5
    short_prompt = min(prompt_len, short) * 2 // 3
    lengths, prompt_lens = [total, short], [prompt_len, short_prompt]
    # Row 1: another prompt length, another total length, its own style; padded to `total` frames.
    mu_start, prompt_start = (total - short) // 2, (prompt_len - short_prompt) // 2
    rows = [
        (mu, prompt, style, noise),
        (
            mu[:, mu_start : mu_start + short].flip(1),
            prompt[..., prompt_start : prompt_start + short_prompt],
            style.flip(1),
            noise[..., :short].flip(2),
        ),
    ]
    batch_mu, batch_prompt = torch.zeros(2, total, mu.shape[-1]), torch.zeros(2, mels, prompt_len)
    batch_noise = torch.zeros(2, mels, total)
    for b, (m, p, _, n) in enumerate(rows):
        batch_mu[b, : m.shape[1]], batch_prompt[b, :, : p.shape[-1]], batch_noise[b, :, : n.shape[-1]] = m[0], p[0], n[0]
    kwargs = {
        "mu": batch_mu, "x_lens": torch.tensor(lengths), "prompt": batch_prompt, "style": torch.cat([r[2] for r in rows]),
        "n_timesteps": int(g["n_timesteps"]), "cfg_rate": float(g["inference_cfg_rate"]), "noise": batch_noise,
        "prompt_lens": torch.tensor(prompt_lens),
    }
    return kwargs, rows, lengths, prompt_lens


def test_cfm_batched_rows_of_different_lengths_equal_each_row_alone(model, golden_tiny):
    g = load_golden(golden_tiny, "s2mel_cfm")
    kwargs, rows, lengths, prompt_lens = two_row_batch(g)
    batched = model.cfm.inference(**kwargs)
    for b, (m, p, s, n) in enumerate(rows):
        alone = model.cfm.inference(m, torch.tensor([lengths[b]]), p, s, kwargs["n_timesteps"],
                                    cfg_rate=kwargs["cfg_rate"], noise=n)
        assert max_err(batched[b : b + 1, :, : lengths[b]], alone.numpy()) < CHAIN_TOL
        assert torch.all(batched[b, :, : prompt_lens[b]] == 0) and torch.all(batched[b, :, lengths[b] :] == 0)


def test_cfm_row_that_leaves_between_steps_stops_costing_and_leaves_the_other_row_unchanged(model, golden_tiny):
    g = load_golden(golden_tiny, "s2mel_cfm")
    kwargs, _, lengths, _ = two_row_batch(g)
    full = model.cfm.inference(**kwargs)
    shapes: list[tuple[int, ...]] = []

    def recording_velocity(*inputs):
        shapes.append(tuple(inputs[0].shape))
        return model.cfm._estimate(*inputs)

    steps = kwargs["n_timesteps"]
    assert steps >= 3
    gone = torch.tensor([False, False])

    def rows_gone() -> torch.Tensor:
        if len(shapes) == 2:  # the long row 0 leaves after two steps
            gone[0] = True
        return gone

    out = model.cfm.inference(**kwargs, velocity_fn=recording_velocity, rows_gone=rows_gone)
    assert torch.all(out[0] == 0)
    assert max_err(out[1:2], full[1:2].numpy()) < CHAIN_TOL
    # With guidance every row runs twice; after it left, only row 1 runs, cut to its own length.
    assert shapes[:2] == [(4, 80, lengths[0])] * 2
    assert shapes[2:] == [(2, 80, lengths[1])] * (steps - 2)


def test_cfm_stops_when_every_row_is_gone(model, golden_tiny):
    g = load_golden(golden_tiny, "s2mel_cfm")
    kwargs, _, _, _ = two_row_batch(g)
    calls = []
    out = model.cfm.inference(**kwargs, velocity_fn=lambda *inputs: calls.append(1) or model.cfm._estimate(*inputs),
                              rows_gone=lambda: torch.tensor([True, True]))
    assert calls == [] and torch.all(out == 0)


# ---------------------------------------------------------------- batch planning (by cost)


def test_plan_groups_mixed_prompt_lengths_by_cost_within_the_waste_limit():
    # 3 / 6 / 10 s prompts (258 / 517 / 861 frames) + 2 s of speech (172), arriving mixed: one batch in
    # arrival order would pad 44% beyond its real frames.
    costs = [1033, 430, 689, 1040, 432, 700]
    assert padding_waste(costs) > 0.4
    batches = plan_s2mel_batches(costs, frame_budget=100_000, max_padding_waste=0.25)
    assert batches == [[1, 4], [2, 5], [0, 3]]  # cheapest first
    assert all(padding_waste([costs[i] for i in batch]) <= 0.25 for batch in batches)


def test_plan_keeps_each_batch_within_the_frame_budget_and_runs_a_request_over_it_alone():
    assert plan_s2mel_batches([500] * 4, frame_budget=1024, max_padding_waste=0.25) == [[0, 1], [2, 3]]
    assert plan_s2mel_batches([500] * 3, frame_budget=400, max_padding_waste=0.25) == [[0], [1], [2]]
    assert plan_s2mel_batches([], frame_budget=1024, max_padding_waste=0.25) == []


def test_plan_never_batches_requests_with_different_steps_or_guidance():
    keys = [(25, 0.7), (10, 0.7), (25, 0.0), (25, 0.7)]
    batches = plan_s2mel_batches([300] * 4, frame_budget=10_000, max_padding_waste=0.25, keys=keys)
    assert sorted(batches) == [[0, 3], [1], [2]]


def test_plan_puts_every_request_in_exactly_one_batch_within_both_limits():
    rng = np.random.default_rng(0)
    for _ in range(200):
        costs = [int(c) for c in rng.integers(50, 2000, rng.integers(1, 9))]
        budget, waste = int(rng.integers(100, 8000)), float(rng.choice([0.0, 0.1, 0.25, 0.5]))
        batches = plan_s2mel_batches(costs, budget, waste)
        assert sorted(i for batch in batches for i in batch) == list(range(len(costs)))
        for batch in batches:
            rows = [costs[i] for i in batch]
            if len(rows) > 1:
                assert len(rows) * max(rows) <= budget and padding_waste(rows) <= waste + 1e-9


# ---------------------------------------------------------------- pipeline tail


def test_pipeline_tail_matches_golden(model, golden_tiny):
    g = load_golden(golden_tiny, "pipeline_s2mel_bigvgan")
    target_lengths = (t(g["code_lens"]) * 1.72).long()
    assert np.array_equal(target_lengths.numpy(), g["target_lengths"])
    with torch.no_grad():
        gpt_layer_out = model.gpt_layer(t(g["gpt_latent_1280"]))
        # S_infer also needs the codec's vq2emb (another module): use the stored one.
        cond, _ = model.length_regulator(t(g["S_infer"]), target_lengths)
    cat_condition = torch.cat([t(g["prompt_condition"]), cond], dim=1)
    vc_full = model.cfm.inference(
        cat_condition, torch.tensor([cat_condition.shape[1]]), t(g["ref_mel"]), t(g["style"]),
        int(g["n_timesteps"]), cfg_rate=float(g["inference_cfg_rate"]), noise=t(g["noise"]),
    )
    assert max_err(gpt_layer_out, g["gpt_layer_out"]) < MODULE_TOL
    assert max_err(cond, g["cond"]) < MODULE_TOL
    assert max_err(cat_condition, g["cat_condition"]) < MODULE_TOL
    assert max_err(vc_full, g["vc_full"]) < CHAIN_TOL
    assert max_err(vc_full[:, :, g["ref_mel"].shape[-1] :], g["vc_target"]) < CHAIN_TOL


# ---------------------------------------------------------------- checkpoint layout and strict loading


def test_official_checkpoint_round_trip(model, golden_tiny, s2mel_config, tmp_path):
    original = torch.load(golden_tiny / "s2mel.pth", map_location="cpu", weights_only=True)["net"]
    written = s2mel_official_checkpoint(model)["net"]
    for part, part_sd in original.items():
        assert set(written[part]) == set(part_sd), part
        for key, tensor in part_sd.items():
            assert written[part][key].shape == tensor.shape, key
            assert written[part][key].dtype == tensor.dtype, key
    torch.save({"net": written}, tmp_path / "s2mel.pth")
    reloaded = load_s2mel(s2mel_config, tmp_path / "s2mel.pth")
    for key, tensor in model.state_dict().items():
        torch.testing.assert_close(reloaded.state_dict()[key], tensor, rtol=1e-6, atol=1e-7)


def write_modified(golden_tiny: Path, tmp_path: Path, change) -> Path:
    checkpoint = torch.load(golden_tiny / "s2mel.pth", map_location="cpu", weights_only=True)
    change(checkpoint["net"])
    path = tmp_path / "s2mel.pth"
    torch.save(checkpoint, path)
    return path


@pytest.fixture(scope="module")
def golden_net(golden_tiny: Path) -> dict[str, dict[str, torch.Tensor]]:
    """The golden s2mel.pth's parts, for the shapes the strict-loading errors must name."""
    return torch.load(golden_tiny / "s2mel.pth", map_location="cpu", weights_only=True)["net"]


def test_load_rejects_a_reshaped_tensor(golden_tiny, golden_net, s2mel_config, tmp_path):
    key = "estimator.cond_projection.weight"
    rows, cols = golden_net["cfm"][key].shape

    def reshape(net):
        net["cfm"][key] = net["cfm"][key][:, : cols // 2].clone()

    path = write_modified(golden_tiny, tmp_path, reshape)
    with pytest.raises(CheckpointError, match=r"cfm\.estimator\.cond_projection\.weight") as error:
        load_s2mel(s2mel_config, path)
    message = str(error.value)
    assert str(path) in message and f"({rows}, {cols // 2})" in message and f"({rows}, {cols})" in message


def test_load_rejects_a_missing_tensor(golden_tiny, golden_net, s2mel_config, tmp_path):
    shape = tuple(golden_net["length_regulator"]["model.4.weight"].shape)
    path = write_modified(golden_tiny, tmp_path, lambda net: net["length_regulator"].pop("model.4.weight"))
    with pytest.raises(CheckpointError, match=r"missing key 'length_regulator\.model\.4\.weight'") as error:
        load_s2mel(s2mel_config, path)
    assert str(path) in str(error.value) and str(shape) in str(error.value)


def test_load_rejects_an_unexpected_tensor(golden_tiny, s2mel_config, tmp_path):
    path = write_modified(golden_tiny, tmp_path, lambda net: net["gpt_layer"].update({"3.weight": torch.zeros(5, 7)}))
    with pytest.raises(CheckpointError, match=r"unexpected key 'gpt_layer\.3\.weight' with shape \(5, 7\)") as error:
        load_s2mel(s2mel_config, path)
    assert str(path) in str(error.value)


def test_load_rejects_a_wrong_computed_buffer_but_accepts_its_absence(
    golden_tiny, golden_net, s2mel_config, tmp_path
):
    def drop(net):
        del net["cfm"]["estimator.input_pos"], net["cfm"]["estimator.t_embedder.freqs"]

    load_s2mel(s2mel_config, write_modified(golden_tiny, tmp_path, drop))
    half = len(golden_net["cfm"]["estimator.input_pos"]) // 2  # half the computed RoPE position table
    wrong = torch.arange(half)
    path = write_modified(golden_tiny, tmp_path, lambda net: net["cfm"].update({"estimator.input_pos": wrong}))
    with pytest.raises(CheckpointError, match=re.escape(f"'cfm.estimator.input_pos' (shape ({half},)")):
        load_s2mel(s2mel_config, path)


def test_build_rejects_options_indextts2_does_not_use(s2mel_config):
    config = {**s2mel_config, "DiT": {**s2mel_config["DiT"], "time_as_token": True}}
    with pytest.raises(ValueError, match="time_as_token"):
        build_s2mel(config)
