#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: netreap.cilium contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: cilium_agent_info
short_description: Report health, version and policy capabilities of the local Cilium agent
version_added: 0.1.0
description:
  - Reads the Cilium agent's REST API on its unix socket (C(GET /v1/healthz), C(/v1/config),
    C(/v1/endpoint), C(/v1/policy)) and reports overall and kvstore health, the agent version, the
    kvstore type, how policies can be applied to this agent, the endpoint count and the policy revision.
  - Policy capability follows the agent version - REST policy writes exist up to Cilium 1.18 and were
    removed in 1.19; C(replace) and C(replace-with-labels) exist from 1.15; a static policy
    directory (C(--static-cnp-path)) from 1.16; Consul as kvstore up to 1.16.
  - Read-only. Runs on the Nomad client whose agent it inspects.
author:
  - netreap.cilium maintainers (@netreap)
extends_documentation_fragment:
  - netreap.cilium._attributes
  - netreap.cilium._attributes.actiongroup_cilium
  - netreap.cilium._cilium
options:
  static_policy_dir:
    description:
      - The agent's C(--static-cnp-path), when it has one. The agent does not report this directory through
        its API, so tell the module; it is reported in RV(capabilities.static_policy_dir) (and C(static-dir) added
        to RV(capabilities.policy_methods)) if the agent version supports static policies (1.16+).
    type: path
  fail_on_unhealthy:
    description:
      - Fail the task when the agent or its kvstore connection is not healthy (useful with C(until) to wait
        for an agent after a restart). The failure message carries the agent's own status messages.
    type: bool
    default: false
attributes:
  check_mode:
    support: full
    details: The module only reads.
  diff_mode:
    support: none
seealso:
  - module: netreap.cilium.cilium_endpoint
  - module: netreap.cilium.cilium_policy
notes:
  - Cilium reports its version in the C(cilium) status message, also while its kvstore is down. Only an agent of
    1.18 or later whose status probes have not all run yet (C(Not all probes executed at least once)) reports
    none; it is reported with RV(version=null) and no capabilities - ask again a moment later.
"""

EXAMPLES = r"""
- name: Inspect the local Cilium agent
  netreap.cilium.cilium_agent_info:
  register: agent

- name: Wait until the agent and its kvstore are healthy
  netreap.cilium.cilium_agent_info:
    cilium_socket: /var/run/cilium/cilium.sock
    fail_on_unhealthy: true
  register: agent
  retries: 30
  delay: 2
  until: agent is succeeded

- name: Show how policies reach this agent
  ansible.builtin.debug:
    msg: "Cilium {{ agent.version }}: {{ agent.capabilities.policy_methods | join(', ') }}"
"""

RETURN = r"""
healthy:
  description: Whether the agent reports C(Ok) and its kvstore reports C(Ok) (or C(Disabled)).
  returned: success
  type: bool
  sample: true
status:
  description: The agent's overall state and message (C(cilium) in C(/v1/healthz)).
  returned: success
  type: dict
  sample: {"state": "Ok", "msg": "1.16.5 (v1.16.5-1a2b3c4d)"}
kvstore:
  description: kvstore connection state and message as the agent reports them.
  returned: success
  type: dict
  sample: {"state": "Ok", "msg": "etcd: 1/1 connected, has-quorum=true"}
version:
  description: Agent version (C(major.minor.patch)), or null if the agent does not report one.
  returned: success
  type: str
  sample: 1.16.5
kvstore_type:
  description: Configured kvstore backend (C(etcd) or C(consul)), null when none.
  returned: success
  type: str
  sample: etcd
capabilities:
  description: What this agent supports, derived from its version and configuration.
  returned: success
  type: dict
  contains:
    rest_policy_write:
      description: C(PUT/DELETE /v1/policy) exist (Cilium up to 1.18).
      type: bool
    replace_with_labels:
      description: C(PUT /v1/policy) honours C(replace-with-labels) (1.15 to 1.18).
      type: bool
    static_policy_supported:
      description: The agent version can load policies from a directory (1.16+).
      type: bool
    static_policy_dir:
      description: The static policy directory, when known.
      type: str
    consul_kvstore_supported:
      description: The agent version can use Consul as kvstore (up to 1.16).
      type: bool
    cni_attachment_id:
      description: Endpoints carry C(cni-attachment-id) identifiers (1.15+).
      type: bool
    cli_name:
      description: Name of the CLI inside the agent image (C(cilium), or C(cilium-dbg) from 1.15).
      type: str
    policy_methods:
      description: Ways C(netreap.cilium.cilium_policy) can apply policy here, preferred first.
      type: list
      elements: str
  sample: {"rest_policy_write": true, "replace_with_labels": true, "static_policy_supported": true,
           "static_policy_dir": null, "consul_kvstore_supported": true, "cni_attachment_id": true,
           "cli_name": "cilium-dbg", "policy_methods": ["replace-with-labels"]}
endpoint_count:
  description: Number of endpoints the agent manages (reserved host and health endpoints included).
  returned: success
  type: int
  sample: 4
policy_revision:
  description: The agent's policy repository revision; null if the agent no longer serves C(GET /v1/policy).
  returned: success
  type: int
  sample: 7
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.netreap.cilium.plugins.module_utils._cilium import (
    CILIUM_ARGUMENT_SPEC,
    CiliumClient,
    ServiceError,
    agent_capabilities,
)
from ansible_collections.netreap.cilium.plugins.module_utils._http import failure_message


def gather(client, static_policy_dir=None):
    """Everything the module reports, from four reads of the agent."""
    healthz = client.healthz()
    config = client.config()
    caps = agent_capabilities(healthz, config, static_policy_dir)
    endpoints = client.endpoints()
    try:
        revision = client.policy_get()[1]
    except ServiceError as exc:
        if exc.status not in (404, 405):
            raise
        revision = None
    status = healthz.get("cilium") or {}
    kvstore = healthz.get("kvstore") or {}
    healthy = status.get("state") == "Ok" and kvstore.get("state", "Disabled") in ("Ok", "Disabled")
    return dict(
        healthy=healthy,
        status={"state": status.get("state"), "msg": status.get("msg")},
        kvstore={"state": kvstore.get("state"), "msg": kvstore.get("msg")},
        version=caps["version"],
        kvstore_type=caps["kvstore_type"],
        capabilities={k: caps[k] for k in (
            "rest_policy_write", "replace_with_labels", "static_policy_supported",
            "static_policy_dir", "consul_kvstore_supported", "cni_attachment_id", "cli_name",
            "policy_methods")},
        endpoint_count=len(endpoints),
        policy_revision=revision,
    )


def main():
    argument_spec = dict(
        static_policy_dir=dict(type="path"),
        fail_on_unhealthy=dict(type="bool", default=False),
    )
    argument_spec.update(CILIUM_ARGUMENT_SPEC)
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    client = CiliumClient.from_params(module.params)
    try:
        info = gather(client, module.params["static_policy_dir"])
    except ServiceError as exc:
        module.fail_json(msg=failure_message("read Cilium agent at %s" % client.socket_path, exc),
                         status=exc.status)
    if module.params["fail_on_unhealthy"] and not info["healthy"]:
        module.fail_json(msg="Cilium agent at %s is not healthy: agent %s (%s); kvstore %s (%s)" % (
            client.socket_path, info["status"]["state"], info["status"]["msg"],
            info["kvstore"]["state"], info["kvstore"]["msg"]), **info)
    module.exit_json(changed=False, **info)


if __name__ == "__main__":
    main()
