"""HTTP responses: audio (whole or streamed) and errors, in one shape everywhere."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from typing import Literal

from fastapi.responses import JSONResponse, Response, StreamingResponse

from orchestrator.errors import ResponseAborted, ServiceBugError, ServiceError
from orchestrator.reporting import Reporter, current_request
from orchestrator.schemas import ErrorBody, ErrorResponse
from orchestrator.service import AudioStream
from orchestrator.wav import pcm16, wav_bytes, wav_header

MEDIA_TYPES = {"wav": "audio/wav", "pcm": "audio/pcm"}

# The error responses every synthesis route can give, for the OpenAPI page.
ERROR_RESPONSES = {
    status: {"model": ErrorResponse, "description": description}
    for status, description in {
        400: "Unsupported response format.",
        404: "Unknown voice.",
        413: "An upload (or the whole request) is over its size limit.",
        422: "A field is missing, malformed or outside its limit (the body names the field and the limit).",
        502: "A Triton model failed on this request.",
        503: "Triton or a model is unavailable, overloaded or out of memory (Retry-After is set).",
        504: "A Triton model did not answer in time.",
    }.items()
}


def error_response(error: ServiceError, reporter: Reporter | None, retry_after_s: int) -> JSONResponse:
    """The one place a ServiceError becomes an HTTP answer and, where it is reported, a Sentry event (none
    without a reporter: the eager baseline answers with this and reports nothing)."""
    if error.report and reporter is not None:
        reporter.failure(error)
    context = current_request()
    body = ErrorResponse(error=ErrorBody(
        type=error.error_type, message=error.message, field=error.field, limit=error.limit, stage=error.stage,
        request_id=context.request_id if context else None,
    ))
    headers = {"Retry-After": str(error.retry_after_s or retry_after_s)} if error.http_status == 503 else None
    return JSONResponse(body.model_dump(), status_code=error.http_status, headers=headers)


def _failure_reported(error: Exception, reporter: Reporter) -> ServiceError:
    """A failure after the first bytes, as the one event it makes (a bug becomes a ServiceBugError)."""
    if not isinstance(error, ServiceError):
        bug = ServiceBugError(f"streaming failed: {type(error).__name__}", stage="stream")
        bug.__cause__ = error
        error = bug
    reporter.failure(error)
    return error


def _sse(event: dict) -> bytes:
    return f"data: {json.dumps(event, separators=(',', ':'))}\n\n".encode()


def sse_audio_response(stream: AudioStream, reporter: Reporter, container: Literal["wav", "pcm"]) -> Response:
    """OpenAI's speech streaming as server-sent events: `speech.audio.delta` events with base64 audio (the
    decoded bytes concatenate to the whole file, WAV header first), then `speech.audio.done` with usage.
    A failure after the response started is an `error` event (the shape of the JSON error body), reported
    once, and the stream ends without `speech.audio.done`."""
    async def events() -> AsyncIterator[bytes]:
        header = wav_header(stream.sample_rate) if container == "wav" else b""
        try:
            async for piece in stream:
                yield _sse({"type": "speech.audio.delta", "audio": base64.b64encode(header + pcm16(piece)).decode()})
                header = b""
        except Exception as error:  # noqa: BLE001 - the client is told in the stream, Sentry once
            failure = _failure_reported(error, reporter)
            context = current_request()
            yield _sse({"type": "error", "error": ErrorBody(
                type=failure.error_type, message=failure.message, stage=failure.stage,
                request_id=context.request_id if context else None).model_dump()})
            return
        usage = stream.usage
        yield _sse({"type": "speech.audio.done", "usage": {
            "input_tokens": usage.input_tokens, "output_tokens": usage.output_tokens,
            "total_tokens": usage.input_tokens + usage.output_tokens}})

    headers = {"X-Sample-Rate": str(stream.sample_rate), "Cache-Control": "no-cache"}
    return StreamingResponse(events(), media_type="text/event-stream", headers=headers)


async def audio_response(
    stream: AudioStream, reporter: Reporter, container: Literal["wav", "pcm"], streaming: bool
) -> Response:
    headers = {"X-Sample-Rate": str(stream.sample_rate)}
    if not streaming:
        waveform = await stream.collect()
        body = wav_bytes(waveform, stream.sample_rate) if container == "wav" else pcm16(waveform)
        headers["X-Audio-Seconds"] = f"{waveform.shape[0] / stream.sample_rate:.3f}"
        return Response(body, media_type=MEDIA_TYPES[container], headers=headers)

    async def chunks() -> AsyncIterator[bytes]:
        if container == "wav":
            yield wav_header(stream.sample_rate)
        try:
            async for piece in stream:
                yield pcm16(piece)
        except Exception as error:  # a bug mid-stream is still one event
            # The status line is gone: report once, then abort the transfer (no final chunk), so the client
            # sees it incomplete.
            raise ResponseAborted.after(_failure_reported(error, reporter)) from error

    return StreamingResponse(chunks(), media_type=MEDIA_TYPES[container], headers=headers)
