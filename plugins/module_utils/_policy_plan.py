# -*- coding: utf-8 -*-
# Copyright: netreap.cilium contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Internal to netreap.cilium (not a public API): Cilium policy rules - plan.

Pure code (no I/O) behind the ``cilium_policy`` module: from what the module read (the
parameters, the Consul entry, the source file's bytes, the agent's state and the static policy
directory's listing) decide what to publish, which rules and files change and how, with the
result fields and diffs to report.  ``plan_rest`` / ``plan_static``: what to PUT, DELETE,
write or remove so that the agent is never without our rules during an update and never
loses rules it does not own.
"""

from __future__ import annotations

import hashlib
from collections import Counter

from ansible.module_utils.common.text.converters import to_text

from ansible_collections.netreap.cilium.plugins.module_utils._policy_decode import (
    CONSUL_MAX_VALUE_SIZE,
    DIGEST_KEY,
    DIRECTORY_FILE_KEY,
    DIRECTORY_SOURCE,
    OWNER_LABEL,
    OWNER_SOURCE,
    REVISION_KEY,
    STATIC_PREFIX,
    SUPPORTED_MINORS,
    agent_rule_refs,
    consul_value,
    format_version,
    diff_refs,
    is_owned_rule,
    label_value,
    labelled_for_agent,
    normalize_rules,
    policy_revision,
    parse_release,
    policy_revision,
    PolicyError,
    PolicyInputError,
    revision_label,
    rule_digest,
    rule_refs,
)
from ansible_collections.netreap.cilium.plugins.module_utils._policy_render import (
    is_owned_static_file,
    render_policy_file,
    static_file_names,
    static_header_ref,
)
from ansible_collections.netreap.cilium.plugins.module_utils._policy_validate import (
    PolicyValidationError,
    ValidationTarget,
    validate_rules,
)


# ============================================================================================
# REST plans
# ============================================================================================

def plan_rest(desired, agent_rules, method, agent_revision=None):
    """What to do in an agent with a REST policy API.

    ``method`` is ``replace-with-labels`` (1.15-1.18: one PUT that atomically swaps every rule
    carrying our owner label for the new ones) or ``add-then-delete`` (<= 1.14: PUT the new
    rules with a new revision label, then DELETE our older revisions).  Rules we do not own are
    never touched; ``DELETE /policy`` is never sent without labels.

    Returns ``{"changed", "revision", "put", "replace_with_labels", "delete", "diff"}`` where
    ``put`` is the labelled rules (or None) and ``delete`` a list of label lists.
    """
    revision = policy_revision(desired)
    owned = [r for r in agent_rules if is_owned_rule(r)]
    diff = diff_refs(agent_rule_refs(agent_rules), rule_refs(desired))
    want_digests = Counter(rule_digest(r) for r in desired)

    def digests(rules):
        return Counter(label_value(r, DIGEST_KEY, OWNER_SOURCE) for r in rules)

    def base(value):
        return (value or "").split("-", 1)[0]

    owned_revisions = sorted({label_value(r, REVISION_KEY, OWNER_SOURCE) or "" for r in owned})
    plan = {"changed": False, "revision": revision, "put": None, "replace_with_labels": None,
            "delete": [], "diff": diff}
    if digests(owned) == want_digests and all(base(v) == revision for v in owned_revisions):
        if len(owned_revisions) <= 1:
            return plan
    plan["changed"] = True
    if not desired:
        plan["delete"] = [[OWNER_LABEL]]
        return plan
    if method == "replace-with-labels":
        plan["put"] = labelled_for_agent(desired, revision)
        plan["replace_with_labels"] = [OWNER_LABEL]
        return plan
    # add-then-delete
    current = [r for r in owned if base(label_value(r, REVISION_KEY, OWNER_SOURCE)) == revision]
    if current and digests(current) == want_digests and \
            len({label_value(r, REVISION_KEY, OWNER_SOURCE) for r in current}) == 1:
        # An earlier run added this revision but did not finish deleting the old one.
        new_label = label_value(current[0], REVISION_KEY, OWNER_SOURCE)
    else:
        new_label = revision if not current else "%s-%s" % (revision, agent_revision or len(owned))
        plan["put"] = labelled_for_agent(desired, new_label)
    plan["revision"] = new_label
    plan["delete"] = [[OWNER_LABEL, revision_label(v)] for v in owned_revisions if v and v != new_label]
    if any(not label_value(r, REVISION_KEY, OWNER_SOURCE) for r in owned):
        # Owned but without a revision (written by hand?): only "all of ours" can target them,
        # which is safe once the new revision is in place only if nothing else carries it.
        plan["unlabelled_owned"] = True
    return plan


# ============================================================================================
# Static policy files
# ============================================================================================

def plan_static(desired, existing, rest_owned_count=0):
    """Files to write and remove in the static policy directory.

    ``existing``: ``{file name: content or None}`` of the directory (``*.yaml`` and our temp
    files).  Returns ``{"changed", "write": {name: content}, "remove": [names], "conflicts",
    "files", "diff", "cleanup"}``; the caller writes first, then removes, so the agent always
    has every rule that is in both the old and the new policy.
    """
    names = static_file_names(desired)
    refs = rule_refs(desired)
    wanted = {}
    for rule, name, (ref, unused) in zip(desired, names, refs):
        wanted[name] = render_policy_file(rule, name, ref)
    ours = {n: c for n, c in existing.items() if is_owned_static_file(n, c)}
    conflicts = sorted(n for n in wanted if n in existing and n not in ours)
    write = {n: c for n, c in wanted.items() if ours.get(n) != c}
    remove = sorted(n for n in ours if n not in wanted)
    cleanup = sorted(n for n in existing if n.startswith("." + STATIC_PREFIX) and n.endswith(".tmp"))

    def content_digest(text):
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    old_refs = [(static_header_ref(ours[n]) or n, content_digest(ours[n])) for n in sorted(ours)]
    new_refs = [(ref, content_digest(wanted[n])) for n, (ref, unused) in zip(names, refs)]
    diff = diff_refs(old_refs, new_refs)
    return {"changed": bool(write or remove or cleanup or rest_owned_count), "write": write,
            "remove": remove, "conflicts": conflicts, "files": names, "cleanup": cleanup,
            "diff": diff, "before": {n: ours[n] for n in sorted(set(write) | set(remove)) if n in ours},
            "after": write}


# ============================================================================================
# The module's plan
# ============================================================================================

def check_params(params):
    """The parameter combinations ``cilium_policy`` refuses."""
    sources = [k for k in ("rules", "src") if params[k] is not None] + (["from_consul"] if params["from_consul"] else [])
    if len(sources) > 1:
        raise PolicyError("parameters are mutually exclusive: %s" % ", ".join(sources))
    if params["state"] == "present" and not sources:
        raise PolicyError("state=present needs one of rules, src or from_consul")
    if params["state"] == "absent" and (sources or params["publish"] or not params["apply"]):
        raise PolicyError("state=absent removes this collection's rules from the local agent: it needs "
                          "apply=true and takes no rules, src, from_consul or publish")
    if params["publish"] and params["from_consul"]:
        raise PolicyError("publish and from_consul together would write back what was read; choose one")


def desired_rules(params, consul_entry, src_data=None):
    """The rules wanted: ``[]`` for state=absent, else from Consul, the ``src`` file's bytes or ``rules``."""
    if params["state"] == "absent":
        return []
    try:
        if params["from_consul"]:
            if consul_entry is None:
                raise PolicyError("Consul key %s does not exist: nothing to apply (publish a policy first; "
                                  "publish an empty list [] to remove our rules)" % params["consul_key"])
            value = consul_entry.get("Value") or b""
            if not value.strip():
                raise PolicyError("Consul key %s is empty: nothing to apply (publish an empty list [] to "
                                  "remove our rules)" % params["consul_key"])
            return normalize_rules(value)
        if params["src"] is not None:
            try:
                return normalize_rules(src_data)
            except PolicyInputError as exc:
                raise PolicyInputError("policy file %s: %s" % (params["src"], exc))
        return normalize_rules(params["rules"])
    except PolicyInputError as exc:
        where = "Consul key %s: " % params["consul_key"] if params["from_consul"] else ""
        raise PolicyError("%sinvalid policy: %s; nothing was published or applied" % (where, exc))


def validation_targets(params, agent):
    """The local agent's version with its flags (when applying), plus ``cilium_versions``; every
    supported version when there is neither (publishing or validating for a whole cluster)."""
    try:
        releases = sorted({parse_release(v) for v in params["cilium_versions"] or []},
                          key=lambda r: (r[0], 10 ** 6 if r[1] is None else r[1]))
    except ValueError as exc:
        raise PolicyError("cilium_versions: %s" % exc)
    targets = []
    if agent is not None and agent["minor"] is not None:
        flags = agent["flags"]
        try:  # the agent's patch release decides the wording of its messages
            patch = parse_release(agent["caps"]["version"])[1]
        except (KeyError, TypeError, ValueError):
            patch = None
        targets.append(ValidationTarget(agent["minor"], flags.get("EnableL7Proxy"),
                                        flags.get("EnableNodeSelectorLabels"), flags.get("EnableICMPRules"),
                                        patch=patch))
    elif not releases:
        releases = [(m, None) for m in SUPPORTED_MINORS]
    return targets + [ValidationTarget(m, patch=p) for m, p in releases if m not in {t.minor for t in targets}]


def choose_method(requested, agent, static_dir):
    caps = agent["caps"]
    version = caps["version"] or "of unknown version"
    if requested == "auto":
        if caps["policy_methods"]:
            return caps["policy_methods"][0]
        if caps["version"] is None:
            # Only a 1.18+ agent whose status probes have not all run yet reports no version (the kvstore
            # state does not matter: docs/upstream.md#cilium-healthz-version); a static policy directory works
            # whatever the version (the agent has one only from 1.16), so use it when we know it.
            if static_dir:
                return "static-dir"
            raise PolicyError("the Cilium agent reports no version, so the apply method cannot be chosen: "
                              "set method")
        if caps["static_policy_supported"]:
            raise PolicyError("Cilium %s has no REST policy write API (removed in 1.19): set static_policy_dir "
                              "to the agent's --static-cnp-path" % version)
        raise PolicyError("Cilium %s offers no way to apply policy" % version)
    known = caps["version"] is not None
    if requested == "replace-with-labels" and known and not caps["replace_with_labels"]:
        raise PolicyError("method replace-with-labels needs Cilium 1.15 to 1.18; the agent is %s (use %s)" % (
            version, "add-then-delete" if caps["rest_policy_write"] else "static-dir"))
    if requested == "add-then-delete" and known and not caps["rest_policy_write"]:
        raise PolicyError("method add-then-delete needs the REST policy API (Cilium up to 1.18); the agent is "
                          "%s (use static-dir)" % version)
    if requested == "static-dir":
        if known and not caps["static_policy_supported"]:
            raise PolicyError("method static-dir needs Cilium 1.16 or later (--static-cnp-path); the agent is %s"
                              % version)
        if not static_dir:
            raise PolicyError("method static-dir needs static_policy_dir (the agent's --static-cnp-path)")
    return requested


def rest_writable(agent):
    return agent["caps"]["rest_policy_write"] or agent["caps"]["version"] is None


def files_in_agent(rules):
    """Names of the policy files the agent has rules from: their labels, or on Cilium 1.19 the
    ``Labels`` of its ``PolicyEntry`` objects (one or more per rule; every rule 1.17+ accepts has
    at least one ingress/egress item, so at least one entry): docs/upstream.md#get-policy-in-119-policyentry."""
    names = set()
    for rule in rules:
        value = label_value(rule, DIRECTORY_FILE_KEY, DIRECTORY_SOURCE)
        if value:
            names.add(value)
    return names


def refs_text(refs):
    return "".join("%s %s\n" % (ref, digest) for ref, digest in refs)


def plan_publish(key, entry, desired):
    """What publishing ``desired`` to Consul key ``key`` (read as ``entry``) changes.

    Returns ``({"value", "changed", "cas"}, result fields, diffs, warnings)``."""
    value = consul_value(desired)
    size = len(value.encode("utf-8"))
    if size > CONSUL_MAX_VALUE_SIZE:
        raise PolicyError("the policy is %d bytes as JSON, more than Consul's limit of %d bytes (512 KiB) for "
                          "one value; nothing was published or applied" % (size, CONSUL_MAX_VALUE_SIZE))
    old_rules, old_text, warnings = None, None, []
    if entry is not None:
        old_text = to_text(entry.get("Value") or b"", errors="surrogate_or_replace")
        try:
            old_rules = normalize_rules(entry.get("Value") or b"")
        except PolicyInputError as exc:
            warnings.append("the current value of Consul key %s is not a valid policy (%s); publishing replaces "
                            "it" % (key, exc))
    publish = dict(value=value, changed=old_rules != desired, cas=entry["ModifyIndex"] if entry else 0)
    fields = dict(publish_changes=diff_refs(rule_refs(old_rules or []), rule_refs(desired)),
                  published=publish["changed"])
    diffs = []
    if publish["changed"]:
        diffs.append(dict(before_header="consul:%s" % key, after_header="consul:%s" % key,
                          before=old_text or "", after=value))
    return publish, fields, diffs, warnings


def plan_apply(state, requested, agent, desired, static_dir, listing, socket_path):
    """How the agent's rules and the static directory change, from the agent's state and the
    directory's ``listing`` (``{name: content}``, None when the directory does not exist).

    Returns ``(plan, result fields, diffs)``; plan is ``{"method", "rest", "static", "rest_cleanup"}``."""
    method = None if state == "absent" else choose_method(requested, agent, static_dir)
    if listing is None and method == "static-dir":
        raise PolicyError("static_policy_dir %s does not exist or is not a directory (create it and start the "
                          "agent with --static-cnp-path=%s)" % (static_dir, static_dir))
    owned = [r for r in agent["rules"] if is_owned_rule(r)]
    plan = dict(method=method, rest=None, static=None, rest_cleanup=False)
    if method in ("replace-with-labels", "add-then-delete"):
        plan["rest"] = plan_rest(desired, agent["rules"], method, agent["revision"])
        changes = plan["rest"]["diff"]
        if listing:  # files of an earlier static-dir run go once the REST rules are in force
            plan["static"] = plan_static([], listing)
    elif method == "static-dir":
        # REST rules of an earlier run go once the files are loaded
        plan["rest_cleanup"] = bool(owned) and rest_writable(agent)
        plan["static"] = plan_static(desired, listing, len(owned) if plan["rest_cleanup"] else 0)
        if plan["static"]["conflicts"]:
            raise PolicyError("%s already holds %s, which this collection did not write: rename or remove it; "
                              "nothing was published or applied" % (static_dir, ", ".join(plan["static"]["conflicts"])))
        changes = plan["static"]["diff"]
    else:  # state=absent: every rule and file of ours, by whatever method it got there
        if owned and rest_writable(agent):
            plan["rest"] = plan_rest([], agent["rules"], "replace-with-labels")
        old = agent_rule_refs(agent["rules"])
        if listing:
            plan["static"] = plan_static([], listing)
            old += [(static_header_ref(listing[n]) or n, n) for n in plan["static"]["remove"]]
        changes = diff_refs(old, [])
    fields = dict(method=method, apply_changes=changes)
    if plan["static"] is not None:
        fields.update(files_written=sorted(plan["static"]["write"]), files_removed=plan["static"]["remove"])
    fields["applied"] = bool((plan["rest"] and plan["rest"]["changed"]) or
                             (plan["static"] and plan["static"]["changed"]))
    diffs = []
    if plan["rest"] is not None and plan["rest"]["changed"]:
        header = "cilium:%s (rules owned by netreap.cilium: name digest)" % socket_path
        diffs.append(dict(before_header=header, after_header=header, before=refs_text(agent_rule_refs(agent["rules"])),
                          after=refs_text(rule_refs(desired))))
    if plan["static"] is not None:
        for name in sorted(set(plan["static"]["write"]) | set(plan["static"]["remove"])):
            path = "%s/%s" % (static_dir.rstrip("/"), name)
            diffs.append(dict(before_header=path, after_header=path, before=plan["static"]["before"].get(name, ""),
                              after=plan["static"]["write"].get(name, "")))
    return plan, fields, diffs


def unloaded_warning(agent, plan):
    """What to say when the agent runs no rules from some of our files in an unchanged static
    directory (None when it runs them all, or there is no such directory)."""
    if plan is None or plan["method"] != "static-dir":
        return None
    missing = sorted(set(plan["static"]["files"]) - files_in_agent(agent["rules"]))
    if not missing:
        return None
    return ("the Cilium agent has no rules from %s: check its --static-cnp-path and its log (it keeps the previous "
            "version of a file it rejects)" % ", ".join(missing))


def plan_policy(params, entry, src_data, agent, listing, socket_path):
    """What ``cilium_policy`` publishes and applies, from what it read: ``{"publish", "apply",
    "result", "diffs", "warnings"}`` (the result fields, the diffs and warnings to report)."""
    todo = dict(publish=None, apply=None, diffs=[], warnings=[])
    desired = desired_rules(params, entry, src_data)
    todo["result"] = result = dict(published=False, applied=False, rule_count=len(desired),
                                   policy_hash=policy_revision(desired))
    if params["publish"] or params["from_consul"]:
        result.update(consul_key=params["consul_key"], consul_index=entry["ModifyIndex"] if entry else 0)
    if agent is not None:
        result.update(agent_version=agent["caps"]["version"], policy_revision=agent["revision"],
                      previous_policy_revision=agent["revision"])
    targets = validation_targets(params, agent)
    result["validated_for"] = [format_version(t.minor) for t in sorted(targets, key=lambda t: t.minor)]
    try:
        validate_rules(desired, targets)
    except PolicyValidationError as exc:
        raise PolicyError("%s; nothing was published or applied" % exc, validated_for=result["validated_for"])
    if params["publish"]:
        todo["publish"], fields, diffs, todo["warnings"] = plan_publish(params["consul_key"], entry, desired)
        result.update(fields)
        todo["diffs"] += diffs
    if agent is not None:
        todo["apply"], fields, diffs = plan_apply(
            params["state"], params["method"], agent, desired, params["static_policy_dir"], listing, socket_path)
        result.update(fields)
        todo["diffs"] += diffs
    return todo
