# -*- coding: utf-8 -*-
# Copyright: netreap.cilium contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Internal to netreap.cilium: the attributes every module documents, and its action groups.

A module names C(netreap.cilium._attributes) for the check_mode and diff_mode descriptions (it
adds C(support) and C(details)), and the one C(ACTIONGROUP_*) fragment that lists its groups in
C(meta/runtime.yml): Ansible does not merge the memberships of two fragments, so each combination
of groups in use has its own fragment.
"""

from __future__ import annotations


class ModuleDocFragment:
    DOCUMENTATION = r"""
options: {}
attributes:
  check_mode:
    description: Can run in check_mode and return changed status prediction without modifying target.
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check_mode), when in diff mode.
"""

    ACTIONGROUP_CILIUM = r"""
options: {}
attributes:
  action_group:
    description: Use C(group/netreap.cilium.cilium) or C(group/netreap.cilium.all) in C(module_defaults) to set options.
    support: full
    membership:
      - netreap.cilium.cilium
      - netreap.cilium.all
"""

    ACTIONGROUP_CONSUL_CILIUM = r"""
options: {}
attributes:
  action_group:
    description: Use C(group/netreap.cilium.consul), C(group/netreap.cilium.cilium) or C(group/netreap.cilium.all) in
      C(module_defaults) to set options.
    support: full
    membership:
      - netreap.cilium.consul
      - netreap.cilium.cilium
      - netreap.cilium.all
"""

    ACTIONGROUP_NOMAD_CILIUM = r"""
options: {}
attributes:
  action_group:
    description: Use C(group/netreap.cilium.cilium), C(group/netreap.cilium.nomad) or C(group/netreap.cilium.all)
      in C(module_defaults) to set options.
    support: full
    membership:
      - netreap.cilium.cilium
      - netreap.cilium.nomad
      - netreap.cilium.all
"""

    ACTIONGROUP_KVSTORE = r"""
options: {}
attributes:
  action_group:
    description: Use C(group/netreap.cilium.consul), C(group/netreap.cilium.etcd) or C(group/netreap.cilium.all) in
      C(module_defaults) to set options.
    support: full
    membership:
      - netreap.cilium.consul
      - netreap.cilium.etcd
      - netreap.cilium.all
"""

    ACTIONGROUP_KVSTORE_NOMAD = r"""
options: {}
attributes:
  action_group:
    description: Use C(group/netreap.cilium.consul), C(group/netreap.cilium.etcd), C(group/netreap.cilium.nomad) or
      C(group/netreap.cilium.all) in C(module_defaults) to set options.
    support: full
    membership:
      - netreap.cilium.consul
      - netreap.cilium.etcd
      - netreap.cilium.nomad
      - netreap.cilium.all
"""
