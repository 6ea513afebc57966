"""Error reporting from inside the Triton Python models, on the orchestrator's trace.

The orchestrator sends its trace headers (`sentry-trace`, `baggage`) as Triton request parameters.
A model that has `SENTRY_DSN` in its environment continues that trace for each request and reports
its own exceptions, with their full stack traces, tagged with the stage and model. Like the
orchestrator, it sends metadata only: no request tensors, no text, no audio. Without `SENTRY_DSN`
every call here is a no-op.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from indextts2.engine.device import is_out_of_memory

logger = logging.getLogger(__name__)

try:  # sentry-sdk is a dependency of the service; a bare model environment may lack it.
    import sentry_sdk
except ImportError:  # pragma: no cover - exercised only where sentry-sdk is not installed
    sentry_sdk = None


class ModelTelemetry:
    def __init__(self, model_name: str, model_version: str, device: str):
        self.model_name = model_name
        self.model_version = model_version
        self.device = device
        dsn = os.environ.get("SENTRY_DSN", "")
        self.enabled = bool(dsn) and sentry_sdk is not None
        if self.enabled and not sentry_sdk.get_client().is_active():
            sentry_sdk.init(
                dsn=dsn,
                environment=os.environ.get("SENTRY_ENVIRONMENT", "production"),
                release=os.environ.get("SENTRY_RELEASE"),
                traces_sample_rate=float(os.environ.get("SENTRY_TRACES_SAMPLE_RATE", "0") or 0),
                send_default_pii=False,
                # A model never attaches its inputs, so there is nothing to scrub but local variables.
                include_local_variables=False,
                default_integrations=False,
            )

    @staticmethod
    def trace_headers(request) -> dict[str, str]:
        """The `sentry-trace` / `baggage` request parameters of a Triton request, if any."""
        try:
            parameters = json.loads(request.parameters() or "{}")
        except (TypeError, ValueError):
            return {}
        return {key: str(parameters[key]) for key in ("sentry-trace", "baggage") if key in parameters}

    @contextmanager
    def _scope(self, headers: dict[str, str], metadata: dict[str, Any] | None) -> Iterator[Any]:
        """A scope on the caller's trace, tagged with this model; None when reporting is off."""
        if not self.enabled:
            yield None
            return
        with sentry_sdk.isolation_scope() as scope:
            scope.set_tag("stage", self.model_name)
            scope.set_tag("model", self.model_name)
            scope.set_tag("model_version", self.model_version)
            scope.set_tag("device", self.device)
            scope.set_context("request", dict(metadata or {}))
            transaction = sentry_sdk.continue_trace(headers, op="triton.model", name=self.model_name)
            with sentry_sdk.start_transaction(transaction):
                yield scope

    def report(
        self, error: BaseException, headers: dict[str, str], metadata: dict[str, Any] | None = None,
        tags: dict[str, str] | None = None,
    ) -> None:
        """Report an exception (with its stack trace) that the model turned into an error response. `tags`
        are added to the event's (an out-of-memory error brings `out_of_memory_tags`: gpu_model,
        total_memory, current_batch_size); out-of-memory errors share one issue per model."""
        with self._scope(headers, metadata) as scope:
            if scope is not None:
                for key, value in (tags or {}).items():
                    scope.set_tag(key, value)
                kind = "out_of_memory" if is_out_of_memory(error) else type(error).__name__
                scope.fingerprint = [self.model_name, kind]
                sentry_sdk.capture_exception(error)

    def flush(self) -> None:
        if self.enabled:
            sentry_sdk.flush(timeout=2)

