"""The per-request ASGI layer: request id, the request context for events, the body-size guard and the
request metrics. Pure ASGI (no BaseHTTPMiddleware), so streamed responses pass straight through."""

from __future__ import annotations

import re
import time
import uuid

from starlette.datastructures import Headers, MutableHeaders
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from orchestrator.metrics import ServiceMetrics
from orchestrator.reporting import CURRENT_REQUEST, RequestContext
from orchestrator.schemas import ErrorBody, ErrorResponse

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class RequestTooLargeError(HTTPException):
    """A body without Content-Length that grew past the limit while being read."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body is over the limit of {limit} bytes")


class RequestMiddleware:
    def __init__(self, app: ASGIApp, metrics: ServiceMetrics, max_request_bytes: int) -> None:
        self.app = app
        self.metrics = metrics
        self.max_request_bytes = max_request_bytes

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
        received = 0

        async def send_with_headers(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
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
            await self.app(scope, receive_with_limit, send_with_headers)
        finally:
            route = context.route
            self.metrics.requests.labels(route, scope["method"], str(status)).inc()
            self.metrics.request_seconds.labels(route).observe(time.perf_counter() - started)
            CURRENT_REQUEST.reset(token)
