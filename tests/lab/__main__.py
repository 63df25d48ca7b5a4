"""``python -m tests.lab up|down|serve|fault|requests|status|report|alloc`` — run the lab from a shell.

``up`` starts the lab in a background process and returns once every service answers, leaving
``lab.env``, ``inventory.yml`` and ``lab.json`` in the state dir; ``down`` stops it. ``alloc
start`` and ``alloc stop`` start and stop allocations in a running lab the way Nomad and
cilium-cni do.
"""

import argparse
import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time

from tests.lab.control import ControlClient, ControlService


def _add_lab_options(parser):
    parser.add_argument("--state-dir", required=True)
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--cilium", default="1.16", help="version profile: 1.13 … 1.19")
    parser.add_argument("--kvstore", choices=("consul", "etcd"), default=None,
                        help="default: consul up to 1.16, etcd from 1.17")  # docs/upstream.md#kvstore-backends
    parser.add_argument("--scenario", default="clean")
    parser.add_argument("--acl", action="store_true", help="turn on Consul and Nomad ACLs")
    parser.add_argument("--tls", nargs="?", const="tls", choices=("tls", "mtls"), default=None,
                        help="serve Consul, Nomad and etcd over HTTPS with a CA made at start "
                             "(<state-dir>/tls); --tls mtls also requires client certificates")
    # 2 x HeartbeatWriteInterval (docs/upstream.md#kvstore-heartbeat).
    parser.add_argument("--heartbeat-timeout", type=float, default=120.0,
                        help="seconds without a kvstore heartbeat before etcd agents degrade")
    # Nomad writes `{}` on its event stream every 30 s (docs/upstream.md#nomad-event-stream-wire).
    parser.add_argument("--nomad-event-heartbeat", type=float, default=30.0,
                        help="seconds between two heartbeats of the Nomad event stream")


def _kvstore(args):
    if args.kvstore:
        return args.kvstore
    from tests.lab.cilium import PROFILES
    return "consul" if PROFILES[args.cilium]["consul_kvstore"] else "etcd"


def _control(state_dir):
    return ControlClient(os.path.join(os.path.abspath(state_dir), "control.sock"))


def cmd_serve(args):
    from tests.lab import httpd
    from tests.lab.lab import Lab

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *a: stop.set())
    signal.signal(signal.SIGINT, lambda *a: stop.set())
    lab = Lab(args.state_dir, nodes=args.nodes, cilium=args.cilium, kvstore=_kvstore(args),
              scenario=args.scenario, acl=args.acl, heartbeat_timeout=args.heartbeat_timeout,
              tls=args.tls or False, nomad_event_heartbeat=args.nomad_event_heartbeat)
    lab.start()
    control = httpd.serve_unix(ControlService(lab, stop),
                               os.path.join(lab.state_dir, "control.sock"))
    with open(os.path.join(lab.state_dir, "lab.pid"), "w") as handle:
        handle.write(str(os.getpid()))
    try:
        while not stop.wait(0.5):
            pass
    finally:
        control.stop()
        lab.stop()
        for name in ("lab.pid",):
            try:
                os.unlink(os.path.join(lab.state_dir, name))
            except OSError:
                pass
    return 0


def cmd_up(args):
    state_dir = os.path.abspath(args.state_dir)
    os.makedirs(state_dir, exist_ok=True)
    sock = os.path.join(state_dir, "control.sock")
    if os.path.exists(os.path.join(state_dir, "lab.pid")):
        try:
            _control(state_dir).call("GET", "/status")
            print("lab already running in %s (run `down` first)" % state_dir, file=sys.stderr)
            return 1
        except OSError:
            pass
    for stale in ("control.sock", "lab.json", "lab.env", "inventory.yml"):
        path = os.path.join(state_dir, stale)
        if os.path.exists(path):
            os.unlink(path)
    argv = [sys.executable, "-m", "tests.lab", "serve", "--state-dir", state_dir,
            "--nodes", str(args.nodes), "--cilium", args.cilium, "--kvstore", _kvstore(args),
            "--scenario", args.scenario, "--heartbeat-timeout", str(args.heartbeat_timeout),
            "--nomad-event-heartbeat", str(args.nomad_event_heartbeat)]
    if args.acl:
        argv.append("--acl")
    if args.tls:
        argv += ["--tls", args.tls]
    log = open(os.path.join(state_dir, "lab.log"), "ab")
    repo_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ)
    env["PYTHONPATH"] = repo_root + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            cwd=repo_root, env=env, start_new_session=True)
    log.close()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            with open(os.path.join(state_dir, "lab.log")) as handle:
                tail = handle.read()[-3000:]
            print("lab failed to start (exit %s):\n%s" % (proc.returncode, tail), file=sys.stderr)
            return 1
        if os.path.exists(sock):
            try:
                status = _control(state_dir).call("GET", "/status")
                break
            except OSError:
                pass
        time.sleep(0.1)
    else:
        proc.kill()
        print("lab did not answer within 60s; see %s/lab.log" % state_dir, file=sys.stderr)
        return 1
    print("lab up: Cilium %s, kvstore %s, scenario %s, %d nodes"
          % (status["cilium"], status["kvstore"], status["scenario"], len(status["nodes"])))
    etcd = "  etcd %s" % status["etcd"] if status["etcd"] else ""
    print("  consul %s  nomad %s%s" % (status["consul"], status["nomad"], etcd))
    print("  source %s/lab.env; inventory %s/inventory.yml" % (state_dir, state_dir))
    return 0


