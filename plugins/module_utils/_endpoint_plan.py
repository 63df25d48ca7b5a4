# -*- coding: utf-8 -*-
# Copyright: netreap.cilium contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Internal to netreap.cilium (not a public API): plan Cilium endpoint labels and reaping from Nomad allocations.

Pure code, no I/O: the module ``cilium_endpoint`` reads the agent's endpoint list and the node's
allocations, calls ``plan_endpoints`` (twice when some endpoints' allocations must be confirmed
gone one by one), and applies the result.

Labels are Netreap's (``reapers/endpoints.go``): ``netreap:nomad.job_id``,
``netreap:nomad.namespace``, ``netreap:nomad.task_group_id`` and ``nomad:<key>=<value>`` for the
job meta merged with the allocation's task-group meta (group wins), optionally task meta.
Differences from Netreap, on purpose:

* meta keys can be filtered (``meta_include`` / ``meta_exclude``, shell patterns);
* meta keys and values that a Cilium selector cannot express (Kubernetes label syntax) are
  dropped by default (``invalid_meta=skip``), or sanitised, or kept verbatim like Netreap;
* meta keys ``nomad.job_id``, ``nomad.namespace`` and ``nomad.task_group_id`` are always
  dropped: Cilium keys labels by key alone, so ``nomad:nomad.job_id=x`` would replace the
  ``netreap:nomad.job_id`` label and let a job claim another job's identity;
* labels are compared in Cilium's canonical form, without ``reserved:`` labels, so an agent
  whose ``--labels`` filter moves labels to ``derived`` (or leaves the endpoint at
  ``reserved:init``) is not patched again on every run.
"""

from __future__ import annotations

import fnmatch
import re

NETREAP_SOURCE = "netreap"
META_SOURCE = "nomad"
JOB_KEY = "nomad.job_id"
NAMESPACE_KEY = "nomad.namespace"
GROUP_KEY = "nomad.task_group_id"
CORE_KEYS = (JOB_KEY, NAMESPACE_KEY, GROUP_KEY)

CLIENT_TERMINAL = ("complete", "failed", "lost")
DESIRED_TERMINAL = ("stop", "evict")
INVALID_META_CHOICES = ("skip", "sanitize", "keep")
PATCH_STATE = "waiting-for-identity"

# Nomad allocation IDs are lower-case UUIDs (helper/uuid.Generate).  Anything else (a Docker
# container ID, a name) was not created by Nomad's CNI call and is never touched.
ALLOCATION_ID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")

# Kubernetes label syntax, which Cilium applies to selector keys (after turning "src:key" into
# "src.key") and values: k8s.io/apimachinery/pkg/util/validation.
_LABEL_VALUE_RE = re.compile(r"(?:[A-Za-z0-9](?:[-A-Za-z0-9_.]*[A-Za-z0-9])?)?")
_QUALIFIED_NAME_RE = re.compile(r"[A-Za-z0-9](?:[-A-Za-z0-9_.]*[A-Za-z0-9])?")
_DNS1123_SUBDOMAIN_RE = re.compile(r"[a-z0-9](?:[-a-z0-9]*[a-z0-9])?(?:\.[a-z0-9](?:[-a-z0-9]*[a-z0-9])?)*")
MAX_LABEL_VALUE = 63


# ---------------------------------------------------------------------------------------------
# Labels
# ---------------------------------------------------------------------------------------------

def parse_label(text):
    """Cilium's ``labels.ParseLabel``: ``[source:]key[=value]`` -> ``(source, key, value)``."""
    text = str(text)
    source, rest = "", text
    if text.startswith("$"):
        source, rest = "reserved", text[1:]
    else:
        idx = text.find(":")
        if idx >= 0:
            source, rest = text[:idx], text[idx + 1:]
        elif text.startswith("reserved."):
            source, rest = "reserved", text[len("reserved."):]
    key, sep, value = rest.partition("=")
    if sep and key == "" and source == "reserved":
        key, value = value, ""
    return source or "unspec", key, value


