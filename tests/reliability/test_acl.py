"""Least privilege, tested from the documentation: the ACL snippets of docs/permissions.md are
parsed, turned into lab tokens (Consul and Nomad with ACLs on), and each module runs with exactly
that token and does its work.  Then, for every permission in a snippet, a token lacking just that
one permission makes the module fail (or, where the service filters an answer instead of
refusing, stop acting and say so) with a message naming the missing permission, and nothing that
should not change changes."""

import os
import re
import shutil
import tempfile
import uuid

import pytest


from tests.lab.kvstore import labels_key
from tests.lab.lab import Lab
from tests.support.modules import run_module

DOC = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                   "docs", "permissions.md")
SNIPPET = re.compile(r"<!-- acl: (\S+) (\S+)(?: (\S+))? -->\s*```(\w+)\n(.*?)```", re.S)
HCL_RULE = re.compile(r'(\w+)\s*(?:"([^"]*)")?\s*\{([^}]*)\}')
ETCD_GRANT = re.compile(r"^etcdctl role grant-permission (\S+) (--prefix )?(read|write|readwrite) (\S+)$")
RETIRED = ("nomad-client-retired-1", "nomad-client-retired-2")
RETIRED_IP = "198.51.100.10"  # nomad-client-retired-1's InternalIP in the drift scenario
NEW_POLICY = [{"labels": [{"key": "name", "value": "acl-web", "source": "unspec"}],
               "endpointSelector": {"matchLabels": {"netreap:nomad.job_id": "web"}},
               "ingress": [{"fromEntities": ["world"]}]}]


class Rule:
    """One permission line of a snippet: ``resource "name" { policy = "..." }`` or, for Nomad
    namespaces, ``{ capabilities = [...] }``."""

    def __init__(self, resource, name, policy=None, capabilities=None):
        self.resource = resource
        self.name = name
        self.policy = policy
        self.capabilities = capabilities

    def __repr__(self):
        return "%s %r %s" % (self.resource, self.name, self.policy or self.capabilities)


def parse_hcl(text):
    rules = []
    for resource, name, body in HCL_RULE.findall(text):
        policy = re.search(r'policy\s*=\s*"(\w+)"', body)
        caps = re.search(r"capabilities\s*=\s*\[([^\]]*)\]", body)
        rules.append(Rule(resource, name, policy.group(1) if policy else None,
                          re.findall(r'"([^"]+)"', caps.group(1)) if caps else None))
    # every non-blank line is one rule: nothing in a snippet may be silently ignored
    assert len(rules) == len([line for line in text.splitlines() if line.strip()]), text
    return rules


def load_snippets():
    with open(DOC) as handle:
        text = handle.read()
    snippets = {}
    for module, service, variant, lang, body in SNIPPET.findall(text):
        key = (module, service, variant or "")
        assert key not in snippets, "duplicate snippet %s" % (key,)
        snippets[key] = (lang, body)
    return snippets


SNIPPETS = load_snippets()


def policy(module, service, variant=""):
    lang, body = SNIPPETS[(module, service, variant)]
    assert lang == "hcl"
    return parse_hcl(body)


# -- tokens ---------------------------------------------------------------------------------------
def consul_token(lab, rules):
    kwargs = {"key_prefix": {}, "session_prefix": {}, "agent_prefix": {}}
    for rule in rules:
        assert rule.resource in kwargs, "the lab models key/session/agent prefix rules: %r" % rule
        kwargs[rule.resource][rule.name] = rule.policy
    secret = str(uuid.uuid4())
    lab.consul.add_token(secret, key_prefix_rules=kwargs["key_prefix"],
                         session_prefix_rules=kwargs["session_prefix"],
                         agent_prefix_rules=kwargs["agent_prefix"])
    return secret


def nomad_token(lab, rules):
    namespaces, node, agent = {}, None, None
    for rule in rules:
        if rule.resource == "namespace":
            namespaces[rule.name] = rule.capabilities
        elif rule.resource == "node":
            node = rule.policy
        elif rule.resource == "agent":
            agent = rule.policy
        else:
            raise AssertionError("unexpected Nomad rule %r" % rule)
    return lab.nomad.add_token(str(uuid.uuid4()), namespaces=namespaces, node=node, agent=agent)


