"""Per-stage parity against the official implementation: max |ours - official| on the golden data.

    .venv/bin/python benchmarks/golden_parity.py [--golden ../shared/golden/indextts2-tiny] [--markdown F]

The tests assert these within GOLDEN.md's tolerances; this prints the measured numbers as a table.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from indextts2.checkpoint_dir import CheckpointPaths, load_networks
from indextts2.emotion import emotion_vector_from_weights
from indextts2.frontend.audio import (
    campplus_features,
    kaldi_fbank,
    mel_spectrogram,
    s2mel_mel_args,
    seamless_m4t_features,
)
from indextts2.networks.gpt import SamplingConfig

REPO = Path(__file__).resolve().parent.parent


def _npz(golden: Path, name: str) -> dict[str, torch.Tensor]:
    with np.load(golden / f"{name}.npz") as data:
        return {key: torch.from_numpy(data[key]) for key in data.files}


def _err(ours, official) -> float:
    ours = ours.detach().float() if torch.is_tensor(ours) else torch.as_tensor(ours).float()
    return float((ours - official.float()).abs().max())


@torch.no_grad()
def measure(golden: Path) -> list[tuple[str, str, float, float]]:
    """(stage, array, max abs error, tolerance) rows."""
    nets = load_networks(
        CheckpointPaths.from_model_dir(golden),
        with_semantic_encoder=False, with_text_frontend=False, check_latent_width=False,
    )
    rows: list[tuple[str, str, float, float]] = []

    g = _npz(golden, "w2vbert_features")
    features, _ = seamless_m4t_features(g["wav_16k"].numpy()[0], padding_value=1.0)
    rows.append(("audio features", "input_features_w2vbert_cfg", _err(torch.from_numpy(features),
                                                                       g["input_features_w2vbert_cfg"][0]), 1e-4))
    g = _npz(golden, "ref_mel")
    mel = mel_spectrogram(g["wav_22k"].numpy()[0], **s2mel_mel_args(nets.config["s2mel"]))
    rows.append(("audio features", "ref_mel", _err(torch.from_numpy(mel), g["mel"][0]), 1e-4))

    g = _npz(golden, "campplus")
    rows.append(("audio features", "kaldi fbank", _err(torch.from_numpy(kaldi_fbank(g["wav_16k"].numpy()[0])),
                                                       g["fbank"]), 1e-4))
    style = nets.campplus(torch.from_numpy(campplus_features(g["wav_16k"].numpy()[0]))[None])
    rows.append(("campplus", "style", _err(style, g["style"]), 1e-4))

    g = _npz(golden, "semantic_codec")
    codes, quantized = nets.semantic_codec.quantize(g["x"])
    rows.append(("semantic_codec", "indices (mismatches)", float((codes != g["indices"]).sum()), 0.0))
    rows.append(("semantic_codec", "quantized", _err(quantized, g["quantized"]), 1e-4))
    rows.append(("semantic_codec", "vq2emb_of_codes", _err(nets.semantic_codec.vq2emb(g["codes"]),
                                                           g["vq2emb_of_codes"].transpose(1, 2)), 1e-4))

    g = _npz(golden, "gpt_conditioning")
    gpt = nets.gpt
    spk_len = torch.tensor([g["spk_cond_emb"].shape[1]])
    emo_len = torch.tensor([g["emo_cond_emb"].shape[1]])
    rows.append(("speaker_conditioner", "spk_cond_latent",
                 _err(gpt.get_conditioning(g["spk_cond_emb"], spk_len), g["spk_cond_latent"]), 1e-4))
    rows.append(("emotion_conditioner", "emovec_from_emo",
                 _err(gpt.get_emovec(g["emo_cond_emb"], emo_len), g["emovec_from_emo"]), 1e-4))
    rows.append(("emotion_conditioner", "emovec_alpha0p5",
                 _err(gpt.merge_emovec(g["spk_cond_emb"], g["emo_cond_emb"], spk_len, emo_len, 0.5),
                      g["emovec_alpha0p5"]), 1e-4))

    g = _npz(golden, "gpt_forward")
    latent = gpt(g["speech_conditioning_latent"], g["text_tokens"], g["text_lengths"], g["mel_codes"],
                 g["mel_codes_lengths"], g["emo_vec"])
    rows.append(("gpt (teacher forced)", "latent", _err(latent, g["latent"]), 1e-4))

    g = _npz(golden, "gpt_generate")
    for penalty, suffix in ((1.0, "rep1"), (10.0, "rep10")):
        out = gpt.generate(
            g["speech_conditioning_latent"], g["emo_vec"], g["text_tokens"][0],
            SamplingConfig(do_sample=False, repetition_penalty=penalty, max_codes=int(g["max_generate_length"])),
            official_positions=True,
        )
        rows.append(("gpt (decoding)", f"codes_{suffix} (mismatches)",
                     float((out.codes != g[f"codes_{suffix}"][0]).sum()), 0.0))
        rows.append(("gpt (decoding)", f"step_logits_{suffix}", _err(out.step_logits, g[f"step_logits_{suffix}"][0]),
                     1e-4))

    g = _npz(golden, "emo_vector_mix")
    mixed, _ = emotion_vector_from_weights(nets.emotion_bank, g["emo_vector"], g["style"], g["base_emovec"])
    rows.append(("emotion vector mix", "mixed_emovec", _err(mixed, g["mixed_emovec"]), 1e-4))

    g = _npz(golden, "s2mel_length_regulator")
    y, _ = nets.s2mel.length_regulator(g["x_batch2"], g["ylens_batch2"])
    rows.append(("length_regulator", "y_batch2", _err(y, g["y_batch2"]), 1e-4))
    g = _npz(golden, "s2mel_dit")
    y = nets.s2mel.cfm.estimator(g["x_b2"], g["prompt_x_b2"], g["x_lens_b2"], g["t_b2"], g["style_b2"], g["cond_b2"])
    rows.append(("s2mel_estimator (DiT)", "y_b2", _err(y, g["y_b2"]), 1e-4))
    g = _npz(golden, "s2mel_cfm")
    out = nets.s2mel.cfm.inference(g["mu"], g["x_lens"], g["prompt"], g["style"], int(g["n_timesteps"]),
                                   cfg_rate=float(g["inference_cfg_rate"]), noise=g["noise"])
    rows.append(("s2mel CFM (3 steps, CFG)", "out", _err(out, g["out"]), 1e-3))

    g = _npz(golden, "bigvgan")
    rows.append(("vocoder (BigVGAN)", "wav", _err(nets.bigvgan(g["mel"]), g["wav"]), 1e-3))
    return rows


def markdown(rows: list[tuple[str, str, float, float]]) -> str:
    lines = ["| stage | golden array | max abs error | tolerance |", "|---|---|---|---|"]
    lines += [f"| {stage} | `{array}` | {error:.2e} | {tol:.0e} |" for stage, array, error, tol in rows]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--golden", type=Path, default=REPO.parent / "shared" / "golden" / "indextts2-tiny")
    parser.add_argument("--markdown", type=Path, help="also write the table here")
    args = parser.parse_args()
    table = markdown(measure(args.golden))
    print(table, end="")
    if args.markdown:
        args.markdown.write_text(table)


if __name__ == "__main__":
    main()
