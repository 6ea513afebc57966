"""The per-request ASGI layer: request id, the request context for events, the body-size guard, the last
line of error handling and the request metrics. Pure ASGI (no BaseHTTPMiddleware), so streamed responses
pass straight through.

Every response leaves here with an `X-Request-ID` header (the client's, when it sent a valid one). An
exception that escapes the routes and their handlers becomes a JSON 500 here, inside the request's
context, so its body and its one event carry the request id and the connection stays usable. A failure
after the response started cannot change the status any more: the transfer is cut short (the server
closes the connection, the client sees an incomplete body), and the failure is reported once.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Callable

from starlette.datastructures import Headers, MutableHeaders
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from orchestrator.metrics import ServiceMetrics
from orchestrator.reporting import CURRENT_REQUEST, RequestContext
from orchestrator.schemas import ErrorBody, ErrorResponse

logger = logging.getLogger("orchestrator")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class RequestTooLargeError(HTTPException):
    """A body without Content-Length that grew past the limit while being read."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body is over the limit of {limit} bytes")


class RequestMiddleware:
    def __init__(
        self, app: ASGIApp, metrics: ServiceMetrics, max_request_bytes: int,
        on_unexpected_error: Callable[[Exception], Response], on_request_end: Callable[[RequestContext], None],
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.max_request_bytes = max_request_bytes
        # error -> the JSON 500 (reported once); the context -> deferred reporting (warnings with counts)
        self.on_unexpected_error = on_unexpected_error
        self.on_request_end = on_request_end

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        given_id = headers.get("x-request-id", "")
        context = RequestContext(request_id=given_id if _REQUEST_ID.match(given_id) else uuid.uuid4().hex,
                                 scope=scope)
        token = CURRENT_REQUEST.set(context)
        started = time.perf_counter()
        status = 500
        response_started = False
        received = 0

        async def send_with_headers(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                status, response_started = message["status"], True
                response_headers = MutableHeaders(scope=message)
                response_headers["X-Request-ID"] = context.request_id
                if context.warnings:
                    response_headers["X-TTS-Warnings"] = ",".join(context.warnings)
            await send(message)

        async def receive_with_limit() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_request_bytes:
                    raise RequestTooLargeError(self.max_request_bytes)
            return message

        try:
            length = headers.get("content-length", "")
            if length.isdigit() and int(length) > self.max_request_bytes:
                body = ErrorResponse(error=ErrorBody(
                    type="payload_too_large", message=f"the request body is {length} bytes; the limit is "
                    f"{self.max_request_bytes} bytes", limit=f"{self.max_request_bytes} bytes",
                    request_id=context.request_id))
                await JSONResponse(body.model_dump(), status_code=413)(scope, receive, send_with_headers)
                return
            try:
                await self.app(scope, receive_with_limit, send_with_headers)
            except Exception as error:  # noqa: BLE001 - the last line: every failure gets an answer
                if not response_started:
                    await self.on_unexpected_error(error)(scope, receive, send_with_headers)
                else:
                    # Returning without completing the response makes the server close the connection.
                    self.on_unexpected_error(error)  # reports it, unless it was reported where it happened
                    logger.warning("response %s cut short by %s after it started", context.request_id,
                                   type(error).__name__)
        finally:
            route = context.route
            self.metrics.requests.labels(route, scope["method"], str(status)).inc()
            self.metrics.request_seconds.labels(route).observe(time.perf_counter() - started)
            try:
                self.on_request_end(context)
            finally:
                CURRENT_REQUEST.reset(token)
