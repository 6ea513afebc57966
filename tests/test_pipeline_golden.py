"""The tail of the official pipeline (after the GPT), chained through networks loaded from the golden
checkpoint directory: codes + GPT latents -> s2mel -> BigVGAN -> 16-bit PCM."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from golden import load_golden

from indextts2.checkpoint_dir import CheckpointPaths, load_networks
from indextts2.rules import target_mel_frames


@pytest.fixture(scope="module")
def golden_networks(golden_tiny):
    return load_networks(
        CheckpointPaths.from_model_dir(golden_tiny),
        with_semantic_encoder=False, with_text_frontend=False, check_latent_width=False,
    )


def test_s2mel_and_vocoder_chain_reproduces_the_official_waveform(golden_tiny, golden_networks):
    g = {k: torch.from_numpy(v) for k, v in load_golden(golden_tiny, "pipeline_s2mel_bigvgan").items()}
    nets = golden_networks
    with torch.no_grad():
        content = nets.semantic_codec.vq2emb(g["codes"]) + nets.s2mel.gpt_layer(g["gpt_latent_1280"])
        frames = target_mel_frames(int(g["code_lens"][0]))
        assert frames == int(g["target_lengths"][0])
        condition, _ = nets.s2mel.length_regulator(content, torch.tensor([frames]))
        full = torch.cat([g["prompt_condition"], condition], dim=1)
        mel = nets.s2mel.cfm.inference(
            full, torch.tensor([full.shape[1]]), g["ref_mel"], g["style"], int(g["n_timesteps"]),
            cfg_rate=float(g["inference_cfg_rate"]), noise=g["noise"],
        )
        waveform = nets.bigvgan(mel[:, :, g["ref_mel"].shape[-1]:])[:, 0]
    np.testing.assert_allclose(content.numpy(), g["S_infer"].numpy(), atol=1e-4)
    np.testing.assert_allclose(mel.numpy(), g["vc_full"].numpy(), atol=1e-3)
    np.testing.assert_allclose(waveform.numpy(), g["wav"].numpy(), atol=1e-3)
    pcm = torch.clamp(32767 * waveform, -32767.0, 32767.0)
    np.testing.assert_allclose(pcm.numpy(), g["wav_pcm"].numpy(), atol=0.1)
