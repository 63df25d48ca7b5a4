# -*- coding: utf-8 -*-
# Copyright: netreap.cilium contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Internal to netreap.cilium: Consul connection options shared by every module that talks to Consul."""

from __future__ import annotations


class ModuleDocFragment:
    DOCUMENTATION = r"""
options:
  consul_address:
    description:
      - Address of the Consul HTTP API, as the Consul CLI takes it.
      - "Forms: C(host:port), C(http://host:port), C(https://host:port) and C(unix:///path/to/consul.sock)."
      - If not set, the value of the E(CONSUL_HTTP_ADDR) environment variable is used, else C(127.0.0.1:8500).
    type: str
  consul_token:
    description:
      - ACL token (secret ID), sent as the C(X-Consul-Token) header.
      - If neither this nor O(consul_token_file) is set, the file named by E(CONSUL_HTTP_TOKEN_FILE)
        is read, else E(CONSUL_HTTP_TOKEN) is used. An option set in the task always wins over the environment.
    type: str
  consul_token_file:
    description:
      - File whose content (trimmed) is the ACL token. Used when O(consul_token) is not set.
      - If not set, E(CONSUL_HTTP_TOKEN_FILE) is used.
    type: path
  consul_use_ssl:
    description:
      - Use HTTPS when O(consul_address) has no scheme.
      - If not set, E(CONSUL_HTTP_SSL) is used (Go boolean syntax).
    type: bool
  consul_validate_certs:
    description:
      - Verify the server's TLS certificate. Verification is on unless this is V(false).
      - If not set, E(CONSUL_HTTP_SSL_VERIFY) is used (Go boolean syntax, V(false) disables verification).
    type: bool
  consul_ca_cert:
    description:
      - CA certificate (PEM) that verifies the Consul server.
      - If not set, E(CONSUL_CACERT) is used.
    type: path
  consul_ca_path:
    description:
      - Directory of CA certificates. If not set, E(CONSUL_CAPATH) is used.
    type: path
  consul_client_cert:
    description:
      - Client certificate (PEM) for mutual TLS. If not set, E(CONSUL_CLIENT_CERT) is used.
    type: path
  consul_client_key:
    description:
      - Private key of O(consul_client_cert). If not set, E(CONSUL_CLIENT_KEY) is used.
    type: path
  consul_tls_server_name:
    description:
      - Name to use for SNI and certificate verification instead of the host in O(consul_address).
      - If not set, E(CONSUL_TLS_SERVER_NAME) is used.
    type: str
  consul_datacenter:
    description:
      - Datacenter to address (C(?dc=)). Defaults to the agent's own datacenter.
    type: str
  consul_timeout:
    description:
      - Seconds to wait for each Consul request. Defaults to 10.
    type: float
"""
