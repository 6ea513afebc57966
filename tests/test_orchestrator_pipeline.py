"""The orchestrator's in-process rules equal indextts2.pipeline.EagerPipeline's: emotion-vector mixing,
text segmentation; and its small machinery (LRU, cancel-on-failure) behaves."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import torch

from indextts2.checkpoint_dir import load_networks
from indextts2.pipeline import EagerPipeline, emotion_vector_of_request
from orchestrator.assets import ModelAssets
from orchestrator.metrics import ServiceMetrics
from orchestrator.pipeline import (
    ConditioningCache,
    EmotionConditioning,
    SpeakerConditioning,
    SynthesisOptions,
    SynthesisPipeline,
    gather_all,
)
from orchestrator.reporting import Reporter
from orchestrator.settings import Settings
from orchestrator.testing import speech_like_wav
from orchestrator.triton_client import TritonStages


@pytest.fixture(scope="module")
def eager(demo_checkpoint) -> EagerPipeline:
    return EagerPipeline(load_networks(demo_checkpoint))


@pytest.fixture(scope="module")
def pipeline(demo_checkpoint) -> SynthesisPipeline:
    settings = Settings(checkpoint_dir=demo_checkpoint.model_dir)
    metrics = ServiceMetrics()
    triton = TritonStages("127.0.0.1:1", metrics, 1.0, 1.0)  # never called here
    return SynthesisPipeline(settings, ModelAssets.load(demo_checkpoint.model_dir), triton,
                             Reporter(settings, metrics, "cpu"), metrics)


def _samples(seconds: float, seed: int) -> tuple[np.ndarray, int]:
    import io

    import soundfile

    samples, rate = soundfile.read(io.BytesIO(speech_like_wav(seconds, seed=seed)), dtype="float32")
    return samples, rate


@pytest.mark.parametrize("with_emotion_audio, emo_alpha, weights", [
    (False, 1.0, None),
    (True, 0.6, None),
    (True, 1.0, None),
    (False, 1.0, [0, 0, 0, 0, 0, 0, 0.6, 0]),
    (True, 0.5, [0.2, 0, 0.1, 0, 0, 0.3, 0, 0]),  # the vector overrides the audio, alpha scales it
])
def test_emotion_vector_is_mixed_as_the_eager_pipeline_does(eager, pipeline, with_emotion_audio, emo_alpha, weights):
    gpt = eager.networks.gpt
    speaker_samples, rate = _samples(3.0, seed=1)
    speaker = eager.speaker_prompt(speaker_samples, rate)
    own_features = eager.emotion_features(speaker_samples, rate)  # the speaker's audio read as an emotion reference
    emotion_features = eager.emotion_features(*_samples(2.0, seed=2)) if with_emotion_audio else None
    expected = emotion_vector_of_request(eager, speaker, speaker_samples, rate,
                                         *(_samples(2.0, seed=2) if with_emotion_audio else (None, None)),
                                         emo_alpha, weights)

    def emovec(features: torch.Tensor) -> np.ndarray:  # what the emotion_conditioner model returns
        with torch.inference_mode():
            return gpt.get_emovec(features, torch.tensor([features.shape[1]]))[0].numpy()

    conditioning = SpeakerConditioning(
        speaker_latents=speaker.speaker_latents[0].numpy(), base_emotion_vector=emovec(speaker.semantic_features),
        own_emotion_vector=emovec(own_features), prompt_condition=speaker.prompt_condition[0].numpy(),
        ref_mel=speaker.ref_mel[0].numpy(), style=speaker.style[0].numpy(), duration_s=3.0, used_duration_s=3.0,
    )
    emotion = EmotionConditioning(emovec(emotion_features), 2.0) if emotion_features is not None else None
    options = SynthesisOptions(emo_alpha=emo_alpha, emotion_weights=tuple(weights) if weights else None)
    mixed = pipeline.emotion_vector(conditioning, emotion, options)
    np.testing.assert_allclose(mixed, expected[0].numpy(), atol=1e-6)


def test_without_emotion_audio_the_speaker_audio_read_at_16_khz_is_the_emotion_reference(eager):
    """infer_v2 reads the speaker's file again, straight to 16 kHz, as the emotion reference, with alpha
    forced to 1: not the speaker prompt's 22.05 -> 16 kHz features, which differ for a 24 kHz upload."""
    gpt = eager.networks.gpt
    samples, rate = _samples(3.0, seed=1)
    speaker = eager.speaker_prompt(samples, rate)
    with torch.inference_mode():
        own = gpt.get_emovec(*_with_length(eager.emotion_features(samples, rate)))
        prompt = gpt.get_emovec(*_with_length(speaker.semantic_features))
    vector = emotion_vector_of_request(eager, speaker, samples, rate, None, None, 0.5, None)
    np.testing.assert_allclose(vector.numpy(), own.numpy(), atol=1e-6)
    assert np.abs(own - prompt).max() > 1e-4


def _with_length(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return features, torch.tensor([features.shape[1]])


def test_text_is_segmented_as_the_eager_pipeline_does(eager, pipeline):
    text = "The quick brown fox jumps over the lazy dog. " * 12 + "今天天气很好，我们一起去公园散步吧。"
    assert asyncio.run(pipeline.segment_text(text)) == eager.networks.text_frontend.split_segments(text, 120)


def test_conditioning_cache_evicts_the_least_recently_used():
    cache = ConditioningCache(capacity=2)
    cache.put(("speaker", "a"), 1)
    cache.put(("speaker", "b"), 2)
    assert cache.get(("speaker", "a")) == 1  # a is now the most recent
    cache.put(("emotion", "c"), 3)
    assert cache.get(("speaker", "b")) is None and cache.get(("speaker", "a")) == 1 and len(cache) == 2


def test_gather_all_cancels_the_others_on_the_first_failure():
    cancelled = []

    async def slow() -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    async def failing() -> None:
        await asyncio.sleep(0.01)
        raise ValueError("stage failed")

    async def run() -> None:
        await gather_all(slow(), failing())

    with pytest.raises(ValueError, match="stage failed"):
        asyncio.run(run())
    assert cancelled == [True]
