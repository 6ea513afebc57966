"""Admission control: the estimate (pure, with a fake clock) and the service refusing at the door with
503 + Retry-After before a byte of the upload is read."""

from __future__ import annotations

import asyncio
import json
import math

import pytest

from orchestrator.admission import (
    BUDGET_SHARE,
    CHUNKED,
    MIN_MEASURED,
    TEXT_BUDGET_SHARE,
    WHOLE,
    Admission,
    Refusal,
    Ticket,
)
from orchestrator.app import create_app
from orchestrator.settings import Settings


def _measure(admission: Admission, work_s: float, count: int, start: float = 0.0) -> float:
    """`count` requests, one at a time, each taking `work_s`: returns the clock after them."""
    now = start
    for _ in range(count):
        ticket = admission.admit(1e9, now=now)
        assert isinstance(ticket, Ticket)
        now += work_s
        admission.release(ticket, succeeded=True, now=now)
    return now


def test_work_is_the_machine_time_a_request_got_under_processor_sharing():
    admission = Admission(max_in_flight=10)
    # Two requests side by side for 4 s: each had half the machine, 2 s of work.
    first, second = admission.admit(100, now=0.0), admission.admit(100, now=0.0)
    admission.release(first, True, now=4.0)
    admission.release(second, True, now=4.0)
    _measure(admission, 2.0, MIN_MEASURED - 2, start=4.0)
    assert admission.work_per_segment_s() == pytest.approx(2.0)


def test_nothing_is_refused_before_the_work_is_measured_but_the_in_flight_cap():
    admission = Admission(max_in_flight=2)
    assert isinstance(admission.admit(0.001, now=0.0), Ticket)
    assert isinstance(admission.admit(0.001, now=0.0), Ticket)
    refusal = admission.admit(100, now=0.0)
    assert isinstance(refusal, Refusal) and refusal.reason == "in_flight_limit" and refusal.retry_after_s >= 1


def test_a_request_is_refused_at_the_door_when_the_work_ahead_is_over_its_share_of_the_budget():
    admission = Admission(max_in_flight=100)
    now = _measure(admission, 2.0, MIN_MEASURED)
    tickets = [admission.admit(1000, now=now) for _ in range(9)]  # 9 in flight: a 10th finishes after ~20 s
    assert all(isinstance(ticket, Ticket) for ticket in tickets)
    assert admission.expected_finish_s() == pytest.approx(20.0)
    assert isinstance(admission.admit(18.0 / BUDGET_SHARE, now=now), Ticket)  # 18 s ahead: fits, 10 in flight
    refusal = admission.admit(10.0, now=now)  # 20 s of work ahead against 10 x BUDGET_SHARE s usable
    assert isinstance(refusal, Refusal) and refusal.reason == "deadline"
    assert refusal.retry_after_s == math.ceil(20 - 10 * BUDGET_SHARE)
    assert admission.in_flight == 10


def test_work_is_counted_per_text_segment_and_checked_again_once_the_text_is_known():
    admission = Admission(max_in_flight=100)
    now = 0.0
    for _ in range(MIN_MEASURED):  # requests of 3 segments, 6 s each: 2 s per segment
        ticket = admission.admit(1e9, now=now)
        assert admission.resize(ticket, 3, 1e9) is None
        now += 6.0
        admission.release(ticket, succeeded=True, now=now)
    assert admission.work_per_segment_s() == pytest.approx(2.0)
    long_text = admission.admit(100, now=now)
    assert admission.resize(long_text, 10, 100) is None  # 10 segments: 20 s of a 100 s budget
    assert admission.expected_finish_s() == pytest.approx(22.0)  # one more segment waits behind those 10
    # A request passes the door (20 s ahead, within BUDGET_SHARE of 100 s) but makes 30 segments once read:
    # 40 x 2 s = 80 s, within its budget but over TEXT_BUDGET_SHARE of it (the estimate is a mean).
    ticket = admission.admit(100, now=now)
    assert isinstance(ticket, Ticket)
    refusal = admission.resize(ticket, 30, 100)
    assert isinstance(refusal, Refusal) and refusal.reason == "deadline"
    assert refusal.retry_after_s == math.ceil(80 - TEXT_BUDGET_SHARE * 100)
    admission.release(ticket, succeeded=False, now=now)
    assert admission.in_flight == 1 and admission.in_flight_segments == 10


def test_a_long_text_gets_in_whenever_a_short_one_does():
    """The door looks at the work ahead only, and a text that can finish within its budget is kept once
    segmented: under overload long texts are not starved by short ones (they were, when the door counted
    the request's own segments against half the budget)."""
    admission = Admission(max_in_flight=100)
    now = _measure(admission, 2.0, MIN_MEASURED)
    for _ in range(24):  # 48 s of work ahead, just within BUDGET_SHARE of a 100 s budget
        assert isinstance(admission.admit(1e9, now=now), Ticket)
    short, long = admission.admit(100, now=now), admission.admit(100, now=now)
    assert isinstance(short, Ticket) and isinstance(long, Ticket)
    assert admission.resize(short, 1, 100) is None
    assert admission.resize(long, 3, 100) is None  # ~56 s: over the door's half, within TEXT_BUDGET_SHARE
    assert isinstance(admission.admit(100, now=now), Refusal)  # 54 s ahead now: the door closes for both


