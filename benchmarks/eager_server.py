"""The eager baseline behind the orchestrator's HTTP API: the same networks and weights, run the way the
official `infer_v2` (or, for IndexTTS-2.5, `infer_v2_5`) runs them.

    .venv/bin/python -m benchmarks.eager_server --checkpoint build/bench/demo/checkpoint --port 8100

The checkpoint directory's version (`indextts2.checkpoint_dir.detect_version`) picks the pipeline:
IndexTTS-2.0 runs `indextts2.pipeline.EagerPipeline` (as `infer_v2`), IndexTTS-2.5 runs
`indextts2.pipeline_2_5.EagerPipeline25` (as `infer_v2_5`). Everything below holds for both, except
where a version is named.

- One request at a time: a lock around the whole synthesis (the official `IndexTTS2` object keeps its
  prompt caches as instance state, and its web UI queues requests and runs them one by one).
- Every stage in sequence, in PyTorch, in this process: features, w2v-BERT, codec, CAMPPlus,
  conditioners, then per text segment the GPT (plain KV-cached loop, batch 1, no cross-request
  batching), for IndexTTS-2.0 the official second teacher-forced GPT pass for the s2mel latents (2.5
  has no GPT latent: its codes go through the EnhancedCodec instead), s2mel (flow matching with CFG)
  and BigVGAN.
- No conditioning cache across requests (the official one keeps only the last prompt; the benchmark
  sends a new voice with every request anyway).
- No admission control: requests queue for the lock however many there are. A request whose client has
  gone (it gave up waiting) by the time its turn comes is dropped rather than run, as a web UI's queue
  drops a closed page's job; one that is running when its client leaves stops at the end of its segment.
  `/healthz` says how many requests are in the service (`in_flight`), so a benchmark can wait for a
  backlog to drain before its next run, and which version it runs (`indextts_version`: "2.0" or "2.5").

`POST /v1/tts` takes the multipart form of the orchestrator's route (`orchestrator.schemas.TtsForm`, same
fields, limits and defaults) and answers the same way: a 22.05 kHz 16-bit mono WAV, or with
`stream=true` a streaming WAV header then PCM per finished segment (infer_v2's `stream_return`), with the
same `{"error": {...}}` bodies for refused requests: the service's own checks and errors
(`orchestrator.service.synthesis_options`, `orchestrator.pipeline.check_text_length` and
`decode_reference_audio`, `orchestrator.app.validation_error`), so both refuse the same requests alike.
Registered voices (`voice`, `emotion_voice`) are not part of the baseline: 422. `language`: IndexTTS-2.5
speaks the text in it ('auto' or none: detected as the orchestrator does); an IndexTTS-2.0 checkpoint
takes only 'auto' or none.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Annotated

import numpy as np
import torch
import uvicorn
from fastapi import FastAPI, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse

from indextts2 import defaults
from indextts2.checkpoint_dir import VERSION_2_5, CheckpointPaths, load_any_networks
from indextts2.defaults import OUTPUT_SAMPLE_RATE
from indextts2.frontend.text import TextError
from indextts2.frontend.text_2_5 import TextError25
from indextts2.networks.gpt import SamplingConfig
from indextts2.pipeline import OFFICIAL_SAMPLING, EagerPipeline
from indextts2.pipeline_2_5 import EagerPipeline25
from indextts2.rules import segment_silence
from orchestrator.app import validation_error
from orchestrator.errors import InvalidRequestError, ServiceError
from orchestrator.pipeline import (
    check_text_length,
    decode_reference_audio,
    nothing_to_speak,
    refuse_language_for_2_0,
)
from orchestrator.responses import error_response
from orchestrator.schemas import TtsForm
from orchestrator.service import read_upload, synthesis_options
from orchestrator.settings import Settings
from orchestrator.wav import pcm16, wav_bytes, wav_header


def _error(error: ServiceError) -> JSONResponse:
    """The service's answer to the service's error (no Sentry here: the baseline reports nothing)."""
    return error_response(error, None, retry_after_s=1)


class EagerService:
    def __init__(self, checkpoint_dir: Path, official_second_pass: bool = True, device: str = "cpu",
                 settings: Settings | None = None) -> None:
        paths = CheckpointPaths.from_model_dir(checkpoint_dir)
        self.version = paths.version
        networks = load_any_networks(paths)
        if self.is_2_5:
            codec = networks.codec
            self.pipeline: EagerPipeline | EagerPipeline25 = EagerPipeline25(networks, device)
        else:
            codec = networks.semantic_codec
            self.pipeline = EagerPipeline(networks, device)
        for network in (networks.semantic_encoder, codec, networks.campplus, networks.gpt, networks.s2mel,
                        networks.bigvgan):
            network.to(device)
        self.official_second_pass = official_second_pass
        # The orchestrator's limits, so both services refuse the same requests.
        self.settings = settings or Settings()
        self.max_codes_limit = int(networks.config["gpt"]["max_mel_tokens"]) - 1
        self.max_text_tokens = min(self.settings.max_text_tokens_per_segment,
                                   int(networks.config["gpt"]["max_text_tokens"]))
        self.lock = asyncio.Lock()  # one request at a time, from its first stage to its last byte
        self.in_flight = 0  # requests in the service: running, or waiting for the lock

    @property
    def is_2_5(self) -> bool:
        return self.version == VERSION_2_5

    async def reference(self, upload: UploadFile | None, field: str) -> tuple[np.ndarray, int] | None:
        """The upload decoded with the service's own checks and errors."""
        if upload is None:
            return None
        limit = self.settings.max_upload_bytes
        audio = decode_reference_audio(field, await read_upload(upload, field, limit), limit)
        return audio.samples, audio.sample_rate

    def options(self, form: TtsForm) -> dict:
        """The form -> the pipeline's `synthesize_segments` keyword arguments, validated by the service's own
        checks (`synthesis_options`, `check_text_length`), so both refuse the same requests the same way."""
        if form.voice or form.emotion_voice:
            field = "voice" if form.voice else "emotion_voice"
            raise InvalidRequestError("the eager baseline has no registered voices", field=field)
        if form.speaker_audio is None:
            raise InvalidRequestError("speaker_audio is required", field="speaker_audio")
        check_text_length(form.text, self.settings.max_text_chars)
        checked = synthesis_options(form, self.max_codes_limit, min(defaults.MAX_CODES, self.max_codes_limit))
        if not self.is_2_5:
            refuse_language_for_2_0(form.language)
        sampling = SamplingConfig(**{
            **OFFICIAL_SAMPLING.__dict__, "do_sample": checked.do_sample, "temperature": checked.temperature,
            "top_k": checked.top_k, "top_p": checked.top_p, "repetition_penalty": checked.repetition_penalty,
            "max_codes": checked.max_codes, "min_codes": checked.min_codes,
        })
        keywords = {
            "emo_alpha": checked.emo_alpha, "duration_ratio": checked.duration_ratio, "sampling": sampling,
            "emo_weights": list(checked.emotion_weights) if checked.emotion_weights is not None else None,
            "diffusion_steps": checked.diffusion_steps, "max_text_tokens_per_segment": self.max_text_tokens,
            "seed": checked.seed, "cfg_rate": checked.cfg_rate,
        }
        if self.is_2_5:
            keywords["language"] = form.language or "auto"
        else:
            keywords["official_second_pass"] = self.official_second_pass
        return keywords

    async def pieces(self, form: TtsForm, client_gone: Callable[[], Awaitable[bool]] | None = None,
                     ) -> AsyncIterator[np.ndarray]:
        """Waveform pieces in order (segments, 200 ms of silence between them), under the lock. A request
        whose client is gone when it gets the lock ends there, without running."""
        self.in_flight += 1
        try:
            async for piece in self._pieces(form, client_gone):
                yield piece
        finally:
            self.in_flight -= 1

    async def _pieces(self, form: TtsForm, client_gone: Callable[[], Awaitable[bool]] | None,
                      ) -> AsyncIterator[np.ndarray]:
        options = self.options(form)
        speaker = await self.reference(form.speaker_audio, "speaker_audio")
        emotion = await self.reference(form.emotion_audio, "emotion_audio")
        async with self.lock:
            if client_gone is not None and await client_gone():
                return
            emotion_samples, emotion_sample_rate = emotion or (None, None)
            segments = self.pipeline.synthesize_segments(
                form.text, *speaker, emotion_samples=emotion_samples, emotion_sample_rate=emotion_sample_rate,
                **options,
            )
            spoken = False
            while True:
                try:
                    # The networks run off the event loop, so /healthz answers while a request runs.
                    piece = await asyncio.to_thread(next, segments, None)
                except (TextError, TextError25):
                    raise nothing_to_speak() from None
                if piece is None:
                    return
                waveform = piece[0]
                if waveform.size == 0:
                    continue
                if spoken:
                    yield segment_silence()
                spoken = True
                yield waveform