def make_token(lab, service, rules):
    return consul_token(lab, rules) if service == "consul" else nomad_token(lab, rules)


def lacking_one(rules):
    """``(id, rules, rule, missing_level)`` for every way to lack exactly one permission: a write
    rule downgraded to read lacks write; any rule removed lacks read (and what read allows)."""
    for index, rule in enumerate(rules):
        others = rules[:index] + rules[index + 1:]
        label = "%s-%s" % (rule.resource, rule.name or "all")
        if rule.policy == "write":
            yield "%s-write" % label, others + [Rule(rule.resource, rule.name, "read")], rule, "write"
        yield "%s-any" % label, others, rule, "read"


# -- the lab and the module runs -------------------------------------------------------------------
@pytest.fixture
def acl_lab():
    state_dir = tempfile.mkdtemp(prefix="acl-", dir="/tmp")
    lab = Lab(state_dir, nodes=1, cilium="1.16", kvstore="consul", scenario="drift", acl=True).start()
    # an identity still used from the retired node's address: purge_node_state deletes it
    lab.kv.allocate(labels_key(["k8s:app=retired"]), RETIRED_IP)
    yield lab
    lab.stop()
    shutil.rmtree(state_dir, ignore_errors=True)


def full_token(lab, module, service):
    return make_token(lab, service, policy(module, service))


def gc_runs(module, lab, consul, nomad=None, **extra):
    """Two passes (mark, then delete: min_age 0); stops at the first failed run."""
    args = dict(kvstore="consul", consul_address=lab.consul_endpoint.url, consul_token=consul,
                min_age=0, **extra)
    if nomad is not None:
        args.update(nomad_address=lab.nomad_endpoint.url, nomad_token=nomad)
    results = []
    for unused_pass in range(2):
        results.append(run_module(module, args))
        if results[-1].failed:
            break
    return results


class Case:
    """How to run one snippet's module and what success means."""

    def __init__(self, run, succeeded, unchanged):
        self.run = run              # (lab, tokens) -> [results]
        self.succeeded = succeeded  # (lab, results) -> None, asserts the module did its work
        self.unchanged = unchanged  # (lab) -> snapshot of what a failed run must not change


def node_gc_case(purge=False):
    def run(lab, tokens):
        return gc_runs("cilium_node_gc", lab, tokens["consul"], tokens["nomad"])

    def succeeded(lab, results):
        deleted = {d["name"]: d for d in results[-1]["deleted"]}
        assert set(RETIRED) <= set(deleted), results[-1]
        assert not set(RETIRED) & set(lab.kv.node_names())
        if purge:
            assert any("/value/" in key for key in deleted[RETIRED[0]]["purged"]), deleted
            assert any("/ip/v1/" in key for key in deleted[RETIRED[0]]["purged"]), deleted

    return Case(run, succeeded, lambda lab: (sorted(lab.kv.node_names()), sorted(lab.kv.ipcache()),
                                             sorted(map(str, lab.kv.identity_uses()))))


def identity_gc_run(lab, tokens):
    return gc_runs("cilium_identity_gc", lab, tokens["consul"])


def identity_gc_succeeded(lab, results):
    assert len(results[-1]["deleted"]) >= 3, results[-1]


def heartbeat_run(lab, tokens):
    return [run_module("cilium_kvstore_heartbeat", dict(
        kvstore="consul", consul_address=lab.consul_endpoint.url, consul_token=tokens["consul"]))]


def heartbeat_succeeded(lab, results):
    assert lab.consul.kv_get("cilium/.heartbeat")["Value"].decode() == results[0]["value"]


def policy_publish_run(lab, tokens):
    return [run_module("cilium_policy", dict(
        consul_address=lab.consul_endpoint.url, consul_token=tokens["consul"], rules=NEW_POLICY,
        publish=True, apply=False))]


def policy_publish_succeeded(lab, results):
    assert results[0]["published"] is True
    assert b"acl-web" in lab.consul.kv_get("netreap.io/policy")["Value"]


