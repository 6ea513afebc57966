"""The per-request ASGI layer: request id, the request context for events, the body-size guard, the last
line of error handling and the request metrics. Pure ASGI (no BaseHTTPMiddleware), so streamed responses
pass straight through.

Every response leaves here with an `X-Request-ID` header (the client's, when it sent a valid one). An
exception that escapes the routes and their handlers becomes a JSON 500 here, inside the request's
context, so its body and its one event carry the request id and the connection stays usable. A failure
after the response started cannot change the status any more: the transfer is cut short (the server
closes the connection, the client sees an incomplete body), and the failure is reported once.

Admission (orchestrator.admission) answers here too, before the body is read; and a client that goes away
before its answer is complete cancels the request's work.
"""

from __future__ import annotations

import asyncio
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
CLIENT_CLOSED_REQUEST = 499  # the status the metrics record for a request whose client left (nginx's)


class RequestTooLargeError(HTTPException):
    """A body without Content-Length that grew past the limit while being read."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body is over the limit of {limit} bytes")


class RequestMiddleware:
    def __init__(
        self, app: ASGIApp, metrics: ServiceMetrics, max_request_bytes: int,
        on_request_start: Callable[[RequestContext], Response | None],
        on_unexpected_error: Callable[[Exception], Response],
        on_request_end: Callable[[RequestContext, int], None],
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.max_request_bytes = max_request_bytes
        # The context -> a response that refuses the request before its body is read (admission), or None;
        # an error -> the JSON 500 (reported once); the context and status -> admission release, deferred
        # reporting (warnings with counts).
        self.on_request_start = on_request_start
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
        response_started = response_complete = False
        received = 0
        body_read = asyncio.Event()

        async def send_with_headers(message: Message) -> None:
            nonlocal status, response_started, response_complete
            if message["type"] == "http.response.start":
                status, response_started = message["status"], True
                response_headers = MutableHeaders(scope=message)
                response_headers["X-Request-ID"] = context.request_id
                if context.warnings:
                    response_headers["X-TTS-Warnings"] = ",".join(context.warnings)
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                response_complete = True
            await send(message)

        async def receive_with_limit() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_request_bytes:
                    raise RequestTooLargeError(self.max_request_bytes)
                if not message.get("more_body", False):
                    body_read.set()
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
            refusal = self.on_request_start(context)
            if refusal is not None:  # before a byte of the body is read
                await refusal(scope, receive, send_with_headers)
                return
            handler = asyncio.ensure_future(self.app(scope, receive_with_limit, send_with_headers))

            async def cancel_when_the_client_leaves() -> None:
                # Once the body is read, the next message can only be the disconnect. A client that leaves
                # before its answer is complete cancels the work: the Triton calls in flight are cancelled
                # with it (the decoder frees its slot, s2mel its row).
                await body_read.wait()
                while (await receive())["type"] != "http.disconnect":
                    pass
                if not response_complete:
                    context.client_gone = True
                    handler.cancel()

            watcher = asyncio.ensure_future(cancel_when_the_client_leaves())
            try:
                await handler
            except asyncio.CancelledError:
                if not context.client_gone:
                    raise  # the server is shutting down: not ours to swallow
                status = CLIENT_CLOSED_REQUEST
                logger.info("request %s: the client went away; its work was cancelled", context.request_id)
            except Exception as error:  # noqa: BLE001 - the last line: every failure gets an answer
                if not response_started:
                    await self.on_unexpected_error(error)(scope, receive, send_with_headers)
                else:
                    # Returning without completing the response makes the server close the connection.
                    self.on_unexpected_error(error)  # reports it, unless it was reported where it happened
                    logger.warning("response %s cut short by %s after it started", context.request_id,
                                   type(error).__name__)
            finally:
                watcher.cancel()
        finally:
            route = context.route
            self.metrics.requests.labels(route, scope["method"], str(status)).inc()
            self.metrics.request_seconds.labels(route).observe(time.perf_counter() - started)
            try:
                self.on_request_end(context, status)
            finally:
                CURRENT_REQUEST.reset(token)
