# -*- coding: utf-8 -*-
# Copyright: netreap.cilium contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Internal to netreap.cilium: Nomad connection options shared by every module and plugin that talks to Nomad."""

from __future__ import annotations


class ModuleDocFragment:
    DOCUMENTATION = r"""
options:
  nomad_address:
    description:
      - Address of the Nomad HTTP API, for example C(http://127.0.0.1:4646), C(https://nomad.example:4646)
        or C(unix:///path/to/nomad.sock).
      - If not set, the value of the E(NOMAD_ADDR) environment variable is used, else C(http://127.0.0.1:4646).
    type: str
  nomad_token:
    description:
      - ACL token (secret ID), sent as the C(X-Nomad-Token) header. If not set, E(NOMAD_TOKEN) is used.
    type: str
  nomad_region:
    description:
      - Region to address. If not set, E(NOMAD_REGION) is used, else the agent's own region.
    type: str
  nomad_namespace:
    description:
      - Namespace for namespaced reads. If not set, E(NOMAD_NAMESPACE) is used.
    type: str
  nomad_validate_certs:
    description:
      - Verify the server's TLS certificate. Verification is on unless this is V(false).
      - If not set, E(NOMAD_SKIP_VERIFY) is used (a true value disables verification).
    type: bool
  nomad_ca_cert:
    description:
      - CA certificate (PEM) that verifies the Nomad server. If not set, E(NOMAD_CACERT) is used.
    type: path
  nomad_ca_path:
    description:
      - Directory of CA certificates. If not set, E(NOMAD_CAPATH) is used.
    type: path
  nomad_client_cert:
    description:
      - Client certificate (PEM) for mutual TLS. If not set, E(NOMAD_CLIENT_CERT) is used.
    type: path
  nomad_client_key:
    description:
      - Private key of O(nomad_client_cert). If not set, E(NOMAD_CLIENT_KEY) is used.
    type: path
  nomad_tls_server_name:
    description:
      - Name to use for SNI and certificate verification (Nomad certificates usually name
        C(server.<region>.nomad) or C(client.<region>.nomad)). If not set, E(NOMAD_TLS_SERVER_NAME) is used.
    type: str
  nomad_timeout:
    description:
      - Seconds to wait for each Nomad request. Defaults to 10.
    type: float
"""

    # Plugins (inventory, event sources) read the same options; Ansible applies these variables
    # before the plugin resolves the options like a module does. NOMAD_SKIP_VERIFY is not listed:
    # it inverts nomad_validate_certs, so the resolution reads it (see the description).
    PLUGINS = r"""
options:
  nomad_address:
    env:
      - name: NOMAD_ADDR
  nomad_token:
    env:
      - name: NOMAD_TOKEN
  nomad_region:
    env:
      - name: NOMAD_REGION
  nomad_namespace:
    env:
      - name: NOMAD_NAMESPACE
  nomad_ca_cert:
    env:
      - name: NOMAD_CACERT
  nomad_ca_path:
    env:
      - name: NOMAD_CAPATH
  nomad_client_cert:
    env:
      - name: NOMAD_CLIENT_CERT
  nomad_client_key:
    env:
      - name: NOMAD_CLIENT_KEY
  nomad_tls_server_name:
    env:
      - name: NOMAD_TLS_SERVER_NAME
"""
