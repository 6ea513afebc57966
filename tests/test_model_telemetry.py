"""Errors inside the Triton Python models are reported on the caller's trace, with metadata only."""

from __future__ import annotations

import json

import pytest
import sentry_sdk
from sentry_sdk.transport import Transport

from indextts2.engine.telemetry import ModelTelemetry

TRACE_ID = "0123456789abcdef0123456789abcdef"


class CapturingTransport(Transport):
    def __init__(self):
        super().__init__()
        self.events: list[dict] = []

    def capture_envelope(self, envelope):
        for item in envelope.items:
            if item.type == "event":
                self.events.append(item.payload.json)


class FakeRequest:
    def __init__(self, parameters: dict):
        self._parameters = json.dumps(parameters)

    def parameters(self) -> str:
        return self._parameters


@pytest.fixture()
def captured(monkeypatch):
    monkeypatch.setenv("SENTRY_DSN", "http://public@127.0.0.1:9/1")
    transport = CapturingTransport()
    sentry_sdk.init(dsn="http://public@127.0.0.1:9/1", transport=transport, default_integrations=False)
    try:
        yield transport
    finally:
        sentry_sdk.init()  # back to a client without a DSN


def test_trace_headers_are_read_from_request_parameters():
    request = FakeRequest({"sentry-trace": f"{TRACE_ID}-0123456789abcdef-1", "baggage": "sentry-x=1", "other": 3})
    assert ModelTelemetry.trace_headers(request) == {
        "sentry-trace": f"{TRACE_ID}-0123456789abcdef-1", "baggage": "sentry-x=1"}
    assert ModelTelemetry.trace_headers(FakeRequest({})) == {}


def test_model_error_is_reported_on_the_callers_trace_with_stage_tags(captured):
    telemetry = ModelTelemetry("s2mel", "1", "cpu")
    headers = {"sentry-trace": f"{TRACE_ID}-0123456789abcdef-1"}
    telemetry.report(ValueError("code_latents must be (12, d)"), headers, {"batch_size": 3, "codes": 12})
    sentry_sdk.flush()
    (event,) = captured.events
    assert event["level"] == "error"
    assert event["tags"]["stage"] == "s2mel" and event["tags"]["model"] == "s2mel"
    assert event["tags"]["model_version"] == "1" and event["tags"]["device"] == "cpu"
    assert event["contexts"]["trace"]["trace_id"] == TRACE_ID
    assert event["contexts"]["request"] == {"batch_size": 3, "codes": 12}
    assert event["fingerprint"] == ["s2mel", "ValueError"]
    assert event["exception"]["values"][0]["type"] == "ValueError"


def test_without_a_dsn_nothing_is_sent(monkeypatch):
    monkeypatch.delenv("SENTRY_DSN", raising=False)
    telemetry = ModelTelemetry("gpt_decoder", "1", "cpu")
    assert not telemetry.enabled
    telemetry.report(RuntimeError("boom"), {}, {})  # a no-op, and no error
