# -*- coding: utf-8 -*-
# Copyright: netreap.cilium contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Internal to netreap.cilium: etcd connection options shared by every module that talks to etcd."""

from __future__ import annotations


class ModuleDocFragment:
    DOCUMENTATION = r"""
options:
  etcd_endpoints:
    description:
      - etcd client URLs, tried in order, for example V(https://10.0.0.5:2379).
      - If not set, the C(endpoints) of O(etcd_config) are used, else E(ETCDCTL_ENDPOINTS)
        (comma-separated), else V(http://127.0.0.1:2379).
    type: list
    elements: str
  etcd_config:
    description:
      - Path of the etcd client YAML the Cilium agent uses (C(--kvstore-opt etcd.config=...)).
        Its C(endpoints), C(trusted-ca-file), C(cert-file), C(key-file), C(username), C(password)
        and C(insecure-skip-tls-verify) are used for options not set in the task.
      - The file is parsed without PyYAML; only that flat shape is supported.
    type: path
  etcd_ca_cert:
    description:
      - CA certificate (PEM) that verifies etcd. If not set, O(etcd_config) or E(ETCDCTL_CACERT) is used.
    type: path
  etcd_client_cert:
    description:
      - Client certificate (PEM). If not set, O(etcd_config) or E(ETCDCTL_CERT) is used.
    type: path
  etcd_client_key:
    description:
      - Private key of O(etcd_client_cert). If not set, O(etcd_config) or E(ETCDCTL_KEY) is used.
    type: path
  etcd_username:
    description:
      - etcd user for role-based access control. If not set, O(etcd_config) or the user part of
        E(ETCDCTL_USER) (C(user:password)) is used.
    type: str
  etcd_password:
    description:
      - Password of O(etcd_username). If not set, O(etcd_config), the password part of
        E(ETCDCTL_USER) or E(ETCDCTL_PASSWORD) is used.
    type: str
  etcd_validate_certs:
    description:
      - Verify etcd's TLS certificate. Verification is on unless this is V(false).
      - If not set, O(etcd_config) C(insecure-skip-tls-verify) or E(ETCDCTL_INSECURE_SKIP_TLS_VERIFY) is used.
    type: bool
  etcd_tls_server_name:
    description:
      - Name to use for SNI and certificate verification instead of the endpoint's host.
    type: str
  etcd_timeout:
    description:
      - Seconds to wait for each etcd request. Defaults to 10.
    type: float
"""
