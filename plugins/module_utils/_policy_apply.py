# -*- coding: utf-8 -*-
# Copyright: netreap.cilium contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Internal to netreap.cilium (not a public API): applying a policy plan to a Cilium agent.

Reading the agent (capabilities, rules, flags), running a REST plan
(``PUT /policy`` with ``replace-with-labels``, or add-then-delete by revision label), and the
static policy directory (listing it for the planner; atomic file writes, waiting until the agent
has loaded them).  The plans themselves come from the pure code in ``_policy_plan.py``.
"""

from __future__ import annotations

import os
import time

from ansible.module_utils.common.text.converters import to_text

from ansible_collections.netreap.cilium.plugins.module_utils._cilium import agent_capabilities
from ansible_collections.netreap.cilium.plugins.module_utils._http import ServiceError, failure_message
from ansible_collections.netreap.cilium.plugins.module_utils._policy_decode import (
    OWNER_LABEL,
    STATIC_PREFIX,
    STATIC_SUFFIX,
    parse_version,
)
from ansible_collections.netreap.cilium.plugins.module_utils._policy_plan import files_in_agent
from ansible_collections.netreap.cilium.plugins.module_utils._policy_render import is_static_file_name
from ansible_collections.netreap.cilium.plugins.module_utils._run import Stop


# -- the agent ------------------------------------------------------------------------------------

def read_agent(client, static_dir):
    healthz = client.healthz()
    config = client.config()
    caps = agent_capabilities(healthz, config, static_dir)
    rules, revision = client.policy_get()
    status = (config or {}).get("status") or {}
    flags = status.get("daemonConfigurationMap") or {}
    minor = None
    if caps["version"]:
        try:
            minor = parse_version(caps["version"])
        except ValueError:
            minor = None
    return dict(caps=caps, rules=rules, revision=revision, minor=minor,
                flags={k: v for k, v in flags.items() if isinstance(v, bool)})


def put_failure(client, agent, exc):
    return Stop("%s; the agent kept its previous policy (revision %s)" % (
        failure_message("apply policy to Cilium agent at %s" % client.socket_path, exc), agent["revision"]),
        status=exc.status, policy_revision=agent["revision"])


def delete_by_labels(client, labels):
    """DELETE /policy with labels; ``None`` when nothing matched (<= 1.16 answers 500 "policy not found")."""
    try:
        return client.policy_delete(labels)
    except ServiceError as exc:
        if exc.status == 500 and "policy not found" in exc.body:
            return None
        raise


def execute_rest(client, agent, plan):
    """Run a REST plan; returns the agent's revision afterwards."""
    revision = agent["revision"]
    if plan["put"] is not None:
        try:
            revision = client.policy_put(plan["put"], replace_with_labels=plan["replace_with_labels"])
        except ServiceError as exc:
            raise put_failure(client, agent, exc)
    for labels in plan["delete"]:
        try:
            revision = delete_by_labels(client, labels) or revision
        except ServiceError as exc:
            done = "the new rules are in force (revision %s) but " % revision if plan["put"] is not None else ""
            raise Stop("%s%s; the next run retries" % (done, failure_message(
                "delete old policy rules %s from Cilium agent at %s" % (",".join(labels), client.socket_path), exc)),
                status=exc.status, policy_revision=revision)
    return revision


# -- static policy files ---------------------------------------------------------------------------

def read_static_dir(path):
    """The listing the planner takes: ``{name: content}`` of the ``*.yaml`` files (content only for
    names we could own) and our temp files; None for a missing directory."""
    if not os.path.isdir(path):
        return None
    out = {}
    try:
        names = sorted(os.listdir(path))
    except OSError as exc:
        raise Stop("cannot list static_policy_dir %s: %s" % (path, to_text(exc)))
    for name in names:
        if name.startswith("." + STATIC_PREFIX) and name.endswith(".tmp"):
            out[name] = None
        elif name.endswith(STATIC_SUFFIX):
            content = None
            if is_static_file_name(name):
                try:
                    with open(os.path.join(path, name), "rb") as handle:
                        content = to_text(handle.read(), errors="surrogate_or_replace")
                except (IOError, OSError) as exc:
                    raise Stop("cannot read %s: %s" % (os.path.join(path, name), to_text(exc)))
            out[name] = content
    return out


