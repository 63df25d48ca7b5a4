"""Connection settings: an option set in the task always wins over the environment, the
environment over the default, with the HashiCorp CLIs' variable names and precedence."""

import pytest

from ansible_collections.netreap.cilium.plugins.module_utils._cilium import cilium_settings
from ansible_collections.netreap.cilium.plugins.module_utils._consul import consul_settings
from ansible_collections.netreap.cilium.plugins.module_utils._etcd import (
    etcd_settings,
    parse_etcd_config,
    prefix_range_end,
)
from ansible_collections.netreap.cilium.plugins.module_utils._nomad import nomad_settings


def test_consul_defaults():
    s = consul_settings({}, env={})
    assert s["base_url"] == "http://127.0.0.1:8500" and s["token"] is None
    assert s["validate_certs"] is True and s["unix_socket"] is None


def test_consul_option_wins_over_env():
    env = {"CONSUL_HTTP_ADDR": "https://env:8501", "CONSUL_HTTP_TOKEN": "env-token",
           "CONSUL_CACERT": "/env/ca.pem", "CONSUL_HTTP_SSL_VERIFY": "false"}
    s = consul_settings({"consul_address": "http://opt:8500", "consul_token": "opt-token",
                         "consul_ca_cert": "/opt/ca.pem", "consul_validate_certs": True}, env=env)
    assert s["base_url"] == "http://opt:8500" and s["token"] == "opt-token"
    assert s["ca_file"] == "/opt/ca.pem" and s["validate_certs"] is True


def test_consul_env_fallbacks():
    env = {"CONSUL_HTTP_ADDR": "consul.service:8501", "CONSUL_HTTP_SSL": "true",
           "CONSUL_HTTP_TOKEN": "t", "CONSUL_HTTP_SSL_VERIFY": "0", "CONSUL_CACERT": "/ca",
           "CONSUL_CLIENT_CERT": "/c", "CONSUL_CLIENT_KEY": "/k",
           "CONSUL_TLS_SERVER_NAME": "server.dc1.consul:8501"}
    s = consul_settings({}, env=env)
    assert s["base_url"] == "https://consul.service:8501"
    assert (s["token"], s["validate_certs"], s["ca_file"], s["client_cert"], s["client_key"]) == \
        ("t", False, "/ca", "/c", "/k")
    assert s["tls_server_name"] == "server.dc1.consul"


def test_consul_unix_address():
    s = consul_settings({}, env={"CONSUL_HTTP_ADDR": "unix:///var/run/consul.sock"})
    assert (s["base_url"], s["unix_socket"]) == ("http://localhost", "/var/run/consul.sock")


def test_consul_token_file_precedence(tmp_path):
    env_file = tmp_path / "env-token"
    env_file.write_text("from-env-file\n")
    opt_file = tmp_path / "opt-token"
    opt_file.write_text("  from-option-file \n")
    env = {"CONSUL_HTTP_TOKEN": "from-env", "CONSUL_HTTP_TOKEN_FILE": str(env_file)}
    # CONSUL_HTTP_TOKEN_FILE wins over CONSUL_HTTP_TOKEN, like the Consul CLI
    assert consul_settings({}, env=env)["token"] == "from-env-file"
    # task options win over both
    assert consul_settings({"consul_token_file": str(opt_file)}, env=env)["token"] == "from-option-file"
    assert consul_settings({"consul_token": "opt", "consul_token_file": str(opt_file)},
                           env=env)["token"] == "opt"


def test_consul_bad_env_boolean_is_named():
    with pytest.raises(ValueError, match="CONSUL_HTTP_SSL_VERIFY"):
        consul_settings({}, env={"CONSUL_HTTP_SSL_VERIFY": "maybe"})


def test_consul_missing_token_file_is_clear(tmp_path):
    with pytest.raises(ValueError, match="cannot read Consul token file"):
        consul_settings({"consul_token_file": str(tmp_path / "nope")}, env={})


