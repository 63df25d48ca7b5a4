# -*- coding: utf-8 -*-
# Copyright: netreap.cilium contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Test-only connection: run modules in a podman container with ``podman exec`` (no collection needed)."""

from __future__ import annotations

DOCUMENTATION = r"""
name: netreap_podman
short_description: Run tasks in a local podman container (netreap.cilium role tests)
description:
  - Minimal connection for the role tests, so they need no collection from Galaxy.
author:
  - netreap.cilium maintainers (@netreap)
options:
  remote_addr:
    description: Container name.
    default: inventory_hostname
    vars:
      - name: inventory_hostname
      - name: ansible_host
  remote_user:
    description:
      - User the commands run as (C(podman exec --user)); the container's default (root) when unset.
      - The node-duty scenario connects as an unprivileged user and reaches root through C(become).
    vars:
      - name: ansible_user
  podman_executable:
    description: podman binary.
    default: podman
    vars:
      - name: ansible_podman_executable
"""

import shlex
import subprocess

from ansible.errors import AnsibleConnectionFailure
from ansible.plugins.connection import ConnectionBase


class Connection(ConnectionBase):
    """``podman exec -i CONTAINER /bin/sh -c CMD``; files travel through stdin/stdout."""

    transport = "netreap_podman"
    has_pipelining = True

    def _connect(self):
        self._connected = True
        return self

    def _exec(self, command, in_data=None):
        user = self.get_option("remote_user")
        argv = [self.get_option("podman_executable"), "exec", "-i"] + (["--user", user] if user else []) \
            + [self.get_option("remote_addr"), "/bin/sh", "-c", command]
        proc = subprocess.run(argv, input=in_data, capture_output=True, check=False)
        return proc.returncode, proc.stdout, proc.stderr

    def exec_command(self, cmd, in_data=None, sudoable=True):
        super().exec_command(cmd, in_data=in_data, sudoable=sudoable)
        return self._exec(cmd, in_data)

    def put_file(self, in_path, out_path):
        super().put_file(in_path, out_path)
        with open(in_path, "rb") as handle:
            data = handle.read()
        rc, _out, err = self._exec("cat > %s" % shlex.quote(out_path), data)
        if rc != 0:
            raise AnsibleConnectionFailure("put %s: %s" % (out_path, err.decode(errors="replace")))

    def fetch_file(self, in_path, out_path):
        super().fetch_file(in_path, out_path)
        rc, out, err = self._exec("cat %s" % shlex.quote(in_path))
        if rc != 0:
            raise AnsibleConnectionFailure("fetch %s: %s" % (in_path, err.decode(errors="replace")))
        with open(out_path, "wb") as handle:
            handle.write(out)

    def close(self):
        self._connected = False
