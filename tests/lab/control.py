"""Control API of a running lab (``<state_dir>/control.sock``) and a small client for it.

Shell-driven tests and the demo use it to inject faults, read the request log, pause services
(connection refused), stop/start etcd and inspect state.  Test infrastructure only; it models
no upstream API.
"""

import http.client
import json
import socket
import threading

from tests.lab import httpd


class ControlService(httpd.Service):
    def __init__(self, lab, stop_event=None):
        super().__init__("lab-control", log=httpd.RequestLog())
        self.lab = lab
        self.stop_event = stop_event or threading.Event()
        self.route("GET", r"/status", lambda r: httpd.json_response(self.lab.describe()))
        self.route("POST", r"/faults", self.add_fault)
        self.route("DELETE", r"/faults", self.clear_faults)
        self.route("GET", r"/requests", self.requests)
        self.route("DELETE", r"/requests", self.clear_requests)
        self.route("POST", r"/pause/(?P<service>[^/]+)", self.pause)
        self.route("POST", r"/resume/(?P<service>[^/]+)", self.resume)
        self.route("POST", r"/etcd/(?P<action>stop|start)", self.etcd)
        self.route("GET", r"/kv", self.kv)
        self.route("GET", r"/endpoints/(?P<node>[^/]+)", self.endpoints)
        self.route("GET", r"/policy/(?P<node>[^/]+)", self.policy)
        self.route("POST", r"/heartbeat-timeout", self.heartbeat_timeout)
        self.route("GET", r"/report", self.report)
        self.route("POST", r"/shutdown", self.shutdown)
        self.route("POST", r"/alloc/start", self.alloc_start)
        self.route("POST", r"/alloc/stop", self.alloc_stop)

    def _services(self, name):
        if name == "cilium":
            return [n.cilium for n in self.lab.nodes]
        return [self.lab.service(name)]

    def add_fault(self, req):
        spec = req.json() or {}
        name = spec.pop("service")
        try:
            services = self._services(name)
        except KeyError:
            raise httpd.HttpError(404, "no such service %r" % name)
        for service in services:
            service.faults.add(httpd.Fault(**spec))
        return httpd.json_response({"added": len(services)})

    def clear_faults(self, req):
        for service in [self.lab.consul, self.lab.nomad] + [n.cilium for n in self.lab.nodes]:
            service.faults.clear()
        return httpd.json_response(True)

    def requests(self, req):
        entries = self.lab.log.entries(req.arg("service"), req.arg("method"), req.arg("path"))
        return httpd.json_response({"count": len(entries), "entries": entries})

    def clear_requests(self, req):
        self.lab.log.clear()
        return httpd.json_response(True)

    def pause(self, req):
        self.lab.endpoint_of(req.params["service"]).pause()
        return httpd.json_response(True)

    def resume(self, req):
        self.lab.endpoint_of(req.params["service"]).resume()
        return httpd.json_response(True)

    def etcd(self, req):
        if self.lab.etcd is None:
            raise httpd.HttpError(400, "this lab has no etcd")
        if req.params["action"] == "stop":
            self.lab.etcd.stop()
        else:
            self.lab.etcd.start()
        return httpd.json_response(True)

    def kv(self, req):
        prefix = req.arg("prefix", "cilium/")
        data = self.lab.kv.backend.list(prefix)
        return httpd.json_response({k: v.decode("utf-8", "replace") for k, v in data.items()})

    def endpoints(self, req):
        return httpd.json_response(self.lab.node(req.params["node"]).cilium.endpoints())

    def policy(self, req):
        agent = self.lab.node(req.params["node"]).cilium
        return httpd.json_response({"revision": agent.policy_revision, "rules": agent.policy_rules()})

    def heartbeat_timeout(self, req):
        if self.lab.heartbeat is None:
            raise httpd.HttpError(400, "heartbeat is only watched with the etcd kvstore")
        self.lab.heartbeat.timeout = float((req.json() or {})["seconds"])
        self.lab.heartbeat.interval = self.lab.heartbeat.timeout / 4.0
        return httpd.json_response(True)

    def report(self, req):
        from tests.lab.report import drift_report
        return httpd.json_response(drift_report(self.lab))

    def alloc_start(self, req):
        spec = req.json() or {}
        try:
            node = self.lab.node(spec["node"])
        except KeyError:
            raise httpd.HttpError(404, "no such node %r" % spec.get("node"))
        alloc_id = self.lab.start_allocation(node, spec["job"], group=spec.get("group"),
                                             namespace=spec.get("namespace") or "default",
                                             job_meta=spec.get("meta") or None)
        return httpd.json_response({"id": alloc_id, "node": node.name})

    def alloc_stop(self, req):
        spec = req.json() or {}
        try:
            node = self.lab.stop_allocation(spec["alloc"], leak_endpoint=bool(spec.get("leak_endpoint")))
        except KeyError:
            raise httpd.HttpError(404, "no such allocation %r" % spec.get("alloc"))
        return httpd.json_response({"id": spec["alloc"], "node": node})

    def shutdown(self, req):
        self.stop_event.set()
        return httpd.json_response(True)


class UnixHTTPConnection(http.client.HTTPConnection):
    """http.client over a unix socket (the lab's control socket, a Cilium agent socket)."""

    def __init__(self, path, timeout=30):
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.unix_path)


class ControlClient:
    def __init__(self, socket_path, timeout=30):
        self.socket_path = socket_path
        self.timeout = timeout

    def call(self, method, path, body=None):
        conn = UnixHTTPConnection(self.socket_path, self.timeout)
        try:
            payload = json.dumps(body).encode() if body is not None else None
            conn.request(method, path, body=payload,
                         headers={"Content-Type": "application/json"} if payload else {})
            resp = conn.getresponse()
            data = resp.read()
            if resp.status >= 300:
                raise RuntimeError("lab control %s %s: HTTP %s: %s"
                                   % (method, path, resp.status, data.decode("utf-8", "replace")))
            return json.loads(data.decode()) if data else None
        finally:
            conn.close()
