"""Stand-in for docker/podman inside the role test container (test infrastructure only).

Speaks just the sub-commands the roles use: ``image inspect``, ``pull``, ``create``, ``cp``,
``rm``, ``stop`` and ``run``.  ``run IMAGE cilium-agent FLAGS`` serves the lab's Cilium agent
simulator (tests/lab/cilium.py, copied to /opt/netreap-lab) on the socket the real agent would
create - ``cilium.sock`` in the host directory mounted at /var/run/cilium - configured from the
agent flags, so the role's health wait talks to an API-faithful agent.  The command line is
recorded in STATE/<name>.argv.json for the tests.  Test knobs, read from the --env-file like the
real container would: NETREAP_FAKE_KVSTORE_STATE / NETREAP_FAKE_KVSTORE_MSG (kvstore health) and
NETREAP_FAKE_START_DELAY (seconds before the socket appears).

The socket gets the permissions the real agent gives it (docs/upstream.md#cilium-agent-deployment):
mode 0660, owner root, group ``cilium`` only when the group file of the container - the image's
own, which has no such group, or a host file mounted at /etc/group - names that group.
"""

import json
import os
import re
import signal
import sys
import threading
import time

STATE = "/var/lib/netreap-fake-runtime"
LAB = "/opt/netreap-lab"
CILIUM_CNI = """#!/bin/sh
# cilium-cni stand-in copied out of %(image)s by the netreap.cilium role tests.
echo "Cilium CNI plugin %(version)s (netreap.cilium test stand-in)"
"""


def image_marker(ref):
    return os.path.join(STATE, "images", re.sub(r"[^A-Za-z0-9_.-]", "_", ref))


def version_of(ref):
    match = re.search(r":v?(\d+\.\d+\.\d+)$", ref)
    if not match:
        sys.exit("fake runtime: cannot tell the Cilium version of image %s" % ref)
    return match.group(1)


def take_options(args, with_value):
    """Split ``[options...] positional...``; returns (options dict of lists, positionals)."""
    options, rest = {}, list(args)
    while rest and rest[0].startswith("-"):
        word = rest.pop(0)
        if "=" in word:
            name, value = word.split("=", 1)
        elif word in with_value:
            name, value = word, rest.pop(0)
        else:
            name, value = word, "true"
        options.setdefault(name, []).append(value)
    return options, rest


def read_env_file(path):
    env = {}
    with open(path) as handle:
        for line in handle:
            line = line.rstrip("\n")
            if line and not line.startswith("#") and "=" in line:
                name, value = line.split("=", 1)
                env[name] = value
    return env


def socket_group(group_file):
    """GID of group ``cilium`` in the container's group file, or None (the image has none)."""
    if not group_file:
        return None
    with open(group_file) as handle:
        for line in handle:
            fields = line.strip().split(":")
            if len(fields) >= 3 and fields[0] == "cilium":
                return int(fields[2])
    return None


def kill_recorded(name):
    pid_file = os.path.join(STATE, name + ".pid")
    try:
        with open(pid_file) as handle:
            pid = int(handle.read())
        os.kill(pid, signal.SIGTERM)
        for _attempt in range(50):
            os.kill(pid, 0)
            time.sleep(0.1)
    except (OSError, ValueError):
        pass
    if os.path.exists(pid_file):
        os.unlink(pid_file)