def label_string(source, key, value):
    """Cilium's ``Label.String()``: ``source:key=value``, or ``source:key`` for an empty value."""
    if value:
        return "%s:%s=%s" % (source, key, value)
    return "%s:%s" % (source, key)


def canonical_label(text):
    """A label as the agent prints it back (``nomad:x=`` comes back as ``nomad:x``)."""
    return label_string(*parse_label(text))


def is_label_value(value):
    """Valid Kubernetes label value: empty, or <= 63 of ``[-A-Za-z0-9_.]`` with alphanumeric ends."""
    return len(value) <= MAX_LABEL_VALUE and _LABEL_VALUE_RE.fullmatch(value) is not None


def is_selector_key(source, key):
    """Can a Cilium selector name ``source:key``?  Cilium validates ``source.key`` as a
    Kubernetes qualified name (``[prefix/]name``, name <= 63 characters)."""
    if not key or "=" in key:
        return False
    extended = "%s.%s" % (source, key)
    prefix, slash, name = extended.rpartition("/")
    if slash:
        if "/" in prefix or not prefix or len(prefix) > 253 or not _DNS1123_SUBDOMAIN_RE.fullmatch(prefix):
            return False
    return 0 < len(name) <= MAX_LABEL_VALUE and _QUALIFIED_NAME_RE.fullmatch(name) is not None


def sanitize_label_value(value):
    """Map a value onto label syntax: runs of other characters become ``-``, the result is cut
    to 63 characters and trimmed to alphanumeric ends.  Returns '' when nothing is left.
    Different values can map to the same label (``a b`` and ``a-b``): that is the price of
    ``invalid_meta=sanitize``."""
    text = re.sub(r"[^-A-Za-z0-9_.]+", "-", value)[:MAX_LABEL_VALUE]
    return re.sub(r"^[^A-Za-z0-9]+|[^A-Za-z0-9]+$", "", text)


# ---------------------------------------------------------------------------------------------
# Allocations
# ---------------------------------------------------------------------------------------------

def _str_map(value):
    if not isinstance(value, dict):
        return {}
    return {str(k): "" if v is None else str(v) for k, v in value.items()}


def is_terminal(alloc):
    """Terminal for endpoint purposes: the client finished it (complete/failed/lost), or the
    servers want it stopped (stop/evict) and it is no longer running (a stopping allocation
    that still runs, or whose node is disconnected - client status ``unknown`` - is kept)."""
    client = alloc.get("ClientStatus") or ""
    desired = alloc.get("DesiredStatus") or ""
    if client in CLIENT_TERMINAL:
        return True
    return desired in DESIRED_TERMINAL and client not in ("running", "unknown")


def task_group_of(alloc):
    job = alloc.get("Job") or {}
    name = alloc.get("TaskGroup") or ""
    for group in job.get("TaskGroups") or []:
        if isinstance(group, dict) and group.get("Name") == name:
            return group
    return {}


def allocation_meta(alloc, task_meta=False):
    """``(meta, conflicts)``: job meta merged with the task group's meta (group wins).

    With ``task_meta``, each task's meta is merged over that (task wins); a key then becomes a
    label when every task that has it agrees on the value - one endpoint serves the whole
    group, so a key whose tasks disagree is dropped and listed in ``conflicts``.
    """
    job = alloc.get("Job") or {}
    group = task_group_of(alloc)
    meta = _str_map(job.get("Meta"))
    meta.update(_str_map(group.get("Meta")))
    conflicts = []
    if task_meta:
        tasks = [t for t in group.get("Tasks") or [] if isinstance(t, dict)]
        values = {}
        for task in tasks:
            effective = dict(meta)
            effective.update(_str_map(task.get("Meta")))
            for key, value in effective.items():
                values.setdefault(key, set()).add(value)
        for key in sorted(values):
            if len(values[key]) == 1:
                meta[key] = next(iter(values[key]))
            else:
                meta.pop(key, None)
                conflicts.append(key)
    return meta, conflicts


