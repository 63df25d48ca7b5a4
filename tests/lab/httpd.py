"""Shared HTTP plumbing for the lab simulators (test infrastructure, never imported by product code).

Every simulated service (Consul, Nomad, one Cilium agent per node) is a ``Service``: a router of
``(method, path regex) -> handler`` plus a fault table and a request log.  ``serve_tcp`` and
``serve_unix`` put a service behind a threaded HTTP/1.1 server on 127.0.0.1 or a unix socket.

Handlers receive a ``Request`` and return a ``Response`` (or raise ``HttpError``).  Faults are
checked before routing, so a test can make "the next 2 PUTs to /v1/txn" answer 500, hang past
the client's timeout, drop the connection, send a truncated or non-JSON body, or answer 429.

This module models no upstream service by itself: each simulator cites the sources of its own
wire behaviour (docs/upstream.md).  Go-specific texts here (``json_kind``) follow Go's
``encoding/json`` ``UnmarshalTypeError``.
"""

import json
import os
import re
import selectors
import socket
import socketserver
import ssl
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit


class Request:
    """One parsed HTTP request as the service sees it."""

    def __init__(self, method, target, headers, body, service_name=""):
        parts = urlsplit(target)
        self.method = method.upper()
        self.raw_path = parts.path
        self.path = unquote(parts.path)
        self.raw_query = parts.query
        self.query = parse_qs(parts.query, keep_blank_values=True)
        self.headers = {k.lower(): v for k, v in headers.items()}
        self.body = body or b""
        self.service_name = service_name
        self.params = {}

    def arg(self, name, default=None):
        """Last value of a query parameter; '' for a bare flag like ``?recurse``."""
        values = self.query.get(name)
        if not values:
            return default
        return values[-1]

    def has(self, name):
        return name in self.query

    def flag(self, name):
        """Query flag: present and not explicitly false (Go's ParseBool plus bare presence).

        UNCONFIRMED lab choice: also takes yes/y; no simulator uses it for an upstream rule.
        """
        if name not in self.query:
            return False
        value = self.query[name][-1]
        return value == "" or value.lower() in ("1", "t", "true", "yes", "y")

    def header(self, name, default=None):
        return self.headers.get(name.lower(), default)

    def json(self):
        if not self.body:
            return None
        return json.loads(self.body.decode("utf-8"))


class Response:
    def __init__(self, status=200, body=b"", content_type="application/json", headers=None):
        self.status = status
        if isinstance(body, str):
            body = body.encode("utf-8")
        self.body = body
        self.content_type = content_type
        self.headers = dict(headers or {})


class StreamResponse(Response):
    """A response written as it is produced, with ``Transfer-Encoding: chunked``.

    ``chunks`` is a callable of the listener's stop event (set when the endpoint is paused or
    stopped) returning an iterable of byte strings; each is written and flushed as one HTTP
    chunk. The stream ends when the iterable does or the client goes away; a paused endpoint
    closes its open streams, as a restarting server drops its connections.
    """

    def __init__(self, chunks, status=200, content_type="application/json", headers=None):
        super().__init__(status, b"", content_type, headers)
        self.chunks = chunks


