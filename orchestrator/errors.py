"""Typed errors of the service. One handler (orchestrator.app) maps each to its HTTP status, a JSON
body and, where `report` is set, one Sentry event.

The HTTP status lives in `http_status`, not `status_code`: Sentry's Starlette integration captures any
exception with a 5xx `status_code` by itself, and every failure must be reported exactly once.
Messages are written for the caller and for the error tracker alike, so they never hold the request's
text or audio: they name the field, the limit and the stage.
"""

from __future__ import annotations

# Set on an exception that has its event already, so that before_send drops a second capture of it.
REPORTED = "_reported_to_sentry"


class ServiceError(Exception):
    http_status = 500
    error_type = "internal_error"
    report = True  # one Sentry event
    level = "error"

    def __init__(
        self,
        message: str,
        *,
        field: str | None = None,
        limit: str | None = None,
        stage: str | None = None,
        model: str | None = None,
        model_version: str | None = None,
        retry_after_s: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.limit = limit
        self.stage = stage
        self.model = model
        self.model_version = model_version
        self.retry_after_s = retry_after_s


# --- the caller's mistakes (4xx): not reported, except where the spec says so -----------------------


class InvalidRequestError(ServiceError):
    """A field is missing, malformed or outside its limit."""

    http_status = 422
    error_type = "invalid_request"
    report = False


class InvalidDurationRatioError(InvalidRequestError):
    """duration_ratio (or the OpenAI `speed` it comes from) outside [0.75, 1.25] or not finite: the request
    is refused, and reported at error level because clients sending it usually have a bug."""

    error_type = "invalid_duration_ratio"
    report = True


class UnsupportedFormatError(InvalidRequestError):
    http_status = 400
    error_type = "unsupported_format"


class PayloadTooLargeError(InvalidRequestError):
    http_status = 413
    error_type = "payload_too_large"


class VoiceNotFoundError(ServiceError):
    http_status = 404
    error_type = "voice_not_found"
    report = False


class VoiceExistsError(ServiceError):
    http_status = 409
    error_type = "voice_exists"
    report = False


class ServiceOverloadedError(ServiceError):
    """Refused at the door: the service cannot finish one more request within its deadline (admission
    control). Counted in the metrics (refusals by reason), not sent to Sentry: under overload every
    refusal would be an event."""

    http_status = 503
    error_type = "overloaded"
    report = False


# --- a Triton stage failed (5xx): always reported, tagged with stage / model / model_version --------


class StageError(ServiceError):
    """A stage failed; `stage` and `model` say which."""

    http_status = 502
    error_type = "model_error"


class TritonUnavailableError(StageError):
    """Triton cannot be reached (connection refused, reset, DNS)."""

    http_status = 503
    error_type = "triton_unavailable"


class ModelUnavailableError(StageError):
    """Triton answers but the model is not loaded or not ready."""

    http_status = 503
    error_type = "model_unavailable"


class ModelOverloadedError(StageError):
    """The model refused the request because its slots and queue are full: retry later."""

    http_status = 503
    error_type = "overloaded"
    level = "warning"


class ModelOutOfMemoryError(StageError):
    """The model ran out of (GPU) memory on this request; the event carries the GPU and batch size."""

    http_status = 503
    error_type = "out_of_memory"
    current_batch_size = 1  # requests the orchestrator had in flight on the model when it failed


class StageTimeoutError(StageError):
    http_status = 504
    error_type = "timeout"


class ModelError(StageError):
    """The model ran and failed (bad tensor, exception inside the model)."""


class ServiceBugError(StageError):
    """The orchestrator's own code failed inside a stage (not the model): a bug, reported as such."""

    http_status = 500
    error_type = "internal_error"


class ResponseAborted(Exception):
    """A failure after the response started (a stream), already reported: the request middleware cuts the
    transfer short. Not a ServiceError, so no handler tries to answer a response that is half sent."""

    @classmethod
    def after(cls, reported: ServiceError) -> ResponseAborted:
        aborted = cls(f"the response was cut short by {reported.error_type}")
        # Marked as reported (see orchestrator.reporting.before_send): the failure has its one event.
        setattr(aborted, REPORTED, True)
        return aborted