def cmd_down(args):
    state_dir = os.path.abspath(args.state_dir)
    pid_file = os.path.join(state_dir, "lab.pid")
    try:
        with open(pid_file) as handle:
            pid = int(handle.read().strip())
    except (OSError, ValueError):
        print("no lab running in %s" % state_dir)
        return 0
    try:
        _control(state_dir).call("POST", "/shutdown")
    except http.client.HTTPException:
        pass  # the reply was cut short: the lab already stops (the wait below decides)
    except (OSError, RuntimeError):
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        os.kill(pid, signal.SIGKILL)
    # etcd is stopped by the lab; make sure no orphan survives a crashed lab process.
    try:
        with open(os.path.join(state_dir, "etcd.pid")) as handle:
            os.kill(int(handle.read().strip()), signal.SIGTERM)
    except (OSError, ValueError):
        pass
    for name in ("lab.pid", "etcd.pid", "control.sock"):
        try:
            os.unlink(os.path.join(state_dir, name))
        except OSError:
            pass
    print("lab down")
    return 0


def cmd_status(args):
    print(json.dumps(_control(args.state_dir).call("GET", "/status"), indent=2))
    return 0


def cmd_report(args):
    """Print the drift the reaper should fix; with --before FILE, a before/after table."""
    from tests.lab.report import format_table
    report = _control(args.state_dir).call("GET", "/report")
    if args.save:
        with open(args.save, "w") as handle:
            json.dump(report, handle)
    if args.before:
        with open(args.before) as handle:
            print(format_table(json.load(handle), report))
    elif not args.save:
        print(json.dumps(report, indent=2))
    return 0


def cmd_fault(args):
    spec = {"service": args.service, "action": args.action, "status": args.status,
            "body": args.body, "method": args.method, "path": args.path, "count": args.count,
            "delay": args.delay}
    print(json.dumps(_control(args.state_dir).call("POST", "/faults", spec)))
    return 0


def cmd_requests(args):
    query = "&".join("%s=%s" % (k, v) for k, v in (("service", args.service),
                                                   ("method", args.method),
                                                   ("path", args.path)) if v)
    data = _control(args.state_dir).call("GET", "/requests" + ("?" + query if query else ""))
    print(data["count"] if args.count else json.dumps(data["entries"], indent=2))
    return 0


def cmd_alloc(args):
    control = _control(args.state_dir)
    if args.alloc_command == "start":
        meta = dict(item.split("=", 1) for item in args.meta or [])
        answer = control.call("POST", "/alloc/start", {
            "node": args.node, "job": args.job, "group": args.group,
            "namespace": args.namespace, "meta": meta})
    else:
        answer = control.call("POST", "/alloc/stop", {"alloc": args.alloc,
                                                      "leak_endpoint": args.leak_endpoint})
    print(answer["id"])
    return 0


def _add_alloc_commands(sub):
    alloc = sub.add_parser("alloc", help="start or stop an allocation in a running lab")
    verbs = alloc.add_subparsers(dest="alloc_command", required=True)
    start = verbs.add_parser("start", help="place an allocation and run it; prints its ID")
    start.add_argument("--state-dir", required=True)
    start.add_argument("--node", required=True, help="node name (nomad-client-N)")
    start.add_argument("--job", required=True)
    start.add_argument("--group", help="task group (default: the job's name)")
    start.add_argument("--namespace", default="default")
    start.add_argument("--meta", action="append", metavar="KEY=VALUE", help="job meta (repeatable)")
    stop = verbs.add_parser("stop", help="stop an allocation; its endpoint goes as cilium-cni's "
                                         "DEL removes it")
    stop.add_argument("--state-dir", required=True)
    stop.add_argument("--alloc", required=True, help="allocation ID")
    stop.add_argument("--leak-endpoint", action="store_true",
                      help="leave the endpoint behind, as after a failed CNI DEL")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m tests.lab")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("up", "serve"):
        _add_lab_options(sub.add_parser(name))
    for name in ("down", "status"):
        sub.add_parser(name).add_argument("--state-dir", required=True)
    fault = sub.add_parser("fault", help="inject a fault into a running lab")
    fault.add_argument("--state-dir", required=True)
    fault.add_argument("--service", required=True, help="consul, nomad, cilium (all agents) or a node name")
    fault.add_argument("--action", default="status")
    fault.add_argument("--status", type=int, default=500)
    fault.add_argument("--body", default="")
    fault.add_argument("--method")
    fault.add_argument("--path")
    fault.add_argument("--count", type=int, default=1)
    fault.add_argument("--delay", type=float, default=30.0)
    report = sub.add_parser("report", help="what a reaper should fix in a running lab")
    report.add_argument("--state-dir", required=True)
    report.add_argument("--save", help="write the report (JSON) to this file")
    report.add_argument("--before", help="print a before/after table against this saved report")
    reqs = sub.add_parser("requests", help="print the request log of a running lab")
    reqs.add_argument("--state-dir", required=True)
    reqs.add_argument("--service")
    reqs.add_argument("--method")
    reqs.add_argument("--path")
    reqs.add_argument("--count", action="store_true")
    _add_alloc_commands(sub)
    args = parser.parse_args(argv)
    return {"alloc": cmd_alloc, "up": cmd_up, "serve": cmd_serve, "down": cmd_down, "status": cmd_status,
            "fault": cmd_fault, "requests": cmd_requests, "report": cmd_report}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
