"""Sentry for the service: set-up, the per-request context, one event per failure, and the scrubber.

What an event may carry: the stage, the model and its version, the error type, and request metadata
(text length, segment count, audio durations, duration_ratio, batch size, device). Never the text,
the audio, a request body or a credential header. Three lines keep it so:
1. nothing we send is built from them (messages name fields and limits, not values);
2. the SDK collects no user, cookies, bodies, query strings or credential headers (`data_collection`, the
   SDK's successor of `send_default_pii=False`), and no local variables in stack traces;
3. `scrub_event` (in before_send) removes request bodies, cookies, query strings and credential headers,
   and redacts the current request's text wherever it still appears, plus long runs of numbers (token
   ids in an upstream error message).

Sending happens on the SDK's background thread with a bounded queue: a slow or absent Sentry server
never delays a request. ERROR and WARNING become events; INFO stays in local logs and breadcrumbs.
"""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import sentry_sdk
from sentry_sdk.integrations.fastapi import FastApiIntegration
from sentry_sdk.integrations.logging import LoggingIntegration, ignore_logger
from sentry_sdk.integrations.starlette import StarletteIntegration

from orchestrator.errors import REPORTED, ModelOutOfMemoryError, ServiceError
from orchestrator.metrics import ServiceMetrics
from orchestrator.settings import Settings

logger = logging.getLogger("orchestrator")
# Breadcrumbs are added explicitly (with their category and data); their log line must not add a second.
breadcrumb_logger = logging.getLogger("orchestrator.breadcrumbs")
ignore_logger(breadcrumb_logger.name)

REDACTED = "[redacted]"
# The only request headers an event may carry: what the service needs to tell requests apart, nothing
# that identifies the client (no address, no user agent, no custom header).
EVENT_HEADERS = frozenset({"content-type", "content-length"})
# Eight or more numbers in a row, e.g. a list of text token ids quoted by a model's error message.
_NUMBER_RUN = re.compile(r"(?:-?\d+(?:\.\d+)?[,\s]+){7,}-?\d+(?:\.\d+)?")
_MIN_SECRET_CHARS = 4  # shorter strings ("a", "ok") would redact half of every event


@dataclass
class PendingWarning:
    message: str
    stage: str
    model: str | None
    level: str
    tags: dict[str, str]
    data: dict[str, Any]
    count: int = 1


@dataclass
class RequestContext:
    """What the service knows about the request being served; one per HTTP request (a ContextVar)."""

    request_id: str
    scope: dict[str, Any] = field(default_factory=dict, repr=False)  # the ASGI scope (route is set by routing)
    meta: dict[str, Any] = field(default_factory=dict)  # metadata allowed in events
    secrets: list[str] = field(default_factory=list)  # strings no event may hold (the text)
    warnings: list[str] = field(default_factory=list)  # warning kinds reported, for X-TTS-Warnings
    # The request's warnings, one per kind with how often it happened; sent when the request ends.
    pending_warnings: dict[str, PendingWarning] = field(default_factory=dict, repr=False)
    deadline: float | None = None  # time.monotonic() after which the answer is no use (None: no budget)
    admission_ticket: Any = field(default=None, repr=False)  # orchestrator.admission.Ticket, when admitted
    client_gone: bool = False  # the client disconnected before its answer was complete

    def time_left_s(self) -> float | None:
        return None if self.deadline is None else self.deadline - time.monotonic()

    @property
    def route(self) -> str:
        return getattr(self.scope.get("route"), "path", "unmatched")


CURRENT_REQUEST: ContextVar[RequestContext | None] = ContextVar("orchestrator_request", default=None)


def current_request() -> RequestContext | None:
    return CURRENT_REQUEST.get()


# --- scrubbing ------------------------------------------------------------------------------------


def _redact(value: Any, secrets: list[str]) -> Any:
    if isinstance(value, str):
        for secret in secrets:
            if secret in value:
                value = value.replace(secret, REDACTED)
        return _NUMBER_RUN.sub(REDACTED, value)
    if isinstance(value, dict):
        return {key: _redact(item, secrets) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_redact(item, secrets) for item in value]
    return value