def create_eager_app(service: EagerService) -> FastAPI:
    app = FastAPI(title="IndexTTS-2 eager baseline", description=__doc__.split("\n\n")[0])
    app.state.service = service

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _error(validation_error(exc))  # the service's reading of the form's faults

    @app.exception_handler(ServiceError)
    async def refused(request: Request, exc: ServiceError) -> JSONResponse:
        return _error(exc)

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"status": "ok", "in_flight": service.in_flight, "indextts_version": service.version}

    @app.post("/v1/tts", response_class=Response)
    async def tts(request: Request, form: Annotated[TtsForm, Form(media_type="multipart/form-data")]) -> Response:
        headers = {"X-Sample-Rate": str(OUTPUT_SAMPLE_RATE)}
        pieces = service.pieces(form, request.is_disconnected)
        # Up to the first piece before answering, so that a refused request still gets its status code.
        first = await anext(pieces, None)
        if not form.stream:
            collected = [piece async for piece in pieces]
            waveform = np.concatenate([first, *collected]) if first is not None else np.zeros(0, np.float32)
            headers["X-Audio-Seconds"] = f"{waveform.shape[0] / OUTPUT_SAMPLE_RATE:.3f}"
            return Response(wav_bytes(waveform, OUTPUT_SAMPLE_RATE), media_type="audio/wav", headers=headers)

        async def chunks() -> AsyncIterator[bytes]:
            yield wav_header(OUTPUT_SAMPLE_RATE)
            try:
                if first is not None:
                    yield pcm16(first)
                async for piece in pieces:
                    yield pcm16(piece)
            finally:
                await pieces.aclose()

        return StreamingResponse(chunks(), media_type="audio/wav", headers=headers)

    return app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.eager_server", description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, required=True,
                        help="an IndexTTS-2.0 or 2.5 checkpoint directory (the version is read from it)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8100)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--no-second-pass", action="store_true",
                        help="IndexTTS-2.0: take the latents from the decoding pass instead of the official "
                             "second GPT pass (2.5 has no GPT latent)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    service = EagerService(args.checkpoint, official_second_pass=not args.no_second_pass, device=args.device)
    uvicorn.run(create_eager_app(service), host=args.host, port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    sys.exit(main())