def run_agent(args):
    options, rest = take_options(args, {"--name", "--env-file", "--volume", "-v", "--cap-add", "--network"})
    image, command, flags = rest[0], rest[1], rest[2:]
    name = options.get("--name", ["cilium-agent"])[-1]
    with open(os.path.join(STATE, name + ".argv.json"), "w") as handle:
        json.dump({"argv": sys.argv, "options": options, "image": image, "command": command,
                   "flags": flags}, handle, indent=1)
    if command != "cilium-agent":
        sys.exit("fake runtime: only cilium-agent can run, not %s" % command)
    mounts = dict(v.split(":")[1::-1] for v in options.get("--volume", []) + options.get("-v", []))
    socket_path = os.path.join(mounts["/var/run/cilium"], "cilium.sock")
    agent_flags, positional = take_options(flags, set())
    if positional:
        sys.exit("fake runtime: cilium-agent does not take arguments %s" % positional)

    def flag(flag_name, default=None):
        return agent_flags.get("--" + flag_name, [default])[-1]

    env = read_env_file(options["--env-file"][-1]) if "--env-file" in options else {}
    sys.path.insert(0, LAB)
    from tests.lab import httpd  # pylint: disable=import-outside-toplevel
    from tests.lab.cilium import CiliumAgentSim  # pylint: disable=import-outside-toplevel

    kvstore_status = None
    if env.get("NETREAP_FAKE_KVSTORE_STATE"):
        def kvstore_status():
            return env["NETREAP_FAKE_KVSTORE_STATE"], env.get("NETREAP_FAKE_KVSTORE_MSG", "")
    kv_options = dict(opt.split("=", 1) for opt in agent_flags.get("--kvstore-opt", []))
    agent = CiliumAgentSim(
        env.get("K8S_NODE_NAME", os.uname().nodename), version=version_of(image),
        kvstore=flag("kvstore", "etcd"), kvstore_status=kvstore_status,
        static_policy_dir=flag("static-cnp-path"), cluster_name=flag("cluster-name", "default"),
        cluster_id=int(flag("cluster-id", "0")), ipv4_range=flag("ipv4-range"),
        label_filter=agent_flags.get("--labels"), enable_l7_proxy=flag("enable-l7-proxy", "true") == "true",
        kvstore_options=kv_options)
    with open(os.path.join(STATE, name + ".pid"), "w") as handle:
        handle.write(str(os.getpid()))
    time.sleep(float(env.get("NETREAP_FAKE_START_DELAY", "0")))
    endpoint = httpd.serve_unix(agent, socket_path)
    gid = socket_group(mounts.get("/etc/group"))
    if gid is not None:
        os.chown(socket_path, 0, gid)
    os.chmod(socket_path, 0o660)
    print("fake cilium-agent %s serving %s" % (agent.profile["full_version"], socket_path), flush=True)
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_args: stopped.set())
    signal.signal(signal.SIGINT, lambda *_args: stopped.set())
    stopped.wait()
    endpoint.stop()
    print("fake cilium-agent stopped", flush=True)


def main():
    os.makedirs(os.path.join(STATE, "images"), exist_ok=True)
    args = sys.argv[1:]
    with open(os.path.join(STATE, "calls.log"), "a") as log:
        log.write(json.dumps(args) + "\n")
    verb, args = args[0], args[1:]
    if verb == "image" and args[:1] == ["inspect"]:
        if not os.path.exists(image_marker(args[-1])):
            sys.exit("Error: %s: image not known" % args[-1])
        print(json.dumps([{"Id": "fake"}]))
    elif verb == "pull":
        version_of(args[-1])
        open(image_marker(args[-1]), "w").close()
        print("fake-image-id")
    elif verb == "create":
        options, rest = take_options(args, {"--name"})
        with open(os.path.join(STATE, options["--name"][-1] + ".image"), "w") as handle:
            handle.write(rest[0])
        print("fake-container-id")
    elif verb == "cp":
        source, dest = args[-2], args[-1]
        name, path = source.split(":", 1)
        with open(os.path.join(STATE, name + ".image")) as handle:
            image = handle.read()
        if path != "/opt/cni/bin/cilium-cni":
            sys.exit("Error: %s: no such file in the image" % path)
        with open(dest, "w") as handle:
            handle.write(CILIUM_CNI % {"image": image, "version": version_of(image)})
        os.chmod(dest, 0o755)
    elif verb == "rm":
        name = args[-1]
        kill_recorded(name)
        for suffix in (".image",):
            if os.path.exists(os.path.join(STATE, name + suffix)):
                os.unlink(os.path.join(STATE, name + suffix))
    elif verb == "stop":
        kill_recorded(args[-1])
    elif verb == "run":
        run_agent(args)
    else:
        sys.exit("fake runtime: unsupported command %s" % verb)


if __name__ == "__main__":
    main()
