"""The local Bugsink server (local_bugsink): a real Sentry-protocol server that sentry-sdk reports to, and
whose stored events the tests read back."""

from __future__ import annotations

import http.cookiejar
import re
import socket
import urllib.error
import urllib.parse
import urllib.request
import uuid

import pytest
import sentry_sdk
from sentry_sdk.scope import use_isolation_scope, use_scope

from local_bugsink import BugsinkNotInstalledError, BugsinkServer, event_summary, process_group_members


def _client(dsn: str) -> sentry_sdk.Client:
    # No integrations: they patch libraries process-wide, and this client must leave no trace in other tests.
    # http_proxy="": an http_proxy in the environment must not carry 127.0.0.1.
    return sentry_sdk.Client(
        dsn=dsn, default_integrations=False, auto_enabling_integrations=False, http_proxy="",
        release="local-bugsink-test", environment="test",
    )


def _send_error_and_warning(dsn: str, run: str) -> tuple[str, str]:
    """An exception and a warning message, each through a fresh scope bound to a fresh client."""
    client = _client(dsn)
    try:
        with use_isolation_scope(sentry_sdk.Scope()), use_scope(sentry_sdk.Scope()) as scope:
            scope.set_client(client)
            scope.set_tag("run", run)
            scope.set_tag("stage", "vocoder")
            scope.set_tag("model_version", "1")
            scope.set_context("tts_request", {"text_length": 42, "duration_ratio": 1.25})
            scope.set_extra("batch_size", 3)
            scope.fingerprint = ["vocoder", "RuntimeError"]
            scope.add_breadcrumb(category="stage", message="semantic_encoder done", data={"ms": 12})
            try:
                raise RuntimeError("vocoder failed: out of memory")
            except RuntimeError as error:
                error_id = scope.capture_exception(error)
        with use_isolation_scope(sentry_sdk.Scope()), use_scope(sentry_sdk.Scope()) as scope:
            scope.set_client(client)
            scope.set_tag("run", run)
            scope.set_tag("stage", "audio_features")
            warning_id = scope.capture_message("speaker reference shorter than 5 s", level="warning")
    finally:
        client.flush(timeout=10)
        client.close()
    assert error_id and warning_id, "the SDK dropped an event before sending it"
    return error_id, warning_id


def _port_is_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_error_and_warning_sent_by_sentry_sdk_are_read_back(bugsink_server):
    run = uuid.uuid4().hex
    error_id, warning_id = _send_error_and_warning(bugsink_server.dsn, run)

    events = bugsink_server.events(wait_for=2, timeout_s=20, tags={"run": run})

    assert [event["event_id"] for event in events] == [error_id, warning_id]
    error, warning = events
    assert error["level"] == "error"
    assert error["exception_type"] == "RuntimeError"
    assert error["exception_value"] == "vocoder failed: out of memory"
    assert error["tags"] == {"run": run, "stage": "vocoder", "model_version": "1"}
    assert error["contexts"]["tts_request"] == {"text_length": 42, "duration_ratio": 1.25}
    assert error["extra"] == {"batch_size": 3}
    assert error["fingerprint"] == ["vocoder", "RuntimeError"]
    assert [(crumb["category"], crumb["message"]) for crumb in error["breadcrumbs"]] == [
        ("stage", "semantic_encoder done")
    ]
    assert error["environment"] == "test" and error["release"] == "local-bugsink-test"
    assert error["data"]["exception"]["values"][-1]["stacktrace"]["frames"], "the raw event has the frames"

    assert warning["level"] == "warning"
    assert warning["message"] == "speaker reference shorter than 5 s"
    assert warning["exception_type"] is None
    assert warning["tags"] == {"run": run, "stage": "audio_features"}


def test_events_times_out_naming_what_arrived(bugsink_server):
    with pytest.raises(TimeoutError, match="0 of the 1 events wanted"):
        bugsink_server.events(wait_for=1, timeout_s=0.3, tags={"run": "no-such-run"})


def test_stop_leaves_no_process_and_a_second_server_starts_after_it():
    try:
        first = BugsinkServer().start(timeout_s=60)
    except BugsinkNotInstalledError as error:
        pytest.skip(str(error))
    group, port, data_dir, first_dsn = first.pid, first.port, first.data_dir, first.dsn
    assert len(process_group_members(group)) >= 2, "gunicorn runs a master and a worker"

    first.stop()
    first.stop()  # idempotent

    assert process_group_members(group) == []
    assert not _port_is_open(port)
    assert not data_dir.exists()

    with BugsinkServer() as second:
        second_group = second.pid
        assert second.dsn != first_dsn
        _send_error_and_warning(second.dsn, uuid.uuid4().hex)
        assert [event["level"] for event in second.events(wait_for=2, timeout_s=20)] == ["error", "warning"]
    assert process_group_members(second_group) == []


def test_admin_password_logs_in_to_the_web_ui(bugsink_server):
    class KeepRedirects(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):
            return None

    cookies = urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar())
    browser = urllib.request.build_opener(urllib.request.ProxyHandler({}), cookies, KeepRedirects)
    login_url = f"{bugsink_server.base_url}/accounts/login/"

    def log_in(password: str) -> int:
        form = browser.open(login_url, timeout=10).read().decode()
        csrf_token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', form).group(1)
        fields = {"username": bugsink_server.admin_username, "password": password,
                  "csrfmiddlewaretoken": csrf_token}
        request = urllib.request.Request(
            login_url, data=urllib.parse.urlencode(fields).encode(), headers={"Referer": login_url})
        try:
            return browser.open(request, timeout=30).status  # the form again
        except urllib.error.HTTPError as redirect:
            return redirect.code

    assert log_in("not the password") == 200
    assert log_in(bugsink_server.admin_password) == 302


def test_event_summary_reads_each_protocol_form():
    logged = event_summary({
        "logentry": {"message": "stage %s failed", "formatted": "stage vocoder failed"},
        "tags": [["stage", "vocoder"], ["attempt", 2]],
        "exception": [{"type": "ValueError", "value": "outer"}, {"type": "KeyError", "value": "'x'"}],
        "breadcrumbs": [{"message": "hello"}],
    }, level="error")
    assert logged["message"] == "stage vocoder failed"
    assert logged["tags"] == {"stage": "vocoder", "attempt": "2"}
    assert (logged["exception_type"], logged["exception_value"]) == ("KeyError", "'x'")
    assert [item["type"] for item in logged["exceptions"]] == ["ValueError", "KeyError"]
    assert logged["breadcrumbs"] == [{"message": "hello"}]

    message = event_summary({"message": {"formatted": "plain"}, "level": "warning"})
    assert (message["message"], message["level"], message["tags"]) == ("plain", "warning", {})
