#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: netreap.cilium contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: cilium_policy
short_description: Validate Cilium policy rules, publish them to Consul and apply them to the local agent
version_added: 0.1.0
description:
  - Cilium does not distribute policy between agents; outside Kubernetes every agent must be given the same
    rules. This module validates the rules, publishes them once to a Consul key (Netreap's C(netreap.io/policy)
    by default, same JSON array format) and applies them on each node to the local agent.
  - B(Validation) always runs before anything is written. It performs the checks the agent performs (selectors,
    one peer kind per ingress/egress item, entities, CIDRs, ports and protocols, the 40-port limit, L7, DNS and
    FQDN rules) with the agent's messages, for the agent's version and flags, and names the rule and the field.
    It also refuses what the agent would silently ignore, such as misspelt fields, C(null) selectors (which
    select every endpoint) and fields that the target version does not know yet (for example C(fromNodes)
    before 1.16).
  - B(Publishing) writes the normalised rules to O(consul_key) with check-and-set on the index that was read.
    When another publisher wrote first, the module fails and writes nothing. Rules that are unchanged after
    normalisation cause no write. The value must fit into Consul's 512 KiB limit.
  - B(Applying) puts the rules into the local agent without a moment in which the agent lacks them, and never
    touches rules this collection does not own. The method depends on the agent version (see O(method)). If the
    agent rejects the new rules, its previous policy stays in force and the error says so.
  - "Rules applied over REST carry three labels: C(netreap:io.netreap.managed-by=netreap.cilium) (ownership),
    C(netreap:io.netreap.policy-revision=<hash>) and C(netreap:io.netreap.rule-digest=<hash>). Static policy
    files are named C(netreap-<rule name>.yaml) and start with a C(# Managed by netreap.cilium) line."
author:
  - netreap.cilium maintainers (@netreap)
extends_documentation_fragment:
  - netreap.cilium._attributes
  - netreap.cilium._attributes.actiongroup_consul_cilium
  - netreap.cilium._consul
  - netreap.cilium._cilium
options:
  rules:
    description:
      - The policy, as a list of Cilium rules (the JSON array C(cilium policy import) takes), or the same as JSON
        text. A single rule object is accepted as a list of one.
      - Numbers given for C(port) or for label values are turned into strings (an unquoted C(443) in YAML is a
        number, while the agent expects a string).
      - Mutually exclusive with O(src) and O(from_consul).
    type: raw
  src:
    description:
      - A JSON file on the managed node that holds the rules (for example a copy of Netreap's key).
      - For a YAML file on the controller, use O(rules) with C(lookup('file', ...) | from_yaml).
    type: path
  from_consul:
    description:
      - Read the rules from O(consul_key). This is how nodes apply what was published.
      - Fails when the key does not exist or is empty. To remove this collection's rules, publish an empty list C([]).
    type: bool
    default: false
  consul_key:
    description:
      - The Consul KV key that holds the published policy (a JSON array of rules, Netreap's format).
    type: str
    default: netreap.io/policy
  publish:
    description:
      - Write the rules to O(consul_key) (check-and-set on the index read). Cannot be combined with O(from_consul).
    type: bool
    default: false
  apply:
    description:
      - Apply the rules to the Cilium agent at O(cilium_socket) on the managed node.
      - With O(publish=false) and O(apply=false) the module only validates.
    type: bool
    default: true
  method:
    description:
      - How to apply the rules to the agent.
      - V(auto) uses the first of the agent's methods as reported by M(netreap.cilium.cilium_agent_info), so
        V(add-then-delete) up to 1.14, V(replace-with-labels) from 1.15 to 1.18 and V(static-dir) on 1.19.
      - V(replace-with-labels) (Cilium 1.15 to 1.18) sends one C(PUT /v1/policy?replace-with-labels=<owner label>),
        which atomically swaps every rule carrying our owner label for the new rules.
      - V(add-then-delete) (any version up to 1.18) adds the new rules with a new revision label, then deletes the
        older revisions by label. Both are in force for a moment; the agent never lacks our rules.
      - V(static-dir) (1.16 and later; the only way on 1.19) writes one C(CiliumClusterwideNetworkPolicy) per rule
        into O(static_policy_dir) (temp file, then rename), then removes files we no longer need, and waits until
        the agent has loaded them. Unlike REST rules, which the agent keeps in memory only, these survive an agent
        restart. When switching methods, the rules left by the other method are removed once the new ones are in place.
      - "On loading a file the agent adds C(k8s:io.kubernetes.pod.namespace Exists) and (with C(--policy-default-local-cluster),
        the default from Cilium 1.19) C(k8s:io.cilium.k8s.policy.cluster=<cluster>) to every C(fromEndpoints),
        C(toEndpoints), C(fromRequires) and C(toRequires) selector that does not name these keys. Nomad endpoints
        carry neither label, so such selectors would select nothing. The module therefore writes each of these
        selectors with C(DoesNotExist) for the keys it does not name; the agent leaves them alone and they select
        exactly the endpoints of the published rule. The Consul key and REST rules stay as published.
        See C(docs/policy.md)."
      - The agent's C(GET /v1/policy) shows which files it has loaded; on Cilium 1.19 it lists policy entries
        (several per rule) instead of rules, and both forms are read.
    type: str
    choices: [auto, replace-with-labels, add-then-delete, static-dir]
    default: auto
  static_policy_dir:
    description:
      - The agent's C(--static-cnp-path) directory. Required for O(method=static-dir), and therefore on Cilium 1.19.
      - With O(state=absent), or when a REST method is used, files of this collection in the directory are removed.
      - The directory must exist. Only files named C(netreap-*.yaml) that start with our marker line are changed or removed.
    type: path
  static_load_timeout:
    description:
      - Seconds to wait for the agent to load written policy files (it watches the directory). V(0) does not wait or check.
    type: float
    default: 10
  cilium_versions:
    description:
      - Cilium versions the rules must be valid for, as a minor (C(1.16)) or a patch release (C(1.16.17)).
      - A patch release selects the agent's behaviour in that release (Cilium changed the wording of its messages
        in 1.16.7); a minor alone means the latest release of that minor.
      - When not set, rules are validated for the local agent's version when O(apply=true). When the module only
        publishes or validates, they are validated for every version this collection supports (1.13 to 1.19), which
        suits clusters in the middle of an upgrade. Set this option to allow features of newer versions only.
      - Checks that depend on agent flags (C(--enable-l7-proxy), C(--enable-node-selector-labels)) run only against
        the local agent's reported configuration.
    type: list
    elements: str
  state:
    description:
      - V(present) makes the agent (and, with O(publish=true), the key) hold exactly the given rules among those this
        collection owns.
      - V(absent) removes this collection's rules from the local agent and our files from O(static_policy_dir). Rules
        of others and the Consul key stay. It cannot be combined with O(publish=true).
    type: str
    choices: [present, absent]
    default: present
attributes:
  check_mode:
    support: full
    details: Reads Consul and the agent, validates, and reports what would be published and applied. Writes nothing.
  diff_mode:
    support: full
    details: The Consul value before and after, our rules in the agent (name and digest), or the policy files before and after.
seealso:
  - module: netreap.cilium.cilium_agent_info
  - name: Cilium policy language
    description: The rule format these rules follow.
    link: https://docs.cilium.io/en/stable/security/policy/language/
notes:
  - The agent keeps REST policies in memory only. After an agent restart, a node has no policy until this module runs
    again, so run it from the scheduled C(reap.yml), or use O(method=static-dir) on Cilium 1.16 and later.
  - Rules that Netreap put into the agent are not labelled as ours and are left alone. See C(docs/policy.md) for the
    migration.
  - An agent may still reject a rule for reasons this module cannot see, for example a flag that
    C(GET /v1/config) does not report. With REST methods, the agent then keeps its previous policy. With O(method=static-dir),
    it keeps the previous version of that file. The module reports a file that the agent did not load in time.
"""

EXAMPLES = r"""
- name: Publish the cluster's policy once (from the controller)
  netreap.cilium.cilium_policy:
    rules: "{{ lookup('ansible.builtin.file', 'files/policy.yml') | from_yaml }}"
    publish: true
    apply: false
    consul_address: https://consul.service.consul:8501
  run_once: true
  delegate_to: localhost

- name: Apply the published policy on every Nomad client (for example in reap.yml)
  netreap.cilium.cilium_policy:
    from_consul: true
    static_policy_dir: "{{ cilium_static_policy_dir | default(omit) }}"
  register: policy

- name: Validate only, for the versions the cluster runs (CI)
  netreap.cilium.cilium_policy:
    src: policy.json
    apply: false
    cilium_versions: ["1.16", "1.19"]

- name: A rule written in the playbook (Cilium's L3/L4 documentation example)
  netreap.cilium.cilium_policy:
    rules:
      - labels: [{key: name, value: api-from-web, source: unspec}]
        endpointSelector: {matchLabels: {"netreap:nomad.job_id": api}}
        ingress:
          - fromEndpoints: [{matchLabels: {"netreap:nomad.job_id": web}}]
            toPorts: [{ports: [{port: "8080", protocol: TCP}]}]
    publish: true

- name: Remove this collection's rules from the local agent (others' rules stay)
  netreap.cilium.cilium_policy:
    state: absent
    static_policy_dir: /etc/cilium/policies
"""

RETURN = r"""
rule_count:
  description: Number of rules in the policy (0 with O(state=absent)).
  returned: success
  type: int
  sample: 2
policy_hash:
  description: Hash of the normalised rules; the value of the revision label for REST methods.
  returned: success
  type: str
  sample: 3f1c0a9be27d4410
validated_for:
  description: The Cilium versions the rules were validated for.
  returned: success
  type: list
  elements: str
  sample: ["1.16"]
published:
  description: Whether the Consul key was written (or would be, in check mode).
  returned: success
  type: bool
  sample: true
consul_key:
  description: The Consul key that was read or written.
  returned: when O(publish=true) or O(from_consul=true)
  type: str
  sample: netreap.io/policy
consul_index:
  description: ModifyIndex of the key as read (0 when the key did not exist).
  returned: when O(publish=true) or O(from_consul=true)
  type: int
  sample: 1234
publish_changes:
  description: Rules added, removed and changed in the Consul key, by name label (or C(#<position>) for unnamed rules).
  returned: when O(publish=true)
  type: dict
  sample: {"added": ["cache-from-web"], "removed": [], "changed": ["web-ingress"]}
applied:
  description: Whether the agent's policy was changed (or would be, in check mode).
  returned: success
  type: bool
  sample: true
method:
  description: The method used to apply (V(replace-with-labels), V(add-then-delete) or V(static-dir)).
  returned: when O(apply=true) and O(state=present)
  type: str
  sample: replace-with-labels
apply_changes:
  description: Our rules added, removed and changed in the agent, by name label (or C(#<position>)).
  returned: when O(apply=true)
  type: dict
  sample: {"added": [], "removed": [], "changed": ["web-ingress"]}
policy_revision:
  description: The agent's policy repository revision after the change (as read, when nothing changed or in check mode).
  returned: when O(apply=true)
  type: int
  sample: 8
previous_policy_revision:
  description: The agent's policy repository revision before the change.
  returned: when O(apply=true)
  type: int
  sample: 7
agent_version:
  description: The local agent's version.
  returned: when O(apply=true)
  type: str
  sample: 1.16.5
files_written:
  description: Policy files written to O(static_policy_dir) (or that would be, in check mode).
  returned: when O(static_policy_dir) is used
  type: list
  elements: str
  sample: ["netreap-web-ingress.yaml"]
files_removed:
  description: Policy files removed from O(static_policy_dir) (or that would be, in check mode).
  returned: when O(static_policy_dir) is used
  type: list
  elements: str
  sample: []
requests:
  description: HTTP requests sent to Consul and to the Cilium agent during the run (retries included).
  returned: always
  type: dict
  sample: {"consul": 1, "cilium": 4}
"""

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.common.text.converters import to_text

from ansible_collections.netreap.cilium.plugins.module_utils._cilium import (
    CILIUM_ARGUMENT_SPEC,
    CiliumClient,
)
from ansible_collections.netreap.cilium.plugins.module_utils._consul import (
    CONSUL_ARGUMENT_SPEC,
    ConsulClient,
    fail_on_key_options,
)
from ansible_collections.netreap.cilium.plugins.module_utils._http import ServiceError, failure_message
from ansible_collections.netreap.cilium.plugins.module_utils._policy_apply import (
    apply_plan,
    read_agent,
    read_static_dir,
)
from ansible_collections.netreap.cilium.plugins.module_utils._policy_decode import DEFAULT_CONSUL_KEY, PolicyError
from ansible_collections.netreap.cilium.plugins.module_utils import _policy_plan as planner
from ansible_collections.netreap.cilium.plugins.module_utils._run import Run, Stop


def planned(step):
    """The planner's refusals (PolicyError, a value type) end the run like any guard."""
    def wrapped(*args):
        try:
            return step(*args)
        except PolicyError as exc:
            raise Stop(exc.msg, **exc.extra)
    return wrapped


def read(run, params):
    """Everything the plan needs, with no write: the Consul entry, the source file, the agent, the
    static directory's listing."""
    planner.check_params(params)
    seen = dict(entry=None, consul=None, src_data=None, agent=None, client=None, listing=None)
    key = params["consul_key"]
    if params["publish"] or params["from_consul"]:
        try:
            seen["consul"] = ConsulClient.from_params(params)
        except ValueError as exc:
            raise Stop("Consul connection options: %s" % to_text(exc))
        run.doing("read Consul key %s" % key)
        seen["entry"] = seen["consul"].kv_get(key)[0]
    if params["src"] is not None and params["state"] == "present":
        try:
            with open(params["src"], "rb") as handle:
                seen["src_data"] = handle.read()
        except (IOError, OSError) as exc:
            raise Stop("cannot read policy file %s: %s" % (params["src"], to_text(exc)))
    if params["apply"]:
        seen["client"] = CiliumClient.from_params(params)
        run.doing("read Cilium agent at %s" % seen["client"].socket_path)
        seen["agent"] = read_agent(seen["client"], params["static_policy_dir"])
        if params["static_policy_dir"]:
            seen["listing"] = read_static_dir(params["static_policy_dir"])
    return seen


def plan(params, seen):
    socket_path = seen["client"].socket_path if seen["client"] else None
    todo = planner.plan_policy(params, seen["entry"], seen["src_data"], seen["agent"], seen["listing"], socket_path)
    return dict(todo, seen=seen)


def apply(run, params, todo, progress):
    seen, key = todo["seen"], params["consul_key"]  # Consul first: a lost race stops everything
    if todo["publish"] and todo["publish"]["changed"]:
        cas = todo["publish"]["cas"]
        try:
            won = seen["consul"].kv_put(key, todo["publish"]["value"], cas=cas)
        except ServiceError as exc:
            raise Stop("%s; nothing was applied" % failure_message("publish policy to Consul key %s" % key, exc),
                       status=exc.status)
        if not won:
            raise Stop("Consul key %s was changed by someone else after it was read at index %s (check-and-set "
                       "failed): nothing was published or applied; run again to publish on top of the new value"
                       % (key, cas or "0, when it did not exist"), published=False)
        progress["published"] = True
    if todo["result"]["applied"]:
        apply_plan(seen["client"], seen["agent"], todo["apply"], params["static_policy_dir"],
                   params["static_load_timeout"], progress)


def report(module, todo, progress):
    result = dict(todo["result"])
    if progress is not None:  # what was done, even when the run stopped part way
        result.update(dict(published=False, applied=False), **progress)
    result["changed"] = bool(result["published"] or result["applied"])
    for text in todo["warnings"]:
        module.warn(text)
    if progress is None and not module.check_mode and module.params["static_load_timeout"]:
        unloaded = planner.unloaded_warning(todo["seen"]["agent"], todo["apply"])
        if unloaded:
            module.warn(unloaded)
    return result


def main():
    argument_spec = dict(
        rules=dict(type="raw"),
        src=dict(type="path"),
        from_consul=dict(type="bool", default=False),
        consul_key=dict(type="str", default=DEFAULT_CONSUL_KEY, no_log=False),
        publish=dict(type="bool", default=False),
        apply=dict(type="bool", default=True),
        method=dict(type="str", default="auto",
                    choices=["auto", "replace-with-labels", "add-then-delete", "static-dir"]),
        static_policy_dir=dict(type="path"),
        static_load_timeout=dict(type="float", default=10.0),
        cilium_versions=dict(type="list", elements="str"),
        state=dict(type="str", default="present", choices=["present", "absent"]),
    )
    argument_spec.update(CONSUL_ARGUMENT_SPEC)
    argument_spec.update(CILIUM_ARGUMENT_SPEC)
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    fail_on_key_options(module, keys=("consul_key",))
    params = module.params
    run = Run(module, requests={"consul": ("consul",), "cilium": ("cilium",)})
    run.execute(planned(lambda: read(run, params)),
                plan=planned(lambda seen: plan(params, seen)),
                has_changes=lambda todo: todo["result"]["published"] or todo["result"]["applied"],
                apply=lambda todo, progress: apply(run, params, todo, progress),
                report=lambda todo, progress: report(module, todo, progress),
                diff=lambda todo, progress: todo["diffs"])


if __name__ == "__main__":
    main()