def policy_apply_run(lab, tokens):
    node = lab.nodes[0]
    return [run_module("cilium_policy", dict(
        consul_address=lab.consul_endpoint.url, consul_token=tokens["consul"], from_consul=True,
        cilium_socket=node.socket_path, static_policy_dir=node.static_policy_dir))]


def policy_apply_succeeded(lab, results):
    assert results[0]["applied"] is True, results[0]


def endpoint_run(lab, tokens):
    node = lab.nodes[0]
    # no nomad_node_id: the node ID comes from agent/self (the snippet's agent rule)
    return [run_module("cilium_endpoint", dict(nomad_address=node.nomad_address,
                                               nomad_token=tokens["nomad"],
                                               cilium_socket=node.socket_path))]


def endpoint_succeeded(lab, results):
    assert results[0]["labelled"] and results[0]["reaped"], results[0]


def endpoints_state(lab):
    return [(e["id"], sorted(e["status"]["labels"]["security-relevant"]))
            for e in lab.nodes[0].cilium.endpoints()]


CASES = {
    ("cilium_kvstore_heartbeat", "consul", ""): Case(
        heartbeat_run, heartbeat_succeeded, lambda lab: lab.consul.kv_get("cilium/.heartbeat")),
    # with Consul purge_node_state is on by default: the snippet covers the purge
    ("cilium_node_gc", "consul", ""): node_gc_case(purge=True),
    ("cilium_node_gc", "nomad", ""): node_gc_case(),
    ("cilium_identity_gc", "consul", ""): Case(
        identity_gc_run, identity_gc_succeeded, lambda lab: sorted(lab.kv.identities())),
    ("cilium_policy", "consul", "publish"): Case(
        policy_publish_run, policy_publish_succeeded, lambda lab: lab.consul.kv_get("netreap.io/policy")),
    ("cilium_policy", "consul", "apply"): Case(
        policy_apply_run, policy_apply_succeeded, lambda lab: lab.nodes[0].cilium.policy_revision),
    ("cilium_endpoint", "nomad", ""): Case(endpoint_run, endpoint_succeeded, endpoints_state),
}


def tokens_for(lab, module, service, variant, rules):
    """Tokens for every service the module uses: ``rules`` for ``service``, the documented
    snippets for the others (the purge variant adds its snippet to the base one)."""
    tokens = {}
    for other in ("consul", "nomad"):
        if (module, other, "") not in SNIPPETS and (module, other, variant) not in SNIPPETS:
            continue
        if other == service:
            base = policy(module, service) if variant == "purge" else []
            tokens[other] = make_token(lab, other, base + rules)
        elif (module, other, "") in SNIPPETS:
            tokens[other] = full_token(lab, module, other)
    return tokens


def test_every_documented_snippet_is_tested():
    """Every Consul/Nomad snippet in docs/permissions.md has a case here, and vice versa."""
    hcl = {key for key, (lang, unused_body) in SNIPPETS.items() if lang == "hcl"}
    assert hcl == set(CASES)
    assert {key[0] for key in hcl} >= {"cilium_kvstore_heartbeat", "cilium_node_gc",
                                       "cilium_identity_gc", "cilium_policy", "cilium_endpoint"}


@pytest.mark.parametrize("key", sorted(CASES), ids=lambda key: "-".join(filter(None, key)))
def test_documented_policy_is_enough(acl_lab, key):
    module, service, variant = key
    rules = policy(module, service, variant)
    results = CASES[key].run(acl_lab, tokens_for(acl_lab, module, service, variant, rules))
    for result in results:
        assert not result.failed, result
    CASES[key].succeeded(acl_lab, results)


def _lacking_params():
    for key in sorted(CASES):
        module, service, variant = key
        for ident, rules, rule, level in lacking_one(policy(module, service, variant)):
            yield pytest.param(key, rules, rule, level,
                               id="-".join(filter(None, key)) + "-lacks-" + ident)


def assert_names_permission(msg, service, rule, level):
    """The failure names the missing permission: Consul's 403 text, the filtered-listing check,
    or (Nomad's 403 body being a bare "Permission denied") the hint the module adds."""
    if service == "consul":
        levels = ("write",) if level == "write" else ("read", "write")
        denied = any("lacks permission '%s:%s'" % (rule.resource.replace("_prefix", ""), lvl) in msg
                     for lvl in levels)
        filtered = "X-Consul-Results-Filtered-By-ACLs" in msg and "key:read" in msg
        # identity GC without agent:read cannot tell whether Consul flags filtered listings
        unverifiable = "cannot trust the Consul listings" in msg and "agent:read" in msg
        assert denied or (filtered and level == "read" and rule.resource == "key_prefix") or (
            unverifiable and rule.resource == "agent_prefix"), msg
        if rule.name:
            assert rule.name in msg, msg
    else:
        assert "the Nomad token lacks %s:read" % rule.resource in msg, msg


@pytest.mark.parametrize("key,rules,rule,level", list(_lacking_params()))
def test_lacking_one_permission_fails_and_says_which(acl_lab, key, rules, rule, level):
    module, service, variant = key
    case = CASES[key]
    before = case.unchanged(acl_lab)
    results = case.run(acl_lab, tokens_for(acl_lab, module, service, variant, rules))
    if rule.resource == "namespace":
        # Nomad filters the node's allocation list instead of refusing: nothing may be labelled
        # or reaped on the strength of it, and the run must say why.
        # Only an allocation Nomad answers 404 for (it exists in no namespace) counts as gone.
        result = results[-1]
        assert not result.failed, result
        assert result["labelled"] == [], result
        existing = {a["ID"] for a in acl_lab.nomad.allocations(acl_lab.nodes[0].node_id)}
        assert not {r["allocation"] for r in result["reaped"]} & existing, result
        assert any(s["reason"].startswith("kept: Nomad could not confirm")
                   for s in result["skipped_endpoints"]), result
        assert any("read-job" in w and "namespace" in w for w in result["warnings"]), result["warnings"]
        return
    failed = [r for r in results if r.failed]
    assert failed, "a token lacking %s %s still worked: %s" % (rule, level, results)
    assert_names_permission(failed[0]["msg"], service, rule, level)
    assert case.unchanged(acl_lab) == before


def test_etcd_snippets_are_well_formed():
    """Each etcd grant line is well-formed and the grants are exactly the prefixes the module's
    calls touch (test_etcd_role then runs them on the real etcd with authentication on)."""
    expected = {
        "cilium_kvstore_heartbeat": {("readwrite", "cilium/.heartbeat", False)},
        "cilium_node_gc": {("readwrite", "cilium/state/nodes/v1/", True),
                           ("readwrite", "netreap/gc/v1/", True)},
        "cilium_identity_gc": {("readwrite", "cilium/state/identities/v1/id/", True),
                               ("read", "cilium/state/identities/v1/value/", True),
                               ("readwrite", "netreap/gc/v1/", True)},
    }
    for module, grants in expected.items():
        lang, body = SNIPPETS[(module, "etcd", "")]
        assert lang == "sh"
        found = set()
        for line in body.strip().splitlines():
            if line.startswith("etcdctl role add "):
                continue
            match = ETCD_GRANT.match(line.strip())
            assert match, line
            found.add((match.group(3), match.group(4), bool(match.group(2))))
        assert found == grants, (module, found)


# -- etcd RBAC: the role snippets on the real etcd with authentication enabled ---------------------
ETCD_MODULES = ("cilium_kvstore_heartbeat", "cilium_node_gc", "cilium_identity_gc")


def etcd_grants(module):
    lang, body = SNIPPETS[(module, "etcd", "")]
    grants = []
    for line in body.strip().splitlines():
        match = ETCD_GRANT.match(line.strip())
        if match:
            grants.append((match.group(3), match.group(4), bool(match.group(2))))
    return grants


