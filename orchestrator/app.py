"""`create_app(settings)`: the FastAPI application, its error handling and its start-up.

Errors: every failure is a typed ServiceError (errors.py). One handler turns it into the HTTP status
and JSON body, and reports it to Sentry when it is reported at all; FastAPI's own validation errors and
HTTP errors are converted into the same shape first.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException

from orchestrator import __version__
from orchestrator.admission import Admission, Refusal
from orchestrator.assets import ModelAssets
from orchestrator.errors import (
    InvalidDurationRatioError,
    InvalidRequestError,
    ResponseAborted,
    ServiceBugError,
    ServiceError,
    ServiceOverloadedError,
)
from orchestrator.metrics import ServiceMetrics
from orchestrator.middleware import RequestMiddleware
from orchestrator.reporting import REPORTED, Reporter, RequestContext, current_request, init_sentry
from orchestrator.responses import error_response
from orchestrator.routers import health, synthesis, voices
from orchestrator.schemas import ErrorBody, ErrorResponse
from orchestrator.service import TtsService
from orchestrator.settings import Settings
from orchestrator.triton_client import TritonStages, pipeline_models

logger = logging.getLogger("orchestrator")

DESCRIPTION = """
IndexTTS-2 text-to-speech served by NVIDIA Triton. Audio comes back as 22.05 kHz 16-bit mono WAV
(or raw PCM on the OpenAI route). Every error is JSON: `{"error": {"type", "message", "field", "limit",
"stage", "request_id"}}`.
"""
# pydantic's limit keys -> how the error body states the limit
_LIMIT_WORDS = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<", "min_length": "min length", "max_length": "max length",
                "pattern": "pattern"}
_DURATION_FIELDS = ("duration_ratio", "speed")
# The routes whose requests synthesise speech: counted and admitted by orchestrator.admission.
ADMITTED_PATHS = frozenset({"/v1/tts", "/v1/audio/speech"})


def release_name(model_versions: dict[str, str], indextts_version: str = "2.0") -> str:
    """indextts2-orchestrator@<version>+indextts<2.0|2.5>.models.<v>.<v>... (the IndexTTS version loaded,
    then the pipeline's models in order), or ...models.unknown when Triton did not answer at start-up."""
    versions = [model_versions.get(name) for name in pipeline_models(indextts_version)]
    suffix = ".".join(versions) if all(versions) else "unknown"  # type: ignore[arg-type]
    return f"indextts2-orchestrator@{__version__}+indextts{indextts_version}.models.{suffix}"


def validation_error(exc: RequestValidationError) -> InvalidRequestError:
    """FastAPI's validation error -> our typed error naming the (first) field and its limit, without
    echoing the value sent."""
    def field_of(error: dict[str, Any]) -> str | None:
        location = [str(part) for part in error.get("loc", ()) if part not in ("body", "query", "path", "header")]
        return location[0] if location else None

    errors = list(exc.errors()) or [{"loc": (), "msg": "invalid request"}]
    # A refused duration_ratio is reported, so it wins over other faults of the same request.
    first = next((error for error in errors if field_of(error) in _DURATION_FIELDS), errors[0])
    field = field_of(first)
    message = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
    context = first.get("ctx") or {}
    limit = ", ".join(f"{_LIMIT_WORDS[key]} {value}" for key, value in context.items() if key in _LIMIT_WORDS)
    if first.get("type") == "missing":
        message = "is required"
    text = f"{field}: {message}" if field else message
    if field in _DURATION_FIELDS:
        request = current_request()
        if request is not None:  # what the service made of the value, never the raw value sent
            request.meta[field] = _refused_number(first.get("input"))
        return InvalidDurationRatioError(text, field=field, limit=limit or None, stage="validation")
    return InvalidRequestError(text, field=field, limit=limit or None)


def _refused_number(value: Any) -> float | str:
    """A refused numeric field as event metadata: the number it parses to (rounded), else "not_a_number"."""
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return "not_a_number"
    return round(number, 4) if math.isfinite(number) else "not_finite"


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = (settings or Settings.from_env()).validate()
    assets = ModelAssets.load(settings.checkpoint_dir)
    metrics = ServiceMetrics()
    triton = TritonStages(settings.triton_grpc_url, metrics, settings.triton_timeout_s, settings.gpt_stream_timeout_s,
                          settings.triton_model_prefix)
    model_versions, served_on = triton.probe()
    release = settings.sentry_release or release_name(model_versions, assets.version)
    sentry_enabled = init_sentry(settings, release)
    reporter = Reporter(settings, metrics, settings.device or served_on or "unknown")
    admission = Admission(settings.max_in_flight_requests)
    service = TtsService(settings, assets, triton, reporter, metrics, admission)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        logger.info("orchestrator %s: triton %s, sentry %s", release, settings.triton_grpc_url,
                    "on" if sentry_enabled else "off")
        yield
        await triton.close()

    app = FastAPI(title="IndexTTS-2 on Triton", version=__version__, description=DESCRIPTION, lifespan=lifespan)
    app.state.settings = settings
    app.state.service = service
    app.state.metrics = metrics
    app.state.release = release
    def unexpected_error(error: Exception) -> JSONResponse:
        """A bug outside the pipeline's own wrapping: a JSON 500 with the request id, and one event (none
        when the failure was reported where it happened, as a stream's is)."""
        bug = ServiceBugError(f"unexpected {type(error).__name__} in the orchestrator", stage="orchestrator")
        bug.__cause__ = error
        bug.report = not (isinstance(error, ResponseAborted) or getattr(error, REPORTED, False))
        setattr(error, REPORTED, True)  # the ASGI integration must not capture it a second time
        return error_response(bug, reporter, settings.overload_retry_after_s)

    app.state.admission = admission

    def request_start(context: RequestContext) -> JSONResponse | None:
        """The request's time budget, and admission for the synthesis routes, before the body is read."""
        scope = context.scope
        budget_s = settings.request_timeout_s
        asked = Headers(scope=scope).get("x-request-timeout")
        if asked is not None:
            try:
                budget_s = min(budget_s, float(asked))
                if not budget_s > 0:
                    raise ValueError
            except ValueError:
                return error_response(InvalidRequestError(
                    "X-Request-Timeout must be a positive number of seconds", field="X-Request-Timeout",
                    limit=f"> 0, at most {settings.request_timeout_s:g} (REQUEST_TIMEOUT_S)"), reporter, 0)
        context.deadline = time.monotonic() + budget_s
        if scope["method"] != "POST" or scope["path"] not in ADMITTED_PATHS:
            return None
        decision = admission.admit(budget_s)
        if isinstance(decision, Refusal):
            metrics.refused.labels(decision.reason).inc()
            return error_response(ServiceOverloadedError(decision.message, retry_after_s=decision.retry_after_s),
                                  reporter, decision.retry_after_s)
        context.admission_ticket = decision
        metrics.requests_in_flight.set(admission.in_flight)
        return None

    def request_end(context: RequestContext, status: int) -> None:
        if context.admission_ticket is not None:
            admission.release(context.admission_ticket, succeeded=status == 200 and not context.client_gone)
            metrics.requests_in_flight.set(admission.in_flight)
            metrics.expected_finish_seconds.set(admission.expected_finish_s() or 0.0)
        reporter.end_request(context)

    app.add_middleware(RequestMiddleware, metrics=metrics, max_request_bytes=settings.max_request_bytes,
                       on_request_start=request_start, on_unexpected_error=unexpected_error,
                       on_request_end=request_end)

    async def handle_service_error(request: Request, exc: ServiceError) -> JSONResponse:
        return error_response(exc, reporter, settings.overload_retry_after_s)

    async def handle_validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(validation_error(exc), reporter, settings.overload_retry_after_s)

    async def handle_http_error(request: Request, exc: HTTPException) -> JSONResponse:
        kinds = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}
        body = ErrorResponse(error=ErrorBody(
            type=kinds.get(exc.status_code, "http_error"), message=str(exc.detail),
            request_id=(current_request().request_id if current_request() else None),
        ))
        return JSONResponse(body.model_dump(), status_code=exc.status_code, headers=exc.headers)

    app.add_exception_handler(ServiceError, handle_service_error)
    app.add_exception_handler(RequestValidationError, handle_validation_error)
    app.add_exception_handler(HTTPException, handle_http_error)
    app.include_router(synthesis.router)
    app.include_router(voices.router)
    app.include_router(health.router)
    return app