class LabelSettings:
    """What users choose about meta labels (module options)."""

    def __init__(self, meta_include=("*",), meta_exclude=(), task_meta=False, invalid_meta="skip"):
        if invalid_meta not in INVALID_META_CHOICES:
            raise ValueError("invalid_meta must be one of %s" % ", ".join(INVALID_META_CHOICES))
        self.meta_include = list(meta_include if meta_include is not None else ("*",))
        self.meta_exclude = list(meta_exclude or ())
        self.task_meta = bool(task_meta)
        self.invalid_meta = invalid_meta

    def wants_key(self, key):
        included = any(fnmatch.fnmatchcase(key, pattern) for pattern in self.meta_include)
        return included and not any(fnmatch.fnmatchcase(key, pattern) for pattern in self.meta_exclude)


def desired_labels(alloc, settings=None):
    """``(labels, notes)`` for one allocation: sorted canonical label strings, and a note per
    meta key that was dropped or sanitised (``{key, value, action, reason}``).

    Raises ValueError when the allocation lacks its job ID or task group (nothing to label by).
    """
    settings = settings or LabelSettings()
    job = alloc.get("Job") or {}
    job_id = alloc.get("JobID") or job.get("ID") or ""
    namespace = alloc.get("Namespace") or job.get("Namespace") or "default"
    group = alloc.get("TaskGroup") or ""
    if not job_id or not group:
        raise ValueError("Nomad returned the allocation without JobID or TaskGroup")
    # The three Netreap labels are kept verbatim, as Netreap wrote them: existing identities
    # and policies depend on them.  (A job ID such as "batch/periodic-1700000000" is a valid
    # label but no selector can name it.)
    labels = {JOB_KEY: (NETREAP_SOURCE, JOB_KEY, job_id),
              NAMESPACE_KEY: (NETREAP_SOURCE, NAMESPACE_KEY, namespace),
              GROUP_KEY: (NETREAP_SOURCE, GROUP_KEY, group)}
    notes = []

    def note(key, value, action, reason):
        notes.append({"key": key, "value": value, "action": action, "reason": reason})

    meta, conflicts = allocation_meta(alloc, settings.task_meta)
    for key in conflicts:
        note(key, None, "dropped", "tasks of group %s set different values" % group)
    for key in sorted(meta):
        value = meta[key]
        if not settings.wants_key(key):
            continue  # filtered on purpose: not worth a note
        if key in CORE_KEYS:
            note(key, value, "dropped", "would replace the netreap:%s label" % key)
            continue
        key_ok = is_selector_key(META_SOURCE, key)
        value_ok = is_label_value(value)
        if key_ok and value_ok:
            labels[key] = (META_SOURCE, key, value)
            continue
        if not key or "=" in key:
            note(key, value, "dropped", "a label key cannot be empty or contain '='")
            continue
        if settings.invalid_meta == "keep":
            labels[key] = (META_SOURCE, key, value)
            continue
        if not key_ok:
            note(key, value, "dropped", "not a valid label key (Kubernetes qualified name): "
                                        "no selector can match it")
            continue
        if settings.invalid_meta == "sanitize":
            fixed = sanitize_label_value(value)
            if fixed:
                labels[key] = (META_SOURCE, key, fixed)
                note(key, value, "sanitized", "label value %s" % fixed)
                continue
        note(key, value, "dropped", "not a valid label value (at most 63 of [-A-Za-z0-9_.], "
                                    "alphanumeric at both ends): no selector can match it")
    return sorted(label_string(*lbl) for lbl in labels.values()), notes


def change_request(alloc, labels):
    """The ``EndpointChangeRequest`` Netreap sent with its PATCH (``state`` is required)."""
    body = {"container-id": alloc["ID"], "labels": list(labels), "state": PATCH_STATE}
    if alloc.get("Name"):
        body["container-name"] = alloc["Name"]
    return body


