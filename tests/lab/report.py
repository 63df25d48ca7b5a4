"""What a lab looks like from outside: the drift a reaper should fix, counted from the lab's own
state (independently of the collection's code), and a before/after table for the demo.

It models no upstream behaviour; terminal allocation states follow
docs/upstream.md#nomad-allocations.
"""

import json

from tests.lab import policy_rules
from tests.lab.scenarios import POLICY_KEY, netreap_labels

TERMINAL_CLIENT = ("complete", "failed", "lost")
TERMINAL_DESIRED = ("stop", "evict")


def _expected_labels(alloc):
    job = alloc.get("Job") or {}
    group_meta = {}
    for group in job.get("TaskGroups") or []:
        if group.get("Name") == alloc.get("TaskGroup"):
            group_meta = group.get("Meta") or {}
    return netreap_labels(alloc["JobID"], alloc["Namespace"], alloc["TaskGroup"],
                          job.get("Meta") or {}, group_meta)


# A requirement that a K8s label is absent holds for every Nomad endpoint (they carry no k8s:
# labels), so it does not change what a selector selects here.  Policy files pin peer selectors
# with these so that the agent's rewrite on load leaves them alone
# (docs/upstream.md#static-files-peer-selectors-rewritten).
_ALWAYS_MET = ({"key": "k8s:io.kubernetes.pod.namespace", "operator": "DoesNotExist"},
               {"key": "k8s:io.cilium.k8s.policy.cluster", "operator": "DoesNotExist"})


def _drop_always_met(value):
    if isinstance(value, list):
        return [_drop_always_met(v) for v in value if v not in _ALWAYS_MET]
    if isinstance(value, dict):
        out = {k: _drop_always_met(v) for k, v in value.items()}
        if "matchExpressions" in out and not out["matchExpressions"]:
            del out["matchExpressions"]
        return out
    return value


def _canonical(rules):
    """Rules without their labels, as comparable JSON strings."""
    return {json.dumps(_drop_always_met({k: v for k, v in r.items() if k != "labels"}), sort_keys=True)
            for r in rules}


def node_report(lab, node, wanted_rules):
    allocations = {a["ID"]: a for a in lab.nomad.allocations(node.node_id)}
    unlabelled = outdated = orphaned = 0
    for ep in node.cilium.endpoints():
        status = ep.get("status") or {}
        container = (status.get("external-identifiers") or {}).get("container-id")
        if not container:
            continue
        labels = status.get("labels") or {}
        current = sorted(l for l in (labels.get("security-relevant") or []) + (labels.get("derived") or [])
                         if not l.startswith("reserved:"))
        alloc = allocations.get(container)
        if alloc is None or alloc.get("ClientStatus") in TERMINAL_CLIENT or \
                alloc.get("DesiredStatus") in TERMINAL_DESIRED:
            orphaned += 1
        elif not current:
            unlabelled += 1
        elif current != _expected_labels(alloc):
            outdated += 1
    agent_rules = _canonical(node.cilium.policy_rules())
    return {
        "unlabelled endpoints": unlabelled,
        "outdated endpoint labels": outdated,
        "orphaned endpoints": orphaned,
        "policy rules missing": len(wanted_rules - agent_rules),
        "policy revision": node.cilium.policy_revision,
    }


def drift_report(lab):
    """Counts of everything the reaper should clean up, cluster-wide and per node."""
    nomad_names = {n["Name"] for n in lab.nomad.nodes()}
    kv_nodes = lab.kv.node_names()
    used = {use[0] for use in lab.kv.identity_uses()}
    identities = lab.kv.identities()
    entry = lab.consul.kv_get(POLICY_KEY)
    wanted = set()
    if entry and entry.get("Value"):
        sanitized = policy_rules.validate_rules(json.loads(entry["Value"].decode()), lab.profile)
        wanted = _canonical(sanitized)
    cluster = {
        "stale kvstore nodes": len([n for n in kv_nodes if n not in nomad_names]),
        "unused identities": len([i for i, lkey in identities.items() if lkey not in used]),
    }
    if lab.heartbeat is not None:  # only etcd-backed agents watch the heartbeat
        cluster["heartbeat written"] = lab.kv.heartbeat_revision() is not None
        cluster["agents' kvstore state"] = lab.heartbeat.status()[0]
    return {
        "cluster": cluster,
        "nodes": {n.name: node_report(lab, n, wanted) for n in lab.nodes},
    }


def format_table(before, after):
    """A two-column before/after table of ``drift_report`` results."""
    rows = [("cluster", key, before["cluster"][key], after["cluster"][key]) for key in before["cluster"]]
    for node in before["nodes"]:
        for key in before["nodes"][node]:
            rows.append((node, key, before["nodes"][node][key], after["nodes"][node].get(key)))
    width = max(len(r[0]) + len(r[1]) for r in rows) + 3
    lines = ["%-*s %10s %10s" % (width, "", "before", "after")]
    for scope, key, old, new in rows:
        mark = "" if old == new else "  <- fixed" if key not in ("policy revision",) else ""
        lines.append("%-*s %10s %10s%s" % (width, "%s: %s" % (scope, key), old, new, mark))
    return "\n".join(lines)
