"""Converge the collection's roles on this host with ansible-playbook, under a temporary prefix
with the service switches off: inventories, plays, variables and stub executables; and read the
names the roles set and default, for the checks of their naming rules."""

import os
import re
import shutil
import subprocess
import sys

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.dirname(sys.executable)


SECRETS = {"reaper_nomad_token": "nomad-7d1e-secret", "reaper_consul_token": 'consul"4b2f\\secret',
           "reaper_etcd_password": "etcd-9a0c-secret"}


def collections_path():
    if os.environ.get("ANSIBLE_COLLECTIONS_PATH"):
        return os.environ["ANSIBLE_COLLECTIONS_PATH"]
    try:
        import ansible_collections.netreap.cilium as package
    except ImportError:
        return os.path.join(ROOT, "build", "collections")
    return os.path.dirname(os.path.dirname(os.path.dirname(list(package.__path__)[0])))


def role_vars(root, **overrides):
    """The role with the service switch off and every path under ``root``."""
    values = {
        "reaper_user_manage": False,
        "reaper_service_manage": False,
        "reaper_user": "root",
        "reaper_group": "root",
        "reaper_working_dir": str(root / "var/lib/netreap"),
        "reaper_config_dir": str(root / "etc/netreap"),
        "reaper_unit_dir": str(root / "etc/systemd/system"),
        "reaper_ansible_playbook_bin": str(root / "opt/netreap/bin/ansible-playbook"),
        "reaper_extra_vars": {"netreap_node_gc_min_age": 3600},
        "reaper_environment": {"ANSIBLE_COLLECTIONS_PATH": "/opt/netreap/collections", "ODD": "50% $HOME"},
        "reaper_nomad_inventory": {"nomad_address": "https://nomad.service.consul:4646"},
    }
    values.update(SECRETS)
    values.update(overrides)
    return values


def converge(work, variables, *args):
    book = work / "play.yml"
    book.write_text(yaml.safe_dump([{"name": "Reaper", "hosts": "controller", "gather_facts": False,
                                     "roles": [{"role": "netreap.cilium.reaper", "vars": variables}]}]))
    inventory = work / "inventory.yml"
    inventory.write_text(yaml.safe_dump({"all": {"hosts": {"controller": {
        "ansible_connection": "local", "ansible_python_interpreter": sys.executable}}}}))
    proc = subprocess.run([os.path.join(BIN, "ansible-playbook"), "-i", str(inventory), str(book)] + list(args),
                          capture_output=True, text=True, env=ansible_env(), cwd=str(work), timeout=300,
                          check=False)
    return proc.returncode, proc.stdout + proc.stderr


def ansible_env(**extra):
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=collections_path(), ANSIBLE_NOCOLOR="1",
               ANSIBLE_RETRY_FILES_ENABLED="0", ANSIBLE_DEPRECATION_WARNINGS="0",
               ANSIBLE_LOCALHOST_WARNING="0", ANSIBLE_INVENTORY_UNPARSED_WARNING="0")
    env.update(extra)
    return env


def playbook(tmp_path, plays, inventory, *args):
    book = tmp_path / "play.yml"
    book.write_text(yaml.safe_dump(plays, sort_keys=False))
    inv = tmp_path / "inventory.yml"
    inv.write_text(yaml.safe_dump(inventory, sort_keys=False))
    proc = subprocess.run([os.path.join(BIN, "ansible-playbook"), "-i", str(inv), str(book)] + list(args),
                          capture_output=True, text=True, env=ansible_env(), cwd=str(tmp_path), check=False)
    return proc.returncode, proc.stdout + proc.stderr


def local_hosts(*names, **host_vars):
    hosts = {name: dict({"ansible_connection": "local", "ansible_python_interpreter": sys.executable},
                        **host_vars.get(name, {})) for name in names}
    return {"all": {"children": {"cilium_nodes": {"hosts": hosts}}}}


def render_vars(prefix, **overrides):
    """The node role with every service switch off and every path under ``prefix``."""
    root = str(prefix)
    values = {
        "node_container_runtime_bin": "/usr/bin/podman",
        "node_cni_bin_dir": root + "/opt/cni/bin",
        "node_cni_config_dir": root + "/opt/cni/config",
        "kernel_modules_load_dir": root + "/etc/modules-load.d",
        "kernel_modules_load_manage": False,
        "bpffs_unit_dir": root + "/etc/systemd/system",
        "bpffs_service_manage": False,
        "cni_state_dir": root + "/var/lib/netreap-cilium",
        "cni_plugins_source": "none",
        "cni_cilium_cni_source": "file",
        "cni_cilium_cni_file": root + "/controller/cilium-cni",
        "cni_nomad_restart_manage": False,
        "agent_unit_dir": root + "/etc/systemd/system",
        "agent_config_dir": root + "/etc/cilium",
        "agent_service_manage": False,
        "agent_image_pull_manage": False,
        "agent_docker_daemon_json": root + "/etc/docker/daemon.json",
        # The socket group is created by the systemd scenario (the Molecule node scenario, extensions/molecule/node), not on this host.
        "agent_socket_group_manage": False,
    }
    values.update(overrides)
    return values


def node_play(variables, gather=False):
    return [{"name": "Render the node roles", "hosts": "cilium_nodes", "gather_facts": gather,
             "vars": variables, "roles": [{"role": "netreap.cilium.node"}]}]