# ---------------------------------------------------------------------------------------------
# Endpoints
# ---------------------------------------------------------------------------------------------

def endpoint_facts(endpoint):
    """What planning needs from one ``GET /v1/endpoint`` item."""
    status = endpoint.get("status") or {}
    ids = status.get("external-identifiers") or {}
    labels = status.get("labels") or {}
    security = [canonical_label(text) for text in labels.get("security-relevant") or []]
    derived = [canonical_label(text) for text in labels.get("derived") or []]
    container_id = ids.get("container-id") or ""
    matched_by = "container-id" if container_id else None
    attachment = ids.get("cni-attachment-id") or ""
    if not container_id and attachment:
        # "<container id>:<interface>" (Cilium 1.15+); Nomad's container ID is the alloc ID.
        container_id = attachment.partition(":")[0]
        matched_by = "cni-attachment-id"
    addresses = []
    for pair in (status.get("networking") or {}).get("addressing") or []:
        for family in ("ipv4", "ipv6"):
            if isinstance(pair, dict) and pair.get(family):
                addresses.append(pair[family])
    reserved = sorted(parse_label(text)[1] for text in security if parse_label(text)[0] == "reserved")
    return {
        "id": endpoint.get("id"),
        "container_id": container_id,
        "matched_by": matched_by,
        "addresses": addresses,
        "security": security,
        "derived": derived,
        # Reserved endpoints (host, health, ...) are the agent's own; "init" is what a fresh CNI
        # endpoint carries until it gets labels.
        "reserved": [name for name in reserved if name != "init"],
        "init": "init" in reserved,
    }


def all_labels(facts):
    """Every label of the endpoint (security-relevant and derived), sorted: what reports show."""
    return sorted(set(facts["security"] + facts["derived"]))


def current_labels(facts):
    """The endpoint's labels as Netreap compared them (security-relevant + derived), in
    canonical form and without ``reserved:`` labels: the agent keeps ``reserved:init`` when
    its ``--labels`` filter makes none of our labels identity-relevant."""
    return sorted({text for text in facts["security"] + facts["derived"]
                   if parse_label(text)[0] != "reserved"})


# ---------------------------------------------------------------------------------------------
# The plan
# ---------------------------------------------------------------------------------------------

