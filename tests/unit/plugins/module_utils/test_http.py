"""HTTP layer: every failure a module can meet maps to one ServiceError with method, URL,
status and body; retries happen only for 429 and refused connections."""

import os
import socket
import tempfile

import pytest

from ansible_collections.netreap.cilium.plugins.module_utils._http import (
    HttpClient,
    ServiceError,
    failure_message,
    parse_address,
)
from tests.lab import httpd


@pytest.fixture
def server():
    service = httpd.Service("probe")
    service.route("GET", r"/ok", lambda r: httpd.json_response({"ok": True}))
    service.route("GET", r"/text", lambda r: httpd.text_response("not json at all"))
    service.route("PUT", r"/echo", lambda r: httpd.json_response(r.json()))
    endpoint = httpd.serve_tcp(service)
    yield service, endpoint
    endpoint.stop()


def client_for(endpoint, **kw):
    kw.setdefault("sleep", lambda s: None)
    return HttpClient("probe", endpoint.url, **kw)


def test_json_round_trip(server):
    service, endpoint = server
    data, resp = client_for(endpoint).request_json("PUT", "/echo", body={"a": [1, 2]})
    assert data == {"a": [1, 2]} and resp.status == 200


@pytest.mark.parametrize("status,body", [(403, "Permission denied"), (404, ""), (500, "rpc error: boom"),
                                         (503, "No cluster leader")])
def test_http_errors_carry_method_url_status_body(server, status, body):
    service, endpoint = server
    service.faults.add(httpd.Fault(status=status, body=body, path="/ok"))
    with pytest.raises(ServiceError) as info:
        client_for(endpoint).request_json("GET", "/ok")
    exc = info.value
    assert (exc.kind, exc.status, exc.method) == ("http", status, "GET")
    assert exc.url == endpoint.url + "/ok"
    assert str(exc) == "probe GET %s/ok: HTTP %d: %s" % (endpoint.url, status, body or "(empty body)")
    assert failure_message("read thing x", exc) == "read thing x: probe HTTP %d: %s" % (
        status, body or "(empty body)")


def test_non_json_body_is_a_decode_error(server):
    service, endpoint = server
    with pytest.raises(ServiceError) as info:
        client_for(endpoint).request_json("GET", "/text")
    assert info.value.kind == "decode" and info.value.status == 200
    assert "not valid JSON" in str(info.value) and "not json at all" in str(info.value)


def test_truncated_body_is_a_transport_error(server):
    service, endpoint = server
    service.faults.add(httpd.Fault(action="truncate", path="/ok"))
    with pytest.raises(ServiceError) as info:
        client_for(endpoint).request_json("GET", "/ok")
    assert info.value.kind == "transport"
    assert "IncompleteRead" in info.value.reason


def test_429_is_retried_with_backoff_then_succeeds(server):
    service, endpoint = server
    service.faults.add(httpd.Fault(status=429, path="/ok", count=2))
    sleeps = []
    client = client_for(endpoint, sleep=sleeps.append, backoff=0.5)
    data = client.request_json("GET", "/ok")[0]
    assert data == {"ok": True}
    assert sleeps == [0.5, 1.0]
    assert client.request_count == 3 and client.retry_count == 2


def test_429_gives_up_after_retries(server):
    service, endpoint = server
    service.faults.add(httpd.Fault(status=429, body="slow down", path="/ok", count=None))
    client = client_for(endpoint, retries=2)
    with pytest.raises(ServiceError) as info:
        client.request_json("GET", "/ok")
    assert info.value.status == 429 and client.request_count == 3


def test_429_respects_deadline(server):
    service, endpoint = server
    service.faults.add(httpd.Fault(status=429, path="/ok", count=None))
    now = [0.0]
    client = HttpClient("probe", endpoint.url, retries=10, backoff=1.0, deadline=2.5,
                        sleep=lambda s: now.__setitem__(0, now[0] + s), clock=lambda: now[0])
    with pytest.raises(ServiceError):
        client.request_json("GET", "/ok")
    assert client.request_count == 2  # 1s backoff fits, the next 2s would pass the deadline


@pytest.mark.parametrize("status", [500, 503, 403, 404])
def test_other_errors_are_never_retried(server, status):
    service, endpoint = server
    service.faults.add(httpd.Fault(status=status, path="/echo", count=None))
    client = client_for(endpoint)
    with pytest.raises(ServiceError):
        client.request_json("PUT", "/echo", body={})
    assert client.request_count == 1


def test_connection_refused_is_retried_then_reported():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    sleeps = []
    client = HttpClient("probe", "http://127.0.0.1:%d" % port, retries=2, sleep=sleeps.append)
    with pytest.raises(ServiceError) as info:
        client.request("GET", "/ok")
    assert info.value.kind == "refused" and info.value.status is None
    assert "connection refused" in str(info.value)
    assert client.request_count == 3 and len(sleeps) == 2


def test_refused_then_back_succeeds(server):
    service, endpoint = server
    endpoint.pause()
    calls = []

    def sleep(seconds):
        calls.append(seconds)
        endpoint.resume()

    client = HttpClient("probe", endpoint.url, sleep=sleep)
    assert client.request_json("GET", "/ok")[0] == {"ok": True}
    assert len(calls) == 1


def test_timeout_is_reported_not_retried(server):
    service, endpoint = server
    service.faults.add(httpd.Fault(action="hang", path="/ok", delay=3))
    client = client_for(endpoint, timeout=0.5)
    with pytest.raises(ServiceError) as info:
        client.request("GET", "/ok")
    assert info.value.kind == "timeout" and "timed out" in str(info.value)
    assert client.request_count == 1


def test_dropped_connection_is_a_transport_error(server):
    service, endpoint = server
    service.faults.add(httpd.Fault(action="drop", path="/ok"))
    client = client_for(endpoint)
    with pytest.raises(ServiceError) as info:
        client.request("GET", "/ok")
    assert info.value.kind == "transport"
    assert client.request_count == 1


def test_unix_socket_and_missing_socket():
    service = httpd.Service("probe")
    service.route("GET", r"/v1/healthz", lambda r: httpd.json_response({"host": r.header("host")}))
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "a.sock")
        endpoint = httpd.serve_unix(service, path)
        try:
            client = HttpClient("cilium", "http://localhost/v1", unix_socket=path)
            assert client.request_json("GET", "/healthz")[0] == {"host": "localhost"}
        finally:
            endpoint.stop()
        missing = HttpClient("cilium", "http://localhost/v1", unix_socket=path, retries=0)
        with pytest.raises(ServiceError) as info:
            missing.request("GET", "/healthz")
        assert info.value.kind == "refused"


@pytest.mark.parametrize("address,expected", [
    ("127.0.0.1:8500", ("http://127.0.0.1:8500", None)),
    ("consul.example", ("http://consul.example:8500", None)),
    ("https://consul.example", ("https://consul.example:8500", None)),
    ("https://consul.example:8501/prefix/", ("https://consul.example:8501/prefix", None)),
    ("unix:///run/consul.sock", ("http://localhost", "/run/consul.sock")),
    ("[::1]:8500", ("http://[::1]:8500", None)),
])
def test_parse_address(address, expected):
    assert parse_address(address, 8500) == expected


@pytest.mark.parametrize("address", ["", "ftp://x", "unix://relative.sock", "http://host:notaport"])
def test_parse_address_rejects(address):
    with pytest.raises(ValueError):
        parse_address(address, 8500)