def json_kind(value):
    """The JSON kind Go's encoding/json names in UnmarshalTypeError messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def json_response(obj, status=200, headers=None):
    return Response(status, json.dumps(obj).encode("utf-8"), "application/json", headers)


def text_response(text, status=200, headers=None):
    return Response(status, text, "text/plain; charset=utf-8", headers)


class HttpError(Exception):
    """Raised by a handler to answer with an error status and body."""

    def __init__(self, status, body="", content_type="text/plain; charset=utf-8", headers=None):
        super().__init__("HTTP %s: %s" % (status, body))
        self.response = Response(status, body, content_type, headers)


class Fault:
    """One injected misbehaviour.

    action: ``status`` (answer ``status`` with ``body``), ``hang`` (hold the request ``delay``
    seconds, then close without answering), ``drop`` (close without answering), ``truncate``
    (announce a longer body than sent), ``garbage`` (200 with a non-JSON body), ``delay``
    (wait ``delay`` seconds, then serve normally).
    """

    ACTIONS = ("status", "hang", "drop", "truncate", "garbage", "delay")

    def __init__(self, action="status", status=500, body="", method=None, path=None, count=1,
                 delay=30.0, content_type="text/plain; charset=utf-8", headers=None, skip=0):
        if action not in self.ACTIONS:
            raise ValueError("unknown fault action %r" % action)
        self.action = action
        self.status = int(status)
        self.body = body
        self.method = method.upper() if method else None
        self.path = path
        self._path_re = re.compile(path) if path else None
        self.count = count  # None = until cleared
        self.delay = float(delay)
        self.content_type = content_type
        self.headers = dict(headers or {})
        self.hits = 0
        self.skip = int(skip)  # let this many matching requests through first ("fail the Nth")

    def matches(self, req):
        if self.method and req.method != self.method:
            return False
        if self._path_re is not None:
            target = req.path + ("?" + req.raw_query if req.raw_query else "")
            if not self._path_re.search(target):
                return False
        return True

    def as_dict(self):
        return {"action": self.action, "status": self.status, "method": self.method,
                "path": self.path, "count": self.count, "hits": self.hits, "delay": self.delay}


class FaultTable:
    def __init__(self):
        self._lock = threading.Lock()
        self._faults = []

    def add(self, fault):
        with self._lock:
            self._faults.append(fault)
        return fault

    def clear(self):
        with self._lock:
            self._faults = []

    def take(self, req):
        """Return the first live fault matching ``req`` and consume one use of it."""
        with self._lock:
            for fault in self._faults:
                if fault.matches(req) and (fault.count is None or fault.count > 0):
                    if fault.skip > 0:
                        fault.skip -= 1
                        continue
                    fault.hits += 1
                    if fault.count is not None:
                        fault.count -= 1
                    return fault
        return None

    def list(self):
        with self._lock:
            return [f.as_dict() for f in self._faults]


class RequestLog:
    """Every request a service answered (or failed on purpose), for call-count assertions."""

    def __init__(self):
        self._lock = threading.Lock()
        self._entries = []

    def record(self, service, req, status, fault=None):
        entry = {"time": time.time(), "service": service, "method": req.method, "path": req.path,
                 "query": req.raw_query, "status": status, "fault": fault}
        with self._lock:
            self._entries.append(entry)

    def entries(self, service=None, method=None, path=None):
        path_re = re.compile(path) if path else None
        with self._lock:
            items = list(self._entries)
        return [e for e in items
                if (service is None or e["service"] == service)
                and (method is None or e["method"] == method.upper())
                and (path_re is None or path_re.search(e["path"]))]

    def count(self, service=None, method=None, path=None):
        return len(self.entries(service, method, path))

    def clear(self):
        with self._lock:
            self._entries = []


class Service:
    """A simulated HTTP API: routes, state lock, faults, request log."""

    def __init__(self, name, log=None):
        self.name = name
        self.lock = threading.RLock()
        self.faults = FaultTable()
        self.log = log if log is not None else RequestLog()
        self._routes = []
        self.rate_limiter = None  # callable(req) -> Response|None, set by services that model 429

    def route(self, method, pattern, handler):
        self._routes.append((method.upper(), re.compile("^" + pattern + "$"), handler))

    def not_found(self, req):
        return Response(404, b"", "text/plain; charset=utf-8")

    def method_not_allowed(self, req):
        return Response(405, b"Invalid method", "text/plain; charset=utf-8")

    def dispatch(self, req):
        allowed = False
        for method, regex, handler in self._routes:
            match = regex.match(req.path)
            if not match:
                continue
            if method != req.method:
                allowed = True
                continue
            req.params = match.groupdict()
            try:
                return handler(req)
            except HttpError as exc:
                return exc.response
        if allowed:
            return self.method_not_allowed(req)
        return self.not_found(req)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "netreap-lab/1"

    def log_message(self, fmt, *args):  # keep test output quiet
        return

    def send_response(self, code, message=None):
        if getattr(self.server.lab_service, "server_header", True):
            super().send_response(code, message)
            return
        # a service that sends no Server header (Consul): the status line and Date only
        self.log_request(code)
        self.send_response_only(code, message)
        self.send_header("Date", self.date_time_string())

    def address_string(self):  # unix sockets have no peer address
        return "lab"

    def _read_body(self):
        length = self.headers.get("Content-Length")
        if length:
            return self.rfile.read(int(length))
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        return b""

    def _handle(self):
        service = self.server.lab_service
        body = self._read_body()
        req = Request(self.command, self.path, dict(self.headers.items()), body, service.name)
        fault = service.faults.take(req)
        if fault is not None and fault.action != "delay":
            service.log.record(service.name, req, fault.status if fault.action == "status" else 0,
                               fault.action)
            self._apply_fault(fault)
            return
        if fault is not None:
            time.sleep(fault.delay)
        if service.rate_limiter is not None:
            limited = service.rate_limiter(req)
            if limited is not None:
                service.log.record(service.name, req, limited.status, "ratelimit")
                self._send(limited, req)
                return
        try:
            resp = service.dispatch(req)
        except Exception as exc:  # a simulator bug must be visible, not a hung client
            resp = Response(500, ("lab internal error: %r" % (exc,)).encode(), "text/plain")
        service.log.record(service.name, req, resp.status)
        self._send(resp, req)

    def _send(self, resp, req):
        if isinstance(resp, StreamResponse):
            self._send_stream(resp)
            return
        self.send_response(resp.status)
        body = resp.body if req.method != "HEAD" else b""
        if resp.content_type and resp.body:
            self.send_header("Content-Type", resp.content_type)
        for key, value in resp.headers.items():
            self.send_header(key, str(value))
        self.send_header("Content-Length", str(len(resp.body)))
        self.end_headers()
        if body:
            self.wfile.write(body)

    def _send_stream(self, resp):
        self.send_response(resp.status)
        for key, value in resp.headers.items():
            self.send_header(key, str(value))
        self.send_header("Content-Type", resp.content_type)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.close_connection = True
        try:
            for chunk in resp.chunks(self.server.lab_stopping):
                if chunk:
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                    self.wfile.flush()
            if not self.server.lab_stopping.is_set():
                self.wfile.write(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            return
        if self.server.lab_stopping.is_set():  # a stopped server ends no stream cleanly
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _apply_fault(self, fault):
        if fault.action == "status":
            self._send(Response(fault.status, fault.body, fault.content_type, fault.headers),
                       Request(self.command, self.path, {}, b""))
        elif fault.action == "garbage":
            self._send(Response(200, fault.body or "<html>502 Bad Gateway</html>", "text/html"),
                       Request(self.command, self.path, {}, b""))
        elif fault.action == "truncate":
            body = (fault.body or '{"truncated": [1, 2, 3').encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body) + 100))
            self.end_headers()
            self.wfile.write(body)
            self.wfile.flush()
        elif fault.action == "hang":
            stop = self.server.lab_stopping
            stop.wait(fault.delay)
        # drop, hang, truncate: close the connection without (a complete) answer
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    do_GET = do_PUT = do_POST = do_DELETE = do_PATCH = do_HEAD = _handle


class _TCPHandler(_Handler):
    # Without this every answer waits ~40 ms on delayed ACKs (Nagle); TCP only (not AF_UNIX).
    disable_nagle_algorithm = True


class _QuietClientErrors:
    def handle_error(self, request, client_address):
        # A refused TLS handshake (unknown CA, no client certificate) or a client that gave up
        # waiting (its timeout, on a loaded machine) is the client's error to report, not ours.
        if isinstance(sys.exc_info()[1], (ssl.SSLError, ConnectionError)):
            return
        super().handle_error(request, client_address)


class _TCPServer(_QuietClientErrors, ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class _UnixServer(_QuietClientErrors, socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def get_request(self):
        conn = super().get_request()[0]
        return conn, ("lab", 0)


class _Acceptor:
    """One thread accepts connections for every listener of the process.

    A lab holds two listeners per node; a thread polling each of them (``serve_forever``) would
    cost 2,000 threads and 20,000 wake-ups a second at 1,000 nodes.  Here one selector waits on
    all listening sockets and hands each new connection to the server, which serves it on a
    thread of its own (``ThreadingMixIn``), as before.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._selector = None
        self._thread = None

    def add(self, server):
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._selector = selectors.DefaultSelector()
                self._thread = threading.Thread(target=self._loop, args=(self._selector,),
                                                name="lab-acceptor", daemon=True)
                self._thread.start()
            self._selector.register(server.socket, selectors.EVENT_READ, server)

    def remove(self, server):
        with self._lock:
            try:
                self._selector.unregister(server.socket)
            except (KeyError, ValueError):
                pass

    def _loop(self, selector):
        while True:
            try:
                ready = selector.select(timeout=1.0)
            except OSError:  # a listener closed between select() calls
                continue
            for key, unused in ready:
                server = key.data
                with self._lock:
                    if selector.get_map().get(key.fd) is not key:
                        continue  # removed meanwhile
                try:
                    server._handle_request_noblock()  # pylint: disable=protected-access
                except OSError:
                    pass


