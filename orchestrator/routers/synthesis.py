"""POST /v1/tts (full control, multipart) and POST /v1/audio/speech (the OpenAI shape, JSON)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form
from fastapi.responses import Response

from orchestrator.responses import ERROR_RESPONSES, audio_response, sse_audio_response
from orchestrator.routers.deps import ReporterDep, ServiceDep
from orchestrator.schemas import SpeechRequest, TtsForm

router = APIRouter(tags=["synthesis"])

WAV_RESPONSE = {
    200: {
        "content": {"audio/wav": {}},
        "description": "22.05 kHz 16-bit mono WAV. Headers: X-Request-ID, X-Sample-Rate, X-Audio-Seconds (not "
                       "when streamed), X-TTS-Warnings (comma-separated, e.g. short_reference_audio).",
    },
}
SPEECH_RESPONSE = {
    200: {
        "content": {"audio/wav": {}, "audio/pcm": {}, "text/event-stream": {}},
        "description": "Streamed audio at 22.05 kHz, 16-bit mono: a WAV with a streaming header, or raw "
                       "little-endian PCM; with stream_format=sse, server-sent events carrying it in base64.",
    },
}


@router.post("/v1/tts", response_class=Response, responses={**WAV_RESPONSE, **ERROR_RESPONSES},
             summary="Synthesise speech from text and a reference voice")
async def tts(form: Annotated[TtsForm, Form(media_type="multipart/form-data")], service: ServiceDep,
              reporter: ReporterDep) -> Response:
    stream = await service.tts(form, route="/v1/tts")
    return await audio_response(stream, reporter, "wav", streaming=form.stream)


@router.post("/v1/audio/speech", response_class=Response, responses={**SPEECH_RESPONSE, **ERROR_RESPONSES},
             summary="OpenAI-compatible speech endpoint (registered voices)")
async def speech(request: SpeechRequest, service: ServiceDep, reporter: ReporterDep) -> Response:
    stream = await service.speech(request, route="/v1/audio/speech")
    if request.stream_format == "sse":
        return sse_audio_response(stream, reporter, request.response_format)  # type: ignore[arg-type]
    return await audio_response(stream, reporter, request.response_format, streaming=True)  # type: ignore[arg-type]