def plan_endpoints(endpoints, allocations, node_id, settings=None, reap=True, reap_min_age=0,
                   now_ns=None, lookups=None):
    """Decide what to do with every endpoint of one agent.

    ``endpoints``: ``GET /v1/endpoint``.  ``allocations``: the node's full allocations (one
    ``GET /v1/node/<id>/allocations``; it silently leaves out namespaces the token cannot read).
    ``lookups``: ``{alloc_id: ("found", alloc) | ("gone", None) | ("error", message)}`` - the
    answers to ``GET /v1/allocation/<id>`` for container IDs missing from ``allocations``.
    Without an answer for such an ID, nothing is decided for its endpoint: the ID is listed in
    ``lookups_needed`` (only when ``reap`` is on) and the endpoint counts as skipped, so an
    allocation hidden by ACLs or a failed read is never mistaken for a vanished one.

    Returns ``{"patches", "reaps", "unchanged", "skipped", "lookups_needed", "notes",
    "warnings"}``; every item names the endpoint ``id``.
    """
    settings = settings or LabelSettings()
    lookups = lookups or {}
    by_id = {a["ID"]: a for a in allocations if isinstance(a, dict) and a.get("ID")}
    by_address = {}
    for alloc in by_id.values():
        if is_terminal(alloc):
            continue  # its address may already belong to a new allocation
        net = alloc.get("NetworkStatus") or {}
        for address in {net.get("Address") or "", net.get("AddressIPv6") or ""} - {""}:
            by_address.setdefault(address, []).append(alloc)
    plan = {"patches": [], "reaps": [], "unchanged": [], "skipped": [], "lookups_needed": [],
            "notes": [], "warnings": []}

    def skip(facts, reason, allocation=None):
        plan["skipped"].append({"id": facts["id"], "container_id": facts["container_id"] or None,
                                "allocation": allocation, "reason": reason})

    for endpoint in endpoints or []:
        facts = endpoint_facts(endpoint)
        if facts["reserved"]:
            skip(facts, "reserved endpoint (%s)" % ", ".join("reserved:" + r for r in facts["reserved"]))
            continue
        alloc, matched_by = None, facts["matched_by"]
        cid = facts["container_id"]
        if cid:
            if not ALLOCATION_ID_RE.fullmatch(cid):
                skip(facts, "container ID %s is not a Nomad allocation ID" % cid)
                continue
            alloc = by_id.get(cid)
            if alloc is None:
                answer = lookups.get(cid)
                if not reap:
                    skip(facts, "allocation %s is not in this node's allocation list (reap is off)" % cid)
                    continue
                if answer is None:
                    plan["lookups_needed"].append(cid)
                    skip(facts, "allocation %s is not in this node's allocation list; not confirmed gone" % cid)
                    continue
                kind, value = answer
                if kind == "gone":
                    plan["reaps"].append(_reap_item(facts, cid, "allocation no longer exists in Nomad"))
                    continue
                if kind == "error":
                    skip(facts, "kept: Nomad could not confirm that allocation %s is gone (%s)" % (cid, value), cid)
                    continue
                alloc = value
                if (alloc.get("NodeID") or node_id) != node_id:
                    skip(facts, "allocation %s runs on Nomad node %s, not %s" % (cid, alloc.get("NodeID"), node_id),
                         cid)
                    continue
        else:
            found = []
            for address in facts["addresses"]:
                for candidate in by_address.get(address, []):
                    if candidate not in found:
                        found.append(candidate)
            if len(found) > 1:
                skip(facts, "no container ID, and its address belongs to %d allocations" % len(found))
                continue
            if not found:
                what = "reserved:init endpoint" if facts["init"] else "endpoint"
                skip(facts, "%s without a container ID, and no allocation of this node has its address" % what)
                continue
            alloc, matched_by = found[0], "ip"

        alloc_id = alloc["ID"]
        if is_terminal(alloc):
            why = "allocation is terminal (client status %s, desired status %s)" % (
                alloc.get("ClientStatus") or "?", alloc.get("DesiredStatus") or "?")
            if not reap:
                skip(facts, why + "; reap is off", alloc_id)
                continue
            if reap_min_age and now_ns is not None:
                modified = alloc.get("ModifyTime") or 0
                age = (now_ns - modified) / 1e9 if modified else None
                if age is None or age < reap_min_age:
                    skip(facts, "%s for %s; kept until reap_min_age (%ss)" % (
                        why, "an unknown time" if age is None else "%ds" % max(age, 0), reap_min_age), alloc_id)
                    continue
            plan["reaps"].append(_reap_item(facts, alloc_id, why))
            continue

        try:
            labels, notes = desired_labels(alloc, settings)
        except ValueError as exc:
            skip(facts, str(exc), alloc_id)
            continue
        job = alloc.get("JobID") or (alloc.get("Job") or {}).get("ID")
        for item in notes:
            plan["notes"].append(dict(item, allocation=alloc_id, job=job,
                                      namespace=alloc.get("Namespace") or "default"))
        item = {"id": facts["id"], "allocation": alloc_id, "name": alloc.get("Name"), "job": job,
                "namespace": alloc.get("Namespace") or "default", "task_group": alloc.get("TaskGroup"),
                "matched_by": matched_by, "before": all_labels(facts), "labels": labels}
        if current_labels(facts) == labels and facts["matched_by"] is not None:
            plan["unchanged"].append({"id": facts["id"], "allocation": alloc_id})
            if facts["init"]:
                plan["warnings"].append(
                    "endpoint %s (allocation %s) carries its labels but keeps the reserved:init identity: the "
                    "agent's --labels filter makes none of them identity-relevant (add netreap:.* to --labels)"
                    % (facts["id"], alloc_id))
            continue
        item["request"] = change_request(alloc, labels)
        plan["patches"].append(item)
    return plan