def test_nomad_precedence_and_skip_verify():
    env = {"NOMAD_ADDR": "https://nomad:4646", "NOMAD_TOKEN": "env", "NOMAD_REGION": "eu",
           "NOMAD_NAMESPACE": "apps", "NOMAD_SKIP_VERIFY": "true", "NOMAD_CACERT": "/ca",
           "NOMAD_TLS_SERVER_NAME": "server.global.nomad"}
    s = nomad_settings({}, env=env)
    assert s["base_url"] == "https://nomad:4646" and s["token"] == "env"
    assert (s["region"], s["namespace"], s["validate_certs"], s["ca_file"]) == ("eu", "apps", False, "/ca")
    assert s["tls_server_name"] == "server.global.nomad"
    s = nomad_settings({"nomad_address": "http://opt:4646", "nomad_token": "opt",
                        "nomad_validate_certs": True}, env=env)
    assert (s["base_url"], s["token"], s["validate_certs"]) == ("http://opt:4646", "opt", True)
    assert nomad_settings({}, env={})["base_url"] == "http://127.0.0.1:4646"


def test_cilium_socket_precedence():
    assert cilium_settings({}, env={})["socket_path"] == "/var/run/cilium/cilium.sock"
    assert cilium_settings({}, env={"CILIUM_SOCK": "/run/c.sock"})["socket_path"] == "/run/c.sock"
    assert cilium_settings({}, env={"CILIUM_SOCK": "unix:///run/c.sock"})["socket_path"] == "/run/c.sock"
    assert cilium_settings({"cilium_socket": "/opt.sock"},
                           env={"CILIUM_SOCK": "/run/c.sock"})["socket_path"] == "/opt.sock"


ETCD_CONFIG = """---
# written by the agent role
endpoints:
  - https://10.0.0.5:2379
  - 'https://10.0.0.6:2379'
trusted-ca-file: /etc/cilium/etcd-ca.pem
cert-file: "/etc/cilium/etcd-client.pem"
key-file: /etc/cilium/etcd-client-key.pem
"""


def test_etcd_config_file(tmp_path):
    conf = tmp_path / "etcd.yml"
    conf.write_text(ETCD_CONFIG)
    s = etcd_settings({"etcd_config": str(conf)}, env={"ETCDCTL_ENDPOINTS": "http://env:2379"})
    assert s["endpoints"] == ["https://10.0.0.5:2379", "https://10.0.0.6:2379"]
    assert (s["ca_file"], s["client_cert"], s["client_key"]) == (
        "/etc/cilium/etcd-ca.pem", "/etc/cilium/etcd-client.pem", "/etc/cilium/etcd-client-key.pem")
    s = etcd_settings({"etcd_config": str(conf), "etcd_endpoints": ["http://opt:2379"],
                       "etcd_ca_cert": "/opt-ca"}, env={})
    assert s["endpoints"] == ["http://opt:2379"] and s["ca_file"] == "/opt-ca"


def test_etcd_env_fallbacks():
    s = etcd_settings({}, env={"ETCDCTL_ENDPOINTS": "http://a:2379,http://b:2379",
                               "ETCDCTL_USER": "root:pw", "ETCDCTL_CACERT": "/ca",
                               "ETCDCTL_INSECURE_SKIP_TLS_VERIFY": "true"})
    assert s["endpoints"] == ["http://a:2379", "http://b:2379"]
    assert (s["username"], s["password"], s["ca_file"], s["validate_certs"]) == ("root", "pw", "/ca", False)
    assert etcd_settings({}, env={})["endpoints"] == ["http://127.0.0.1:2379"]


def test_etcd_config_flow_list_and_errors():
    assert parse_etcd_config("endpoints: [http://a:2379, 'http://b:2379']\n")["endpoints"] == [
        "http://a:2379", "http://b:2379"]
    with pytest.raises(ValueError, match="line 2"):
        parse_etcd_config("endpoints:\n  nested: {x: 1}\n")


def test_prefix_range_end():
    assert prefix_range_end("cilium/state/") == b"cilium/state0"
    assert prefix_range_end(b"a\xff") == b"b"
