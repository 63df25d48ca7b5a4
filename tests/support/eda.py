"""What the Event-Driven Ansible tests share: loading an event source by path as ansible-rulebook
does, a small HTTP server to play Nomad's event stream or Consul's blocking queries to a source,
a real Nomad dev agent (``NOMAD_BIN``), ansible-rulebook's location, and waiting for an
outcome."""

import asyncio
import contextlib
import http.server
import importlib.util
import itertools
import json
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from urllib.parse import parse_qs, urlsplit

from tests.lab.control import ControlClient

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


# urllib's default handlers, whatever opener another test installed globally.
HTTP = urllib.request.build_opener()

NOMAD_BIN = os.environ.get("NOMAD_BIN")
NOMAD_SKIP_REASON = "NOMAD_BIN not set (path of a Nomad 1.6.5 binary for the real-agent runs)"

# A service job of one raw_exec task that sleeps (the dev agent enables raw_exec below).
SLEEP_JOB = {"Job": {"ID": "eda-probe", "Name": "eda-probe", "Type": "service",
                     "Datacenters": ["*"], "TaskGroups": [{
                         "Name": "probe", "Count": 1, "Tasks": [{
                             "Name": "sleep", "Driver": "raw_exec",
                             "Config": {"command": "/bin/sleep", "args": ["600"]}}]}]}}


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def nomad_api(address, method, path, body=None):
    """One JSON request to a Nomad HTTP API (no token)."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(address + path, data=data, method=method)
    with HTTP.open(request, timeout=10) as resp:
        return json.loads(resp.read() or b"null")


@contextlib.contextmanager
def nomad_dev_agent(workdir, event_buffer_size=None):
    """A real Nomad dev agent (server and client, raw_exec on) on free loopback ports; yields
    ``(address, node)`` once its node is ready, and stops it afterwards."""
    http, rpc, serf = free_port(), free_port(), free_port()
    config = pathlib.Path(workdir) / "agent.hcl"
    text = ('data_dir = "%s"\nports {\n  http = %d\n  rpc = %d\n  serf = %d\n}\n'
            'plugin "raw_exec" {\n  config {\n    enabled = true\n  }\n}\n'
            % (pathlib.Path(workdir) / "data", http, rpc, serf))
    if event_buffer_size:
        text += "server {\n  event_buffer_size = %d\n}\n" % event_buffer_size
    config.write_text(text)
    log_path = pathlib.Path(workdir) / "agent.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen([NOMAD_BIN, "agent", "-dev", "-bind", "127.0.0.1", "-config",
                                 str(config)], stdout=log, stderr=subprocess.STDOUT)
    address = "http://127.0.0.1:%d" % http
    try:
        nodes = []

        def ready():
            try:
                nodes[:] = [n for n in nomad_api(address, "GET", "/v1/nodes")
                            if n["Status"] == "ready"]
            except OSError:
                return False
            return bool(nodes)

        assert wait_for(ready, 90, 0.5), \
            "the Nomad dev agent did not become ready:\n" + log_path.read_text()[-3000:]
        yield address, nodes[0]
    finally:
        stop_process(proc)


LAB_CLI = [sys.executable, "-m", "tests.lab"]


def lab_cli(*args, timeout=120):
    """Run ``python -m tests.lab ARGS``; its stdout, stripped (AssertionError when it fails)."""
    proc = subprocess.run(LAB_CLI + [str(a) for a in args], capture_output=True, text=True,
                          timeout=timeout, check=False)
    assert proc.returncode == 0, "python -m tests.lab %s: %s%s" % (
        " ".join(map(str, args)), proc.stdout, proc.stderr)
    return proc.stdout.strip()


@contextlib.contextmanager
def lab_process(*options):
    """A lab in its own process (``python -m tests.lab up OPTIONS``), as a user runs it; yields
    ``(state_dir, lab.json as a dict)`` and takes it down afterwards."""
    state = tempfile.mkdtemp(prefix="lab-", dir="/tmp")
    try:
        lab_cli("up", "--state-dir", state, *options)
        with open(os.path.join(state, "lab.json")) as handle:
            yield state, json.load(handle)
    finally:
        lab_cli("down", "--state-dir", state)
        shutil.rmtree(state, ignore_errors=True)


def lab_endpoint(state, node, alloc_id):
    """The endpoint of an allocation in a node's agent of a lab process (its control socket),
    or None."""
    endpoints = ControlClient(os.path.join(state, "control.sock")).call("GET", "/endpoints/" + node)
    found = [e for e in endpoints
             if e["status"]["external-identifiers"].get("container-id") == alloc_id]
    return found[0] if found else None


async def cancel(task):
    """Cancel an event source's task and wait until it ended."""
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass
