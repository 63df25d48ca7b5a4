"""TLS and mutual TLS: every module that talks to Consul, Nomad or etcd works against the lab served
over HTTPS (a CA made at test time, tests/lab/tls.py) with the CA given as an option or through the
CLIs' environment variables, and with a client certificate where the server requires one.
Verification is on by default: no CA, a wrong CA, a wrong server name or a missing client
certificate fail with a message naming the service and the TLS problem, and write nothing.
``*_tls_server_name`` fixes a name mismatch; ``*_validate_certs: false`` and the CLIs' skip-verify
variables turn verification off."""

import os
import shutil
import tempfile

import pytest

from tests.lab import httpd
from tests.lab.lab import Lab
from tests.lab.tls import LabCA, server_context
from tests.support.modules import run_module

HEARTBEAT = "cilium/.heartbeat"
POLICY = [{"labels": [{"key": "name", "value": "tls-web", "source": "unspec"}],
           "endpointSelector": {"matchLabels": {"netreap:nomad.job_id": "web"}},
           "ingress": [{"fromEntities": ["world"]}]}]

# Every TLS-related variable the modules read; cleared for each test so the process env of
# whoever runs the suite cannot make a test pass or fail.
TLS_ENV = ("CONSUL_HTTP_ADDR", "CONSUL_HTTP_SSL", "CONSUL_HTTP_SSL_VERIFY", "CONSUL_CACERT",
           "CONSUL_CAPATH", "CONSUL_CLIENT_CERT", "CONSUL_CLIENT_KEY", "CONSUL_TLS_SERVER_NAME",
           "CONSUL_HTTP_TOKEN", "CONSUL_HTTP_TOKEN_FILE",
           "NOMAD_ADDR", "NOMAD_SKIP_VERIFY", "NOMAD_CACERT", "NOMAD_CAPATH", "NOMAD_CLIENT_CERT",
           "NOMAD_CLIENT_KEY", "NOMAD_TLS_SERVER_NAME", "NOMAD_TOKEN",
           "ETCDCTL_ENDPOINTS", "ETCDCTL_CACERT", "ETCDCTL_CERT", "ETCDCTL_KEY",
           "ETCDCTL_INSECURE_SKIP_TLS_VERIFY", "ETCDCTL_USER", "ETCDCTL_PASSWORD",
           "SSL_CERT_FILE", "SSL_CERT_DIR")

OPTION_PREFIX = {"consul": "consul", "nomad": "nomad", "etcd": "etcd"}
ENV_NAMES = {
    "consul": {"ca": "CONSUL_CACERT", "cert": "CONSUL_CLIENT_CERT", "key": "CONSUL_CLIENT_KEY"},
    "nomad": {"ca": "NOMAD_CACERT", "cert": "NOMAD_CLIENT_CERT", "key": "NOMAD_CLIENT_KEY"},
    "etcd": {"ca": "ETCDCTL_CACERT", "cert": "ETCDCTL_CERT", "key": "ETCDCTL_KEY"},
}


def _start(tls, kvstore, cilium):
    state_dir = tempfile.mkdtemp(prefix="tls-", dir="/tmp")
    lab = Lab(state_dir, nodes=2, cilium=cilium, kvstore=kvstore, scenario="drift", tls=tls).start()
    return lab, state_dir


@pytest.fixture(scope="module")
def tls_lab_https():
    """HTTPS without client certificates; Cilium 1.16 with Consul as kvstore."""
    lab, state_dir = _start("tls", "consul", "1.16")
    yield lab
    lab.stop()
    shutil.rmtree(state_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def tls_lab_mtls():
    """HTTPS with client certificates required by Consul, Nomad and the real etcd; Cilium 1.17."""
    lab, state_dir = _start("mtls", "etcd", "1.17")
    yield lab
    lab.stop()
    shutil.rmtree(state_dir, ignore_errors=True)


@pytest.fixture(autouse=True)
def tls_clean_env(monkeypatch):
    for name in TLS_ENV:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def tls_other_ca():
    """A second CA: a client that trusts only it must reject the lab's servers."""
    directory = tempfile.mkdtemp(prefix="tls-other-", dir="/tmp")
    yield LabCA(directory, name="some other CA")
    shutil.rmtree(directory, ignore_errors=True)


def get_lab(request, name):
    return request.getfixturevalue("tls_lab_" + name)


def address(lab, service, node=None):
    if service == "consul":
        return {"consul_address": lab.consul_endpoint.url}
    if service == "nomad":
        return {"nomad_address": node.nomad_address if node else lab.nomad_endpoint.url}
    return {"etcd_endpoints": [lab.etcd.url]}


def tls_settings(lab, service, form, monkeypatch, ca=True, client=None):
    """The TLS settings for ``service``, as options (returned) or as environment variables (set).
    ``client`` defaults to "whenever the lab requires client certificates"."""
    if client is None:
        client = lab.tls == "mtls"
    values = {}
    if ca:
        values["ca"] = lab.tls_server.ca if ca is True else ca
    if client:
        values["cert"], values["key"] = lab.tls_client.cert, lab.tls_client.key
    if form == "env":
        for what, value in values.items():
            monkeypatch.setenv(ENV_NAMES[service][what], value)
        return {}
    option = {"ca": "ca_cert", "cert": "client_cert", "key": "client_key"}
    return {"%s_%s" % (OPTION_PREFIX[service], option[what]): value for what, value in values.items()}


def connect(lab, services, form, monkeypatch, node=None, **kwargs):
    args = {}
    for service in services:
        args.update(address(lab, service, node))
        args.update(tls_settings(lab, service, form, monkeypatch, **kwargs))
    return args


# -- every module works over TLS (and mTLS where the lab requires it) -----------------------------
def run_heartbeat(lab, kvstore, args):
    result = run_module("cilium_kvstore_heartbeat", dict(args, kvstore=kvstore))
    assert not result.failed, result
    if kvstore == "consul":
        assert lab.consul.kv_get(HEARTBEAT)["Value"].decode() == result["value"]
    else:
        assert lab.kv.backend.get(HEARTBEAT).decode() == result["value"]


def run_node_gc(lab, kvstore, args):
    result = run_module("cilium_node_gc", dict(args, kvstore=kvstore))
    assert not result.failed, result
    assert result["counts"]["nomad_nodes"] == len(lab.nomad.nodes()), result
    if kvstore == lab.kvstore_type:  # the lab's kvstore holds node keys, stale ones included
        assert result["counts"]["kvstore_nodes"] == len(lab.kv.node_names()), result
        assert result["counts"]["candidates"] >= 2, result


def run_identity_gc(lab, kvstore, args):
    result = run_module("cilium_identity_gc", dict(args, kvstore=kvstore))
    assert not result.failed, result
    if kvstore == lab.kvstore_type:
        assert result["counts"]["identities"] >= 3, result
        assert result["counts"]["unused"] >= 3, result


def run_endpoint(lab, args):
    node = lab.nodes[0]
    args = dict(args, cilium_socket=node.socket_path, nomad_node_id=node.node_id)
    result = run_module("cilium_endpoint", args, check_mode=True)
    assert not result.failed, result
    assert result["requests"]["nomad"] >= 1
    assert result["reaped"] and result["labelled"], result  # drift: work found through Nomad


def run_endpoint_agent_self(lab, args):
    """Without nomad_node_id: agent/self on the node's Nomad client agent (HTTPS too)."""
    node = lab.nodes[0]
    result = run_module("cilium_endpoint", dict(args, cilium_socket=node.socket_path),
                        check_mode=True)
    assert not result.failed, result
    assert result["node_id"] == node.node_id


def run_policy(lab, args):
    published = run_module("cilium_policy", dict(args, rules=POLICY, publish=True, apply=False))
    assert not published.failed, published
    node = lab.nodes[0]
    applied = run_module("cilium_policy", dict(args, from_consul=True, cilium_socket=node.socket_path,
                                               static_policy_dir=node.static_policy_dir),
                         check_mode=True)
    assert not applied.failed, applied
    assert applied["consul_key"] == "netreap.io/policy"


MODULE_CASES = {
    # name: (services, runner, labs)
    "heartbeat-consul": (("consul",), lambda lab, a: run_heartbeat(lab, "consul", a), ("https", "mtls")),
    "heartbeat-etcd": (("etcd",), lambda lab, a: run_heartbeat(lab, "etcd", a), ("mtls",)),
    "node_gc-consul": (("consul", "nomad"), lambda lab, a: run_node_gc(lab, "consul", a),
                       ("https", "mtls")),
    "node_gc-etcd": (("etcd", "nomad"), lambda lab, a: run_node_gc(lab, "etcd", a), ("mtls",)),
    "identity_gc-consul": (("consul",), lambda lab, a: run_identity_gc(lab, "consul", a),
                           ("https", "mtls")),
    "identity_gc-etcd": (("etcd",), lambda lab, a: run_identity_gc(lab, "etcd", a), ("mtls",)),
    "endpoint": (("nomad-agent",), run_endpoint, ("https", "mtls")),
    "endpoint-agent-self": (("nomad-agent",), run_endpoint_agent_self, ("https", "mtls")),
    "policy": (("consul",), run_policy, ("https", "mtls")),
}


def _module_params():
    for name, (unused_services, unused_runner, labs) in MODULE_CASES.items():
        for lab_name in labs:
            for form in ("option", "env"):
                yield pytest.param(name, lab_name, form, id="%s-%s-%s" % (name, lab_name, form))


@pytest.mark.parametrize("case,lab_name,form", list(_module_params()))
def test_module_works_over_tls(request, monkeypatch, case, lab_name, form):
    lab = get_lab(request, lab_name)
    services, runner, unused_labs = MODULE_CASES[case]
    args = {}
    for service in services:
        if service == "nomad-agent":
            args.update(connect(lab, ["nomad"], form, monkeypatch, node=lab.nodes[0]))
        else:
            args.update(connect(lab, [service], form, monkeypatch))
    runner(lab, args)


def test_lab_files_carry_https_and_ca(tls_lab_mtls):
    """lab.env and inventory.yml point at https URLs and the CA/client certificate files."""
    with open(os.path.join(tls_lab_mtls.state_dir, "lab.env")) as handle:
        env = dict(line[len("export "):].strip().split("=", 1) for line in handle if line.strip())
    for name in ("CONSUL_HTTP_ADDR", "NOMAD_ADDR", "ETCDCTL_ENDPOINTS"):
        assert env[name].startswith("https://127.0.0.1:"), env
    for name in ("CONSUL_CACERT", "NOMAD_CACERT", "ETCDCTL_CACERT", "CONSUL_CLIENT_CERT",
                 "NOMAD_CLIENT_CERT", "ETCDCTL_CERT", "ETCDCTL_KEY"):
        assert os.path.isfile(env[name]), name
    hosts = tls_lab_mtls.inventory()["all"]["children"]["cilium_nodes"]["hosts"]
    assert all(h["nomad_address"].startswith("https://") for h in hosts.values())


# -- verification is on by default and fails clearly -----------------------------------------------
# service -> (lab, module, extra args); each is the first call the module makes to that service
FAILING = {
    "consul": ("https", "cilium_kvstore_heartbeat", {"kvstore": "consul"}),
    "nomad": ("https", "cilium_endpoint", {}),
    "etcd": ("mtls", "cilium_kvstore_heartbeat", {"kvstore": "etcd"}),
}


def failing_args(lab, service, monkeypatch, **tls_kwargs):
    node = lab.nodes[0]
    args = dict(address(lab, service, node if service == "nomad" else None))
    args.update(tls_settings(lab, service, "option", monkeypatch, **tls_kwargs))
    args.update(FAILING[service][2])
    if service == "nomad":
        args.update(cilium_socket=node.socket_path, nomad_node_id=node.node_id)
    return args


def assert_tls_failure(result, service, *reasons):
    assert result.failed, result
    msg = result["msg"]
    assert "%s " % service in msg and "https://" in msg, msg
    assert "TLS error" in msg, msg
    assert any(reason in msg for reason in reasons), msg


def service_requests(lab, service):
    return sum(1 for e in lab.log.entries() if e["service"].startswith(service))


def heartbeat_state(lab):
    return lab.consul.kv_get(HEARTBEAT), lab.kv.backend.get(HEARTBEAT)


@pytest.mark.parametrize("service", sorted(FAILING))
def test_no_ca_fails_verification(request, monkeypatch, service):
    """No CA given: the system store does not trust the lab CA, and verification is on."""
    lab = get_lab(request, FAILING[service][0])
    before, requests = heartbeat_state(lab), service_requests(lab, service)
    result = run_module(FAILING[service][1], failing_args(lab, service, monkeypatch, ca=False))
    assert_tls_failure(result, service, "certificate verify failed")
    assert "set %s_ca_cert to the CA" % service in result["msg"], result["msg"]
    assert heartbeat_state(lab) == before
    if service != "etcd":  # the lab's listeners log every request; none got past the handshake
        assert service_requests(lab, service) == requests


@pytest.mark.parametrize("service", sorted(FAILING))
def test_wrong_ca_fails_verification(request, monkeypatch, tls_other_ca, service):
    lab = get_lab(request, FAILING[service][0])
    before = heartbeat_state(lab)
    result = run_module(FAILING[service][1],
                        failing_args(lab, service, monkeypatch, ca=tls_other_ca.ca))
    assert_tls_failure(result, service, "certificate verify failed")
    assert heartbeat_state(lab) == before


@pytest.mark.parametrize("service", sorted(FAILING))
def test_wrong_server_name_fails_verification(request, monkeypatch, service):
    lab = get_lab(request, FAILING[service][0])
    args = failing_args(lab, service, monkeypatch)
    args["%s_tls_server_name" % service] = "server.other.example"
    result = run_module(FAILING[service][1], args)
    assert_tls_failure(result, service, "Hostname mismatch", "certificate verify failed")


# -- a server certificate that does not name 127.0.0.1: *_tls_server_name fixes it ------------------
@pytest.fixture(scope="module")
def tls_name_only(tls_lab_https):
    """Consul and Nomad of the https lab again, on listeners whose certificates carry only
    server.dc1.consul / server.global.nomad (as Consul's and Nomad's built-in CAs issue them)."""
    lab = tls_lab_https
    consul_cert = lab.tls_ca.server("consul-name-only", names=("server.dc1.consul",), ips=())
    nomad_cert = lab.tls_ca.server("nomad-name-only", names=("server.global.nomad",), ips=())
    consul = httpd.serve_tcp(lab.consul, ssl_context=server_context(consul_cert))
    nomad = httpd.serve_tcp(lab.nomad.client_agent(lab.nodes[0].node_id),
                            ssl_context=server_context(nomad_cert))
    yield {"consul": consul.url, "nomad": nomad.url}
    consul.stop()
    nomad.stop()


NAME_ONLY = {"consul": ("server.dc1.consul", "CONSUL_TLS_SERVER_NAME"),
             "nomad": ("server.global.nomad", "NOMAD_TLS_SERVER_NAME")}


def name_only_args(lab, urls, service, monkeypatch):
    args = failing_args(lab, service, monkeypatch)
    args["%s_address" % service] = urls[service]
    return args


@pytest.mark.parametrize("service", sorted(NAME_ONLY))
def test_name_mismatch_fails_without_server_name(tls_lab_https, tls_name_only, monkeypatch, service):
    result = run_module(FAILING[service][1],
                        name_only_args(tls_lab_https, tls_name_only, service, monkeypatch))
    assert_tls_failure(result, service, "IP address mismatch", "certificate verify failed")


@pytest.mark.parametrize("form", ["option", "env"])
@pytest.mark.parametrize("service", sorted(NAME_ONLY))
def test_server_name_fixes_mismatch(tls_lab_https, tls_name_only, monkeypatch, service, form):
    args = name_only_args(tls_lab_https, tls_name_only, service, monkeypatch)
    name, env_name = NAME_ONLY[service]
    if form == "option":
        args["%s_tls_server_name" % service] = name
    else:
        # The Consul CLI strips a port from CONSUL_TLS_SERVER_NAME; so do we.
        monkeypatch.setenv(env_name, name + (":8501" if service == "consul" else ""))
    result = run_module(FAILING[service][1], args, check_mode=service == "nomad")
    assert not result.failed, result


@pytest.mark.parametrize("name,ok", [("etcd.lab", True), ("server.other.example", False)])
def test_etcd_server_name(tls_lab_mtls, monkeypatch, name, ok):
    args = failing_args(tls_lab_mtls, "etcd", monkeypatch)
    args["etcd_tls_server_name"] = name
    result = run_module("cilium_kvstore_heartbeat", args)
    if ok:
        assert not result.failed, result
    else:
        assert_tls_failure(result, "etcd", "Hostname mismatch")


# -- turning verification off ----------------------------------------------------------------------
SKIP_VERIFY = {
    "consul": ("consul_validate_certs", "CONSUL_HTTP_SSL_VERIFY", "false"),
    "nomad": ("nomad_validate_certs", "NOMAD_SKIP_VERIFY", "true"),
    "etcd": ("etcd_validate_certs", "ETCDCTL_INSECURE_SKIP_TLS_VERIFY", "true"),
}


@pytest.mark.parametrize("form", ["option", "env"])
@pytest.mark.parametrize("service", sorted(SKIP_VERIFY))
def test_validate_certs_false_turns_verification_off(request, monkeypatch, tls_other_ca, service, form):
    lab = get_lab(request, FAILING[service][0])
    # A CA that does not match: only turning verification off lets the run through.
    args = failing_args(lab, service, monkeypatch, ca=tls_other_ca.ca)
    option, env_name, env_value = SKIP_VERIFY[service]
    if form == "option":
        args[option] = False
    else:
        monkeypatch.setenv(env_name, env_value)
    result = run_module(FAILING[service][1], args, check_mode=service == "nomad")
    assert not result.failed, result


def test_option_wins_over_skip_verify_env(tls_lab_https, monkeypatch):
    """consul_validate_certs: true in the task beats CONSUL_HTTP_SSL_VERIFY=false."""
    monkeypatch.setenv("CONSUL_HTTP_SSL_VERIFY", "false")
    args = failing_args(tls_lab_https, "consul", monkeypatch, ca=False)
    args["consul_validate_certs"] = True
    assert_tls_failure(run_module("cilium_kvstore_heartbeat", args), "consul",
                       "certificate verify failed")


@pytest.mark.parametrize("form", ["option", "env"])
def test_consul_use_ssl_for_address_without_scheme(tls_lab_https, monkeypatch, form):
    args = failing_args(tls_lab_https, "consul", monkeypatch)
    args["consul_address"] = tls_lab_https.consul_endpoint.url[len("https://"):]
    if form == "option":
        args["consul_use_ssl"] = True
    else:
        monkeypatch.setenv("CONSUL_HTTP_SSL", "true")
    result = run_module("cilium_kvstore_heartbeat", args)
    assert not result.failed, result


# -- mutual TLS: a missing client certificate fails clearly ----------------------------------------
@pytest.mark.parametrize("service", sorted(FAILING))
def test_mtls_without_client_certificate_fails(tls_lab_mtls, monkeypatch, service):
    lab = tls_lab_mtls
    module, extra = FAILING[service][1], FAILING[service][2]
    args = failing_args(lab, service, monkeypatch, client=False)
    if service == "consul":
        args.update(extra)
    before = heartbeat_state(lab)
    result = run_module(module, args)
    assert result.failed, result
    msg = result["msg"]
    assert "%s " % service in msg and "https://" in msg, msg
    assert "TLS error" in msg, msg
    # what to do about it, in the service's own option names
    assert "no client certificate was sent" in msg and "%s_client_cert" % service in msg, msg
    assert heartbeat_state(lab) == before


def test_mtls_client_certificate_from_another_ca_fails(tls_lab_mtls, tls_other_ca, monkeypatch):
    lab = tls_lab_mtls
    stranger = tls_other_ca.client("stranger")
    args = failing_args(lab, "consul", monkeypatch, client=False)
    args.update(consul_client_cert=stranger.cert, consul_client_key=stranger.key)
    result = run_module("cilium_kvstore_heartbeat", args)
    assert result.failed, result
    assert "consul " in result["msg"] and "TLS error" in result["msg"], result["msg"]
    assert "refused the client certificate %s" % stranger.cert in result["msg"], result["msg"]