def make_verify_root(root):
    """A --root for systemd-analyze: the system units plus stub executables the units call."""
    shutil.copytree("/usr/lib/systemd/system", str(root / "usr/lib/systemd/system"), symlinks=True,
                    dirs_exist_ok=True)
    for path in ("usr/bin/podman", "usr/bin/docker", "usr/bin/touch", "bin/mkdir", "bin/sh", "bin/mount",
                 "bin/mountpoint"):
        stub = root / path
        stub.parent.mkdir(parents=True, exist_ok=True)
        stub.write_text("#!/bin/sh\nexit 0\n")
        stub.chmod(0o755)
    (root / "etc/systemd/system").mkdir(parents=True, exist_ok=True)


def make_stub(root):
    """The host's unit directory, and a stand-in ansible-playbook: records its argv, leaves a
    background child (like an ssh ControlPersist master) holding every inherited descriptor."""
    (root / "etc/systemd/system").mkdir(parents=True, exist_ok=True)
    stub = root / "opt/netreap/bin/ansible-playbook"
    stub.parent.mkdir(parents=True, exist_ok=True)
    stub.write_text("#!/bin/sh\n"
                    "printf '%s\\n' \"$@\" > \"$STUB_RECORD\"\n"
                    "sleep 60 >/dev/null 2>&1 </dev/null &\n"
                    "echo $! > \"$STUB_RECORD.child\"\n")
    stub.chmod(0o755)
    return stub


# --- names inside the roles ---------------------------------------------------------------------

SET_FACT = ("ansible.builtin.set_fact", "set_fact")


def _task_names(tasks):
    """(kind, name) of every variable a task list sets: register, set_fact, vars, loop_var."""
    for task in tasks or []:
        if not isinstance(task, dict):
            continue
        if "register" in task:
            yield "register", task["register"]
        for key in SET_FACT:
            if isinstance(task.get(key), dict):
                yield from (("set_fact", name) for name in task[key] if name != "cacheable")
        if isinstance(task.get("vars"), dict):
            yield from (("vars", name) for name in task["vars"])
        loop_var = (task.get("loop_control") or {}).get("loop_var")
        if loop_var:
            yield "loop_var", loop_var
        for key in ("block", "rescue", "always"):
            yield from _task_names(task.get(key))


def _load(path):
    with open(path, encoding="utf-8") as handle:
        return yaml.safe_load(handle)


def role_public_names(roles_dir):
    """The variables users set: every role's defaults and documented options."""
    names = set()
    for role in sorted(os.listdir(roles_dir)):
        defaults = os.path.join(roles_dir, role, "defaults", "main.yml")
        specs = os.path.join(roles_dir, role, "meta", "argument_specs.yml")
        if os.path.exists(defaults):
            names.update(_load(defaults) or {})
        if os.path.exists(specs):
            for spec in (_load(specs) or {}).get("argument_specs", {}).values():
                names.update(spec.get("options", {}))
    return names


def role_set_names(roles_dir):
    """(role, file, kind, name) of every variable the roles set themselves: vars/main.yml, and
    register, set_fact, vars and loop_var in their tasks and handlers."""
    found = []
    for role in sorted(os.listdir(roles_dir)):
        base = os.path.join(roles_dir, role)
        for folder in ("tasks", "handlers"):
            directory = os.path.join(base, folder)
            for name in sorted(os.listdir(directory)) if os.path.isdir(directory) else []:
                if name.endswith((".yml", ".yaml")):
                    rel = folder + "/" + name
                    found.extend((role, rel, kind, var) for kind, var in _task_names(_load(os.path.join(directory, name))))
        variables = os.path.join(base, "vars", "main.yml")
        if os.path.exists(variables):
            found.extend((role, "vars/main.yml", "vars", var) for var in _load(variables) or {})
    return found


def unprefixed_internals(roles_dir):
    """Internal variables (set by a role, not one of the roles' public variables) whose name does
    not start with ``__<role>_``, as readable lines."""
    public = role_public_names(roles_dir)
    return ["%s/%s: %s %s should be __%s_..." % (role, rel, kind, name, role)
            for role, rel, kind, name in role_set_names(roles_dir)
            if name not in public and not name.startswith("__%s_" % role)]


# A default() whose fallback is another variable of the collection's vocabulary: one thing under
# two names. Ansible's own variables (ansible_*, groups, ...) and omit are not vocabulary.
DEFAULT_TO_NAME = re.compile(r"\|\s*(?:default|d)\(\s*([A-Za-z_][A-Za-z0-9_]*)\s*[,)]")


def default_doubles(roles_dir, prefixes):
    """``file:line: text`` of every ``x | default(y)`` in the roles where y is a vocabulary name
    (starting with one of ``prefixes``)."""
    found = []
    for top, _dirs, files in sorted(os.walk(roles_dir)):
        for name in sorted(files):
            if not name.endswith((".yml", ".yaml", ".j2")):
                continue
            path = os.path.join(top, name)
            with open(path, encoding="utf-8") as handle:
                for lineno, line in enumerate(handle, 1):
                    for match in DEFAULT_TO_NAME.finditer(line):
                        if match.group(1).lstrip("_").startswith(prefixes):
                            found.append("%s:%d: %s" % (os.path.relpath(path, roles_dir), lineno, line.strip()))
    return found
