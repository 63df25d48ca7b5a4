"""What the Event-Driven Ansible tests share: loading an event source by path as ansible-rulebook
does, a small HTTP server to play Nomad's event stream or Consul's blocking queries to a source,
ansible-rulebook's location, and waiting for an outcome."""

import http.server
import importlib.util
import itertools
import json
import os
import pathlib
import subprocess
import sys
import threading
import time
from urllib.parse import parse_qs, urlsplit

SOURCES = pathlib.Path(__file__).resolve().parents[2] / "extensions" / "eda" / "plugins" / "event_source"
BIN = os.path.dirname(sys.executable)
JAVA_HOME = os.environ.get("JAVA_HOME") or "/usr/lib/jvm/java-17-openjdk-amd64"
RULEBOOK = os.path.join(BIN, "ansible-rulebook")


def rulebook_missing():
    """Why ansible-rulebook cannot run here, or '' when it can."""
    if not os.path.exists(RULEBOOK):
        return "ansible-rulebook missing (scripts/setup.sh installs it)"
    if not os.path.exists(os.path.join(JAVA_HOME, "bin", "java")):
        return "Java 17 missing (JAVA_HOME; scripts/setup.sh installs it)"
    return ""


def rulebook_env(extra=None):
    """The environment ansible-rulebook needs: Java, and this Python's bin first on PATH."""
    env = dict(os.environ)
    env.update(extra or {})
    env.update(JAVA_HOME=JAVA_HOME, PATH=BIN + os.pathsep + os.environ.get("PATH", ""),
               ANSIBLE_PYTHON_INTERPRETER=sys.executable)
    return env


def load_plugin(name="nomad_events"):
    """Load an event source by path, as ansible-rulebook does."""
    spec = importlib.util.spec_from_file_location(name + "_under_test", SOURCES / (name + ".py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class QuietHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass


def serve(handler):
    """Serve ``handler`` on a free loopback port in a thread; returns (server, base URL)."""
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd, "http://127.0.0.1:%d" % httpd.server_address[1]


class StreamServer:
    """Each connection plays the next script: a list of frames, ``"close"``, ``("sleep", s)`` or
    ``("wait", callable)``.

    A script may also be a callable of the requested index returning such a list (or any
    iterable: a generator feeds frames as they come).
    """

    def __init__(self, scripts):
        self.scripts = list(scripts)
        self.requests = []
        server = self

        class Handler(QuietHandler):
            def do_GET(self):
                query = parse_qs(urlsplit(self.path).query)
                server.requests.append({"path": urlsplit(self.path).path, "query": query,
                                        "token": self.headers.get("X-Nomad-Token")})
                script = server.scripts.pop(0) if server.scripts else [("sleep", 30)]
                if callable(script):
                    script = script(int(query.get("index", ["0"])[0]))
                if isinstance(script, list) and script[:1] == ["forbidden"]:
                    body = b"Permission denied"
                    self.send_response(403)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                try:
                    for item in itertools.chain([{}], script):  # a heartbeat first, as Nomad
                        if item == "close":  # hang up mid-stream
                            self.close_connection = True
                            return
                        if isinstance(item, tuple):  # ("sleep", seconds) or ("wait", callable)
                            item[1]() if callable(item[1]) else time.sleep(item[1])
                            continue
                        for part in (json.dumps(item).encode(), b"\n"):
                            self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
                        self.wfile.flush()
                    time.sleep(30)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.httpd, self.address = serve(Handler)

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def wait_for(check, timeout, interval=0.2):
    """Poll ``check`` until it is true (returns True) or ``timeout`` seconds passed (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(interval)
    return False


def stop_process(proc, timeout=20):
    """SIGTERM, then SIGKILL after ``timeout`` seconds."""
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def endpoint_for(node, alloc_id):
    """The endpoint of an allocation in a lab node's agent (cilium-cni names it by alloc ID)."""
    for endpoint in node.cilium.endpoints():
        if (endpoint.get("status") or {}).get("external-identifiers", {}).get(
                "container-id") == alloc_id:
            return endpoint
    return None


def endpoint_labels(endpoint):
    """The identity labels of an endpoint as the agent reports them."""
    labels = ((endpoint.get("status") or {}).get("labels") or {})
    return set(labels.get("security-relevant") or labels.get("realized", {}).get("user") or [])
