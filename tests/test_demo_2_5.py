"""The demo-2.5 preset: a random IndexTTS-2.5 checkpoint in the official layout, loaded strictly and run
end to end by the eager 2.5 pipeline and the decoder engine."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from indextts2.checkpoint_dir import VERSION_2_5, detect_version, load_any_networks
from indextts2.checkpoint_dir_2_5 import IndexTTS25Networks
from indextts2.engine import DecoderEngine, DecodeRequest, SamplingConfig
from indextts2.frontend.text_2_5 import SERVED_LANGUAGES
from indextts2.pipeline_2_5 import EagerPipeline25, target_mel_frames_2_5
from indextts2.presets_2_5 import write_demo_checkpoint_2_5

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def demo_2_5(tmp_path_factory):
    return write_demo_checkpoint_2_5(tmp_path_factory.mktemp("demo_2_5"))


@pytest.fixture(scope="module")
def networks(demo_2_5) -> IndexTTS25Networks:
    return load_any_networks(demo_2_5, text_normalization=False)


def speaker_audio(seconds: float = 2.0, rate: int = 22050) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.1 * np.sin(2 * np.pi * 220 * t) + 0.01 * np.random.default_rng(0).standard_normal(t.size)).astype(
        np.float32
    )


SAMPLING = SamplingConfig(do_sample=True, top_k=30, top_p=0.8, temperature=0.8, repetition_penalty=10.0,
                          max_codes=12, min_codes=12)


def test_demo_2_5_is_a_2_5_directory_that_loads_strictly(demo_2_5, networks):
    assert demo_2_5.version == VERSION_2_5 == detect_version(demo_2_5.model_dir)
    assert isinstance(networks, IndexTTS25Networks)
    assert networks.s2mel.gpt_layer is None
    assert networks.text_frontend.n_vocab <= networks.gpt.text_embedding.num_embeddings
    assert (demo_2_5.model_dir / "codec.pth").is_file() and not (demo_2_5.model_dir / "bpe.model").exists()


def test_the_same_seed_writes_the_same_files(demo_2_5, tmp_path):
    again = write_demo_checkpoint_2_5(tmp_path / "again")
    def tensors(value, prefix=""):
        if torch.is_tensor(value):
            return {prefix: value}
        return {k: v for key, item in value.items() for k, v in tensors(item, f"{prefix}.{key}").items()}

    for name in ("gpt.pth", "codec.pth", "s2mel.pth", "feat2.pt"):
        first = tensors(torch.load(demo_2_5.model_dir / name, weights_only=True))
        second = tensors(torch.load(again.model_dir / name, weights_only=True))
        assert first.keys() == second.keys()
        assert all(torch.equal(first[key], second[key]) for key in first)


@pytest.mark.parametrize("language", ["auto", *SERVED_LANGUAGES])
def test_eager_pipeline_speaks_every_served_language(networks, language):
    text = {"zh": "你好世界。", "ja": "こんにちは、世界。", "es": "¡Hola mundo!", "ar": "مرحبا بالعالم."}.get(
        language, "Hello world."
    )
    pipeline = EagerPipeline25(networks)
    result = pipeline.synthesize(text, speaker_audio(), 22050, language=language, sampling=SAMPLING,
                                 diffusion_steps=3, seed=1)
    codes = SAMPLING.max_codes
    assert [c.numel() for c in result.codes] == [codes]
    assert result.mel_frames == [target_mel_frames_2_5(2 * codes)]
    assert result.waveform.shape == (result.mel_frames[0] * 256,)
    assert np.isfinite(result.waveform).all()


def test_duration_ratio_scales_the_mel_length_by_the_2_5_rule(networks):
    pipeline = EagerPipeline25(networks)
    result = pipeline.synthesize("Hello world.", speaker_audio(), 22050, language="en", sampling=SAMPLING,
                                 diffusion_steps=2, seed=1, duration_ratio=1.3)
    assert result.mel_frames == [int(2 * SAMPLING.max_codes * 1.72 * 1.3)]


def test_seeded_synthesis_is_reproducible(networks):
    pipeline = EagerPipeline25(networks)
    runs = [pipeline.synthesize("Hola.", speaker_audio(), 22050, language="es", sampling=SAMPLING,
                                diffusion_steps=2, seed=5).waveform for _ in range(2)]
    assert np.array_equal(runs[0], runs[1])


def test_engine_batches_2_5_sequences_of_different_languages_as_each_alone(networks):
    gpt = networks.gpt
    frontend = networks.text_frontend
    style = torch.randn(1, 192, generator=torch.Generator().manual_seed(0))
    speaker = gpt.speaker_conditioning(style).detach()[0]
    emotion = 0.1 * torch.randn(gpt.model_dim, generator=torch.Generator().manual_seed(1))
    requests = []
    for index, (text, language) in enumerate((("Hello there.", "en"), ("你好。", "zh"), ("Hola.", "es"))):
        prepared = frontend.prepare(text, language)
        requests.append(DecodeRequest(
            speaker_latents=speaker, emotion_vector=emotion, text_ids=torch.tensor(prepared.segments[0]),
            sampling=SamplingConfig(repetition_penalty=10.0, max_codes=10), official_positions=True,
            language=prepared.language_id, request_id=f"r{index}",
        ))
    engine = DecoderEngine(gpt, max_slots=3)
    handles = [engine.submit(request) for request in requests]
    engine.run_until_idle()
    for request, handle in zip(requests, handles, strict=True):
        alone = gpt.generate(request.speaker_latents, request.emotion_vector, request.text_ids, request.sampling,
                             official_positions=True, language=request.language)
        assert handle.result(timeout=0).codes.tolist() == alone.codes.tolist()