def test_each_kind_of_work_has_its_own_estimate():
    """Segments rendered in chunks cost less than whole ones: a queue of whole segments is counted at their
    own cost, not at the mean of both kinds (which let too much in after chunked traffic)."""
    admission = Admission(max_in_flight=100)
    now = 0.0
    for kind, work_s in ((CHUNKED, 1.0), (WHOLE, 3.0)):
        for _ in range(MIN_MEASURED):
            ticket = admission.admit(1e9, now=now)
            assert admission.resize(ticket, 1, 1e9, kind) is None
            now += work_s
            admission.release(ticket, succeeded=True, now=now)
    assert admission.work_per_segment_s(CHUNKED) == pytest.approx(1.0)
    assert admission.work_per_segment_s(WHOLE) == pytest.approx(3.0)
    assert admission.work_per_segment_s() == pytest.approx(2.0)  # the door's, before the kind is known
    for _ in range(10):
        ticket = admission.admit(1e9, now=now)
        assert admission.resize(ticket, 1, 1e9, WHOLE) is None
    assert admission.expected_finish_s() == pytest.approx(10 * 3.0 + 2.0)
    refusal = admission.admit(50.0, now=now)  # 30 s of whole segments ahead: over 25 s (20 s at the mean)
    assert isinstance(refusal, Refusal) and refusal.retry_after_s == math.ceil(30.0 - BUDGET_SHARE * 50.0)
    assert isinstance(admission.admit(60.0 / BUDGET_SHARE, now=now), Ticket)


def test_failed_requests_do_not_teach_the_estimate():
    admission = Admission(max_in_flight=10)
    ticket = admission.admit(100, now=0.0)
    admission.release(ticket, succeeded=False, now=0.001)  # a 422 is fast and says nothing of the work
    assert admission.work_per_segment_s() is None and admission.in_flight == 0


# --- the service ---


@pytest.fixture()
def app(demo_checkpoint, tmp_path):
    # No Triton behind it: a refusal at the door must not need one.
    settings = Settings(checkpoint_dir=demo_checkpoint.model_dir, triton_grpc_url="127.0.0.1:1",
                        voices_dir=tmp_path, max_in_flight_requests=2, request_timeout_s=30.0)
    return create_app(settings)


def _call(app, path: str, headers: list[tuple[bytes, bytes]]) -> tuple[int, dict, bytes, int]:
    """One request straight through the ASGI app; returns (status, headers, body, body reads)."""
    reads = 0
    messages = []

    async def receive():
        nonlocal reads
        reads += 1
        return {"type": "http.request", "body": b"--x\r\n" * 1000, "more_body": False}

    async def send(message):
        messages.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
             "headers": headers, "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 8000)}
    asyncio.run(app(scope, receive, send))
    start = next(m for m in messages if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in messages if m["type"] == "http.response.body")
    return start["status"], {k.decode().lower(): v.decode() for k, v in start["headers"]}, body, reads


@pytest.mark.parametrize("path", ["/v1/tts", "/v1/audio/speech"])
def test_an_overloaded_service_answers_503_with_retry_after_without_reading_the_upload(app, path):
    admission = app.state.admission
    held = [admission.admit(30.0), admission.admit(30.0)]  # the service is at its cap of 2
    status, headers, body, reads = _call(app, path, [(b"content-type", b"multipart/form-data; boundary=x"),
                                                     (b"content-length", b"5000")])
    assert status == 503 and reads == 0
    assert int(headers["retry-after"]) >= 1
    error = json.loads(body)["error"]
    assert error["type"] == "overloaded" and error["request_id"] == headers["x-request-id"]
    assert b'tts_requests_refused_total{reason="in_flight_limit"} 1.0' in app.state.metrics.render()
    for ticket in held:
        admission.release(ticket, succeeded=False)


def test_a_bad_request_timeout_header_is_422_naming_it(app):
    status, _, body, reads = _call(app, "/v1/tts", [(b"x-request-timeout", b"soon")])
    assert status == 422 and reads == 0
    assert json.loads(body)["error"]["field"] == "X-Request-Timeout"


def test_a_text_too_long_for_the_queue_is_503_once_segmented_before_its_audio_is_decoded(app, monkeypatch):
    """Admitted at the door (nothing ahead of it), refused once its text makes three segments (11 s of
    measured work per segment: 33 s, over TEXT_BUDGET_SHARE of its 30 s budget), with Retry-After, before
    the upload is decoded."""
    from benchmarks.loadgen import TEXTS
    from orchestrator import pipeline
    from orchestrator.testing import make_test_client, speech_like_wav

    admission = app.state.admission
    admission._recent_work[WHOLE].extend([11.0] * MIN_MEASURED)  # as if measured: 11 s per segment
    assert 3 * 11.0 > TEXT_BUDGET_SHARE * 30.0 >= 11.0
    decoded = []
    monkeypatch.setattr(pipeline, "decode_audio", lambda data: decoded.append(data))  # must not be reached
    with make_test_client(app) as client:
        assert len(asyncio.run(app.state.service.pipeline.segment_text(TEXTS["long"]))) == 3
        response = client.post("/v1/tts", data={"text": TEXTS["long"]},
                               files={"speaker_audio": ("v.wav", speech_like_wav(3.0), "audio/wav")})
        assert response.status_code == 503, response.text
        assert response.json()["error"]["type"] == "overloaded" and int(response.headers["retry-after"]) >= 1
        short = client.post("/v1/tts", data={"text": TEXTS["short"], "voice": "nobody"})
        assert short.status_code == 404  # one segment fits: it goes on (to an unknown voice)
    assert decoded == []
    assert admission.in_flight == 0 and admission.in_flight_segments == 0
    assert b'tts_requests_refused_total{reason="deadline"} 1.0' in app.state.metrics.render()