def scrub_event(event: dict[str, Any], hint: dict[str, Any] | None = None) -> dict[str, Any]:
    """before_send / before_send_transaction: the second line of defence (see the module docstring).

    The request part keeps the method, the URL without its query and the allowlisted headers; the user
    part (client address) goes whole."""
    request = event.get("request")
    if isinstance(request, dict):
        kept: dict[str, Any] = {key: request[key] for key in ("method",) if key in request}
        if isinstance(request.get("url"), str):
            kept["url"] = request["url"].split("?", 1)[0]
        headers = request.get("headers")
        if isinstance(headers, dict):
            kept["headers"] = {name: value for name, value in headers.items() if name.lower() in EVENT_HEADERS}
        event["request"] = kept
    event.pop("user", None)
    context = current_request()
    secrets = [s for s in (context.secrets if context else []) if len(s) >= _MIN_SECRET_CHARS]
    # Longest first, so a secret that contains another is removed whole.
    return _redact(event, sorted(secrets, key=len, reverse=True))


def scrub_breadcrumb(crumb: dict[str, Any], hint: dict[str, Any] | None = None) -> dict[str, Any]:
    return scrub_event(crumb, hint)


def before_send(event: dict[str, Any], hint: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """Drop a second capture of an error we reported already (a failure in a started stream is reported
    by us and then re-raised to abort the transfer, where the ASGI integration sees it again), then
    scrub."""
    exc_info = (hint or {}).get("exc_info")
    if exc_info and getattr(exc_info[1], REPORTED, False):
        return None
    return scrub_event(event, hint)


# --- set-up ---------------------------------------------------------------------------------------


def gpu_description(settings: Settings) -> dict[str, str]:
    """gpu_model and total_memory: from settings, else `nvidia-smi` on this host, else "unknown"."""
    gpu_model, total_memory = settings.gpu_model, settings.gpu_total_memory
    if (not gpu_model or not total_memory) and shutil.which("nvidia-smi"):
        try:
            output = subprocess.run(
                ["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
                capture_output=True, text=True, timeout=2, check=True,
            ).stdout.splitlines()
            name, memory = (part.strip() for part in output[0].split(",", 1))
            gpu_model, total_memory = gpu_model or name, total_memory or memory
        except (OSError, subprocess.SubprocessError, IndexError, ValueError):
            pass
    return {"gpu_model": gpu_model or "unknown", "total_memory": total_memory or "unknown"}


def init_sentry(settings: Settings, release: str) -> bool:
    """Initialise the (process-wide) Sentry client; False when no DSN is configured."""
    if not settings.sentry_dsn:
        return False
    options: dict[str, Any] = {}
    if settings.sentry_transport is not None:
        options["transport"] = settings.sentry_transport
    sentry_sdk.init(
        dsn=settings.sentry_dsn,
        environment=settings.sentry_environment,
        release=release,
        traces_sample_rate=settings.sentry_traces_sample_rate,
        # What integrations may collect (the SDK's successor of send_default_pii=False): no user, no
        # cookies, no bodies, no query strings, no credential headers, no local variables in frames.
        data_collection={
            "user_info": False,
            "cookies": {"mode": "off"},
            "http_headers": {"request": {"mode": "allowlist", "terms": sorted(EVENT_HEADERS)}},
            "http_bodies": [],
            "url_query_params": {"mode": "off"},
            "gen_ai": {"inputs": False, "outputs": False},
            "stack_frame_variables": False,
            "database_query_data": False,
        },
        max_request_body_size="never",
        before_send=before_send,
        before_send_transaction=scrub_event,
        before_breadcrumb=scrub_breadcrumb,
        shutdown_timeout=2,
        integrations=[
            # Our exception handler reports every failure once; the integration must not add a second
            # event for the 5xx responses it maps.
            StarletteIntegration(failed_request_status_codes=set()),
            FastApiIntegration(failed_request_status_codes=set()),
            # INFO and above become breadcrumbs; log records never become events (we send them).
            LoggingIntegration(level=logging.INFO, event_level=None),
        ],
        **options,
    )
    return True


# --- reporting ------------------------------------------------------------------------------------


class RateLimit:
    """At most `limit` events per key in any `window_s` seconds (per process): a warning that every
    request hits (a bad voice used by all) is counted in the metrics, not sent thousands of times."""

    def __init__(self, limit: int, window_s: float) -> None:
        self.limit = limit
        self.window_s = window_s
        self._sent: dict[str, deque[float]] = {}

    def allow(self, key: str, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        sent = self._sent.setdefault(key, deque())
        while sent and now - sent[0] >= self.window_s:
            sent.popleft()
        if len(sent) >= self.limit:
            return False
        sent.append(now)
        return True


class Reporter:
    """Sends the service's events: one per failure, one per warning, with the same tags everywhere."""

    def __init__(self, settings: Settings, metrics: ServiceMetrics, device: str) -> None:
        self.settings = settings
        self.metrics = metrics
        self.device = device
        self._gpu: dict[str, str] | None = None
        self._rate_limit = RateLimit(settings.warning_events_per_minute, 60.0)

    def gpu(self) -> dict[str, str]:
        if self._gpu is None:
            self._gpu = gpu_description(self.settings)
        return self._gpu

    @contextmanager
    def _scope(self, stage: str, fingerprint: list[str], tags: dict[str, str | None]) -> Iterator[Any]:
        context = current_request()
        with sentry_sdk.new_scope() as scope:
            scope.set_tag("stage", stage)
            scope.set_tag("device", self.device)
            if context is not None:
                scope.set_tag("request_id", context.request_id)
                scope.set_tag("route", context.route)
                scope.set_context("tts_request", {**context.meta, "batch_size": 1, "device": self.device})
            for key, value in tags.items():
                if value is not None:
                    scope.set_tag(key, value)
            scope.fingerprint = fingerprint
            yield scope

    def failure(self, error: ServiceError) -> str | None:
        """One event for a failed request (error level unless the error says otherwise)."""
        stage = error.stage or "request"
        tags = {
            "model": error.model, "model_version": error.model_version, "error_type": error.error_type,
            "field": error.field,
        }
        if error.stage:
            self.metrics.stage_errors.labels(stage, error.error_type).inc()
        with self._scope(stage, [stage, error.error_type], tags) as scope:
            scope.set_level(error.level)
            if isinstance(error, ModelOutOfMemoryError):
                gpu = self.gpu()
                batch_size = str(getattr(error, "current_batch_size", 1))
                scope.set_tag("gpu_model", gpu["gpu_model"])
                scope.set_tag("total_memory", gpu["total_memory"])
                scope.set_tag("current_batch_size", batch_size)
                scope.set_context("gpu", {**gpu, "current_batch_size": batch_size})
            event_id = sentry_sdk.capture_exception(error)
        setattr(error, REPORTED, True)
        logger.log(
            logging.WARNING if error.level == "warning" else logging.ERROR,
            "%s failed: %s (%s)", stage, error.error_type, error.message,
        )
        return event_id

    def warning(
        self, kind: str, message: str, *, stage: str, model: str | None = None, level: str = "warning",
        tags: dict[str, str] | None = None, data: dict[str, Any] | None = None,
    ) -> None:
        """A warning (the request is still served); `kind` names it in the fingerprint. Within a request a
        kind becomes one event, sent when the request ends, with `count` saying how often it happened
        (a text of 80 segments has one short_mel event, not 80); outside a request it is sent now."""
        self.metrics.warnings.labels(kind).inc()
        context = current_request()
        pending = PendingWarning(message, stage, model, level, dict(tags or {}), dict(data or {}))
        if context is None:
            self._send_warning(kind, pending)
            return
        if kind not in context.warnings:
            context.warnings.append(kind)
        if kind in context.pending_warnings:
            context.pending_warnings[kind].count += 1
            return
        context.pending_warnings[kind] = pending
        logger.warning("%s: %s", kind, message)

    def end_request(self, context: RequestContext) -> None:
        """Send the request's warnings (called by the request middleware as the request ends)."""
        for kind, pending in context.pending_warnings.items():
            self._send_warning(kind, pending)
        context.pending_warnings.clear()

    def _send_warning(self, kind: str, warning: PendingWarning) -> str | None:
        if not self._rate_limit.allow(kind):
            self.metrics.warnings_suppressed.labels(kind).inc()
            return None
        tags = {"model": warning.model, "warning": kind, **warning.tags}
        data = {**warning.data, "count": warning.count}
        with self._scope(warning.stage, [warning.stage, kind], tags) as scope:
            scope.set_level(warning.level)
            scope.set_context("warning", data)
            for key, value in data.items():
                scope.set_extra(key, value)
            return sentry_sdk.capture_message(warning.message, level=warning.level)

    @staticmethod
    def breadcrumb(message: str, category: str, data: dict[str, Any] | None = None) -> None:
        """INFO: a breadcrumb and a local log line, never an event."""
        sentry_sdk.add_breadcrumb(message=message, category=category, level="info", data=data or {})
        breadcrumb_logger.info("%s: %s", category, message)
