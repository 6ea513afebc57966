"""IndexTTS-2.5 against the official outputs on the tiny 2.5 checkpoint (../shared/golden/indextts2_5-tiny,
GOLDEN.md there): every stage, both end-to-end `infer()` runs from their stored inputs, version detection
and strict loading across versions.

Tolerances are GOLDEN.md's: 1e-4 for single modules, 1e-3 for CFM, the pipeline tail and end-to-end
floats, 1 LSB for the int16 PCM (0.1 on the float PCM), exact for integers. Every dimension comes from
the golden config, tensors or arrays.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from golden import load_golden, load_golden_config
from torch import nn

from indextts2.checkpoint import CheckpointError
from indextts2.checkpoint_dir import (
    VERSION_2_0,
    VERSION_2_5,
    CheckpointPaths,
    detect_version,
    load_any_networks,
    load_networks,
)
from indextts2.checkpoint_dir_2_5 import IndexTTS25Networks, load_networks_2_5
from indextts2.engine import DecoderEngine, DecodeRequest, SamplingConfig, StopReason
from indextts2.frontend.audio import (
    campplus_features,
    emotion_waveform,
    mel_spectrogram,
    prompt_waveforms,
    seamless_m4t_features,
)
from indextts2.networks.gpt import load_gpt
from indextts2.networks.gpt_2_5 import UnifiedVoice25, load_gpt_2_5
from indextts2.networks.s2mel import load_s2mel
from indextts2.pipeline import eager_emotion_vector
from indextts2.pipeline_2_5 import EagerPipeline25, target_mel_frames_2_5

MODULE_TOL = 1e-4
CHAIN_TOL = 1e-3
PCM_FLOAT_TOL = 0.1

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def t(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.asarray(array))


def assert_close(actual: torch.Tensor | np.ndarray, expected: np.ndarray, tol: float = MODULE_TOL) -> None:
    actual = torch.as_tensor(actual).detach().float()
    expected_t = t(expected).float()
    assert tuple(actual.shape) == tuple(expected_t.shape), (tuple(actual.shape), tuple(expected_t.shape))
    err = (actual - expected_t).abs().max().item()
    assert err <= tol, f"max abs error {err:.3g} > {tol}"


def frames(x: torch.Tensor) -> torch.Tensor:
    return torch.tensor([x.shape[1]])


@pytest.fixture(scope="module")
def config(golden_tiny_2_5: Path) -> dict:
    return load_golden_config(golden_tiny_2_5)


@pytest.fixture(scope="module")
def nets(golden_tiny_2_5: Path) -> IndexTTS25Networks:
    # The golden set has no w2v-BERT weights (the official run used a stub, see the e2e tests).
    return load_any_networks(
        CheckpointPaths.from_model_dir(golden_tiny_2_5), with_semantic_encoder=False, with_text_frontend=False
    )


@pytest.fixture(scope="module")
def gpt(nets) -> UnifiedVoice25:
    return nets.gpt


@pytest.fixture(scope="module")
def gpt_official_padding(golden_tiny_2_5: Path, config: dict) -> UnifiedVoice25:
    return load_gpt_2_5(config["gpt"], golden_tiny_2_5 / "gpt.pth", zero_conformer_padding=False)


# ================================================================= version detection and strict loading


def test_version_is_read_from_the_checkpoint_directory(golden_tiny_2_5, golden_tiny):
    assert detect_version(golden_tiny_2_5) == VERSION_2_5
    assert detect_version(golden_tiny) == VERSION_2_0
    assert CheckpointPaths.from_model_dir(golden_tiny_2_5).version == VERSION_2_5
    assert CheckpointPaths.from_model_dir(golden_tiny).version == VERSION_2_0


def _config_text_without_version(model_dir: Path) -> str:
    text = (model_dir / "config.yaml").read_text()
    return re.sub(r"(?m)^version:.*$", "", text)


def test_version_without_a_version_key_comes_from_the_2_5_files(golden_tiny_2_5, tmp_path):
    (tmp_path / "config.yaml").write_text(_config_text_without_version(golden_tiny_2_5))
    assert detect_version(tmp_path) == VERSION_2_0
    (tmp_path / "codec.pth").symlink_to(golden_tiny_2_5 / "codec.pth")
    assert detect_version(tmp_path) == VERSION_2_5


def test_an_unknown_version_is_refused(golden_tiny_2_5, tmp_path):
    (tmp_path / "config.yaml").write_text(_config_text_without_version(golden_tiny_2_5) + "\nversion: 3.0\n")
    with pytest.raises(CheckpointError, match=r"version .*3\.0.* not supported"):
        detect_version(tmp_path)


def test_networks_match_the_checkpoint_shapes_and_config(nets, config, golden_tiny_2_5):
    assert isinstance(nets, IndexTTS25Networks)
    assert nets.s2mel.gpt_layer is None
    gpt_sd = torch.load(golden_tiny_2_5 / "gpt.pth", map_location="cpu", weights_only=True)
    assert set(nets.gpt.state_dict()) == set(gpt_sd)
    assert nets.gpt.lang_embedding.weight.shape == gpt_sd["lang_embedding.weight"].shape
    assert nets.gpt.text_embedding.num_embeddings == config["gpt"]["number_text_tokens"] + 1
    assert nets.codec.codebook_size == config["semantic_codec"]["codebook_size"]


def test_each_version_loader_refuses_the_other_versions_directory(golden_tiny_2_5, golden_tiny):
    with pytest.raises(CheckpointError, match="IndexTTS-2.5 checkpoint directory"):
        load_networks(CheckpointPaths.from_model_dir(golden_tiny_2_5))
    with pytest.raises(CheckpointError, match="IndexTTS-2.0 checkpoint directory"):
        load_networks_2_5(CheckpointPaths.from_model_dir(golden_tiny))


def mixed_directory(base: Path, out: Path, replacements: dict[str, Path]) -> Path:
    """A copy of checkpoint directory `base` (symlinks) with some files taken from elsewhere."""
    out.mkdir()
    for entry in base.iterdir():
        target = out / entry.name
        source = replacements.get(entry.name, entry)
        if entry.name == "config.yaml":
            shutil.copy2(source, target)
        else:
            target.symlink_to(source)
    return out


def refusal_message(model_dir: Path, **load_options) -> str:
    """The message of the CheckpointError that loading `model_dir` raises (the golden sets have no w2v-BERT
    weights and no text frontend)."""
    with pytest.raises(CheckpointError) as error:
        load_any_networks(CheckpointPaths.from_model_dir(model_dir), with_semantic_encoder=False,
                          with_text_frontend=False, **load_options)
    return str(error.value)


# A file of each version, and a key of it that the other version's file does not have.
FILES_AND_KEYS_OF_ONE_VERSION = [("gpt.pth", "spk_emb_proj.weight"), ("s2mel.pth", "gpt_layer.0.weight")]


@pytest.mark.parametrize(("file", "key"), FILES_AND_KEYS_OF_ONE_VERSION)
def test_a_2_0_file_in_a_2_5_directory_is_refused_naming_the_file_and_key(
    golden_tiny_2_5, golden_tiny, tmp_path, file, key
):
    model_dir = mixed_directory(golden_tiny_2_5, tmp_path / "mixed", {file: golden_tiny / file})
    message = refusal_message(model_dir)
    assert str(model_dir / file) in message
    assert repr(key) in message
    assert "IndexTTS-2.0" in message and "not an IndexTTS-2.5 one" in message


@pytest.mark.parametrize(("file", "key"), FILES_AND_KEYS_OF_ONE_VERSION)
def test_a_2_5_file_in_a_2_0_directory_is_refused_naming_the_file_and_key(
    golden_tiny_2_5, golden_tiny, tmp_path, file, key
):
    model_dir = mixed_directory(golden_tiny, tmp_path / "mixed", {file: golden_tiny_2_5 / file})
    message = refusal_message(model_dir, check_latent_width=False)
    assert str(model_dir / file) in message
    assert repr(key) in message
    assert "IndexTTS-2.5" in message and "not an IndexTTS-2.0 one" in message


def test_a_2_0_repcodec_saved_as_codec_pth_is_refused(golden_tiny_2_5, golden_tiny, tmp_path, config):
    from indextts2.networks.semantic_codec import build_semantic_codec, semantic_codec_official_state_dict

    repcodec = build_semantic_codec({**config["semantic_codec"], "downsample_scale": 1})
    codec_path = tmp_path / "codec.pth"
    torch.save({"model": semantic_codec_official_state_dict(repcodec)}, codec_path)
    model_dir = mixed_directory(golden_tiny_2_5, tmp_path / "mixed", {"codec.pth": codec_path})
    message = refusal_message(model_dir)
    assert str(model_dir / "codec.pth") in message and "'down.weight'" in message and "RepCodec" in message


def test_gpt_loaders_refuse_the_other_versions_file_directly(golden_tiny_2_5, golden_tiny, config):
    config_2_0 = load_golden_config(golden_tiny)
    with pytest.raises(CheckpointError, match=r"IndexTTS-2.0 GPT, not an IndexTTS-2.5 one: it has 'speed_emb.weight'"):
        load_gpt_2_5(config["gpt"], golden_tiny / "gpt.pth")
    with pytest.raises(CheckpointError, match=r"IndexTTS-2.5 GPT, not an IndexTTS-2.0 one: it has 'lang_embedding"):
        load_gpt(config_2_0["gpt"], golden_tiny_2_5 / "gpt.pth")
    with pytest.raises(CheckpointError, match=r"missing key 'cfm\.|unexpected key 'gpt_layer"):
        load_s2mel(config["s2mel"], golden_tiny / "s2mel.pth", with_gpt_layer=False)


# ================================================================= GPT


@pytest.fixture(scope="module")
def prefix_golden(golden_tiny_2_5):
    return load_golden(golden_tiny_2_5, "gpt_prefix")


def test_speaker_row_and_conditioning_prefix_match_golden(gpt, prefix_golden):
    g = prefix_golden
    speaker = gpt.speaker_conditioning(t(g["style"]))
    assert_close(speaker, g["spk_emb_proj_out"])
    assert_close(gpt.conditioning_prefix(speaker, t(g["emo_vec"])), g["conds_latent"])
    assert gpt.speaker_latent_count == g["conds_latent"].shape[1] - 2


def test_official_prefix_with_and_without_language_matches_golden(gpt, prefix_golden):
    g = prefix_golden
    speaker = gpt.speaker_conditioning(t(g["style"]))
    language = int(g["langs"][0])
    ids, embeds, mask = gpt.official_prefix(speaker, t(g["emo_vec"]), t(g["text_tokens"]), language)
    assert ids.tolist() == g["fake_input_ids"].tolist()
    assert mask.tolist() == g["prefix_attention_mask"].tolist()
    assert_close(embeds, g["prefix_embeds"])
    _, embeds_none, _ = gpt.official_prefix(speaker, t(g["emo_vec"]), t(g["text_tokens"]), None)
    assert_close(embeds_none, g["prefix_embeds_langs_none"])
    assert_close(gpt.lang_embedding.weight[language], g["lang_embedding_row"])


def test_decoding_prefix_is_the_official_one_without_its_masked_pad_rows(gpt, prefix_golden):
    g = prefix_golden
    speaker = gpt.speaker_conditioning(t(g["style"]))
    padding = int((g["prefix_attention_mask"][0] == 0).sum())
    assert padding == 1  # the stop id that infer appends and prepare_gpt_inputs drops (GOLDEN.md)
    assert np.all(g["prefix_embeds"][0, :padding] == 0)
    prefix = gpt.build_prefix(speaker, t(g["emo_vec"]), t(g["text_tokens"]), int(g["langs"][0]))
    assert_close(prefix[None], g["prefix_embeds"][:, padding:])


def test_emotion_vectors_match_golden(gpt, gpt_official_padding, golden_tiny_2_5):
    g = load_golden(golden_tiny_2_5, "gpt_emovec")
    spk, emo = t(g["spk_cond_emb"]), t(g["emo_cond_emb"])
    assert_close(gpt.get_emo_conditioning(emo, frames(emo)), g["emo_perceiver_out"])
    # infer passes the feature width (1024) as the length: every frame valid.
    assert_close(gpt.get_emovec(emo, t(g["cond_lengths"])), g["emovec_from_emo"])
    assert_close(gpt.get_emovec(emo, frames(emo)), g["emovec_from_emo"])
    assert_close(gpt.get_emovec(spk, frames(spk)), g["emovec_from_spk"])
    for alpha, key in ((1.0, "emovec_alpha1"), (0.5, "emovec_alpha0p5")):
        assert_close(gpt.merge_emovec(spk, emo, frames(spk), frames(emo), alpha), g[key])
    masked = next(key for key in g if key.startswith("emovec_from_emo_masked_len"))
    length = int(masked[len("emovec_from_emo_masked_len"):])
    assert_close(gpt_official_padding.get_emovec(emo, torch.tensor([length])), g[masked])


@pytest.fixture(scope="module")
def forward_golden(golden_tiny_2_5):
    return load_golden(golden_tiny_2_5, "gpt_forward")


def forward_args(gpt: UnifiedVoice25, g: dict, emo_vec: torch.Tensor) -> tuple:
    return (
        gpt.speaker_conditioning(t(g["style"])), t(g["text_tokens"]), t(g["text_lengths"]),
        t(g["mel_codes"]), t(g["mel_codes_lengths"]), emo_vec,
    )


@torch.no_grad()
def test_teacher_forced_forward_matches_golden(gpt, forward_golden):
    g = forward_golden
    latent = gpt(*forward_args(gpt, g, t(g["emo_vec"])))
    assert_close(latent, g["latent"])
    assert_close(gpt.mel_logits(latent), g["mel_logits_from_latent"])
    emo = t(g["emo_cond_emb"])
    assert_close(gpt(*forward_args(gpt, g, gpt.get_emovec(emo, frames(emo)))), g["latent_emo_vec_none"])


@torch.no_grad()
def test_gpt_body_on_the_official_teacher_forced_input_matches_its_logits(gpt, forward_golden):
    # The golden call ran the inference model on the stored prefix without an attention mask, so its
    # zero pad row was attended to: fed here as it was.
    g = forward_golden
    prefix = t(g["prefix_embeds"])
    ids = g["teacher_forced_input_ids"][0]
    assert ids[prefix.shape[1]] == gpt.start_mel_token
    tokens = t(ids[prefix.shape[1]:])[None]
    mel = gpt.mel_embeddings(tokens, torch.arange(tokens.shape[1])[None])
    hidden = gpt.decode(torch.cat([prefix, mel], dim=1))
    assert_close(gpt.mel_head(hidden[:, prefix.shape[1]:]), g["teacher_forced_logits"])


@pytest.fixture(scope="module")
def gen(golden_tiny_2_5):
    return load_golden(golden_tiny_2_5, "gpt_generate")


def generate(gpt: UnifiedVoice25, g: dict, penalty: float, **kwargs):
    sampling = SamplingConfig(repetition_penalty=penalty, max_codes=int(g["max_generate_length"]))
    return gpt.generate(
        gpt.speaker_conditioning(t(g["style"])), t(g["emo_vec"]), t(g["text_tokens"]), sampling,
        official_positions=True, language=int(g["langs"][0]), **kwargs,
    )


def test_greedy_generation_with_penalty_10_reproduces_the_official_codes_and_stop(gpt, gen):
    codes = gen["codes_rep10"][0]
    stop_at = int(np.flatnonzero(codes == gpt.stop_mel_token)[0])
    out = generate(gpt, gen, 10.0)
    assert out.stopped
    assert out.codes.tolist() == codes[:stop_at].tolist()
    assert_close(out.step_logits[None], gen["step_logits_rep10"])
    keep = [c for c in range(out.step_scores.shape[1]) if c != gpt.start_mel_token]
    assert_close(out.step_scores[None][..., keep], gen["step_scores_rep10"][..., keep])
    assert_close(gpt.speaker_conditioning(t(gen["style"])), gen["speech_conditioning_latent"])
    assert_close(gpt.official_prefix(gpt.speaker_conditioning(t(gen["style"])), t(gen["emo_vec"]),
                                     t(gen["text_tokens"]), int(gen["langs"][0]))[1], gen["prefix_embeds"])


def test_greedy_generation_without_penalty_matches_the_official_codes_until_it_picks_the_start_code(gpt, gen):
    # The official decoder picked the start code (GOLDEN.md: codes_rep1 contains it; no codec can
    # decode it). Ours never does (`without_start_code`): equal codes before, and the official pick
    # was the start code.
    official = gen["codes_rep1"][0]
    first_start = int(np.flatnonzero(official == gpt.start_mel_token)[0])
    out = generate(gpt, gen, 1.0)
    assert out.codes[:first_start].tolist() == official[:first_start].tolist()
    assert_close(out.step_logits[: first_start + 1], gen["step_logits_rep1"][0, : first_start + 1])
    assert int(np.argmax(gen["step_scores_rep1"][0, first_start])) == gpt.start_mel_token
    assert int(out.codes[first_start]) != gpt.start_mel_token


@torch.no_grad()
def test_every_official_step_logit_without_penalty_from_one_pass_at_the_official_positions(gpt, gen):
    official = gen["codes_rep1"][0]
    prefix = gpt.build_prefix(gpt.speaker_conditioning(t(gen["style"])), t(gen["emo_vec"]),
                              t(gen["text_tokens"]), int(gen["langs"][0]))[None]
    fed = torch.cat([torch.tensor([gpt.start_mel_token]), t(official[:-1])])[None]
    positions = torch.tensor([gpt.mel_position(step, True) for step in range(fed.shape[1])])[None]
    hidden = gpt.decode(torch.cat([prefix, gpt.mel_embeddings(fed, positions)], dim=1))
    assert_close(gpt.mel_head(hidden[:, prefix.shape[1]:]), gen["step_logits_rep1"])


# ---- the decoder engine serves the 2.5 GPT


def engine_request(gpt, gen, penalty: float, **options) -> DecodeRequest:
    return DecodeRequest(
        speaker_latents=gpt.speaker_conditioning(t(gen["style"])).detach()[0],
        emotion_vector=t(gen["emo_vec"])[0],
        text_ids=t(gen["text_tokens"])[0],
        sampling=SamplingConfig(repetition_penalty=penalty, max_codes=int(gen["max_generate_length"])),
        official_positions=True,
        **options,
    )


def test_engine_reproduces_the_official_codes_with_the_language_row(gpt, gen):
    engine = DecoderEngine(gpt, max_slots=2)
    language = int(gen["langs"][0])
    with_language = engine.submit(engine_request(gpt, gen, 10.0, language=language, request_id="lang"))
    without = engine.submit(engine_request(gpt, gen, 10.0, request_id="none"))
    engine.run_until_idle()
    result = with_language.result(timeout=0)
    codes = gen["codes_rep10"][0]
    assert result.stop_reason == StopReason.STOP_CODE
    assert result.codes.tolist() == codes[: int(np.flatnonzero(codes == gpt.stop_mel_token)[0])].tolist()
    # Batched with another sequence, each equals the reference loop alone.
    reference = gpt.generate(
        gpt.speaker_conditioning(t(gen["style"])), t(gen["emo_vec"]), t(gen["text_tokens"]),
        SamplingConfig(repetition_penalty=10.0, max_codes=int(gen["max_generate_length"])), official_positions=True,
    )
    assert without.result(timeout=0).codes.tolist() == reference.codes.tolist()
    assert engine.stats.prefill_counts[0] == 2


def test_engine_refuses_a_language_outside_the_table_and_a_language_for_a_2_0_gpt(gpt, gen, golden_tiny):
    engine = DecoderEngine(gpt, max_slots=1)
    handle = engine.submit(engine_request(gpt, gen, 10.0, language=gpt.lang_embedding.num_embeddings))
    assert handle.result(timeout=0).stop_reason == StopReason.ERROR
    engine_2_0 = DecoderEngine.from_checkpoint_dir(golden_tiny, max_slots=1)
    request = engine_request(gpt, gen, 10.0, language=0)
    request.speaker_latents = torch.zeros(engine_2_0.model.speaker_latent_count, engine_2_0.model.model_dim)
    request.text_ids = torch.tensor([5, 6, 7])
    result = engine_2_0.submit(request).result(timeout=0)
    assert result.stop_reason == StopReason.ERROR and "language" in result.error


def test_engine_from_a_2_5_checkpoint_directory_loads_the_2_5_gpt(golden_tiny_2_5):
    engine = DecoderEngine.from_checkpoint_dir(golden_tiny_2_5, max_slots=1)
    assert isinstance(engine.model, UnifiedVoice25)


# ================================================================= codec


@pytest.fixture(scope="module")
def codec(nets):
    return nets.codec


@torch.no_grad()
def test_codec_quantize_matches_golden_for_odd_and_even_lengths(codec, golden_tiny_2_5):
    g = load_golden(golden_tiny_2_5, "codec_quantize")
    x = t(g["x_T41"])
    assert_close(codec.downsample(x), g["down_gelu_T41"])
    encoded = codec.encode(x)
    assert_close(encoded.transpose(1, 2), g["encoder_out_T41"])
    assert_close(codec.quantizer.quantizers[0].project_in(encoded).transpose(1, 2), g["z_e_T41"])
    for length in (41, 40):
        codes, quantized = codec.quantize(t(g[f"x_T{length}"]))
        assert codes.tolist() == g[f"indices_T{length}"].tolist()
        assert codes.shape[1] == -(-length // 2)
        assert_close(quantized, g[f"quantized_T{length}"])


@torch.no_grad()
def test_codec_decode_gives_two_frames_per_code_and_matches_golden(codec, golden_tiny_2_5):
    g = load_golden(golden_tiny_2_5, "codec_decode")
    codes = t(g["codes"])
    assert_close(codec.vq2emb(codes).transpose(1, 2), g["vq2emb"])
    decoded = codec.decoder(codec.vq2emb(codes).transpose(1, 2))
    assert_close(decoded, g["decoder_out"])
    assert_close(torch.nn.functional.interpolate(decoded.transpose(1, 2), scale_factor=2), g["upsampled_nearest"])
    s_infer = codec.decode(codes)
    assert s_infer.shape[1] == 2 * codes.shape[1]
    assert_close(s_infer, g["S_infer"])
    assert_close(codec.decode(t(g["codes_b2"])), g["S_infer_b2"])


# ================================================================= s2mel and vocoder


@torch.no_grad()
def test_length_regulator_on_raw_features_and_decoded_codes_matches_golden(nets, golden_tiny_2_5):
    g = load_golden(golden_tiny_2_5, "s2mel_length_regulator")
    regulator = nets.s2mel.length_regulator
    prompt, olens = regulator(t(g["spk_cond_emb"]), t(g["ref_ylens"]))
    assert_close(prompt, g["prompt_condition"])
    assert olens.tolist() == g["prompt_olens"].tolist()
    cond, olens = regulator(t(g["S_infer"]), t(g["target_lengths"]))
    assert_close(cond, g["cond"])
    assert olens.tolist() == g["olens"].tolist()
    assert target_mel_frames_2_5(g["S_infer"].shape[1]) == int(g["target_lengths"][0])
    cond_b2, _ = regulator(t(g["S_infer_b2"]), t(g["ylens_b2"]))
    assert_close(cond_b2, g["cond_b2"])


@torch.no_grad()
def test_dit_cfg_batched_call_matches_golden(nets, golden_tiny_2_5):
    g = load_golden(golden_tiny_2_5, "s2mel_dit")
    y = nets.s2mel.cfm.estimator(*(t(g[k]) for k in ("x", "prompt_x", "x_lens", "t", "style", "cond")))
    assert_close(y, g["y"])


def test_cfm_matches_golden_with_and_without_guidance_and_from_the_seed(nets, golden_tiny_2_5):
    g = load_golden(golden_tiny_2_5, "s2mel_cfm")
    cfm = nets.s2mel.cfm

    def run(cfg_rate: float, noise: torch.Tensor | None) -> torch.Tensor:
        return cfm.inference(t(g["mu"]), t(g["x_lens"]), t(g["prompt"]), t(g["style"]), int(g["n_timesteps"]),
                             temperature=float(g["temperature"]), cfg_rate=cfg_rate, noise=noise)

    assert_close(run(float(g["inference_cfg_rate"]), t(g["noise"])), g["out"], CHAIN_TOL)
    assert_close(run(0.0, t(g["noise"])), g["out_no_cfg"], CHAIN_TOL)
    torch.manual_seed(int(g["torch_seed"]))
    assert_close(run(float(g["inference_cfg_rate"]), None), g["out"], CHAIN_TOL)


@torch.no_grad()
def test_bigvgan_matches_golden(nets, golden_tiny_2_5):
    g = load_golden(golden_tiny_2_5, "bigvgan")
    assert_close(nets.bigvgan(t(g["mel"])), g["wav"], CHAIN_TOL)


@torch.no_grad()
def test_pipeline_tail_from_codes_to_pcm_matches_golden(nets, golden_tiny_2_5):
    g = load_golden(golden_tiny_2_5, "pipeline_tail")
    codes = g["codes_before_stop_truncation"][0]
    stop = nets.gpt.stop_mel_token
    cut = codes[: int(np.flatnonzero(codes == stop)[0])] if stop in codes else codes
    assert cut.tolist() == g["codes"][0].tolist()
    s_infer = nets.codec.decode(t(g["codes"]))
    assert_close(s_infer, g["S_infer"])
    target = target_mel_frames_2_5(s_infer.shape[1])
    assert target == int(g["target_lengths"][0])
    assert target_mel_frames_2_5(s_infer.shape[1], 1.3) == int(g["tlen_duration_factor_1p3"])
    cond, _ = nets.s2mel.length_regulator(s_infer, torch.tensor([target]))
    assert_close(cond, g["cond"])
    full = torch.cat([t(g["prompt_condition"]), cond], dim=1)
    assert_close(full, g["cat_condition"])
    mel = nets.s2mel.cfm.inference(
        full, torch.tensor([full.shape[1]]), t(g["ref_mel"]), t(g["style"]), int(g["n_timesteps"]),
        cfg_rate=float(g["inference_cfg_rate"]), noise=t(g["noise"]),
    )
    assert_close(mel, g["vc_full"], CHAIN_TOL)
    target_mel = mel[:, :, g["ref_mel"].shape[-1]:]
    assert_close(target_mel, g["vc_target"], CHAIN_TOL)
    wav = nets.bigvgan(target_mel)[:, 0]
    assert_close(wav, g["wav"], CHAIN_TOL)
    assert_close(torch.clamp(32767 * wav, -32767.0, 32767.0), g["wav_pcm"], PCM_FLOAT_TOL)


# ================================================================= end to end


class StubW2VBert(nn.Module):
    """The golden run's w2v-BERT stand-in: hidden_states[17] = Linear(160 -> 1024)(input_features), then
    the official normalisation by wav2vec2bert_stats.pt."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, stats: dict) -> None:
        super().__init__()
        self.linear = nn.Linear(weight.shape[1], weight.shape[0])
        with torch.no_grad():
            self.linear.weight.copy_(weight)
            self.linear.bias.copy_(bias)
        self.register_buffer("mean", stats["mean"].float())
        self.register_buffer("std", torch.sqrt(stats["var"].float()))

    def forward(self, input_features: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return (self.linear(input_features) - self.mean) / self.std


E2E_CASES = ["e2e_en", "e2e_zh_emovec"]


@pytest.fixture(scope="module")
def e2e_pipelines(golden_tiny_2_5, nets):
    """Per case: its golden arrays and a pipeline whose w2v-BERT is the case's stub."""
    stats = torch.load(golden_tiny_2_5 / "wav2vec2bert_stats.pt", map_location="cpu", weights_only=True)
    out = {}
    for case in E2E_CASES:
        g = load_golden(golden_tiny_2_5, case)
        case_nets = IndexTTS25Networks(**nets.__dict__)
        case_nets.semantic_encoder = StubW2VBert(t(g["stub_w2v_weight"]), t(g["stub_w2v_bias"]), stats)
        out[case] = (g, EagerPipeline25(case_nets))
    return out


# The official call's sampling: do_sample is forced on, top_k=1 makes it greedy; num_beams=1,
# repetition_penalty=10, max_mel_tokens=20; temperature/top_p at their defaults.
def e2e_sampling(max_codes: int) -> SamplingConfig:
    return SamplingConfig(do_sample=True, top_k=1, top_p=0.8, temperature=0.8, repetition_penalty=10.0,
                          max_codes=max_codes)


@pytest.mark.parametrize("case", E2E_CASES)
def test_end_to_end_audio_front_end_matches_golden(e2e_pipelines, case):
    g, pipeline = e2e_pipelines[case]
    samples, rate = g["spk_wav_file_22k"], int(g["sr"])
    wav_22k, wav_16k = prompt_waveforms(samples, rate)
    assert_close(wav_22k[None], g["audio_22k"])
    assert_close(wav_16k[None], g["w2v_input_wav_0"])
    assert_close(emotion_waveform(samples, rate)[None], g["w2v_input_wav_1"])
    for index, wav in ((0, wav_16k), (1, emotion_waveform(samples, rate))):
        features, _ = seamless_m4t_features(wav)
        # Our extractor is transformers' on float32; the official differs by rounding (<= 3e-4 here).
        assert_close(features[None], g[f"w2v_input_features_{index}"], CHAIN_TOL)
    assert_close(mel_spectrogram(wav_22k, **pipeline.mel_args)[None], g["ref_mel"], CHAIN_TOL)
    assert_close(campplus_features(wav_16k)[None], g["campplus_fbank"], CHAIN_TOL)


@torch.inference_mode()
@pytest.mark.parametrize("case", E2E_CASES)
def test_end_to_end_infer_from_the_stored_inputs_matches_golden(e2e_pipelines, case):
    g, pipeline = e2e_pipelines[case]
    nets = pipeline.networks
    samples, rate = g["spk_wav_file_22k"], int(g["sr"])

    speaker = pipeline.speaker_prompt(samples, rate)
    assert_close(speaker.semantic_features, g["get_emb_out_0"], CHAIN_TOL)
    assert_close(speaker.ref_mel, g["ref_mel"], CHAIN_TOL)
    assert_close(speaker.style, g["style"], CHAIN_TOL)
    assert speaker.ref_mel.shape[-1] == int(g["lr_ylens_0"][0])
    assert_close(speaker.prompt_condition, g["lr_out_0"], CHAIN_TOL)

    # No emotion audio: the speaker's file read again at 16 kHz is the emotion reference.
    emotion = pipeline.emotion_features(samples, rate)
    assert_close(emotion, g["get_emb_out_2"], CHAIN_TOL)
    weights = g["emo_vector"].tolist() or None
    emovec = eager_emotion_vector(pipeline, speaker, emotion, False, 1.0, weights)
    assert_close(emovec, g["emo_vec"], CHAIN_TOL)
    if weights is None:
        assert_close(emovec, g["merged_emovec"], CHAIN_TOL)

    text_ids, language = t(g["text_tokens"]), int(g["langs"][0])
    _, prefix, _ = nets.gpt.official_prefix(speaker.speaker_latents, emovec, text_ids, language)
    assert_close(prefix, g["prefix_embeds"], CHAIN_TOL)

    official_codes = g["gpt_codes"][0]
    codes = pipeline.generate_codes(speaker, emovec, text_ids[0], language, e2e_sampling(20))
    assert codes.tolist() == g["codes_to_decode"][0].tolist()
    stops = np.flatnonzero(official_codes == nets.gpt.stop_mel_token)
    assert codes.tolist() == official_codes[: stops[0] if stops.size else None].tolist()

    s_infer = nets.codec.decode(codes[None])
    assert_close(s_infer, g["S_infer"], CHAIN_TOL)
    assert target_mel_frames_2_5(s_infer.shape[1]) == int(g["lr_ylens_1"][0])
    waveform, mel_frames = pipeline.codes_to_waveform(speaker, codes, noise=t(g["cfm_noise"]))
    assert mel_frames == g["bigvgan_in"].shape[-1]
    assert_close(waveform[None, None], g["bigvgan_out"], CHAIN_TOL)
    pcm = torch.clamp(32767 * torch.from_numpy(waveform), -32767.0, 32767.0).to(torch.int16)
    assert pcm.shape[0] == g["final_pcm_int16"].shape[-1]
    assert (pcm.int() - t(g["final_pcm_int16"][0]).int()).abs().max().item() <= 1


@torch.no_grad()
@pytest.mark.parametrize("case", E2E_CASES)
def test_end_to_end_stage_inputs_give_the_recorded_stage_outputs(e2e_pipelines, case):
    """Each recorded stage on its recorded input (no error carried over from earlier stages)."""
    g, pipeline = e2e_pipelines[case]
    nets = pipeline.networks
    for index in (0, 1):
        features = t(g[f"w2v_input_features_{index}"])
        embedded = nets.semantic_encoder(features, torch.ones(features.shape[:2], dtype=torch.long))
        assert_close(embedded, g[f"get_emb_out_{2 * index}"])
    assert_close(nets.campplus(t(g["campplus_fbank"])), g["style"])
    for index in (0, 1):
        out, _ = nets.s2mel.length_regulator(t(g[f"lr_in_{index}"]), t(g[f"lr_ylens_{index}"]))
        assert_close(out, g[f"lr_out_{index}"])
    assert_close(nets.codec.decode(t(g["codes_to_decode"])), g["S_infer"])
    cat = t(g["cat_condition"])
    assert_close(torch.cat([t(g["lr_out_0"]), t(g["lr_out_1"])], dim=1), g["cat_condition"])
    mel = nets.s2mel.cfm.inference(cat, torch.tensor([cat.shape[1]]), t(g["ref_mel"]), t(g["style"]), 25,
                                   cfg_rate=0.7, noise=t(g["cfm_noise"]))
    assert_close(mel, g["cfm_out"], CHAIN_TOL)
    assert_close(nets.bigvgan(t(g["bigvgan_in"])), g["bigvgan_out"], CHAIN_TOL)


@pytest.mark.parametrize("case", E2E_CASES)
def test_end_to_end_text_front_end_gives_the_recorded_tokens_and_language(golden_tiny_2_5, config, case):
    from indextts2.frontend.text_2_5 import TextFrontend25

    g = load_golden(golden_tiny_2_5, case)
    frontend = TextFrontend25(golden_tiny_2_5 / "multilingual_zh_ja_yue_char_del.tiktoken",
                              max_text_tokens=config["gpt"]["max_text_tokens"])  # text_normalization=False
    prepared = frontend.prepare(str(g["text"]), str(g["lang_str"]))
    assert prepared.segments == g["text_tokens"].tolist()
    assert prepared.language_id == int(g["langs"][0])


@pytest.mark.parametrize("case", E2E_CASES)
def test_synthesize_from_text_gives_the_official_codes_and_length(golden_tiny_2_5, e2e_pipelines, config, case):
    """The whole eager `synthesize` from the stored text and audio. Its flow-matching noise comes from
    its own generator (the official run's came from the global RNG after the GPT's draws), so the
    waveform is compared by length and codes only; the stage values are checked above."""
    from indextts2.frontend.text_2_5 import TextFrontend25

    g, pipeline = e2e_pipelines[case]
    pipeline.networks.text_frontend = TextFrontend25(
        golden_tiny_2_5 / "multilingual_zh_ja_yue_char_del.tiktoken", max_text_tokens=config["gpt"]["max_text_tokens"]
    )
    result = pipeline.synthesize(
        str(g["text"]), g["spk_wav_file_22k"], int(g["sr"]), language=str(g["lang_str"]),
        emo_weights=g["emo_vector"].tolist() or None, sampling=e2e_sampling(20), seed=0,
    )
    assert [codes.tolist() for codes in result.codes] == g["codes_to_decode"].tolist()
    assert result.waveform.shape[0] == g["final_pcm_int16"].shape[-1]
    assert np.isfinite(result.waveform).all()
