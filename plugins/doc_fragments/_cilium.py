# -*- coding: utf-8 -*-
# Copyright: netreap.cilium contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Internal to netreap.cilium: options for the local Cilium agent's API socket."""

from __future__ import annotations


class ModuleDocFragment:
    DOCUMENTATION = r"""
options:
  cilium_socket:
    description:
      - Path of the Cilium agent's API unix socket on the managed node.
      - If not set, the value of the E(CILIUM_SOCK) environment variable is used, else
        C(/var/run/cilium/cilium.sock).
      - The user running the module needs read and write access to the socket (root, or the C(cilium) group).
    type: path
  cilium_timeout:
    description:
      - Seconds to wait for each request to the agent. Defaults to 30.
    type: float
"""