def _reap_item(facts, alloc_id, reason):
    return {"id": facts["id"], "allocation": alloc_id, "reason": reason, "labels": all_labels(facts)}


def summarize_notes(notes):
    """One line per distinct (namespace, job, key, action, reason): meta problems repeat for
    every allocation of a job, warnings should not."""
    seen = {}
    for item in notes:
        ident = (item.get("namespace"), item.get("job"), item["key"], item["action"], item["reason"])
        if ident not in seen:
            seen[ident] = dict(item, allocations=0)
            seen[ident].pop("allocation", None)
        seen[ident]["allocations"] += 1
    return [seen[k] for k in sorted(seen, key=lambda k: tuple(str(p) for p in k))]


def param_error(params):
    """What is wrong with ``cilium_endpoint``'s parameters, or None."""
    for option in ("reap_min_age", "retry_deadline"):
        if params[option] < 0:
            return "%s must be 0 or more seconds, got %s" % (option, params[option])
    for option in ("meta_include", "meta_exclude"):
        for pattern in params[option]:
            # fnmatch reads an unclosed "[" literally and "" matches no key: both are typos.
            if not pattern.strip() or "[" in re.sub(r"\[!?\]?[^\]]*\]", "", pattern):
                return "%s: %r is not a meta key pattern (an empty pattern or an unclosed '[')" % (option, pattern)
    return None


def outcome(plan, done=None):
    """What was (in check mode: would be) labelled, reaped and skipped: ``done`` holds what the
    writes reported (``labelled``, ``reaped``, ``vanished``, ``errors``); None means every
    planned change."""
    if done is None:
        labelled, reaped, vanished, errors = plan["patches"], plan["reaps"], [], []
    else:
        labelled, reaped, vanished, errors = done["labelled"], done["reaped"], done["vanished"], done["errors"]
    skipped = list(plan["skipped"]) + [
        {"id": item["id"], "container_id": item["allocation"], "allocation": item["allocation"],
         "reason": "endpoint vanished before it could be labelled"} for item in vanished]
    return dict(labelled=[{k: v for k, v in item.items() if k != "request"} for item in labelled],
                reaped=list(reaped), skipped_endpoints=skipped, errors=list(errors))


def run_warnings(plan, notes, skipped):
    """The run's warnings: the plan's, dropped meta keys (once per job and key), and endpoints
    kept because Nomad could not confirm their allocation is gone."""
    warnings = list(plan["warnings"])
    for note in notes:
        if note["action"] == "dropped":
            warnings.append("meta key %r of job %s/%s (%d allocation(s)) left out: %s" % (
                note["key"], note["namespace"], note["job"], note["allocations"], note["reason"]))
    unconfirmed = [s for s in skipped if s["reason"].startswith("kept: Nomad could not confirm")]
    if unconfirmed:
        warnings.append("%d endpoint(s) kept because Nomad could not confirm their allocation is gone (see "
                        "skipped_endpoints); is the Nomad token allowed to read every namespace? "
                        "(it needs the read-job capability there: namespace \"*\" { capabilities = "
                        "[\"read-job\"] })" % len(unconfirmed))
    return warnings


def endpoint_diff(done):
    """Labels before and after, per endpoint, from ``outcome``."""
    before, after = {}, {}
    for item in done["labelled"]:
        key = "endpoint %s (%s)" % (item["id"], item["allocation"])
        before[key] = item["before"]
        after[key] = item["labels"]
    for item in done["reaped"]:
        before["endpoint %s (%s)" % (item["id"], item["allocation"])] = item["labels"]
    return {"before": before, "after": after}
