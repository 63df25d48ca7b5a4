"""Run playbooks/reap.yml against a lab with ansible-playbook and read its JSON output (the
``lab_json`` stdout callback in ``callback_plugins``)."""

import json
import os
import subprocess
import sys
import threading

BIN = os.path.dirname(sys.executable)
CALLBACKS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "callback_plugins")
# Garbage collection without the minimum age, so a lab run reaps what it marked at once.
FAST_GC_VARS = {"netreap_node_gc_min_age": 0, "netreap_identity_gc_min_age": 0}
FAST_GC = [arg for name, value in FAST_GC_VARS.items() for arg in ("-e", "%s=%s" % (name, value))]


def reap(lab, *args, check=False, lab_env=True):
    """Run reap.yml with the json callback; returns (rc, parsed output)."""
    env = dict(os.environ, ANSIBLE_STDOUT_CALLBACK="lab_json", ANSIBLE_CALLBACK_PLUGINS=CALLBACKS,
               ANSIBLE_PYTHON_INTERPRETER=sys.executable, ANSIBLE_HOST_KEY_CHECKING="false")
    if lab_env:
        env.update(lab.env())
    cmd = [os.path.join(BIN, "ansible-playbook"), "-i", os.path.join(lab.state_dir, "inventory.yml"),
           "netreap.cilium.reap"] + list(args) + (["--check"] if check else [])
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, check=False)
    try:
        out = json.loads(proc.stdout[proc.stdout.index("{"):])
    except ValueError:
        raise AssertionError("no JSON from ansible-playbook (rc %s):\n%s\n%s"
                             % (proc.returncode, proc.stdout[-3000:], proc.stderr[-3000:]))
    return proc.returncode, out


def reap_together(lab, *args, runs=2):
    """Start ``runs`` reap.yml runs at once; returns their ``(rc, output)`` once all ended."""
    results = []
    threads = [threading.Thread(target=lambda: results.append(reap(lab, *args))) for unused in range(runs)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def task_results(out, task_name):
    """``{host: result}`` of the first task whose name starts with ``task_name``."""
    for play in out["plays"]:
        for task in play["tasks"]:
            if task["task"]["name"].startswith(task_name):
                return task["hosts"]
    raise KeyError(task_name)


def task_hosts(out, task_name):
    """Every host that ran a task whose name starts with ``task_name``: the free strategy reports a
    task once for each host that starts it."""
    return {host for play in out["plays"] for task in play["tasks"]
            if task["task"]["name"].startswith(task_name) for host in task["hosts"]}


def summary(out):
    return task_results(out, "Show the summary")["localhost"]["netreap_summary"]


def changed_tasks(out):
    return sorted({task["task"]["name"] for play in out["plays"] for task in play["tasks"]
                   for result in task["hosts"].values() if result.get("changed")})