class EtcdAuth:
    """Users and roles through the real etcd's gateway (/v3/auth/*), then authentication on."""

    def __init__(self, lab):
        from tests.lab.kvstore import EtcdBackend
        self.gateway = EtcdBackend(lab.etcd.url)
        self.url = lab.etcd.url

    def call(self, path, body):
        return self.gateway._call("auth/" + path, body)

    def add_user(self, name, password, grants):
        from tests.lab.kvstore import EtcdBackend
        b64 = EtcdBackend._b64
        self.call("role/add", {"name": name})
        for perm, key, prefix in grants:
            permission = {"permType": perm.upper(), "key": b64(key)}
            if prefix:
                permission["range_end"] = b64(key[:-1] + chr(ord(key[-1]) + 1))
            self.call("role/grant", {"name": name, "perm": permission})
        self.call("user/add", {"name": name, "password": password})
        self.call("user/grant", {"user": name, "role": name})

    def enable(self):
        self.call("user/add", {"name": "root", "password": "root-secret"})
        self.call("user/grant", {"user": "root", "role": "root"})
        self.call("enable", {})


@pytest.fixture
def acl_etcd_lab():
    state_dir = tempfile.mkdtemp(prefix="acl-etcd-", dir="/tmp")
    lab = Lab(state_dir, nodes=1, cilium="1.17", kvstore="etcd", scenario="drift").start()
    yield lab
    lab.stop()
    shutil.rmtree(state_dir, ignore_errors=True)


def etcd_run(lab, module, user):
    args = dict(kvstore="etcd", etcd_endpoints=[lab.etcd.url], etcd_username=user,
                etcd_password=user + "-secret")
    if module == "cilium_kvstore_heartbeat":
        return [run_module(module, args)]
    if module == "cilium_node_gc":
        args.update(nomad_address=lab.nomad_endpoint.url)
    results = []
    for unused_pass in range(2):
        results.append(run_module(module, dict(args, min_age=0)))
        if results[-1].failed:
            break
    return results


def _etcd_params():
    for module in ETCD_MODULES:
        grants = etcd_grants(module)
        yield pytest.param(module, grants, None, id="%s-documented" % module)
        for index, grant in enumerate(grants):
            yield pytest.param(module, grants[:index] + grants[index + 1:], grant,
                               id="%s-lacks-%s-%s" % (module, grant[0], grant[1]))
            if grant[0] == "readwrite":
                weaker = grants[:index] + [("read",) + grant[1:]] + grants[index + 1:]
                yield pytest.param(module, weaker, ("write",) + grant[1:],
                                   id="%s-lacks-write-%s" % (module, grant[1]))


@pytest.mark.parametrize("module,grants,missing", list(_etcd_params()))
def test_etcd_role(acl_etcd_lab, module, grants, missing):
    """The documented role is enough; a role lacking one grant fails with etcd's permission
    error and deletes nothing."""
    lab = acl_etcd_lab
    auth = EtcdAuth(lab)
    auth.add_user("reaper", "reaper-secret", grants)
    nodes, ids = sorted(lab.kv.node_names()), sorted(lab.kv.identities())
    auth.enable()
    results = etcd_run(lab, module, "reaper")
    if missing is None:
        for result in results:
            assert not result.failed, result
        if module == "cilium_node_gc":
            assert set(RETIRED) <= {d["name"] for d in results[-1]["deleted"]}, results[-1]
        elif module == "cilium_identity_gc":
            assert len(results[-1]["deleted"]) >= 3, results[-1]
        return
    failed = [r for r in results if r.failed]
    assert failed, "a role lacking %s still worked: %s" % (missing, results)
    assert "permission denied" in failed[0]["msg"], failed[0]["msg"]
    assert "etcd " in failed[0]["msg"], failed[0]["msg"]
    # nothing deleted: read back as root
    root = EtcdAuthReader(lab, "root", "root-secret")
    assert root.count("cilium/state/nodes/v1/") == len(nodes)
    assert root.count("cilium/state/identities/v1/id/") == len(ids)


class EtcdAuthReader:
    def __init__(self, lab, user, password):
        from ansible_collections.netreap.cilium.plugins.module_utils._etcd import EtcdClient
        self.client = EtcdClient([lab.etcd.url], username=user, password=password)

    def count(self, prefix):
        return len(self.client.list_prefix(prefix)[0])