def write_atomically(directory, name, content):
    """Temp file (a dot file the agent ignores), fsync, rename: the agent sees old or new, never half."""
    final = os.path.join(directory, name)
    temp = os.path.join(directory, ".%s.%d.tmp" % (name, os.getpid()))  # a dot file: the agent skips it
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(content.encode("utf-8"))
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temp, 0o644)
        os.rename(temp, final)
    except BaseException:
        if os.path.exists(temp):
            os.unlink(temp)
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def wait_for_files(client, present, absent, timeout, sleep=time.sleep, clock=time.monotonic):
    """Poll GET /policy until the agent has rules from every ``present`` file and none from ``absent``."""
    deadline = clock() + timeout
    delay = 0.1
    while True:
        rules, revision = client.policy_get()
        loaded = files_in_agent(rules)
        missing = sorted(set(present) - loaded)
        stale = sorted(set(absent) & loaded)
        if (not missing and not stale) or clock() >= deadline:
            return revision, missing, stale
        sleep(delay)
        delay = min(delay * 2, 1.0)


def execute_static(client, agent, plan, static_dir, timeout):
    written, removed = [], []
    try:
        for name in plan["cleanup"]:
            os.unlink(os.path.join(static_dir, name))
        for name in plan["files"]:
            if name in plan["write"]:
                write_atomically(static_dir, name, plan["write"][name])
                written.append(name)
        for name in plan["remove"]:
            os.unlink(os.path.join(static_dir, name))
            removed.append(name)
    except (IOError, OSError) as exc:
        raise Stop("writing policy files in %s failed: %s (written: %s; removed: %s)" % (
            static_dir, to_text(exc), ", ".join(written) or "none", ", ".join(removed) or "none"),
            files_written=written, files_removed=removed)
    revision = agent["revision"]
    if timeout and timeout > 0:
        try:
            revision, missing, stale = wait_for_files(client, plan["files"], removed, timeout)
        except ServiceError as exc:
            raise Stop(failure_message("read Cilium agent at %s" % client.socket_path, exc),
                       files_written=written, files_removed=removed)
        if missing or stale:
            raise Stop(
                "the Cilium agent at %s did not pick up the policy files in %s within %ss (not loaded: %s; still "
                "loaded: %s): check that it runs with --static-cnp-path=%s and look for rejected files in its log; "
                "it keeps the previous version of a file it rejects" % (
                    client.socket_path, static_dir, timeout, ", ".join(missing) or "none",
                    ", ".join(stale) or "none", static_dir),
                files_written=written, files_removed=removed, policy_revision=revision)
    return revision, written, removed


def apply_plan(client, agent, steps, static_dir, timeout, progress):
    """Change the agent as ``steps`` (``plan_apply``) says: the static files, the REST rules, or
    both (an earlier method's leftovers); what was done goes into ``progress``."""
    revision = agent["revision"]
    if steps["static"] is not None and steps["method"] == "static-dir":
        revision, progress["files_written"], progress["files_removed"] = execute_static(
            client, agent, steps["static"], static_dir, timeout)
        if steps["rest_cleanup"]:
            revision = execute_rest(client, dict(agent, revision=revision), dict(put=None, delete=[[OWNER_LABEL]]))
    else:
        if steps["rest"] is not None and steps["rest"]["changed"]:
            revision = execute_rest(client, agent, steps["rest"])
        if steps["static"] is not None and steps["static"]["changed"]:
            revision, progress["files_written"], progress["files_removed"] = execute_static(
                client, dict(agent, revision=revision), steps["static"], static_dir, timeout)
    progress.update(policy_revision=revision, applied=True)