_ACCEPTOR = _Acceptor()


class Endpoint:
    """A running listener for one service; can be paused to model "connection refused"."""

    def __init__(self, service, host="127.0.0.1", port=0, unix_path=None, ssl_context=None):
        self.service = service
        self.host = host
        self.port = port
        self.unix_path = unix_path
        self.ssl_context = ssl_context
        self._server = None
        self._stopping = threading.Event()

    @property
    def url(self):
        if self.unix_path:
            return "unix://" + self.unix_path
        scheme = "https" if self.ssl_context else "http"
        return "%s://%s:%d" % (scheme, self.host, self.port)

    def start(self):
        if self.unix_path:
            if os.path.exists(self.unix_path):
                os.unlink(self.unix_path)
            server = _UnixServer(self.unix_path, _Handler)
            os.chmod(self.unix_path, 0o660)
        else:
            server = _TCPServer((self.host, self.port), _TCPHandler)
            self.port = server.server_address[1]
            if self.ssl_context is not None:
                # the handshake happens on the connection's own thread, not on the shared acceptor
                server.socket = self.ssl_context.wrap_socket(server.socket, server_side=True,
                                                             do_handshake_on_connect=False)
        server.lab_service = self.service
        # A new event per start: streams of the previous run end even when resumed at once.
        self._stopping = threading.Event()
        server.lab_stopping = self._stopping
        self._server = server
        _ACCEPTOR.add(server)
        return self

    def stop(self):
        """Stop listening: new connections are refused (the port/socket stays reserved by us)."""
        if self._server is None:
            return
        self._stopping.set()
        _ACCEPTOR.remove(self._server)
        self._server.server_close()
        if self.unix_path and os.path.exists(self.unix_path):
            os.unlink(self.unix_path)
        self._server = None

    pause = stop

    def resume(self):
        if self._server is None:
            self.start()

    @property
    def running(self):
        return self._server is not None


def serve_tcp(service, host="127.0.0.1", port=0, ssl_context=None):
    return Endpoint(service, host=host, port=port, ssl_context=ssl_context).start()


def serve_unix(service, path):
    return Endpoint(service, unix_path=path).start()
