# -*- coding: utf-8 -*-
# Copyright: netreap.cilium contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Internal to netreap.cilium (not a public API): the one HTTP layer every service client uses.

JSON in and out over TCP or a unix socket, TLS with verification on by default (CA file or
directory, client certificate, server-name override), timeouts, one exception type that carries
method, URL, status and body, and retries only where a retry cannot repeat a write: HTTP 429, and
"connection refused" (the request never left this host).
"""

from __future__ import annotations

import errno
import http.client
import json
import socket
import ssl
import time

from ansible.module_utils.common.text.converters import to_text
from urllib.error import HTTPError, URLError
from urllib.parse import quote, urlencode, urlsplit

from ansible.module_utils.urls import Request

BODY_EXCERPT = 2000

# Requests put on the wire by every HttpClient of this process, per service name (retries
# included).  A module run reads it before and after (``_run.Run``) instead of each module
# reaching into its clients.
_SENT = {}


def requests_sent():
    """``{service: requests sent so far by this process}`` (a copy)."""
    return dict(_SENT)


class ServiceError(Exception):
    """A request to a service failed.

    ``status`` is the HTTP status, or None when no HTTP answer arrived; ``kind`` is one of
    ``http``, ``refused``, ``timeout``, ``tls``, ``transport``, ``decode``.
    """

    def __init__(self, service, method, url, status=None, body="", kind="http", reason=""):
        self.service = service
        self.method = method
        self.url = url
        self.status = status
        self.body = body or ""
        self.kind = kind
        self.reason = reason
        # What the answer means, when the body does not say (e.g. which ACL permission Nomad's
        # bare "Permission denied" is about); appended to messages in parentheses.
        self.hint = ""
        super().__init__(self.describe())

    def __str__(self):
        return self.describe()  # the hint may be set after construction

    def _hint_suffix(self):
        return " (%s)" % self.hint if self.hint else ""

    def describe(self):
        where = "%s %s %s" % (self.service, self.method, self.url)
        if self.kind == "http":
            return "%s: HTTP %s: %s%s" % (where, self.status, self.body.strip() or "(empty body)",
                                          self._hint_suffix())
        if self.kind == "decode":
            return "%s: HTTP %s: response is not valid JSON (%s): %s" % (
                where, self.status, self.reason, self.body.strip()[:200] or "(empty body)")
        labels = {"refused": "connection refused", "timeout": "timed out",
                  "tls": "TLS error", "transport": "connection failed"}
        return "%s: %s: %s" % (where, labels.get(self.kind, self.kind), self.reason)


def failure_message(action, exc):
    """``<verb> <object> <id>: HTTP <status>: <body>`` for fail_json, from any ServiceError."""
    if isinstance(exc, ServiceError):
        if exc.kind == "http":
            return "%s: %s HTTP %s: %s%s" % (action, exc.service, exc.status,
                                             exc.body.strip() or "(empty body)", exc._hint_suffix())
        return "%s: %s" % (action, exc.describe())
    return "%s: %s" % (action, to_text(exc))


class HttpResponse:
    def __init__(self, status, headers, body):
        self.status = status
        self.headers = headers
        self.body = body

    def header(self, name, default=None):
        return self.headers.get(name.lower(), default)

    def text(self):
        return to_text(self.body, errors="surrogate_or_replace")


class _ServerNameContext(ssl.SSLContext):
    """An SSL context that presents and verifies a fixed server name (``*_TLS_SERVER_NAME``)."""

    server_name = None

    def wrap_socket(self, sock, *args, **kwargs):
        if self.server_name:
            kwargs["server_hostname"] = self.server_name
        return super().wrap_socket(sock, *args, **kwargs)


# OpenSSL's words for "the server refused us for want of a (valid) client certificate"; with TLS
# 1.3 the refusal may also arrive as a bare EOF right after the handshake.
_CLIENT_CERT_REFUSALS = ("CERTIFICATE_REQUIRED", "certificate required", "BAD_CERTIFICATE",
                         "bad certificate", "UNKNOWN_CA", "unknown ca", "EOF occurred in violation")


def tls_failure_reason(service, reason, client_cert=None):
    """The SSL error text plus what to set, naming the options of ``service``."""
    text = to_text(reason)
    if "CERTIFICATE_VERIFY_FAILED" in text or "certificate verify failed" in text:
        return ("%s (the server's certificate was not verified: set %s_ca_cert to the CA that "
                "signed it, %s_tls_server_name to a name it was issued for, or %s_validate_certs: "
                "false to skip verification)" % (text, service, service, service))
    if any(word in text for word in _CLIENT_CERT_REFUSALS):
        if not client_cert:
            return ("%s (no client certificate was sent; the server may require one: set "
                    "%s_client_cert and %s_client_key)" % (text, service, service))
        return ("%s (the server refused the client certificate %s: is it signed by the CA the "
                "server trusts?)" % (text, client_cert))
    return text


def build_tls_context(validate_certs=True, ca_file=None, ca_path=None, client_cert=None,
                      client_key=None, server_name=None):
    ctx = _ServerNameContext(ssl.PROTOCOL_TLS_CLIENT)
    if validate_certs:
        ctx.check_hostname = True
        ctx.verify_mode = ssl.CERT_REQUIRED
        if ca_file or ca_path:
            ctx.load_verify_locations(cafile=ca_file, capath=ca_path)
        else:
            ctx.load_default_certs()
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if client_cert:
        ctx.load_cert_chain(client_cert, keyfile=client_key)
    ctx.server_name = server_name
    return ctx


def parse_address(address, default_port, scheme=None):
    """Split a HashiCorp-style address into ``(base_url, unix_socket)``.

    Accepts ``host``, ``host:port``, ``http://host:port``, ``https://host:port[/prefix]`` and
    ``unix:///path.sock``.  ``scheme`` (``http``/``https``) applies when the address has none.
    """
    address = (address or "").strip()
    if not address:
        raise ValueError("address is empty")
    if address.startswith("unix://"):
        path = address[len("unix://"):]
        if not path.startswith("/"):
            raise ValueError("unix socket address %r must be an absolute path" % address)
        return "http://localhost", path
    if "://" not in address:
        address = "%s://%s" % (scheme or "http", address)
    parts = urlsplit(address)
    if parts.scheme not in ("http", "https"):
        raise ValueError("unsupported scheme %r in address %r" % (parts.scheme, address))
    if not parts.hostname:
        raise ValueError("address %r has no host" % address)
    try:
        port = parts.port or default_port
    except ValueError:
        raise ValueError("address %r has an invalid port" % address)
    host = parts.hostname
    if ":" in host:
        host = "[%s]" % host
    return "%s://%s:%d%s" % (parts.scheme, host, port, parts.path.rstrip("/")), None


def _is_refused(reason):
    if isinstance(reason, ConnectionRefusedError):
        return True
    if isinstance(reason, FileNotFoundError):  # unix socket path does not exist
        return True
    err = getattr(reason, "errno", None)
    if err in (errno.ECONNREFUSED, errno.ENOENT):
        return True
    # ansible's unix-socket connection re-raises as OSError('Invalid Socket File (...): [Errno N] ...')
    text = to_text(reason)
    refused = ("[Errno %d]" % errno.ENOENT, "[Errno %d]" % errno.ECONNREFUSED)
    return "Invalid Socket File" in text and any(code in text for code in refused)


def _is_timeout(reason):
    return isinstance(reason, (socket.timeout, TimeoutError)) or "timed out" in to_text(reason)


class HttpClient:
    """JSON-over-HTTP client for one service.

    ``request_count`` counts requests put on the wire (retries included), for tests and
    benchmarks that assert how many calls an operation needs.
    """

    def __init__(self, service, base_url, unix_socket=None, headers=None, timeout=10.0,
                 validate_certs=True, ca_file=None, ca_path=None, client_cert=None, client_key=None,
                 tls_server_name=None, retries=4, backoff=0.5, max_backoff=8.0, deadline=None,
                 sleep=time.sleep, clock=time.monotonic):
        self.service = service
        self.base_url = base_url.rstrip("/")
        self.unix_socket = unix_socket
        self.headers = dict(headers or {})
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.deadline = deadline
        self._sleep = sleep
        self._clock = clock
        self.request_count = 0
        self.client_cert = client_cert
        self.retry_count = 0
        if self.base_url.startswith("https://"):
            self._context = build_tls_context(validate_certs, ca_file, ca_path, client_cert,
                                              client_key, tls_server_name)
        else:
            # Never used for plain HTTP, but without one ansible's Request builds a context and
            # loads the system CA store on every request (~40 ms each).  Verifying and CA-less:
            # it could not complete a TLS handshake even if it were ever used.
            self._context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)

    def url_for(self, path, query=None):
        url = self.base_url + quote(path, safe="/:,=@")
        if query:
            items = [(k, v) for k, v in query.items() if v is not None]
            if items:
                url += "?" + urlencode(items, doseq=True)
        return url

    def _open_once(self, method, url, data, headers):
        request = Request(timeout=self.timeout, follow_redirects="none", use_proxy=False)
        self.request_count += 1
        _SENT[self.service] = _SENT.get(self.service, 0) + 1
        try:
            resp = request.open(method, url, data=data, headers=headers,
                                unix_socket=self.unix_socket, context=self._context)
            body = resp.read()
            return HttpResponse(resp.status if hasattr(resp, "status") else resp.getcode(),
                                {k.lower(): v for k, v in resp.headers.items()}, body)
        except HTTPError as exc:
            try:
                body = exc.read()
            except Exception:  # the server may have hung up mid-body
                body = b""
            headers_in = exc.headers.items() if exc.headers is not None else []
            return HttpResponse(exc.code, {k.lower(): v for k, v in headers_in}, body)
        except URLError as exc:
            reason = exc.reason
            if _is_refused(reason):
                raise ServiceError(self.service, method, url, kind="refused", reason=to_text(reason))
            if _is_timeout(reason):
                raise ServiceError(self.service, method, url, kind="timeout",
                                   reason="no answer within %ss" % self.timeout)
            if isinstance(reason, ssl.SSLError):
                raise ServiceError(self.service, method, url, kind="tls",
                                   reason=tls_failure_reason(self.service, reason, self.client_cert))
            raise ServiceError(self.service, method, url, kind="transport", reason=to_text(reason))
        except (socket.timeout, TimeoutError):
            raise ServiceError(self.service, method, url, kind="timeout",
                               reason="no answer within %ss" % self.timeout)
        except ssl.SSLError as exc:
            raise ServiceError(self.service, method, url, kind="tls",
                               reason=tls_failure_reason(self.service, exc, self.client_cert))
        except ConnectionRefusedError as exc:
            raise ServiceError(self.service, method, url, kind="refused", reason=to_text(exc))
        except (OSError, ValueError, http.client.HTTPException) as exc:
            # IncompleteRead, RemoteDisconnected, a reset connection
            raise ServiceError(self.service, method, url, kind="transport",
                               reason="%s: %s" % (type(exc).__name__, to_text(exc)))

    def _wait_before_retry(self, attempt, retry_after, started):
        delay = min(self.max_backoff, self.backoff * (2 ** attempt))
        if retry_after:
            try:
                delay = max(delay, min(float(retry_after), self.max_backoff))
            except ValueError:
                pass
        if self.deadline is not None and self._clock() - started + delay > self.deadline:
            return False
        self._sleep(delay)
        self.retry_count += 1
        return True

    def request(self, method, path, query=None, body=None, raw_body=None, headers=None,
                expect=(200,), retry=True):
        """Send one request; return HttpResponse when its status is in ``expect``.

        ``body`` is JSON-encoded; ``raw_body`` (bytes) is sent as is.  Any other status raises
        ServiceError (kind ``http``).  429 and "connection refused" are retried with exponential
        backoff (honouring Retry-After) while ``retry`` is true and retries/deadline allow.
        """
        url = self.url_for(path, query)
        send_headers = dict(self.headers)
        send_headers.setdefault("Accept", "application/json")
        data = None
        if body is not None:
            data = json.dumps(body).encode("utf-8")
            send_headers["Content-Type"] = "application/json"
        elif raw_body is not None:
            data = raw_body
        if headers:
            send_headers.update(headers)
        started = self._clock()
        attempt = 0
        while True:
            try:
                resp = self._open_once(method, url, data, send_headers)
            except ServiceError as exc:
                if retry and exc.kind == "refused" and attempt < self.retries and \
                        self._wait_before_retry(attempt, None, started):
                    attempt += 1
                    continue
                raise
            if resp.status in expect:
                return resp
            if retry and resp.status == 429 and attempt < self.retries and \
                    self._wait_before_retry(attempt, resp.header("retry-after"), started):
                attempt += 1
                continue
            raise ServiceError(self.service, method, url, status=resp.status,
                               body=resp.text()[:BODY_EXCERPT])

    def request_json(self, method, path, query=None, body=None, raw_body=None, headers=None,
                     expect=(200,), retry=True, allow_empty=False):
        """Like request(), then decode the JSON body; returns ``(data, HttpResponse)``."""
        resp = self.request(method, path, query=query, body=body, raw_body=raw_body,
                            headers=headers, expect=expect, retry=retry)
        if not resp.body.strip():
            if allow_empty:
                return None, resp
            raise ServiceError(self.service, method, self.url_for(path, query), status=resp.status,
                               kind="decode", reason="empty body")
        try:
            return json.loads(to_text(resp.body, errors="surrogate_or_strict")), resp
        except (ValueError, UnicodeError) as exc:
            raise ServiceError(self.service, method, self.url_for(path, query), status=resp.status,
                               body=resp.text()[:BODY_EXCERPT], kind="decode", reason=to_text(exc))


def settings_tls_context(settings):
    """The TLS context for resolved connection settings (``*_settings()``), None for plain HTTP
    or a unix socket; for clients other than HttpClient (the event sources)."""
    if settings.get("unix_socket") or not settings["base_url"].startswith("https://"):
        return None
    return build_tls_context(settings["validate_certs"], settings["ca_file"], settings["ca_path"],
                             settings["client_cert"], settings["client_key"],
                             settings["tls_server_name"])
